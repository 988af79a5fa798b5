//! The stream framer fed arbitrary chunks: never panics, never buffers past its cap, and yields the same messages
//! whether the input arrives in one chunk or in the fuzzer's chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rappel::sip::message::{ParseLimits, StreamFramer};

fuzz_target!(|data: &[u8]| {
    let limits = ParseLimits { max_message: 4096, max_headers: 64, max_line: 1024 };
    // First byte: chunk size 1..=64 for the split feed.
    let Some((&k, data)) = data.split_first() else { return };
    let chunk = usize::from(k % 64) + 1;

    let mut whole = StreamFramer::new(limits);
    let mut whole_msgs = Vec::new();
    let whole_err = match whole.push(data) {
        Err(_) => true,
        Ok(()) => loop {
            match whole.pop() {
                Ok(Some(m)) => whole_msgs.push(m),
                Ok(None) => break false,
                Err(_) => break true,
            }
        },
    };

    let mut split = StreamFramer::new(limits);
    let mut split_msgs = Vec::new();
    let mut split_err = false;
    'outer: for c in data.chunks(chunk) {
        if split.push(c).is_err() {
            split_err = true;
            break;
        }
        assert!(split.buffered() <= 2 * limits.max_message);
        loop {
            match split.pop() {
                Ok(Some(m)) => split_msgs.push(m),
                Ok(None) => break,
                Err(_) => {
                    split_err = true;
                    break 'outer;
                }
            }
        }
    }
    if !whole_err && !split_err {
        assert_eq!(whole_msgs, split_msgs);
    }
    for m in &split_msgs {
        let _ = m.check();
        let _ = m.to_bytes();
    }
});

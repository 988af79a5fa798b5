//! Datagram parsing, checking, validation, error responses and round-trip must never panic; whatever parses must
//! parse again after being written, to the same message.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rappel::sip::message::{error_response_for, validate_request, Message, UaPolicy};

fuzz_target!(|data: &[u8]| {
    let raw = Bytes::copy_from_slice(data);
    match Message::parse_datagram(raw.clone()) {
        Ok(msg) => {
            let _ = msg.check();
            if let Message::Request(r) = &msg {
                if let Err(rej) = validate_request(r, &UaPolicy::default()) {
                    let resp = rej.response(r, &UaPolicy::default(), "fuzz");
                    Message::parse_datagram(Message::Response(resp).to_bytes()).expect("rejection response parses");
                }
            }
            let h = msg.headers();
            let _ = (h.via(), h.from(), h.to(), h.cseq(), h.call_id(), h.contacts(), h.route(), h.record_route());
            let _ = (h.session_expires(), h.min_se(), h.rack(), h.reason(), h.privacy(), h.p_asserted_identity());
            let wire = msg.to_bytes();
            let again = Message::parse_datagram(wire.clone()).expect("written form parses again");
            assert_eq!(again.body(), msg.body());
            assert_eq!(again.to_bytes(), wire, "writing is a fixed point");
            assert_eq!(msg.check().is_ok(), again.check().is_ok(), "check verdict survives a round trip");
        }
        Err(e) => {
            if let Some(resp) = error_response_for(&raw, &e, "fuzz") {
                Message::parse_datagram(Message::Response(resp).to_bytes()).expect("error response parses");
            }
        }
    }
});

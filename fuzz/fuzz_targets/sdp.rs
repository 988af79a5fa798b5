//! SDP from the network: parsing arbitrary bytes never panics; whatever parses is written and parses again to the
//! same description, and offer/answer against a fixed local session (answering it as an offer, reading it as the
//! answer to our offer) never panics and agrees on a codec we offered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rappel::sdp::{bridge_mode, Codec, Direction, LocalSession, Sdp};

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = Sdp::parse(data) else { return };
    let wire = sdp.to_bytes();
    let again = Sdp::parse(&wire).expect("written SDP parses again");
    assert_eq!(again, sdp, "written SDP reads back the same");
    for i in 0..sdp.media.len() + 1 {
        let _ = (sdp.direction(i), sdp.effective_connection(i));
    }
    for m in &sdp.media {
        let _ = (m.codecs(), m.ptime(), m.maxptime(), m.rtcp(), m.rtcp_mux(), m.direction_attr());
    }

    let supported = [Codec::pcma(), Codec::pcmu(), Codec::telephone_event(101)];
    // As an offer from the peer.
    let mut uas = LocalSession::new(7, "192.0.2.1:20000".parse().unwrap());
    if let Ok((answer, n)) = uas.answer(&sdp, &supported, Direction::SendRecv) {
        assert!(supported.iter().any(|c| c.same_codec(&n.codec)), "answered with a codec we support");
        assert_eq!(answer.media.len(), sdp.media.len(), "one answer m-line per offered m-line");
        Sdp::parse(&answer.to_bytes()).expect("our answer parses");
        let _ = bridge_mode(&n.codec, &Codec::pcmu());
    }
    // As the answer to our offer.
    let mut uac = LocalSession::new(9, "192.0.2.1:20002".parse().unwrap());
    uac.set_rtcp_mux(true);
    let offer = uac.offer(&supported, Direction::SendRecv);
    if let Ok(n) = uac.accept_answer(&offer, &sdp) {
        assert!(supported.iter().any(|c| c.same_codec(&n.codec)), "agreed on a codec we offered");
        let _ = bridge_mode(&n.codec, &Codec::pcma());
    }
});

//! The sans-IO SIP endpoint fed arbitrary datagrams, interleaved with the TU's calls and simulated time: nothing
//! may panic, and every output must be drained.
//!
//! Input: records of `[op, arg, len_hi, len_lo, bytes...]`. Besides raw datagrams, ops build a response to, or an
//! in-dialog request answering, the last message the endpoint sent (with the fuzzer's bytes spliced in as extra
//! headers or body), so the fuzzer reaches dialogs without guessing the endpoint's random tags and branches.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rappel::sip::endpoint::{CallHandle, Endpoint, EndpointConfig, Event, InviteRequest};
use rappel::sip::transaction::Transport;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const METHODS: [&str; 9] = ["INVITE", "BYE", "UPDATE", "INFO", "CANCEL", "ACK", "PRACK", "OPTIONS", "NOTIFY"];
const SDP: &[u8] = b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

/// The header lines of `msg` whose name is `name` (case-insensitive).
fn lines<'a>(msg: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    msg.split("\r\n").take_while(|l| !l.is_empty()).filter(move |l| {
        l.split_once(':').is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
    })
}

fn value<'a>(msg: &'a str, name: &'a str) -> &'a str {
    lines(msg, name).next().and_then(|l| l.split_once(':')).map_or("", |(_, v)| v.trim())
}

fn with_tag(v: &str, n: u16) -> String {
    if v.contains(";tag=") { v.to_owned() } else { format!("{v};tag=fz{n}") }
}

/// A response from the peer to `ours` (a request we sent).
fn response(ours: &str, code: u16, n: u16, extra: &[u8]) -> Vec<u8> {
    let mut r = format!("SIP/2.0 {code} Fuzz\r\n").into_bytes();
    for l in lines(ours, "Via") {
        r.extend_from_slice(l.as_bytes());
        r.extend_from_slice(b"\r\n");
    }
    let head = format!(
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:peer@198.51.100.7:5060>\r\n",
        value(ours, "From"),
        with_tag(value(ours, "To"), n % 4),
        value(ours, "Call-ID"),
        value(ours, "CSeq"),
    );
    r.extend_from_slice(head.as_bytes());
    finish(r, extra, code / 100 == 2 && value(ours, "CSeq").ends_with("INVITE"))
}

/// A request from the peer in the dialog of `last` (a request or a response we sent).
fn in_dialog(last: &str, method: &str, n: u16, extra: &[u8]) -> Vec<u8> {
    let (from, to) = if last.starts_with("SIP/2.0") {
        (value(last, "From").to_owned(), value(last, "To").to_owned())
    } else {
        (with_tag(value(last, "To"), 0), value(last, "From").to_owned())
    };
    let head = format!(
        "{method} sip:rappel@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKfz{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n\
         Contact: <sip:peer@198.51.100.7:5060>\r\n",
        value(last, "Call-ID"),
        n % 64 + 1,
    );
    finish(head.into_bytes(), extra, method == "INVITE" || method == "UPDATE")
}

fn finish(mut r: Vec<u8>, extra: &[u8], sdp: bool) -> Vec<u8> {
    // The fuzzer's bytes: extra header lines when they hold no blank line, else they end the headers themselves.
    r.extend_from_slice(extra);
    if !extra.windows(4).any(|w| w == b"\r\n\r\n") {
        if !extra.is_empty() && !extra.ends_with(b"\r\n") {
            r.extend_from_slice(b"\r\n");
        }
        let body = if sdp { SDP } else { b"" };
        if sdp {
            r.extend_from_slice(b"Content-Type: application/sdp\r\n");
        }
        r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        r.extend_from_slice(body);
    }
    r
}

fuzz_target!(|data: &[u8]| {
    let local: SocketAddr = "192.0.2.10:5060".parse().unwrap();
    let peer: SocketAddr = "198.51.100.7:5060".parse().unwrap();
    let mut cfg = EndpointConfig::new(local);
    cfg.rng_seed(1).accept_invites(true).max_server_transactions(64);
    let mut ep = Endpoint::new(cfg);
    let t0 = Instant::now();
    let mut now = t0;
    let mut calls: Vec<CallHandle> = Vec::new();
    let mut last_sent: Vec<u8> = Vec::new();
    let mut last_request: Vec<u8> = Vec::new();

    let mut rest = data;
    while let [op, arg, hi, lo, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        let k = u16::from(*arg);
        let call = (!calls.is_empty()).then(|| calls[usize::from(*arg) % calls.len()]);
        match op % 8 {
            0 => ep.handle(now, peer, Transport::Udp, Bytes::copy_from_slice(bytes)),
            1 => ep.handle(now, peer, Transport::Tcp, Bytes::copy_from_slice(bytes)),
            2 => {
                now += Duration::from_millis(u64::from(*arg) * 50);
                ep.handle_timeout(now);
            }
            3 => {
                if let Ok(c) = ep.start_invite(
                    now,
                    InviteRequest {
                        target: "sip:+33100000000@198.51.100.7".into(),
                        from: "sip:rappel@192.0.2.10".into(),
                        to: None,
                        next_hop: peer,
                        transport: None,
                        sdp: Bytes::from_static(SDP),
                        credentials: None,
                        extra_headers: Vec::new(),
                    },
                ) {
                    calls.push(c);
                }
            }
            4 => {
                let ours = String::from_utf8_lossy(&last_request).into_owned();
                let code = 100 + k % 6 * 100 + u16::from(op >> 3) % 100;
                ep.handle(now, peer, Transport::Udp, Bytes::from(response(&ours, code, k, bytes)));
            }
            5 => {
                let last = String::from_utf8_lossy(&last_sent).into_owned();
                let m = METHODS[usize::from(*arg) % METHODS.len()];
                ep.handle(now, peer, Transport::Udp, Bytes::from(in_dialog(&last, m, k, bytes)));
            }
            6 => {
                if let Some(c) = call {
                    let body = Bytes::copy_from_slice(bytes);
                    let _ = match op >> 3 {
                        0 => ep.answer_invite(now, c, 180, Bytes::new()),
                        1 => ep.answer_invite(now, c, 200, Bytes::from_static(SDP)),
                        2 => ep.answer_invite(now, c, 486, Bytes::new()),
                        3 => ep.send_bye(now, c),
                        4 => ep.send_cancel(now, c),
                        5 => ep.send_reinvite(now, c, body),
                        6 => ep.send_update(now, c, body),
                        7 => ep.send_options(now, c),
                        8 => ep.answer_reinvite(now, c, 200, Bytes::from_static(SDP)),
                        9 => ep.answer_update(now, c, 200, Bytes::from_static(SDP)),
                        _ => ep.answer_invite(now, c, u16::from(*op), body),
                    };
                }
            }
            _ => ep.handle_transport_error(now, peer, Transport::Udp),
        }
        while let Some(t) = ep.poll_transmit() {
            if !t.payload.starts_with(b"SIP/2.0 ") {
                last_request = t.payload.to_vec();
            }
            last_sent = t.payload.to_vec();
        }
        while let Some(e) = ep.poll_event() {
            if let Event::IncomingCall { call, .. } = e {
                calls.push(call);
            }
        }
    }
    // Let every timer run out (a timer that keeps firing without end would fail here).
    for _ in 0..10_000 {
        let Some(t) = ep.poll_timeout() else { break };
        now = now.max(t);
        ep.handle_timeout(now);
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
    }
    assert_eq!(ep.poll_timeout(), None, "all timers ran out");
});

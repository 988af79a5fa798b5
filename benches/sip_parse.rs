//! Parse and serialise a ~900-byte INVITE with SDP (the message rappel sends and receives most).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rappel::sip::message::Message;

const INVITE: &str = "INVITE sip:+33612345678@gw.example.net:5060;transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Rappel Callback\" <sip:rappel@192.0.2.10>;tag=1928301774\r\n\
To: <sip:+33612345678@gw.example.net>\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:rappel@192.0.2.10:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO, REFER, NOTIFY\r\n\
Supported: 100rel, timer, replaces\r\n\
Session-Expires: 1800;refresher=uac\r\n\
Min-SE: 90\r\n\
P-Asserted-Identity: \"Rappel\" <sip:+33100000000@192.0.2.10>\r\n\
User-Agent: rappel/0.1\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 304\r\n\
\r\n\
v=0\r\n\
o=rappel 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=rappel\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 8 0 9 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=maxptime:150\r\n\
a=sendrecv\r\n\
a=rtcp:49171 IN IP4 192.0.2.10\r\n\
a=label:callback-leg-visitor-0001\r\n";

fn bench(c: &mut Criterion) {
    // A refcounted buffer, as the network layer hands over (BytesMut::freeze), so slicing costs what it will.
    let data: Bytes = BytesMut::from(INVITE.as_bytes()).freeze();
    assert!(Message::parse_datagram(data.clone()).is_ok_and(|m| m.check().is_ok()));
    let mut g = c.benchmark_group("sip_invite");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| Message::parse_datagram(black_box(data.clone())))
    });
    g.bench_function("parse_and_read_core_headers", |b| {
        b.iter(|| {
            let m = Message::parse_datagram(black_box(data.clone())).ok()?;
            let h = m.headers();
            Some((
                h.top_via().ok()?,
                h.cseq().ok()?,
                h.call_id().ok()?,
                h.from().ok()?.tag().cloned(),
                h.to().ok()?,
            ))
        })
    });
    g.bench_function("parse_and_check", |b| {
        b.iter(|| Message::parse_datagram(black_box(data.clone())).map(|m| m.check().is_ok()))
    });
    let msg = Message::parse_datagram(data.clone()).ok();
    let mut out = BytesMut::with_capacity(2048);
    g.bench_function("serialise", |b| {
        b.iter(|| {
            out.clear();
            if let Some(m) = &msg {
                m.write(&mut out);
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

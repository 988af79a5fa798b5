//! The tokio SIP transports on loopback: TCP framing, connection reuse and idle close; a bounded receive queue;
//! connections we open are set up off the sender and their failures reported; a TCP peer that stops reading never
//! holds up a send (its connection is dropped when its queue fills or a write stalls, and reported).

use bytes::Bytes;
use rappel::net::transport::{SipSockets, SipTransportConfig};
use rappel::sip::transaction::{Transmit, Transport};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

const OPTIONS: &str = "OPTIONS sip:rappel@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-t1\r\nMax-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=a\r\nTo: <sip:rappel@127.0.0.1>\r\nCall-ID: tcp-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

async fn bind(idle: Duration, queue: usize) -> SipSockets {
    let mut c = SipTransportConfig::new("127.0.0.1:0".parse().unwrap());
    c.tcp_idle_timeout = idle;
    c.queue = queue;
    SipSockets::bind(c).await.expect("bind")
}

#[tokio::test]
async fn tcp_message_split_across_writes_is_framed_and_the_connection_is_reused_then_closed_when_idle(
) {
    let mut s = bind(Duration::from_millis(300), 64).await;
    let addr = s.local_addrs()[0];
    let mut client = TcpStream::connect(addr).await.unwrap();
    // A keep-alive, then the message in three pieces.
    let (a, rest) = OPTIONS.split_at(10);
    let (b, c) = rest.split_at(100);
    for part in ["\r\n\r\n", a, b, c] {
        client.write_all(part.as_bytes()).await.unwrap();
        client.flush().await.unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(5), s.recv())
        .await
        .expect("a framed message")
        .expect("open");
    assert_eq!(got.transport, Transport::Tcp);
    assert_eq!(got.remote, client.local_addr().unwrap());
    assert!(got
        .data
        .starts_with(b"OPTIONS sip:rappel@127.0.0.1 SIP/2.0\r\n"));
    assert_eq!(s.tcp_connections(), 1);

    // The answer goes back over the same connection.
    let reply = Bytes::from_static(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    s.send(&Transmit {
        destination: got.remote,
        transport: Transport::Tcp,
        payload: reply.clone(),
    })
    .await
    .unwrap();
    let mut buf = vec![0u8; reply.len()];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf))
        .await
        .expect("reply in time")
        .unwrap();
    assert_eq!(&buf[..], &reply[..]);
    assert_eq!(s.tcp_connections(), 1, "no second connection was opened");

    // Then nothing: the server closes the idle connection (EOF on our side).
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .expect("closed within the idle timeout")
        .unwrap();
    assert_eq!(n, 0, "EOF");
}

#[tokio::test]
async fn tcp_framing_error_closes_the_connection() {
    let mut s = bind(Duration::from_secs(60), 64).await;
    let mut client = TcpStream::connect(s.local_addrs()[0]).await.unwrap();
    // No Content-Length: over a stream that cannot be framed.
    client
        .write_all(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP x;branch=z9hG4bK1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection was closed");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.recv())
            .await
            .is_err(),
        "nothing was delivered"
    );
}

#[tokio::test]
async fn udp_flood_is_held_in_a_bounded_queue() {
    let mut s = bind(Duration::from_secs(60), 16).await;
    let addr = s.local_addrs()[0];
    let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let garbage = vec![b'x'; 1200];
    for _ in 0..2000 {
        tx.send_to(&garbage, addr).await.unwrap();
    }
    // Nothing was read during the flood: the queue filled to its capacity and the reader then dropped what it
    // took from the kernel. Draining now yields the queue plus at most what the kernel buffer still holds, far
    // less than what was sent. (A quiet period ends the drain: "no more datagrams" has no event to await.)
    let mut held = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), s.recv()).await {
        held += 1;
    }
    assert!(held >= 16, "the queue was filled, held {held}");
    assert!(
        held < 500,
        "datagrams beyond the queue were dropped, not buffered: held {held} of 2000"
    );
}

#[tokio::test]
async fn a_tcp_connection_that_cannot_come_up_does_not_hold_up_send_and_is_reported() {
    let mut c = SipTransportConfig::new("127.0.0.1:0".parse().unwrap());
    c.tcp_connect_timeout = Duration::from_millis(300);
    let mut s = SipSockets::bind(c).await.expect("bind");
    let mut failures = s.take_failures().expect("the failure queue");
    assert!(s.take_failures().is_none(), "given once");
    // A listener that never accepts, with a backlog of 0: once one connection waits in its queue, the kernel
    // drops further SYNs, so a connection there stays pending (a black hole on loopback).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let dead = listener.local_addr().unwrap();
    let _queued = TcpStream::connect(dead).await.unwrap();
    let msg = |destination| Transmit {
        destination,
        transport: Transport::Tcp,
        payload: Bytes::from_static(OPTIONS.as_bytes()),
    };
    // `send` completes on its first poll: the connection is set up on a task.
    tokio::time::timeout(Duration::ZERO, s.send(&msg(dead)))
        .await
        .expect("send did not wait for the connection")
        .unwrap();
    assert_eq!(s.tcp_connections(), 1, "the pending connection is counted");
    // A port nobody listens on: refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    s.send(&msg(closed)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let f = tokio::time::timeout(Duration::from_secs(5), failures.recv())
            .await
            .expect("reported")
            .expect("open");
        got.push((f.destination, f.transport, f.kind));
    }
    got.sort_by_key(|g| g.0 != closed);
    assert_eq!(
        got,
        [
            (
                closed,
                Transport::Tcp,
                std::io::ErrorKind::ConnectionRefused
            ),
            (dead, Transport::Tcp, std::io::ErrorKind::TimedOut),
        ]
    );
    assert_eq!(s.tcp_connections(), 0, "both entries are gone");
}

/// A TCP socket with a small receive buffer (no autotuning): a peer that does not read closes its window early.
fn small_window() -> TcpSocket {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock
}

#[tokio::test]
async fn a_tcp_peer_that_stops_reading_is_dropped_and_never_holds_up_send() {
    let mut s = bind(Duration::from_secs(60), 64).await;
    let mut failures = s.take_failures().unwrap();
    // The peer accepts and never reads.
    let sock = small_window();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(16).unwrap();
    let peer = listener.local_addr().unwrap();
    // Another peer, over UDP: the other calls.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = Transmit {
        destination: peer,
        transport: Transport::Tcp,
        payload: Bytes::from(vec![b'x'; 64 * 1024]),
    };
    // 64 KiB messages to the peer until its connection's queue overflows: first the kernel's buffers fill (the
    // connection's writer waits for the peer), then the queue. Between two, a datagram to the other peer.
    let mut accepted = None;
    let mut refused = None;
    let mut buf = [0u8; 64];
    for i in 0..2000u32 {
        let r = tokio::time::timeout(Duration::ZERO, s.send(&tcp))
            .await
            .expect("send did not wait for the peer");
        if accepted.is_none() {
            let (a, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("connected")
                .unwrap();
            accepted = Some(a);
        }
        if let Err(e) = r {
            refused = Some((i, e.kind()));
            break;
        }
        let dgram = Transmit {
            destination: other.local_addr().unwrap(),
            transport: Transport::Udp,
            payload: Bytes::from(i.to_string()),
        };
        s.send(&dgram).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), other.recv(&mut buf))
            .await
            .expect("the datagram arrived")
            .unwrap();
        assert_eq!(&buf[..n], i.to_string().as_bytes());
        tokio::task::yield_now().await;
    }
    let (sent, kind) = refused.expect("the connection's queue overflowed");
    // The writer moved some into the kernel before the peer's window closed; the queue then took its 64.
    assert!(
        sent > rappel::net::transport::TCP_SEND_QUEUE as u32,
        "refused after {sent}"
    );
    assert_eq!(kind, std::io::ErrorKind::WouldBlock);
    // What was queued is reported lost, the connection is gone and counted.
    let f = tokio::time::timeout(Duration::from_secs(5), failures.recv())
        .await
        .expect("reported")
        .expect("open");
    assert_eq!(
        (f.destination, f.transport, f.kind),
        (peer, Transport::Tcp, std::io::ErrorKind::WouldBlock)
    );
    assert_eq!(s.tcp_connections(), 0);
    assert_eq!(s.stalled_tcp_connections(), 1);
    // Its task ended and reset it: the peer, reading at last, finds the end of the connection.
    let mut accepted = accepted.unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match accepted.read(&mut sink).await {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e.kind()),
            }
        }
    })
    .await
    .expect("the connection was closed");
    assert!(
        matches!(end, Ok(()) | Err(std::io::ErrorKind::ConnectionReset)),
        "{end:?}"
    );
    // The next message opens a new connection.
    s.send(&Transmit {
        destination: peer,
        transport: Transport::Tcp,
        payload: Bytes::from_static(OPTIONS.as_bytes()),
    })
    .await
    .unwrap();
    assert_eq!(s.tcp_connections(), 1);
}

#[tokio::test]
async fn a_write_that_makes_no_headway_drops_the_connection_after_the_write_timeout() {
    let mut c = SipTransportConfig::new("127.0.0.1:0".parse().unwrap());
    c.tcp_write_timeout = Duration::from_millis(300);
    let mut s = SipSockets::bind(c).await.expect("bind");
    let mut failures = s.take_failures().unwrap();
    // A client connects, sends a request, and never reads the answer.
    let mut client = small_window().connect(s.local_addrs()[0]).await.unwrap();
    client.write_all(OPTIONS.as_bytes()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), s.recv())
        .await
        .expect("the request")
        .expect("open");
    assert_eq!(s.tcp_connections(), 1);
    // One answer far larger than the kernel's buffers (4 MiB at most for a send buffer): the write stalls with
    // the queue otherwise empty.
    let huge = Transmit {
        destination: got.remote,
        transport: Transport::Tcp,
        payload: Bytes::from(vec![b'x'; 16 << 20]),
    };
    let sent_at = std::time::Instant::now();
    tokio::time::timeout(Duration::ZERO, s.send(&huge))
        .await
        .expect("send did not wait for the peer")
        .unwrap();
    let f = tokio::time::timeout(Duration::from_secs(5), failures.recv())
        .await
        .expect("reported")
        .expect("open");
    assert!(
        sent_at.elapsed() >= Duration::from_millis(300),
        "not before the write timeout"
    );
    assert_eq!(
        (f.destination, f.transport, f.kind),
        (got.remote, Transport::Tcp, std::io::ErrorKind::TimedOut)
    );
    assert_eq!(s.tcp_connections(), 0, "the connection is gone");
    assert_eq!(s.stalled_tcp_connections(), 1);
}

#[tokio::test]
async fn peers_holding_every_inbound_slot_do_not_keep_us_from_opening_a_connection() {
    let mut c = SipTransportConfig::new("127.0.0.1:0".parse().unwrap());
    c.max_tcp_connections = 2;
    let mut s = SipSockets::bind(c).await.expect("bind");
    let addr = s.local_addrs()[0];
    // Two peers connect and stay (each sends a request, so both are known to be taken in).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut p = TcpStream::connect(addr).await.unwrap();
        p.write_all(OPTIONS.as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.recv())
            .await
            .expect("the request")
            .expect("open");
        held.push(p);
    }
    assert_eq!(s.tcp_connections(), 2);
    // A third is refused: closed at once.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "refused");
    // We can still reach a server of our own: outgoing connections have their own cap.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    s.send(&Transmit {
        destination: server.local_addr().unwrap(),
        transport: Transport::Tcp,
        payload: Bytes::from_static(OPTIONS.as_bytes()),
    })
    .await
    .expect("a connection of ours is not refused");
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), server.accept())
        .await
        .expect("connected")
        .unwrap();
    let mut got = vec![0u8; OPTIONS.len()];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut got))
        .await
        .expect("the message")
        .unwrap();
    assert_eq!(&got[..], OPTIONS.as_bytes());
    assert_eq!(s.tcp_connections(), 3);
}

#[tokio::test]
async fn a_peer_trickling_a_message_is_closed_after_the_message_timeout() {
    // Idle timeout 2 s, message timeout 500 ms: a peer sending one byte of a request every 100 ms is never idle,
    // but its message is not complete in time.
    let mut c = SipTransportConfig::new("127.0.0.1:0".parse().unwrap());
    c.tcp_idle_timeout = Duration::from_secs(2);
    c.tcp_message_timeout = Duration::from_millis(500);
    let mut s = SipSockets::bind(c).await.expect("bind");
    let mut client = TcpStream::connect(s.local_addrs()[0]).await.unwrap();
    let start = std::time::Instant::now();
    client.write_all(&OPTIONS.as_bytes()[..20]).await.unwrap();
    let mut next = 20;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut buf = [0u8; 16];
    let closed_after = loop {
        tokio::select! {
            r = client.read(&mut buf) => {
                assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
                break start.elapsed();
            }
            _ = tick.tick() => {
                assert!(start.elapsed() < Duration::from_secs(5), "still open");
                if next < OPTIONS.len() - 1 {
                    // Writes may fail once the connection is closed; the read above reports it.
                    let _ = client.write_all(&OPTIONS.as_bytes()[next..next + 1]).await;
                    next += 1;
                }
            }
        }
    };
    assert!(
        closed_after >= Duration::from_millis(500) && closed_after < Duration::from_secs(2),
        "closed after {closed_after:?}, before the idle timeout"
    );
    assert!(next < OPTIONS.len() - 1, "the message was never completed");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), s.recv())
            .await
            .is_err(),
        "nothing was delivered"
    );
    assert_eq!(s.tcp_connections(), 0);
}

#[tokio::test]
async fn a_tcp_peer_filling_its_queue_does_not_crowd_out_udp() {
    // Queues of 8. A TCP peer sends 200 requests at once: its connection fills the TCP queue and waits. A
    // datagram sent meanwhile still finds room and comes out among the first messages taken.
    let mut s = bind(Duration::from_secs(60), 8).await;
    let addr = s.local_addrs()[0];
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(OPTIONS.repeat(200).as_bytes())
        .await
        .unwrap();
    // The first message out proves the connection's reader runs (it then refills the queue at once).
    let first = tokio::time::timeout(Duration::from_secs(5), s.recv())
        .await
        .expect("a message")
        .expect("open");
    assert_eq!(first.transport, Transport::Tcp);
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(b"OPTIONS over UDP", addr).await.unwrap();
    // Let the readers run (a yielded task waits for the runtime to poll its sockets): the datagram is read while
    // the TCP connection's reader waits on its full queue.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    let mut taken = 1;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(5), s.recv())
            .await
            .expect("the datagram was dropped")
            .expect("open");
        taken += 1;
        if r.transport == Transport::Udp {
            assert_eq!(&r.data[..], b"OPTIONS over UDP");
            break;
        }
    }
    assert!(
        taken < 200,
        "the datagram came out while TCP messages were still waiting ({taken})"
    );
}

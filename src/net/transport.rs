//! SIP transports over tokio: UDP and TCP, IPv4 and IPv6.
//!
//! This module only moves bytes. Received datagrams and framed stream messages go into two bounded queues, one
//! per transport, that [`SipSockets::recv`] takes from at random when both hold messages: a TCP connection
//! waiting on a full queue takes each freed slot first, so with one shared queue TCP peers sending as fast as the
//! caller reads would crowd every datagram out. [`SipSockets::send`] writes a [`Transmit`] on the transport it
//! names.
//!
//! - **UDP**: one socket per bound address; a datagram goes out of the socket whose address family matches the
//!   destination.
//! - **TCP**: a listener per bound address; connections, accepted or opened by us, are kept in a table keyed by
//!   the remote address, so the requests and responses of a dialog reuse the connection (RFC 3261 §18). A
//!   connection with no traffic for [`SipTransportConfig::tcp_idle_timeout`] is closed, and so is one whose peer
//!   begins a message and does not complete it within [`SipTransportConfig::tcp_message_timeout`] (a peer
//!   trickling bytes would otherwise hold its connection, and its place, forever). Streams are cut into
//!   messages by [`StreamFramer`], which caps what it buffers; a framing error closes the connection.
//!   [`SipSockets::send`] never waits for a connection to be set up: a new connection is opened on a spawned
//!   task (messages queue for it meanwhile), so a peer that drops our SYNs cannot stall the caller's task; a
//!   connection that fails or takes longer than [`SipTransportConfig::tcp_connect_timeout`] is reported on
//!   [`SipSockets::take_failures`].
//! - **A TCP peer that stops reading** never holds up [`SipSockets::send`] either: each connection has a queue of
//!   [`TCP_SEND_QUEUE`] messages, and a message that finds it full is refused and the connection dropped at once
//!   (reset), its queued messages reported lost on [`SipSockets::take_failures`]. A write that makes no headway for
//!   [`SipTransportConfig::tcp_write_timeout`] drops the connection the same way, so a stalled connection never
//!   keeps its task, its socket and its place among [`SipTransportConfig::max_tcp_connections`]. Both are counted
//!   ([`SipSockets::stalled_tcp_connections`]).
//!
//! **Bounded memory**: the received queues have a fixed capacity; a datagram that finds its queue full is dropped
//! (a peer sending garbage at high rate costs a bounded amount of memory; its retransmissions will come back),
//! while a TCP connection waits (its peer is held back by flow control). Receive
//! buffers are fixed-size, and the number of TCP connections is capped: those accepted and those we open each
//! have their own cap, so peers holding connections to us never keep us from reaching the trunk.

use crate::sip::message::{Message, ParseLimits, StreamFramer};
use crate::sip::transaction::{Transmit, Transport};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// Largest UDP datagram read (RFC 3261 §18.1.1 allows up to 65,535 octets).
const UDP_BUF: usize = 65_535;

/// Messages waiting to be written on one TCP connection; one more drops the connection (see the module docs).
pub const TCP_SEND_QUEUE: usize = 64;

/// Where and how the SIP transports listen.
#[derive(Debug, Clone)]
pub struct SipTransportConfig {
    /// Addresses to bind, each for UDP and, when [`Self::tcp`] is set, TCP. Port 0 picks a free port (the same
    /// one for TCP as UDP got).
    pub bind: Vec<SocketAddr>,
    /// Also listen on TCP.
    pub tcp: bool,
    /// A TCP connection with no traffic for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// A message begun on a TCP connection that is not complete this long after its first bytes came closes the
    /// connection.
    pub tcp_message_timeout: Duration,
    /// At most this many TCP connections accepted at once (more are refused), and at most this many opened by us
    /// (a send needing another fails): the two are counted apart.
    pub max_tcp_connections: usize,
    /// A TCP connection we open that is not up after this long is given up (reported on
    /// [`SipSockets::take_failures`]).
    pub tcp_connect_timeout: Duration,
    /// A message not written out within this long (the peer stopped reading) drops its TCP connection (reported
    /// on [`SipSockets::take_failures`]).
    pub tcp_write_timeout: Duration,
    /// Capacity of each received-message queue (one for UDP, one for TCP).
    pub queue: usize,
    /// Size limits for stream framing.
    pub limits: ParseLimits,
}

impl SipTransportConfig {
    /// UDP and TCP on `addr`, 60 s idle timeout, 1,024 connections, 4 s to connect, 10 s to write a message and
    /// 30 s to receive one, a 4,096-message queue.
    pub fn new(addr: SocketAddr) -> Self {
        SipTransportConfig {
            bind: vec![addr],
            tcp: true,
            tcp_idle_timeout: Duration::from_secs(60),
            tcp_message_timeout: Duration::from_secs(30),
            max_tcp_connections: 1024,
            tcp_connect_timeout: Duration::from_secs(4),
            tcp_write_timeout: Duration::from_secs(10),
            queue: 4096,
            limits: ParseLimits::default(),
        }
    }
}

/// One message received: a UDP datagram or a framed TCP message.
#[derive(Debug, Clone)]
pub struct Received {
    /// The transport it came on.
    pub transport: Transport,
    /// The remote address.
    pub remote: SocketAddr,
    /// The raw bytes of one message.
    pub data: Bytes,
}

/// A message that could not be delivered after [`SipSockets::send`] returned: a TCP connection we opened failed
/// (refused, unreachable, or not up within [`SipTransportConfig::tcp_connect_timeout`]), or a connection was
/// dropped with messages still queued (its peer stopped reading, closed or reset it). What was queued for it is
/// lost; the driver fails the transactions sending there (RFC 3261 §17.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendFailure {
    /// The transport.
    pub transport: Transport,
    /// Where the messages were going.
    pub destination: SocketAddr,
    /// Why: `TimedOut` for the connect or write timeout, `WouldBlock` for a full send queue, else the socket's
    /// error.
    pub kind: io::ErrorKind,
}

/// Capacity of the [`SendFailure`] queue; beyond it failures are dropped (the transactions then time out).
const FAILURE_QUEUE: usize = 256;

/// A TCP connection in the table.
#[derive(Debug)]
struct Conn {
    /// Tells this connection apart from a later one to the same address.
    id: u64,
    /// Accepted from the peer (else opened by us).
    inbound: bool,
    /// Its queue of messages to write.
    writes: mpsc::Sender<Bytes>,
    /// Dropped with the entry: the connection's task then ends at once, even in the middle of a write.
    _close: oneshot::Sender<()>,
}

/// The TCP connections by remote address, shared by the sender, the acceptors and the connection tasks.
#[derive(Debug, Default)]
struct Conns {
    table: Mutex<HashMap<SocketAddr, Conn>>,
    next_id: AtomicU64,
    /// Connections dropped because their peer stopped reading.
    stalled: AtomicU64,
}

impl Conns {
    fn len(&self) -> usize {
        self.table.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// The connections accepted (`inbound`) or opened by us; a poisoned table counts as full.
    fn count(&self, inbound: bool) -> usize {
        self.table
            .lock()
            .map(|c| c.values().filter(|c| c.inbound == inbound).count())
            .unwrap_or(usize::MAX)
    }

    /// Files a new connection to `remote` (replacing any other), accepted or ours, with `first` queued on it;
    /// returns its id, its queue's receiver and its close signal.
    fn insert(
        &self,
        remote: SocketAddr,
        inbound: bool,
        first: Option<Bytes>,
    ) -> io::Result<(u64, mpsc::Receiver<Bytes>, oneshot::Receiver<()>)> {
        let (wtx, wrx) = mpsc::channel(TCP_SEND_QUEUE);
        if let Some(m) = first {
            wtx.try_send(m)
                .map_err(|_| io::Error::other("new connection queue"))?;
        }
        let (ctx, crx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            id,
            inbound,
            writes: wtx,
            _close: ctx,
        };
        self.table
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .insert(remote, conn);
        Ok((id, wrx, crx))
    }

    /// Removes connection `id` to `remote` if it is still the one filed there.
    fn remove(&self, remote: SocketAddr, id: u64) {
        if let Ok(mut c) = self.table.lock() {
            if c.get(&remote).is_some_and(|c| c.id == id) {
                c.remove(&remote);
            }
        }
    }
}

type ConnTable = Arc<Conns>;

/// What a connection's task needs besides its socket.
#[derive(Debug, Clone)]
struct ConnCtx {
    conns: ConnTable,
    /// Where framed TCP messages go.
    received: mpsc::Sender<Received>,
    failures: mpsc::Sender<SendFailure>,
    idle: Duration,
    message_timeout: Duration,
    write_timeout: Duration,
    limits: ParseLimits,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Closed with nothing lost: end of stream, idle, a framing error.
    Clean,
    /// Dropped from the table by the sender (its queue was full); the sender reported it.
    Dropped,
    /// A write failed or made no headway in time, or messages were still queued: they are lost.
    Lost(io::ErrorKind),
}

/// The bound SIP sockets and their reader tasks. Dropping it stops every task and closes every socket.
#[derive(Debug)]
pub struct SipSockets {
    udp: Vec<Arc<UdpSocket>>,
    local: Vec<SocketAddr>,
    /// Datagrams received.
    udp_rx: mpsc::Receiver<Received>,
    /// Framed TCP messages received.
    tcp_rx: mpsc::Receiver<Received>,
    failures: Option<mpsc::Receiver<SendFailure>>,
    ctx: ConnCtx,
    config: SipTransportConfig,
    tasks: JoinSet<()>,
}

impl SipSockets {
    /// Binds every configured address and starts the readers.
    pub async fn bind(config: SipTransportConfig) -> io::Result<SipSockets> {
        let (udp_tx, udp_rx) = mpsc::channel(config.queue.max(1));
        let (tx, tcp_rx) = mpsc::channel(config.queue.max(1));
        let (failures_tx, failures) = mpsc::channel(FAILURE_QUEUE);
        let ctx = ConnCtx {
            conns: Arc::default(),
            received: tx,
            failures: failures_tx,
            idle: config.tcp_idle_timeout,
            message_timeout: config.tcp_message_timeout,
            write_timeout: config.tcp_write_timeout,
            limits: config.limits,
        };
        let mut tasks = JoinSet::new();
        let mut udp = Vec::new();
        let mut local = Vec::new();
        for addr in &config.bind {
            let (sock, listener) = bind_pair(*addr, config.tcp).await?;
            let sock = Arc::new(sock);
            let bound = sock.local_addr()?;
            local.push(bound);
            tasks.spawn(udp_reader(sock.clone(), udp_tx.clone()));
            udp.push(sock);
            if let Some(listener) = listener {
                tasks.spawn(tcp_acceptor(
                    listener,
                    ctx.clone(),
                    config.max_tcp_connections,
                ));
            }
        }
        Ok(SipSockets {
            udp,
            local,
            udp_rx,
            tcp_rx,
            failures: Some(failures),
            ctx,
            config,
            tasks,
        })
    }

    /// The bound addresses (ports resolved), in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// The next received message, from either queue (picked at random when both hold one); `None` once every
    /// reader has stopped. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Received> {
        tokio::select! {
            Some(r) = self.udp_rx.recv() => Some(r),
            Some(r) = self.tcp_rx.recv() => Some(r),
            else => None,
        }
    }

    /// The queue of messages that could not be delivered after [`Self::send`] returned (TCP connections that did
    /// not come up or were dropped with messages queued), for a `select!` next to [`Self::recv`]. Given once
    /// (`None` afterwards); failures nobody takes are dropped once 256 of them wait.
    pub fn take_failures(&mut self) -> Option<mpsc::Receiver<SendFailure>> {
        self.failures.take()
    }

    /// Number of open TCP connections (including those being set up).
    pub fn tcp_connections(&self) -> usize {
        self.ctx.conns.len()
    }

    /// How many TCP connections were dropped because their peer stopped reading: a send found the connection's
    /// queue full, or a write made no headway within [`SipTransportConfig::tcp_write_timeout`].
    pub fn stalled_tcp_connections(&self) -> u64 {
        self.ctx.conns.stalled.load(Ordering::Relaxed)
    }

    /// Sends one message. Over TCP, reuses the connection to the destination or opens one; this never waits for
    /// a TCP peer (see the module docs): a message the connection's queue cannot take is refused with
    /// `WouldBlock` and the connection dropped.
    pub async fn send(&mut self, t: &Transmit) -> io::Result<()> {
        match t.transport {
            Transport::Udp => {
                let sock = self
                    .udp
                    .iter()
                    .zip(&self.local)
                    .find(|(_, a)| a.is_ipv4() == t.destination.is_ipv4())
                    .map(|(s, _)| s)
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::AddrNotAvailable, "no socket of that family")
                    })?;
                sock.send_to(&t.payload, t.destination).await.map(|_| ())
            }
            Transport::Tcp => self.send_tcp(t.destination, t.payload.clone()),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "transport not supported",
            )),
        }
    }

    fn send_tcp(&mut self, dest: SocketAddr, payload: Bytes) -> io::Result<()> {
        let payload = {
            let mut table = self
                .ctx
                .conns
                .table
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?;
            let Some(conn) = table.get(&dest) else {
                drop(table);
                return self.open_tcp(dest, payload);
            };
            match conn.writes.try_send(payload) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The peer stopped reading: waiting here would stall every call of the caller's task. Drop
                    // the connection (its task ends now) and the messages queued for it.
                    table.remove(&dest);
                    drop(table);
                    self.ctx.conns.stalled.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%dest, "TCP peer not reading: connection dropped");
                    let _ = self.ctx.failures.try_send(SendFailure {
                        transport: Transport::Tcp,
                        destination: dest,
                        kind: io::ErrorKind::WouldBlock,
                    });
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "TCP send queue full: connection dropped",
                    ));
                }
                // The connection ended (its entry is about to go): a new one.
                Err(mpsc::error::TrySendError::Closed(p)) => {
                    table.remove(&dest);
                    p
                }
            }
        };
        self.open_tcp(dest, payload)
    }

    /// Opens a connection to `dest` on a task, with `payload` queued for it.
    fn open_tcp(&mut self, dest: SocketAddr, payload: Bytes) -> io::Result<()> {
        if self.ctx.conns.count(false) >= self.config.max_tcp_connections {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "too many TCP connections",
            ));
        }
        // Queue the message and connect on a task: a peer dropping our SYNs must not hold up the caller.
        let (id, wrx, close) = self.ctx.conns.insert(dest, false, Some(payload))?;
        let ctx = self.ctx.clone();
        let limit = self.config.tcp_connect_timeout;
        self.tasks.spawn(async move {
            let connected = match tokio::time::timeout(limit, TcpStream::connect(dest)).await {
                Ok(Ok(stream)) => stream.set_nodelay(true).map(|()| stream),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            };
            match connected {
                Ok(stream) => run_connection(stream, dest, id, wrx, close, ctx).await,
                Err(e) => {
                    tracing::debug!(%dest, error = %e, "TCP connection failed");
                    ctx.conns.remove(dest, id);
                    let _ = ctx.failures.try_send(SendFailure {
                        transport: Transport::Tcp,
                        destination: dest,
                        kind: e.kind(),
                    });
                }
            }
        });
        // Reap finished connection tasks so the set does not grow.
        while self.tasks.try_join_next().is_some() {}
        Ok(())
    }
}

/// Binds UDP on `addr` and, when `tcp`, TCP on the same port. With port 0 the kernel picks the UDP port, and that
/// number may already be taken for TCP by another socket: then another UDP port is tried (a few times).
async fn bind_pair(addr: SocketAddr, tcp: bool) -> io::Result<(UdpSocket, Option<TcpListener>)> {
    let mut attempts = 0;
    loop {
        let sock = UdpSocket::bind(addr).await?;
        if !tcp {
            return Ok((sock, None));
        }
        let bound = sock.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(l) => return Ok((sock, Some(l))),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && addr.port() == 0 && attempts < 16 => {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn udp_reader(sock: Arc<UdpSocket>, tx: mpsc::Sender<Received>) {
    let mut buf = vec![0u8; UDP_BUF];
    loop {
        let (n, remote) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP port unreachable and the like surface as errors on some systems: keep reading.
            Err(_) => continue,
        };
        let data = Bytes::copy_from_slice(&buf[..n]);
        let msg = Received {
            transport: Transport::Udp,
            remote,
            data,
        };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(%remote, "SIP receive queue full: datagram dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

async fn tcp_acceptor(listener: TcpListener, ctx: ConnCtx, max: usize) {
    let mut tasks = JoinSet::new();
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: the error would come back at once, so pause instead
                // of spinning on it.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if ctx.conns.count(true) >= max {
            tracing::warn!(%remote, "TCP connection refused: too many connections");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let Ok((id, wrx, close)) = ctx.conns.insert(remote, true, None) else {
            continue;
        };
        tasks.spawn(run_connection(stream, remote, id, wrx, close, ctx.clone()));
        // Reap finished connection tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
}

/// The pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Runs connection `id` until it ends, then takes it out of the table and reports what it lost.
async fn run_connection(
    stream: TcpStream,
    remote: SocketAddr,
    id: u64,
    writes: mpsc::Receiver<Bytes>,
    close: oneshot::Receiver<()>,
    ctx: ConnCtx,
) {
    let ended = connection(stream, remote, writes, close, &ctx).await;
    ctx.conns.remove(remote, id);
    if let Ended::Lost(kind) = ended {
        if kind == io::ErrorKind::TimedOut {
            ctx.conns.stalled.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%remote, ?kind, "TCP connection lost with messages unsent");
        let _ = ctx.failures.try_send(SendFailure {
            transport: Transport::Tcp,
            destination: remote,
            kind,
        });
    }
}

/// Runs one TCP connection until it closes, fails framing, stays idle too long, cannot write, or is dropped from
/// the table (`close`). A connection that ends stalled is reset rather than closed, so the kernel keeps nothing
/// queued for a peer that does not read.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    mut writes: mpsc::Receiver<Bytes>,
    mut close: oneshot::Receiver<()>,
    ctx: &ConnCtx,
) -> Ended {
    let (mut rd, mut wr) = stream.into_split();
    let mut framer = StreamFramer::new(ctx.limits);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // When the first bytes of the message the framer holds in part came.
    let mut begun: Option<tokio::time::Instant> = None;
    let ended = loop {
        let read_for = match begun {
            Some(t) => ctx
                .idle
                .min(ctx.message_timeout.saturating_sub(t.elapsed())),
            None => ctx.idle,
        };
        tokio::select! {
            _ = &mut close => break Ended::Dropped,
            r = tokio::time::timeout(read_for, rd.read_buf(&mut buf)) => {
                let n = match r {
                    Ok(Ok(n)) if n > 0 => n,
                    Ok(_) => break Ended::Clean, // closed or failed
                    Err(_) => {
                        tracing::debug!(%remote, partial = begun.is_some(), "TCP connection idle or too slow: closed");
                        break Ended::Clean;
                    }
                };
                let chunk = buf.split_to(n);
                if framer.push(&chunk).is_err() {
                    break Ended::Clean;
                }
                let mut framed = Ended::Clean;
                let mut popped = false;
                loop {
                    match framer.pop() {
                        Ok(Some(msg)) => {
                            popped = true;
                            let data = Message::to_bytes(&msg);
                            let r = Received { transport: Transport::Tcp, remote, data };
                            tokio::select! {
                                sent = ctx.received.send(r) => if sent.is_err() {
                                    return Ended::Clean;
                                },
                                _ = &mut close => {
                                    framed = Ended::Dropped;
                                    break;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(%remote, error = %e, "TCP framing error: connection closed");
                            return lost_if_queued(&mut writes);
                        }
                    }
                }
                if framed == Ended::Dropped {
                    break Ended::Dropped;
                }
                // A message completed: what is left (if anything) is the next one, begun now.
                begun = match (framer.buffered(), begun) {
                    (0, _) => None,
                    (_, Some(t)) if !popped => Some(t),
                    _ => Some(tokio::time::Instant::now()),
                };
                if buf.capacity() < 4096 {
                    buf.reserve(16 * 1024);
                }
            }
            w = writes.recv() => {
                let Some(bytes) = w else { break Ended::Clean };
                tokio::select! {
                    r = tokio::time::timeout(ctx.write_timeout, wr.write_all(&bytes)) => match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break Ended::Lost(e.kind()),
                        Err(_) => {
                            tracing::warn!(%remote, "TCP peer not reading: connection dropped");
                            break Ended::Lost(io::ErrorKind::TimedOut);
                        }
                    },
                    _ = &mut close => break Ended::Dropped,
                }
            }
        }
    };
    let ended = match ended {
        Ended::Clean => lost_if_queued(&mut writes),
        e => e,
    };
    if matches!(ended, Ended::Dropped | Ended::Lost(io::ErrorKind::TimedOut)) {
        // Reset: what the kernel still holds for this peer is discarded with the connection.
        if let Ok(stream) = rd.reunite(wr) {
            let _ = stream.set_zero_linger();
        }
    }
    ended
}

/// [`Ended::Lost`] when messages are still queued on a connection that ended, else [`Ended::Clean`].
fn lost_if_queued(writes: &mut mpsc::Receiver<Bytes>) -> Ended {
    writes.close();
    if writes.try_recv().is_ok() {
        Ended::Lost(io::ErrorKind::ConnectionAborted)
    } else {
        Ended::Clean
    }
}

//! SIP transports over tokio: UDP and TCP, IPv4 and IPv6.
//!
//! This module only moves bytes. Received datagrams and framed stream messages go into one bounded queue
//! ([`SipSockets::recv`]); [`SipSockets::send`] writes a [`Transmit`] on the transport it names.
//!
//! - **UDP**: one socket per bound address; a datagram goes out of the socket whose address family matches the
//!   destination.
//! - **TCP**: a listener per bound address; connections, accepted or opened by us, are kept in a table keyed by
//!   the remote address, so the requests and responses of a dialog reuse the connection (RFC 3261 §18). A
//!   connection with no traffic for [`SipTransportConfig::tcp_idle_timeout`] is closed. Streams are cut into
//!   messages by [`StreamFramer`], which caps what it buffers; a framing error closes the connection.
//!   [`SipSockets::send`] never waits for a connection to be set up: a new connection is opened on a spawned
//!   task (messages queue for it meanwhile), so a peer that drops our SYNs cannot stall the caller's task; a
//!   connection that fails or takes longer than [`SipTransportConfig::tcp_connect_timeout`] is reported on
//!   [`SipSockets::take_failures`].
//!
//! **Bounded memory**: the received queue has a fixed capacity and a datagram that finds it full is dropped (a peer
//! sending garbage at high rate costs a bounded amount of memory; its retransmissions will come back), receive
//! buffers are fixed-size, and the number of TCP connections is capped.

use crate::sip::message::{Message, ParseLimits, StreamFramer};
use crate::sip::transaction::{Transmit, Transport};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Largest UDP datagram read (RFC 3261 §18.1.1 allows up to 65,535 octets).
const UDP_BUF: usize = 65_535;

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
    /// At most this many TCP connections at once; more are refused.
    pub max_tcp_connections: usize,
    /// A TCP connection we open that is not up after this long is given up (reported on
    /// [`SipSockets::take_failures`]).
    pub tcp_connect_timeout: Duration,
    /// Capacity of the received-message queue.
    pub queue: usize,
    /// Size limits for stream framing.
    pub limits: ParseLimits,
}

impl SipTransportConfig {
    /// UDP and TCP on `addr`, 60 s idle timeout, 1,024 connections, 4 s to connect, a 4,096-message queue.
    pub fn new(addr: SocketAddr) -> Self {
        SipTransportConfig {
            bind: vec![addr],
            tcp: true,
            tcp_idle_timeout: Duration::from_secs(60),
            max_tcp_connections: 1024,
            tcp_connect_timeout: Duration::from_secs(4),
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
/// (refused, unreachable, or not up within [`SipTransportConfig::tcp_connect_timeout`]). What was queued for it
/// is lost; the driver fails the transactions sending there (RFC 3261 §17.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendFailure {
    /// The transport.
    pub transport: Transport,
    /// Where the messages were going.
    pub destination: SocketAddr,
    /// Why (`TimedOut` for the connect timeout).
    pub kind: io::ErrorKind,
}

/// Capacity of the [`SendFailure`] queue; beyond it failures are dropped (the transactions then time out).
const FAILURE_QUEUE: usize = 256;

type ConnTable = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>>;

/// The bound SIP sockets and their reader tasks. Dropping it stops every task and closes every socket.
#[derive(Debug)]
pub struct SipSockets {
    udp: Vec<Arc<UdpSocket>>,
    local: Vec<SocketAddr>,
    conns: ConnTable,
    rx: mpsc::Receiver<Received>,
    tx: mpsc::Sender<Received>,
    failures: Option<mpsc::Receiver<SendFailure>>,
    failures_tx: mpsc::Sender<SendFailure>,
    config: SipTransportConfig,
    tasks: JoinSet<()>,
}

impl SipSockets {
    /// Binds every configured address and starts the readers.
    pub async fn bind(config: SipTransportConfig) -> io::Result<SipSockets> {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let conns: ConnTable = Arc::default();
        let mut tasks = JoinSet::new();
        let mut udp = Vec::new();
        let mut local = Vec::new();
        for addr in &config.bind {
            let (sock, listener) = bind_pair(*addr, config.tcp).await?;
            let sock = Arc::new(sock);
            let bound = sock.local_addr()?;
            local.push(bound);
            tasks.spawn(udp_reader(sock.clone(), tx.clone()));
            udp.push(sock);
            if let Some(listener) = listener {
                tasks.spawn(tcp_acceptor(
                    listener,
                    conns.clone(),
                    tx.clone(),
                    config.clone(),
                ));
            }
        }
        let (failures_tx, failures) = mpsc::channel(FAILURE_QUEUE);
        Ok(SipSockets {
            udp,
            local,
            conns,
            rx,
            tx,
            failures: Some(failures),
            failures_tx,
            config,
            tasks,
        })
    }

    /// The bound addresses (ports resolved), in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// The next received message; `None` once every reader has stopped.
    pub async fn recv(&mut self) -> Option<Received> {
        self.rx.recv().await
    }

    /// The queue of messages that could not be delivered after [`Self::send`] returned (TCP connections that did
    /// not come up), for a `select!` next to [`Self::recv`]. Given once (`None` afterwards); failures nobody takes
    /// are dropped once 256 of them wait.
    pub fn take_failures(&mut self) -> Option<mpsc::Receiver<SendFailure>> {
        self.failures.take()
    }

    /// Number of open TCP connections (including those being set up).
    pub fn tcp_connections(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Sends one message. Over TCP, reuses the connection to the destination or opens one.
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
            Transport::Tcp => self.send_tcp(t.destination, t.payload.clone()).await,
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "transport not supported",
            )),
        }
    }

    async fn send_tcp(&mut self, dest: SocketAddr, payload: Bytes) -> io::Result<()> {
        let existing = self
            .conns
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .get(&dest)
            .cloned();
        if let Some(w) = existing {
            if w.send(payload.clone()).await.is_ok() {
                return Ok(());
            }
        }
        if self.tcp_connections() >= self.config.max_tcp_connections {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "too many TCP connections",
            ));
        }
        // Queue the message and connect on a task: a peer dropping our SYNs must not hold up the caller.
        let (wtx, wrx) = mpsc::channel::<Bytes>(64);
        wtx.try_send(payload)
            .map_err(|_| io::Error::other("new connection queue"))?;
        self.conns
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .insert(dest, wtx.clone());
        let conns = self.conns.clone();
        let (tx, failures) = (self.tx.clone(), self.failures_tx.clone());
        let (idle, limits) = (self.config.tcp_idle_timeout, self.config.limits);
        let limit = self.config.tcp_connect_timeout;
        self.tasks.spawn(async move {
            let connected = match tokio::time::timeout(limit, TcpStream::connect(dest)).await {
                Ok(Ok(stream)) => stream.set_nodelay(true).map(|()| stream),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            };
            let failed = match connected {
                Ok(stream) => {
                    connection(stream, dest, wrx, tx, idle, limits).await;
                    None
                }
                Err(e) => Some(e),
            };
            if let Ok(mut c) = conns.lock() {
                // Only this connection's entry: another one may have taken the address meanwhile.
                if c.get(&dest).is_some_and(|w| w.same_channel(&wtx)) {
                    c.remove(&dest);
                }
            }
            if let Some(e) = failed {
                tracing::debug!(%dest, error = %e, "TCP connection failed");
                let _ = failures.try_send(SendFailure {
                    transport: Transport::Tcp,
                    destination: dest,
                    kind: e.kind(),
                });
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

async fn tcp_acceptor(
    listener: TcpListener,
    conns: ConnTable,
    tx: mpsc::Sender<Received>,
    config: SipTransportConfig,
) {
    let mut tasks = JoinSet::new();
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let full = conns
            .lock()
            .map(|c| c.len() >= config.max_tcp_connections)
            .unwrap_or(true);
        if full {
            tracing::warn!(%remote, "TCP connection refused: too many connections");
            continue;
        }
        let _ = stream.set_nodelay(true);
        if register(stream, remote, &conns, tx.clone(), &config, &mut tasks).is_err() {
            continue;
        }
        // Reap finished connection tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
}

/// Puts a connection in the table and spawns its reader and writer. Returns the writer's queue.
fn register(
    stream: TcpStream,
    remote: SocketAddr,
    conns: &ConnTable,
    tx: mpsc::Sender<Received>,
    config: &SipTransportConfig,
    tasks: &mut JoinSet<()>,
) -> io::Result<mpsc::Sender<Bytes>> {
    let (wtx, wrx) = mpsc::channel::<Bytes>(64);
    conns
        .lock()
        .map_err(|_| io::Error::other("poisoned"))?
        .insert(remote, wtx.clone());
    let conns = conns.clone();
    let idle = config.tcp_idle_timeout;
    let limits = config.limits;
    tasks.spawn(async move {
        connection(stream, remote, wrx, tx, idle, limits).await;
        if let Ok(mut c) = conns.lock() {
            c.remove(&remote);
        }
    });
    Ok(wtx)
}

/// Runs one TCP connection until it closes, fails framing, or stays idle too long.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    mut writes: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Received>,
    idle: Duration,
    limits: ParseLimits,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut framer = StreamFramer::new(limits);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        tokio::select! {
            r = tokio::time::timeout(idle, rd.read_buf(&mut buf)) => {
                let n = match r {
                    Ok(Ok(n)) if n > 0 => n,
                    Ok(_) => return, // closed or failed
                    Err(_) => {
                        tracing::debug!(%remote, "TCP connection idle: closed");
                        return;
                    }
                };
                let chunk = buf.split_to(n);
                if framer.push(&chunk).is_err() {
                    return;
                }
                loop {
                    match framer.pop() {
                        Ok(Some(msg)) => {
                            let data = Message::to_bytes(&msg);
                            let r = Received { transport: Transport::Tcp, remote, data };
                            if tx.send(r).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(%remote, error = %e, "TCP framing error: connection closed");
                            return;
                        }
                    }
                }
                if buf.capacity() < 4096 {
                    buf.reserve(16 * 1024);
                }
            }
            w = writes.recv() => {
                let Some(bytes) = w else { return };
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        }
    }
}

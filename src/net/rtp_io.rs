//! The RTP relay's socket driver: one dedicated OS thread that owns every leg's RTP/RTCP sockets and the
//! [`Relay`], optionally pinned to a core.
//!
//! # Why a plain thread and not tokio
//! The per-packet work is a few hundred nanoseconds of userspace and a few microseconds of kernel; a tokio
//! reactor would add a waker, a task poll and a `recv_from` per packet per socket. The driver instead runs a
//! tight loop: one `epoll_wait` for all sockets, one `recvmmsg` per ready socket (draining it), the relay's
//! sans-IO [`Relay::handle_rtp`] per packet into the same buffer, and one `sendmmsg` per run of packets leaving
//! through the same socket. Control calls from async code go through a channel and a wake-up socket and answer
//! with a [`Reply`] you can `.await` (or [`Reply::wait`] from sync code).
//!
//! # Pacing (epoll backend only, off by default)
//! Waking per packet costs a context switch, and whoever sends to a socket we block on pays for waking us.
//! With `pace` set, while packets keep coming the loop never blocks on the sockets: it polls epoll without a
//! timeout, handles everything ready, and sleeps out the rest of a `pace`-long round, so packets accumulate
//! and one round serves many legs. After 64 empty rounds it goes back to blocking in `epoll_wait`. The added
//! latency is bounded by `pace`. Measured with `relay_load` (1,500 bridges): 200 µs pacing cost 4.8–4.9 µs CPU
//! per packet against 4.75–4.86 without, for a p50 of 310 µs against 95 µs, so it is off by default; at 600
//! bridges with burstier traffic, 1 ms pacing saved ~10 % CPU. Sockets are registered edge-triggered and
//! always drained, so epoll does not re-poll them.
//!
//! Symmetric RTP forces each packet out of the destination leg's own socket, so sends batch per socket; with
//! 20 ms packetisation most runs are one packet, and the syscall saved is the wake-up, not the send.
//!
//! # Backends
//! [`Backend::Epoll`] is the loop above. [`Backend::IoUring`] (module `uring`) arms one multishot `recvmsg` per
//! socket over a shared provided-buffer ring and queues every forward as a `Send` SQE, so a round is one
//! `io_uring_enter` that submits the previous round's sends and waits; RTP sockets sit in the ring's
//! registered-file table. If the kernel or a sandbox refuses io_uring, the driver falls back to epoll
//! ([`DriverStats::backend`] says which runs). Measured with `relay_load` (see BENCHMARKS.md): the two cost the
//! same CPU per packet within this VM's noise (io_uring ≤ 1 % less), because ~85 % of the relay thread's time
//! is the kernel's UDP send and receive path, not syscall entries or epoll; io_uring had the lower p50/p99
//! medians near saturation (1,500–1,800 bridges), so it is the default.
//!
//! # Recording
//! A leg may carry a [`RecordTap`] ([`RelayDriver::set_tap`]): each packet the relay forwards from that leg is
//! copied into the recording's bounded ring with a non-blocking `try_send` (a full ring drops and counts), and
//! a writer thread does the file I/O (see [`crate::net::record_io`]). Packets generated towards a leg (music,
//! announcements) are not recorded: a recording holds what the parties said.
//!
//! # Events
//! Relay events reach the engine through [`DriverEvents`]: two bounded queues the relay thread fills with
//! `try_send`, never blocking (module `events`): state events (latched, inactive, BYE) are never lost (they wait
//! in a backlog when their queue is full), per-packet telephone events are coalesced to each key press's start
//! and end, and dropped (counted in [`DriverStats`]) when their queue is full.
//!
//! Generated media and RTCP reports (a few per second per leg) are sent with a direct `sendmmsg` in both
//! backends. Leg sockets set Don't Fragment (IPv4), which spares the kernel an IP ID hash per datagram.
//!
//! # Connected twin sockets ([`DriverConfig::connect_latched`], on by default)
//! When a leg latches ([`Event::Latched`]) the driver opens a second RTP socket on the leg's port, `connect()`ed
//! to the latched address (its *twin*), and sends to that address through it with no destination: the kernel
//! reuses the twin's cached route instead of a route lookup per datagram, and finds it by its full 4-tuple on
//! receive. Measured with `relay_load` at 2,000 bridges: 2.5–6.5 % less relay CPU per packet than sending every
//! datagram from an unconnected socket (BENCHMARKS.md). The leg's own socket stays unconnected: the kernel gives
//! it every datagram that is *not* from the peer, so RTP from other sources (RTP bleed) still reaches the relay
//! and is dropped and counted per leg ([`DropReason::WrongSource`](crate::media::relay::DropReason)), and with
//! rtcp-mux RTCP from another port of the peer is accepted as before. Two sockets on one port need
//! `SO_REUSEADDR`, set only around the twin's `bind` and cleared right after (`sys::connected_twin`): the port
//! stays exclusive to its leg. Under io_uring the twin takes the leg's registered-file slot, as it carries the
//! traffic. [`Event::Unlatched`] (the peer's address changed, e.g. re-INVITE) closes the twin before the next
//! round's receives, so the leg can latch to its new peer; the driver passes both events on only after acting on
//! them, and a control call ([`RelayDriver::with_relay`], e.g. `set_remote`) answers only after the twin was
//! closed. The cost is one more descriptor per latched leg. Known limits: packets already queued on the leg's
//! socket when the twin opens may be relayed after the twin's first packets (a burst from the peer at the
//! moment of latching can come out reordered once; a steady 20 ms stream has nothing queued then), and a twin
//! that cannot be bound is not retried (the leg relays through its own socket, counted the same). On a connected socket an ICMP error from the peer
//! is reported once to the next receive; both backends go on draining the socket after it. Set
//! `connect_latched: false` to relay through the leg's socket alone.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::media::relay::{
    Action, Event, LegConfig, LegId, LegStats, Relay, RelayConfig, RelayError, Source,
};
use crate::net::record_io::RecordTap;
use crate::net::sys::{self, Batch, Epoll};
use crate::net::uring::{Cqe, Target, Uring};

mod events;

use events::EventSender;
pub use events::{DriverEvents, EventCounters, DTMF_CAPACITY, STATE_CAPACITY};

/// Which kernel interface the driver thread uses for the leg sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Edge-triggered epoll, one `recvmmsg` per ready socket, one `sendmmsg` per run of packets.
    Epoll,
    /// io_uring (the default): multishot receives with a provided-buffer ring, sends as SQEs, one
    /// `io_uring_enter` per round. Falls back to [`Backend::Epoll`] when the kernel (before 6.1) or a sandbox
    /// refuses io_uring; [`DriverStats::backend`] says which one runs. Costs ~3.6 MiB of buffers per driver.
    #[default]
    IoUring,
}

/// Driver configuration.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Local address the leg sockets bind to.
    pub bind_ip: IpAddr,
    /// The relay core's configuration (port range, timeouts).
    pub relay: RelayConfig,
    /// Pin the driver thread to this CPU.
    pub core: Option<usize>,
    /// Minimum round length under load (see module docs). Zero (the default) disables pacing.
    pub pace: Duration,
    /// Packet buffers per round.
    pub batch: usize,
    /// Kernel interface for the sockets (see [`Backend`]).
    pub backend: Backend,
    /// io_uring backend: receive buffers in the provided-buffer ring (a power of two, ≤ 32768) and send slots,
    /// 2 KiB and 1.5 KiB each. Every buffer is cycled through, so fewer stay warmer in cache; too few for a
    /// round's packets only costs a re-arm. Default 1024.
    pub uring_buffers: u16,
    /// Open a twin RTP socket `connect()`ed to a leg's peer once the leg latches (default true); see the module
    /// docs. Off, every send names its destination. Either way packets from other sources reach the relay and
    /// are counted ([`DropReason::WrongSource`](crate::media::relay::DropReason::WrongSource)).
    pub connect_latched: bool,
    /// Raise the process's soft limit on open descriptors to its hard limit (at most 1,048,576) when the
    /// driver starts (default true). Each leg holds two sockets, three once latched with a twin; the common
    /// default soft limit of 1,024 would stop the relay near 150 bridges. A failure is logged, not fatal.
    pub raise_nofile: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            relay: RelayConfig::default(),
            core: None,
            pace: Duration::ZERO,
            batch: 256,
            backend: Backend::default(),
            uring_buffers: 1024,
            connect_latched: true,
            raise_nofile: true,
        }
    }
}

/// Errors of the driver's control API.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The relay refused.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// Binding a leg's sockets failed for every port pair tried.
    #[error("binding leg sockets: {0}")]
    Bind(#[source] io::Error),
    /// The driver thread has stopped.
    #[error("relay driver stopped")]
    Stopped,
}

/// A leg as the call layer sees it: its id and the local addresses to put in our SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegInfo {
    /// Relay handle.
    pub id: LegId,
    /// Local RTP address.
    pub rtp: SocketAddr,
    /// Local RTCP address.
    pub rtcp: SocketAddr,
}

/// Something that happened in the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DriverEvent {
    /// A relay event (latched, inactive, BYE).
    Relay(Event),
}

/// Driver-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Loop rounds.
    pub rounds: u64,
    /// RTP packets received.
    pub packets_in: u64,
    /// RTP packets sent (forwarded and generated).
    pub packets_out: u64,
    /// `recvmmsg` calls.
    pub recv_calls: u64,
    /// `sendmmsg` calls.
    pub send_calls: u64,
    /// Packets the kernel refused to send.
    pub send_failures: u64,
    /// Generated frames the relay refused (leg gone, source not `Generated`, no peer address).
    pub generated_refused: u64,
    /// Longest time between the starts of two consecutive busy rounds (a scheduling stall shows up here).
    pub max_busy_gap: Duration,
    /// CPU time of the driver thread so far.
    pub thread_cpu: Duration,
    /// Linux thread id of the driver thread.
    pub tid: i32,
    /// The backend actually running (io_uring falls back to epoll when refused).
    pub backend: Backend,
    /// `io_uring_enter` calls (io_uring backend only; `recv_calls`/`send_calls` count the epoll backend's
    /// `recvmmsg`/`sendmmsg` and the synchronous sends of generated media and RTCP).
    pub enters: u64,
    /// Events coalesced, dropped or deferred on their way to [`DriverEvents`].
    pub events: EventCounters,
}

/// A control call run on the relay; it returns the sending of its answer, which the driver runs only after acting
/// on the relay's events (so that, e.g., a leg's twin socket is closed by the time `set_remote` answers).
type RelayFn = Box<dyn FnOnce(&mut Relay, Instant) -> Box<dyn FnOnce() + Send> + Send>;

enum Command {
    AddLeg(LegConfig, oneshot::Sender<Result<LegInfo, DriverError>>),
    RemoveLeg(LegId, oneshot::Sender<Result<LegStats, DriverError>>),
    Generated {
        leg: LegId,
        pt: u8,
        payload: Bytes,
        samples: u32,
        new_item: bool,
    },
    Event {
        leg: LegId,
        pt: u8,
        payload: [u8; 4],
        first: bool,
        last: bool,
    },
    Stats(oneshot::Sender<DriverStats>),
    Tap(
        LegId,
        Option<RecordTap>,
        oneshot::Sender<Result<(), DriverError>>,
    ),
    Call(RelayFn),
    Shutdown,
}

/// Answer to a control call: `.await` it, or [`Reply::wait`] outside async code.
#[derive(Debug)]
pub struct Reply<T>(oneshot::Receiver<T>);

impl<T> Reply<T> {
    /// Block the calling (non-async) thread for the answer.
    pub fn wait(self) -> Result<T, DriverError> {
        self.0.blocking_recv().map_err(|_| DriverError::Stopped)
    }
}

impl<T> Future for Reply<T> {
    type Output = Result<T, DriverError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(|_| DriverError::Stopped))
    }
}

/// Handle to the driver thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct RelayDriver {
    tx: mpsc::Sender<CommandBox>,
    waker: UnixDatagram,
    thread: Option<JoinHandle<io::Result<()>>>,
}

struct CommandBox(Command);

impl std::fmt::Debug for CommandBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl RelayDriver {
    /// Start the driver thread. Events arrive on the returned receiver (bounded: read it; see the module docs).
    pub fn spawn(cfg: DriverConfig) -> io::Result<(Self, DriverEvents)> {
        if cfg.raise_nofile {
            // Before the io_uring is set up: its registered-file table is sized from this limit.
            match sys::raise_nofile_limit(1 << 20) {
                Ok(n) => tracing::debug!(limit = n, "open descriptor limit"),
                Err(e) => tracing::warn!(error = %e, "could not raise the open descriptor limit"),
            }
        }
        let (tx, rx) = mpsc::channel();
        let (ev_tx, ev_rx) = events::channel();
        let (waker, wake_rx) = UnixDatagram::pair()?;
        waker.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let thread = std::thread::Builder::new()
            .name("rappel-rtp".into())
            .spawn(move || {
                if let Some(core) = cfg.core {
                    sys::pin_current_thread(core)?;
                }
                sys::set_timer_slack(1_000);
                let mut st = State::new(cfg, rx, ev_tx, wake_rx)?;
                st.run()
            })?;
        Ok((
            Self {
                tx,
                waker,
                thread: Some(thread),
            },
            ev_rx,
        ))
    }

    fn send(&self, c: Command) {
        if self.tx.send(CommandBox(c)).is_ok() {
            let _ = self.waker.send(&[0]);
        }
    }

    fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Reply<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx));
        Reply(rx)
    }

    /// Add a leg: allocates a port pair, binds its sockets.
    pub fn add_leg(&self, cfg: LegConfig) -> Reply<Result<LegInfo, DriverError>> {
        self.ask(|tx| Command::AddLeg(cfg, tx))
    }

    /// Remove a leg, closing its sockets; answers with its final counters.
    pub fn remove_leg(&self, leg: LegId) -> Reply<Result<LegStats, DriverError>> {
        self.ask(|tx| Command::RemoveLeg(leg, tx))
    }

    /// Run `f` on the relay in the driver thread (for any control call of [`Relay`]).
    pub fn with_relay<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Relay, Instant) -> T + Send + 'static,
    ) -> Reply<T> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Call(Box::new(move |r, now| {
            let v = f(r, now);
            Box::new(move || {
                let _ = tx.send(v);
            })
        })));
        Reply(rx)
    }

    /// [`Relay::connect`].
    pub fn connect(&self, a: LegId, b: LegId) -> Reply<Result<(), RelayError>> {
        self.with_relay(move |r, _| r.connect(a, b))
    }

    /// [`Relay::set_source`].
    pub fn set_source(&self, leg: LegId, source: Source) -> Reply<Result<(), RelayError>> {
        self.with_relay(move |r, _| r.set_source(leg, source))
    }

    /// [`Relay::set_hold`].
    pub fn set_hold(&self, leg: LegId, on_hold: bool) -> Reply<Result<(), RelayError>> {
        self.with_relay(move |r, now| r.set_hold(now, leg, on_hold))
    }

    /// [`Relay::stats`].
    pub fn leg_stats(&self, leg: LegId) -> Reply<Option<LegStats>> {
        self.with_relay(move |r, _| r.stats(leg))
    }

    /// Queue one generated frame for `leg` (fire and forget; see [`Relay::send_generated`]).
    pub fn send_generated(&self, leg: LegId, pt: u8, payload: Bytes, samples: u32, new_item: bool) {
        self.send(Command::Generated {
            leg,
            pt,
            payload,
            samples,
            new_item,
        });
    }

    /// Queue one RFC 4733 telephone-event packet for `leg` (fire and forget; see [`Relay::send_event`]).
    pub fn send_event(&self, leg: LegId, pt: u8, payload: [u8; 4], first: bool, last: bool) {
        self.send(Command::Event {
            leg,
            pt,
            payload,
            first,
            last,
        });
    }

    /// Installs (or with `None` removes) a recording tap on `leg`: every RTP packet the relay forwards
    /// from that leg is copied to the tap ([`RecordTap::push`]: bounded, never blocks). Sets the relay's
    /// per-leg record flag accordingly ([`Relay::set_record`]). Removing the leg removes its tap.
    pub fn set_tap(&self, leg: LegId, tap: Option<RecordTap>) -> Reply<Result<(), DriverError>> {
        self.ask(|tx| Command::Tap(leg, tap, tx))
    }

    /// Driver counters and thread CPU time.
    pub fn stats(&self) -> Reply<DriverStats> {
        self.ask(Command::Stats)
    }

    /// Stop the thread and wait for it.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        self.send(Command::Shutdown);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("relay driver thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for RelayDriver {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

struct LegSockets {
    id: LegId,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// Distinguishes this leg's io_uring completions from those of an earlier leg in the same slot.
    tag: u32,
    /// How io_uring SQEs name the RTP socket (registered-file slot = leg index when the table has room, unless
    /// the connected twin holds it).
    rtp_target: Target,
    /// Where packets received on this leg go for recording, if it is recorded.
    tap: Option<RecordTap>,
    /// Once latched (with [`DriverConfig::connect_latched`]): a second RTP socket on the same port, connected
    /// to the peer (see the module docs).
    twin: Option<Twin>,
}

/// A leg's connected RTP socket.
struct Twin {
    sock: UdpSocket,
    /// The latched peer it is connected to.
    peer: SocketAddr,
    /// How io_uring SQEs name it.
    target: Target,
}

impl LegSockets {
    /// The socket to send to `to` from, as a descriptor and as SQEs name it, and the destination to give: the
    /// connected twin with none when `to` is its peer (the kernel then uses its cached route), else the
    /// leg's RTP socket with `to`.
    #[inline]
    fn out(&self, to: SocketAddr) -> (RawFd, Target, Option<SocketAddr>) {
        match &self.twin {
            Some(t) if t.peer == to => (t.sock.as_raw_fd(), t.target, None),
            _ => (self.rtp.as_raw_fd(), self.rtp_target, Some(to)),
        }
    }
}

const WAKE: u64 = u64::MAX;
/// The wake-up socket's token under io_uring (bit 63 is reserved there).
const UWAKE: u64 = (1 << 63) - 2;

/// Which of a leg's sockets a token names (its low two bits).
const RTP: u64 = 0;
const RTCP: u64 = 1;
const TWIN: u64 = 2;

/// Epoll token of a leg socket: slot index, kind.
fn epoll_token(index: usize, kind: u64) -> u64 {
    ((index as u64) << 2) | kind
}

/// io_uring token of a leg socket: tag (31 bits), slot index (30 bits), kind (2 bits).
fn uring_token(tag: u32, index: usize, kind: u64) -> u64 {
    (u64::from(tag & 0x7fff_ffff) << 32) | (((index as u64) & 0x3fff_ffff) << 2) | (kind & 3)
}

enum Io {
    Epoll(Epoll),
    Uring(Box<Uring>),
}

struct State {
    cfg: DriverConfig,
    relay: Relay,
    rx: mpsc::Receiver<CommandBox>,
    events: EventSender,
    wake: UnixDatagram,
    io: Io,
    legs: Vec<Option<LegSockets>>,
    next_tag: u32,
    cqes: Vec<Cqe>,
    batch: Batch,
    ready: Vec<u64>,
    send_fds: Vec<RawFd>,
    send_items: Vec<(usize, usize, Option<SocketAddr>)>,
    stats: DriverStats,
}

impl State {
    fn new(
        cfg: DriverConfig,
        rx: mpsc::Receiver<CommandBox>,
        events: EventSender,
        wake: UnixDatagram,
    ) -> io::Result<Self> {
        let io = match cfg.backend {
            Backend::IoUring => match Uring::new(
                1024,
                cfg.uring_buffers.max(16),
                u32::from(cfg.uring_buffers.max(16)),
            ) {
                Ok(mut u) => {
                    u.arm_poll(wake.as_raw_fd(), UWAKE);
                    Io::Uring(Box::new(u))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring refused; relay driver falls back to epoll");
                    Io::Epoll(Epoll::new(1024)?)
                }
            },
            Backend::Epoll => Io::Epoll(Epoll::new(1024)?),
        };
        if let Io::Epoll(epoll) = &io {
            epoll.add(wake.as_raw_fd(), WAKE)?;
        }
        let backend = match io {
            Io::Epoll(_) => Backend::Epoll,
            Io::Uring(_) => Backend::IoUring,
        };
        let now = Instant::now();
        let batch = Batch::new(cfg.batch.max(4));
        Ok(Self {
            relay: Relay::new(cfg.relay.clone(), now),
            rx,
            events,
            wake,
            io,
            legs: Vec::new(),
            next_tag: 1,
            cqes: Vec::with_capacity(4096),
            send_fds: Vec::with_capacity(batch.slots()),
            send_items: Vec::with_capacity(batch.slots()),
            batch,
            ready: Vec::with_capacity(1024),
            stats: DriverStats {
                tid: sys::thread_id(),
                backend,
                ..Default::default()
            },
            cfg,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        match self.io {
            Io::Epoll(_) => self.run_epoll(),
            Io::Uring(_) => self.run_uring(),
        }
    }

    fn run_epoll(&mut self) -> io::Result<()> {
        // Rounds in a row without a packet before the loop goes back to blocking in epoll_wait.
        const IDLE_ROUNDS: u32 = 64;
        let pacing = !self.cfg.pace.is_zero();
        let mut idle = IDLE_ROUNDS;
        let mut last_start = Instant::now();
        loop {
            let round_start = Instant::now();
            if idle == 0 {
                let gap = round_start.saturating_duration_since(last_start);
                self.stats.max_busy_gap = self.stats.max_busy_gap.max(gap);
            }
            last_start = round_start;
            // Busy: poll without blocking (senders then never pay for waking us); idle: block until a packet,
            // a command or the next relay timer.
            let wait = if pacing && idle < IDLE_ROUNDS {
                Duration::ZERO
            } else {
                let next = self
                    .relay
                    .poll_timeout()
                    .saturating_duration_since(round_start);
                next.min(Duration::from_millis(50))
            };
            if let Io::Epoll(epoll) = &mut self.io {
                epoll.wait(wait, &mut self.ready)?;
            }
            if self.ready.contains(&WAKE) {
                if !self.commands() {
                    return Ok(());
                }
                self.relay_events();
            }
            let now = Instant::now();
            self.stats.rounds += 1;
            let got = self.receive(now);
            self.housekeeping(now);
            idle = if got > 0 { 0 } else { idle.saturating_add(1) };
            if pacing && idle < IDLE_ROUNDS {
                let spent = round_start.elapsed();
                if spent < self.cfg.pace {
                    std::thread::sleep(self.cfg.pace - spent);
                }
            }
        }
    }

    /// The io_uring loop: one `io_uring_enter` per round submits the previous round's sends and re-arms, and
    /// waits for completions (or the relay's next timer); then every completion is handled.
    fn run_uring(&mut self) -> io::Result<()> {
        let mut busy = false;
        let mut last_start = Instant::now();
        loop {
            let round_start = Instant::now();
            if busy {
                let gap = round_start.saturating_duration_since(last_start);
                self.stats.max_busy_gap = self.stats.max_busy_gap.max(gap);
            }
            last_start = round_start;
            let wait = self
                .relay
                .poll_timeout()
                .saturating_duration_since(round_start)
                .min(Duration::from_millis(50));
            if let Io::Uring(u) = &mut self.io {
                u.enter(wait)?;
            }
            let now = Instant::now();
            self.stats.rounds += 1;
            let (got, wake) = self.uring_round(now);
            self.stats.packets_in += got as u64;
            self.housekeeping(now);
            if wake {
                if !self.commands() {
                    return Ok(());
                }
                self.relay_events();
            }
            busy = got > 0;
        }
    }

    /// Handle every completion of a round. Returns (RTP packets received, wake-up seen).
    fn uring_round(&mut self, now: Instant) -> (usize, bool) {
        let Io::Uring(u) = &mut self.io else {
            return (0, false);
        };
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        let mut reaped = u.reap(&mut cqes);
        let (mut got, mut wake) = (0usize, false);
        let mut i = 0;
        while let Some(&c) = cqes.get(i) {
            i += 1;
            if c.token == UWAKE {
                wake = true;
                if !c.more() {
                    u.arm_poll(self.wake.as_raw_fd(), UWAKE);
                }
                continue;
            }
            let index = ((c.token & 0xffff_ffff) >> 2) as usize;
            let kind = c.token & 3;
            let rtcp = kind == RTCP;
            let tag = (c.token >> 32) as u32;
            let leg = match self.legs.get(index) {
                Some(Some(l)) if l.tag == tag => {
                    // Where this receive is re-armed if its multishot ended (none: a twin already gone).
                    let rearm = match kind {
                        RTCP => Some(Target::Fd(l.rtcp.as_raw_fd())),
                        TWIN => l.twin.as_ref().map(|t| t.target),
                        _ => Some(l.rtp_target),
                    };
                    Some((l.id, rearm))
                }
                _ => None,
            };
            if u.free_slots() == 0 {
                // Every send slot is in flight: hand the sends to the kernel and collect their completions.
                u.submit();
                let r = u.reap(&mut cqes);
                reaped.sent += r.sent;
                reaped.send_failed += r.send_failed;
            }
            let taken = u.take(&c);
            let Some((id, rearm)) = leg else {
                // A completion of a removed leg (its buffer went back to the ring in `take`).
                if let Some((slot, ..)) = taken {
                    u.release(slot);
                }
                continue;
            };
            if !c.more() && c.result != -libc::ECANCELED {
                // Multishot ended (e.g. no free buffer for a moment): arm it again.
                if let Some(target) = rearm {
                    u.arm_recv(target, c.token);
                }
            }
            let Some((slot, len, from)) = taken else {
                continue;
            };
            let Some(pkt) = u.slot_mut(slot).and_then(|b| b.get_mut(..len)) else {
                u.release(slot);
                continue;
            };
            if rtcp {
                let _ = self.relay.handle_rtcp(now, id, from, pkt);
                u.release(slot);
                continue;
            }
            got += 1;
            match self.relay.handle_rtp(now, id, from, pkt) {
                Action::Forward { to, via, record } => {
                    if record {
                        if let Some(Some(LegSockets { tap: Some(t), .. })) = self.legs.get(index) {
                            t.push(now, pkt);
                        }
                    }
                    match self.legs.get(via.index()) {
                        Some(Some(out)) => {
                            let (_, target, dest) = out.out(to);
                            u.send(slot, target, len, dest);
                        }
                        _ => u.release(slot),
                    }
                }
                _ => u.release(slot),
            }
        }
        self.stats.packets_out += reaped.sent;
        self.stats.send_failures += reaped.send_failed;
        self.cqes = cqes;
        (got, wake)
    }

    /// Drain control commands. Returns false on shutdown.
    fn commands(&mut self) -> bool {
        let mut sink = [0u8; 64];
        while self.wake.recv(&mut sink).is_ok() {}
        while let Ok(CommandBox(c)) = self.rx.try_recv() {
            let now = Instant::now();
            match c {
                Command::AddLeg(cfg, reply) => {
                    let _ = reply.send(self.add_leg(now, cfg));
                }
                Command::RemoveLeg(id, reply) => {
                    if let Some(slot) = self.legs.get_mut(id.index()) {
                        if let Some(l) = slot.as_ref().filter(|l| l.id == id) {
                            if let Io::Uring(u) = &mut self.io {
                                // The ring holds the sockets open until their receives are cancelled.
                                for kind in [RTP, RTCP, TWIN] {
                                    u.cancel(uring_token(l.tag, id.index(), kind));
                                }
                                let fixed = [Some(l.rtp_target), l.twin.as_ref().map(|t| t.target)];
                                if let Some(Target::Fixed(i)) = fixed
                                    .into_iter()
                                    .flatten()
                                    .find(|t| matches!(t, Target::Fixed(_)))
                                {
                                    u.unfix(i);
                                }
                                // Queued SQEs naming the sockets' descriptors go in before the sockets close
                                // (a closed number is soon another socket's).
                                u.submit();
                            }
                            *slot = None;
                        }
                    }
                    self.events.forget(id);
                    let _ = reply.send(self.relay.remove_leg(id).map_err(DriverError::from));
                }
                Command::Generated {
                    leg,
                    pt,
                    payload,
                    samples,
                    new_item,
                } => {
                    self.generated_frame(now, leg, pt, &payload, samples, new_item);
                }
                Command::Event {
                    leg,
                    pt,
                    payload,
                    first,
                    last,
                } => {
                    let Some(buf) = self.batch.buf_mut(0) else {
                        continue;
                    };
                    match self
                        .relay
                        .send_event(now, leg, pt, payload, first, last, buf)
                    {
                        Ok(t) => self.send_built(leg, t),
                        Err(_) => self.stats.generated_refused += 1,
                    }
                }
                Command::Stats(reply) => {
                    self.stats.thread_cpu = sys::thread_cpu_time();
                    self.stats.events = self.events.counters();
                    if let Io::Uring(u) = &self.io {
                        self.stats.enters = u.enters();
                    }
                    let _ = reply.send(self.stats);
                }
                Command::Tap(id, tap, reply) => {
                    let r = match self.legs.get_mut(id.index()) {
                        Some(Some(l)) if l.id == id => {
                            let on = tap.is_some();
                            l.tap = tap;
                            self.relay.set_record(id, on).map_err(DriverError::from)
                        }
                        _ => Err(DriverError::Relay(RelayError::UnknownLeg)),
                    };
                    let _ = reply.send(r);
                }
                Command::Call(f) => {
                    let answer = f(&mut self.relay, now);
                    self.relay_events();
                    answer();
                }
                Command::Shutdown => return false,
            }
        }
        true
    }

    fn add_leg(&mut self, now: Instant, cfg: LegConfig) -> Result<LegInfo, DriverError> {
        let mut last_err = io::Error::other("no port tried");
        for _ in 0..16 {
            let id = self.relay.add_leg(now, cfg.clone())?;
            let (p, pc) = self.relay.local_ports(id).ok_or(RelayError::UnknownLeg)?;
            match self.bind_pair(id, p, pc) {
                Ok(info) => return Ok(info),
                Err(e) => {
                    last_err = e;
                    let _ = self.relay.remove_leg(id);
                }
            }
        }
        Err(DriverError::Bind(last_err))
    }

    fn bind_pair(&mut self, id: LegId, p: u16, pc: u16) -> io::Result<LegInfo> {
        let rtp = UdpSocket::bind((self.cfg.bind_ip, p))?;
        let rtcp = UdpSocket::bind((self.cfg.bind_ip, pc))?;
        rtp.set_nonblocking(true)?;
        rtcp.set_nonblocking(true)?;
        if self.cfg.bind_ip.is_ipv4() {
            sys::set_dont_fragment(rtp.as_raw_fd())?;
            sys::set_dont_fragment(rtcp.as_raw_fd())?;
        }
        let tag = self.next_tag;
        let mut rtp_target = Target::Fd(rtp.as_raw_fd());
        self.next_tag = self.next_tag.wrapping_add(1) & 0x7fff_ffff;
        match &mut self.io {
            Io::Epoll(epoll) => {
                epoll.add(rtp.as_raw_fd(), epoll_token(id.index(), RTP))?;
                epoll.add(rtcp.as_raw_fd(), epoll_token(id.index(), RTCP))?;
            }
            Io::Uring(u) => {
                let slot = u32::try_from(id.index()).unwrap_or(u32::MAX);
                if u.fix(slot, rtp.as_raw_fd()) {
                    rtp_target = Target::Fixed(slot);
                }
                u.arm_recv(rtp_target, uring_token(tag, id.index(), RTP));
                u.arm_recv(
                    Target::Fd(rtcp.as_raw_fd()),
                    uring_token(tag, id.index(), RTCP),
                );
            }
        }
        let info = LegInfo {
            id,
            rtp: rtp.local_addr()?,
            rtcp: rtcp.local_addr()?,
        };
        if self.legs.len() <= id.index() {
            self.legs.resize_with(id.index() + 1, || None);
        }
        if let Some(slot) = self.legs.get_mut(id.index()) {
            *slot = Some(LegSockets {
                id,
                rtp,
                rtcp,
                tag,
                rtp_target,
                twin: None,
                tap: None,
            });
        }
        Ok(info)
    }

    fn generated_frame(
        &mut self,
        now: Instant,
        leg: LegId,
        pt: u8,
        payload: &[u8],
        samples: u32,
        new_item: bool,
    ) {
        let Some(buf) = self.batch.buf_mut(0) else {
            return;
        };
        let Ok(t) = self
            .relay
            .send_generated(now, leg, pt, payload, samples, new_item, buf)
        else {
            self.stats.generated_refused += 1;
            return;
        };
        self.send_built(leg, t);
    }

    /// Sends the packet the relay built at the start of batch buffer 0 from `leg`'s RTP socket.
    fn send_built(&mut self, leg: LegId, t: crate::media::relay::Transmit) {
        let Some((fd, to)) = self
            .legs
            .get(leg.index())
            .and_then(|l| l.as_ref())
            .map(|l| {
                let (fd, _, dest) = l.out(t.to);
                (fd, dest)
            })
        else {
            return;
        };
        let (sent, calls) = self.batch.send(fd, &[(0, t.len, to)]);
        self.stats.send_calls += calls as u64;
        self.stats.packets_out += sent as u64;
        self.stats.send_failures += 1 - sent.min(1) as u64;
    }

    /// Read every ready socket, relay, send. Returns packets received.
    fn receive(&mut self, now: Instant) -> usize {
        let mut used = 0usize;
        let mut total = 0usize;
        let ready = std::mem::take(&mut self.ready);
        for &token in &ready {
            if token == WAKE {
                continue;
            }
            let index = (token >> 2) as usize;
            let Some(Some(leg)) = self.legs.get(index) else {
                continue;
            };
            let id = leg.id;
            let kind = token & 3;
            if kind == RTCP {
                let fd = leg.rtcp.as_raw_fd();
                if used == self.batch.slots() {
                    // RTCP needs one free slot: edge-triggered sockets must be drained when reported.
                    self.flush();
                    used = 0;
                }
                self.rtcp_in(now, id, fd, used);
                continue;
            }
            let fd = match (kind, &leg.twin) {
                (TWIN, Some(t)) => t.sock.as_raw_fd(),
                (TWIN, None) => continue,
                _ => leg.rtp.as_raw_fd(),
            };
            let mut refused = false;
            loop {
                if used == self.batch.slots() {
                    self.flush();
                    used = 0;
                }
                let want = (self.batch.slots() - used).min(16);
                self.stats.recv_calls += 1;
                let n = match self.batch.recv(fd, used, want) {
                    Ok(n) => n,
                    // A connected socket reports an ICMP error from its peer once, ahead of the queued
                    // datagrams; the socket must still be drained (edge-triggered).
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && !refused => {
                        refused = true;
                        continue;
                    }
                    Err(_) => 0,
                };
                for slot in used..used + n {
                    self.relay_one(now, id, slot);
                }
                used += n;
                total += n;
                if n < want {
                    break;
                }
            }
        }
        self.ready = ready;
        self.flush();
        self.stats.packets_in += total as u64;
        total
    }

    #[inline]
    fn relay_one(&mut self, now: Instant, id: LegId, slot: usize) {
        let Some((pkt, Some(from))) = self.batch.packet(slot) else {
            return;
        };
        let len = pkt.len();
        if let Action::Forward { to, via, record } = self.relay.handle_rtp(now, id, from, pkt) {
            if record {
                if let Some(Some(LegSockets { tap: Some(t), .. })) = self.legs.get(id.index()) {
                    t.push(now, pkt);
                }
            }
            let Some(Some(out)) = self.legs.get(via.index()) else {
                return;
            };
            let (fd, _, dest) = out.out(to);
            self.send_fds.push(fd);
            self.send_items.push((slot, len, dest));
        }
    }

    fn rtcp_in(&mut self, now: Instant, id: LegId, fd: RawFd, slot: usize) {
        loop {
            let n = self.batch.recv(fd, slot, 1).unwrap_or(0);
            if n == 0 {
                return;
            }
            if let Some((pkt, Some(from))) = self.batch.packet(slot) {
                let _ = self.relay.handle_rtcp(now, id, from, pkt);
            }
        }
    }

    fn flush(&mut self) {
        let mut start = 0;
        while start < self.send_items.len() {
            let fd = self.send_fds[start];
            let mut end = start + 1;
            while end < self.send_items.len() && self.send_fds[end] == fd {
                end += 1;
            }
            let (sent, calls) = self.batch.send(fd, &self.send_items[start..end]);
            self.stats.send_calls += calls as u64;
            self.stats.packets_out += sent as u64;
            self.stats.send_failures += (end - start - sent) as u64;
            start = end;
        }
        self.send_fds.clear();
        self.send_items.clear();
    }

    fn housekeeping(&mut self, now: Instant) {
        // At most this many generated RTCP reports per round: the relay's scan queues a second's worth at once
        // (hundreds with thousands of legs), and sending them in one go would stall RTP for milliseconds.
        const RTCP_PER_ROUND: usize = 8;
        if now >= self.relay.poll_timeout() {
            self.relay.handle_timeout(now);
        }
        for _ in 0..RTCP_PER_ROUND {
            let Some(t) = self
                .batch
                .buf_mut(0)
                .and_then(|buf| self.relay.poll_rtcp(now, buf))
            else {
                break;
            };
            if let Some(Some(l)) = self.legs.get(t.via.index()) {
                let (fd, to) = if t.rtcp_mux {
                    let (fd, _, dest) = l.out(t.to);
                    (fd, dest)
                } else {
                    (l.rtcp.as_raw_fd(), Some(t.to))
                };
                let (_, calls) = self.batch.send(fd, &[(0, t.len, to)]);
                self.stats.send_calls += calls as u64;
            }
        }
        self.relay_events();
    }

    /// Pass the relay's events on (state events that waited for room first); (dis)connect RTP sockets as
    /// legs latch and unlatch.
    fn relay_events(&mut self) {
        self.events.flush();
        while let Some(e) = self.relay.poll_event() {
            match e {
                Event::Latched { leg, addr } => self.set_peer(leg, Some(addr)),
                Event::Unlatched { leg } => self.set_peer(leg, None),
                _ => {}
            }
            self.events.send(e);
        }
    }

    /// Give leg `id` a twin socket connected to `peer`, or close its twin (`None`). A twin that cannot be made
    /// is left out: the leg then sends and receives on its RTP socket alone, naming each destination.
    fn set_peer(&mut self, id: LegId, peer: Option<SocketAddr>) {
        let Some(Some(l)) = self.legs.get_mut(id.index()) else {
            return;
        };
        if l.id != id || l.twin.as_ref().map(|t| t.peer) == peer {
            return;
        }
        // Close the twin of an earlier peer first.
        if let Some(old) = l.twin.take() {
            match &mut self.io {
                Io::Uring(u) => {
                    // SQEs naming its descriptor (sends queued this round) go to the kernel before it is closed:
                    // once closed, the number could name another leg's new socket by the time they are submitted.
                    u.submit();
                    // The ring keeps the socket open (still taking the old peer's datagrams, which arrive as
                    // the leg's RTP) until its receive is cancelled.
                    u.cancel(uring_token(l.tag, id.index(), TWIN));
                    if let Target::Fixed(i) = old.target {
                        if u.fix(i, l.rtp.as_raw_fd()) {
                            l.rtp_target = Target::Fixed(i);
                        } else {
                            u.unfix(i);
                        }
                    }
                }
                // Closing the descriptor takes it out of the epoll set.
                Io::Epoll(_) => {}
            }
        }
        let Some(addr) = peer.filter(|_| self.cfg.connect_latched) else {
            return;
        };
        let sock = match sys::connected_twin(&l.rtp, addr) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(leg = id.index(), error = %e, "no connected twin socket");
                return;
            }
        };
        let mut target = Target::Fd(sock.as_raw_fd());
        match &mut self.io {
            Io::Uring(u) => {
                // The twin carries the leg's traffic: it takes the registered-file slot. The RTP socket's armed
                // receive keeps the file it was issued with; a re-arm names the descriptor.
                if let Target::Fixed(i) = l.rtp_target {
                    if u.fix(i, sock.as_raw_fd()) {
                        target = Target::Fixed(i);
                        l.rtp_target = Target::Fd(l.rtp.as_raw_fd());
                    }
                }
                u.arm_recv(target, uring_token(l.tag, id.index(), TWIN));
            }
            Io::Epoll(epoll) => {
                if let Err(e) = epoll.add(sock.as_raw_fd(), epoll_token(id.index(), TWIN)) {
                    tracing::debug!(leg = id.index(), error = %e, "twin socket not polled");
                    return;
                }
            }
        }
        l.twin = Some(Twin {
            sock,
            peer: addr,
            target,
        });
    }
}

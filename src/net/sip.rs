//! The SIP driver: one tokio task that owns a sans-IO [`Endpoint`], its sockets and its one timer.
//!
//! The loop follows quinn's `ConnectionDriver` and str0m's single-mutation invariant: after every input (a
//! received message, the timer firing, a command from the call layer) it drains [`Endpoint::poll_transmit`] to the
//! sockets and [`Endpoint::poll_event`] to the event queue, then re-arms its single `Sleep` at
//! [`Endpoint::poll_timeout`]. Time is read from `tokio::time::Instant`, so a paused tokio clock drives it too.
//!
//! Commands are closures run on the endpoint inside the loop ([`SipClient::exec`]), so the endpoint's whole TU API
//! is reachable without a command enum that repeats it.

use crate::net::transport::{SipSockets, SipTransportConfig};
use crate::sip::endpoint::{Endpoint, EndpointConfig, Event};
use std::io;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

type Job = Box<dyn FnOnce(&mut Endpoint, Instant) + Send>;

/// The driver has stopped (its task ended or was shut down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the SIP driver has stopped")]
pub struct DriverGone;

/// A handle to a running SIP driver. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SipClient {
    jobs: mpsc::Sender<Job>,
    local: Vec<SocketAddr>,
}

impl SipClient {
    /// Runs `f` on the endpoint inside the driver loop, at the loop's current time, and returns its result.
    /// Everything `f` queues (requests, responses, timers) is sent before the loop waits again.
    pub async fn exec<R, F>(&self, f: F) -> Result<R, DriverGone>
    where
        R: Send + 'static,
        F: FnOnce(&mut Endpoint, Instant) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ep, now| {
            let _ = tx.send(f(ep, now));
        });
        self.jobs.send(job).await.map_err(|_| DriverGone)?;
        rx.await.map_err(|_| DriverGone)
    }

    /// The bound SIP addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }
}

/// A running SIP driver: the client handle, the endpoint's events, and the task. Dropping the task handle does not
/// stop the driver; dropping every [`SipClient`] and the event receiver does.
#[derive(Debug)]
pub struct SipDriver {
    /// Runs commands on the endpoint.
    pub client: SipClient,
    /// The endpoint's events, in order.
    pub events: mpsc::Receiver<Event>,
    /// The driver task.
    pub task: JoinHandle<()>,
}

impl SipDriver {
    /// Binds the transports and starts the loop. When the endpoint configuration advertises port 0, the bound
    /// port of the first address is advertised instead.
    pub async fn start(
        transport: SipTransportConfig,
        mut endpoint: EndpointConfig,
    ) -> io::Result<SipDriver> {
        let sockets = SipSockets::bind(transport).await?;
        let local = sockets.local_addrs().to_vec();
        if endpoint.advertised_addr.port() == 0 {
            if let Some(first) = local.first() {
                let ip = if endpoint.advertised_addr.ip().is_unspecified() {
                    first.ip()
                } else {
                    endpoint.advertised_addr.ip()
                };
                endpoint.advertised_addr = SocketAddr::new(ip, first.port());
            }
        }
        let (jobs_tx, jobs_rx) = mpsc::channel(1024);
        let (ev_tx, ev_rx) = mpsc::channel(4096);
        let ep = Endpoint::new(endpoint);
        let task = tokio::spawn(run(ep, sockets, jobs_rx, ev_tx));
        Ok(SipDriver {
            client: SipClient {
                jobs: jobs_tx,
                local,
            },
            events: ev_rx,
            task,
        })
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn run(
    mut ep: Endpoint,
    mut sockets: SipSockets,
    mut jobs: mpsc::Receiver<Job>,
    events: mpsc::Sender<Event>,
) {
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    let mut jobs_open = true;
    // TCP connections that did not come up after their message was handed over (see `net::transport`).
    let mut send_failures = sockets.take_failures();
    loop {
        tokio::select! {
            r = sockets.recv() => {
                let Some(r) = r else { return };
                ep.handle(now(), r.remote, r.transport, r.data);
            }
            Some(f) = async { send_failures.as_mut()?.recv().await } => {
                ep.handle_transport_error(now(), f.destination, f.transport);
            }
            j = jobs.recv(), if jobs_open => match j {
                Some(job) => job(&mut ep, now()),
                None => jobs_open = false,
            },
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                ep.handle_timeout(now());
            }
        }
        while let Some(t) = ep.poll_transmit() {
            if let Err(e) = sockets.send(&t).await {
                tracing::debug!(destination = %t.destination, error = %e, "SIP send failed");
                // RFC 3261 §17.1.4: the transactions sending there fail now rather than at their timeout.
                ep.handle_transport_error(now(), t.destination, t.transport);
            }
        }
        while let Some(e) = ep.poll_event() {
            if events.send(e).await.is_err() && !jobs_open {
                return; // nobody listens and nobody can command: stop
            }
        }
        let next = ep.poll_timeout();
        if next != armed {
            if let Some(t) = next {
                sleep.as_mut().reset(tokio::time::Instant::from_std(t));
            }
            armed = next;
        }
    }
}

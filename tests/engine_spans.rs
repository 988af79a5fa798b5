//! Each call runs in its own `tracing` span (`leg`, with its id and target): the engine's events about a call,
//! from name resolution and failover to its end, are recorded inside it.
//!
//! Its own test binary: the subscriber is the process-wide default, which no other test shares (a thread-local
//! one races with other tests over tracing's per-callsite interest cache). Needs `sipp` and `dnsmasq`.

use rappel::sip::transaction::TimerConfig;
use rappel::{CallOptions, Engine};
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "support/sipp.rs"]
mod sipp;

#[path = "support/dns.rs"]
mod dns;

use dns::Dns;
use sipp::{free_port, local, localhost, Sipp};

const WAIT: Duration = Duration::from_secs(20);

/// An RTP port range (40 ports) free at the time of the call: fixed ranges collide with other processes on a
/// shared machine.
fn rtp_range() -> (u16, u16) {
    loop {
        let base = free_port(localhost()) & !1;
        if base < 65_000
            && (base..base + 40).all(|p| std::net::UdpSocket::bind((localhost(), p)).is_ok())
        {
            return (base, base + 39);
        }
    }
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// Records the spans named `leg` (with their fields) and the messages of events inside them.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<String>>>);

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "leg" {
            let mut f = Fields(String::new());
            attrs.record(&mut f);
            self.0.lock().unwrap().push(format!("span leg{}", f.0));
        }
    }

    fn on_event(&self, ev: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let Some(span) = ctx.event_span(ev) else {
            return;
        };
        if span.name() == "leg" {
            let mut f = Fields(String::new());
            ev.record(&mut f);
            self.0.lock().unwrap().push(format!("event in leg{}", f.0));
        }
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

#[tokio::test]
async fn each_call_has_its_own_span() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = Spans::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone()))
        .expect("the only subscriber of this process");
    // A target that never answers, then SIPp.
    let first = UdpSocket::bind((localhost(), 0)).unwrap();
    let first_port = first.local_addr().unwrap().port();
    let media = free_port(localhost()).to_string();
    let good = Sipp::uas(
        &Sipp::scenario("uas_answer.xml"),
        local(free_port(localhost())),
        false,
        &["-m", "1", "-timeout", "60s", "-mp", &media],
    );
    let dns = Dns::start(&[
        format!(
            "--srv-host=_sip._udp.span.test,a.span.test,{},10,0",
            first_port
        ),
        format!(
            "--srv-host=_sip._udp.span.test,b.span.test,{},20,0",
            good.addr.port()
        ),
        "--host-record=a.span.test,127.0.0.1".into(),
        "--host-record=b.span.test,127.0.0.1".into(),
    ]);
    let (min, max) = rtp_range();
    let engine = Engine::builder()
        .rtp_ports(min, max)
        .timers(TimerConfig {
            t1: Duration::from_millis(25),
            ..TimerConfig::default()
        })
        .nameservers(vec![dns.addr])
        .start()
        .await
        .unwrap();
    let mut leg = engine
        .call("sip:visitor@span.test", CallOptions::default())
        .await
        .unwrap();
    within(leg.answered()).await.unwrap();
    leg.hangup().await.unwrap();
    within(leg.ended()).await.unwrap();
    let id = leg.id().0;
    let log = spans.0.lock().unwrap().clone();
    assert_eq!(
        log.first().map(String::as_str),
        Some(format!("span leg id={id} target=sip:visitor@span.test").as_str()),
        "{log:?}"
    );
    for needle in [
        "next hop resolved",
        "failing over to the next target",
        "leg ended",
    ] {
        assert!(
            log.iter()
                .any(|l| l.starts_with("event in leg") && l.contains(needle)),
            "{needle} not logged in the leg's span: {log:?}"
        );
    }
    assert_eq!(within(good.finish()).await, 0);
}

//! Cost of one call-layer event in the callback dispatcher as the number of live requests grows.

use std::hint::black_box;

use chrono::{TimeDelta, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rappel::callback::{AgentConfig, CallbackConfig, Dispatcher, Input, NewRequest};

fn setup(
    live: usize,
) -> (
    Dispatcher,
    Vec<rappel::callback::RequestId>,
    chrono::DateTime<Utc>,
) {
    let now = Utc
        .with_ymd_and_hms(2026, 6, 9, 10, 0, 0)
        .single()
        .expect("valid");
    let agents = (0..20)
        .map(|i| AgentConfig::new(&format!("a{i}"), "sip:a@x", &[]))
        .collect();
    let cfg = CallbackConfig {
        max_concurrent: live,
        ..CallbackConfig::default()
    };
    let mut d = Dispatcher::new(cfg, agents, 1, now).expect("agents");
    let ids = (0..live)
        .map(|_| {
            d.submit(
                NewRequest {
                    phone: "0612345678".into(),
                    ..NewRequest::default()
                },
                now,
            )
            .expect("ok")
            .id
        })
        .collect();
    while d.poll_event().is_some() {}
    while d.poll_command().is_some() {}
    (d, ids, now)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("callback_dispatch_input");
    for live in [100usize, 1_000, 10_000] {
        g.bench_with_input(BenchmarkId::from_parameter(live), &live, |b, &live| {
            let (mut d, ids, now) = setup(live);
            let mut i = 0usize;
            b.iter(|| {
                // A ringing notice: no state change, so the cost is the dispatcher's bookkeeping per event.
                let id = ids[i % ids.len()];
                i += 1;
                d.handle_input(id, Input::VisitorRinging, now + TimeDelta::seconds(1))
                    .expect("live");
                black_box(d.poll_event());
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

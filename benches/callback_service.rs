//! Round trip of the callback service's API through its task: submit a request (persisted before the answer) and
//! cancel it, on the in-memory store and on a SQLite file (WAL, `synchronous=FULL`: one fsync per event written).
//! The call layer is the simulated one (the submission places a call; the cancel hangs it up).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rappel::callback::calls::{PhoneScript, SimulatedCalls};
use rappel::callback::service::{CallbackService, ServiceConfig, SystemClock};
use rappel::callback::store::{MemoryStore, SqliteStore, Store};
use rappel::callback::NewRequest;

fn start(rt: &tokio::runtime::Runtime, store: impl Store + Send + 'static) -> CallbackService {
    let calls =
        SimulatedCalls::new(|_| PhoneScript::answers(Duration::from_secs(3600), Duration::ZERO));
    rt.block_on(CallbackService::start(
        ServiceConfig::default(),
        store,
        calls,
        Arc::new(SystemClock),
    ))
    .expect("service")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let stores: [(&str, CallbackService); 2] = [
        ("memory", start(&rt, MemoryStore::new())),
        (
            "sqlite_file",
            start(
                &rt,
                SqliteStore::open(dir.path().join("bench.db")).expect("sqlite"),
            ),
        ),
    ];
    let mut g = c.benchmark_group("service_submit_cancel");
    g.sample_size(20);
    for (name, svc) in &stores {
        let mut n = 0u64;
        g.bench_function(*name, |b| {
            b.iter(|| {
                n += 1;
                rt.block_on(async {
                    let id = svc
                        .submit(NewRequest {
                            phone: format!("+1{n:010}"),
                            ..NewRequest::default()
                        })
                        .await
                        .expect("submit")
                        .id;
                    assert!(svc.cancel(id).await.expect("cancel"));
                })
            })
        });
    }
    g.finish();
    // A burst: BURST visitors submit at once (a TV spot, a mailing); time until every one is answered (each
    // answer comes after its request is stored), then all are cancelled outside the timing.
    const BURST: u64 = 200;
    let mut g = c.benchmark_group("service_burst_200_submits");
    g.sample_size(10);
    for (name, svc) in &stores {
        let mut base = 1_000_000u64;
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    base += BURST;
                    let t0 = std::time::Instant::now();
                    let ids = rt.block_on(async {
                        let subs = (0..BURST).map(|k| {
                            let svc = svc.clone();
                            tokio::spawn(async move {
                                svc.submit(NewRequest {
                                    phone: format!("+1{:010}", base + k),
                                    ..NewRequest::default()
                                })
                                .await
                                .expect("submit")
                                .id
                            })
                        });
                        let subs: Vec<_> = subs.collect();
                        let mut ids = Vec::with_capacity(subs.len());
                        for s in subs {
                            ids.push(s.await.expect("join"));
                        }
                        ids
                    });
                    total += t0.elapsed();
                    rt.block_on(async {
                        for id in ids {
                            svc.cancel(id).await.expect("cancel");
                        }
                    });
                }
                total
            })
        });
    }
    g.finish();
    for (_, svc) in stores {
        rt.block_on(svc.shutdown());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

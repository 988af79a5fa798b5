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
    for (_, svc) in stores {
        rt.block_on(svc.shutdown());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

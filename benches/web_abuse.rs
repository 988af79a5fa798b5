//! Cost of the per-submission abuse checks: number parsing and policy, and a rate-limiter check on a full map.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rappel::web::abuse::{PhonePolicy, RateLimiter};

fn bench(c: &mut Criterion) {
    let policy = PhonePolicy::new(&["FR".into()], &["+3389".into()], true).expect("FR");
    c.bench_function("phone_policy_check_valid", |b| {
        b.iter(|| policy.check(black_box("06 12 34 56 78")))
    });
    c.bench_function("phone_policy_check_invalid", |b| {
        b.iter(|| policy.check(black_box("+33 1 2")))
    });
    let now = Instant::now();
    let mut rl = RateLimiter::new(5, Duration::from_secs(60), 100_000);
    for i in 0..100_000u32 {
        let _ = rl.check(&i, now);
    }
    let mut k = 0u32;
    c.bench_function("rate_limiter_check_100k_keys", |b| {
        b.iter(|| {
            k = k.wrapping_add(7919) % 200_000;
            rl.check(black_box(&k), now)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The relay driver raises the soft limit on open descriptors (its own test binary: the limit is process-wide).

use rappel::media::relay::{LegConfig, RelayConfig};
use rappel::net::rtp_io::{DriverConfig, RelayDriver};

fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` lives across the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    (r.rlim_cur, r.rlim_max)
}

#[test]
fn driver_raises_the_descriptor_limit_so_legs_are_not_capped_by_it() {
    let (_, hard) = nofile();
    assert!(
        hard >= 1024,
        "hard limit on open descriptors {hard}: this test needs at least 1,024"
    );
    let low = libc::rlimit {
        rlim_cur: 256,
        rlim_max: hard,
    };
    // SAFETY: `low` lives across the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    let cfg = DriverConfig {
        relay: RelayConfig {
            port_min: 46000,
            port_max: 46999,
            ..Default::default()
        },
        ..Default::default()
    };
    let (driver, _events) = RelayDriver::spawn(cfg).unwrap();
    // 200 legs hold 400 sockets, more than the 256 the process started with.
    let mut legs = Vec::new();
    for _ in 0..200 {
        legs.push(
            driver
                .add_leg(LegConfig::g711(None))
                .wait()
                .unwrap()
                .expect("leg"),
        );
    }
    assert_eq!(nofile().0, hard.min(1 << 20));
    assert_eq!(legs.len(), 200);
    driver.shutdown().unwrap();
}

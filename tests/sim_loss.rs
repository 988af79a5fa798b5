//! Whole calls over a lossy wire: every n-th packet is dropped (counter-decided, for several n and phases). Each
//! call must be answered, ended by BYE on both sides exactly once, and leave no state behind.

mod common;

use common::*;
use rappel::sip::endpoint::{Event, TerminationReason};
use std::time::Duration;

fn lossy_call(every: usize, phase: usize) {
    let mut sim = call_pair();
    let mut n = 0;
    sim.drop = Box::new(move |_| {
        n += 1;
        n % every == phase
    });
    let now = sim.now;
    let call = sim.a.ep.start_invite(now, invite_to_b("v=0 a")).unwrap();
    let ok = sim.run_until(Duration::from_secs(40), |s| {
        !s.a.find(is_answered).is_empty()
    });
    assert!(
        ok,
        "every {every} phase {phase}: not answered; a={:?}",
        sim.a.events
    );
    sim.run_to(sim.elapsed() + Duration::from_secs(5));
    let now = sim.now;
    sim.a.ep.send_bye(now, call).unwrap();
    let ok = sim.run_until(Duration::from_secs(100), |s| {
        !s.b.find(is_terminated).is_empty()
    });
    assert!(ok, "every {every} phase {phase}: BYE never arrived");
    assert_eq!(sim.a.find(is_answered).len(), 1);
    assert_eq!(
        sim.a.find(is_terminated),
        vec![(
            sim.a.find(is_terminated)[0].0,
            Event::Terminated {
                call,
                reason: TerminationReason::LocalBye
            }
        )]
    );
    let b_end = sim.b.find(is_terminated);
    assert_eq!(b_end.len(), 1);
    assert!(matches!(
        b_end[0].1,
        Event::Terminated {
            reason: TerminationReason::RemoteBye,
            ..
        }
    ));
    let dropped = sim.log.iter().filter(|p| p.dropped).count();
    assert!(
        dropped * every >= sim.log.len() - every,
        "the rule dropped {dropped} of {}",
        sim.log.len()
    );
    sim.run_to(sim.elapsed() + Duration::from_secs(70));
    assert_eq!(
        sim.a.ep.live_counts(),
        (0, 0, 0),
        "every {every} phase {phase}"
    );
    assert_eq!(
        sim.b.ep.live_counts(),
        (0, 0, 0),
        "every {every} phase {phase}"
    );
}

#[test]
fn calls_survive_periodic_loss() {
    for every in [2, 3, 4, 5] {
        for phase in 0..every {
            lossy_call(every, phase);
        }
    }
}

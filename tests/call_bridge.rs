//! The bridge state machine alone, in simulated time: what it asks of the engine when a party holds, hangs up, or
//! one side is transferred to another leg; and the codec plan.

use rappel::call::bridge::{plan, BridgeCommand, BridgeCore, Listen, OnHangup, Plan};
use rappel::sdp::Codec;
use std::time::{Duration, Instant};

fn bridge(on_hangup: OnHangup, on_transfer: OnHangup, music: bool) -> (BridgeCore, Instant) {
    let t0 = Instant::now();
    let mut b = BridgeCore::new(9, t0, 1_000, (1, 2), on_hangup, on_transfer, music);
    assert_eq!(b.take_commands(), vec![BridgeCommand::Connect(1, 2)]);
    (b, t0)
}

fn ended(cmds: &[BridgeCommand]) -> Option<&rappel::call::BridgeCdr> {
    cmds.iter().find_map(|c| match c {
        BridgeCommand::Ended(cdr) => Some(&**cdr),
        _ => None,
    })
}

#[test]
fn transfer_keeps_the_other_side_and_hangs_up_the_replaced_leg() {
    let (mut b, t0) = bridge(OnHangup::HangUpOther, OnHangup::HangUpOther, false);
    assert!(b.transfer(2, 3));
    assert_eq!(
        b.take_commands(),
        vec![BridgeCommand::Connect(1, 3), BridgeCommand::Hangup(2)]
    );
    assert_eq!(b.legs(), (1, 3));
    // The replaced leg's end no longer concerns the bridge.
    b.leg_ended(t0 + Duration::from_secs(1), 2);
    assert!(b.take_commands().is_empty());
    // The new agent hangs up: the visitor is hung up and the record lists all three legs.
    b.leg_ended(t0 + Duration::from_secs(10), 3);
    let cmds = b.take_commands();
    assert_eq!(cmds[0], BridgeCommand::Hangup(1));
    let cdr = ended(&cmds).unwrap();
    assert_eq!(cdr.legs, vec![1, 2, 3]);
    assert_eq!(cdr.transfers, 1);
    assert_eq!(cdr.duration_ms, 10_000);
    assert_eq!(cdr.ended_by_leg, Some(3));
    assert!(b.is_ended());
}

#[test]
fn transfer_can_keep_the_replaced_leg() {
    let (mut b, _) = bridge(OnHangup::HangUpOther, OnHangup::KeepOther, false);
    assert!(b.transfer(1, 3), "either side can be replaced");
    assert_eq!(
        b.take_commands(),
        vec![
            BridgeCommand::Connect(2, 3),
            BridgeCommand::Listen(1, Listen::Silence)
        ]
    );
    assert!(!b.transfer(1, 4), "leg 1 is no longer in the bridge");
    assert!(!b.transfer(2, 3), "leg 3 is already in the bridge");
}

#[test]
fn a_party_on_hold_gives_the_other_hold_music_then_they_reconnect() {
    let (mut b, _) = bridge(OnHangup::HangUpOther, OnHangup::HangUpOther, true);
    b.remote_hold(2, true);
    assert_eq!(
        b.take_commands(),
        vec![BridgeCommand::Listen(1, Listen::Music)]
    );
    b.remote_hold(2, true);
    assert!(
        b.take_commands().is_empty(),
        "a repeated hold changes nothing"
    );
    b.remote_hold(1, true);
    assert_eq!(
        b.take_commands(),
        vec![BridgeCommand::Listen(2, Listen::Music)]
    );
    b.remote_hold(2, false);
    assert!(b.take_commands().is_empty(), "still held by the other side");
    b.remote_hold(1, false);
    assert_eq!(b.take_commands(), vec![BridgeCommand::Connect(1, 2)]);
}

#[test]
fn without_music_hold_means_silence() {
    let (mut b, _) = bridge(OnHangup::HangUpOther, OnHangup::HangUpOther, false);
    b.remote_hold(1, true);
    assert_eq!(
        b.take_commands(),
        vec![BridgeCommand::Listen(2, Listen::Silence)]
    );
}

#[test]
fn one_side_hanging_up_keeps_the_other_when_asked() {
    let (mut b, t0) = bridge(OnHangup::KeepOther, OnHangup::HangUpOther, false);
    b.leg_ended(t0 + Duration::from_secs(3), 1);
    let cmds = b.take_commands();
    assert_eq!(cmds[0], BridgeCommand::Listen(2, Listen::Silence));
    assert_eq!(ended(&cmds).unwrap().ended_by_leg, Some(1));
    b.leg_ended(t0 + Duration::from_secs(4), 2);
    assert!(b.take_commands().is_empty(), "ended once");
}

#[test]
fn the_application_ending_the_bridge_keeps_both_legs() {
    let (mut b, t0) = bridge(OnHangup::HangUpOther, OnHangup::HangUpOther, false);
    b.end(t0 + Duration::from_millis(1500));
    let cmds = b.take_commands();
    assert_eq!(
        cmds[..2],
        [
            BridgeCommand::Listen(1, Listen::Silence),
            BridgeCommand::Listen(2, Listen::Silence)
        ]
    );
    let cdr = ended(&cmds).unwrap();
    assert_eq!(
        (cdr.ended_by_leg, cdr.duration_ms, cdr.start_unix_ms),
        (None, 1500, 1_000)
    );
}

#[test]
fn codec_plan() {
    assert_eq!(plan(&Codec::pcmu(), &Codec::pcmu(), false), Plan::Connect);
    assert_eq!(
        plan(&Codec::pcma(), &Codec::pcmu(), false),
        Plan::AlignB(Codec::pcma())
    );
    assert_eq!(plan(&Codec::pcma(), &Codec::pcmu(), true), Plan::Transcode);
    assert_eq!(
        plan(&Codec::opus(111), &Codec::pcmu(), false),
        Plan::Incompatible
    );
}

//! rappel: a SIP/VoIP telephony engine for web callback.
//!
//! A visitor leaves a phone number on a website; rappel calls the visitor, holds them with an announcement and
//! music, calls an agent and bridges the two, or calls back at the date and time the visitor chose.
//!
//! The crate is built as sans-IO protocol cores (SIP transactions and dialogs, SDP offer/answer, the RTP relay's
//! per-stream state) that take bytes and an [`std::time::Instant`] in and give messages, timers and events out,
//! driven by a thin tokio layer in [`net`] that owns the sockets and the clock. See `ARCHITECTURE.md`.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod call;
pub mod callback;
pub mod config;
pub mod media;
pub mod net;
pub mod sdp;
pub mod sip;
#[cfg(feature = "http")]
pub mod web;

pub use call::{
    BridgeEvent, BridgeOptions, CallError, CallOptions, EarlyMedia, LegEvent, LegId, ShutdownMode,
};
pub use net::engine::{Bridge, Engine, EngineBuilder, Leg};

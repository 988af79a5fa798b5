//! rappel: a SIP/VoIP telephony engine for web callback.
//!
//! A visitor leaves a phone number on a website; rappel calls the visitor, holds them with an announcement and
//! music, calls an agent and bridges the two, or calls back at the date and time the visitor chose.
//!
//! ```no_run
//! use rappel::{BridgeOptions, CallOptions, Engine};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::builder().start().await?;
//! // Call the visitor, then the agent; bridge them when both answered.
//! let mut visitor = engine.call("sip:visitor@127.0.0.1:5070", CallOptions::default()).await?;
//! visitor.answered().await?;
//! let mut agent = engine.call("sip:agent@127.0.0.1:5080", CallOptions::default()).await?;
//! agent.answered().await?;
//! let mut bridge = engine.bridge(&visitor, &agent, BridgeOptions::default()).await?;
//! // When either hangs up, the bridge hangs up the other and reports its record.
//! let bridge_cdr = bridge.ended().await;
//! let visitor_cdr = visitor.ended().await;
//! println!("{bridge_cdr:?} {visitor_cdr:?}");
//! # Ok(())
//! # }
//! ```
//!
//! [`Engine`] places calls ([`Leg`]: progress as [`LegEvent`]s, hold, play, hang up; dropping a leg hangs it up)
//! and joins them ([`Bridge`]: transfer, end); each ends with a typed record ([`call::Cdr`], [`call::BridgeCdr`]).
//!
//! The crate is built as sans-IO protocol cores (SIP transactions and dialogs, SDP offer/answer, call legs and
//! bridges, the RTP relay's per-stream state) that take bytes and an [`std::time::Instant`] in and give messages,
//! timers and events out, driven by a thin tokio layer in [`net`] that owns the sockets and the clock. See
//! `ARCHITECTURE.md`.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

#[cfg(feature = "http")]
pub mod app;
pub mod call;
pub mod callback;
pub mod config;
pub mod demo;
pub mod media;
pub mod net;
pub mod sdp;
pub mod sip;
#[cfg(feature = "http")]
pub mod web;

pub use call::{
    BridgeEvent, BridgeOptions, CallError, CallOptions, EarlyMedia, LegEvent, LegId, ShutdownMode,
};
pub use net::engine::{Bridge, Engine, EngineBuilder, Leg, RegistrationStatus, TrunkRegistration};

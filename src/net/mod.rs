//! The tokio driver: sockets, timers and the clock. Everything protocol-shaped lives in the sans-IO modules.

pub mod dns;
pub mod engine;
pub mod record_io;
pub mod rtp_io;
pub mod sip;
pub(crate) mod sys;
pub mod transport;
pub(crate) mod uring;
#[cfg(feature = "webrtc")]
pub mod webrtc;

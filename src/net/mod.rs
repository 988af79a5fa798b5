//! The tokio driver: sockets, timers and the clock. Everything protocol-shaped lives in the sans-IO modules.

pub mod sip;
pub mod transport;

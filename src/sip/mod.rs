//! The sans-IO SIP layer: message codec, transactions, dialogs and digest authentication.
//!
//! Nothing in this module reads the clock or touches a socket: every entry point takes `now: Instant`.

pub mod auth;
pub mod dialog;
pub mod endpoint;
pub mod message;
pub mod register;
pub mod transaction;

//! SIP transactions (RFC 3261 §17, amended by RFC 6026), as plain sans-IO state machines.
//!
//! A transaction does not parse or build messages: the endpoint hands it the encoded request or response to
//! (re)transmit and tells it the status code of what arrived; the transaction decides what to retransmit, when, and
//! whether a message goes up to the transaction user (TU). That keeps every state machine testable without the
//! codec and keeps message construction (the ACK for a non-2xx, 100 Trying) in one place, the endpoint.
//!
//! Methods follow quinn's classes: `handle_*` feed inputs, `poll_transmit` / `poll_timeout` / `poll_event` drain
//! outputs. After any `handle_*` call, drain `poll_transmit` and `poll_event` and re-read `poll_timeout`.
//!
//! - [`ClientTransaction`]: INVITE (Calling/Proceeding/Completed/Accepted) and non-INVITE
//!   (Trying/Proceeding/Completed).
//! - [`ServerTransaction`]: INVITE (Proceeding/Completed/Confirmed/Accepted) and non-INVITE
//!   (Trying/Proceeding/Completed).
//!
//! Both end in `Terminated`; the owner drops them then ([`ClientTransaction::is_terminated`]).

mod client;
mod server;
mod timer;

pub use client::{ClientDisposition, ClientState, ClientTransaction};
pub use server::{ServerDisposition, ServerState, ServerTransaction};
pub use timer::{Timer, TimerConfig, TimerTable};

use bytes::Bytes;
use std::net::SocketAddr;

/// The transport a message travels on. Reliable transports (TCP, TLS) skip retransmissions and zero the linger
/// timers D, I, J, K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// UDP (unreliable).
    Udp,
    /// TCP (reliable).
    Tcp,
    /// TLS over TCP (reliable).
    Tls,
}

impl Transport {
    /// Whether the transport delivers reliably (RFC 3261 §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The token used in a Via header (`UDP`, `TCP`, `TLS`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// A datagram or stream write the driver must perform.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Where to send.
    pub destination: SocketAddr,
    /// Over which transport.
    pub transport: Transport,
    /// The encoded SIP message.
    pub payload: Bytes,
}

/// Whether a transaction is for an INVITE or any other method (ACK never has one; CANCEL has its own non-INVITE
/// transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKind {
    /// INVITE.
    Invite,
    /// Any method but INVITE and ACK.
    NonInvite,
}

/// What a transaction tells its owner, drained with `poll_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxEvent {
    /// Timer B or F fired (client: no final response), or Timer H fired (server: no ACK for a non-2xx final
    /// response).
    Timeout,
    /// The transaction reached Terminated and can be dropped.
    Terminated,
}

/// The magic cookie that marks an RFC 3261 branch (§8.1.1.7).
pub const BRANCH_COOKIE: &str = "z9hG4bK";

//! The SIP message codec.

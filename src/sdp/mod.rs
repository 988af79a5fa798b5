//! SDP parse and build, and RFC 3264 offer/answer.

//! The media plane: RTP relay, per-leg stream continuity, media sources, DTMF and recording.

pub mod relay;
pub mod rtp;
pub mod stream;

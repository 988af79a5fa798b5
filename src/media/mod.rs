//! The media plane: RTP relay, per-leg stream continuity, media sources, DTMF and recording.

pub mod dtmf;
pub mod g711;
pub mod player;
pub mod record;
pub mod relay;
pub mod rtp;
pub mod stream;
pub mod tone;
pub mod wav;

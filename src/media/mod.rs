//! The media plane: RTP relay, per-leg stream continuity, media sources, DTMF and recording.

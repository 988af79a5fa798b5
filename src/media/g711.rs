//! G.711 μ-law (PCMU) and A-law (PCMA) codecs, table-driven, plus direct PCMU↔PCMA transcoding tables.
//!
//! The tables are computed at compile time (`const fn`) from the ITU-T G.711 segment rules, the same
//! arithmetic as the reference implementation in ITU-T G.191 (Sun's `g711.c`): encoding a 16-bit sample
//! is one lookup in a 16 384-entry (μ-law, 14-bit input) or 8 192-entry (A-law, 13-bit input) table,
//! decoding is one lookup in a 256-entry table. We write this rather than take a crate because it is
//! ~150 lines, has no dependencies, and the relay needs the 256-entry transcode tables anyway.
//!
//! The PCMU↔PCMA tables map each code to the code of the other law whose decoded value is nearest
//! (decode, then re-encode), which differs from the G.711 Annex tables by at most one step on a few codes.

/// Which G.711 companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    /// μ-law, RTP payload type 0 (PCMU).
    Ulaw,
    /// A-law, RTP payload type 8 (PCMA).
    Alaw,
}

impl Law {
    /// The static RTP payload type of this law (0 for PCMU, 8 for PCMA).
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Ulaw => 0,
            Law::Alaw => 8,
        }
    }

    /// The law of a static RTP payload type (0 → PCMU, 8 → PCMA).
    pub fn from_payload_type(pt: u8) -> Option<Law> {
        match pt {
            0 => Some(Law::Ulaw),
            8 => Some(Law::Alaw),
            _ => None,
        }
    }

    /// The encoded value of digital silence (0) in this law.
    pub fn silence(self) -> u8 {
        match self {
            Law::Ulaw => 0xFF,
            Law::Alaw => 0xD5,
        }
    }

    /// Encodes one 16-bit linear sample.
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Ulaw => ulaw_encode(sample),
            Law::Alaw => alaw_encode(sample),
        }
    }

    /// Decodes one code to a 16-bit linear sample.
    pub fn decode(self, code: u8) -> i16 {
        match self {
            Law::Ulaw => ulaw_decode(code),
            Law::Alaw => alaw_decode(code),
        }
    }

    /// Encodes `pcm` and appends the codes to `out`.
    pub fn encode_into(self, pcm: &[i16], out: &mut Vec<u8>) {
        out.reserve(pcm.len());
        match self {
            Law::Ulaw => pcm.iter().for_each(|&s| out.push(ulaw_encode(s))),
            Law::Alaw => pcm.iter().for_each(|&s| out.push(alaw_encode(s))),
        }
    }

    /// Decodes `codes` and appends the samples to `out`.
    pub fn decode_into(self, codes: &[u8], out: &mut Vec<i16>) {
        out.extend(codes.iter().map(|&c| self.decode(c)));
    }
}

const BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 8159;
const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

const fn search(val: i32, table: &[i32; 8]) -> i32 {
    let mut i = 0;
    while i < 8 {
        if val <= table[i] {
            return i as i32;
        }
        i += 1;
    }
    8
}

/// μ-law encoding of a 14-bit sample (the 16-bit sample shifted right by 2).
const fn ulaw_encode_14(pcm14: i32) -> u8 {
    let (mut v, mask) = if pcm14 < 0 {
        (-pcm14, 0x7F)
    } else {
        (pcm14, 0xFF)
    };
    if v > ULAW_CLIP {
        v = ULAW_CLIP;
    }
    v += BIAS >> 2;
    let seg = search(v, &SEG_UEND);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let uval = (seg << 4) | ((v >> (seg + 1)) & 0xF);
    (uval ^ mask) as u8
}

/// A-law encoding of a 13-bit sample (the 16-bit sample shifted right by 3).
const fn alaw_encode_13(pcm13: i32) -> u8 {
    let (v, mask) = if pcm13 >= 0 {
        (pcm13, 0xD5)
    } else {
        (-pcm13 - 1, 0x55)
    };
    let seg = search(v, &SEG_AEND);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mut aval = seg << 4;
    if seg < 2 {
        aval |= (v >> 1) & 0xF;
    } else {
        aval |= (v >> seg) & 0xF;
    }
    (aval ^ mask) as u8
}

const fn ulaw_decode_calc(code: u8) -> i16 {
    let u = !code as i32 & 0xFF;
    let mut t = ((u & 0x0F) << 3) + BIAS;
    t <<= (u & 0x70) >> 4;
    (if u & 0x80 != 0 { BIAS - t } else { t - BIAS }) as i16
}

const fn alaw_decode_calc(code: u8) -> i16 {
    let a = (code ^ 0x55) as i32;
    let mut t = (a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const ULAW_ENC: [u8; 16384] = {
    let mut t = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        // index i is the 14-bit value as an unsigned offset: i - 8192
        t[i] = ulaw_encode_14(i as i32 - 8192);
        i += 1;
    }
    t
};

const ALAW_ENC: [u8; 8192] = {
    let mut t = [0u8; 8192];
    let mut i = 0;
    while i < 8192 {
        t[i] = alaw_encode_13(i as i32 - 4096);
        i += 1;
    }
    t
};

const ULAW_DEC: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_decode_calc(i as u8);
        i += 1;
    }
    t
};

const ALAW_DEC: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_decode_calc(i as u8);
        i += 1;
    }
    t
};

/// PCMU code → PCMA code (256 entries).
pub const ULAW_TO_ALAW: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_encode_13((ULAW_DEC[i] as i32) >> 3);
        i += 1;
    }
    t
};

/// PCMA code → PCMU code (256 entries).
pub const ALAW_TO_ULAW: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_encode_14((ALAW_DEC[i] as i32) >> 2);
        i += 1;
    }
    t
};

/// Encodes a 16-bit sample to μ-law.
#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    // (sample >> 2) is in -8192..=8191, so the index is in 0..16384.
    ULAW_ENC[((sample >> 2) as i32 + 8192) as usize]
}

/// Encodes a 16-bit sample to A-law.
#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    // (sample >> 3) is in -4096..=4095, so the index is in 0..8192.
    ALAW_ENC[((sample >> 3) as i32 + 4096) as usize]
}

/// Decodes a μ-law code to a 16-bit sample.
#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_DEC[code as usize]
}

/// Decodes an A-law code to a 16-bit sample.
#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_DEC[code as usize]
}

/// Transcodes a G.711 payload in place from one law to the other (no-op when `from == to`).
pub fn transcode_in_place(from: Law, to: Law, payload: &mut [u8]) {
    let table = match (from, to) {
        (Law::Ulaw, Law::Alaw) => &ULAW_TO_ALAW,
        (Law::Alaw, Law::Ulaw) => &ALAW_TO_ULAW,
        _ => return,
    };
    for b in payload.iter_mut() {
        *b = table[*b as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        // -1 lands in the smallest negative step (as in the G.191 reference code).
        assert_eq!(ulaw_encode(-1), 0x7E);
        assert_eq!(ulaw_decode(0x7E), -8);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(Law::Ulaw.silence(), ulaw_encode(0));
        assert_eq!(Law::Alaw.silence(), alaw_encode(0));
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            let u = ulaw_encode(ulaw_decode(c));
            // 0x7F (negative zero) decodes to 0, which encodes as 0xFF.
            if c == 0x7F {
                assert_eq!(u, 0xFF);
            } else {
                assert_eq!(u, c, "μ-law code {c:#04x}");
            }
            assert_eq!(alaw_encode(alaw_decode(c)), c, "A-law code {c:#04x}");
        }
    }

    #[test]
    fn quantisation_error_is_bounded() {
        for x in i16::MIN..=i16::MAX {
            let x32 = x as i32;
            let bound = x32.abs() / 16 + 16;
            let eu = (ulaw_decode(ulaw_encode(x)) as i32 - x32).abs();
            let ea = (alaw_decode(alaw_encode(x)) as i32 - x32).abs();
            assert!(eu <= bound, "μ-law error {eu} at {x}");
            assert!(ea <= bound, "A-law error {ea} at {x}");
        }
    }

    #[test]
    fn decode_is_monotonic() {
        let mut codes: Vec<i16> = (0..=255u8).map(ulaw_decode).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), 255); // +0 and -0 collapse
        let a: std::collections::BTreeSet<i16> = (0..=255u8).map(alaw_decode).collect();
        assert_eq!(a.len(), 256);
    }

    #[test]
    fn transcode_tables_keep_value_close() {
        for c in 0..=255u8 {
            let lin = ulaw_decode(c) as i32;
            let via = alaw_decode(ULAW_TO_ALAW[c as usize]) as i32;
            assert!(
                (lin - via).abs() <= lin.abs() / 16 + 16,
                "u {c:#x}: {lin} vs {via}"
            );
            let lin = alaw_decode(c) as i32;
            let via = ulaw_decode(ALAW_TO_ULAW[c as usize]) as i32;
            assert!(
                (lin - via).abs() <= lin.abs() / 16 + 16,
                "a {c:#x}: {lin} vs {via}"
            );
        }
        // μ-law 0 → A-law +8 (nearest), A-law +8 → μ-law +8.
        assert_eq!(ULAW_TO_ALAW[0xFF], 0xD5);
        assert_eq!(ulaw_decode(ALAW_TO_ULAW[0xD5]), 8);
        let mut p = [0xFFu8, 0x80, 0x00];
        transcode_in_place(Law::Ulaw, Law::Alaw, &mut p);
        assert_eq!(p, [0xD5, ULAW_TO_ALAW[0x80], ULAW_TO_ALAW[0x00]]);
        transcode_in_place(Law::Alaw, Law::Alaw, &mut p);
        assert_eq!(p[0], 0xD5);
    }
}

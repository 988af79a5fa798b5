//! WAV (RIFF/WAVE) reading and writing for announcements, music and recordings.
//!
//! Reading accepts 16-bit PCM, A-law (format 6) and μ-law (format 7), including `WAVE_FORMAT_EXTENSIBLE`
//! files whose sub-format is one of those, with 1 or 2 channels at any rate (callers such as the player
//! check for 8 kHz mono). RIFF chunks are walked with checked arithmetic; unknown chunks (`LIST`, `fact`, ...)
//! are skipped; a `data` chunk that claims more bytes than the file holds (a recorder that never patched
//! its header) is clamped to what is there. Writing produces 16-bit PCM through any `Write + Seek`,
//! patching the sizes in [`WavWriter::finish`]. Small enough that a crate (hound) is not worth the dependency.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::g711::Law;

/// Largest WAV file we read (32 MiB: over half an hour of 8 kHz 16-bit mono).
pub const MAX_WAV_BYTES: usize = 32 * 1024 * 1024;

/// Why a WAV file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    /// The file is larger than the cap.
    #[error("WAV file too large: more than {max} bytes")]
    TooLarge {
        /// The cap in bytes.
        max: usize,
    },
    /// Not a RIFF/WAVE file.
    #[error("not a RIFF/WAVE file")]
    NotWave,
    /// A chunk header or the `fmt ` chunk is cut short or inconsistent.
    #[error("malformed chunk {id:?} at offset {offset}")]
    MalformedChunk {
        /// The chunk id.
        id: [u8; 4],
        /// Byte offset of the chunk header.
        offset: usize,
    },
    /// No `fmt ` chunk before the `data` chunk.
    #[error("missing fmt chunk")]
    MissingFormat,
    /// No `data` chunk.
    #[error("missing data chunk")]
    MissingData,
    /// A format we do not read.
    #[error("unsupported WAV format tag {format_tag} with {bits_per_sample} bits per sample")]
    UnsupportedFormat {
        /// The `wFormatTag` (or the extensible sub-format).
        format_tag: u16,
        /// Bits per sample.
        bits_per_sample: u16,
    },
    /// A channel count we do not read (only 1 or 2).
    #[error("unsupported channel count {0}")]
    UnsupportedChannels(u16),
    /// The file is readable but not 8 kHz mono, which the caller needs.
    #[error("need 8 kHz mono, got {sample_rate} Hz with {channels} channel(s)")]
    NotTelephony {
        /// Sample rate in the file.
        sample_rate: u32,
        /// Channels in the file.
        channels: u16,
    },
    /// The output grew past what a RIFF header can describe (4 GiB).
    #[error("WAV output over 4 GiB")]
    OutputTooLarge,
    /// I/O error on the underlying reader or writer.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The sample encoding of a WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavFormat {
    /// Linear 16-bit little-endian PCM.
    Pcm16,
    /// G.711 (A-law or μ-law), one byte per sample.
    G711(Law),
}

/// A WAV file read into memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    /// Sample encoding.
    pub format: WavFormat,
    /// Number of interleaved channels (1 or 2).
    pub channels: u16,
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// The raw sample bytes of the `data` chunk, truncated to whole frames.
    pub data: Vec<u8>,
}

impl Wav {
    /// Decodes the data to interleaved 16-bit PCM samples.
    pub fn to_pcm(&self) -> Vec<i16> {
        match self.format {
            WavFormat::Pcm16 => self
                .data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
            WavFormat::G711(law) => {
                let mut out = Vec::with_capacity(self.data.len());
                law.decode_into(&self.data, &mut out);
                out
            }
        }
    }

    /// Decodes to mono 8 kHz PCM, or fails with [`WavError::NotTelephony`] for any other layout.
    pub fn to_telephony_pcm(&self) -> Result<Vec<i16>, WavError> {
        if self.sample_rate != 8000 || self.channels != 1 {
            return Err(WavError::NotTelephony {
                sample_rate: self.sample_rate,
                channels: self.channels,
            });
        }
        Ok(self.to_pcm())
    }

    /// Reads a WAV file from `r`, refusing anything larger than [`MAX_WAV_BYTES`].
    pub fn read_from<R: Read>(r: R) -> Result<Wav, WavError> {
        let mut buf = Vec::new();
        r.take(MAX_WAV_BYTES as u64 + 1).read_to_end(&mut buf)?;
        if buf.len() > MAX_WAV_BYTES {
            return Err(WavError::TooLarge { max: MAX_WAV_BYTES });
        }
        Wav::parse(&buf)
    }

    /// Parses a WAV file held in memory. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Wav, WavError> {
        if bytes.len() > MAX_WAV_BYTES {
            return Err(WavError::TooLarge { max: MAX_WAV_BYTES });
        }
        if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return Err(WavError::NotWave);
        }
        let mut fmt: Option<(WavFormat, u16, u32, usize)> = None;
        let mut pos = 12usize;
        while let Some(header) = bytes.get(pos..pos.saturating_add(8)) {
            let id = [header[0], header[1], header[2], header[3]];
            let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            let body_start = pos + 8;
            let available = bytes.len() - body_start;
            if &id == b"data" {
                let (format, channels, sample_rate, frame) = fmt.ok_or(WavError::MissingFormat)?;
                let len = size.min(available);
                let len = len - len % frame;
                let data = bytes[body_start..body_start + len].to_vec();
                return Ok(Wav {
                    format,
                    channels,
                    sample_rate,
                    data,
                });
            }
            if size > available {
                return Err(WavError::MalformedChunk { id, offset: pos });
            }
            let body = &bytes[body_start..body_start + size];
            if &id == b"fmt " {
                fmt = Some(parse_fmt(body).map_err(|e| match e {
                    WavError::MalformedChunk { .. } => WavError::MalformedChunk { id, offset: pos },
                    other => other,
                })?);
            }
            // Chunks are padded to an even length.
            pos = body_start.saturating_add(size).saturating_add(size & 1);
        }
        Err(if fmt.is_none() {
            WavError::MissingFormat
        } else {
            WavError::MissingData
        })
    }
}

/// Parses a `fmt ` chunk body into (format, channels, rate, bytes per frame).
fn parse_fmt(body: &[u8]) -> Result<(WavFormat, u16, u32, usize), WavError> {
    let malformed = || WavError::MalformedChunk {
        id: *b"fmt ",
        offset: 0,
    };
    let u16_at = |o: usize| {
        body.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(malformed)
    };
    let mut tag = u16_at(0)?;
    let channels = u16_at(2)?;
    let rate = body
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(malformed)?;
    let bits = u16_at(14)?;
    if tag == 0xFFFE {
        // WAVE_FORMAT_EXTENSIBLE: cbSize(2) validBits(2) channelMask(4) then the sub-format GUID,
        // whose first two bytes are the classic format tag.
        tag = u16_at(24)?;
    }
    let format = match (tag, bits) {
        (1, 16) => WavFormat::Pcm16,
        (6, 8) => WavFormat::G711(Law::Alaw),
        (7, 8) => WavFormat::G711(Law::Ulaw),
        _ => {
            return Err(WavError::UnsupportedFormat {
                format_tag: tag,
                bits_per_sample: bits,
            })
        }
    };
    if !(1..=2).contains(&channels) {
        return Err(WavError::UnsupportedChannels(channels));
    }
    if rate == 0 {
        return Err(malformed());
    }
    let sample_bytes = if format == WavFormat::Pcm16 { 2 } else { 1 };
    Ok((format, channels, rate, sample_bytes * channels as usize))
}

/// Writes a 16-bit PCM WAV file to any `Write + Seek`, patching the header sizes in [`WavWriter::finish`].
#[derive(Debug)]
pub struct WavWriter<W: Write + Seek> {
    out: W,
    channels: u16,
    data_bytes: u64,
    buf: Vec<u8>,
}

impl<W: Write + Seek> WavWriter<W> {
    /// Writes the header (with zero sizes, fixed at `finish`) and returns the writer.
    pub fn new(mut out: W, channels: u16, sample_rate: u32) -> Result<Self, WavError> {
        if !(1..=2).contains(&channels) {
            return Err(WavError::UnsupportedChannels(channels));
        }
        let block_align = channels * 2;
        let mut h = Vec::with_capacity(44);
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&channels.to_le_bytes());
        h.extend_from_slice(&sample_rate.to_le_bytes());
        h.extend_from_slice(&(sample_rate.saturating_mul(block_align as u32)).to_le_bytes());
        h.extend_from_slice(&block_align.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&0u32.to_le_bytes());
        out.write_all(&h)?;
        Ok(WavWriter {
            out,
            channels,
            data_bytes: 0,
            buf: Vec::new(),
        })
    }

    /// Number of channels this writer was created with.
    pub fn channels(&self) -> u16 {
        self.channels
    }

    /// Appends interleaved samples (a multiple of the channel count is expected but not enforced).
    pub fn write_samples(&mut self, samples: &[i16]) -> Result<(), WavError> {
        let add = samples.len() as u64 * 2;
        if self.data_bytes + add > u32::MAX as u64 - 36 {
            return Err(WavError::OutputTooLarge);
        }
        self.buf.clear();
        for s in samples {
            self.buf.extend_from_slice(&s.to_le_bytes());
        }
        self.out.write_all(&self.buf)?;
        self.data_bytes += add;
        Ok(())
    }

    /// Patches the RIFF and data sizes, flushes, and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, WavError> {
        let data = self.data_bytes as u32; // checked against u32::MAX in write_samples
        self.out.seek(SeekFrom::Start(4))?;
        self.out.write_all(&(36 + data).to_le_bytes())?;
        self.out.seek(SeekFrom::Start(40))?;
        self.out.write_all(&data.to_le_bytes())?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Builds an in-memory WAV file (any supported format) — used by tests to make assets without binary blobs.
pub fn build_wav(format: WavFormat, channels: u16, sample_rate: u32, data: &[u8]) -> Vec<u8> {
    let (tag, bits, sample_bytes) = match format {
        WavFormat::Pcm16 => (1u16, 16u16, 2u16),
        WavFormat::G711(Law::Alaw) => (6, 8, 1),
        WavFormat::G711(Law::Ulaw) => (7, 8, 1),
    };
    let block_align = channels.saturating_mul(sample_bytes);
    let mut v = Vec::with_capacity(44 + data.len());
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36u32.saturating_add(data.len() as u32)).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&tag.to_le_bytes());
    v.extend_from_slice(&channels.to_le_bytes());
    v.extend_from_slice(&sample_rate.to_le_bytes());
    v.extend_from_slice(&(sample_rate.saturating_mul(block_align as u32)).to_le_bytes());
    v.extend_from_slice(&block_align.to_le_bytes());
    v.extend_from_slice(&bits.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    if data.len() % 2 == 1 {
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn pcm_bytes(s: &[i16]) -> Vec<u8> {
        s.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_pcm16() {
        let samples = [0i16, 1000, -1000, i16::MAX, i16::MIN];
        let file = build_wav(WavFormat::Pcm16, 1, 8000, &pcm_bytes(&samples));
        let w = Wav::parse(&file).unwrap();
        assert_eq!(w.format, WavFormat::Pcm16);
        assert_eq!(w.to_telephony_pcm().unwrap(), samples);
    }

    #[test]
    fn reads_g711() {
        let file = build_wav(WavFormat::G711(Law::Ulaw), 1, 8000, &[0xFF, 0x80, 0x00]);
        let w = Wav::parse(&file).unwrap();
        assert_eq!(w.to_pcm(), vec![0, 32124, -32124]);
        let file = build_wav(WavFormat::G711(Law::Alaw), 1, 8000, &[0xD5]);
        assert_eq!(Wav::parse(&file).unwrap().to_pcm(), vec![8]);
    }

    #[test]
    fn skips_unknown_chunks_and_pads() {
        let mut file = build_wav(WavFormat::Pcm16, 1, 8000, &pcm_bytes(&[7, 8]));
        // Insert an odd-sized LIST chunk (with pad byte) between fmt and data.
        let list = [b"LIST".as_slice(), &3u32.to_le_bytes(), b"abc", &[0]].concat();
        file.splice(36..36, list);
        assert_eq!(Wav::parse(&file).unwrap().to_pcm(), vec![7, 8]);
    }

    #[test]
    fn typed_errors() {
        assert!(matches!(
            Wav::parse(b"RIFX\0\0\0\0WAVE"),
            Err(WavError::NotWave)
        ));
        assert!(matches!(Wav::parse(b""), Err(WavError::NotWave)));
        let mp3 = {
            let mut f = build_wav(WavFormat::Pcm16, 1, 8000, &[0, 0]);
            f[20] = 0x55; // MPEG layer 3 format tag
            f
        };
        assert!(matches!(
            Wav::parse(&mp3),
            Err(WavError::UnsupportedFormat {
                format_tag: 0x55,
                ..
            })
        ));
        let stereo = build_wav(WavFormat::Pcm16, 2, 16000, &[0; 4]);
        assert!(matches!(
            Wav::parse(&stereo).unwrap().to_telephony_pcm(),
            Err(WavError::NotTelephony {
                sample_rate: 16000,
                channels: 2
            })
        ));
        let no_data = &build_wav(WavFormat::Pcm16, 1, 8000, &[])[..36];
        assert!(matches!(Wav::parse(no_data), Err(WavError::MissingData)));
        let mut huge_chunk = build_wav(WavFormat::Pcm16, 1, 8000, &[]);
        huge_chunk[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Wav::parse(&huge_chunk),
            Err(WavError::MalformedChunk { .. })
        ));
        let six = build_wav(WavFormat::Pcm16, 6, 8000, &[]);
        assert!(matches!(
            Wav::parse(&six),
            Err(WavError::UnsupportedChannels(6))
        ));
    }

    #[test]
    fn reads_wave_format_extensible() {
        // fmt chunk of 40 bytes: tag 0xFFFE, then cbSize 22, valid bits, channel mask, sub-format GUID
        // starting with 0x0007 (μ-law).
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&0xFFFEu16.to_le_bytes());
        fmt.extend_from_slice(&1u16.to_le_bytes());
        fmt.extend_from_slice(&8000u32.to_le_bytes());
        fmt.extend_from_slice(&8000u32.to_le_bytes());
        fmt.extend_from_slice(&1u16.to_le_bytes());
        fmt.extend_from_slice(&8u16.to_le_bytes());
        fmt.extend_from_slice(&22u16.to_le_bytes());
        fmt.extend_from_slice(&8u16.to_le_bytes());
        fmt.extend_from_slice(&4u32.to_le_bytes());
        fmt.extend_from_slice(&7u16.to_le_bytes());
        fmt.extend_from_slice(&[0; 14]);
        let data = [0xFFu8, 0x80];
        let mut file = Vec::new();
        file.extend_from_slice(b"RIFF");
        file.extend_from_slice(&(4 + 8 + fmt.len() as u32 + 8 + 2).to_le_bytes());
        file.extend_from_slice(b"WAVEfmt ");
        file.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        file.extend_from_slice(&fmt);
        file.extend_from_slice(b"data");
        file.extend_from_slice(&2u32.to_le_bytes());
        file.extend_from_slice(&data);
        let w = Wav::parse(&file).unwrap();
        assert_eq!(w.format, WavFormat::G711(Law::Ulaw));
        assert_eq!(w.to_telephony_pcm().unwrap(), vec![0, 32124]);
    }

    #[test]
    fn data_size_larger_than_file_is_clamped() {
        let mut file = build_wav(WavFormat::Pcm16, 1, 8000, &pcm_bytes(&[1, 2, 3]));
        file[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        file.push(9); // half a sample: dropped
        assert_eq!(Wav::parse(&file).unwrap().to_pcm(), vec![1, 2, 3]);
    }

    #[test]
    fn parse_never_panics_on_truncations() {
        let file = build_wav(WavFormat::Pcm16, 2, 8000, &pcm_bytes(&[1, 2, 3, 4]));
        for n in 0..file.len() {
            let _ = Wav::parse(&file[..n]);
            let mut f = file.clone();
            f[n] ^= 0xFF;
            let _ = Wav::parse(&f);
        }
    }

    #[test]
    fn writer_round_trips() {
        let mut w = WavWriter::new(Cursor::new(Vec::new()), 2, 8000).unwrap();
        w.write_samples(&[1, -1, 2, -2]).unwrap();
        w.write_samples(&[3, -3]).unwrap();
        let bytes = w.finish().unwrap().into_inner();
        assert_eq!(bytes.len(), 44 + 12);
        let wav = Wav::read_from(&bytes[..]).unwrap();
        assert_eq!(
            (wav.channels, wav.sample_rate, wav.format),
            (2, 8000, WavFormat::Pcm16)
        );
        assert_eq!(wav.to_pcm(), vec![1, -1, 2, -2, 3, -3]);
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 36 + 12);
    }
}

//! Call-progress tones (ringback by country, beep) rendered as 8 kHz 16-bit PCM.
//!
//! A tone is one or two frequencies switched on and off by a cadence. [`ToneSpec::render`] renders one
//! full cadence cycle once; the player loops it (see [`super::player::PlayItem::Loop`]), so 1 000 callers
//! hearing ringback cost one rendering, not 1 000 oscillators.

use std::time::Duration;

use super::player::Clip;

/// Sample rate of rendered tones.
pub const TONE_RATE: u32 = 8000;

/// Countries whose ringback cadence we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Country {
    /// France: 440 Hz, 1.5 s on, 3.5 s off.
    Fr,
    /// United States: 440 + 480 Hz, 2 s on, 4 s off.
    Us,
    /// United Kingdom: 400 + 450 Hz, 0.4 s on, 0.2 s off, 0.4 s on, 2 s off.
    Uk,
}

/// A tone: frequencies, level and on/off cadence.
#[derive(Debug, Clone, PartialEq)]
pub struct ToneSpec {
    /// Frequencies in Hz summed together (one or two, usually).
    pub frequencies: Vec<f64>,
    /// Peak amplitude of each frequency component, as a fraction of full scale (0.0–1.0).
    pub amplitude: f64,
    /// Alternating on/off durations, starting with "on".
    pub cadence: Vec<Duration>,
}

impl ToneSpec {
    /// The ringback tone of `country`.
    pub fn ringback(country: Country) -> ToneSpec {
        let ms = Duration::from_millis;
        let (frequencies, cadence) = match country {
            Country::Fr => (vec![440.0], vec![ms(1500), ms(3500)]),
            Country::Us => (vec![440.0, 480.0], vec![ms(2000), ms(4000)]),
            Country::Uk => (
                vec![400.0, 450.0],
                vec![ms(400), ms(200), ms(400), ms(2000)],
            ),
        };
        ToneSpec {
            frequencies,
            amplitude: 0.2,
            cadence,
        }
    }

    /// A single 1 kHz beep of 250 ms (followed by nothing: play it once).
    pub fn beep() -> ToneSpec {
        ToneSpec {
            frequencies: vec![1000.0],
            amplitude: 0.3,
            cadence: vec![Duration::from_millis(250)],
        }
    }

    /// Length of one cadence cycle.
    pub fn cycle(&self) -> Duration {
        self.cadence.iter().sum()
    }

    /// Renders one cadence cycle as 8 kHz PCM. Durations are rounded down to whole samples; the cycle
    /// is capped at 60 s.
    pub fn render_pcm(&self) -> Vec<i16> {
        let samples_of = |d: &Duration| {
            (d.as_micros().min(60_000_000) as u64 * TONE_RATE as u64 / 1_000_000) as usize
        };
        let total: usize = self
            .cadence
            .iter()
            .map(samples_of)
            .sum::<usize>()
            .min(60 * TONE_RATE as usize);
        let mut out = Vec::with_capacity(total);
        let amp = self.amplitude.clamp(0.0, 1.0) * i16::MAX as f64;
        let mut n = 0usize;
        for (i, d) in self.cadence.iter().enumerate() {
            let len = samples_of(d).min(total - out.len());
            let on = i % 2 == 0;
            for _ in 0..len {
                let s = if on {
                    let t = n as f64 / TONE_RATE as f64;
                    self.frequencies
                        .iter()
                        .map(|f| (2.0 * std::f64::consts::PI * f * t).sin())
                        .sum::<f64>()
                        * amp
                } else {
                    0.0
                };
                out.push(s.clamp(i16::MIN as f64, i16::MAX as f64) as i16);
                n += 1;
            }
        }
        out
    }

    /// Renders one cadence cycle as a [`Clip`].
    pub fn render(&self) -> Clip {
        Clip::from_pcm(self.render_pcm())
    }
}

/// Goertzel power of `freq` in `pcm` (8 kHz), normalised by length: a tiny tone detector used by tests
/// (recording, player) to check which tone a signal carries.
pub fn goertzel_power(pcm: &[i16], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / TONE_RATE as f64;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s0 = x as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let p = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if pcm.is_empty() {
        0.0
    } else {
        p / (pcm.len() as f64 * pcm.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn energy(p: &[i16]) -> f64 {
        p.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / p.len().max(1) as f64
    }

    #[test]
    fn fr_cadence_and_frequency() {
        let pcm = ToneSpec::ringback(Country::Fr).render_pcm();
        assert_eq!(pcm.len(), 5 * 8000);
        let on = &pcm[..12000];
        let off = &pcm[12000..];
        assert!(energy(on) > 1e6);
        assert_eq!(energy(off), 0.0);
        assert!(goertzel_power(on, 440.0) > 100.0 * goertzel_power(on, 480.0));
    }

    #[test]
    fn us_has_both_frequencies() {
        let pcm = ToneSpec::ringback(Country::Us).render_pcm();
        assert_eq!(pcm.len(), 6 * 8000);
        let on = &pcm[..16000];
        let p440 = goertzel_power(on, 440.0);
        let p480 = goertzel_power(on, 480.0);
        assert!(p440 > 100.0 * goertzel_power(on, 1000.0));
        assert!((p440 / p480 - 1.0).abs() < 0.2);
        assert_eq!(energy(&pcm[16000..]), 0.0);
    }

    #[test]
    fn uk_double_ring() {
        let pcm = ToneSpec::ringback(Country::Uk).render_pcm();
        assert_eq!(pcm.len(), 3 * 8000);
        assert!(energy(&pcm[0..3200]) > 1e6);
        assert_eq!(energy(&pcm[3200..4800]), 0.0);
        assert!(energy(&pcm[4800..8000]) > 1e6);
        assert_eq!(energy(&pcm[8000..]), 0.0);
        assert!(goertzel_power(&pcm[..3200], 400.0) > 100.0 * goertzel_power(&pcm[..3200], 440.0));
    }

    #[test]
    fn beep_is_short_and_1khz() {
        let pcm = ToneSpec::beep().render_pcm();
        assert_eq!(pcm.len(), 2000);
        assert!(goertzel_power(&pcm, 1000.0) > 100.0 * goertzel_power(&pcm, 440.0));
    }
}

//! Prompts: recordings decoded once at load time and pre-encoded to 20 ms G.711 frames.

use std::time::Duration;

use crate::receive::Codec;
use crate::{g711, wav};

/// The sample rate of prompts and of G.711, Hz.
pub const SAMPLE_RATE: u32 = 8000;
/// Samples in one 20 ms packet at 8 kHz (RFC 3551 §4.5: G.711's default packetisation).
pub const FRAME_SAMPLES: usize = 160;
/// The packet interval, 20 ms.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// Why a prompt could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The file is not a WAV file this crate can decode.
    #[error("prompt {name:?}: {source}")]
    Wav {
        name: String,
        #[source]
        source: wav::WavError,
    },
}

/// One recorded prompt, ready to send as PCMU or PCMA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    name: String,
    pcmu: Vec<[u8; FRAME_SAMPLES]>,
    pcma: Vec<[u8; FRAME_SAMPLES]>,
}

impl Prompt {
    /// Decodes a WAV file (any format `media::wav` reads) and encodes it to 20 ms frames; the
    /// last frame is padded with silence.
    pub fn from_wav(name: &str, wav_bytes: &[u8]) -> Result<Prompt, PromptError> {
        let samples = wav::decode(wav_bytes).map_err(|source| PromptError::Wav {
            name: name.to_owned(),
            source,
        })?;
        Ok(Prompt::from_samples(name, &samples))
    }

    /// A prompt from 8 kHz linear samples.
    pub fn from_samples(name: &str, samples: &[i16]) -> Prompt {
        let mut pcmu = Vec::with_capacity(samples.len().div_ceil(FRAME_SAMPLES));
        let mut pcma = Vec::with_capacity(pcmu.capacity());
        for chunk in samples.chunks(FRAME_SAMPLES) {
            let mut u = [g711::linear_to_ulaw(0); FRAME_SAMPLES];
            let mut a = [g711::linear_to_alaw(0); FRAME_SAMPLES];
            for (i, &s) in chunk.iter().enumerate() {
                u[i] = g711::linear_to_ulaw(s);
                a[i] = g711::linear_to_alaw(s);
            }
            pcmu.push(u);
            pcma.push(a);
        }
        Prompt {
            name: name.to_owned(),
            pcmu,
            pcma,
        }
    }

    /// The prompt's name (as given at load).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of 20 ms frames.
    pub fn frames(&self) -> usize {
        self.pcmu.len()
    }

    /// Playing time.
    pub fn duration(&self) -> Duration {
        FRAME_DURATION * self.frames() as u32
    }

    /// Frame `index` encoded for `codec` (None past the end, or for a codec not sent).
    pub fn frame(&self, codec: Codec, index: usize) -> Option<&[u8; FRAME_SAMPLES]> {
        match codec {
            Codec::Pcmu => self.pcmu.get(index),
            Codec::Pcma => self.pcma.get(index),
            _ => None,
        }
    }
}

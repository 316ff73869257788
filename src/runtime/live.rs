//! Prompts loaded once from `media.prompts` (`<folder>/<language>/<name>.wav`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flow::live::PromptBook;
use flow::media::PromptKind;
use media::Prompt;

/// Stand-in for a missing recording: two 300 ms beeps at 440 Hz (not a DTMF frequency, so
/// nothing can mistake it for a key), 200 ms apart, then 500 ms of silence.
const STAND_IN_BEEP_HZ: f64 = 440.0;
/// Beep level: -12 dBFS peak.
const STAND_IN_PEAK: f64 = 32767.0 * 0.25;
const SAMPLE_RATE_HZ: f64 = 8000.0;

/// A prompt file exists but cannot be used: the installation (`media.prompts`) is at fault.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read prompt {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("prompt {}: {source}", path.display())]
    Decode {
        path: PathBuf,
        source: media::PromptError,
    },
}

/// The prompt book of the runtime.
#[derive(Clone, Debug)]
pub struct Prompts {
    book: Arc<PromptBook>,
    missing: Vec<PathBuf>,
}

impl Prompts {
    /// Reads every prompt of every language. A missing file is replaced by a beep (and listed
    /// in [`Prompts::missing`]); a file that cannot be read or decoded is an error.
    pub fn load(folder: &Path, languages: &[String]) -> Result<Prompts, PromptError> {
        let default = languages.first().map(String::as_str).unwrap_or("en");
        let mut book = PromptBook::new(default);
        let mut missing = Vec::new();
        for language in languages {
            for kind in PromptKind::ALL {
                let path = folder.join(language).join(format!("{}.wav", kind.name()));
                let prompt = match std::fs::read(&path) {
                    Ok(bytes) => Prompt::from_wav(kind.name(), &bytes).map_err(|source| {
                        PromptError::Decode {
                            path: path.clone(),
                            source,
                        }
                    })?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        missing.push(path);
                        stand_in(kind)
                    }
                    Err(source) => return Err(PromptError::Read { path, source }),
                };
                book.insert(language, kind, prompt);
            }
        }
        if !missing.is_empty() {
            tracing::warn!(
                folder = %folder.display(),
                missing = missing.len(),
                first = %missing[0].display(),
                "prompt recordings missing (check media.prompts); beeps play instead"
            );
        }
        Ok(Prompts {
            book: Arc::new(book),
            missing,
        })
    }

    /// The book the media sessions play from.
    pub fn book(&self) -> Arc<PromptBook> {
        Arc::clone(&self.book)
    }

    /// Files that were not found.
    pub fn missing(&self) -> &[PathBuf] {
        &self.missing
    }
}

fn stand_in(kind: PromptKind) -> Prompt {
    let ms = |n: usize| n * SAMPLE_RATE_HZ as usize / 1000;
    let mut samples = Vec::with_capacity(ms(1300));
    for beep in 0..2 {
        for i in 0..ms(300) {
            let t = i as f64 / SAMPLE_RATE_HZ;
            let v = STAND_IN_PEAK * (2.0 * std::f64::consts::PI * STAND_IN_BEEP_HZ * t).sin();
            samples.push(v as i16);
        }
        if beep == 0 {
            samples.extend(std::iter::repeat_n(0, ms(200)));
        }
    }
    samples.extend(std::iter::repeat_n(0, ms(500)));
    Prompt::from_samples(kind.name(), &samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_prompts_become_beeps() {
        let dir = tempfile::tempdir().unwrap();
        let p = Prompts::load(dir.path(), &["en".to_string()]).unwrap();
        assert_eq!(p.missing().len(), PromptKind::ALL.len());
        let greeting = p.book().get("fr", PromptKind::Greeting).unwrap();
        assert_eq!(greeting.duration().as_millis(), 1300);
    }

    #[test]
    fn broken_prompt_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("en")).unwrap();
        std::fs::write(dir.path().join("en/greeting.wav"), b"not a wav").unwrap();
        let e = Prompts::load(dir.path(), &["en".to_string()]).unwrap_err();
        assert!(e.to_string().contains("greeting.wav"), "{e}");
    }
}

//! Prompts loaded once: the recordings built into the binary ([`crate::recordings`]), each
//! replaced by `<media.prompts>/<language>/<name>.wav` where that file exists.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flow::live::PromptBook;
use flow::media::PromptKind;
use media::Prompt;

use crate::recordings;

/// Stand-in for a recording neither configured nor built in (a language the binary has no
/// recordings for): two 300 ms beeps at 440 Hz (not a DTMF frequency, so
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
    /// A recording built into the binary does not decode: a broken build, not an operator's
    /// mistake.
    #[error("built-in prompt {language}/{name}: {source}")]
    BuiltIn {
        language: String,
        name: &'static str,
        source: media::PromptError,
    },
}

/// The prompt book of the runtime.
#[derive(Clone, Debug)]
pub struct Prompts {
    book: Arc<PromptBook>,
    missing: Vec<PathBuf>,
    overridden: Vec<PathBuf>,
}

impl Prompts {
    /// Reads every prompt of every language: `<folder>/<language>/<name>.wav` where it exists
    /// (an empty `folder` means none), else the recording built into the binary, else (a
    /// language with no built-in recordings) a beep, listed in [`Prompts::missing`]. A file
    /// that exists but cannot be read or decoded is an error.
    pub fn load(folder: &Path, languages: &[String]) -> Result<Prompts, PromptError> {
        let default = languages.first().map(String::as_str).unwrap_or("en");
        let mut book = PromptBook::new(default);
        let mut missing = Vec::new();
        let mut overridden = Vec::new();
        let configured = !folder.as_os_str().is_empty();
        if configured && !folder.is_dir() {
            tracing::warn!(
                folder = %folder.display(),
                "media.prompts is not a folder; the built-in recordings play"
            );
        }
        for language in languages {
            for kind in PromptKind::ALL {
                let path = folder.join(language).join(format!("{}.wav", kind.name()));
                let file = if configured {
                    match std::fs::read(&path) {
                        Ok(bytes) => Some(bytes),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(source) => return Err(PromptError::Read { path, source }),
                    }
                } else {
                    None
                };
                let prompt = match (file, recordings::built_in(language, kind.name())) {
                    (Some(bytes), _) => {
                        let prompt = Prompt::from_wav(kind.name(), &bytes).map_err(|source| {
                            PromptError::Decode {
                                path: path.clone(),
                                source,
                            }
                        })?;
                        overridden.push(path);
                        prompt
                    }
                    (None, Some(wav)) => Prompt::from_wav(kind.name(), wav).map_err(|source| {
                        PromptError::BuiltIn {
                            language: language.clone(),
                            name: kind.name(),
                            source,
                        }
                    })?,
                    (None, None) => {
                        missing.push(path);
                        stand_in(kind)
                    }
                };
                book.insert(language, kind, prompt);
            }
        }
        if !overridden.is_empty() {
            tracing::info!(
                folder = %folder.display(),
                files = overridden.len(),
                "prompt recordings from media.prompts replace the built-in ones"
            );
        }
        if !missing.is_empty() {
            tracing::warn!(
                folder = %folder.display(),
                missing = missing.len(),
                first = %missing[0].display(),
                "no recording for some prompts (a language without built-in recordings: put \
                 them in media.prompts); beeps play instead"
            );
        }
        Ok(Prompts {
            book: Arc::new(book),
            missing,
            overridden,
        })
    }

    /// The book the media sessions play from.
    pub fn book(&self) -> Arc<PromptBook> {
        Arc::clone(&self.book)
    }

    /// Prompts with no recording at all (beeps play): the files that would have given one.
    pub fn missing(&self) -> &[PathBuf] {
        &self.missing
    }

    /// Files of `media.prompts` that replace a built-in recording.
    pub fn overridden(&self) -> &[PathBuf] {
        &self.overridden
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

    fn greeting_frames(p: &Prompts, language: &str) -> usize {
        p.book()
            .get(language, PromptKind::Greeting)
            .unwrap()
            .frames()
    }

    #[test]
    fn without_a_folder_the_built_in_recordings_speak() {
        let languages: Vec<String> = ["en", "es", "fr", "de"].map(String::from).to_vec();
        let p = Prompts::load(Path::new(""), &languages).unwrap();
        assert!(p.missing().is_empty(), "{:?}", p.missing());
        assert!(p.overridden().is_empty());
        let built_in =
            Prompt::from_wav("greeting", recordings::built_in("fr", "greeting").unwrap()).unwrap();
        assert_eq!(greeting_frames(&p, "fr"), built_in.frames());
        // The same with a folder that does not exist (a relative path run elsewhere).
        let p = Prompts::load(Path::new("no/such/folder"), &languages).unwrap();
        assert!(p.missing().is_empty());
        assert_eq!(greeting_frames(&p, "fr"), built_in.frames());
    }

    #[test]
    fn a_file_in_the_folder_replaces_only_its_prompt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("en")).unwrap();
        let tone = media::wav::decode(recordings::built_in("de", "goodbye").unwrap()).unwrap();
        let mut wav = std::io::Cursor::new(Vec::new());
        {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: 8000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::new(&mut wav, spec).unwrap();
            tone.iter().for_each(|&s| w.write_sample(s).unwrap());
            w.finalize().unwrap();
        }
        std::fs::write(dir.path().join("en/greeting.wav"), wav.into_inner()).unwrap();
        let p = Prompts::load(dir.path(), &["en".to_string()]).unwrap();
        assert_eq!(p.overridden(), [dir.path().join("en/greeting.wav")]);
        let book = p.book();
        let replaced = book.get("en", PromptKind::Greeting).unwrap();
        assert_eq!(replaced.frames(), tone.len().div_ceil(160));
        let kept = book.get("en", PromptKind::Goodbye).unwrap();
        let built_in =
            Prompt::from_wav("goodbye", recordings::built_in("en", "goodbye").unwrap()).unwrap();
        assert_eq!(*kept, built_in);
    }

    #[test]
    fn a_language_without_recordings_beeps() {
        let dir = tempfile::tempdir().unwrap();
        let p = Prompts::load(dir.path(), &["it".to_string()]).unwrap();
        assert_eq!(p.missing().len(), PromptKind::ALL.len());
        let greeting = p.book().get("it", PromptKind::Greeting).unwrap();
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

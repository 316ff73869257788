//! The default prompt recordings (`audio/<language>/<name>.wav`), carried in the binary so that
//! `serve` and `call` speak wherever they run; `media.prompts` overrides them file by file.

/// One built-in recording: language, prompt name (`flow::media::PromptKind::name`), WAV bytes.
pub struct Recording {
    pub language: &'static str,
    pub name: &'static str,
    pub wav: &'static [u8],
}

macro_rules! recordings {
    ($($language:literal: [$($name:literal),* $(,)?]),* $(,)?) => {
        /// Every built-in recording (about 2.5 MB of 16-bit 8 kHz WAV).
        pub const ALL: &[Recording] = &[$($(Recording {
            language: $language,
            name: $name,
            wav: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"), "/audio/", $language, "/", $name, ".wav"
            )),
        },)*)*];
    };
}

recordings! {
    "en": ["greeting", "pin", "challenge", "thanks", "fraud-ack", "goodbye", "no-input", "invalid"],
    "es": ["greeting", "pin", "challenge", "thanks", "fraud-ack", "goodbye", "no-input", "invalid"],
    "fr": ["greeting", "pin", "challenge", "thanks", "fraud-ack", "goodbye", "no-input", "invalid"],
    "de": ["greeting", "pin", "challenge", "thanks", "fraud-ack", "goodbye", "no-input", "invalid"],
}

/// The built-in recording of prompt `name` in `language`, if there is one.
pub fn built_in(language: &str, name: &str) -> Option<&'static [u8]> {
    ALL.iter()
        .find(|r| r.language == language && r.name == name)
        .map(|r| r.wav)
}

#[cfg(test)]
mod tests {
    use flow::media::PromptKind;

    use super::*;

    #[test]
    fn every_prompt_of_every_language_is_built_in_and_decodes() {
        for language in ["en", "es", "fr", "de"] {
            for kind in PromptKind::ALL {
                let wav = built_in(language, kind.name())
                    .unwrap_or_else(|| panic!("{language}/{} is not built in", kind.name()));
                let prompt = media::Prompt::from_wav(kind.name(), wav).unwrap();
                assert!(
                    prompt.duration().as_millis() > 500,
                    "{language}/{}",
                    kind.name()
                );
            }
        }
        assert_eq!(ALL.len(), 4 * PromptKind::ALL.len());
        assert!(built_in("it", "greeting").is_none());
    }
}

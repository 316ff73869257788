//! Reading audio files for the CLI (WAV of any format, raw PCM) as 8 kHz mono i16.

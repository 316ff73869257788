//! The real media path behind [`Media`]: a `media::Session` plus the call's prompts.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtmf::Digit;
use media::{Prompt, Session, SessionConfig};

use crate::media::{DialMethod, KeyPress, Media, MediaEvent, MediaFactory, MediaSetup, PromptKind};

/// The prompt recordings, per language; a language without some prompt falls back to the
/// default language's.
#[derive(Clone, Debug, Default)]
pub struct PromptBook {
    default_language: String,
    prompts: BTreeMap<(String, PromptKind), Arc<Prompt>>,
}

impl PromptBook {
    /// An empty book whose fallback language is `default_language`.
    pub fn new(default_language: &str) -> Self {
        Self {
            default_language: default_language.to_string(),
            prompts: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a prompt.
    pub fn insert(&mut self, language: &str, kind: PromptKind, prompt: Prompt) {
        self.prompts
            .insert((language.to_string(), kind), Arc::new(prompt));
    }

    /// The prompt for `language`, else the default language's.
    pub fn get(&self, language: &str, kind: PromptKind) -> Option<Arc<Prompt>> {
        self.prompts
            .get(&(language.to_string(), kind))
            .or_else(|| self.prompts.get(&(self.default_language.clone(), kind)))
            .cloned()
    }
}

/// Makes a [`LiveMedia`] per answered call.
#[derive(Clone, Debug)]
pub struct LiveFactory {
    book: Arc<PromptBook>,
}

impl LiveFactory {
    /// A factory playing prompts from `book`.
    pub fn new(book: Arc<PromptBook>) -> Self {
        Self { book }
    }
}

impl MediaFactory for LiveFactory {
    type Media = LiveMedia;

    fn create(&mut self, now: Instant, setup: &MediaSetup) -> LiveMedia {
        let codec = match setup.codec {
            sip::sdp::Codec::Pcmu => media::Codec::Pcmu,
            sip::sdp::Codec::Pcma => media::Codec::Pcma,
        };
        LiveMedia {
            session: Session::new(
                now,
                SessionConfig {
                    remote: setup.remote,
                    codec,
                    audio_pt: setup.audio_pt,
                    telephone_event_pt: setup.telephone_event_pt,
                    seed: setup.seed,
                    srtp: setup.srtp.clone(),
                },
            ),
            book: Arc::clone(&self.book),
            language: setup.language.clone(),
            synthetic: VecDeque::new(),
            finish_alias: None,
        }
    }
}

/// One call's media session.
#[derive(Debug)]
pub struct LiveMedia {
    session: Session,
    book: Arc<PromptBook>,
    language: String,
    /// Events for prompts the book lacks (reported as started and finished at once, so the
    /// flow never waits on audio that does not exist).
    synthetic: VecDeque<MediaEvent>,
    /// (last prompt queued, last prompt asked for) when the latter is missing.
    finish_alias: Option<(PromptKind, PromptKind)>,
}

impl LiveMedia {
    /// Send and receive statistics.
    pub fn stats(&self) -> media::MediaStats {
        self.session.stats()
    }
}

fn kind_of(name: &str) -> Option<PromptKind> {
    PromptKind::ALL.into_iter().find(|k| k.name() == name)
}

impl Media for LiveMedia {
    fn redirect(&mut self, _now: Instant, remote: SocketAddr) {
        self.session.redirect(remote);
    }

    fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        self.session.handle_datagram(now, source, bytes);
    }

    fn handle_sip_info(&mut self, now: Instant, digit: Digit, duration: Option<Duration>) {
        self.session.handle_sip_info(now, digit, duration);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }

    fn poll_transmit(&mut self, packet: &mut Vec<u8>) -> Option<SocketAddr> {
        self.session.poll_transmit_into(packet)
    }

    fn poll_event(&mut self) -> Option<MediaEvent> {
        if let Some(e) = self.synthetic.pop_front() {
            return Some(e);
        }
        loop {
            let event = match self.session.poll_event()? {
                media::MediaEvent::Digit(d) => MediaEvent::Key(KeyPress {
                    digit: d.digit,
                    method: d.method,
                    at: d.at,
                    duration: d.duration,
                    latency: d.latency,
                }),
                media::MediaEvent::PromptStarted(name) => match kind_of(&name) {
                    Some(k) => MediaEvent::PromptStarted(k),
                    None => continue,
                },
                media::MediaEvent::PromptFinished(name)
                | media::MediaEvent::PromptStopped(name) => match kind_of(&name) {
                    Some(k) => {
                        if let Some((real, asked)) = self.finish_alias
                            && real == k
                        {
                            self.finish_alias = None;
                            self.synthetic.push_back(MediaEvent::PromptFinished(asked));
                        }
                        MediaEvent::PromptFinished(k)
                    }
                    None => continue,
                },
                media::MediaEvent::DialFinished => MediaEvent::DialFinished,
            };
            return Some(event);
        }
    }

    fn play(&mut self, now: Instant, prompts: &[PromptKind]) {
        self.finish_alias = None;
        self.session.stop_playback(now);
        let found: Vec<_> = prompts
            .iter()
            .filter_map(|k| self.book.get(&self.language, *k).map(|p| (*k, p)))
            .collect();
        let Some(&last) = prompts.last() else {
            return;
        };
        match found.last() {
            None => {
                // Nothing to play at all: say so at once, so the flow never waits on audio
                // that does not exist.
                self.synthetic.push_back(MediaEvent::PromptStarted(last));
                self.synthetic.push_back(MediaEvent::PromptFinished(last));
            }
            Some((real_last, _)) => {
                // The flow waits for the last prompt it asked for; if that one is missing,
                // the end of the last one that exists stands in for it.
                self.finish_alias = (*real_last != last).then_some((*real_last, last));
                for (_, p) in found {
                    self.session.play(now, p);
                }
            }
        }
    }

    fn stop_playback(&mut self, now: Instant) {
        self.session.stop_playback(now);
    }

    fn dial(&mut self, now: Instant, keys: &str, method: DialMethod) {
        let method = match method {
            DialMethod::Rfc4733 => media::DialMethod::Rfc4733,
            DialMethod::Inband => media::DialMethod::Inband,
        };
        self.session.dial(now, keys, method);
    }
}

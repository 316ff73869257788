//! One verification call as a state machine, one type per state (rustls style: a state holds
//! only what is valid in it; handling an input consumes it and returns the next).
//!
//! ```text
//!  Dialing ──18x──▶ Ringing ──200──▶ (extension?) Extension ──dialled──▶ Prompting ◀─┐ replay
//!     │                │      │                                             │  key    │
//!     │ 4xx-6xx, B,    │      └─200, no usable media──┐                     ▼         │
//!     │ ring timeout,  │                              │                Collecting ────┘
//!     │ cancel, expiry ▼                              │           #, timeouts │
//!     └─────────▶ HangingUp ◀── BYE ── Closing ◀──────┼───────────────────────┘
//!                     │        (thanks/goodbye)       │
//!                     ▼                               │
//!                  Outcome ◀──────────────────────────┘ (far-end BYE: hung_up)
//! ```
//! Early media is never listened to: the media session only exists once the call is
//! answered. Keys count only after the prompt has started and [`Rules::answer_guard`] has
//! passed since the answer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sip::sdp::{Codec, Negotiated, SdpError};
use sip::{AuthFailure, CallHandle, EndReason, Failure, UserAgent};

use crate::keys::{Entry, Expect};
use crate::media::{
    DialMethod, DtmfMethod, KeyPress, Media, MediaEvent, MediaFactory, MediaSetup, PromptKind,
};
use crate::spec::{CLOSING_PROMPT_LIMIT, HANGUP_WAIT, Rules};
use crate::srtp::Offered;
use crate::{CallResult, Mode, TimelineEntry, TimelineEvent};

/// On a far-end BYE, how far the media path is run ahead to release what it still holds
/// (the reorder window is 60 ms in `media::Session`; a detector needs a few more blocks).
const HANGUP_FLUSH: Duration = Duration::from_millis(200);

/// What a call reports to the runtime, in order; [`Event::Decided`] comes exactly once, before
/// [`Event::Finished`], which is always last.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The far end is ringing (first 18x).
    Ringing,
    /// The call was answered.
    Answered,
    /// One audit timeline entry, as it happens (the report carries them all again).
    Timeline(TimelineEntry),
    /// A key counted this long after it was released (detector latency, for metrics).
    DetectorLatency(Duration),
    /// The result is settled (the key, the fraud code, a timeout, a hang-up, a refusal): the
    /// closing prompts and the BYE that follow never change it. The report's timeline is the
    /// timeline so far and an outcome entry at the decision ([`Event::Finished`]'s timeline
    /// has the same prefix, then the closing entries and its outcome entry at the end).
    Decided(Report),
    /// The call is over.
    Finished(Report),
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// What happened.
    pub result: CallResult,
    /// The method of the first key that counted.
    pub dtmf_method: Option<DtmfMethod>,
    /// Every event of the call, times from the INVITE.
    pub timeline: Vec<TimelineEntry>,
}

/// The SIP final status → result table (DESIGN.md "Outcome vocabulary").
///
/// | status | result |
/// |---|---|
/// | 486 Busy Here, 600 Busy Everywhere | `busy` |
/// | 408 Request Timeout, 480 Temporarily Unavailable, 487 (terminated by the far side) | `no_answer` |
/// | 404 Not Found, 410 Gone, 482 Loop Detected, 483 Too Many Hops, 484 Address Incomplete, 485 Ambiguous, 604 Does Not Exist Anywhere, any 5xx | `unreachable` |
/// | 603 Decline and any other final refusal (3xx: redirects are not followed, 4xx, 6xx) | `rejected` |
///
/// A digest challenge we cannot satisfy (no or wrong credentials) is a refusal too:
/// `rejected`, with an `auth_failed` timeline entry saying that our configuration is at fault.
pub fn result_for_status(status: u16) -> CallResult {
    match status {
        486 | 600 => CallResult::Busy,
        408 | 480 | 487 => CallResult::NoAnswer,
        404 | 410 | 482..=485 | 604 | 500..=599 => CallResult::Unreachable,
        _ => CallResult::Rejected,
    }
}

/// What every state shares: the call's identity, rules and audit trail.
pub(crate) struct Core {
    pub(crate) sip: CallHandle,
    started: Instant,
    expires: Instant,
    mode: Mode,
    expect: Expect,
    rules: Rules,
    extension: Option<String>,
    language: String,
    seed: [u8; 32],
    /// Our SDES offer, when the INVITE carried keys.
    srtp: Option<Offered>,
    timeline: Vec<TimelineEntry>,
    method: Option<DtmfMethod>,
    /// Anything at all came back to the INVITE (even 100 Trying).
    heard_back: bool,
    rang: bool,
    /// [`Event::Decided`] was reported.
    decided: bool,
    pub(crate) events: VecDeque<Event>,
}

/// Everything a state needs besides itself.
pub(crate) struct Cx<'a, F> {
    pub(crate) ua: &'a mut UserAgent,
    pub(crate) factory: &'a mut F,
}

pub(crate) struct CoreInit {
    pub(crate) sip: CallHandle,
    pub(crate) started: Instant,
    pub(crate) mode: Mode,
    pub(crate) expect: Expect,
    pub(crate) rules: Rules,
    pub(crate) extension: Option<String>,
    pub(crate) language: String,
    pub(crate) seed: [u8; 32],
    pub(crate) srtp: Option<Offered>,
}

impl Core {
    pub(crate) fn new(init: CoreInit) -> Self {
        let mut core = Self {
            sip: init.sip,
            started: init.started,
            expires: init.started + init.rules.challenge_timeout,
            mode: init.mode,
            expect: init.expect,
            rules: init.rules,
            extension: init.extension.filter(|e| !e.is_empty()),
            language: init.language,
            seed: init.seed,
            srtp: init.srtp,
            timeline: Vec::new(),
            method: None,
            heard_back: false,
            rang: false,
            decided: false,
            events: VecDeque::new(),
        };
        core.log(init.started, TimelineEvent::InviteSent);
        core
    }

    fn log(&mut self, now: Instant, event: TimelineEvent) {
        let at_ms = u64::try_from(now.saturating_duration_since(self.started).as_millis())
            .unwrap_or(u64::MAX);
        let entry = TimelineEntry { at_ms, event };
        self.timeline.push(entry.clone());
        self.events.push_back(Event::Timeline(entry));
    }

    /// The key as the audit log shows it: PIN and challenge digits are masked.
    fn shown(&self, digit: char) -> String {
        match self.mode {
            Mode::Pin | Mode::Challenge if digit != '#' => "*".to_string(),
            _ => digit.to_string(),
        }
    }

    /// Reports the decision, once: the first result settled is the one the call keeps.
    fn settle(&mut self, now: Instant, result: CallResult) {
        if !std::mem::replace(&mut self.decided, true) {
            let mut timeline = Vec::with_capacity(self.timeline.len() + 1);
            timeline.extend_from_slice(&self.timeline);
            timeline.push(TimelineEntry {
                at_ms: u64::try_from(now.saturating_duration_since(self.started).as_millis())
                    .unwrap_or(u64::MAX),
                event: TimelineEvent::Outcome { result },
            });
            self.events.push_back(Event::Decided(Report {
                result,
                dtmf_method: self.method,
                timeline,
            }));
        }
    }

    fn finish(&mut self, now: Instant, result: CallResult) {
        self.settle(now, result);
        self.log(now, TimelineEvent::Outcome { result });
        self.events.push_back(Event::Finished(Report {
            result,
            dtmf_method: self.method,
            timeline: self.timeline.clone(),
        }));
    }

    fn opening_prompt(&self) -> PromptKind {
        match self.mode {
            Mode::Standard => PromptKind::Greeting,
            Mode::Pin => PromptKind::Pin,
            Mode::Challenge => PromptKind::Challenge,
        }
    }
}

/// The state of a call.
pub(crate) enum Stage<M> {
    /// INVITE sent, no provisional response beyond 100 yet.
    Dialing(Dialing),
    /// 18x received: the phone rings.
    Ringing(Ringing),
    /// Answered; extension digits going out.
    Extension(Extension<M>),
    /// The prompt plays; keys are listened to (after the guard).
    Prompting(Prompting<M>),
    /// Waiting for (more) keys.
    Collecting(Collecting<M>),
    /// Decided while the callee is on the line: the closing prompt plays, then BYE.
    Closing(Closing<M>),
    /// Decided; BYE or CANCEL sent (or the call failed): waiting for SIP to finish.
    HangingUp(HangingUp),
    /// The outcome was reported.
    Finished,
}

/// INVITE sent.
pub(crate) struct Dialing {
    ring_deadline: Instant,
}

/// The phone rings.
pub(crate) struct Ringing {
    ring_deadline: Instant,
}

/// The media of an answered call and when keys start to count.
pub(crate) struct Live<M> {
    /// Boxed: a stage moves by value at every input, and the media (a session with its
    /// receiver's windows and jitter buffer) is kilobytes; a pointer moves in its place.
    media: Box<M>,
    answered_at: Instant,
    /// Set when the first prompt starts: keys pressed earlier do not count.
    listen_from: Option<Instant>,
}

/// Extension digits going out.
pub(crate) struct Extension<M> {
    live: Live<M>,
}

/// A prompt plays.
pub(crate) struct Prompting<M> {
    live: Live<M>,
    prompt: PromptKind,
    replays_left: u32,
}

/// Keys are being collected.
pub(crate) struct Collecting<M> {
    live: Live<M>,
    entry: Entry,
    /// Response timeout (empty entry) or inter-digit timeout.
    deadline: Instant,
    replays_left: u32,
}

/// The closing prompts play.
pub(crate) struct Closing<M> {
    live: Live<M>,
    result: CallResult,
    /// The last closing prompt: BYE when it ends.
    prompt: PromptKind,
    until: Instant,
}

/// Waiting for SIP to finish after the decision.
pub(crate) struct HangingUp {
    result: CallResult,
    until: Instant,
}

/// Inputs a call reacts to.
pub(crate) enum Input<'a> {
    Sip(Box<sip::Event>),
    Datagram(std::net::SocketAddr, &'a [u8]),
    Timeout,
    Cancel,
}

impl<M: Media> Stage<M> {
    /// The first state: the INVITE has just been sent.
    pub(crate) fn dialing(core: &Core) -> Self {
        Stage::Dialing(Dialing {
            ring_deadline: core.started + core.rules.ring_timeout,
        })
    }

    /// The media session, when the call has one.
    pub(crate) fn media_mut(&mut self) -> Option<&mut M> {
        match self {
            Stage::Extension(s) => Some(&mut s.live.media),
            Stage::Prompting(s) => Some(&mut s.live.media),
            Stage::Collecting(s) => Some(&mut s.live.media),
            Stage::Closing(s) => Some(&mut s.live.media),
            _ => None,
        }
    }

    /// When this call must be woken next (the media's own deadline included).
    pub(crate) fn poll_timeout(&self, core: &Core) -> Option<Instant> {
        let (own, media) = match self {
            Stage::Dialing(s) => (Some(s.ring_deadline.min(core.expires)), None),
            Stage::Ringing(s) => (Some(s.ring_deadline.min(core.expires)), None),
            Stage::Extension(s) => (Some(core.expires), s.live.media.poll_timeout()),
            Stage::Prompting(s) => (Some(core.expires), s.live.media.poll_timeout()),
            Stage::Collecting(s) => (
                Some(s.deadline.min(core.expires)),
                s.live.media.poll_timeout(),
            ),
            Stage::Closing(s) => (Some(s.until), s.live.media.poll_timeout()),
            Stage::HangingUp(s) => (Some(s.until), None),
            Stage::Finished => (None, None),
        };
        [own, media].into_iter().flatten().min()
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self, Stage::Finished)
    }

    /// Handles one input.
    pub(crate) fn handle<F: MediaFactory<Media = M>>(
        self,
        core: &mut Core,
        cx: &mut Cx<'_, F>,
        now: Instant,
        input: Input<'_>,
    ) -> Self {
        match input {
            Input::Sip(event) => self.on_sip(core, cx, now, *event),
            Input::Datagram(source, bytes) => match self {
                mut s @ (Stage::Extension(_)
                | Stage::Prompting(_)
                | Stage::Collecting(_)
                | Stage::Closing(_)) => {
                    if let Some(m) = s.media_mut() {
                        m.handle_datagram(now, source, bytes);
                    }
                    s
                }
                // Early media and stragglers after the decision: never listened to.
                other => other,
            },
            Input::Timeout => self.on_timeout(core, cx, now),
            Input::Cancel => self.on_cancel(core, cx, now),
        }
    }

    /// Drains the media's events (call after feeding the media anything).
    pub(crate) fn pump_media(
        mut self,
        core: &mut Core,
        cx: &mut Cx<'_, impl MediaFactory<Media = M>>,
        now: Instant,
    ) -> Self {
        loop {
            let Some(event) = self.media_mut().and_then(|m| m.poll_event()) else {
                return self;
            };
            self = self.on_media(core, cx, now, event);
        }
    }

    fn on_sip<F: MediaFactory<Media = M>>(
        self,
        core: &mut Core,
        cx: &mut Cx<'_, F>,
        now: Instant,
        event: sip::Event,
    ) -> Self {
        use sip::Event as E;
        match event {
            E::Progress { status, .. } => {
                core.heard_back = true;
                if status == 100 {
                    return self;
                }
                core.log(now, TimelineEvent::Provisional { code: status });
                match self {
                    Stage::Dialing(d) => {
                        if !core.rang {
                            core.rang = true;
                            core.events.push_back(Event::Ringing);
                        }
                        Stage::Ringing(Ringing {
                            ring_deadline: d.ring_deadline,
                        })
                    }
                    other => other,
                }
            }
            E::Authenticating {
                status, algorithm, ..
            } => {
                core.heard_back = true;
                core.log(now, TimelineEvent::AuthChallenge { code: status });
                core.log(
                    now,
                    TimelineEvent::Authenticating {
                        code: status,
                        algorithm: algorithm.as_str().to_string(),
                    },
                );
                self
            }
            E::Answered { media, .. } => match self {
                Stage::Dialing(_) | Stage::Ringing(_) => answered(core, cx, now, media),
                // Answered after we decided (ring timeout raced the 200): the user agent
                // hangs such calls up itself.
                other => other,
            },
            E::Failed { failure, .. } => {
                core.heard_back = true;
                let result = failed(core, now, &failure);
                match self {
                    Stage::Dialing(_) | Stage::Ringing(_) => hanging_up(core, now, result),
                    other => other,
                }
            }
            E::Dtmf { info, .. } => {
                let digit = dtmf::Digit::from_char(info.key);
                let mut s = self;
                match (s.media_mut(), digit) {
                    (Some(media), Some(d)) if core.rules.sip_info_dtmf => {
                        media.handle_sip_info(now, d, info.duration);
                        s.pump_media(core, cx, now)
                    }
                    _ => {
                        let reason = if s.media_mut().is_none() {
                            "not answered or already decided"
                        } else if digit.is_none() {
                            "not a DTMF key"
                        } else {
                            "SIP INFO DTMF is off (sip.sip_info_dtmf)"
                        };
                        core.log(
                            now,
                            TimelineEvent::DigitIgnored {
                                digit: core.shown(info.key),
                                method: DtmfMethod::SipInfo.as_str().to_string(),
                                reason: reason.to_string(),
                            },
                        );
                        s
                    }
                }
            }
            E::MediaChanged { media, .. } => {
                core.log(
                    now,
                    TimelineEvent::MediaChanged {
                        on_hold: media.on_hold(),
                    },
                );
                let mut s = self;
                // On hold (0.0.0.0) there is nowhere new to send: keep the old address.
                if let (Some(remote), Some(m)) = (media.remote, s.media_mut()) {
                    m.redirect(now, remote);
                }
                s
            }
            E::RemoteHangup { .. } => {
                // A key pressed just before hanging up may still sit in the reorder buffer:
                // let the media path release what it holds before judging.
                let mut s = self;
                if matches!(s, Stage::Prompting(_) | Stage::Collecting(_))
                    && let Some(media) = s.media_mut()
                {
                    media.handle_timeout(now + HANGUP_FLUSH);
                    s = s.pump_media(core, cx, now);
                }
                core.log(now, TimelineEvent::ByeReceived);
                match s {
                    Stage::Extension(_) | Stage::Prompting(_) | Stage::Collecting(_) => {
                        hanging_up(core, now, CallResult::HungUp)
                    }
                    Stage::Closing(c) => hanging_up(core, now, c.result),
                    other => other,
                }
            }
            E::Terminated { reason, .. } => {
                let result = match self {
                    Stage::HangingUp(h) => h.result,
                    Stage::Closing(c) => c.result,
                    Stage::Finished => return Stage::Finished,
                    Stage::Extension(_) | Stage::Prompting(_) | Stage::Collecting(_) => {
                        match reason {
                            EndReason::RemoteHangup => CallResult::HungUp,
                            EndReason::Failed(Failure::Transport) => {
                                core.log(
                                    now,
                                    TimelineEvent::NoResponse {
                                        reason: "the transport to the trunk failed".into(),
                                    },
                                );
                                CallResult::Unreachable
                            }
                            _ => CallResult::Failed,
                        }
                    }
                    Stage::Dialing(_) | Stage::Ringing(_) => CallResult::Failed,
                };
                core.finish(now, result);
                Stage::Finished
            }
            E::Rerouted {
                from, to, failure, ..
            } => {
                let reason = match failure {
                    Failure::Timeout => "no response".to_string(),
                    Failure::Transport => "transport error".to_string(),
                    Failure::Rejected { status } => format!("status {status}"),
                    Failure::Auth { status, .. } => format!("authentication ({status})"),
                };
                core.log(
                    now,
                    TimelineEvent::Rerouted {
                        from: from.to_string(),
                        to: to.to_string(),
                        reason,
                    },
                );
                self
            }
            E::Info { .. } | E::InfoResponse { .. } | E::Incoming { .. } | E::Confirmed { .. } => {
                self
            }
        }
    }

    fn on_media<F: MediaFactory<Media = M>>(
        self,
        core: &mut Core,
        cx: &mut Cx<'_, F>,
        now: Instant,
        event: MediaEvent,
    ) -> Self {
        match (self, event) {
            (Stage::Extension(mut e), MediaEvent::DialFinished) => {
                core.log(now, TimelineEvent::ExtensionSent);
                let prompt = core.opening_prompt();
                e.live.media.play(now, &[prompt]);
                Stage::Prompting(Prompting {
                    live: e.live,
                    prompt,
                    replays_left: core.rules.prompt_replays,
                })
            }
            (mut s, MediaEvent::PromptStarted(kind)) => {
                core.log(
                    now,
                    TimelineEvent::PromptStarted {
                        prompt: kind.name().to_string(),
                    },
                );
                if let Stage::Prompting(p) = &mut s
                    && p.live.listen_from.is_none()
                {
                    p.live.listen_from =
                        Some(now.max(p.live.answered_at + core.rules.answer_guard));
                }
                s
            }
            (s, MediaEvent::PromptFinished(kind)) => {
                core.log(
                    now,
                    TimelineEvent::PromptFinished {
                        prompt: kind.name().to_string(),
                    },
                );
                match s {
                    Stage::Prompting(p) if p.prompt == kind => Stage::Collecting(Collecting {
                        live: p.live,
                        entry: Entry::default(),
                        deadline: now + core.rules.response_timeout,
                        replays_left: p.replays_left,
                    }),
                    Stage::Closing(c) if c.prompt == kind => hang_up(core, cx, now, c.result),
                    other => other,
                }
            }
            (s, MediaEvent::Key(key)) => s.on_key(core, now, key),
            (s, MediaEvent::DialFinished) => s,
        }
    }

    fn on_key(self, core: &mut Core, now: Instant, key: KeyPress) -> Self {
        let c = key.digit.as_char();
        let ignore = |core: &mut Core, reason: &str| {
            core.log(
                now,
                TimelineEvent::DigitIgnored {
                    digit: core.shown(c),
                    method: key.method.as_str().to_string(),
                    reason: reason.to_string(),
                },
            );
        };
        let listen_from = match &self {
            Stage::Prompting(p) => p.live.listen_from,
            Stage::Collecting(c) => c.live.listen_from,
            Stage::Extension(_) => {
                ignore(core, "during extension dialling");
                return self;
            }
            _ => {
                ignore(core, "after the decision");
                return self;
            }
        };
        match listen_from {
            None => {
                ignore(core, "before the prompt");
                return self;
            }
            Some(from) if key.at < from => {
                ignore(core, "within the guard time after answer");
                return self;
            }
            Some(_) => {}
        }
        core.log(
            now,
            TimelineEvent::Digit {
                digit: core.shown(c),
                method: key.method.as_str().to_string(),
            },
        );
        core.method.get_or_insert(key.method);
        if let Some(latency) = key.latency {
            core.events.push_back(Event::DetectorLatency(latency));
        }
        let (live, mut entry, replays_left) = match self {
            Stage::Prompting(mut p) => {
                // Barge-in: the first key stops the prompt.
                p.live.media.stop_playback(now);
                (p.live, Entry::default(), p.replays_left)
            }
            Stage::Collecting(c) => (c.live, c.entry, c.replays_left),
            _ => unreachable!("only Prompting and Collecting reach here (matched above)"),
        };
        match entry.push(c, &core.expect) {
            Some(result) => decide(core, now, live, result),
            None => Stage::Collecting(Collecting {
                live,
                entry,
                deadline: now + core.rules.inter_digit_timeout,
                replays_left,
            }),
        }
    }

    fn on_timeout<F: MediaFactory<Media = M>>(
        mut self,
        core: &mut Core,
        cx: &mut Cx<'_, F>,
        now: Instant,
    ) -> Self {
        if let Some(m) = self.media_mut() {
            m.handle_timeout(now);
        }
        self = self.pump_media(core, cx, now);
        let expired = now >= core.expires;
        match self {
            Stage::Dialing(Dialing { ring_deadline })
            | Stage::Ringing(Ringing { ring_deadline })
                if expired || now >= ring_deadline =>
            {
                let result = if expired {
                    core.log(now, timeout("challenge"));
                    CallResult::Expired
                } else {
                    core.log(now, timeout("ring"));
                    // Not even a 100 Trying in the whole ring time: the trunk is not there.
                    if core.heard_back {
                        CallResult::NoAnswer
                    } else {
                        CallResult::Unreachable
                    }
                };
                cancel(core, cx, now, result)
            }
            Stage::Extension(e) if expired => {
                core.log(now, timeout("challenge"));
                decide(core, now, e.live, CallResult::Expired)
            }
            Stage::Prompting(p) if expired => {
                core.log(now, timeout("challenge"));
                decide(core, now, p.live, CallResult::Expired)
            }
            Stage::Collecting(c) if expired => {
                core.log(now, timeout("challenge"));
                decide(core, now, c.live, CallResult::Expired)
            }
            Stage::Collecting(mut c) if now >= c.deadline => {
                if c.entry.is_empty() && c.replays_left > 0 {
                    core.log(now, timeout("response"));
                    // "Sorry, we did not receive your answer", then the prompt again.
                    let prompt = core.opening_prompt();
                    c.live.media.play(now, &[PromptKind::NoInput, prompt]);
                    Stage::Prompting(Prompting {
                        live: c.live,
                        prompt,
                        replays_left: c.replays_left - 1,
                    })
                } else {
                    let timer = if c.entry.is_empty() {
                        "response"
                    } else {
                        "inter_digit"
                    };
                    core.log(now, timeout(timer));
                    let result = c.entry.abandoned();
                    decide(core, now, c.live, result)
                }
            }
            Stage::Closing(c) if now >= c.until => hang_up(core, cx, now, c.result),
            Stage::HangingUp(h) if now >= h.until => {
                core.finish(now, h.result);
                Stage::Finished
            }
            other => other,
        }
    }

    fn on_cancel<F: MediaFactory<Media = M>>(
        self,
        core: &mut Core,
        cx: &mut Cx<'_, F>,
        now: Instant,
    ) -> Self {
        match self {
            Stage::Dialing(_) | Stage::Ringing(_) => cancel(core, cx, now, CallResult::Cancelled),
            Stage::Extension(_) | Stage::Prompting(_) | Stage::Collecting(_) => {
                hang_up(core, cx, now, CallResult::Cancelled)
            }
            // Already decided: keep the decision, skip the rest of the closing prompt.
            Stage::Closing(c) => hang_up(core, cx, now, c.result),
            other => other,
        }
    }
}

fn timeout(timer: &str) -> TimelineEvent {
    TimelineEvent::Timeout {
        timer: timer.to_string(),
    }
}

fn hanging_up<M>(core: &mut Core, now: Instant, result: CallResult) -> Stage<M> {
    core.settle(now, result);
    Stage::HangingUp(HangingUp {
        result,
        until: now + HANGUP_WAIT,
    })
}

/// Before answer: CANCEL (the user agent holds it until a provisional arrives).
fn cancel<M, F>(core: &mut Core, cx: &mut Cx<'_, F>, now: Instant, result: CallResult) -> Stage<M> {
    // The handle is ours and the call is not over: hangup cannot fail here; if it did, the
    // call is already gone on the SIP side and the wait below simply runs out.
    core.settle(now, result);
    let _ = cx.ua.hangup(now, core.sip);
    core.log(now, TimelineEvent::CancelSent);
    hanging_up(core, now, result)
}

/// After answer: BYE now, no closing prompt.
fn hang_up<M, F>(
    core: &mut Core,
    cx: &mut Cx<'_, F>,
    now: Instant,
    result: CallResult,
) -> Stage<M> {
    core.settle(now, result);
    let _ = cx.ua.hangup(now, core.sip);
    core.log(now, TimelineEvent::ByeSent);
    hanging_up(core, now, result)
}

/// The closing prompts of a decision taken while the callee is on the line.
fn closing_prompts(result: CallResult) -> &'static [PromptKind] {
    use PromptKind as P;
    match result {
        CallResult::Confirmed => &[P::Thanks, P::Goodbye],
        CallResult::FraudReported => &[P::FraudAck, P::Goodbye],
        CallResult::WrongDigits => &[P::Invalid, P::Goodbye],
        CallResult::NoInput | CallResult::IncompleteInput => &[P::NoInput, P::Goodbye],
        _ => &[P::Goodbye],
    }
}

/// Decided while the callee is on the line: play the closing prompts, then BYE.
fn decide<M: Media>(
    core: &mut Core,
    now: Instant,
    mut live: Live<M>,
    result: CallResult,
) -> Stage<M> {
    core.settle(now, result);
    let prompts = closing_prompts(result);
    live.media.play(now, prompts);
    let prompt = prompts[prompts.len() - 1];
    Stage::Closing(Closing {
        live,
        result,
        prompt,
        until: now + CLOSING_PROMPT_LIMIT,
    })
}

/// Maps a failure before answer to its result and logs who is at fault.
fn failed(core: &mut Core, now: Instant, failure: &Failure) -> CallResult {
    match failure {
        Failure::Rejected { status } => {
            core.log(now, TimelineEvent::Rejected { code: *status });
            result_for_status(*status)
        }
        Failure::Auth { status, error } => {
            let reason = match error {
                AuthFailure::CredentialsRejected => {
                    "the trunk rejected our credentials (check sip.username / sip.password)"
                        .to_string()
                }
                AuthFailure::TooManyRounds => "the trunk kept challenging".to_string(),
                AuthFailure::Unanswerable(e) => format!("cannot answer the challenge: {e}"),
            };
            core.log(
                now,
                TimelineEvent::AuthFailed {
                    code: *status,
                    reason,
                },
            );
            // A final refusal (DESIGN.md: "603 or other final refusal"); the timeline entry
            // above tells the operator that our credentials are at fault.
            CallResult::Rejected
        }
        Failure::Timeout => {
            core.log(
                now,
                TimelineEvent::NoResponse {
                    reason: "no response to the INVITE (RFC 3261 Timer B)".into(),
                },
            );
            CallResult::Unreachable
        }
        Failure::Transport => {
            core.log(
                now,
                TimelineEvent::NoResponse {
                    reason: "the transport to the trunk failed".into(),
                },
            );
            CallResult::Unreachable
        }
    }
}

/// The 200 arrived: set up media (or give up on an unusable answer).
fn answered<M: Media, F: MediaFactory<Media = M>>(
    core: &mut Core,
    cx: &mut Cx<'_, F>,
    now: Instant,
    media: Result<Negotiated, SdpError>,
) -> Stage<M> {
    core.log(now, TimelineEvent::Answered);
    core.events.push_back(Event::Answered);
    let negotiated = match media {
        Ok(n) => n,
        Err(e) => return unusable(core, cx, now, e.to_string()),
    };
    let Some(remote) = negotiated.remote else {
        return unusable(
            core,
            cx,
            now,
            "the answer has no media address (0.0.0.0)".into(),
        );
    };
    let srtp = match crate::srtp::resolve(core.srtp.as_ref(), &negotiated) {
        Ok(srtp) => srtp,
        Err(refusal) => return unusable(core, cx, now, refusal.to_string()),
    };
    core.log(
        now,
        TimelineEvent::MediaNegotiated {
            codec: match negotiated.codec {
                Codec::Pcmu => "PCMU".into(),
                Codec::Pcma => "PCMA".into(),
            },
            telephone_event: negotiated.telephone_event_pt,
            srtp: srtp.as_ref().map(|s| s.suite.name().to_string()),
        },
    );
    let setup = MediaSetup {
        remote,
        codec: negotiated.codec,
        audio_pt: negotiated.codec_pt,
        telephone_event_pt: negotiated.telephone_event_pt,
        language: core.language.clone(),
        seed: core.seed,
        srtp,
    };
    let mut media = cx.factory.create(now, &setup);
    let live = |media| Live {
        media: Box::new(media),
        answered_at: now,
        listen_from: None,
    };
    match core.extension.clone() {
        Some(ext) => {
            let method = if negotiated.telephone_event_pt.is_some() {
                DialMethod::Rfc4733
            } else {
                DialMethod::Inband
            };
            media.dial(now, &ext, method);
            Stage::Extension(Extension { live: live(media) })
        }
        None => {
            let prompt = core.opening_prompt();
            media.play(now, &[prompt]);
            Stage::Prompting(Prompting {
                live: live(media),
                prompt,
                replays_left: core.rules.prompt_replays,
            })
        }
    }
}

/// Answered without usable media: the far end broke offer/answer. We hang up at once and
/// report `unreachable` (the callee could not be reached with audio); the timeline says why.
fn unusable<M, F>(core: &mut Core, cx: &mut Cx<'_, F>, now: Instant, reason: String) -> Stage<M> {
    core.log(now, TimelineEvent::MediaUnusable { reason });
    hang_up(core, cx, now, CallResult::Unreachable)
}

//! Replaying a captured stream through the live call's receive path
//! ([`media::ReceivePath`]): the same latch, reorder buffer, decoder, Goertzel receiver,
//! RFC 4733 and SIP INFO merging a live call uses, on a simulated clock.
//!
//! The clock is `base + capture time of the packet`; between packets the path's timers run at
//! exactly the deadlines it asks for (`poll_timeout`), as the runtime does for a live call.
//!
//! This is the second pass over the file ([`Replay`]), after [`crate::Scanner`] has found the
//! streams: every stream's packets are fed as the file is read, in capture order, SIP INFO key
//! presses at the frame that carried them. A stream's receive path lives from its first packet
//! to its last (the first pass counted them), so memory follows the calls in progress, not
//! the length of the capture.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media::{Codec, DigitReport, DtmfMethod, ReceiveConfig, ReceivePath, ReceiveStats};

use crate::payload::{Encoding, PayloadType, RtpHeader};
use crate::sipscan::looks_like_sip;
use crate::streams::Stream;
use crate::{Capture, Datagram, Frames, Transport};

/// How long the reorder buffer waits for a missing packet, as a live call does (ms).
pub const REORDER_WINDOW: Duration = Duration::from_millis(60);
/// Most timer expiries handled between two packets (a safeguard against a timer that does not
/// advance; real paths need a handful).
const MAX_TIMEOUTS_PER_STEP: usize = 10_000;
/// Key presses listed, over all streams; beyond this (a hostile capture can hold millions)
/// they are counted in [`StreamReplay::unlisted`].
pub const MAX_DIGITS: usize = 100_000;

/// One key press found in a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digit {
    /// The key.
    pub digit: dtmf::Digit,
    /// How it was carried (the first method that reported it).
    pub method: DtmfMethod,
    /// The SSRC that carried it (None for SIP INFO).
    pub ssrc: Option<u32>,
    /// When the receive path reported it, ns since the first frame of the capture.
    pub at_ns: u64,
    /// Duration known at report time (SIP INFO only).
    pub duration: Option<Duration>,
}

/// The result of replaying one stream.
#[derive(Clone, Debug)]
pub struct StreamReplay {
    /// Key presses, in order of report.
    pub digits: Vec<Digit>,
    /// Key presses found but not listed (beyond [`MAX_DIGITS`]).
    pub unlisted: u64,
    /// The receive path's statistics at the end.
    pub stats: ReceiveStats,
    /// The configuration the path ran with.
    pub config: ReceiveConfig,
}

/// The codec the receive path is told for a payload type (`None` for telephone-event).
pub fn codec_of(pt: &PayloadType) -> Option<Codec> {
    Some(match &pt.encoding {
        Encoding::TelephoneEvent => return None,
        Encoding::Pcmu => Codec::Pcmu,
        Encoding::Pcma => Codec::Pcma,
        Encoding::G729 => Codec::G729,
        Encoding::Opus => Codec::Opus,
        _ => Codec::Other {
            clock_rate: pt.clock_rate,
        },
    })
}

/// The receive configuration a live call would have had for this stream: its payload types,
/// latched to its source.
pub fn receive_config(stream: &Stream) -> ReceiveConfig {
    ReceiveConfig {
        audio: stream
            .payload_types
            .iter()
            .filter_map(|pt| codec_of(pt).map(|c| (pt.pt, c)))
            .collect(),
        telephone_event: stream.telephone_event(),
        source: Some(stream.src),
        reorder_window: REORDER_WINDOW,
    }
}

/// The second pass over a capture file: its bytes again, in pieces of any size
/// ([`Replay::push`]), every stream's packets through its own receive path.
pub struct Replay<'c> {
    capture: &'c Capture,
    base: Instant,
    frames: Frames,
    /// The stream of each RTP flow replayed.
    by_flow: HashMap<(SocketAddr, SocketAddr), usize>,
    states: Vec<Option<State>>,
    /// SIP INFO key presses to feed: (frame, info index, stream index), in frame order.
    infos: Vec<(u64, usize, usize)>,
    next_info: usize,
    /// Digits listed so far, all streams.
    listed: usize,
}

/// One stream being replayed.
struct State {
    config: ReceiveConfig,
    /// The receive path, from the stream's first input to its last.
    path: Option<ReceivePath>,
    now: Instant,
    /// Inputs still to come (RTP packets and INFO key presses).
    left: u64,
    digits: Vec<Digit>,
    unlisted: u64,
    stats: ReceiveStats,
}

impl<'c> Replay<'c> {
    /// Replays every stream of `capture`, the clock starting at `base` (the instant of the
    /// capture's first frame).
    pub fn new(capture: &'c Capture, base: Instant) -> Replay<'c> {
        Replay::of(capture, base, |_| true)
    }

    /// Replays stream `index` of `capture` only.
    pub fn only(capture: &'c Capture, base: Instant, index: usize) -> Replay<'c> {
        Replay::of(capture, base, |i| i == index)
    }

    fn of(capture: &'c Capture, base: Instant, chosen: impl Fn(usize) -> bool) -> Replay<'c> {
        let mut by_flow = HashMap::new();
        let mut infos = Vec::new();
        let states = capture
            .streams
            .iter()
            .enumerate()
            .map(|(i, stream)| {
                if !chosen(i) {
                    return None;
                }
                if stream.packets > 0 {
                    by_flow.insert((stream.src, stream.dst), i);
                }
                for &k in &stream.info {
                    if let Some(info) = capture.sip.info_digits.get(k) {
                        infos.push((info.frame, k, i));
                    }
                }
                Some(State {
                    config: receive_config(stream),
                    path: None,
                    now: base,
                    left: stream.packets + stream.info.len() as u64,
                    digits: Vec::new(),
                    unlisted: 0,
                    stats: ReceiveStats::default(),
                })
            })
            .collect();
        infos.sort_by_key(|&(frame, k, _)| (frame, k));
        Replay {
            capture,
            base,
            frames: Frames::new(),
            by_flow,
            states,
            infos,
            next_info: 0,
            listed: 0,
        }
    }

    /// Reads the next `bytes` of the file.
    pub fn push(&mut self, bytes: &[u8]) {
        self.push_observed(bytes, |_, _, _| {});
    }

    /// As [`Replay::push`], also showing `on_rtp` every RTP packet fed to a stream (its index,
    /// the datagram, its header), for plots.
    pub fn push_observed(
        &mut self,
        bytes: &[u8],
        mut on_rtp: impl FnMut(usize, &Datagram, &RtpHeader),
    ) {
        let mut frames = std::mem::replace(&mut self.frames, Frames::new());
        frames.push(bytes, |d| {
            self.infos_before(d.frame);
            if d.transport != Transport::Udp || looks_like_sip(&d.payload) {
                return;
            }
            let Some(&i) = self.by_flow.get(&(d.src, d.dst)) else {
                return;
            };
            let Some(h) = RtpHeader::parse(&d.payload) else {
                return;
            };
            on_rtp(i, d, &h);
            self.input(i, d.at_ns, |path, now| {
                path.handle_rtp(now, d.src, &d.payload)
            });
        });
        self.frames = frames;
    }

    /// End of the file: every stream's result, in stream order (only the chosen one for
    /// [`Replay::only`]).
    pub fn finish(mut self) -> Vec<StreamReplay> {
        self.infos_before(u64::MAX);
        let base = self.base;
        self.states
            .into_iter()
            .flatten()
            .map(|mut state| {
                // A stream whose last packet the second pass did not see (the file changed
                // between the passes, or reading stopped early): end it where it is.
                if let Some(path) = state.path.take() {
                    close(path, &mut state, base, &mut self.listed);
                }
                StreamReplay {
                    digits: state.digits,
                    unlisted: state.unlisted,
                    stats: state.stats,
                    config: state.config,
                }
            })
            .collect()
    }

    /// Feeds the SIP INFO key presses carried by frames before `frame`.
    fn infos_before(&mut self, frame: u64) {
        while let Some(&(at_frame, k, i)) = self.infos.get(self.next_info) {
            if at_frame >= frame {
                return;
            }
            self.next_info += 1;
            let Some(info) = self.capture.sip.info_digits.get(k) else {
                continue;
            };
            let (digit, duration) = (info.digit, info.duration);
            self.input(i, info.at_ns, |path, now| {
                path.handle_sip_info(now, digit, duration)
            });
        }
    }

    /// One input of stream `i` at capture time `at_ns`.
    fn input(&mut self, i: usize, at_ns: u64, feed: impl FnOnce(&mut ReceivePath, Instant)) {
        let base = self.base;
        let Some(Some(state)) = self.states.get_mut(i) else {
            return;
        };
        let mut path = state
            .path
            .take()
            .unwrap_or_else(|| ReceivePath::new(state.config.clone()));
        // Captures merged from several interfaces can step back in time; the path's clock
        // never does.
        state.now = state.now.max(base + Duration::from_nanos(at_ns));
        run_timers(&mut path, state, base, &mut self.listed);
        feed(&mut path, state.now);
        drain(&mut path, state, base, &mut self.listed);
        state.left = state.left.saturating_sub(1);
        if state.left == 0 {
            close(path, state, base, &mut self.listed);
        } else {
            state.path = Some(path);
        }
    }
}

/// Replays every stream of a whole capture held in memory (`bytes`, already scanned into
/// `capture`).
pub fn replay(capture: &Capture, bytes: &[u8], base: Instant) -> Vec<StreamReplay> {
    let mut replay = Replay::new(capture, base);
    replay.push(bytes);
    replay.finish()
}

/// The stream's last input was fed: timers due, then the end of the stream.
fn close(mut path: ReceivePath, state: &mut State, base: Instant, listed: &mut usize) {
    run_timers(&mut path, state, base, listed);
    path.finish(state.now);
    drain(&mut path, state, base, listed);
    state.stats = path.stats().clone();
}

fn run_timers(path: &mut ReceivePath, state: &mut State, base: Instant, listed: &mut usize) {
    for _ in 0..MAX_TIMEOUTS_PER_STEP {
        match path.poll_timeout() {
            Some(deadline) if deadline <= state.now => {
                path.handle_timeout(deadline.max(base));
                drain(path, state, base, listed);
            }
            _ => return,
        }
    }
}

fn drain(path: &mut ReceivePath, state: &mut State, base: Instant, listed: &mut usize) {
    while let Some(report) = path.poll_digit() {
        if *listed < MAX_DIGITS {
            *listed += 1;
            state.digits.push(to_digit(report, base));
        } else {
            state.unlisted += 1;
        }
    }
}

fn to_digit(report: DigitReport, base: Instant) -> Digit {
    let at_ns = report.at.saturating_duration_since(base).as_nanos();
    Digit {
        digit: report.digit,
        method: report.method,
        ssrc: report.ssrc,
        at_ns: u64::try_from(at_ns).unwrap_or(u64::MAX),
        duration: report.duration,
    }
}

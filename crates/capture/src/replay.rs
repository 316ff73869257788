//! Replaying a captured stream through the live call's receive path
//! ([`media::ReceivePath`]): the same latch, reorder buffer, decoder, Goertzel receiver,
//! RFC 4733 and SIP INFO merging a live call uses, on a simulated clock.
//!
//! The clock is `base + capture time of the packet`; between packets the path's timers run at
//! exactly the deadlines it asks for (`poll_timeout`), as the runtime does for a live call.

use std::time::{Duration, Instant};

use media::{Codec, DigitReport, DtmfMethod, ReceiveConfig, ReceivePath, ReceiveStats};

use crate::Capture;
use crate::payload::{Encoding, PayloadType};
use crate::streams::Stream;

/// How long the reorder buffer waits for a missing packet, as a live call does (ms).
pub const REORDER_WINDOW: Duration = Duration::from_millis(60);
/// Most timer expiries handled between two packets (a safeguard against a timer that does not
/// advance; real paths need a handful).
const MAX_TIMEOUTS_PER_STEP: usize = 10_000;

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

/// Replays one stream of `capture` with its clock starting at `base` (the instant of the
/// capture's first frame).
pub fn replay_stream(capture: &Capture, stream: &Stream, base: Instant) -> StreamReplay {
    let config = receive_config(stream);
    let mut path = ReceivePath::new(config.clone());
    let mut digits = Vec::new();

    // RTP datagrams and INFO key presses, merged by time (stable: capture order on ties).
    enum Input {
        Rtp(usize),
        Info(usize),
    }
    let mut inputs: Vec<(u64, Input)> = stream
        .datagrams
        .iter()
        .filter_map(|&i| capture.datagrams.get(i).map(|d| (d.at_ns, Input::Rtp(i))))
        .chain(stream.info.iter().filter_map(|&k| {
            capture
                .sip
                .info_digits
                .get(k)
                .map(|d| (d.at_ns, Input::Info(k)))
        }))
        .collect();
    inputs.sort_by_key(|(at, _)| *at);

    let mut now = base;
    for (at_ns, input) in inputs {
        // Captures merged from several interfaces can step back in time; the path's clock
        // never does.
        now = now.max(base + Duration::from_nanos(at_ns));
        run_timers(&mut path, now, base, &mut digits);
        match input {
            Input::Rtp(i) => {
                let d = &capture.datagrams[i];
                path.handle_rtp(now, d.src, &d.payload);
            }
            Input::Info(k) => {
                let info = &capture.sip.info_digits[k];
                path.handle_sip_info(now, info.digit, info.duration);
            }
        }
        drain(&mut path, base, &mut digits);
    }
    run_timers(&mut path, now, base, &mut digits);
    path.finish(now);
    drain(&mut path, base, &mut digits);
    StreamReplay {
        digits,
        stats: path.stats().clone(),
        config,
    }
}

/// Replays every stream of the capture.
pub fn replay(capture: &Capture, base: Instant) -> Vec<StreamReplay> {
    capture
        .streams
        .iter()
        .map(|s| replay_stream(capture, s, base))
        .collect()
}

fn run_timers(path: &mut ReceivePath, now: Instant, base: Instant, digits: &mut Vec<Digit>) {
    for _ in 0..MAX_TIMEOUTS_PER_STEP {
        match path.poll_timeout() {
            Some(deadline) if deadline <= now => {
                path.handle_timeout(deadline.max(base));
                drain(path, base, digits);
            }
            _ => return,
        }
    }
}

fn drain(path: &mut ReceivePath, base: Instant, digits: &mut Vec<Digit>) {
    while let Some(report) = path.poll_digit() {
        digits.push(to_digit(report, base));
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

//! One digit stream per call: key presses reported by in-band detection, RFC 4733 events and
//! SIP INFO merged so that each press counts once.
//!
//! # The rule
//!
//! Each method de-duplicates itself: the Goertzel receiver reports a held tone once (and a
//! pause of 27 ms or more separates two presses), RFC 4733 identifies an event by its SSRC and
//! timestamp, and every SIP INFO is one press. So two reports by the *same* method are two
//! presses, however close (a key pressed twice 40 ms apart counts twice).
//!
//! A report by one method is the *same* press as an earlier report of the same key by
//! *another* method when it comes while that press is held, or within a slack after it ended:
//!
//! * [`SLACK`] (150 ms) in general: the second method lags the first by its detection time
//!   (in-band needs 25-30 ms of tone), by a reorder hold, or by SIP signalling;
//! * [`TAIL`] (250 ms) for in-band after an out-of-band press. Gateways that switch a key press
//!   to RFC 4733 pause the audio during the event and let the tone's tail through when the audio
//!   resumes: Asterisk sends a 200 ms event, then 120-200 ms of the same tone in-band, detected
//!   some 70 ms after the event's end packet. Such a tail may be cut by a short dip into two
//!   in-band detections; both belong to the event, so in-band reports of the key are absorbed
//!   for as long as the out-of-band press's span lasts, not only once.
//!
//! A press is never merged twice with the same method except for that tail case, so with two
//! methods carrying every press, fast repeats pair up one to one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dtmf::Digit;

use crate::DtmfMethod;
use crate::receive::DigitReport;

/// How long after a press ended (or how long after it started, if no method reports an end)
/// another method's report of the same key still belongs to it.
pub const SLACK: Duration = Duration::from_millis(150);
/// How long after an out-of-band press ended in-band reports of the same key are its tail.
pub const TAIL: Duration = Duration::from_millis(250);
/// A press counts as held for at most this long, whatever its methods say: an in-band tone
/// whose audio stopped mid-tone is never seen to end, and must not absorb later presses.
pub const MAX_HOLD: Duration = Duration::from_secs(2);
/// Presses remembered for merging.
const REMEMBERED: usize = 32;

/// Identifies a press so that its end can be reported.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PressId(u64);

#[derive(Clone, Debug)]
struct Press {
    id: PressId,
    digit: Digit,
    /// Methods that reported it (bit per method).
    methods: u8,
    /// Reports still holding the key (in-band tone or RFC 4733 event not yet ended).
    holding: u8,
    /// When the last report ended (or, for SIP INFO, is deemed to end).
    ended: Instant,
    started: Instant,
}

fn bit(method: DtmfMethod) -> u8 {
    match method {
        DtmfMethod::Inband => 1,
        DtmfMethod::Rfc4733 => 2,
        DtmfMethod::SipInfo => 4,
    }
}

const OUT_OF_BAND: u8 = 2 | 4;

/// The merger.
#[derive(Clone, Debug, Default)]
pub struct Merger {
    presses: VecDeque<Press>,
    next_id: u64,
    reports: VecDeque<DigitReport>,
}

impl Merger {
    /// A key went down according to `method` (on `ssrc`) at `now`. `holds` is true when the
    /// method will report the key's release with [`Merger::key_up`]; otherwise the press is
    /// deemed to last `duration` (SIP INFO). `latency` is how long the key had already been
    /// down when `method` recognised it. Returns the press it belongs to, and whether that is
    /// a new press (reported) rather than one already reported by another method.
    #[allow(clippy::too_many_arguments)]
    pub fn key_down(
        &mut self,
        now: Instant,
        digit: Digit,
        method: DtmfMethod,
        ssrc: Option<u32>,
        holds: bool,
        duration: Option<Duration>,
        latency: Option<Duration>,
    ) -> (PressId, bool) {
        let m = bit(method);
        let found = self.presses.iter_mut().rev().find(|p| {
            if p.digit != digit {
                return false;
            }
            let end = if p.holding > 0 {
                now.min(p.started + MAX_HOLD).max(p.ended)
            } else {
                p.ended
            };
            let in_band_after_oob = method == DtmfMethod::Inband && p.methods & OUT_OF_BAND != 0;
            if p.methods & m != 0 {
                // Only the in-band tail of an out-of-band press may come twice.
                return in_band_after_oob && now <= end + TAIL;
            }
            now <= end + if in_band_after_oob { TAIL } else { SLACK }
        });
        let end = now + duration.unwrap_or_default();
        if let Some(p) = found {
            p.methods |= m;
            p.holding += u8::from(holds);
            p.ended = p.ended.max(end);
            return (p.id, false);
        }
        let id = PressId(self.next_id);
        self.next_id += 1;
        self.presses.push_back(Press {
            id,
            digit,
            methods: m,
            holding: u8::from(holds),
            ended: end,
            started: now,
        });
        while self.presses.len() > REMEMBERED {
            self.presses.pop_front();
        }
        self.reports.push_back(DigitReport {
            digit,
            method,
            ssrc,
            at: now,
            duration,
            latency,
        });
        (id, true)
    }

    /// The key of press `id` went up (for one of the methods holding it) at `now`.
    pub fn key_up(&mut self, now: Instant, id: PressId) {
        if let Some(p) = self.presses.iter_mut().find(|p| p.id == id) {
            p.holding = p.holding.saturating_sub(1);
            p.ended = p.ended.max(now);
        }
    }

    /// The next new press.
    pub fn poll(&mut self) -> Option<DigitReport> {
        self.reports.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DtmfMethod::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn drain(m: &mut Merger) -> Vec<(Digit, DtmfMethod)> {
        std::iter::from_fn(|| m.poll())
            .map(|r| (r.digit, r.method))
            .collect()
    }

    #[test]
    fn event_with_inband_tail_counts_once() {
        let t0 = Instant::now();
        let mut m = Merger::default();
        let (ev, _) = m.key_down(t0, Digit::D2, Rfc4733, Some(1), true, None, None);
        m.key_up(ms(t0, 200), ev);
        // Tail detected 70 ms after the end packet, then once more after a dip.
        let (a, _) = m.key_down(ms(t0, 270), Digit::D2, Inband, Some(1), true, None, None);
        m.key_up(ms(t0, 330), a);
        let (b, _) = m.key_down(ms(t0, 370), Digit::D2, Inband, Some(1), true, None, None);
        m.key_up(ms(t0, 400), b);
        assert_eq!(drain(&mut m), [(Digit::D2, Rfc4733)]);
    }

    #[test]
    fn repeats_by_one_method_count_twice() {
        let t0 = Instant::now();
        let mut m = Merger::default();
        for method in [Inband, Rfc4733, SipInfo] {
            let (a, _) = m.key_down(ms(t0, 0), Digit::Pound, method, None, true, None, None);
            m.key_up(ms(t0, 60), a);
            let (b, _) = m.key_down(ms(t0, 100), Digit::Pound, method, None, true, None, None);
            m.key_up(ms(t0, 160), b);
            assert_eq!(drain(&mut m).len(), 2, "{method:?}");
            m = Merger::default();
        }
    }

    #[test]
    fn two_methods_on_fast_repeats_pair_up() {
        let t0 = Instant::now();
        let mut m = Merger::default();
        // Each press: event at t, in-band detected 28 ms later; presses 140 ms apart.
        for i in 0..3 {
            let t = 140 * i;
            let (e, _) = m.key_down(ms(t0, t), Digit::D5, Rfc4733, Some(7), true, None, None);
            let (b, _) = m.key_down(ms(t0, t + 28), Digit::D5, Inband, Some(7), true, None, None);
            m.key_up(ms(t0, t + 100), e);
            m.key_up(ms(t0, t + 104), b);
        }
        assert_eq!(drain(&mut m).len(), 3);
    }

    #[test]
    fn inband_first_then_late_event_and_sip_info() {
        let t0 = Instant::now();
        let mut m = Merger::default();
        let (a, _) = m.key_down(t0, Digit::D0, Inband, Some(1), true, None, None);
        m.key_up(ms(t0, 100), a);
        m.key_down(ms(t0, 180), Digit::D0, Rfc4733, Some(2), true, None, None);
        m.key_down(
            ms(t0, 200),
            Digit::D0,
            SipInfo,
            None,
            false,
            Some(Duration::from_millis(100)),
            None,
        );
        assert_eq!(drain(&mut m), [(Digit::D0, Inband)]);
        // Another key is another press.
        m.key_down(ms(t0, 210), Digit::D1, SipInfo, None, false, None, None);
        // Long after (the event never ended: held at most MAX_HOLD): a new press.
        m.key_down(ms(t0, 2500), Digit::D0, Inband, None, true, None, None);
        assert_eq!(drain(&mut m), [(Digit::D1, SipInfo), (Digit::D0, Inband)]);
    }
}

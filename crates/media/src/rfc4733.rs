//! RFC 4733 telephone-events: the payload, a receiver that turns event packets into key presses,
//! and the packet schedule a sender follows.
//!
//! # Payload (RFC 4733 §2.3)
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     event     |E|R| volume    |          duration             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! `event` 0-9, 10 = `*`, 11 = `#`, 12-15 = A-D (§3.2); `E` the event has ended (§2.3.2);
//! `volume` the power level, 0 to −63 dBm0 written without its sign (§2.3.4); `duration` since
//! the event began, in RTP timestamp units of the event clock (§2.3.5).
//!
//! # One key press on the wire
//!
//! A key held for 100 ms, sent as this crate sends it (one packet per 20 ms slot, 8 kHz clock):
//!
//! ```text
//!  slot (ms)    0      20     40     60     80     100    120
//!  seq          n      n+1    n+2    n+3    n+4    n+5    n+6    one per packet (RFC 3550)
//!  timestamp    T      T      T      T      T      T      T      event start, all packets (§2.2.1)
//!  M            1      0      0      0      0      0      0      first packet only (§2.2.2)
//!  E            0      0      0      0      1      1      1      end, sent three times (§2.5.1.4)
//!  duration     160    320    480    640    800    800    800    grows, then frozen (§2.3.5)
//!               |<--------- key down ---------->|<- redundant ->|
//! ```
//!
//! What real senders do differently, and what this receiver makes of it:
//!
//! ```text
//!  Cisco SPA525G2   M set on EVERY packet       -> M alone never starts an event
//!  sipp replay      3 end packets, SAME seq     -> end repeats counted once, not as duplicates
//!  sipp replay      events on a second SSRC     -> one receiver per SSRC
//!  linphone         events, no audio at all     -> nothing needs audio
//!  Asterisk         no end packet at all        -> reported at its 2nd packet, ended by a timeout
//!  Asterisk + Opus  event clock 48 kHz          -> durations read at the negotiated clock
//!  fax gateways     events 32 (ANS), 194 (NSE)  -> codes above 15 ignored
//! ```
//!
//! An event is identified by (SSRC, timestamp): a new timestamp starts a new event, whether or
//! not the marker is set (the first packet may be lost, and some phones mark every packet), and
//! every packet with the timestamp of the current event only updates or ends it. The key press
//! is reported when its event is confirmed by a second packet with another sequence number,
//! not when it ends: that is up to 80 ms of latency saved, and an event whose end packets are
//! all lost is reported all the same. One packet alone is never a key, however often it is
//! repeated: a stranger who can slip one forged packet in does not approve a sign-in, and every
//! sender above sends at least three packets per event (§2.5.1.4: the end alone is sent three
//! times, each with its own sequence number from Asterisk, baresip and linphone).

use std::time::{Duration, Instant};

use dtmf::Digit;

/// Bytes of one event block (§2.3).
pub const EVENT_LEN: usize = 4;
/// Highest DTMF event code (§3.2: 0-9, *, #, A-D); codes above are other tones and signals.
pub const MAX_DTMF_EVENT: u8 = 15;
/// Times the final packet of an event is sent (§2.5.1.4: "a total of three").
pub const END_REPEATS: usize = 3;
/// Volume this crate sends, −dBm0 (§2.3.4). −10 dBm0 per tone is a typical handset level
/// (the level `dtmf::ToneSpec` defaults to).
pub const SEND_VOLUME: u8 = 10;

/// An event packet without updates or end for this long is ended by timeout. §2.5.1.2 has
/// senders update at least every 50 ms; five missed updates is our choice of "gone".
pub const EVENT_TIMEOUT: Duration = Duration::from_millis(250);
/// A packet with the timestamp of an event that ended this long ago, with the marker set and
/// the E bit clear, is a new key press from a sender that does not advance its timestamp
/// between events (no audio flowing); a late copy of the ended event would arrive far sooner.
pub const SAME_TIMESTAMP_NEW_EVENT: Duration = Duration::from_millis(200);
/// Events ended recently, remembered so that late packets of them are not taken for new ones.
const RECENT_EVENTS: usize = 8;

/// Why a telephone-event payload was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Fewer than 4 bytes (§2.3).
    #[error("telephone-event payload of {len} bytes, an event needs 4")]
    TooShort { len: usize },
}

/// One event block (§2.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EventPayload {
    /// Event code (§3.2 for DTMF).
    pub event: u8,
    /// `E`: the event has ended.
    pub end: bool,
    /// Volume, −dBm0 (0..=63).
    pub volume: u8,
    /// Duration since the event's timestamp, in event-clock units.
    pub duration: u16,
}

impl EventPayload {
    /// Reads the first event block of a payload.
    pub fn parse(payload: &[u8]) -> Result<EventPayload, EventError> {
        match payload {
            [event, flags, d0, d1, ..] => Ok(EventPayload {
                event: *event,
                end: flags & 0x80 != 0,
                volume: flags & 0x3f,
                duration: u16::from_be_bytes([*d0, *d1]),
            }),
            _ => Err(EventError::TooShort { len: payload.len() }),
        }
    }

    /// Reads every event block of a payload with the timestamp each applies to. Several
    /// blocks in one packet (§2.5.1.5) follow one another in time: the first starts at the
    /// packet's timestamp and each next one where the previous ended. Trailing bytes that do
    /// not make a block are ignored.
    pub fn parse_all(
        payload: &[u8],
        timestamp: u32,
    ) -> Result<impl Iterator<Item = (u32, EventPayload)> + '_, EventError> {
        if payload.len() < EVENT_LEN {
            return Err(EventError::TooShort { len: payload.len() });
        }
        let mut start = timestamp;
        Ok(payload.chunks_exact(EVENT_LEN).filter_map(move |block| {
            let e = EventPayload::parse(block).ok()?;
            let at = start;
            start = start.wrapping_add(u32::from(e.duration));
            Some((at, e))
        }))
    }

    /// The 4 wire bytes.
    pub fn to_bytes(&self) -> [u8; EVENT_LEN] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }

    /// The DTMF key, if the event is one (§3.2).
    pub fn digit(&self) -> Option<Digit> {
        Digit::from_event_code(self.event)
    }
}

/// Converts a duration in units of an RTP clock to time.
pub fn clock_to_duration(units: u64, clock_hz: u32) -> Duration {
    let clock = u64::from(clock_hz.max(1));
    Duration::from_nanos(units.saturating_mul(1_000_000_000) / clock)
}

/// What one packet did to the receiver's state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EventChange {
    /// The first packet of a new event: nothing to report until a second packet (another
    /// sequence number) confirms it.
    Pending,
    /// The same packet again (same sequence number) of an event not confirmed yet.
    Duplicate,
    /// A key press began, confirmed by its second packet (report it now).
    Started {
        digit: Digit,
        timestamp: u32,
        /// How long the key had been down when its first packet was built (the sender's
        /// duration field): the sender's share of the detection latency.
        elapsed: Duration,
    },
    /// The key press ended: by its E bit, by a newer event, or by timeout.
    Ended {
        digit: Digit,
        timestamp: u32,
        /// The event's duration as last reported by the sender.
        duration: Duration,
        /// True when no end packet was received.
        timed_out: bool,
    },
    /// A repeated end packet of an event already ended (§2.5.1.4).
    EndRepeat,
    /// An event code above 15 (not a DTMF key), ignored.
    NotDtmf,
    /// A late packet of an event already ended or superseded, ignored.
    Stale,
}

/// The event being received or last received on one SSRC.
#[derive(Copy, Clone, Debug)]
struct Current {
    timestamp: u32,
    digit: Digit,
    duration: u16,
    last_packet: Instant,
    /// When the E bit (or a timeout) ended it.
    ended: Option<Instant>,
    /// The sequence number of its first packet.
    first_seq: u16,
    /// A second packet (another sequence number) arrived: the key press was reported.
    confirmed: bool,
}

/// How a packet relates to the current event.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Decision {
    /// A packet of the current event (duration update or its first end packet).
    Update,
    /// The next segment of a long event (§2.5.1.3).
    NextSegment,
    /// A repeated end packet.
    EndRepeat,
    /// A late packet of a past event.
    Stale,
    /// A new key press.
    New,
}

/// Telephone-event receiver for one SSRC.
#[derive(Clone, Debug)]
pub struct EventReceiver {
    clock_hz: u32,
    current: Option<Current>,
    /// Timestamps of events that ended before `current`, newest last.
    recent: [Option<u32>; RECENT_EVENTS],
}

impl EventReceiver {
    /// A receiver for events at `clock_hz` (the rate from SDP's `telephone-event/<rate>`).
    pub fn new(clock_hz: u32) -> EventReceiver {
        EventReceiver {
            clock_hz: clock_hz.max(1),
            current: None,
            recent: [None; RECENT_EVENTS],
        }
    }

    /// The key being held (and reported), if any.
    pub fn active(&self) -> Option<Digit> {
        self.current
            .filter(|c| c.confirmed && c.ended.is_none())
            .map(|c| c.digit)
    }

    /// When an event without end packets will be timed out.
    pub fn deadline(&self) -> Option<Instant> {
        self.current
            .filter(|c| c.ended.is_none())
            .map(|c| c.last_packet + EVENT_TIMEOUT)
    }

    /// Handles one event block with its timestamp; `seq` is the packet's RTP sequence number
    /// and `marker` its M bit.
    pub fn on_event(
        &mut self,
        now: Instant,
        timestamp: u32,
        seq: u16,
        marker: bool,
        event: EventPayload,
        mut on_change: impl FnMut(EventChange),
    ) {
        let Some(digit) = event.digit() else {
            on_change(EventChange::NotDtmf);
            return;
        };
        let clock = self.clock_hz;
        if let Some(cur) = &mut self.current
            && !cur.confirmed
            && cur.timestamp == timestamp
            && cur.digit == digit
        {
            // The event waiting for its second packet.
            if seq == cur.first_seq {
                on_change(EventChange::Duplicate);
                return;
            }
            cur.confirmed = true;
            cur.duration = cur.duration.max(event.duration);
            cur.last_packet = now;
            if event.end && cur.ended.is_none() {
                cur.ended = Some(now);
            }
            on_change(EventChange::Started {
                digit,
                timestamp,
                elapsed: clock_to_duration(u64::from(cur.duration), clock),
            });
            if cur.ended.is_some() {
                on_change(EventChange::Ended {
                    digit,
                    timestamp,
                    duration: clock_to_duration(u64::from(cur.duration), clock),
                    timed_out: false,
                });
            }
            return;
        }
        match self.classify(now, timestamp, marker, digit, event.end) {
            Decision::Stale => on_change(EventChange::Stale),
            Decision::EndRepeat => on_change(EventChange::EndRepeat),
            Decision::Update | Decision::NextSegment => {
                let Some(cur) = &mut self.current else {
                    // `classify` only updates an existing event.
                    return;
                };
                if cur.timestamp != timestamp {
                    cur.timestamp = timestamp;
                    cur.duration = 0;
                }
                cur.duration = cur.duration.max(event.duration);
                cur.last_packet = now;
                if event.end {
                    cur.ended = Some(now);
                    if !cur.confirmed {
                        // The next segment's first packet, and its last: still one packet.
                        on_change(EventChange::Pending);
                        return;
                    }
                    on_change(EventChange::Ended {
                        digit,
                        timestamp,
                        duration: clock_to_duration(u64::from(cur.duration), clock),
                        timed_out: false,
                    });
                }
            }
            Decision::New => self.start(now, timestamp, seq, digit, event, &mut on_change),
        }
    }

    /// What a packet of `digit` at `timestamp` means given the current event.
    fn classify(
        &self,
        now: Instant,
        timestamp: u32,
        marker: bool,
        digit: Digit,
        end: bool,
    ) -> Decision {
        let Some(cur) = &self.current else {
            return Decision::New;
        };
        if cur.timestamp == timestamp && cur.digit == digit {
            return match cur.ended {
                None => Decision::Update,
                Some(_) if end => Decision::EndRepeat,
                Some(ended_at)
                    if marker
                        && now.saturating_duration_since(ended_at) >= SAME_TIMESTAMP_NEW_EVENT =>
                {
                    Decision::New
                }
                Some(_) => Decision::Stale,
            };
        }
        if self.recent.contains(&Some(timestamp)) {
            return Decision::Stale;
        }
        let delta = i64::from(crate::rtp::timestamp_delta(timestamp, cur.timestamp));
        // Older than the current event, by less than a minute: a late packet of an event that
        // was superseded before we saw it. (Further back is a sender that restarted.)
        if delta < 0 && delta > -i64::from(self.clock_hz) * 60 {
            return Decision::Stale;
        }
        // A long key press is sent in segments of at most 65535 units, each with a new
        // timestamp where the previous segment ended (§2.5.1.3): the same press.
        let tolerance = i64::from(self.clock_hz) / 10;
        if cur.ended.is_none()
            && cur.digit == digit
            && cur.duration >= u16::MAX / 2
            && (delta - i64::from(cur.duration)).abs() <= tolerance
        {
            return Decision::NextSegment;
        }
        Decision::New
    }

    fn start(
        &mut self,
        now: Instant,
        timestamp: u32,
        seq: u16,
        digit: Digit,
        event: EventPayload,
        on_change: &mut impl FnMut(EventChange),
    ) {
        // A new event: the one before it, if still held, ended where this one begins.
        self.end_current(now, false, on_change);
        if let Some(prev) = self.current.take() {
            self.recent.rotate_left(1);
            self.recent[RECENT_EVENTS - 1] = Some(prev.timestamp);
        }
        self.current = Some(Current {
            timestamp,
            digit,
            duration: event.duration,
            last_packet: now,
            ended: event.end.then_some(now),
            first_seq: seq,
            confirmed: false,
        });
        on_change(EventChange::Pending);
    }

    /// Ends an event whose packets stopped coming (call at or after [`Self::deadline`]).
    pub fn handle_timeout(&mut self, now: Instant, mut on_change: impl FnMut(EventChange)) {
        if self.deadline().is_some_and(|d| d <= now) {
            self.end_current(now, true, &mut on_change);
        }
    }

    /// End of stream: an event still held ends (as timed out: no end packet came).
    pub fn finish(&mut self, now: Instant, mut on_change: impl FnMut(EventChange)) {
        self.end_current(now, true, &mut on_change);
    }

    fn end_current(
        &mut self,
        now: Instant,
        timed_out: bool,
        on_change: &mut impl FnMut(EventChange),
    ) {
        let clock = self.clock_hz;
        if let Some(cur) = &mut self.current
            && cur.ended.is_none()
        {
            cur.ended = Some(now);
            if !cur.confirmed {
                // One packet and then nothing: never reported, so nothing to end.
                return;
            }
            on_change(EventChange::Ended {
                digit: cur.digit,
                timestamp: cur.timestamp,
                duration: clock_to_duration(u64::from(cur.duration), clock),
                timed_out,
            });
        }
    }
}

/// The packets of one key press, as a sender emits them one per packet interval.
#[derive(Clone, Debug)]
pub struct EventSchedule {
    event: u8,
    volume: u8,
    /// Event-clock units per packet.
    step: u16,
    /// Total duration of the key press in event-clock units.
    total: u16,
    /// Packets emitted so far.
    sent: u32,
    /// End packets emitted so far.
    ends: usize,
}

/// One packet of an [`EventSchedule`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ScheduledPacket {
    /// The marker bit: set on the first packet only (§2.2.2).
    pub marker: bool,
    pub payload: EventPayload,
}

impl EventSchedule {
    /// A key press of `tone` length, sent every `interval`, at an event clock of `clock_hz`.
    /// The duration is capped just under the 16-bit field (no long-duration segments: a dialled
    /// key is 100 ms).
    pub fn new(
        digit: Digit,
        tone: Duration,
        interval: Duration,
        clock_hz: u32,
        volume: u8,
    ) -> EventSchedule {
        let units = |d: Duration| {
            (d.as_nanos() * u128::from(clock_hz) / 1_000_000_000).min(u128::from(u16::MAX)) as u16
        };
        let step = units(interval).max(1);
        EventSchedule {
            event: digit.event_code(),
            volume: volume.min(63),
            step,
            total: units(tone).max(step),
            sent: 0,
            ends: 0,
        }
    }

    /// The next packet, or None when the three end packets have been sent.
    pub fn next_packet(&mut self) -> Option<ScheduledPacket> {
        if self.ends >= END_REPEATS {
            return None;
        }
        let duration = (u64::from(self.sent) + 1) * u64::from(self.step);
        let end = duration >= u64::from(self.total);
        let payload = EventPayload {
            event: self.event,
            end,
            volume: self.volume,
            duration: if end { self.total } else { duration as u16 },
        };
        let marker = self.sent == 0;
        self.sent += 1;
        if end {
            self.ends += 1;
        }
        Some(ScheduledPacket { marker, payload })
    }

    /// True when every packet has been emitted.
    pub fn is_done(&self) -> bool {
        self.ends >= END_REPEATS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bytes() {
        // '#' with E, volume 10, duration 1600 (200 ms at 8 kHz): Asterisk's end packet.
        let bytes = [0x0b, 0x8a, 0x06, 0x40];
        let e = EventPayload::parse(&bytes).unwrap();
        assert_eq!(
            e,
            EventPayload {
                event: 11,
                end: true,
                volume: 10,
                duration: 1600
            }
        );
        assert_eq!(e.digit(), Some(Digit::Pound));
        assert_eq!(e.to_bytes(), bytes);
        // '1', not ended, R bit set (must be ignored), volume 63, duration 0.
        let e = EventPayload::parse(&[0x01, 0x7f, 0x00, 0x00]).unwrap();
        assert_eq!((e.event, e.end, e.volume, e.duration), (1, false, 63, 0));
        assert_eq!(e.to_bytes(), [0x01, 0x3f, 0x00, 0x00]);
        // Fax answer tone (ANS, event 32) is not a key.
        assert_eq!(EventPayload::parse(&[32, 0, 3, 115]).unwrap().digit(), None);
        assert_eq!(
            EventPayload::parse(&[1, 2, 3]),
            Err(EventError::TooShort { len: 3 })
        );
    }

    /// A whole event packet: the second end packet of a '#' held 280 ms (2240 units at 8 kHz).
    const END_PACKET: [u8; 16] = [
        0x80, 0x65, 0x20, 0xfb, // V=2, no marker, PT 101, seq 8443
        0x00, 0x00, 0x33, 0xe0, // timestamp 13280 (the event's start)
        0x0e, 0x05, 0x38, 0x4e, // SSRC
        0x0b, 0x8a, 0x08, 0xc0, // '#', E, volume 10, duration 2240
    ];

    #[test]
    fn whole_event_packet_bytes() {
        let p = crate::rtp::RtpPacket::parse(&END_PACKET).unwrap();
        assert_eq!(
            (p.marker, p.payload_type, p.sequence.0, p.timestamp, p.ssrc),
            (false, 101, 8443, 13280, 0x0e05_384e)
        );
        let e = EventPayload::parse(p.payload).unwrap();
        assert_eq!(
            e,
            EventPayload {
                event: 11,
                end: true,
                volume: 10,
                duration: 2240
            }
        );
        let rebuilt = crate::rtp::PacketSpec {
            payload_type: 101,
            sequence: 8443,
            timestamp: 13280,
            ssrc: 0x0e05_384e,
            payload: &e.to_bytes(),
            ..crate::rtp::PacketSpec::default()
        }
        .to_vec()
        .unwrap();
        assert_eq!(rebuilt, END_PACKET);
    }

    #[test]
    fn packed_blocks_follow_each_other() {
        let payload = [1, 0x8a, 0x03, 0x20, 2, 0x0a, 0x00, 0xa0, 9];
        let blocks: Vec<_> = EventPayload::parse_all(&payload, u32::MAX - 99)
            .unwrap()
            .collect();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].0, u32::MAX - 99);
        assert_eq!(blocks[1].0, 700);
        assert_eq!(blocks[1].1.event, 2);
    }

    #[test]
    fn schedule_matches_the_timeline() {
        let mut s = EventSchedule::new(
            Digit::D5,
            Duration::from_millis(100),
            Duration::from_millis(20),
            8000,
            SEND_VOLUME,
        );
        let mut packets = Vec::new();
        while let Some(p) = s.next_packet() {
            packets.push((p.marker, p.payload.end, p.payload.duration));
        }
        assert_eq!(
            packets,
            [
                (true, false, 160),
                (false, false, 320),
                (false, false, 480),
                (false, false, 640),
                (false, true, 800),
                (false, true, 800),
                (false, true, 800),
            ]
        );
        assert!(s.is_done());
        // 48 kHz event clock: the same times in 48 kHz units.
        let mut s = EventSchedule::new(
            Digit::D5,
            Duration::from_millis(100),
            Duration::from_millis(20),
            48_000,
            SEND_VOLUME,
        );
        assert_eq!(s.next_packet().unwrap().payload.duration, 960);
    }

    fn ev(event: u8, end: bool, duration: u16) -> EventPayload {
        EventPayload {
            event,
            end,
            volume: 10,
            duration,
        }
    }

    /// Feeds the packets, each with the next sequence number.
    fn run(
        rx: &mut EventReceiver,
        packets: &[(u64, u32, bool, EventPayload)],
        t0: Instant,
    ) -> Vec<EventChange> {
        let mut out = Vec::new();
        for (seq, &(ms, ts, marker, e)) in packets.iter().enumerate() {
            rx.on_event(
                t0 + Duration::from_millis(ms),
                ts,
                seq as u16,
                marker,
                e,
                |c| out.push(c),
            );
        }
        out
    }

    fn starts(changes: &[EventChange]) -> usize {
        changes
            .iter()
            .filter(|c| matches!(c, EventChange::Started { .. }))
            .count()
    }

    #[test]
    fn marker_on_every_packet_is_one_event() {
        let t0 = Instant::now();
        let mut rx = EventReceiver::new(8000);
        let mut packets = Vec::new();
        for i in 0..8u16 {
            packets.push((u64::from(i) * 10, 5000, true, ev(6, false, 80 * (i + 1))));
        }
        for i in 0..3 {
            packets.push((90 + i, 5000, true, ev(6, true, 720)));
        }
        let changes = run(&mut rx, &packets, t0);
        assert_eq!(starts(&changes), 1);
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, EventChange::EndRepeat))
                .count(),
            2
        );
    }

    #[test]
    fn new_timestamp_starts_without_marker_and_repeats_count_twice() {
        let t0 = Instant::now();
        let mut rx = EventReceiver::new(8000);
        // First packets (with the marker) lost; then the same key again 40 ms later.
        let changes = run(
            &mut rx,
            &[
                (20, 1000, false, ev(1, false, 320)),
                (40, 1000, false, ev(1, true, 480)),
                (41, 1000, false, ev(1, true, 480)),
                (80, 1800, true, ev(1, false, 160)),
                (120, 1800, false, ev(1, true, 480)),
            ],
            t0,
        );
        assert_eq!(starts(&changes), 2);
    }

    #[test]
    fn one_packet_is_never_a_key_however_often_repeated() {
        let t0 = Instant::now();
        let mut rx = EventReceiver::new(8000);
        let mut out = Vec::new();
        // A forged '#' with the E bit, sent ten times with one sequence number.
        for i in 0..10 {
            rx.on_event(
                t0 + Duration::from_millis(i),
                5000,
                77,
                true,
                ev(11, true, 800),
                |c| out.push(c),
            );
        }
        assert_eq!(starts(&out), 0, "{out:?}");
        assert_eq!(out[0], EventChange::Pending);
        assert!(out[1..].iter().all(|c| *c == EventChange::Duplicate));
        // And one without the E bit: it times out unreported.
        let mut rx = EventReceiver::new(8000);
        let mut out = Vec::new();
        rx.on_event(t0, 9000, 5, true, ev(11, false, 160), |c| out.push(c));
        assert_eq!(rx.active(), None);
        rx.handle_timeout(t0 + EVENT_TIMEOUT, |c| out.push(c));
        assert_eq!(out, [EventChange::Pending]);
        assert_eq!(rx.deadline(), None);
        // A second packet (another sequence number) confirms: reported then, and ended.
        let mut rx = EventReceiver::new(8000);
        let mut out = Vec::new();
        rx.on_event(t0, 9000, 5, true, ev(11, true, 800), |c| out.push(c));
        rx.on_event(t0, 9000, 6, false, ev(11, true, 800), |c| out.push(c));
        assert!(matches!(
            out[..],
            [
                EventChange::Pending,
                EventChange::Started {
                    digit: Digit::Pound,
                    ..
                },
                EventChange::Ended { .. }
            ]
        ));
    }

    #[test]
    fn no_end_packet_times_out() {
        let t0 = Instant::now();
        let mut rx = EventReceiver::new(8000);
        let changes = run(
            &mut rx,
            &[
                (0, 13280, true, ev(1, false, 0)),
                (20, 13280, false, ev(1, false, 160)),
            ],
            t0,
        );
        assert_eq!(starts(&changes), 1);
        assert_eq!(
            rx.deadline(),
            Some(t0 + Duration::from_millis(20) + EVENT_TIMEOUT)
        );
        let mut out = Vec::new();
        rx.handle_timeout(t0 + Duration::from_millis(20) + EVENT_TIMEOUT, |c| {
            out.push(c)
        });
        assert!(matches!(
            out[..],
            [EventChange::Ended {
                timed_out: true,
                ..
            }]
        ));
        assert_eq!(rx.deadline(), None);
    }

    #[test]
    fn late_packets_of_old_events_are_stale() {
        let t0 = Instant::now();
        let mut rx = EventReceiver::new(8000);
        let changes = run(
            &mut rx,
            &[
                (0, 1000, true, ev(1, false, 160)),
                (20, 1000, false, ev(1, true, 320)),
                (100, 3000, true, ev(2, false, 160)),
                // A reordered in-progress packet of the first event.
                (105, 1000, false, ev(1, false, 160)),
                // Same timestamp as the ended first event, no marker: stale.
                (110, 3000, false, ev(2, false, 320)),
            ],
            t0,
        );
        assert_eq!(starts(&changes), 2);
        assert!(changes.contains(&EventChange::Stale));
    }

    #[test]
    fn non_dtmf_events_are_ignored() {
        let t0 = Instant::now();
        let mut rx = EventReceiver::new(8000);
        let changes = run(&mut rx, &[(0, 1, true, ev(32, false, 883))], t0);
        assert_eq!(changes, [EventChange::NotDtmf]);
        assert_eq!(rx.deadline(), None);
    }

    #[test]
    fn durations_at_48_khz() {
        let t0 = Instant::now();
        let mut rx = EventReceiver::new(48_000);
        let changes = run(
            &mut rx,
            &[
                (0, 93120, true, ev(3, false, 960)),
                (20, 93120, false, ev(3, true, 1600)),
            ],
            t0,
        );
        assert!(changes.contains(&EventChange::Ended {
            digit: Digit::D3,
            timestamp: 93120,
            duration: Duration::from_nanos(33_333_333),
            timed_out: false
        }));
    }
}

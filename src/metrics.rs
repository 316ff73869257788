//! Prometheus metrics (text exposition format 0.0.4), kept in atomics: no registry, no locks.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flow::CallResult;
use media::DtmfMethod;

/// Upper bounds of the detector latency histogram buckets, in seconds.
const LATENCY_BUCKETS_SECS: [f64; 10] = [0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0];
const DTMF_METHODS: [DtmfMethod; 3] =
    [DtmfMethod::Inband, DtmfMethod::Rfc4733, DtmfMethod::SipInfo];

/// The service's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    calls: [AtomicU64; CallResult::ALL.len()],
    in_flight: AtomicI64,
    webhook_deliveries: AtomicU64,
    webhook_failures: AtomicU64,
    webhooks_gone: AtomicU64,
    webhooks_gave_up: AtomicU64,
    dtmf: [AtomicU64; DTMF_METHODS.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_SECS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// The SIP runtime's counters, once `serve` attached them.
    sip: OnceLock<Arc<SipCounters>>,
    http_open: AtomicI64,
    http_shed: AtomicU64,
    http_refused: AtomicU64,
    http_accept_errors: AtomicU64,
    dialer_deferred: AtomicU64,
}

/// Why input from the network did not reach a call (the `reason` label of
/// `callverify_sip_dropped_total` and `callverify_rtp_dropped_total`; docs/SECURITY.md).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Not a SIP message, or a TCP stream that cannot be framed.
    Parse,
    /// Not from a trusted peer (of the agent, the call, or the transaction it answers).
    UntrustedSource,
    /// No transaction or dialog it belongs to.
    NoTransaction,
    /// CSeq not increasing in a dialog (RFC 3261 §12.2.2).
    Cseq,
    /// A response with more than one Via.
    Misrouted,
    /// Over a stranger's per-IP token bucket (SIP) or a call's packet budget (RTP).
    RateLimited,
    /// The driver's queue was full.
    ChannelFull,
    /// A connection over `sip.max_connections` or `sip.max_connections_per_ip`.
    ConnectionLimit,
    /// A connection closed after `sip.connection_idle_secs` without a complete message.
    IdleTimeout,
}

impl Dropped {
    /// Every reason, in the order the metrics list them.
    pub const ALL: [Dropped; 9] = [
        Dropped::Parse,
        Dropped::UntrustedSource,
        Dropped::NoTransaction,
        Dropped::Cseq,
        Dropped::Misrouted,
        Dropped::RateLimited,
        Dropped::ChannelFull,
        Dropped::ConnectionLimit,
        Dropped::IdleTimeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Parse => "parse",
            Dropped::UntrustedSource => "untrusted_source",
            Dropped::NoTransaction => "no_transaction",
            Dropped::Cseq => "cseq",
            Dropped::Misrouted => "misrouted",
            Dropped::RateLimited => "rate_limited",
            Dropped::ChannelFull => "channel_full",
            Dropped::ConnectionLimit => "connection_limit",
            Dropped::IdleTimeout => "idle_timeout",
        }
    }

    /// The reason the SIP user agent gave.
    pub fn of(e: &sip::InputError) -> Dropped {
        match e {
            sip::InputError::Parse(_) => Dropped::Parse,
            sip::InputError::UntrustedSource => Dropped::UntrustedSource,
            sip::InputError::NoTransaction => Dropped::NoTransaction,
            sip::InputError::CseqOrder => Dropped::Cseq,
            sip::InputError::Misrouted => Dropped::Misrouted,
        }
    }

    fn index(self) -> usize {
        Dropped::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// What the SIP runtime dropped, by reason (shared by the runtime's tasks; no locks).
#[derive(Debug, Default)]
pub struct SipCounters {
    sip: [AtomicU64; Dropped::ALL.len()],
    rtp: [AtomicU64; Dropped::ALL.len()],
}

impl SipCounters {
    pub fn new() -> SipCounters {
        SipCounters::default()
    }

    /// One SIP message (or connection) dropped.
    pub fn sip_dropped(&self, reason: Dropped) {
        self.sip[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// One RTP datagram dropped before it reached its call.
    pub fn rtp_dropped(&self, reason: Dropped) {
        self.rtp[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// SIP messages (or connections) dropped for `reason` so far.
    pub fn sip(&self, reason: Dropped) -> u64 {
        self.sip[reason.index()].load(Ordering::Relaxed)
    }

    /// RTP datagrams dropped for `reason` so far.
    pub fn rtp(&self, reason: Dropped) -> u64 {
        self.rtp[reason.index()].load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "# HELP callverify_sip_dropped_total SIP messages and connections dropped, by reason."
        )?;
        writeln!(out, "# TYPE callverify_sip_dropped_total counter")?;
        for r in Dropped::ALL {
            writeln!(
                out,
                "callverify_sip_dropped_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.sip(r)
            )?;
        }
        writeln!(
            out,
            "# HELP callverify_rtp_dropped_total RTP datagrams dropped before their call, by reason."
        )?;
        writeln!(out, "# TYPE callverify_rtp_dropped_total counter")?;
        for r in [Dropped::RateLimited, Dropped::ChannelFull] {
            writeln!(
                out,
                "callverify_rtp_dropped_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.rtp(r)
            )?;
        }
        Ok(())
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Shows the SIP runtime's drop counters in [`Metrics::render`] (once; later calls are
    /// ignored). Until then they render as zeros.
    pub fn attach_sip(&self, counters: Arc<SipCounters>) {
        let _ = self.sip.set(counters);
    }

    /// A verification completed with `result`, decided by `method` (if a digit was heard).
    pub fn completed(&self, result: CallResult, method: Option<DtmfMethod>) {
        let i = CallResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        if let Some(m) = method {
            let j = DTMF_METHODS.iter().position(|x| *x == m).unwrap_or(0);
            self.dtmf[j].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn call_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn webhook_delivered(&self) {
        self.webhook_deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// One attempt failed (non-2xx, timeout, transport error, refused target).
    pub fn webhook_failed(&self) {
        self.webhook_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn webhook_gone(&self) {
        self.webhooks_gone.fetch_add(1, Ordering::Relaxed);
    }

    pub fn webhook_gave_up(&self) {
        self.webhooks_gave_up.fetch_add(1, Ordering::Relaxed);
    }

    /// Time from the end of a key press to its detection.
    pub fn detector_latency(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_SECS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// An HTTP connection was admitted.
    pub fn http_opened(&self) {
        self.http_open.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP connection ended.
    pub fn http_closed(&self) {
        self.http_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// An idle HTTP connection was closed to make room for a new one.
    pub fn http_shed(&self) {
        self.http_shed.fetch_add(1, Ordering::Relaxed);
    }

    /// A new HTTP connection was refused: every connection was busy.
    pub fn http_refused(&self) {
        self.http_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// `accept` failed (out of descriptors despite the budget, or a network error).
    pub fn http_accept_error(&self) {
        self.http_accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The dialer claimed nothing this round: the SIP runtime was overloaded.
    pub fn dialer_deferred(&self) {
        self.dialer_deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// Completed verifications with this result so far.
    pub fn calls(&self, result: CallResult) -> u64 {
        let i = CallResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.calls[i].load(Ordering::Relaxed)
    }

    /// The exposition text; `queue_depth` is read from the store at scrape time.
    pub fn render(&self, queue_depth: u64) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Writing to a String cannot fail.
        let _ = (|| -> std::fmt::Result {
            writeln!(
                out,
                "# HELP callverify_calls_total Completed verifications by result."
            )?;
            writeln!(out, "# TYPE callverify_calls_total counter")?;
            for (r, n) in CallResult::ALL.iter().zip(&self.calls) {
                writeln!(out, "callverify_calls_total{{result=\"{r}\"}} {}", load(n))?;
            }
            writeln!(
                out,
                "# HELP callverify_calls_in_flight Calls being placed or up."
            )?;
            writeln!(out, "# TYPE callverify_calls_in_flight gauge")?;
            writeln!(
                out,
                "callverify_calls_in_flight {}",
                self.in_flight.load(Ordering::Relaxed)
            )?;
            writeln!(
                out,
                "# HELP callverify_queue_depth Verifications waiting for a channel."
            )?;
            writeln!(out, "# TYPE callverify_queue_depth gauge")?;
            writeln!(out, "callverify_queue_depth {queue_depth}")?;
            writeln!(
                out,
                "# HELP callverify_webhook_deliveries_total Webhooks delivered (2xx)."
            )?;
            writeln!(out, "# TYPE callverify_webhook_deliveries_total counter")?;
            writeln!(
                out,
                "callverify_webhook_deliveries_total {}",
                load(&self.webhook_deliveries)
            )?;
            writeln!(
                out,
                "# HELP callverify_webhook_failures_total Failed webhook attempts."
            )?;
            writeln!(out, "# TYPE callverify_webhook_failures_total counter")?;
            writeln!(
                out,
                "callverify_webhook_failures_total {}",
                load(&self.webhook_failures)
            )?;
            writeln!(
                out,
                "# HELP callverify_webhooks_abandoned_total Webhooks no longer retried."
            )?;
            writeln!(out, "# TYPE callverify_webhooks_abandoned_total counter")?;
            writeln!(
                out,
                "callverify_webhooks_abandoned_total{{reason=\"gone\"}} {}",
                load(&self.webhooks_gone)
            )?;
            writeln!(
                out,
                "callverify_webhooks_abandoned_total{{reason=\"gave_up\"}} {}",
                load(&self.webhooks_gave_up)
            )?;
            writeln!(
                out,
                "# HELP callverify_dtmf_method_total Deciding key presses by DTMF method."
            )?;
            writeln!(out, "# TYPE callverify_dtmf_method_total counter")?;
            for (m, n) in DTMF_METHODS.iter().zip(&self.dtmf) {
                writeln!(
                    out,
                    "callverify_dtmf_method_total{{method=\"{}\"}} {}",
                    m.as_str(),
                    load(n)
                )?;
            }
            writeln!(
                out,
                "# HELP callverify_dtmf_detector_latency_seconds Key release to detection."
            )?;
            writeln!(
                out,
                "# TYPE callverify_dtmf_detector_latency_seconds histogram"
            )?;
            for (bound, n) in LATENCY_BUCKETS_SECS.iter().zip(&self.latency_buckets) {
                writeln!(
                    out,
                    "callverify_dtmf_detector_latency_seconds_bucket{{le=\"{bound}\"}} {}",
                    load(n)
                )?;
            }
            let count = load(&self.latency_count);
            writeln!(
                out,
                "callverify_dtmf_detector_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
            )?;
            let sum = load(&self.latency_sum_us) as f64 / 1e6;
            writeln!(out, "callverify_dtmf_detector_latency_seconds_sum {sum}")?;
            writeln!(
                out,
                "callverify_dtmf_detector_latency_seconds_count {count}"
            )?;
            match self.sip.get() {
                Some(sip) => sip.render(&mut out)?,
                None => SipCounters::default().render(&mut out)?,
            }
            writeln!(
                out,
                "# HELP callverify_http_connections Open HTTP connections."
            )?;
            writeln!(out, "# TYPE callverify_http_connections gauge")?;
            writeln!(
                out,
                "callverify_http_connections {}",
                self.http_open.load(Ordering::Relaxed)
            )?;
            writeln!(
                out,
                "# HELP callverify_http_connections_dropped_total HTTP connections closed to \
                 protect the others: `shed` (idle longest when all slots were taken), `refused` \
                 (every connection busy), `accept_error`."
            )?;
            writeln!(
                out,
                "# TYPE callverify_http_connections_dropped_total counter"
            )?;
            for (reason, n) in [
                ("shed", &self.http_shed),
                ("refused", &self.http_refused),
                ("accept_error", &self.http_accept_errors),
            ] {
                writeln!(
                    out,
                    "callverify_http_connections_dropped_total{{reason=\"{reason}\"}} {}",
                    load(n)
                )?;
            }
            writeln!(
                out,
                "# HELP callverify_dialer_overload_waits_total Times the dialer claimed no \
                 verification because every SIP shard's timers fired late (100 ms each)."
            )?;
            writeln!(out, "# TYPE callverify_dialer_overload_waits_total counter")?;
            writeln!(
                out,
                "callverify_dialer_overload_waits_total {}",
                load(&self.dialer_deferred)
            )?;
            Ok(())
        })();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        m.detector_latency(Duration::from_millis(30));
        m.detector_latency(Duration::from_millis(250));
        let text = m.render(3);
        assert!(text.contains("callverify_dtmf_detector_latency_seconds_bucket{le=\"0.04\"} 1"));
        assert!(text.contains("callverify_dtmf_detector_latency_seconds_bucket{le=\"0.3\"} 2"));
        assert!(text.contains("callverify_dtmf_detector_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("callverify_queue_depth 3"));
        assert!(text.contains("callverify_sip_dropped_total{reason=\"untrusted_source\"} 0"));
    }

    #[test]
    fn sip_drops_by_reason() {
        let m = Metrics::new();
        let sip = Arc::new(SipCounters::new());
        m.attach_sip(Arc::clone(&sip));
        sip.sip_dropped(Dropped::of(&sip::InputError::UntrustedSource));
        sip.sip_dropped(Dropped::RateLimited);
        sip.sip_dropped(Dropped::RateLimited);
        sip.rtp_dropped(Dropped::ChannelFull);
        let text = m.render(0);
        assert!(text.contains("callverify_sip_dropped_total{reason=\"untrusted_source\"} 1"));
        assert!(text.contains("callverify_sip_dropped_total{reason=\"rate_limited\"} 2"));
        assert!(text.contains("callverify_sip_dropped_total{reason=\"cseq\"} 0"));
        assert!(text.contains("callverify_rtp_dropped_total{reason=\"channel_full\"} 1"));
    }
}

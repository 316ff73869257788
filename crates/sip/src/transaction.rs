//! RFC 3261 §17 transactions (with the RFC 6026 Accepted states), driven by `now`.
//!
//! ```text
//!  client INVITE      Calling --1xx--> Proceeding --2xx--> Accepted --M--> Terminated
//!   (A,B,D,M)            |  \--300-699 (send ACK)--> Completed --D--> Terminated
//!                        \--B (Calling only)--> timeout
//!  client non-INVITE  Trying --1xx--> Proceeding --final--> Completed --K--> Terminated
//!   (E,F,K)              \--F--> timeout
//!  server INVITE      Proceeding --2xx--> Accepted --L--> Terminated
//!   (G,H,I,L)            \--300-699--> Completed --ACK--> Confirmed --I--> Terminated
//!                                        \--H--> timeout (no ACK)
//!  server non-INVITE  Trying --1xx--> Proceeding --final--> Completed --J--> Terminated
//! ```
//! The transactions know nothing of dialogs or calls: they take a message or `now` and say
//! what to send, what to pass up, and whether they timed out.

use std::time::{Duration, Instant};

use crate::message::{HeaderAccess, Method, Request, Response};
use crate::timer::{TIMER_D_UNRELIABLE, Timer, TimerConfig, TimerTable};

/// What a transaction asks of the user agent core.
#[derive(Debug)]
pub(crate) enum TxOutput {
    /// Send these bytes to the transaction's peer.
    Send(Vec<u8>),
    /// Pass a response up (client transactions).
    Deliver(Response),
    /// Timer B/F (client) or H (server) fired: the far end never answered.
    Timeout,
}

/// Client transaction state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientState {
    /// INVITE: Calling; non-INVITE: Trying.
    Calling,
    Proceeding,
    Completed,
    /// RFC 6026: a 2xx was received; further 2xx are passed up.
    Accepted,
    Terminated,
}

/// A client transaction (INVITE or non-INVITE).
#[derive(Debug)]
pub(crate) struct ClientTx {
    pub(crate) request: Request,
    pub(crate) state: ClientState,
    bytes: Vec<u8>,
    ack: Option<Vec<u8>>,
    reliable: bool,
    interval: Duration,
    timers: TimerTable,
    cfg: TimerConfig,
}

impl ClientTx {
    /// Starts the transaction; the caller sends the returned bytes.
    pub(crate) fn start(
        now: Instant,
        request: Request,
        reliable: bool,
        cfg: TimerConfig,
    ) -> (Self, Vec<u8>) {
        let bytes = request.to_bytes();
        let mut timers = TimerTable::default();
        let invite = request.method == Method::Invite;
        let (retransmit, timeout) = if invite {
            (Timer::A, Timer::B)
        } else {
            (Timer::E, Timer::F)
        };
        if !reliable {
            timers.set(retransmit, now + cfg.t1);
        }
        timers.set(timeout, now + cfg.timeout());
        let tx = Self {
            request,
            state: ClientState::Calling,
            bytes: bytes.clone(),
            ack: None,
            reliable,
            interval: cfg.t1,
            timers,
            cfg,
        };
        (tx, bytes)
    }

    fn is_invite(&self) -> bool {
        self.request.method == Method::Invite
    }

    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub(crate) fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// A response matched this transaction (RFC 3261 §17.1.3).
    pub(crate) fn on_response(
        &mut self,
        now: Instant,
        response: Response,
        out: &mut Vec<TxOutput>,
    ) {
        let status = response.status;
        if self.is_invite() {
            match (self.state, status) {
                (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                    self.state = ClientState::Proceeding;
                    self.timers.stop(Timer::A);
                    // Timer B only guards the Calling state (§17.1.1.2); ringing is the TU's business.
                    self.timers.stop(Timer::B);
                    out.push(TxOutput::Deliver(response));
                }
                (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                    self.state = ClientState::Accepted;
                    self.timers.stop_all();
                    self.timers.set(Timer::M, now + self.cfg.timeout());
                    out.push(TxOutput::Deliver(response));
                }
                (ClientState::Accepted, 200..=299) => out.push(TxOutput::Deliver(response)),
                (ClientState::Calling | ClientState::Proceeding, _) if status >= 300 => {
                    let ack = self.non_2xx_ack(&response);
                    out.push(TxOutput::Send(ack.clone()));
                    self.ack = Some(ack);
                    self.state = ClientState::Completed;
                    self.timers.stop_all();
                    let wait = if self.reliable {
                        Duration::ZERO
                    } else {
                        TIMER_D_UNRELIABLE
                    };
                    self.timers.set(Timer::D, now + wait);
                    out.push(TxOutput::Deliver(response));
                }
                (ClientState::Completed, 300..) => {
                    if let Some(ack) = &self.ack {
                        out.push(TxOutput::Send(ack.clone()));
                    }
                }
                _ => {}
            }
        } else {
            match (self.state, status) {
                (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                    self.state = ClientState::Proceeding;
                    out.push(TxOutput::Deliver(response));
                }
                (ClientState::Calling | ClientState::Proceeding, 200..) => {
                    self.state = ClientState::Completed;
                    self.timers.stop_all();
                    let wait = if self.reliable {
                        Duration::ZERO
                    } else {
                        self.cfg.t4
                    };
                    self.timers.set(Timer::K, now + wait);
                    out.push(TxOutput::Deliver(response));
                }
                _ => {}
            }
        }
    }

    /// ACK for a non-2xx final response, built by the transaction (RFC 3261 §17.1.1.3).
    fn non_2xx_ack(&self, response: &Response) -> Vec<u8> {
        let orig = &self.request;
        let mut ack = Request::new(Method::Ack, orig.uri.clone());
        if let Some(via) = orig.headers.list("Via").next() {
            ack.headers.push("Via", via);
        }
        if let Some(mf) = orig.headers.get("Max-Forwards") {
            ack.headers.push("Max-Forwards", mf);
        }
        for route in orig.headers.get_all("Route") {
            ack.headers.push("Route", route);
        }
        if let Some(v) = orig.headers.get("From") {
            ack.headers.push("From", v);
        }
        let to = response
            .headers
            .get("To")
            .or(orig.headers.get("To"))
            .unwrap_or_default();
        ack.headers.push("To", to);
        if let Some(v) = orig.headers.get("Call-ID") {
            ack.headers.push("Call-ID", v);
        }
        let seq = orig.cseq().map(|c| c.seq).unwrap_or(1);
        ack.headers.push("CSeq", format!("{seq} ACK"));
        ack.to_bytes()
    }

    /// Fires due timers.
    pub(crate) fn on_timeout(&mut self, now: Instant, out: &mut Vec<TxOutput>) {
        while let Some(timer) = self.timers.pop_expired(now) {
            match timer {
                Timer::A if self.state == ClientState::Calling => {
                    out.push(TxOutput::Send(self.bytes.clone()));
                    // INVITE retransmissions double without a cap (§17.1.1.2).
                    self.interval = self.interval.saturating_mul(2);
                    self.timers.set(Timer::A, now + self.interval);
                }
                Timer::E
                    if matches!(self.state, ClientState::Calling | ClientState::Proceeding) =>
                {
                    out.push(TxOutput::Send(self.bytes.clone()));
                    self.interval = if self.state == ClientState::Proceeding {
                        self.cfg.t2
                    } else {
                        self.interval.saturating_mul(2).min(self.cfg.t2)
                    };
                    self.timers.set(Timer::E, now + self.interval);
                }
                Timer::B | Timer::F => {
                    self.state = ClientState::Terminated;
                    self.timers.stop_all();
                    out.push(TxOutput::Timeout);
                }
                Timer::D | Timer::K | Timer::M => {
                    self.state = ClientState::Terminated;
                    self.timers.stop_all();
                }
                _ => {}
            }
        }
    }
}

/// Server transaction state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerState {
    /// Non-INVITE: Trying. INVITE starts in Proceeding.
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    /// RFC 6026: a 2xx was sent; the TU retransmits it until ACK.
    Accepted,
    Terminated,
}

/// A server transaction (INVITE or non-INVITE).
#[derive(Debug)]
pub(crate) struct ServerTx {
    pub(crate) request: Request,
    pub(crate) state: ServerState,
    last_response: Option<Vec<u8>>,
    reliable: bool,
    interval: Duration,
    timers: TimerTable,
    cfg: TimerConfig,
}

impl ServerTx {
    pub(crate) fn new(request: Request, reliable: bool, cfg: TimerConfig) -> Self {
        let state = if request.method == Method::Invite {
            ServerState::Proceeding
        } else {
            ServerState::Trying
        };
        Self {
            request,
            state,
            last_response: None,
            reliable,
            interval: cfg.t1,
            timers: TimerTable::default(),
            cfg,
        }
    }

    fn is_invite(&self) -> bool {
        self.request.method == Method::Invite
    }

    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub(crate) fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// Whether a final response was sent.
    pub(crate) fn is_final(&self) -> bool {
        !matches!(self.state, ServerState::Trying | ServerState::Proceeding)
    }

    /// The same request arrived again: resend the last response if the state says so.
    pub(crate) fn on_retransmission(&mut self) -> Option<Vec<u8>> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self.last_response.clone(),
            _ => None,
        }
    }

    /// An ACK matched this INVITE transaction (non-2xx case). Returns true when absorbed.
    pub(crate) fn on_ack(&mut self, now: Instant) -> bool {
        match self.state {
            ServerState::Completed => {
                self.state = ServerState::Confirmed;
                self.timers.stop(Timer::G);
                self.timers.stop(Timer::H);
                let wait = if self.reliable {
                    Duration::ZERO
                } else {
                    self.cfg.t4
                };
                self.timers.set(Timer::I, now + wait);
                true
            }
            ServerState::Confirmed => true,
            _ => false,
        }
    }

    /// The TU responds; returns the bytes to send (None if the state forbids responding).
    pub(crate) fn respond(&mut self, now: Instant, response: &Response) -> Option<Vec<u8>> {
        if self.is_final() {
            // Only the Accepted state may resend its 2xx (passed down by the TU).
            return (self.state == ServerState::Accepted && response.status / 100 == 2)
                .then(|| response.to_bytes());
        }
        let bytes = response.to_bytes();
        self.last_response = Some(bytes.clone());
        match (self.is_invite(), response.status) {
            (_, 100..=199) => {
                if self.state == ServerState::Trying {
                    self.state = ServerState::Proceeding;
                }
            }
            (true, 200..=299) => {
                self.state = ServerState::Accepted;
                self.timers.set(Timer::L, now + self.cfg.timeout());
            }
            (true, _) => {
                self.state = ServerState::Completed;
                if !self.reliable {
                    self.timers.set(Timer::G, now + self.cfg.t1);
                }
                self.timers.set(Timer::H, now + self.cfg.timeout());
            }
            (false, _) => {
                self.state = ServerState::Completed;
                let wait = if self.reliable {
                    Duration::ZERO
                } else {
                    self.cfg.timeout()
                };
                self.timers.set(Timer::J, now + wait);
            }
        }
        Some(bytes)
    }

    /// Fires due timers.
    pub(crate) fn on_timeout(&mut self, now: Instant, out: &mut Vec<TxOutput>) {
        while let Some(timer) = self.timers.pop_expired(now) {
            match timer {
                Timer::G if self.state == ServerState::Completed => {
                    if let Some(bytes) = &self.last_response {
                        out.push(TxOutput::Send(bytes.clone()));
                    }
                    self.interval = self.interval.saturating_mul(2).min(self.cfg.t2);
                    self.timers.set(Timer::G, now + self.interval);
                }
                Timer::H => {
                    self.state = ServerState::Terminated;
                    self.timers.stop_all();
                    out.push(TxOutput::Timeout);
                }
                Timer::I | Timer::J | Timer::L => {
                    self.state = ServerState::Terminated;
                    self.timers.stop_all();
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Uri;

    fn request(method: Method) -> Request {
        let mut r = Request::new(method.clone(), Uri::parse("sip:bob@127.0.0.1").unwrap());
        r.headers
            .push("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1");
        r.headers.push("From", "<sip:a@127.0.0.1>;tag=1");
        r.headers.push("To", "<sip:bob@127.0.0.1>");
        r.headers.push("Call-ID", "c");
        r.headers.push("CSeq", format!("1 {method}"));
        r
    }

    fn response(status: u16) -> Response {
        let mut r = Response::new(status);
        r.headers.push("To", "<sip:bob@127.0.0.1>;tag=2");
        r
    }

    fn sends(out: &[TxOutput]) -> usize {
        out.iter()
            .filter(|o| matches!(o, TxOutput::Send(_)))
            .count()
    }

    #[test]
    fn invite_client_timer_a_doubles_and_b_times_out() {
        let t0 = Instant::now();
        let cfg = TimerConfig::default();
        let (mut tx, _) = ClientTx::start(t0, request(Method::Invite), false, cfg);
        let mut out = Vec::new();
        // Retransmits at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; B fires at 32 s.
        let mut at = Vec::new();
        let mut now = t0;
        while let Some(next) = tx.next_timeout() {
            now = next;
            let before = out.len();
            tx.on_timeout(now, &mut out);
            if sends(&out[before..]) > 0 {
                at.push((now - t0).as_millis());
            }
        }
        assert_eq!(at, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert!(matches!(out.last(), Some(TxOutput::Timeout)));
        assert_eq!(now - t0, Duration::from_secs(32));
    }

    #[test]
    fn invite_client_non_2xx_acks_and_absorbs_retransmits() {
        let t0 = Instant::now();
        let (mut tx, _) =
            ClientTx::start(t0, request(Method::Invite), false, TimerConfig::default());
        let mut out = Vec::new();
        tx.on_response(t0, response(486), &mut out);
        assert_eq!(sends(&out), 1);
        let TxOutput::Send(ack) = &out[0] else {
            panic!()
        };
        let ack = String::from_utf8_lossy(ack);
        assert!(ack.starts_with("ACK sip:bob@127.0.0.1 SIP/2.0\r\n"));
        assert!(ack.contains("CSeq: 1 ACK\r\n") && ack.contains("tag=2"));
        out.clear();
        tx.on_response(t0, response(486), &mut out);
        assert_eq!(
            sends(&out),
            1,
            "retransmitted 486 gets the ACK again, not passed up"
        );
        assert_eq!(out.len(), 1);
        tx.on_timeout(t0 + Duration::from_secs(32), &mut out);
        assert!(tx.is_terminated());
    }

    #[test]
    fn reliable_transport_skips_retransmits_and_waits() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientTx::start(t0, request(Method::Bye), true, TimerConfig::default());
        assert_eq!(tx.next_timeout(), Some(t0 + Duration::from_secs(32)));
        let mut out = Vec::new();
        tx.on_response(t0, response(200), &mut out);
        assert_eq!(
            tx.next_timeout(),
            Some(t0),
            "Timer K is zero on reliable transports"
        );
        tx.on_timeout(t0, &mut out);
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_client_e_caps_at_t2() {
        let t0 = Instant::now();
        let (mut tx, _) = ClientTx::start(t0, request(Method::Bye), false, TimerConfig::default());
        let mut out = Vec::new();
        let mut at = Vec::new();
        while let Some(next) = tx.next_timeout() {
            let before = out.len();
            tx.on_timeout(next, &mut out);
            if sends(&out[before..]) > 0 {
                at.push((next - t0).as_millis());
            }
        }
        assert_eq!(at[..6], [500, 1500, 3500, 7500, 11500, 15500]);
        assert!(matches!(out.last(), Some(TxOutput::Timeout)));
    }

    #[test]
    fn server_invite_g_h_and_ack() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(request(Method::Invite), false, TimerConfig::default());
        assert!(tx.respond(t0, &response(486)).is_some());
        let mut out = Vec::new();
        tx.on_timeout(t0 + Duration::from_millis(500), &mut out);
        tx.on_timeout(t0 + Duration::from_millis(1500), &mut out);
        assert_eq!(sends(&out), 2);
        assert!(tx.on_ack(t0 + Duration::from_secs(2)));
        assert_eq!(tx.state, ServerState::Confirmed);
        tx.on_timeout(t0 + Duration::from_secs(7), &mut out);
        assert!(tx.is_terminated());

        let mut tx = ServerTx::new(request(Method::Invite), false, TimerConfig::default());
        tx.respond(t0, &response(603));
        let mut out = Vec::new();
        tx.on_timeout(t0 + Duration::from_secs(32), &mut out);
        assert!(
            out.iter().any(|o| matches!(o, TxOutput::Timeout)),
            "Timer H"
        );
    }

    #[test]
    fn server_non_invite_j_and_retransmission() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(request(Method::Bye), false, TimerConfig::default());
        assert_eq!(tx.on_retransmission(), None);
        tx.respond(t0, &response(200));
        assert!(tx.on_retransmission().is_some());
        let mut out = Vec::new();
        tx.on_timeout(t0 + Duration::from_secs(32), &mut out);
        assert!(tx.is_terminated());
    }
}

//! SRTP (RFC 3711) for a call keyed by SDES (RFC 4568): protects what a [`Session`] sends and
//! unprotects what it receives, before the receive path sees a byte.
//!
//! The cryptography is `rtc-srtp` (the webrtc-rs project's sans-IO SRTP, see Cargo.toml);
//! this module owns the policy around it:
//!
//! * one outbound context keyed with *our* master key (RTP and our RTCP reports), one inbound
//!   keyed with the *far end's*;
//! * replay protection on receive (a 64-packet window, RFC 3711 §3.3.2), authentication before
//!   anything is decrypted, failures dropped and counted, never passed on;
//! * a bound on the SSRCs a stranger can make us keep state for: state for an SSRC is kept
//!   only once one of its packets authenticated, and at most [`MAX_SSRCS`] of them.
//!
//! Keys come in from outside (the runtime draws them from a CSPRNG); nothing here is random.
//! Key material lives in [`MasterKey`], whose `Debug` prints no byte and which is wiped on drop.
//!
//! [`Session`]: crate::Session

use std::fmt;

use rtc_srtp::context::Context;
use rtc_srtp::crypto::providers::RingCrypto;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;
use zeroize::Zeroize;

/// Master key length of the AES_CM_128 suites, bytes (RFC 3711 §8.2: 128-bit master key).
pub const MASTER_KEY_LEN: usize = 16;
/// Master salt length, bytes (RFC 3711 §8.2: 112-bit master salt).
pub const MASTER_SALT_LEN: usize = 14;
/// Key and salt concatenated, as SDES carries them in `inline:` (RFC 4568 §6.1).
pub const KEY_MATERIAL_LEN: usize = MASTER_KEY_LEN + MASTER_SALT_LEN;
/// Replay window, packets (RFC 3711 §3.3.2: "SHOULD be at least 64"). Our reorder buffer
/// waits 60 ms (three packets), so anything older than 64 packets is a replay, not a late one.
pub const REPLAY_WINDOW: usize = 64;
/// Far-end SSRCs we keep SRTP state for (a call has one or two: sipp sends events on a second).
/// A packet from a further SSRC is dropped even when it authenticates.
pub const MAX_SSRCS: usize = 4;
/// The fixed RTP header, bytes (RFC 3550 §5.1).
const RTP_HEADER_LEN: usize = 12;

/// The SRTP crypto suites we offer and accept (RFC 4568 §6.2; both are RFC 3711 §5 defaults,
/// differing only in the length of the authentication tag on RTP).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 tag of 80 bits (RFC 4568 §6.2.1).
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 tag of 32 bits on RTP, 80 on RTCP (RFC 4568 §6.2.2).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// Both, in the order we prefer them (the longer tag first).
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    /// The SDES name (`a=crypto` crypto-suite, RFC 4568 §6.2).
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite named `name` (case-sensitive, as RFC 4568 §9.2 registers them).
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Length of the authentication tag on SRTP packets, bytes.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An SRTP master key and master salt (RFC 3711 §8.2), a secret: `Debug` shows no byte, there
/// is no `Display`, and the bytes are wiped when the value is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; KEY_MATERIAL_LEN]);

impl MasterKey {
    /// Key (16 bytes) then salt (14 bytes), as SDES concatenates them.
    pub fn new(material: [u8; KEY_MATERIAL_LEN]) -> MasterKey {
        MasterKey(material)
    }

    /// The key and salt bytes, to put on the wire (an SDES `inline:`) or into a cipher.
    pub fn expose(&self) -> &[u8; KEY_MATERIAL_LEN] {
        &self.0
    }

    fn key(&self) -> &[u8] {
        &self.0[..MASTER_KEY_LEN]
    }

    fn salt(&self) -> &[u8] {
        &self.0[MASTER_KEY_LEN..]
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// How one call's media is protected: the suite both sides agreed on, our key (protects what
/// we send) and the far end's (protects what it sends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrtpConfig {
    pub suite: Suite,
    /// Ours: the key we offered (or answered with) for `suite`.
    pub local: MasterKey,
    /// The far end's, from its SDP.
    pub remote: MasterKey,
}

/// Why a received datagram was not accepted. The sender (or someone on the path) is at fault.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnprotectError {
    /// Too short or not RTP (version 2) at all.
    #[error("not an SRTP packet")]
    Malformed,
    /// The authentication tag does not match: forged, corrupted, or keyed with another key.
    #[error("SRTP authentication failed")]
    AuthFailed,
    /// A packet index already seen, or older than the replay window (RFC 3711 §3.3.2).
    #[error("SRTP replay")]
    Replayed,
    /// An authentic packet from an SSRC beyond [`MAX_SSRCS`].
    #[error("too many SRTP sources")]
    TooManySources,
}

/// Why a packet of ours could not be protected (local: our own packet is malformed, or the
/// key has protected 2^48 packets, RFC 3711 §9.2).
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot protect this packet with SRTP")]
pub struct ProtectError;

/// SRTP counters of one call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SrtpStats {
    /// Packets protected and sent (RTP and RTCP).
    pub protected: u64,
    /// Packets received that authenticated and were passed on.
    pub unprotected: u64,
    /// Received packets whose tag did not verify (dropped).
    pub auth_failures: u64,
    /// Received replays (dropped).
    pub replays: u64,
    /// Received datagrams too short or not RTP (dropped).
    pub malformed: u64,
    /// Authentic packets from SSRCs beyond [`MAX_SSRCS`] (dropped).
    pub too_many_sources: u64,
}

/// The SRTP state of one call.
pub struct Srtp {
    suite: Suite,
    remote: MasterKey,
    outbound: Context,
    /// Inbound contexts of the SSRCs that authenticated, in arrival order.
    inbound: Vec<(u32, Context)>,
    /// A fresh inbound context for a packet from an SSRC not seen yet; kept only when that
    /// packet authenticates, rebuilt after a failure (so a stranger's SSRCs leave no state).
    probe: Option<Context>,
    stats: SrtpStats,
}

impl fmt::Debug for Srtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Srtp")
            .field("suite", &self.suite)
            .field("ssrcs", &self.inbound.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn context(suite: Suite, key: &MasterKey) -> Context {
    // Infallible by construction: the key and salt lengths are fixed by `MasterKey` to what
    // the AES_CM_128 profiles take, and the ring provider implements AES-CTR and HMAC-SHA1
    // (checked by `srtp::tests::every_suite_builds`).
    Context::new(
        key.key(),
        key.salt(),
        suite.profile(),
        Some(srtp_replay_protection(REPLAY_WINDOW)),
        Some(srtcp_replay_protection(REPLAY_WINDOW)),
        &RingCrypto,
    )
    .expect("AES_CM_128 contexts build from 30 bytes of key material")
}

impl Srtp {
    /// SRTP for one call.
    pub fn new(config: &SrtpConfig) -> Srtp {
        Srtp {
            suite: config.suite,
            remote: config.remote.clone(),
            outbound: context(config.suite, &config.local),
            inbound: Vec::new(),
            probe: None,
            stats: SrtpStats::default(),
        }
    }

    /// The suite in use.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Counters so far.
    pub fn stats(&self) -> &SrtpStats {
        &self.stats
    }

    /// Protects one RTP packet of ours (RFC 3711 §3.3): payload encrypted, tag appended. Our
    /// packets have the fixed 12-byte header only (no CSRC, extension or padding); anything
    /// else is refused (rtc-srtp 0.21 would index past a header longer than the packet).
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, ProtectError> {
        if packet.len() < RTP_HEADER_LEN || packet[0] != 0x80 {
            return Err(ProtectError);
        }
        let out = self
            .outbound
            .encrypt_rtp(packet)
            .map_err(|_| ProtectError)?;
        self.stats.protected += 1;
        Ok(out.to_vec())
    }

    /// Protects one compound RTCP packet of ours (RFC 3711 §3.4: SRTCP is always
    /// authenticated; we always encrypt).
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, ProtectError> {
        let out = self
            .outbound
            .encrypt_rtcp(packet)
            .map_err(|_| ProtectError)?;
        self.stats.protected += 1;
        Ok(out.to_vec())
    }

    /// Authenticates, replay-checks and decrypts one received datagram; the plain RTP packet.
    /// Every refusal is counted in [`Srtp::stats`].
    pub fn unprotect_rtp(&mut self, datagram: &[u8]) -> Result<Vec<u8>, UnprotectError> {
        let result = self.unprotect(datagram);
        match result {
            Ok(_) => self.stats.unprotected += 1,
            Err(UnprotectError::Malformed) => self.stats.malformed += 1,
            Err(UnprotectError::AuthFailed) => self.stats.auth_failures += 1,
            Err(UnprotectError::Replayed) => self.stats.replays += 1,
            Err(UnprotectError::TooManySources) => self.stats.too_many_sources += 1,
        }
        result
    }

    fn unprotect(&mut self, datagram: &[u8]) -> Result<Vec<u8>, UnprotectError> {
        // RTP version 2 (RFC 3550 §5.1), a header and at least the shortest tag.
        if datagram.len() < RTP_HEADER_LEN + self.suite.rtp_tag_len() || datagram[0] >> 6 != 2 {
            return Err(UnprotectError::Malformed);
        }
        let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
        if let Some((_, ctx)) = self.inbound.iter_mut().find(|(s, _)| *s == ssrc) {
            return decrypt(ctx, datagram);
        }
        let mut probe = match self.probe.take() {
            Some(ctx) => ctx,
            None => context(self.suite, &self.remote),
        };
        let plain = decrypt(&mut probe, datagram);
        // A failed probe may hold state for the stranger's SSRC: it is dropped here and a
        // fresh one is built for the next unknown SSRC.
        if plain.is_ok() {
            if self.inbound.len() >= MAX_SSRCS {
                self.probe = Some(context(self.suite, &self.remote));
                return Err(UnprotectError::TooManySources);
            }
            self.inbound.push((ssrc, probe));
        }
        plain
    }
}

fn decrypt(ctx: &mut Context, datagram: &[u8]) -> Result<Vec<u8>, UnprotectError> {
    use rtc_shared::error::Error as E;
    match ctx.decrypt_rtp(datagram) {
        Ok(plain) => Ok(plain.to_vec()),
        Err(E::SrtpSsrcDuplicated(..) | E::ErrDuplicated) => Err(UnprotectError::Replayed),
        Err(E::RtpFailedToVerifyAuthTag | E::ErrFailedToVerifyAuthTag) => {
            Err(UnprotectError::AuthFailed)
        }
        Err(_) => Err(UnprotectError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key and packets of libsrtp's own known-answer test (`srtp_validate` in
    /// test/srtp_driver.c), checked on this machine against Debian's libsrtp2 2.5.0.
    const KAT_KEY: [u8; 30] = [
        0xe1, 0xf9, 0x7a, 0x0d, 0x3e, 0x01, 0x8b, 0xe0, 0xd6, 0x4f, 0xa3, 0x2c, 0x06, 0xde, 0x41,
        0x39, 0x0e, 0xc6, 0x75, 0xad, 0x49, 0x8a, 0xfe, 0xeb, 0xb6, 0x96, 0x0b, 0x3a, 0xab, 0xe6,
    ];

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn plain() -> Vec<u8> {
        let mut p = hex("800f1234decafbadcafebabe");
        p.extend([0xab; 16]);
        p
    }

    fn pair(suite: Suite) -> (Srtp, Srtp) {
        let a = MasterKey::new(KAT_KEY);
        let mut b = KAT_KEY;
        b[0] ^= 0xff;
        let b = MasterKey::new(b);
        let ours = Srtp::new(&SrtpConfig {
            suite,
            local: a.clone(),
            remote: b.clone(),
        });
        let theirs = Srtp::new(&SrtpConfig {
            suite,
            local: b,
            remote: a,
        });
        (ours, theirs)
    }

    #[test]
    fn every_suite_builds() {
        for suite in Suite::ALL {
            let _ = pair(suite);
            assert_eq!(Suite::from_name(suite.name()), Some(suite));
        }
        assert_eq!(Suite::from_name("AES_CM_128_HMAC_SHA1_80 "), None);
        assert_eq!(Suite::from_name("F8_128_HMAC_SHA1_80"), None);
    }

    #[test]
    fn libsrtp_known_answers() {
        let (mut ours, _) = pair(Suite::AesCm128HmacSha1_80);
        assert_eq!(
            ours.protect_rtp(&plain()).unwrap(),
            hex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb")
        );
        let (mut ours, _) = pair(Suite::AesCm128HmacSha1_32);
        assert_eq!(
            ours.protect_rtp(&plain()).unwrap(),
            hex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc")
        );
    }

    #[test]
    fn round_trip_replay_and_forgery() {
        for suite in Suite::ALL {
            let (mut ours, mut theirs) = pair(suite);
            let wire = ours.protect_rtp(&plain()).unwrap();
            assert_eq!(wire.len(), plain().len() + suite.rtp_tag_len());
            assert_ne!(&wire[12..28], &plain()[12..]);
            assert_eq!(theirs.unprotect_rtp(&wire), Ok(plain()));
            // The same packet again is a replay.
            assert_eq!(theirs.unprotect_rtp(&wire), Err(UnprotectError::Replayed));
            // One bit flipped anywhere: refused.
            for i in [1, 12, wire.len() - 1] {
                let mut bad = wire.clone();
                bad[i] ^= 0x01;
                bad[3] = bad[3].wrapping_add(1); // a fresh sequence number, not a replay
                assert_eq!(theirs.unprotect_rtp(&bad), Err(UnprotectError::AuthFailed));
            }
            // Keyed by ourselves (our own packet reflected back): refused.
            assert_eq!(
                ours.unprotect_rtp(&wire),
                Err(UnprotectError::AuthFailed),
                "our key must not authenticate on receive"
            );
            // Plain RTP (a fresh sequence number): refused.
            let mut clear = plain();
            clear[3] = 0x40;
            assert_eq!(
                theirs.unprotect_rtp(&clear),
                Err(UnprotectError::AuthFailed)
            );
            assert_eq!(
                theirs.unprotect_rtp(&[0x80; 5]),
                Err(UnprotectError::Malformed)
            );
            let s = theirs.stats();
            assert_eq!((s.unprotected, s.replays, s.auth_failures), (1, 1, 4));
            assert_eq!(s.malformed, 1);
        }
    }

    #[test]
    fn strangers_ssrcs_leave_no_state() {
        let (mut ours, mut theirs) = pair(Suite::AesCm128HmacSha1_80);
        for ssrc in 0..1000u32 {
            let mut forged = plain();
            forged[8..12].copy_from_slice(&ssrc.to_be_bytes());
            forged.extend([0; 10]);
            assert_eq!(
                theirs.unprotect_rtp(&forged),
                Err(UnprotectError::AuthFailed)
            );
        }
        assert!(theirs.inbound.is_empty());
        // Genuine sources: up to MAX_SSRCS, then refused even when authentic.
        for ssrc in 0..=MAX_SSRCS as u32 {
            let mut p = plain();
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            let r = theirs.unprotect_rtp(&ours.protect_rtp(&p).unwrap());
            if (ssrc as usize) < MAX_SSRCS {
                assert_eq!(r, Ok(p));
            } else {
                assert_eq!(r, Err(UnprotectError::TooManySources));
            }
        }
        assert_eq!(theirs.inbound.len(), MAX_SSRCS);
    }

    #[test]
    fn only_our_own_packet_shape_is_protected() {
        let (mut ours, _) = pair(Suite::AesCm128HmacSha1_80);
        // A CSRC count of 15 (a 72-byte header) in 14 bytes, an extension, padding: found by
        // the `sdes` fuzz target as a panic inside rtc-srtp; refused here.
        for first in [0x8f, 0x90, 0xa0, 0x00] {
            let mut p = plain();
            p[0] = first;
            assert_eq!(ours.protect_rtp(&p[..14]), Err(ProtectError));
        }
        assert_eq!(ours.protect_rtp(&[0x80; 11]), Err(ProtectError));
        assert!(ours.protect_rtp(&plain()[..12]).is_ok());
    }

    #[test]
    fn rtcp_is_authenticated_and_encrypted() {
        let (mut ours, _) = pair(Suite::AesCm128HmacSha1_32);
        let mut rr = hex("81c90007cafebabe");
        rr.extend([0xab; 24]);
        let wire = ours.protect_rtcp(&rr).unwrap();
        // Header and SSRC in clear, the rest encrypted, then E bit + index and an 80-bit tag
        // (RFC 3711 §3.4; the _32 suite shortens only the SRTP tag, RFC 4568 §6.2.2).
        assert_eq!(wire.len(), rr.len() + 4 + 10);
        assert_eq!(&wire[..8], &rr[..8]);
        assert_ne!(&wire[8..32], &rr[8..]);
        assert_eq!(wire[32] & 0x80, 0x80);
    }

    #[test]
    fn keys_never_print() {
        let k = MasterKey::new([0x41; 30]);
        let shown = format!("{k:?} {:?}", pair(Suite::AesCm128HmacSha1_80).0);
        assert!(!shown.contains("41") && !shown.contains("65"), "{shown}");
    }
}

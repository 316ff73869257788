//! The SRTP policy of a call (`media.srtp`): which keys go into the offer, and what the
//! answer's keys mean for the call.
//!
//! | policy | signalling | offer | answer without keys | answer with our tag and suite |
//! |---|---|---|---|---|
//! | off | any | plain `RTP/AVP` | plain RTP | (not offered: plain RTP) |
//! | offer | TLS | `RTP/AVP` + `a=crypto` (best effort) | plain RTP | SRTP |
//! | offer | UDP/TCP | plain `RTP/AVP` (keys over clear SIP protect nothing) | plain RTP | plain RTP |
//! | require | TLS | `RTP/SAVP` + `a=crypto` | refused: `unreachable` | SRTP |
//! | require | UDP/TCP | not placed ([`crate::SpecError::SrtpNeedsTls`]) | | |
//!
//! An answer whose `a=crypto` we did not offer (another tag or suite), that we cannot use, or
//! an `RTP/SAVP` answer without keys breaks offer/answer under either policy: the call is hung
//! up as `unreachable`, with the reason in the timeline.

use media::{MasterKey, SrtpConfig, Suite};
use sip::sdes::{CryptoError, CryptoSuite, LocalSdes, Sdes, SdesKey};
use sip::sdp::Negotiated;

/// `media.srtp` when not off.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SrtpPolicy {
    /// Offer keys (over TLS), accept a plain answer.
    Offer,
    /// Only SRTP over TLS: no TLS, no call; no keys in the answer, no call.
    Require,
}

/// SRTP for one call: the policy and our keys, one per suite, drawn by the runtime from a
/// CSPRNG (the flow draws nothing). Debug shows no key byte.
#[derive(Clone, Debug)]
pub struct Srtp {
    pub policy: SrtpPolicy,
    /// Our master key and salt for each of [`CryptoSuite::ALL`].
    pub keys: [SdesKey; 2],
}

/// What we offered, kept by the call until the answer.
#[derive(Clone, Debug)]
pub(crate) struct Offered {
    pub(crate) policy: SrtpPolicy,
    pub(crate) sdes: LocalSdes,
}

impl Offered {
    pub(crate) fn new(srtp: Srtp) -> Offered {
        Offered {
            sdes: LocalSdes {
                savp: srtp.policy == SrtpPolicy::Require,
                keys: srtp.keys,
            },
            policy: srtp.policy,
        }
    }
}

/// Why the answer's SRTP cannot be used. The far end broke offer/answer, or cannot meet our
/// policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SrtpRefusal {
    /// `media.srtp = "require"` and the answer carries no keys.
    #[error("the answer has no SRTP keys (media.srtp = \"require\")")]
    Required,
    /// An `RTP/SAVP` answer without any `a=crypto`.
    #[error("the answer is RTP/SAVP without SRTP keys")]
    SavpWithoutKeys,
    /// The answer's keys cannot be used.
    #[error("the answer's SRTP keys are unusable: {0}")]
    Unusable(CryptoError),
    /// The answer's `a=crypto` names a tag or suite we did not offer (RFC 4568 §7.1.3).
    #[error("the answer's SRTP keys answer nothing we offered (tag {tag}, {suite})")]
    NotOffered { tag: u32, suite: CryptoSuite },
}

/// The keys of the call's media after this answer (None: plain RTP), or why there is no call.
pub(crate) fn resolve(
    offered: Option<&Offered>,
    answer: &Negotiated,
) -> Result<Option<SrtpConfig>, SrtpRefusal> {
    let Some(offered) = offered else {
        return Ok(None);
    };
    match &answer.sdes {
        Sdes::Usable(theirs) => {
            if !offered.sdes.accepts(theirs) {
                return Err(SrtpRefusal::NotOffered {
                    tag: theirs.tag,
                    suite: theirs.suite,
                });
            }
            Ok(Some(SrtpConfig {
                suite: suite(theirs.suite),
                local: key(offered.sdes.key(theirs.suite)),
                remote: key(&theirs.key),
            }))
        }
        Sdes::Unusable(e) => Err(SrtpRefusal::Unusable(*e)),
        Sdes::Absent => match offered.policy {
            SrtpPolicy::Require => Err(SrtpRefusal::Required),
            SrtpPolicy::Offer if answer.savp => Err(SrtpRefusal::SavpWithoutKeys),
            SrtpPolicy::Offer => Ok(None),
        },
    }
}

fn suite(s: CryptoSuite) -> Suite {
    match s {
        CryptoSuite::AesCm128HmacSha1_80 => Suite::AesCm128HmacSha1_80,
        CryptoSuite::AesCm128HmacSha1_32 => Suite::AesCm128HmacSha1_32,
    }
}

fn key(k: &SdesKey) -> MasterKey {
    MasterKey::new(*k.expose())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip::sdes::Crypto;
    use sip::sdp::SessionDescription;

    fn offered(policy: SrtpPolicy) -> Offered {
        Offered::new(Srtp {
            policy,
            keys: [SdesKey::new([1; 30]), SdesKey::new([2; 30])],
        })
    }

    fn answer(proto: &str, crypto: Option<&str>) -> Negotiated {
        let mut sdp = format!("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 {proto} 0\r\n");
        if let Some(c) = crypto {
            sdp.push_str(&format!("a=crypto:{c}\r\n"));
        }
        SessionDescription::parse(sdp.as_bytes())
            .unwrap()
            .negotiate()
            .unwrap()
    }

    fn theirs(tag: u32, suite: CryptoSuite) -> String {
        Crypto {
            tag,
            suite,
            key: SdesKey::new([3; 30]),
        }
        .to_value()
    }

    #[test]
    fn the_policy_table() {
        use SrtpPolicy::*;
        let plain = answer("RTP/AVP", None);
        let c80 = theirs(1, CryptoSuite::AesCm128HmacSha1_80);
        let c32 = theirs(2, CryptoSuite::AesCm128HmacSha1_32);
        assert_eq!(resolve(None, &plain), Ok(None));
        assert_eq!(resolve(Some(&offered(Offer)), &plain), Ok(None));
        assert_eq!(
            resolve(Some(&offered(Require)), &plain),
            Err(SrtpRefusal::Required)
        );
        assert_eq!(
            resolve(Some(&offered(Offer)), &answer("RTP/SAVP", None)),
            Err(SrtpRefusal::SavpWithoutKeys)
        );
        for policy in [Offer, Require] {
            let got = resolve(Some(&offered(policy)), &answer("RTP/SAVP", Some(&c32)))
                .unwrap()
                .unwrap();
            assert_eq!(got.suite, Suite::AesCm128HmacSha1_32);
            assert_eq!(got.local, MasterKey::new([2; 30]), "our key for that suite");
            assert_eq!(got.remote, MasterKey::new([3; 30]));
            let got = resolve(Some(&offered(policy)), &answer("RTP/AVP", Some(&c80)))
                .unwrap()
                .unwrap();
            assert_eq!(got.local, MasterKey::new([1; 30]));
            // A tag we gave the other suite.
            let wrong = theirs(2, CryptoSuite::AesCm128HmacSha1_80);
            assert!(matches!(
                resolve(Some(&offered(policy)), &answer("RTP/SAVP", Some(&wrong))),
                Err(SrtpRefusal::NotOffered { tag: 2, .. })
            ));
            let unusable = "1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=";
            assert_eq!(
                resolve(Some(&offered(policy)), &answer("RTP/SAVP", Some(unusable))),
                Err(SrtpRefusal::Unusable(CryptoError::BadKey))
            );
        }
    }
}

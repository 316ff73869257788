//! Real messages captured on loopback with tshark from sipp 3.6.1, Kamailio 5.6.3 and
//! linphone 5.1.65 (recipes in the project's peers notes); literal bytes in, fields out.

use std::time::{Duration, Instant};

use sip::auth::{Algorithm, Challenge, Credentials, DigestRequest, Qop, authorization};
use sip::info::parse_dtmf_info;
use sip::message::{HeaderAccess, Limits, Message, Method};
use sip::redact::Secret;
use sip::sdp::{Codec, LocalMedia, SessionDescription};
use sip::{Config, Event, OutgoingCall, Transport, Uri, UserAgent};

const FIXTURES: &[(&str, &[u8])] = &[
    (
        "sipp_uac_invite",
        include_bytes!("data/sipp_uac_invite.sip"),
    ),
    ("sipp_uas_100", include_bytes!("data/sipp_uas_100.sip")),
    ("sipp_uas_180", include_bytes!("data/sipp_uas_180.sip")),
    (
        "sipp_uas_200_sdp",
        include_bytes!("data/sipp_uas_200_sdp.sip"),
    ),
    ("sipp_uac_ack", include_bytes!("data/sipp_uac_ack.sip")),
    ("sipp_uac_bye", include_bytes!("data/sipp_uac_bye.sip")),
    (
        "sipp_uas_bye_200",
        include_bytes!("data/sipp_uas_bye_200.sip"),
    ),
    (
        "kamailio_407_md5",
        include_bytes!("data/kamailio_407_md5.sip"),
    ),
    (
        "kamailio_407_sha256",
        include_bytes!("data/kamailio_407_sha256.sip"),
    ),
    (
        "sipp_invite_proxy_auth_md5",
        include_bytes!("data/sipp_invite_proxy_auth_md5.sip"),
    ),
    (
        "kamailio_200_record_route",
        include_bytes!("data/kamailio_200_record_route.sip"),
    ),
    ("sipp_ack_route", include_bytes!("data/sipp_ack_route.sip")),
    ("sipp_bye_route", include_bytes!("data/sipp_bye_route.sip")),
    (
        "linphone_200_sdp",
        include_bytes!("data/linphone_200_sdp.sip"),
    ),
    (
        "linphone_info_dtmf_relay",
        include_bytes!("data/linphone_info_dtmf_relay.sip"),
    ),
    (
        "linphone_bye_200",
        include_bytes!("data/linphone_bye_200.sip"),
    ),
];

fn parse(bytes: &[u8]) -> Message {
    Message::parse(bytes, &Limits::default()).unwrap()
}

fn fixture(name: &str) -> &'static [u8] {
    FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn every_capture_parses_and_prints_back_byte_exact() {
    for (name, bytes) in FIXTURES {
        let msg =
            Message::parse(bytes, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        // sipp pads Content-Length with spaces; everything else prints back byte for byte.
        let mut text =
            String::from_utf8_lossy(bytes).replace("Content-Length:   ", "Content-Length: ");
        // linphone omits Content-Length on empty UDP responses; we always write it (§20.14).
        if !text.contains("Content-Length:") {
            text = text.replacen("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n", 1);
        }
        assert_eq!(String::from_utf8_lossy(&msg.to_bytes()), text, "{name}");
    }
}

#[test]
fn sipp_invite_fields() {
    let Message::Request(r) = parse(fixture("sipp_uac_invite")) else {
        panic!()
    };
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.uri.as_str(), "sip:100@127.0.0.1:25060");
    assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bK-7180-1-0"));
    assert_eq!(r.header_from().unwrap().tag(), Some("7180SIPpTag001"));
    assert_eq!(
        r.header_from().unwrap().display.as_deref(),
        Some("verifier")
    );
    assert_eq!(r.header_to().unwrap().tag(), None);
    assert_eq!(r.cseq().unwrap().seq, 1);
    let offer = SessionDescription::parse(&r.body)
        .unwrap()
        .negotiate()
        .unwrap();
    assert_eq!(
        (offer.codec, offer.telephone_event_pt),
        (Codec::Pcmu, Some(101))
    );
    assert_eq!(offer.remote, Some("127.0.0.1:27000".parse().unwrap()));
}

#[test]
fn linphone_answer_without_telephone_event_and_its_info() {
    let Message::Response(r) = parse(fixture("linphone_200_sdp")) else {
        panic!()
    };
    assert_eq!((r.status, r.reason.as_str()), (200, "Ok"));
    let contact = r.contact().unwrap().unwrap();
    assert_eq!(contact.uri.as_str(), "sip:127.0.0.1:25090;transport=udp");
    let n = SessionDescription::parse(&r.body)
        .unwrap()
        .negotiate()
        .unwrap();
    assert_eq!((n.codec, n.telephone_event_pt), (Codec::Pcmu, None));
    let Message::Request(info) = parse(fixture("linphone_info_dtmf_relay")) else {
        panic!()
    };
    let d = parse_dtmf_info(&info.content_type().unwrap(), &info.body).unwrap();
    assert_eq!((d.key, d.duration), ('#', Some(Duration::from_millis(250))));
}

#[test]
fn sipp_md5_answer_to_kamailio_is_reproduced() {
    let Message::Response(c) = parse(fixture("kamailio_407_md5")) else {
        panic!()
    };
    let ch = Challenge::select(c.headers.get_all("Proxy-Authenticate")).unwrap();
    assert_eq!(
        (ch.algorithm, ch.qop, ch.realm.as_str()),
        (Algorithm::Md5, Some(Qop::Auth), "test.invalid")
    );
    let Message::Request(r) = parse(fixture("sipp_invite_proxy_auth_md5")) else {
        panic!()
    };
    let sent = r.headers.get("Proxy-Authorization").unwrap();
    assert!(sent.contains(&format!("nonce=\"{}\"", ch.nonce)));
    let creds = Credentials {
        username: "verifier".into(),
        password: Secret::new("s3cret"),
    };
    // sipp used a digest uri that is not the Request-URI; reproduce its exact inputs.
    let req = DigestRequest {
        method: "INVITE",
        uri: "sip:127.0.0.1:25100",
        body: b"",
        cnonce: "6b8b4567",
        nc: 1,
    };
    assert!(
        authorization(&ch, &creds, &req).contains("response=\"81240f06b23d6a25f005d532a3639f1c\"")
    );
}

#[test]
fn kamailio_200_with_record_route_sets_up_the_route_for_ack_and_bye() {
    let mut ua = UserAgent::new(Config::new("127.0.0.1:25070".parse().unwrap()), [1; 32]);
    let now = Instant::now();
    let call = ua.call(
        now,
        OutgoingCall {
            target: Uri::parse("sip:100@127.0.0.1:25100").unwrap(),
            from: Uri::parse("sip:verifier@127.0.0.1:25070").unwrap(),
            display_name: Some("verifier".into()),
            next_hop: "127.0.0.1:25100".parse().unwrap(),
            peers: Vec::new(),
            alternates: Vec::new(),
            transport: Transport::Udp,
            media: LocalMedia::new("127.0.0.1:27000".parse().unwrap(), 1),
            credentials: Some(Credentials {
                username: "verifier".into(),
                password: Secret::new("s3cret"),
            }),
        },
    );
    let invite = String::from_utf8(ua.poll_transmit().unwrap().payload).unwrap();
    let Message::Request(ours) = parse(invite.as_bytes()) else {
        panic!()
    };
    // Give the captured responses our transaction and dialog identifiers.
    let adapt = |captured: &[u8], ours: &sip::message::Request, cseq: u32| {
        let Message::Response(mut r) = parse(captured) else {
            panic!()
        };
        let mut h = sip::message::Headers::new();
        for x in r.headers.iter() {
            let v = match () {
                _ if x.is("Via") => ours.headers.get("Via").unwrap().to_string(),
                _ if x.is("From") => ours.headers.get("From").unwrap().to_string(),
                _ if x.is("Call-ID") => ours.call_id().unwrap().to_string(),
                _ if x.is("CSeq") => format!("{cseq} INVITE"),
                _ => x.value.clone(),
            };
            h.push(x.name.clone(), v);
        }
        r.headers = h;
        r.to_bytes()
    };
    let proxy = "127.0.0.1:25100".parse().unwrap();
    ua.handle_input(
        now,
        Transport::Udp,
        proxy,
        &adapt(fixture("kamailio_407_sha256"), &ours, 1),
    )
    .unwrap();
    let ack = String::from_utf8(ua.poll_transmit().unwrap().payload).unwrap();
    assert!(ack.starts_with("ACK sip:100@127.0.0.1:25100 SIP/2.0\r\n"));
    let t = ua.poll_transmit().unwrap();
    let retry = String::from_utf8(t.payload).unwrap();
    assert_eq!(t.destination, proxy);
    assert!(retry.contains("Proxy-Authorization: Digest username=\"verifier\", realm=\"test.invalid\", uri=\"sip:100@127.0.0.1:25100\", algorithm=SHA-256, nonce=\"awrQuGsK0HyJh/dtVibp5E29U3y837IG\", nc=00000001"));
    let Message::Request(retry) = parse(retry.as_bytes()) else {
        panic!()
    };
    ua.handle_input(
        now,
        Transport::Udp,
        proxy,
        &adapt(fixture("kamailio_200_record_route"), &retry, 2),
    )
    .unwrap();
    let t = ua.poll_transmit().unwrap();
    let ack = String::from_utf8(t.payload).unwrap();
    assert_eq!(
        t.destination, proxy,
        "ACK goes to the first Route (loose routing)"
    );
    assert!(
        ack.starts_with("ACK sip:127.0.0.1:25060;transport=UDP SIP/2.0\r\n"),
        "{ack}"
    );
    assert!(ack.contains("Route: <sip:127.0.0.1:25100;lr=on;ftag=7793SIPpTag001>\r\n"));
    assert!(ack.contains("CSeq: 2 ACK\r\n"));
    let events: Vec<Event> = std::iter::from_fn(|| ua.poll_event()).collect();
    let Some(Event::Answered { media, dialog, .. }) =
        events.iter().find(|e| matches!(e, Event::Answered { .. }))
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        media.as_ref().unwrap().remote,
        Some("127.0.0.1:26000".parse().unwrap())
    );
    assert_eq!(dialog.remote_tag, "7771SIPpTag011");
    ua.hangup(now, call).unwrap();
    let bye = String::from_utf8(ua.poll_transmit().unwrap().payload).unwrap();
    assert!(bye.starts_with("BYE sip:127.0.0.1:25060;transport=UDP SIP/2.0\r\n"));
    assert!(
        bye.contains("Route: <sip:127.0.0.1:25100;lr=on;ftag=7793SIPpTag001>\r\n")
            && bye.contains("CSeq: 3 BYE\r\n")
    );
}

//! Every outcome of a verification call on a simulated clock: the sip crate's user agent
//! plays the phone, a scripted media session reports keys and prompt ends.

mod common;

use std::time::Duration;

use common::*;
use flow::media::{DialMethod, DtmfMethod, PromptKind};
use flow::spec::Rules;
use flow::{CallResult, Event, Mode, TimelineEvent};

const LIMIT: Duration = Duration::from_secs(400);
/// The phone answers 2 s after the INVITE.
fn answering() -> Phone {
    Phone::Answer {
        ring: Duration::from_millis(100),
        answer: Duration::from_secs(2),
    }
}

fn prompts(sim: &Sim) -> Vec<PromptKind> {
    sim.script.borrow().played.iter().map(|p| p.1).collect()
}

#[test]
fn standard_confirmed_by_rfc4733() {
    let mut sim = Sim::new(answering());
    sim.key(3_500, '#', DtmfMethod::Rfc4733);
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Confirmed);
    assert_eq!(r.dtmf_method, Some(DtmfMethod::Rfc4733));
    assert_eq!(
        prompts(&sim),
        [
            PromptKind::Greeting,
            PromptKind::Thanks,
            PromptKind::Goodbye
        ]
    );
    let ev = events(&r);
    assert!(ev.contains(&TimelineEvent::Provisional { code: 180 }));
    assert!(ev.contains(&TimelineEvent::Answered));
    assert!(ev.contains(&TimelineEvent::Digit {
        digit: "#".into(),
        method: "rfc4733".into()
    }));
    assert!(ev.contains(&TimelineEvent::ByeSent));
    // Progress first, outcome last.
    let kinds: Vec<&Event> = sim.events.iter().map(|e| &e.1).collect();
    let ringing = kinds.iter().position(|e| **e == Event::Ringing).unwrap();
    let answered = kinds.iter().position(|e| **e == Event::Answered).unwrap();
    assert!(ringing < answered);
    assert!(matches!(kinds.last(), Some(Event::Finished(_))));
    assert!(kinds.iter().any(|e| matches!(e, Event::DetectorLatency(_))));
    // The media session was set up from the answer, and prompts went out as RTP.
    let setup = sim.script.borrow().setups[0].clone();
    assert_eq!(setup.remote, addr(PHONE_RTP));
    assert!(setup.telephone_event_pt.is_some());
    assert!(sim.rtp_sent >= 2);
    // The BYE was answered: the phone's side is over too.
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.received("SIP/2.0 200"), 2, "{:#?}", sim.sip_log);
}

#[test]
fn keys_before_the_prompt_and_within_the_guard_do_not_count() {
    let mut sim = Sim::new(answering());
    // Pressed while ringing (reported once media exists) and 0.3 s after answer.
    sim.key(1_000, '#', DtmfMethod::Inband);
    sim.key(2_300, '#', DtmfMethod::Inband);
    sim.key(4_000, '0', DtmfMethod::Inband);
    sim.key(4_500, '#', DtmfMethod::Inband);
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::FraudReported);
    assert_eq!(r.dtmf_method, Some(DtmfMethod::Inband));
    let ignored = events(&r)
        .into_iter()
        .filter(|e| matches!(e, TimelineEvent::DigitIgnored { .. }))
        .count();
    assert_eq!(ignored, 2, "{:#?}", r.timeline);
    assert_eq!(
        prompts(&sim),
        [
            PromptKind::Greeting,
            PromptKind::FraudAck,
            PromptKind::Goodbye
        ]
    );
}

#[test]
fn pin_match_mismatch_and_masking() {
    for (keys, expected) in [
        ("1234#", CallResult::Confirmed),
        ("1243#", CallResult::WrongDigits),
        ("#", CallResult::WrongDigits),
        ("0#", CallResult::FraudReported),
    ] {
        let mut sim = Sim::new(answering());
        for (i, k) in keys.chars().enumerate() {
            sim.key(4_000 + 500 * i as u64, k, DtmfMethod::Rfc4733);
        }
        sim.place(spec(Mode::Pin, Some("1234"), Rules::default()));
        let r = sim.run(LIMIT);
        assert_result(&r, expected);
        assert_eq!(prompts(&sim)[0], PromptKind::Pin);
        let shown: Vec<String> = events(&r)
            .into_iter()
            .filter_map(|e| match e {
                TimelineEvent::Digit { digit, .. } => Some(digit),
                _ => None,
            })
            .collect();
        assert!(shown.iter().all(|d| d == "*" || d == "#"), "{shown:?}");
        assert_eq!(shown.len(), keys.len());
        let json = serde_json::to_string(&r.timeline).unwrap();
        assert!(!json.contains("1234") && !json.contains("\"1\""), "{json}");
    }
}

#[test]
fn challenge_digits_then_pound() {
    let mut sim = Sim::new(answering());
    for (i, k) in "57#".chars().enumerate() {
        sim.key(5_000 + 400 * i as u64, k, DtmfMethod::Inband);
    }
    sim.place(spec(Mode::Challenge, Some("57"), Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Confirmed);
    assert_eq!(
        prompts(&sim),
        [
            PromptKind::Challenge,
            PromptKind::Thanks,
            PromptKind::Goodbye
        ]
    );
}

#[test]
fn no_input_after_one_replay() {
    let mut sim = Sim::new(answering());
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::NoInput);
    assert_eq!(r.dtmf_method, None);
    use PromptKind as P;
    assert_eq!(
        prompts(&sim),
        [P::Greeting, P::NoInput, P::Greeting, P::NoInput, P::Goodbye]
    );
    // Answer ~2 s, greeting 4 s, response 10 s, "no input" 4 s + greeting 4 s, response
    // 10 s, "no input" 4 s + goodbye 4 s, BYE.
    let played = sim.script.borrow().played.clone();
    let replay_at = played[1].0.as_secs_f64();
    assert!((replay_at - 16.0).abs() < 0.1, "{replay_at}");
    let outcome_at = r.timeline.last().unwrap().at_ms;
    assert!((42_000..42_200).contains(&outcome_at), "{outcome_at}");
    let timeouts = events(&r)
        .into_iter()
        .filter(|e| matches!(e, TimelineEvent::Timeout { timer } if timer == "response"))
        .count();
    assert_eq!(timeouts, 2);
}

#[test]
fn key_during_the_replay_confirms() {
    let mut sim = Sim::new(answering());
    // During the replayed greeting (after "no input" 16–20 s).
    sim.key(21_000, '#', DtmfMethod::Inband);
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Confirmed);
    use PromptKind as P;
    assert_eq!(
        prompts(&sim),
        [P::Greeting, P::NoInput, P::Greeting, P::Thanks, P::Goodbye]
    );
}

#[test]
fn inter_digit_timeout_gives_incomplete_input() {
    let mut sim = Sim::new(answering());
    sim.key(4_000, '1', DtmfMethod::Rfc4733);
    sim.key(6_500, '2', DtmfMethod::Rfc4733); // 2.5 s later: still within 3 s
    sim.place(spec(Mode::Pin, Some("1234"), Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::IncompleteInput);
    let out = r
        .timeline
        .iter()
        .find(|e| matches!(&e.event, TimelineEvent::Timeout { timer } if timer == "inter_digit"));
    assert_eq!(out.unwrap().at_ms, 9_500);
}

#[test]
fn far_end_hangs_up_during_the_prompt() {
    let mut sim = Sim::new(answering());
    sim.phone_at(3_000, Action::Hangup);
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::HungUp);
    assert!(events(&r).contains(&TimelineEvent::ByeReceived));
    assert_eq!(sim.sent("BYE"), 0);
}

#[test]
fn final_responses_map_to_results() {
    for (status, result) in [
        (486, CallResult::Busy),
        (600, CallResult::Busy),
        (603, CallResult::Rejected),
        (403, CallResult::Rejected),
        (404, CallResult::Unreachable),
        (484, CallResult::Unreachable),
        (503, CallResult::Unreachable),
        (500, CallResult::Unreachable),
        (480, CallResult::NoAnswer),
        (408, CallResult::NoAnswer),
        (487, CallResult::NoAnswer),
        (410, CallResult::Unreachable),
        (483, CallResult::Unreachable),
        (604, CallResult::Unreachable),
        (302, CallResult::Rejected),
        (488, CallResult::Rejected),
        (606, CallResult::Rejected),
    ] {
        let mut sim = Sim::new(Phone::Reject {
            status,
            after: Duration::from_secs(1),
        });
        sim.place(spec(Mode::Standard, None, Rules::default()));
        let r = sim.run(LIMIT);
        assert_result(&r, result);
        assert!(events(&r).contains(&TimelineEvent::Rejected { code: status }));
        assert!(
            r.timeline.last().unwrap().at_ms < 1_100,
            "{status}: reported late"
        );
        assert!(sim.script.borrow().setups.is_empty());
    }
}

#[test]
fn ring_timeout_cancels_no_answer() {
    let mut sim = Sim::new(Phone::RingForever);
    let rules = Rules {
        ring_timeout: Duration::from_secs(5),
        ..Rules::default()
    };
    sim.place(spec(Mode::Standard, None, rules));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::NoAnswer);
    assert_eq!(sim.sent("CANCEL"), 1);
    assert_eq!(sim.received("SIP/2.0 487"), 1, "{:#?}", sim.sip_log);
    let cancel = r
        .timeline
        .iter()
        .find(|e| e.event == TimelineEvent::CancelSent)
        .unwrap();
    assert_eq!(cancel.at_ms, 5_000);
    // Reported once the 487 arrived, not after the hang-up wait.
    assert!(r.timeline.last().unwrap().at_ms < 5_100);
}

#[test]
fn silent_trunk_is_unreachable() {
    // Ring timeout first (nothing at all came back): unreachable, not no_answer.
    let mut sim = Sim::new(Phone::Silent);
    sim.phone_mute = true;
    let rules = Rules {
        ring_timeout: Duration::from_secs(10),
        ..Rules::default()
    };
    sim.place(spec(Mode::Standard, None, rules));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Unreachable);
    assert!(events(&r).contains(&TimelineEvent::Timeout {
        timer: "ring".into()
    }));
    // Timer B first (64·T1 = 32 s < ring timeout).
    let mut sim = Sim::new(Phone::Silent);
    sim.phone_mute = true;
    let rules = Rules {
        ring_timeout: Duration::from_secs(60),
        ..Rules::default()
    };
    sim.place(spec(Mode::Standard, None, rules));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Unreachable);
    assert!(has(&r, |e| matches!(e, TimelineEvent::NoResponse { .. })));
    assert_eq!(r.timeline.last().unwrap().at_ms, 32_000);
    assert!(sim.sent("INVITE") > 5, "retransmitted (Timer A)");
}

#[test]
fn early_media_then_answer() {
    let mut sim = Sim::new(Phone::EarlyMediaThenAnswer {
        answer: Duration::from_secs(3),
    });
    // A key while in early media is never heard (no media session yet).
    sim.key(5_000, '#', DtmfMethod::Rfc4733);
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Confirmed);
    assert!(events(&r).contains(&TimelineEvent::Provisional { code: 183 }));
    assert!(sim.events.iter().any(|e| e.1 == Event::Ringing));
}

#[test]
fn extension_is_dialled_before_the_prompt() {
    let mut sim = Sim::new(answering());
    // During the dialling (ignored), then after the prompt started.
    sim.key(2_500, '#', DtmfMethod::Inband);
    sim.key(6_000, '#', DtmfMethod::Inband);
    let mut s = spec(Mode::Standard, None, Rules::default());
    s.extension = Some("12,3".into());
    sim.place(s);
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Confirmed);
    let dialled = sim.script.borrow().dialled.clone();
    assert_eq!(dialled.len(), 1);
    assert_eq!(dialled[0].1, "12,3");
    assert_eq!(dialled[0].2, DialMethod::Rfc4733);
    let ev = events(&r);
    let ext = ev
        .iter()
        .position(|e| *e == TimelineEvent::ExtensionSent)
        .unwrap();
    let prompt = ev
        .iter()
        .position(|e| matches!(e, TimelineEvent::PromptStarted { .. }))
        .unwrap();
    assert!(ext < prompt);
    assert!(has(
        &r,
        |e| matches!(e, TimelineEvent::DigitIgnored { reason, .. } if reason.contains("extension"))
    ));
    // 1 s pause + three 200 ms tones after the answer at ~2 s.
    let started = &r.timeline[prompt];
    assert!(
        started.at_ms >= 3_600 && started.at_ms < 3_700,
        "{}",
        started.at_ms
    );
}

#[test]
fn answer_without_a_usable_codec_hangs_up() {
    let mut sim = Sim::new(answering());
    sim.rewrite_200 = Some(Box::new(g729_only));
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Unreachable);
    assert!(has(&r, |e| matches!(
        e,
        TimelineEvent::MediaUnusable { .. }
    )));
    assert_eq!(sim.sent("BYE"), 1);
    assert!(sim.script.borrow().setups.is_empty());
}

#[test]
fn whole_challenge_expires() {
    let mut sim = Sim::new(answering());
    for i in 0..40 {
        sim.key(4_000 + 2_500 * i, '1', DtmfMethod::Rfc4733);
    }
    let rules = Rules {
        challenge_timeout: Duration::from_secs(20),
        ..Rules::default()
    };
    sim.place(spec(Mode::Pin, Some("1234"), rules));
    let r = sim.run(LIMIT);
    // 32 keys fill the entry first? No: 20 s is reached after 7 keys.
    assert_result(&r, CallResult::Expired);
    assert!(events(&r).contains(&TimelineEvent::Timeout {
        timer: "challenge".into()
    }));
    assert_eq!(*prompts(&sim).last().unwrap(), PromptKind::Goodbye);
}

#[test]
fn cancel_while_ringing_and_while_answered() {
    let mut sim = Sim::new(Phone::RingForever);
    let id = sim.place(spec(Mode::Standard, None, Rules::default()));
    sim.run_for(Duration::from_secs(2));
    let now = sim.now;
    sim.board.cancel(now, id);
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Cancelled);
    assert_eq!(sim.sent("CANCEL"), 1);

    let mut sim = Sim::new(answering());
    let id = sim.place(spec(Mode::Standard, None, Rules::default()));
    sim.run_for(Duration::from_secs(3));
    let now = sim.now;
    sim.board.cancel(now, id);
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Cancelled);
    assert_eq!(sim.sent("BYE"), 1);
    // No closing prompt on an API cancel.
    assert_eq!(prompts(&sim), [PromptKind::Greeting]);
}

#[test]
fn sip_info_counts_only_when_enabled() {
    let mut sim = Sim::new(answering());
    sim.phone_at(4_000, Action::Info('#'));
    let rules = Rules {
        sip_info_dtmf: true,
        ..Rules::default()
    };
    sim.place(spec(Mode::Standard, None, rules));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Confirmed);
    assert_eq!(r.dtmf_method, Some(DtmfMethod::SipInfo));

    let mut sim = Sim::new(answering());
    sim.phone_at(4_000, Action::Info('#'));
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::NoInput);
    assert!(has(
        &r,
        |e| matches!(e, TimelineEvent::DigitIgnored { method, .. } if method == "sip_info")
    ));
}

#[test]
fn keys_after_the_decision_and_bye_during_closing_keep_the_result() {
    let mut sim = Sim::new(answering());
    sim.key(4_000, '#', DtmfMethod::Inband);
    sim.key(4_500, '0', DtmfMethod::Inband);
    sim.phone_at(5_000, Action::Hangup);
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Confirmed);
    assert!(has(
        &r,
        |e| matches!(e, TimelineEvent::DigitIgnored { reason, .. } if reason.contains("decision"))
    ));
    assert!(events(&r).contains(&TimelineEvent::ByeReceived));
    assert_eq!(sim.sent("BYE"), 0);
}

#[test]
fn invalid_specs_are_refused() {
    let mut sim = Sim::new(answering());
    let now = sim.now;
    let s = spec(Mode::Pin, None, Rules::default());
    assert_eq!(
        sim.board.place(now, s).unwrap_err(),
        flow::SpecError::MissingDigits(Mode::Pin)
    );
    let mut s = spec(Mode::Standard, None, Rules::default());
    s.extension = Some("12x".into());
    assert_eq!(
        sim.board.place(now, s).unwrap_err(),
        flow::SpecError::InvalidExtension
    );
    let s = spec(
        Mode::Standard,
        None,
        Rules {
            fraud_code: "0".into(),
            ..Rules::default()
        },
    );
    assert_eq!(
        sim.board.place(now, s).unwrap_err(),
        flow::SpecError::InvalidFraudCode
    );
}

#[test]
fn many_calls_share_one_switchboard() {
    // Two calls in one switchboard: each gets its own outcome.
    let mut sim = Sim::new(answering());
    sim.key(4_000, '#', DtmfMethod::Rfc4733);
    let a = sim.place(spec(Mode::Standard, None, Rules::default()));
    let mut s = spec(Mode::Standard, None, Rules::default());
    s.target = sip::Uri::parse("sip:+14255550199@127.0.0.1:5071").unwrap();
    s.next_hop = addr("127.0.0.1:5071"); // nobody there: ring timeout → unreachable
    s.rules.ring_timeout = Duration::from_secs(3);
    let b = sim.place(s);
    assert_ne!(a, b);
    let r = sim.run(LIMIT);
    assert_eq!(r.result, CallResult::Unreachable);
    sim.run_for(Duration::from_secs(20));
    let finished = sim
        .events
        .iter()
        .filter(|e| matches!(e.1, Event::Finished(_)))
        .count();
    assert_eq!(finished, 2);
    assert_eq!(sim.board.active_calls(), 0);
}

#[test]
fn challenge_without_credentials_is_rejected_with_the_reason() {
    let mut sim = Sim::new(Phone::Reject {
        status: 407,
        after: Duration::from_secs(1),
    });
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Rejected);
    assert!(has(&r, |e| matches!(
        e,
        TimelineEvent::AuthFailed { code: 407, .. }
    )));
}

/// The verdict at the key (issue 9 item 3): the decision is reported the moment the flow
/// takes it, once, before the closing prompts and the BYE, which never change it.
#[test]
fn the_decision_is_reported_at_the_key_before_the_closing_prompts() {
    for (mode, digits, keys, result) in [
        (Mode::Standard, None, "#", CallResult::Confirmed),
        (Mode::Standard, None, "0#", CallResult::FraudReported),
        (Mode::Pin, Some("2468"), "2468#", CallResult::Confirmed),
        (Mode::Pin, Some("2468"), "2469#", CallResult::WrongDigits),
    ] {
        let mut sim = Sim::new(answering());
        for (i, k) in keys.chars().enumerate() {
            sim.key(3_500 + 300 * i as u64, k, DtmfMethod::Inband);
        }
        sim.place(spec(mode, digits, Rules::default()));
        let r = sim.run(LIMIT);
        assert_result(&r, result);
        let decided: Vec<&(Duration, Event)> = sim
            .events
            .iter()
            .filter(|e| matches!(e.1, Event::Decided(_)))
            .collect();
        assert_eq!(decided.len(), 1, "{keys}: {:#?}", sim.events);
        let (at, Event::Decided(d)) = decided[0] else {
            unreachable!()
        };
        assert_eq!(
            (d.result, d.dtmf_method),
            (r.result, r.dtmf_method),
            "{keys}"
        );
        // At the last key: the timeline so far ends with it, no closing prompt, no BYE yet.
        let last_key = Duration::from_millis(3_500 + 300 * (keys.len() as u64 - 1));
        assert!(
            *at >= last_key && *at < last_key + Duration::from_millis(100),
            "{keys}: decided at {at:?}"
        );
        let (outcome, before) = d.timeline.split_last().unwrap();
        assert_eq!(outcome.event, TimelineEvent::Outcome { result });
        assert_eq!(outcome.at_ms, at.as_millis() as u64, "{keys}");
        assert!(matches!(
            before.last().map(|e| &e.event),
            Some(TimelineEvent::Digit { .. })
        ));
        assert!(r.timeline.starts_with(before), "{keys}");
        let finished = sim
            .events
            .iter()
            .position(|e| matches!(e.1, Event::Finished(_)))
            .unwrap();
        let decided_pos = sim
            .events
            .iter()
            .position(|e| matches!(e.1, Event::Decided(_)))
            .unwrap();
        assert!(decided_pos < finished);
        assert!(has(&r, |e| matches!(e, TimelineEvent::ByeSent)));
        assert!(has(
            &r,
            |e| matches!(e, TimelineEvent::PromptStarted { prompt } if prompt != "greeting" && prompt != "pin")
        ));
    }
    // Decided before answer too: a busy phone, and the ring timeout's CANCEL.
    let mut sim = Sim::new(Phone::Reject {
        status: 486,
        after: Duration::from_secs(1),
    });
    sim.place(spec(Mode::Standard, None, Rules::default()));
    let r = sim.run(LIMIT);
    assert_result(&r, CallResult::Busy);
    let decided = sim
        .events
        .iter()
        .filter(|e| matches!(&e.1, Event::Decided(d) if d.result == CallResult::Busy))
        .count();
    assert_eq!(decided, 1);
}

//! Prints what the capture reader finds in a file (streams, payload types, SIP): a debugging
//! aid, `cargo run -p capture --example dump -- FILE`.
fn main() {
    for path in std::env::args().skip(1) {
        let Ok(bytes) = std::fs::read(&path) else {
            eprintln!("{path}: cannot read");
            continue;
        };
        let c = capture::read(&bytes);
        println!(
            "{path}: {:?} {:?} sip={} media={} info={} error={:?}",
            c.format,
            c.counts,
            c.sip.messages,
            c.sip.media.len(),
            c.sip.info_digits.len(),
            c.error
        );
        for m in &c.sip.media {
            println!(
                "  sdp {} author {} endpoint {} pts {:?}",
                m.call_id,
                m.author,
                m.endpoint,
                m.payload_types
                    .iter()
                    .map(|p| format!("{}={}/{}", p.pt, p.encoding, p.clock_rate))
                    .collect::<Vec<_>>()
            );
        }
        let replays = capture::replay::replay(&c, &bytes, std::time::Instant::now());
        for (s, r) in c.streams.iter().zip(&replays) {
            let digits: Vec<String> = r
                .digits
                .iter()
                .map(|d| {
                    format!(
                        "{}@{:.3}/{}",
                        d.digit.as_char(),
                        d.at_ns as f64 / 1e9,
                        d.method.as_str()
                    )
                })
                .collect();
            println!("  digits {}", digits.join(" "));
            println!(
                "  {} {:?} pts {:?} info {:?}",
                s.name(),
                s.discovery,
                s.payload_types
                    .iter()
                    .map(|p| format!("{}={}/{}", p.pt, p.encoding, p.clock_rate))
                    .collect::<Vec<_>>(),
                s.info
            );
            for x in &s.ssrcs {
                println!(
                    "    ssrc {:#010x} packets {} lost {} dup {} pts {:?}",
                    x.ssrc, x.packets, x.lost, x.duplicates, x.payload_types
                );
            }
        }
    }
}

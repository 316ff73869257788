//! Which of several user agents (a runtime's shards) owns a SIP message, read from the
//! identifiers the agents made up ([`crate::Config::id_prefix`]) without parsing the message.
//!
//! A response names its transaction by the top Via's branch, which we made; a request from
//! the far end of one of our calls carries our Call-ID. Both start with [`prefix`]`(shard)`.
//! This is only a hint: the chosen agent still checks everything (source, transaction,
//! dialog), so a stranger who forges a prefix reaches one agent's usual checks, nothing more.

/// Header bytes looked at: a SIP message over UDP is at most 64 KiB anyway.
const MAX_SCAN: usize = 65_536;
/// Most digits of a shard number (shards are counted in the hundreds at most).
const MAX_SHARD_DIGITS: usize = 5;

/// The identifier prefix of shard `shard`: `s<decimal>-` (`-` and letters beyond `f` never
/// occur in the hex tokens that follow, so the prefix cannot be misread).
pub fn prefix(shard: u16) -> String {
    format!("s{shard}-")
}

/// The shard named by `bytes` (a whole SIP message): the top Via branch of a response, the
/// Call-ID of a request. `None` when there is no such identifier or it is not ours.
pub fn shard_of(bytes: &[u8]) -> Option<u16> {
    let bytes = &bytes[..bytes.len().min(MAX_SCAN)];
    let is_response = bytes.starts_with(b"SIP/2.0 ");
    let mut lines = bytes.split(|b| *b == b'\n');
    lines.next()?; // start line
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None; // end of headers
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if is_response && (name.eq_ignore_ascii_case(b"via") || name.eq_ignore_ascii_case(b"v")) {
            return branch(value).and_then(parse_prefix);
        }
        if !is_response
            && (name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i"))
        {
            return parse_prefix(value);
        }
    }
    None
}

/// The branch of the first Via value in `value`, after the magic cookie.
fn branch(value: &[u8]) -> Option<&[u8]> {
    let first = value.split(|b| *b == b',').next()?;
    for param in first.split(|b| *b == b';').skip(1) {
        let param = param.trim_ascii();
        let Some(eq) = param.iter().position(|b| *b == b'=') else {
            continue;
        };
        if param[..eq].trim_ascii().eq_ignore_ascii_case(b"branch") {
            let v = param[eq + 1..].trim_ascii();
            return v.strip_prefix(b"z9hG4bK");
        }
    }
    None
}

/// `s<digits>-…` → the number.
fn parse_prefix(id: &[u8]) -> Option<u16> {
    let rest = id.strip_prefix(b"s")?;
    let end = rest.iter().position(|b| *b == b'-')?;
    if end == 0 || end > MAX_SHARD_DIGITS || !rest[..end].iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_by_branch_requests_by_call_id() {
        let resp = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:5060;rport;branch=z9hG4bKs12-00ff\r\nCall-ID: s3-abc@x\r\n\r\n";
        assert_eq!(shard_of(resp), Some(12));
        let req = b"BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKs9-1\r\ni: s3-abc@127.0.0.1\r\n\r\n";
        assert_eq!(shard_of(req), Some(3));
        assert_eq!(prefix(7), "s7-");
        assert_eq!(parse_prefix(prefix(65535).as_bytes()), Some(65535));
    }

    #[test]
    fn strangers_name_no_shard() {
        for m in [
            &b""[..],
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKabc\r\n\r\n",
            b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1234@host\r\n\r\n",
            b"OPTIONS sip:x SIP/2.0\r\n\r\nCall-ID: s1-after-the-body\r\n",
            b"INVITE sip:x SIP/2.0\r\nCall-ID: s99999999-x\r\n\r\n",
            b"INVITE sip:x SIP/2.0\r\nCall-ID: s-x\r\n\r\n",
            b"\xff\xfe\n:\n;;==\n",
        ] {
            assert_eq!(shard_of(m), None, "{:?}", String::from_utf8_lossy(m));
        }
    }
}

//! Cuts a TCP/TLS byte stream into SIP messages by Content-Length (RFC 3261 §18.3).
//!
//! ```text
//!  stream:  [CRLF keep-alives] [headers ... CRLF CRLF] [Content-Length bytes] [next message...]
//! ```
//! Over streams Content-Length is mandatory; a missing or unreadable one, or a message over
//! the limit, is a [`FrameError`] after which the runtime should close the connection (the
//! stream can no longer be re-synchronised).

use crate::message::{Limits, MAX_MESSAGE_BYTES};

/// The empty line that ends the header section (RFC 3261 §7).
const HEADER_END: &[u8; 4] = b"\r\n\r\n";

/// Why the stream cannot be framed. The peer is at fault; close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Header section or whole message bigger than the limit.
    #[error("message exceeds {max} bytes")]
    TooLarge {
        /// Limit in force.
        max: usize,
    },
    /// No Content-Length header (required over streams, RFC 3261 §18.3).
    #[error("missing Content-Length on a stream transport")]
    MissingContentLength,
    /// Content-Length is not a number.
    #[error("invalid Content-Length")]
    InvalidContentLength,
}

/// Accumulates stream bytes and yields whole messages.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    max: usize,
    failed: bool,
}

impl StreamFramer {
    /// A framer with the message size limit from `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            buf: Vec::new(),
            max: limits.max_message_bytes.min(MAX_MESSAGE_BYTES),
            failed: false,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `None` if more bytes are needed. After an error the
    /// framer stays failed.
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, FrameError>> {
        if self.failed {
            return None;
        }
        // Keep-alives (RFC 5626 §3.5.1) and stray line breaks between messages.
        let skip = self
            .buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        self.buf.drain(..skip);
        let Some(head_end) = self.buf.windows(4).position(|w| w == HEADER_END) else {
            if self.buf.len() > self.max {
                return Some(self.fail(FrameError::TooLarge { max: self.max }));
            }
            return None;
        };
        let length = match content_length(&self.buf[..head_end]) {
            Ok(n) => n,
            Err(e) => return Some(self.fail(e)),
        };
        // Content-Length is the peer's number: `usize::MAX` must not wrap the sum into a
        // small frame (checked, not wrapping, arithmetic).
        let total = match head_end
            .checked_add(HEADER_END.len())
            .and_then(|n| n.checked_add(length))
        {
            Some(total) if total <= self.max => total,
            _ => return Some(self.fail(FrameError::TooLarge { max: self.max })),
        };
        if self.buf.len() < total {
            return None;
        }
        let message: Vec<u8> = self.buf.drain(..total).collect();
        Some(Ok(message))
    }

    fn fail(&mut self, e: FrameError) -> Result<Vec<u8>, FrameError> {
        self.failed = true;
        self.buf.clear();
        Err(e)
    }
}

fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = std::str::from_utf8(line[colon + 1..].trim_ascii())
                .map_err(|_| FrameError::InvalidContentLength)?;
            return value.parse().map_err(|_| FrameError::InvalidContentLength);
        }
    }
    Err(FrameError::MissingContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_messages_across_reads() {
        let mut f = StreamFramer::new(&Limits::default());
        let a = b"OPTIONS sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabc";
        let b = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut all = b"\r\n\r\n".to_vec();
        all.extend_from_slice(a);
        all.extend_from_slice(b);
        for chunk in all.chunks(7) {
            f.push(chunk);
        }
        assert_eq!(f.next_message(), Some(Ok(a.to_vec())));
        assert_eq!(f.next_message(), Some(Ok(b.to_vec())));
        assert_eq!(f.next_message(), None);
        f.push(b"SIP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nab");
        assert_eq!(f.next_message(), None);
    }

    #[test]
    fn huge_content_length_is_too_large_not_a_wrap() {
        // 2^64 - 1 (and 2^64 - 4, which would wrap to a tiny frame after `+ 4`).
        for length in [u64::MAX, u64::MAX - 3, u64::MAX - 40] {
            let mut f = StreamFramer::new(&Limits::default());
            f.push(format!("SIP/2.0 200 OK\r\nContent-Length: {length}\r\n\r\nabc").as_bytes());
            assert_eq!(
                f.next_message(),
                Some(Err(FrameError::TooLarge {
                    max: MAX_MESSAGE_BYTES
                }))
            );
            assert_eq!(f.next_message(), None);
        }
        // One more than usize holds: not a number we accept.
        let mut f = StreamFramer::new(&Limits::default());
        f.push(b"SIP/2.0 200 OK\r\nl: 18446744073709551616\r\n\r\n");
        assert_eq!(
            f.next_message(),
            Some(Err(FrameError::InvalidContentLength))
        );
    }

    #[test]
    fn errors_are_sticky() {
        let mut f = StreamFramer::new(&Limits::default());
        f.push(b"SIP/2.0 200 OK\r\n\r\n");
        assert_eq!(
            f.next_message(),
            Some(Err(FrameError::MissingContentLength))
        );
        assert_eq!(f.next_message(), None);
        let mut f = StreamFramer::new(&Limits {
            max_message_bytes: 64,
            ..Limits::default()
        });
        f.push(b"SIP/2.0 200 OK\r\nContent-Length: 999\r\n\r\n");
        assert_eq!(
            f.next_message(),
            Some(Err(FrameError::TooLarge { max: 64 }))
        );
        let mut f = StreamFramer::new(&Limits {
            max_message_bytes: 16,
            ..Limits::default()
        });
        f.push(&[b'x'; 17]);
        assert_eq!(
            f.next_message(),
            Some(Err(FrameError::TooLarge { max: 16 }))
        );
    }
}

//! The sixteen DTMF keys.

use std::fmt;

/// Low-group (row) frequencies in Hz, ITU-T Q.23 §2.
pub const ROW_HZ: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
/// High-group (column) frequencies in Hz, ITU-T Q.23 §2.
pub const COL_HZ: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];

/// A DTMF key. The keypad layout of ITU-T Q.23 Figure 1: rows 697..941 Hz, columns
/// 1209..1633 Hz.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digit {
    D0,
    D1,
    D2,
    D3,
    D4,
    D5,
    D6,
    D7,
    D8,
    D9,
    Star,
    Pound,
    A,
    B,
    C,
    D,
}

/// Keypad by (row, column), Q.23 Figure 1.
const KEYPAD: [[Digit; 4]; 4] = [
    [Digit::D1, Digit::D2, Digit::D3, Digit::A],
    [Digit::D4, Digit::D5, Digit::D6, Digit::B],
    [Digit::D7, Digit::D8, Digit::D9, Digit::C],
    [Digit::Star, Digit::D0, Digit::Pound, Digit::D],
];

impl Digit {
    /// All sixteen keys, in RFC 4733 event-code order (0-9, *, #, A-D).
    pub const ALL: [Digit; 16] = [
        Digit::D0,
        Digit::D1,
        Digit::D2,
        Digit::D3,
        Digit::D4,
        Digit::D5,
        Digit::D6,
        Digit::D7,
        Digit::D8,
        Digit::D9,
        Digit::Star,
        Digit::Pound,
        Digit::A,
        Digit::B,
        Digit::C,
        Digit::D,
    ];

    /// The key at `row` (0..4, low group) and `col` (0..4, high group).
    pub fn from_position(row: usize, col: usize) -> Option<Digit> {
        KEYPAD.get(row)?.get(col).copied()
    }

    /// (row, column) of this key on the keypad.
    pub fn position(self) -> (usize, usize) {
        let code = self.event_code() as usize;
        // KEYPAD holds every digit exactly once; the search always succeeds.
        for (r, row) in KEYPAD.iter().enumerate() {
            for (c, d) in row.iter().enumerate() {
                if *d as usize == code {
                    return (r, c);
                }
            }
        }
        unreachable!("every digit is on the keypad")
    }

    /// (low, high) tone frequencies in Hz, ITU-T Q.23.
    pub fn frequencies(self) -> (f64, f64) {
        let (r, c) = self.position();
        (ROW_HZ[r], COL_HZ[c])
    }

    /// RFC 4733 §3.2 event code (0-9, * = 10, # = 11, A-D = 12-15).
    pub fn event_code(self) -> u8 {
        self as u8
    }

    /// The key for an RFC 4733 event code; codes above 15 are not DTMF keys.
    pub fn from_event_code(code: u8) -> Option<Digit> {
        Digit::ALL.get(code as usize).copied()
    }

    /// The key's character: `0-9`, `*`, `#`, `A-D`.
    pub fn as_char(self) -> char {
        b"0123456789*#ABCD"[self as usize] as char
    }

    /// Parses `0-9`, `*`, `#`, `A-D` (also lower case `a-d`).
    pub fn from_char(c: char) -> Option<Digit> {
        let code = match c {
            '0'..='9' => c as u8 - b'0',
            '*' => 10,
            '#' => 11,
            'A'..='D' => c as u8 - b'A' + 12,
            'a'..='d' => c as u8 - b'a' + 12,
            _ => return None,
        };
        Digit::from_event_code(code)
    }
}

impl fmt::Display for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// A character that is not a DTMF key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDigitError(pub char);

impl fmt::Display for ParseDigitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a DTMF key (0-9, *, #, A-D)", self.0)
    }
}

impl std::error::Error for ParseDigitError {}

impl std::str::FromStr for Digit {
    type Err = ParseDigitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Digit::from_char(c).ok_or(ParseDigitError(c)),
            (Some(c), Some(_)) | (None, Some(c)) => Err(ParseDigitError(c)),
            (None, None) => Err(ParseDigitError(' ')),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypad_round_trips() {
        for d in Digit::ALL {
            assert_eq!(Digit::from_char(d.as_char()), Some(d));
            assert_eq!(Digit::from_event_code(d.event_code()), Some(d));
            let (r, c) = d.position();
            assert_eq!(Digit::from_position(r, c), Some(d));
        }
        assert_eq!(Digit::Pound.frequencies(), (941.0, 1477.0));
        assert_eq!(Digit::D0.frequencies(), (941.0, 1336.0));
        assert_eq!(Digit::A.frequencies(), (697.0, 1633.0));
        assert_eq!(Digit::from_event_code(16), None);
        assert_eq!("#".parse::<Digit>(), Ok(Digit::Pound));
        assert!("x".parse::<Digit>().is_err());
        assert!("12".parse::<Digit>().is_err());
    }
}

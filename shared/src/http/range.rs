//! Single byte-range evaluation (RFC 9110 §14).
//!
//! Only one range per request is served; multipart/byteranges is never produced. Anything this
//! module does not understand makes the request a plain full response, which RFC 9110 §14.2
//! allows ("a server MAY ignore the Range header field"). It must never return a range that
//! reaches past the object.

use crate::digest::trim_ows;

/// What to send for a request's Range header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// The whole object (200).
    Full,
    /// Bytes `start..=end` (206); always `start <= end < size`.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// A decimal that fits in a u64; `None` for empty, non-digits or overflow.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Evaluates a Range header against an object of `size` bytes.
///
/// Accepts a single `bytes=a-b`, `bytes=a-` or `bytes=-n` (unit case-insensitive, whitespace
/// around the range allowed). The end is clamped to `size - 1`. A start at or past the end, a
/// zero-length suffix, or any valid range on an empty object is [`RangeSpec::Unsatisfiable`].
/// No header, another unit, several ranges, bad syntax, `b < a` or numbers that overflow a u64
/// give [`RangeSpec::Full`].
pub fn evaluate_range(header: Option<&[u8]>, size: u64) -> RangeSpec {
    let Some(value) = header else {
        return RangeSpec::Full;
    };
    let value = trim_ows(value);
    let Some(eq) = value.iter().position(|&b| b == b'=') else {
        return RangeSpec::Full;
    };
    if !value[..eq].eq_ignore_ascii_case(b"bytes") {
        return RangeSpec::Full;
    }
    let spec = trim_ows(&value[eq + 1..]);
    if spec.contains(&b',') {
        return RangeSpec::Full;
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeSpec::Full;
    };
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);

    if first.is_empty() {
        // Suffix range: the last n bytes.
        return match parse_u64(last) {
            None => RangeSpec::Full,
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if size == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        };
    }
    let Some(start) = parse_u64(first) else {
        return RangeSpec::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match parse_u64(last) {
            Some(end) if end >= start => end,
            _ => return RangeSpec::Full,
        }
    };
    if start >= size {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Partial {
        start,
        end: end.min(size - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeSpec::{Full, Partial, Unsatisfiable};

    fn eval(h: &str, size: u64) -> RangeSpec {
        evaluate_range(Some(h.as_bytes()), size)
    }

    #[test]
    fn no_header() {
        assert_eq!(evaluate_range(None, 100), Full);
        assert_eq!(evaluate_range(None, 0), Full);
    }

    #[test]
    fn closed_ranges() {
        assert_eq!(eval("bytes=0-0", 100), Partial { start: 0, end: 0 });
        assert_eq!(eval("bytes=0-99", 100), Partial { start: 0, end: 99 });
        assert_eq!(eval("bytes=10-19", 100), Partial { start: 10, end: 19 });
        assert_eq!(eval("bytes=90-1000", 100), Partial { start: 90, end: 99 });
        // The unit is case-insensitive; list whitespace around the range is allowed.
        assert_eq!(eval(" Bytes= 5-6 ", 100), Partial { start: 5, end: 6 });
        assert_eq!(eval("bytes=99-99", 100), Partial { start: 99, end: 99 });
    }

    #[test]
    fn open_ranges() {
        assert_eq!(eval("bytes=0-", 100), Partial { start: 0, end: 99 });
        assert_eq!(eval("bytes=42-", 100), Partial { start: 42, end: 99 });
        assert_eq!(eval("bytes=99-", 100), Partial { start: 99, end: 99 });
    }

    #[test]
    fn suffix_ranges() {
        assert_eq!(eval("bytes=-1", 100), Partial { start: 99, end: 99 });
        assert_eq!(eval("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(eval("bytes=-100", 100), Partial { start: 0, end: 99 });
        assert_eq!(eval("bytes=-5000", 100), Partial { start: 0, end: 99 });
        assert_eq!(eval("bytes=-0", 100), Unsatisfiable);
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(eval("bytes=100-", 100), Unsatisfiable);
        assert_eq!(eval("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(eval("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(eval("bytes=0-", 0), Unsatisfiable);
        assert_eq!(eval("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn ignored_as_full() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5",
            "bytes=10-5",
            "bytes=0-1,5-6",
            "bytes=0-1,",
            "items=0-5",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=0x1-2",
            "bytes=1 -2",
            "bytes =1-2",
            "bytes=18446744073709551616-",
            "bytes=0-18446744073709551616",
            "bytes=-18446744073709551616",
        ] {
            assert_eq!(eval(h, 100), Full, "{h:?}");
        }
        assert_eq!(eval("bytes=a-", 0), Full);
    }

    #[test]
    fn extremes() {
        assert_eq!(
            eval("bytes=18446744073709551614-", u64::MAX),
            Partial {
                start: u64::MAX - 1,
                end: u64::MAX - 1
            }
        );
        assert_eq!(
            eval("bytes=0-18446744073709551615", 10),
            Partial { start: 0, end: 9 }
        );
    }
}

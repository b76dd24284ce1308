//! Request and response head parsing: check-then-parse over a growing buffer.
//!
//! The parser first scans for the end of the head (rejecting NUL, bare CR and bare LF on the way,
//! and giving up at [`MAX_HEAD_BYTES`]), and only then parses lines. It never allocates more than
//! the head it was given and never panics on any input.

use super::is_token;
use crate::digest::trim_ows;

/// Largest request or response head accepted, including the final CRLFCRLF. Same order of
/// magnitude as nginx's default `large_client_header_buffers` (4 × 8 KiB): real clients send well
/// under 2 KiB, so anything bigger is a broken or hostile peer, and the cap bounds the memory a
/// connection can pin before it is answered.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header fields in one head. Real requests carry around a dozen; the cap keeps the cost of
/// the linear `header()` lookups bounded.
pub const MAX_HEADERS: usize = 100;

/// Longest request target. Object paths are short; 4 KiB leaves room for long query strings that
/// download tools append, and is below what the common proxies accept (8 KiB), so a target that
/// reached us through one is never cut short there first.
pub const MAX_TARGET_BYTES: usize = 4096;

/// Why a head was refused. [`HeadError::status`] gives the status to answer with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// No end of head within [`MAX_HEAD_BYTES`].
    #[error("head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    /// More than [`MAX_HEADERS`] header fields.
    #[error("head has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// The request target is longer than [`MAX_TARGET_BYTES`].
    #[error("request target is longer than {MAX_TARGET_BYTES} bytes")]
    TargetTooLong,
    /// A syntax rule was broken; `what` names it.
    #[error("malformed head: {what}")]
    Malformed { what: &'static str },
    /// A well-formed version other than HTTP/1.x (HTTP/2 prior knowledge, HTTP/0.9, ...).
    #[error("unsupported http version")]
    UnsupportedVersion,
    /// An HTTP/1.1 request without a Host header (RFC 9112 §3.2).
    #[error("request has no host header")]
    MissingHost,
    /// More than one Host header (RFC 9112 §3.2).
    #[error("request has more than one host header")]
    DuplicateHost,
    /// A GET or HEAD request announcing a body (Content-Length other than 0, or
    /// Transfer-Encoding). Bodies are never read, so the bytes after the head could not be told
    /// apart from the next request; refusing closes that door to request smuggling.
    #[error("get and head requests must not carry a body")]
    BodyNotAllowed,
}

impl HeadError {
    /// Status code to answer with: 431 for size limits, 414 for an overlong target, 505 for the
    /// version, 400 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::TargetTooLong => 414,
            HeadError::UnsupportedVersion => 505,
            HeadError::Malformed { .. }
            | HeadError::MissingHost
            | HeadError::DuplicateHost
            | HeadError::BodyNotAllowed => 400,
        }
    }
}

const fn malformed(what: &'static str) -> HeadError {
    HeadError::Malformed { what }
}

/// Request method. Only GET and HEAD are served; the rest are kept by name for the 405 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other(String),
}

impl Method {
    /// The method as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Other(m) => m,
        }
    }
}

/// One header field. The name keeps the case it was received in; the value has surrounding
/// whitespace trimmed and contains no CR, LF or NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The request target as received (visible ASCII only); see [`super::object_path`].
    pub target: String,
    /// `x` of `HTTP/1.x`.
    pub minor_version: u8,
    pub headers: Vec<Header>,
}

impl RequestHead {
    /// Value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// Whether the connection may carry another request after this one: HTTP/1.1 unless a
    /// `Connection` header lists `close`; HTTP/1.0 only when it lists `keep-alive` (and not
    /// `close`).
    pub fn keep_alive(&self) -> bool {
        let close = connection_has(&self.headers, b"close");
        if self.minor_version >= 1 {
            !close
        } else {
            !close && connection_has(&self.headers, b"keep-alive")
        }
    }

    /// The declared Content-Length. The parser has already checked that all Content-Length
    /// headers agree and are plain decimals, so a bad value only shows up here on a head that was
    /// built by hand; it then reads as `None`.
    pub fn content_length(&self) -> Option<u64> {
        content_length(&self.headers).ok().flatten()
    }

    /// Whether the request announces a body (which Baton never reads).
    pub fn has_body(&self) -> bool {
        self.header("transfer-encoding").is_some() || self.content_length().is_some_and(|n| n > 0)
    }

    /// Serializes the head, ending with the empty line. The inverse of [`parse_request_head`] for
    /// the heads it returns.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.");
        out.push(b'0' + self.minor_version.min(9));
        out.extend_from_slice(b"\r\n");
        encode_headers(&self.headers, out);
    }
}

/// A parsed response head (for the participant's cache-fill client). 1xx interim responses are
/// returned like any other; the caller skips them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    pub headers: Vec<Header>,
}

impl ResponseHead {
    /// Value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// The declared Content-Length, already checked by the parser (see
    /// [`RequestHead::content_length`]).
    pub fn content_length(&self) -> Option<u64> {
        content_length(&self.headers).ok().flatten()
    }

    /// Serializes the head with the standard reason phrase, ending with the empty line.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let status = self.status.clamp(100, 999);
        out.extend_from_slice(b"HTTP/1.");
        out.push(b'0' + self.minor_version.min(9));
        out.extend_from_slice(format!(" {status} {}\r\n", super::reason_phrase(status)).as_bytes());
        encode_headers(&self.headers, out);
    }
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_slice())
}

/// Whether any `Connection` header lists `token` (case-insensitive).
fn connection_has(headers: &[Header], token: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// Longest Content-Length accepted: 19 digits always fit in a u64.
const MAX_CONTENT_LENGTH_DIGITS: usize = 19;

/// All Content-Length headers, which must be plain decimals and agree (RFC 9112 §6.3 lets a
/// recipient reject anything else, and doing so shuts out request smuggling).
fn content_length(headers: &[Header]) -> Result<Option<u64>, HeadError> {
    let mut found = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let v = &h.value;
        if v.is_empty() || v.len() > MAX_CONTENT_LENGTH_DIGITS || !v.iter().all(u8::is_ascii_digit)
        {
            return Err(malformed("content-length"));
        }
        let n = v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|prev| prev != n) {
            return Err(malformed("conflicting content-length"));
        }
        found = Some(n);
    }
    Ok(found)
}

fn encode_headers(headers: &[Header], out: &mut Vec<u8>) {
    for h in headers {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Finds the end of the head: the index just past the first CRLFCRLF.
///
/// Bare LF line endings are rejected rather than accepted as nginx does: RFC 9112 §2.2 allows
/// either, and treating a lone LF as a line end is a classic source of disagreement between
/// front ends about where a head ends. Rejecting them as soon as they are seen (rather than when
/// the head is complete) also means a client that uses them gets its 400 at once instead of
/// waiting for a CRLFCRLF that will never come. Bare CR (RFC 9112 §2.2: reject or replace) and
/// NUL are rejected the same way.
fn find_head_end(buf: &[u8]) -> Result<Option<usize>, HeadError> {
    let scan = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    for (i, &b) in scan.iter().enumerate() {
        match b {
            0 => return Err(malformed("nul byte")),
            b'\n' => {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(malformed("bare lf"));
                }
                if i >= 3 && buf[i - 3..i] == *b"\r\n\r" {
                    return Ok(Some(i + 1));
                }
            }
            b'\r' if buf.get(i + 1).is_some_and(|&next| next != b'\n') => {
                return Err(malformed("bare cr"));
            }
            _ => {}
        }
    }
    if buf.len() >= MAX_HEAD_BYTES {
        Err(HeadError::TooLarge)
    } else {
        Ok(None)
    }
}

/// The lines of a complete head (without the final empty line), CRLF stripped.
fn head_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    // `head` ends with CRLFCRLF and holds no bare CR or LF, so every LF ends a line.
    head[..head.len() - 4]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// `HTTP/1.x` → `x`. Other majors are a 505, anything not shaped like a version a 400.
fn parse_version(v: &[u8]) -> Result<u8, HeadError> {
    match v {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if *major == b'1' {
                Ok(minor - b'0')
            } else {
                Err(HeadError::UnsupportedVersion)
            }
        }
        _ => Err(malformed("http version")),
    }
}

/// `name: value` with a token name, no space before the colon and no obs-fold.
fn parse_header_line(line: &[u8]) -> Result<Header, HeadError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(malformed("obsolete line folding"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(malformed("header line without colon"))?;
    let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
    if matches!(name.last(), Some(b' ' | b'\t')) {
        return Err(malformed("whitespace before colon"));
    }
    if !is_token(name) {
        return Err(malformed("header name"));
    }
    // field-value: VCHAR, obs-text, SP and HTAB; no other control characters.
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(malformed("control character in header value"));
    }
    let name = String::from_utf8(name.to_vec()).map_err(|_| malformed("header name"))?;
    Ok(Header {
        name,
        value: value.to_vec(),
    })
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<Vec<Header>, HeadError> {
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(HeadError::TooManyHeaders);
        }
        headers.push(parse_header_line(line)?);
    }
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        && headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        return Err(malformed("both transfer-encoding and content-length"));
    }
    content_length(&headers)?;
    Ok(headers)
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` means incomplete: read more and call again with the longer buffer. When no
/// CRLFCRLF is within the first [`MAX_HEAD_BYTES`] bytes this returns `Err(TooLarge)`, so
/// callers need no separate size check. On success, returns the head and its length including
/// the final CRLFCRLF; bytes after it (a pipelined request) are left alone.
///
/// The request line must be exactly `METHOD SP target SP HTTP/1.x`; HTTP/1.1 requests need
/// exactly one Host header, and GET/HEAD requests must not announce a body.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let Some(len) = find_head_end(buf)? else {
        return Ok(None);
    };
    let mut lines = head_lines(&buf[..len]);
    let line = lines.next().unwrap_or_default();

    let (Some(sp1), Some(sp2)) = (
        line.iter().position(|&b| b == b' '),
        line.iter().rposition(|&b| b == b' '),
    ) else {
        return Err(malformed("request line"));
    };
    if sp1 == sp2 {
        return Err(malformed("request line"));
    }
    let (method, target, version) = (&line[..sp1], &line[sp1 + 1..sp2], &line[sp2 + 1..]);
    // The version first, so that an HTTP/2 preface ("PRI * HTTP/2.0") is a 505, not a 400.
    let minor_version = parse_version(version)?;
    if !is_token(method) {
        return Err(malformed("method"));
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(malformed("request target"));
    }
    if target.len() > MAX_TARGET_BYTES {
        return Err(HeadError::TargetTooLong);
    }
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        other => Method::Other(String::from_utf8(other.to_vec()).map_err(|_| malformed("method"))?),
    };
    let target = String::from_utf8(target.to_vec()).map_err(|_| malformed("request target"))?;

    let headers = parse_headers(lines)?;
    let hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 {
        return Err(HeadError::DuplicateHost);
    }
    if hosts == 0 && minor_version >= 1 {
        return Err(HeadError::MissingHost);
    }
    let head = RequestHead {
        method,
        target,
        minor_version,
        headers,
    };
    if matches!(head.method, Method::Get | Method::Head) && head.has_body() {
        return Err(HeadError::BodyNotAllowed);
    }
    Ok(Some((head, len)))
}

/// Parses a response head from the start of `buf`, with the same incompleteness contract and
/// limits as [`parse_request_head`]. The status line is `HTTP/1.x SP 3DIGIT SP reason`; the
/// reason phrase is discarded and may be empty, and a missing space before an empty reason is
/// tolerated (RFC 9112 §4).
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let Some(len) = find_head_end(buf)? else {
        return Ok(None);
    };
    let mut lines = head_lines(&buf[..len]);
    let line = lines.next().unwrap_or_default();

    let (version, rest) = line.split_at(line.len().min(8));
    let minor_version = parse_version(version)?;
    let (code, reason) = match rest {
        [b' ', a, b, c] => ([*a, *b, *c], &[][..]),
        [b' ', a, b, c, b' ', reason @ ..] => ([*a, *b, *c], reason),
        _ => return Err(malformed("status line")),
    };
    if !code.iter().all(u8::is_ascii_digit) || !(b'1'..=b'5').contains(&code[0]) {
        return Err(malformed("status code"));
    }
    if reason
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(malformed("reason phrase"));
    }
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    let headers = parse_headers(lines)?;
    Ok(Some((
        ResponseHead {
            status,
            minor_version,
            headers,
        },
        len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    static REQUEST: &[u8] = b"GET /dir/file.bin?v=2 HTTP/1.1\r\n\
Host: vip.test\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
Range: bytes=0-99\r\n\
\r\n";

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.to_string(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn request() -> RequestHead {
        RequestHead {
            method: Method::Get,
            target: "/dir/file.bin?v=2".to_string(),
            minor_version: 1,
            headers: vec![
                h("Host", "vip.test"),
                h("User-Agent", "curl/8.5.0"),
                h("Accept", "*/*"),
                h("Range", "bytes=0-99"),
            ],
        }
    }

    fn parse(buf: &[u8]) -> Result<RequestHead, HeadError> {
        match parse_request_head(buf)? {
            Some((head, len)) => {
                assert_eq!(len, buf.len(), "whole buffer is the head");
                Ok(head)
            }
            None => panic!("incomplete: {:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn req_with(lines: &str) -> Result<RequestHead, HeadError> {
        parse(format!("GET / HTTP/1.1\r\nHost: a\r\n{lines}\r\n").as_bytes())
    }

    #[test]
    fn request_fixture_both_ways() {
        assert_eq!(parse(REQUEST), Ok(request()));
        let mut out = Vec::new();
        request().encode(&mut out);
        assert_eq!(out, REQUEST);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for n in 0..REQUEST.len() {
            assert_eq!(parse_request_head(&REQUEST[..n]), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn pipelined_bytes_are_left_alone() {
        let mut buf = REQUEST.to_vec();
        buf.extend_from_slice(b"HEAD / HTTP/1.1\r\n");
        assert_eq!(
            parse_request_head(&buf),
            Ok(Some((request(), REQUEST.len())))
        );
    }

    #[test]
    fn methods() {
        let head = parse(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").expect("valid");
        assert_eq!(head.method, Method::Head);
        let head = parse(b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n").expect("valid");
        assert_eq!(head.method, Method::Other("DELETE".into()));
        // Methods are case-sensitive.
        let head = parse(b"get / HTTP/1.1\r\nHost: a\r\n\r\n").expect("valid");
        assert_eq!(head.method, Method::Other("get".into()));
        assert_eq!(head.method.as_str(), "get");
    }

    #[test]
    fn header_lookup_and_values() {
        let head =
            req_with("X-A: one\r\nx-a: two\r\nX-Empty:\r\nX-Pad: \t v a l \t\r\n").expect("valid");
        assert_eq!(head.header("X-A"), Some(&b"one"[..]));
        assert_eq!(head.header("x-A"), Some(&b"one"[..]));
        assert_eq!(head.header("HOST"), Some(&b"a"[..]));
        assert_eq!(head.header("x-empty"), Some(&b""[..]));
        assert_eq!(head.header("x-pad"), Some(&b"v a l"[..]));
        assert_eq!(head.header("missing"), None);
        // obs-text is allowed in values.
        let head = req_with("X-Latin: caf\u{e9}\r\n").expect("valid");
        assert_eq!(head.header("x-latin"), Some("caf\u{e9}".as_bytes()));
    }

    #[test]
    fn keep_alive() {
        let ka = |raw: &str| parse(raw.as_bytes()).expect("valid").keep_alive();
        assert!(ka("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\n\r\n"
        ));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: te\r\nConnection: close\r\n\r\n"
        ));
        assert!(ka(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n"
        ));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HeadError::MissingHost)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            Err(HeadError::DuplicateHost)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"),
            Err(HeadError::DuplicateHost)
        );
        let head = parse(b"GET / HTTP/1.0\r\n\r\n").expect("1.0 needs no host");
        assert_eq!(head.minor_version, 0);
        assert_eq!(head.headers, []);
    }

    #[test]
    fn bodies() {
        assert!(req_with("Content-Length: 0\r\n").is_ok());
        assert!(req_with("Content-Length: 0\r\nContent-Length: 0\r\n").is_ok());
        assert_eq!(
            req_with("Content-Length: 5\r\n"),
            Err(HeadError::BodyNotAllowed)
        );
        assert_eq!(
            req_with("Transfer-Encoding: chunked\r\n"),
            Err(HeadError::BodyNotAllowed)
        );
        assert_eq!(
            parse(b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n"),
            Err(HeadError::BodyNotAllowed)
        );
        let post =
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").expect("valid");
        assert!(post.has_body());
        assert_eq!(post.content_length(), Some(5));
        let post = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("valid");
        assert!(post.has_body());
        assert!(!parse(REQUEST).expect("valid").has_body());

        let bad_cl = malformed("content-length");
        assert_eq!(req_with("Content-Length: abc\r\n"), Err(bad_cl.clone()));
        assert_eq!(req_with("Content-Length: -1\r\n"), Err(bad_cl.clone()));
        assert_eq!(req_with("Content-Length: 0, 0\r\n"), Err(bad_cl.clone()));
        assert_eq!(req_with("Content-Length:\r\n"), Err(bad_cl.clone()));
        assert_eq!(
            req_with("Content-Length: 18446744073709551616\r\n"),
            Err(bad_cl)
        );
        assert_eq!(
            req_with("Content-Length: 0\r\nContent-Length: 1\r\n"),
            Err(malformed("conflicting content-length"))
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(malformed("both transfer-encoding and content-length"))
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HeadError::UnsupportedVersion)
        );
        assert_eq!(
            parse_request_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HeadError::UnsupportedVersion)
        );
        assert_eq!(
            parse(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
            Err(HeadError::UnsupportedVersion)
        );
        assert_eq!(
            parse(b"GET / HTTP/0.9\r\n\r\n"),
            Err(HeadError::UnsupportedVersion)
        );
        assert_eq!(
            parse(b"GET / HTTP/3.0\r\n\r\n"),
            Err(HeadError::UnsupportedVersion)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n").map(|h| h.minor_version),
            Ok(2)
        );
        for bad in [
            &b"GET / HTTP/1\r\n\r\n"[..],
            b"GET / HTTP/1.10\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET / HTTP/2\r\n\r\n",
            b"GET / HTTP/a.b\r\n\r\n",
        ] {
            assert_eq!(parse(bad), Err(malformed("http version")), "{bad:?}");
        }
        assert_eq!(HeadError::UnsupportedVersion.status(), 505);
    }

    #[test]
    fn request_line_rules() {
        let cases: &[(&[u8], HeadError)] = &[
            (b"\r\n\r\n", malformed("request line")),
            (b"GET\r\n\r\n", malformed("request line")),
            (
                b"GET HTTP/1.1\r\nHost: a\r\n\r\n",
                malformed("request line"),
            ),
            (
                b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
                malformed("request target"),
            ),
            (
                b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
                malformed("request target"),
            ),
            (
                b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
                malformed("http version"),
            ),
            (b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", malformed("method")),
            (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", malformed("method")),
            (
                b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
                malformed("request target"),
            ),
            (
                b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
                malformed("request target"),
            ),
            (
                b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
                malformed("request target"),
            ),
            (
                b"GET /\t HTTP/1.1\r\nHost: a\r\n\r\n",
                malformed("request target"),
            ),
            // A leading empty line is not skipped.
            (
                b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                malformed("request line"),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse(raw).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(want.status(), 400);
        }
    }

    #[test]
    fn header_line_rules() {
        let cases: &[(&str, HeadError)] = &[
            ("X-A: 1\r\n folded\r\n", malformed("obsolete line folding")),
            ("X-A: 1\r\n\tfolded\r\n", malformed("obsolete line folding")),
            ("X-A : 1\r\n", malformed("whitespace before colon")),
            ("X-A\t: 1\r\n", malformed("whitespace before colon")),
            ("X-A 1\r\n", malformed("header line without colon")),
            (": 1\r\n", malformed("header name")),
            ("X(A): 1\r\n", malformed("header name")),
            (
                "X-A: 1\x012\r\n",
                malformed("control character in header value"),
            ),
            (
                "X-A: 1\x7f\r\n",
                malformed("control character in header value"),
            ),
        ];
        for (lines, want) in cases {
            assert_eq!(req_with(lines).as_ref(), Err(want), "{lines:?}");
        }
    }

    #[test]
    fn line_endings_and_nul() {
        // Rejected as soon as seen, without waiting for the end of the head.
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.1\nHost"),
            Err(malformed("bare lf"))
        );
        assert_eq!(parse_request_head(b"\n"), Err(malformed("bare lf")));
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.1\rHost"),
            Err(malformed("bare cr"))
        );
        assert_eq!(parse_request_head(b"GET /\0"), Err(malformed("nul byte")));
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\n"),
            Err(malformed("bare lf"))
        );
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n"),
            Err(malformed("nul byte"))
        );
        // A CR at the very end may still be followed by LF.
        assert_eq!(parse_request_head(b"GET / HTTP/1.1\r"), Ok(None));
    }

    #[test]
    fn size_limit() {
        let filler = |total: usize| {
            let start = b"GET / HTTP/1.1\r\nHost: a\r\nX: ";
            let mut buf = start.to_vec();
            buf.resize(total - 4, b'x');
            buf.extend_from_slice(b"\r\n\r\n");
            buf
        };
        let at_limit = filler(MAX_HEAD_BYTES);
        assert_eq!(
            parse_request_head(&at_limit).map(|r| r.map(|(_, n)| n)),
            Ok(Some(MAX_HEAD_BYTES))
        );
        let over = filler(MAX_HEAD_BYTES + 1);
        assert_eq!(parse_request_head(&over), Err(HeadError::TooLarge));
        assert_eq!(parse_request_head(&over[..MAX_HEAD_BYTES - 1]), Ok(None));
        assert_eq!(
            parse_request_head(&over[..MAX_HEAD_BYTES]),
            Err(HeadError::TooLarge)
        );
        assert_eq!(HeadError::TooLarge.status(), 431);
    }

    #[test]
    fn header_count_limit() {
        let many = |n: usize| {
            let mut s = String::from("GET / HTTP/1.1\r\n");
            for i in 0..n {
                s.push_str(if i == 0 { "Host: a\r\n" } else { "X: y\r\n" });
            }
            s.push_str("\r\n");
            s
        };
        assert_eq!(
            parse(many(MAX_HEADERS).as_bytes()).map(|h| h.headers.len()),
            Ok(MAX_HEADERS)
        );
        assert_eq!(
            parse(many(MAX_HEADERS + 1).as_bytes()),
            Err(HeadError::TooManyHeaders)
        );
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
    }

    #[test]
    fn target_limit() {
        let target = format!("/{}", "a".repeat(MAX_TARGET_BYTES - 1));
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(parse(raw.as_bytes()).map(|h| h.target), Ok(target));
        let raw = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(MAX_TARGET_BYTES)
        );
        assert_eq!(parse(raw.as_bytes()), Err(HeadError::TargetTooLong));
        assert_eq!(HeadError::TargetTooLong.status(), 414);
    }

    static RESPONSE: &[u8] = b"HTTP/1.1 206 Partial Content\r\n\
Content-Length: 100\r\n\
Content-Range: bytes 0-99/1000\r\n\
\r\n";

    fn response() -> ResponseHead {
        ResponseHead {
            status: 206,
            minor_version: 1,
            headers: vec![
                h("Content-Length", "100"),
                h("Content-Range", "bytes 0-99/1000"),
            ],
        }
    }

    fn parse_resp(buf: &[u8]) -> Result<ResponseHead, HeadError> {
        match parse_response_head(buf)? {
            Some((head, len)) => {
                assert_eq!(len, buf.len());
                Ok(head)
            }
            None => panic!("incomplete"),
        }
    }

    #[test]
    fn response_fixture_both_ways() {
        let head = parse_resp(RESPONSE).expect("valid");
        assert_eq!(head, response());
        assert_eq!(head.content_length(), Some(100));
        assert_eq!(head.header("content-range"), Some(&b"bytes 0-99/1000"[..]));
        let mut out = Vec::new();
        response().encode(&mut out);
        assert_eq!(out, RESPONSE);
        for n in 0..RESPONSE.len() {
            assert_eq!(parse_response_head(&RESPONSE[..n]), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn response_status_lines() {
        let status = |raw: &[u8]| parse_resp(raw).map(|h| (h.status, h.minor_version));
        assert_eq!(status(b"HTTP/1.0 200 OK\r\n\r\n"), Ok((200, 0)));
        assert_eq!(status(b"HTTP/1.1 404 \r\n\r\n"), Ok((404, 1)));
        assert_eq!(status(b"HTTP/1.1 204\r\n\r\n"), Ok((204, 1)));
        assert_eq!(status(b"HTTP/1.1 100 Continue\r\n\r\n"), Ok((100, 1)));
        assert_eq!(status(b"HTTP/1.1 599 Whatever it is\r\n\r\n"), Ok((599, 1)));
        assert_eq!(
            status(b"HTTP/2.0 200 OK\r\n\r\n"),
            Err(HeadError::UnsupportedVersion)
        );
        assert_eq!(
            status(b"HTTP/1.1 20 OK\r\n\r\n"),
            Err(malformed("status line"))
        );
        assert_eq!(
            status(b"HTTP/1.1  200 OK\r\n\r\n"),
            Err(malformed("status line"))
        );
        assert_eq!(
            status(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Err(malformed("status line"))
        );
        assert_eq!(
            status(b"HTTP/1.1 600 OK\r\n\r\n"),
            Err(malformed("status code"))
        );
        assert_eq!(
            status(b"HTTP/1.1 099 OK\r\n\r\n"),
            Err(malformed("status code"))
        );
        assert_eq!(
            status(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(malformed("status code"))
        );
        assert_eq!(
            status(b"HTTP/1.1 200 O\x01K\r\n\r\n"),
            Err(malformed("reason phrase"))
        );
        assert_eq!(status(b"HTTP/1.1\r\n\r\n"), Err(malformed("status line")));
        assert_eq!(status(b"\r\n\r\n"), Err(malformed("http version")));
    }

    #[test]
    fn response_headers_and_framing() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_resp(raw),
            Err(malformed("both transfer-encoding and content-length"))
        );
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(
            parse_resp(raw),
            Err(malformed("conflicting content-length"))
        );
        let raw = b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n";
        assert_eq!(parse_resp(raw), Err(malformed("whitespace before colon")));
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\n"),
            Err(malformed("bare lf"))
        );
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES, b'x');
        assert_eq!(parse_response_head(&big), Err(HeadError::TooLarge));
        // No Host needed, no body restriction.
        let head = parse_resp(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n").expect("valid");
        assert_eq!(head.content_length(), Some(7));
    }

    /// [`parse_request_head`] or [`parse_response_head`].
    type HeadParser<H> = fn(&[u8]) -> Result<Option<(H, usize)>, HeadError>;

    /// What both head parsers must do with any input: an accepted head ends at its first
    /// CRLFCRLF within the limits and parses the same again from its own bytes (and from their
    /// re-encoding); "incomplete" only below the size limit and before any CRLFCRLF.
    fn check_head<H: Clone + PartialEq + std::fmt::Debug>(
        input: &[u8],
        parse: HeadParser<H>,
        headers: fn(&H) -> &[Header],
        encode: fn(&H, &mut Vec<u8>),
    ) {
        let end = input.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4);
        let result = parse(input);
        assert_eq!(parse(input), result, "deterministic");
        match result {
            Ok(Some((head, len))) => {
                assert_eq!(Some(len), end, "ends at the first CRLFCRLF");
                assert!(len <= MAX_HEAD_BYTES);
                assert!(headers(&head).len() <= MAX_HEADERS);
                assert_eq!(parse(&input[..len]), Ok(Some((head.clone(), len))), "re-parses from its own bytes");
                assert_eq!(parse(&input[..len / 2]), Ok(None), "a prefix is incomplete");
                let mut out = Vec::new();
                encode(&head, &mut out);
                assert_eq!(parse(&out), Ok(Some((head, out.len()))), "re-encoded head parses back");
            }
            Ok(None) => {
                assert!(input.len() < MAX_HEAD_BYTES, "incomplete at or past the size limit");
                assert_eq!(end, None, "incomplete despite a CRLFCRLF");
            }
            Err(HeadError::TooLarge) => assert!(input.len() >= MAX_HEAD_BYTES),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }

    static FUZZ_REQUESTS: &[&[u8]] = &[
        REQUEST,
        b"HEAD /a%20b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"GET http://vip.test/a HTTP/1.1\r\nHost: vip.test\r\nX-Pad: \t v \t\r\nX-Empty:\r\n\r\nGET / HTTP/1.1\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];

    #[test]
    fn fuzz_request_head() {
        crate::fuzz::fuzz_bytes("request_head", FUZZ_REQUESTS, |input| {
            check_head(input, parse_request_head, |h| &h.headers, RequestHead::encode);
            if let Ok(Some((head, _))) = parse_request_head(input) {
                assert!(head.target.len() <= MAX_TARGET_BYTES);
                assert!(head.minor_version <= 9);
                assert!(!(matches!(head.method, Method::Get | Method::Head) && head.has_body()));
            }
        });
    }

    #[test]
    fn fuzz_response_head() {
        let corpus: &[&[u8]] = &[
            RESPONSE,
            b"HTTP/1.0 200 OK\r\nContent-Length: 18446744073709551615\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 100\r\n\r\nHTTP/1.1 204 No Content\r\nX: y\r\n\r\n",
            b"HTTP/1.1 301 Moved\r\nLocation: http://m/a\r\nLink: <http://m/a>; rel=duplicate\r\n\r\n",
        ];
        crate::fuzz::fuzz_bytes("response_head", corpus, |input| {
            check_head(input, parse_response_head, |h| &h.headers, ResponseHead::encode);
            if let Ok(Some((head, _))) = parse_response_head(input) {
                assert!((100..=599).contains(&head.status));
            }
        });
    }

    /// Heads built around the three limits: over any of them is refused with its own error (the
    /// size first, then the target, then the header count), at or under all of them accepted.
    #[test]
    fn fuzz_limits_are_honoured() {
        use rand::Rng;
        let near = |rng: &mut rand::rngs::StdRng, limit: usize| {
            if rng.gen() { rng.gen_range(limit - 2..=limit + 2) } else { rng.gen_range(1..=8) }
        };
        crate::fuzz::fuzz_values(
            "head_limits",
            |rng| {
                let target_len = near(rng, MAX_TARGET_BYTES);
                let mut headers = near(rng, MAX_HEADERS);
                let mut head = format!("GET /{} HTTP/1.1\r\nHost: a\r\n", "t".repeat(target_len - 1));
                head.push_str(&"X: y\r\n".repeat(headers - 1));
                let total = near(rng, MAX_HEAD_BYTES);
                if rng.gen() && total >= head.len() + 2 + 5 {
                    head.push_str(&format!("P: {}\r\n", "p".repeat(total - head.len() - 2 - 5)));
                    headers += 1;
                }
                head.push_str("\r\n");
                (head.into_bytes(), target_len, headers)
            },
            |(head, target_len, headers)| {
                let want = if head.len() > MAX_HEAD_BYTES {
                    Err(HeadError::TooLarge)
                } else if *target_len > MAX_TARGET_BYTES {
                    Err(HeadError::TargetTooLong)
                } else if *headers > MAX_HEADERS {
                    Err(HeadError::TooManyHeaders)
                } else {
                    Ok(Some(head.len()))
                };
                let got = parse_request_head(head).map(|h| h.map(|(h, len)| (len, h.headers.len())));
                assert_eq!(got, want.map(|w| w.map(|len| (len, *headers))));
            },
        );
    }
}

//! Response planning: from a parsed request and an object's metadata to the exact head bytes
//! and the body range to send.
//!
//! Plans are deterministic: no `Date` header, since that needs a clock (the I/O shell may add one
//! with [`ResponsePlan::add_date`]). This module never touches the object's bytes; it only says
//! which of them to send.

use super::head::{Method, RequestHead};
use super::range::{evaluate_range, RangeSpec};
use crate::digest::{self, trim_ows, Sha256};

/// What the response needs to know about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub sha256: Sha256,
    pub last_modified_unix: Option<u64>,
}

/// A response ready to send: write `head`, then the `body` range of the object, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePlan {
    pub status: u16,
    /// The whole serialized head including the final CRLFCRLF. For error responses built here
    /// (4xx/5xx) it also holds their short text body, so the caller writes it as is.
    pub head: Vec<u8>,
    /// `(offset, len)` of the object to send after `head`; `None` when nothing follows
    /// (HEAD, 304, errors, empty objects).
    pub body: Option<(u64, u64)>,
    /// Whether the connection may be reused after this response. When false the head says
    /// `Connection: close` and the caller closes after sending.
    pub keep_alive: bool,
}

impl ResponsePlan {
    /// Inserts a `Date` header (IMF-fixdate of `unix_secs`) right after the status line. Does
    /// nothing for times past year 9999.
    pub fn add_date(&mut self, unix_secs: u64) {
        let Some(date) = imf_fixdate(unix_secs) else {
            return;
        };
        let Some(eol) = self.head.windows(2).position(|w| w == b"\r\n") else {
            return;
        };
        let line = format!("Date: {date}\r\n");
        self.head.splice(eol + 2..eol + 2, line.into_bytes());
    }

    /// Appends a header field to the head, after the others (before the blank line that ends
    /// the head, so a short text body held in `head` stays after it). Characters other than
    /// printable ASCII are dropped from the name and the value, so no caller can break the head.
    pub fn add_header(&mut self, name: &str, value: &str) {
        let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
            return;
        };
        let printable = |s: &str| -> String { s.chars().filter(|c| matches!(c, ' '..='~')).collect() };
        let line = format!("{}: {}\r\n", printable(name), printable(value).trim());
        self.head.splice(end + 2..end + 2, line.into_bytes());
    }
}

/// Standard reason phrase for `status`, or `"Unknown"`.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// Last second of year 9999; IMF-fixdate has a four-digit year.
const MAX_IMF_FIXDATE_UNIX: u64 = 253_402_300_799;

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Formats a unix time as an IMF-fixdate (RFC 9110 §5.6.7), e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`. `None` past year 9999.
pub fn imf_fixdate(unix_secs: u64) -> Option<String> {
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    if unix_secs > MAX_IMF_FIXDATE_UNIX {
        return None;
    }
    let (days, secs) = (unix_secs / 86_400, unix_secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS.get(((days + 4) % 7) as usize)?;
    let month = MONTHS.get(month.checked_sub(1)? as usize)?;
    Some(format!(
        "{weekday}, {day:02} {month} {year:04} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    ))
}

/// Builds a head line by line.
struct HeadWriter(Vec<u8>);

impl HeadWriter {
    fn new(status: u16) -> Self {
        HeadWriter(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).into_bytes())
    }

    fn header(&mut self, name: &str, value: &str) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }

    /// `Server` with anything but printable ASCII removed, so a configured name can never
    /// break the head.
    fn server(&mut self, server: &str) {
        let clean: String = server.chars().filter(|c| matches!(c, ' '..='~')).collect();
        self.header("Server", clean.trim());
    }

    /// `Connection: close` when not reusing the connection; `Connection: keep-alive` for an
    /// HTTP/1.0 client that asked for it (1.0 defaults to close); nothing otherwise.
    fn connection(&mut self, keep_alive: bool, minor_version: u8) {
        if !keep_alive {
            self.header("Connection", "close");
        } else if minor_version == 0 {
            self.header("Connection", "keep-alive");
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}

/// A 4xx/5xx with a `text/plain` body `"<code> <reason>\n"`. The body text is appended to `head`
/// (and counted in Content-Length) unless `send_body` is false (HEAD), and `body` is `None`.
/// `extra` headers go after Content-Length.
fn error_plan(
    status: u16,
    keep_alive: bool,
    minor_version: u8,
    server: &str,
    extra: Option<(&str, &str)>,
    send_body: bool,
) -> ResponsePlan {
    let text = format!("{status} {}\n", reason_phrase(status));
    let mut w = HeadWriter::new(status);
    w.server(server);
    w.header("Content-Type", "text/plain; charset=utf-8");
    w.header("Content-Length", &text.len().to_string());
    if let Some((name, value)) = extra {
        w.header(name, value);
    }
    w.connection(keep_alive, minor_version);
    let mut head = w.finish();
    if send_body {
        head.extend_from_slice(text.as_bytes());
    }
    ResponsePlan {
        status,
        head,
        body: None,
        keep_alive,
    }
}

/// An error response outside any request (a head that failed to parse, an overload refusal).
/// Its short text body `"<code> <reason>\n"` is appended to `head` after the CRLFCRLF and `body`
/// is `None`, so the caller writes `head` and is done. Adds `Connection: close` when
/// `keep_alive` is false; after a head parse error it should be.
pub fn plan_error_response(status: u16, keep_alive: bool, server: &str) -> ResponsePlan {
    error_plan(status, keep_alive, 1, server, None, true)
}

/// An error response to a parsed request (404, 503, ...): like [`plan_error_response`], but
/// keeps the connection per the request, leaves the body text out for HEAD, and closes when the
/// request announced a body that will not be read. A 405 carries `Allow: GET, HEAD`.
pub fn plan_request_error(req: &RequestHead, status: u16, server: &str) -> ResponsePlan {
    let extra = (status == 405).then_some(("Allow", "GET, HEAD"));
    request_error(req, status, server, extra)
}

fn request_error(
    req: &RequestHead,
    status: u16,
    server: &str,
    extra: Option<(&str, &str)>,
) -> ResponsePlan {
    let keep_alive = req.keep_alive() && !req.has_body();
    let send_body = req.method != Method::Head;
    error_plan(
        status,
        keep_alive,
        req.minor_version,
        server,
        extra,
        send_body,
    )
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, RFC 9110 §13.1.2).
fn if_none_match(value: &[u8], etag: &str) -> bool {
    let value = trim_ows(value);
    if value == b"*" {
        return true;
    }
    value.split(|&b| b == b',').any(|tag| {
        let tag = trim_ows(tag);
        tag.strip_prefix(b"W/").unwrap_or(tag) == etag.as_bytes()
    })
}

/// Whether `If-Range` lets the Range header apply: an entity tag must match strongly (a weak tag
/// never does), a date must be exactly the Last-Modified we send (RFC 9110 §13.1.5).
fn if_range_allows(value: Option<&[u8]>, etag: &str, last_modified: Option<&str>) -> bool {
    let Some(value) = value else {
        return true;
    };
    let value = trim_ows(value);
    value == etag.as_bytes() || last_modified.is_some_and(|lm| value == lm.as_bytes())
}

/// Plans a 200 carrying a small document generated on the spot (a Metalink document, say): the
/// document is appended to `head` for a GET (like an error's text) and left out for a HEAD, so
/// `body` is `None` either way. Range and conditional headers are ignored: a 200 with the whole
/// document is always a valid answer. Other methods get 405, and the connection is kept as for
/// [`plan_object_response`].
///
/// Header order is fixed: `Server`, `Content-Type`, `Content-Length`, `Connection`.
pub fn plan_document_response(
    req: &RequestHead,
    content_type: &str,
    document: &[u8],
    server: &str,
) -> ResponsePlan {
    let send_body = match req.method {
        Method::Get => true,
        Method::Head => false,
        Method::Other(_) => return plan_request_error(req, 405, server),
    };
    let keep_alive = req.keep_alive() && !req.has_body();
    let mut w = HeadWriter::new(200);
    w.server(server);
    w.header("Content-Type", content_type);
    w.header("Content-Length", &document.len().to_string());
    w.connection(keep_alive, req.minor_version);
    let mut head = w.finish();
    if send_body {
        head.extend_from_slice(document);
    }
    ResponsePlan {
        status: 200,
        head,
        body: None,
        keep_alive,
    }
}

/// Plans the response to a GET or HEAD for an object that exists.
///
/// - other methods: 405 with `Allow: GET, HEAD`;
/// - `If-None-Match` matching the ETag (or `*`): 304, no body;
/// - GET with a satisfiable single `Range` (and a matching `If-Range`, if any): 206 with
///   `Content-Range: bytes a-b/size`; unsatisfiable: 416 with `Content-Range: bytes */size`;
/// - otherwise 200 with `Repr-Digest` and `Digest`.
///
/// Range is ignored for HEAD (RFC 9110 §14.2: GET is the only method with range handling), so a
/// HEAD gets exactly the headers of the corresponding full GET and no body. `If-Modified-Since`
/// is not evaluated (answering 200 is always allowed); ETags are. The connection is kept per
/// [`RequestHead::keep_alive`], but closed when the request announced a body.
///
/// Header order is fixed: `Server`, `Content-Type`, `Content-Length`, `Content-Range`,
/// `Accept-Ranges`, `ETag`, `Last-Modified`, `Repr-Digest`, `Digest`, `Connection`.
/// `Repr-Digest` describes the whole object, so it is on 206 too; `Digest` only on 200.
pub fn plan_object_response(req: &RequestHead, meta: &ObjectMeta, server: &str) -> ResponsePlan {
    let keep_alive = req.keep_alive() && !req.has_body();
    let minor = req.minor_version;
    let is_head = match req.method {
        Method::Get => false,
        Method::Head => true,
        Method::Other(_) => return plan_request_error(req, 405, server),
    };
    let etag = digest::etag(&meta.sha256);
    let last_modified = meta.last_modified_unix.and_then(imf_fixdate);

    if req
        .header("if-none-match")
        .is_some_and(|v| if_none_match(v, &etag))
    {
        let mut w = HeadWriter::new(304);
        w.server(server);
        w.header("ETag", &etag);
        if let Some(lm) = &last_modified {
            w.header("Last-Modified", lm);
        }
        w.connection(keep_alive, minor);
        return ResponsePlan {
            status: 304,
            head: w.finish(),
            body: None,
            keep_alive,
        };
    }

    let range =
        if !is_head && if_range_allows(req.header("if-range"), &etag, last_modified.as_deref()) {
            evaluate_range(req.header("range"), meta.size)
        } else {
            RangeSpec::Full
        };

    let (status, offset, len) = match range {
        RangeSpec::Full => (200, 0, meta.size),
        RangeSpec::Partial { start, end } => (206, start, end - start + 1),
        RangeSpec::Unsatisfiable => {
            let range = format!("bytes */{}", meta.size);
            return request_error(req, 416, server, Some(("Content-Range", &range)));
        }
    };

    let mut w = HeadWriter::new(status);
    w.server(server);
    w.header("Content-Type", "application/octet-stream");
    w.header("Content-Length", &len.to_string());
    if status == 206 {
        w.header(
            "Content-Range",
            &format!("bytes {}-{}/{}", offset, offset + len - 1, meta.size),
        );
    }
    w.header("Accept-Ranges", "bytes");
    w.header("ETag", &etag);
    if let Some(lm) = &last_modified {
        w.header("Last-Modified", lm);
    }
    w.header("Repr-Digest", &digest::repr_digest_value(&meta.sha256));
    if status == 200 {
        w.header("Digest", &digest::legacy_digest_value(&meta.sha256));
    }
    w.connection(keep_alive, minor);
    let body = (!is_head && len > 0).then_some((offset, len));
    ResponsePlan {
        status,
        head: w.finish(),
        body,
        keep_alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request_head, parse_response_head};

    /// SHA-256 of the empty string; its ETag is `"e3b0c44298fc1c149afbf4c8996fb924"`.
    static SHA: Sha256 = [
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
        0xb8, 0x55,
    ];

    fn meta() -> ObjectMeta {
        ObjectMeta {
            size: 1000,
            sha256: SHA,
            last_modified_unix: Some(784_111_777),
        }
    }

    fn req(raw: &str) -> RequestHead {
        match parse_request_head(raw.as_bytes()) {
            Ok(Some((head, _))) => head,
            other => panic!("bad test request {raw:?}: {other:?}"),
        }
    }

    fn get(extra: &str) -> RequestHead {
        req(&format!("GET /f HTTP/1.1\r\nHost: vip\r\n{extra}\r\n"))
    }

    fn plan(r: &RequestHead) -> ResponsePlan {
        plan_object_response(r, &meta(), "baton")
    }

    fn text(p: &ResponsePlan) -> &str {
        std::str::from_utf8(&p.head).expect("heads are ascii")
    }

    static FULL_200: &str = "HTTP/1.1 200 OK\r\n\
Server: baton\r\n\
Content-Type: application/octet-stream\r\n\
Content-Length: 1000\r\n\
Accept-Ranges: bytes\r\n\
ETag: \"e3b0c44298fc1c149afbf4c8996fb924\"\r\n\
Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
Repr-Digest: sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:\r\n\
Digest: SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\r\n\
\r\n";

    static PARTIAL_206: &str = "HTTP/1.1 206 Partial Content\r\n\
Server: baton\r\n\
Content-Type: application/octet-stream\r\n\
Content-Length: 100\r\n\
Content-Range: bytes 100-199/1000\r\n\
Accept-Ranges: bytes\r\n\
ETag: \"e3b0c44298fc1c149afbf4c8996fb924\"\r\n\
Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
Repr-Digest: sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:\r\n\
\r\n";

    static UNSATISFIABLE_416: &str = "HTTP/1.1 416 Range Not Satisfiable\r\n\
Server: baton\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 26\r\n\
Content-Range: bytes */1000\r\n\
\r\n\
416 Range Not Satisfiable\n";

    static NOT_MODIFIED_304: &str = "HTTP/1.1 304 Not Modified\r\n\
Server: baton\r\n\
ETag: \"e3b0c44298fc1c149afbf4c8996fb924\"\r\n\
Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
\r\n";

    static METHOD_405_CLOSE: &str = "HTTP/1.1 405 Method Not Allowed\r\n\
Server: baton\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 23\r\n\
Allow: GET, HEAD\r\n\
Connection: close\r\n\
\r\n\
405 Method Not Allowed\n";

    #[test]
    fn get_full() {
        let p = plan(&get(""));
        assert_eq!(text(&p), FULL_200);
        assert_eq!(
            (p.status, p.body, p.keep_alive),
            (200, Some((0, 1000)), true)
        );
    }

    #[test]
    fn head_full_has_same_head_and_no_body() {
        let p = plan(&req("HEAD /f HTTP/1.1\r\nHost: vip\r\n\r\n"));
        assert_eq!(text(&p), FULL_200);
        assert_eq!((p.status, p.body, p.keep_alive), (200, None, true));
        // Range is only defined for GET.
        let p = plan(&req(
            "HEAD /f HTTP/1.1\r\nHost: vip\r\nRange: bytes=0-9\r\n\r\n",
        ));
        assert_eq!(text(&p), FULL_200);
        assert_eq!(p.body, None);
    }

    #[test]
    fn get_range() {
        let p = plan(&get("Range: bytes=100-199\r\n"));
        assert_eq!(text(&p), PARTIAL_206);
        assert_eq!(
            (p.status, p.body, p.keep_alive),
            (206, Some((100, 100)), true)
        );
        let p = plan(&get("Range: bytes=-1\r\n"));
        assert_eq!(p.status, 206);
        assert_eq!(p.body, Some((999, 1)));
        assert!(text(&p).contains("\r\nContent-Length: 1\r\nContent-Range: bytes 999-999/1000\r\n"));
        // Ignored ranges give the plain 200.
        assert_eq!(text(&plan(&get("Range: bytes=0-1,5-6\r\n"))), FULL_200);
    }

    #[test]
    fn unsatisfiable_range() {
        let p = plan(&get("Range: bytes=1000-\r\n"));
        assert_eq!(text(&p), UNSATISFIABLE_416);
        assert_eq!((p.status, p.body, p.keep_alive), (416, None, true));
    }

    #[test]
    fn if_range() {
        let etag = "\"e3b0c44298fc1c149afbf4c8996fb924\"";
        let p = plan(&get(&format!(
            "Range: bytes=100-199\r\nIf-Range: {etag}\r\n"
        )));
        assert_eq!(text(&p), PARTIAL_206);
        let p = plan(&get(
            "Range: bytes=100-199\r\nIf-Range: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        ));
        assert_eq!(text(&p), PARTIAL_206);
        for stale in [
            "\"0000000000000000000000000000000\"",
            "W/\"e3b0c44298fc1c149afbf4c8996fb924\"",
            "Sun, 06 Nov 1994 08:49:38 GMT",
        ] {
            let p = plan(&get(&format!(
                "Range: bytes=100-199\r\nIf-Range: {stale}\r\n"
            )));
            assert_eq!(text(&p), FULL_200, "{stale}");
            assert_eq!(p.body, Some((0, 1000)));
        }
        // Without Last-Modified no date can match.
        let m = ObjectMeta {
            last_modified_unix: None,
            ..meta()
        };
        let r = get("Range: bytes=100-199\r\nIf-Range: Sun, 06 Nov 1994 08:49:37 GMT\r\n");
        assert_eq!(plan_object_response(&r, &m, "baton").status, 200);
        // If-Range without Range changes nothing.
        assert_eq!(
            text(&plan(&get(&format!("If-Range: {etag}\r\n")))),
            FULL_200
        );
    }

    #[test]
    fn if_none_match() {
        for v in [
            "\"e3b0c44298fc1c149afbf4c8996fb924\"",
            "W/\"e3b0c44298fc1c149afbf4c8996fb924\"",
            "\"x\", \"e3b0c44298fc1c149afbf4c8996fb924\"",
            "*",
        ] {
            let p = plan(&get(&format!("If-None-Match: {v}\r\nRange: bytes=0-1\r\n")));
            assert_eq!(text(&p), NOT_MODIFIED_304, "{v}");
            assert_eq!((p.status, p.body, p.keep_alive), (304, None, true));
        }
        let p = plan(&get(
            "If-None-Match: \"e3b0c44298fc1c149afbf4c8996fb925\"\r\n",
        ));
        assert_eq!(p.status, 200);
    }

    #[test]
    fn other_methods() {
        let r = req("POST /f HTTP/1.1\r\nHost: vip\r\nContent-Length: 5\r\n\r\n");
        let p = plan(&r);
        assert_eq!(text(&p), METHOD_405_CLOSE);
        assert_eq!((p.status, p.body, p.keep_alive), (405, None, false));
        // Without a body the connection stays usable.
        let p = plan(&req("OPTIONS /f HTTP/1.1\r\nHost: vip\r\n\r\n"));
        assert_eq!(p.status, 405);
        assert!(p.keep_alive);
        assert!(!text(&p).contains("Connection"));
    }

    #[test]
    fn connection_header() {
        let p = plan(&get("Connection: close\r\n"));
        assert!(!p.keep_alive);
        assert!(text(&p).ends_with("\r\nDigest: SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\r\nConnection: close\r\n\r\n"));
        let p = plan(&req("GET /f HTTP/1.0\r\n\r\n"));
        assert!(!p.keep_alive);
        assert!(text(&p).ends_with("=\r\nConnection: close\r\n\r\n"));
        let p = plan(&req("GET /f HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(p.keep_alive);
        assert!(text(&p).ends_with("=\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn empty_object_without_date() {
        let m = ObjectMeta {
            size: 0,
            sha256: SHA,
            last_modified_unix: None,
        };
        let p = plan_object_response(&get(""), &m, "baton");
        assert_eq!(
            text(&p),
            "HTTP/1.1 200 OK\r\n\
Server: baton\r\n\
Content-Type: application/octet-stream\r\n\
Content-Length: 0\r\n\
Accept-Ranges: bytes\r\n\
ETag: \"e3b0c44298fc1c149afbf4c8996fb924\"\r\n\
Repr-Digest: sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:\r\n\
Digest: SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\r\n\
\r\n"
        );
        assert_eq!(p.body, None);
        let p = plan_object_response(&get("Range: bytes=0-\r\n"), &m, "baton");
        assert_eq!(p.status, 416);
        assert!(text(&p).contains("\r\nContent-Range: bytes */0\r\n"));
    }

    #[test]
    fn error_responses() {
        let p = plan_error_response(400, false, "baton/0.1");
        assert_eq!(
            text(&p),
            "HTTP/1.1 400 Bad Request\r\n\
Server: baton/0.1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 16\r\n\
Connection: close\r\n\
\r\n\
400 Bad Request\n"
        );
        assert_eq!((p.status, p.body, p.keep_alive), (400, None, false));
        let p = plan_error_response(503, true, "baton");
        assert_eq!(
            text(&p),
            "HTTP/1.1 503 Service Unavailable\r\n\
Server: baton\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 24\r\n\
\r\n\
503 Service Unavailable\n"
        );
        assert!(p.keep_alive);
    }

    #[test]
    fn request_errors_follow_the_request() {
        let p = plan_request_error(&req("HEAD /x HTTP/1.1\r\nHost: vip\r\n\r\n"), 404, "baton");
        assert_eq!(
            text(&p),
            "HTTP/1.1 404 Not Found\r\n\
Server: baton\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 14\r\n\
\r\n"
        );
        assert!(p.keep_alive);
        let p = plan_request_error(&req("GET /x HTTP/1.0\r\n\r\n"), 404, "baton");
        assert!(text(&p).ends_with("Connection: close\r\n\r\n404 Not Found\n"));
        assert!(!p.keep_alive);
    }

    #[test]
    fn plans_parse_back() {
        for r in [
            get(""),
            get("Range: bytes=5-9\r\n"),
            get("Range: bytes=5000-\r\n"),
            get("If-None-Match: *\r\n"),
        ] {
            let p = plan(&r);
            let (head, len) = match parse_response_head(&p.head) {
                Ok(Some(parsed)) => parsed,
                other => panic!("plan head does not parse: {other:?}"),
            };
            assert_eq!(head.status, p.status);
            let trailing = (p.head.len() - len) as u64;
            let body_len = p.body.map_or(trailing, |(_, n)| n);
            if p.status != 304 {
                assert_eq!(head.content_length(), Some(body_len));
            }
        }
    }

    #[test]
    fn server_name_cannot_break_the_head() {
        let p = plan_error_response(500, false, "evil\r\nSet-Cookie: x\u{e9}");
        assert!(text(&p)
            .starts_with("HTTP/1.1 500 Internal Server Error\r\nServer: evilSet-Cookie: x\r\n"));
    }

    #[test]
    fn headers_added_at_the_end() {
        let mut p = plan(&req("HEAD /f HTTP/1.1\r\nHost: vip\r\n\r\n"));
        p.add_header("Link", "<http://m/f>; rel=duplicate");
        p.add_header("X-Evil\r\n", " a\r\nSet-Cookie: b\u{e9} ");
        let expected = FULL_200.strip_suffix("\r\n").expect("blank line").to_owned()
            + "Link: <http://m/f>; rel=duplicate\r\nX-Evil: aSet-Cookie: b\r\n\r\n";
        assert_eq!(text(&p), expected);
        // An error's text body stays after the head.
        let mut p = plan_error_response(404, true, "baton");
        p.add_header("X", "1");
        assert!(text(&p).ends_with("Content-Length: 14\r\nX: 1\r\n\r\n404 Not Found\n"));
    }

    #[test]
    fn documents() {
        let doc = b"<metalink/>\n";
        let p = plan_document_response(&get("Range: bytes=0-1\r\n"), "application/metalink4+xml", doc, "baton");
        assert_eq!(
            text(&p),
            "HTTP/1.1 200 OK\r\n\
Server: baton\r\n\
Content-Type: application/metalink4+xml\r\n\
Content-Length: 12\r\n\
\r\n\
<metalink/>\n"
        );
        assert_eq!((p.status, p.body, p.keep_alive), (200, None, true));
        let p = plan_document_response(
            &req("HEAD /f.meta4 HTTP/1.0\r\n\r\n"),
            "application/metalink4+xml",
            doc,
            "baton",
        );
        assert_eq!(
            text(&p),
            "HTTP/1.1 200 OK\r\n\
Server: baton\r\n\
Content-Type: application/metalink4+xml\r\n\
Content-Length: 12\r\n\
Connection: close\r\n\
\r\n"
        );
        assert!(!p.keep_alive);
        let p = plan_document_response(
            &req("DELETE /f.meta4 HTTP/1.1\r\nHost: vip\r\n\r\n"),
            "application/metalink4+xml",
            doc,
            "baton",
        );
        assert_eq!(p.status, 405);
    }

    #[test]
    fn add_date() {
        let mut p = plan_error_response(404, true, "baton");
        p.add_date(1_700_000_000);
        assert!(text(&p).starts_with(
            "HTTP/1.1 404 Not Found\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\nServer: baton\r\n"
        ));
        let before = p.clone();
        p.add_date(u64::MAX);
        assert_eq!(p, before);
    }

    #[test]
    fn dates() {
        assert_eq!(
            imf_fixdate(0).as_deref(),
            Some("Thu, 01 Jan 1970 00:00:00 GMT")
        );
        assert_eq!(
            imf_fixdate(784_111_777).as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        assert_eq!(
            imf_fixdate(951_782_400).as_deref(),
            Some("Tue, 29 Feb 2000 00:00:00 GMT")
        );
        assert_eq!(
            imf_fixdate(1_700_000_000).as_deref(),
            Some("Tue, 14 Nov 2023 22:13:20 GMT")
        );
        assert_eq!(
            imf_fixdate(MAX_IMF_FIXDATE_UNIX).as_deref(),
            Some("Fri, 31 Dec 9999 23:59:59 GMT")
        );
        assert_eq!(imf_fixdate(MAX_IMF_FIXDATE_UNIX + 1), None);
        assert_eq!(imf_fixdate(u64::MAX), None);
    }

    #[test]
    fn calendar_is_continuous_to_year_9999() {
        let leap = |y: u64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let month_len = |y: u64, m: u64| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for days in 1..=MAX_IMF_FIXDATE_UNIX / 86_400 {
            let (y, m, d) = prev;
            let next = if d < month_len(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            prev = civil_from_days(days);
            assert_eq!(prev, next, "day {days}");
        }
        assert_eq!(prev, (9999, 12, 31));
    }

    #[test]
    fn reasons() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(206), "Partial Content");
        assert_eq!(reason_phrase(416), "Range Not Satisfiable");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(505), "HTTP Version Not Supported");
        assert_eq!(reason_phrase(299), "Unknown");
    }
}

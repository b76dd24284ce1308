//! Request target → safe relative object path.
//!
//! The result is used to open files under a storage root, so this is the line of defence against
//! path traversal. It must never let through a `..` segment, an absolute path, a NUL, a
//! backslash or a control character, and it percent-decodes exactly once.

use super::MAX_TARGET_BYTES;

/// Why a target cannot name an object. [`PathError::status`] gives the status to answer with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// Neither origin-form (`/path`) nor absolute-form (`http://host/path`).
    #[error("request target is not in origin form")]
    NotOriginForm,
    /// `%` not followed by two hex digits.
    #[error("bad percent-encoding in path")]
    BadPercentEncoding,
    /// A `..` segment, raw or encoded.
    #[error("path has a dot-dot segment")]
    Traversal,
    /// `%2F` or `%5C`: a separator hidden from the segment split.
    #[error("path has an encoded separator")]
    EncodedSeparator,
    /// A NUL byte, raw or `%00`.
    #[error("path has a nul byte")]
    Nul,
    /// Nothing left after normalization (`/`, `/./`, ...).
    #[error("path is empty")]
    Empty,
    /// Longer than [`MAX_TARGET_BYTES`].
    #[error("path is longer than {MAX_TARGET_BYTES} bytes")]
    TooLong,
    /// Decoded bytes are not UTF-8.
    #[error("path is not utf-8")]
    NotUtf8,
    /// A raw backslash (a separator on some file systems and proxies).
    #[error("path has a backslash")]
    Backslash,
    /// A control character other than NUL, raw or encoded (`%0A`, ...).
    #[error("path has a control character")]
    Control,
    /// [`ObjectPath::from_relative`] was given a path with a leading, trailing or repeated `/`
    /// or a `.` segment.
    #[error("path is not normalized")]
    NotNormalized,
}

impl PathError {
    /// Status code to answer with: 404 for the empty path, 414 for an overlong one, 400
    /// otherwise.
    pub fn status(&self) -> u16 {
        match self {
            PathError::Empty => 404,
            PathError::TooLong => 414,
            _ => 400,
        }
    }
}

/// A normalized relative object path such as `dir/file.bin`: valid UTF-8, no leading `/`, no
/// empty, `.` or `..` segments, no NUL, backslash or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectPath(String);

impl ObjectPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated segments, none of them empty.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Checks a path that is already in normalized form (as stored in a handoff or a config), without
    /// percent-decoding it.
    pub fn from_relative(path: &str) -> Result<ObjectPath, PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > MAX_TARGET_BYTES {
            return Err(PathError::TooLong);
        }
        for seg in path.split('/') {
            match seg {
                "" | "." => return Err(PathError::NotNormalized),
                ".." => return Err(PathError::Traversal),
                _ => {}
            }
            for &b in seg.as_bytes() {
                check_byte(b)?;
            }
        }
        Ok(ObjectPath(path.to_string()))
    }
}

impl std::fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Percent-encodes every byte of `path` but RFC 3986 unreserved characters and `/`: the path
/// part of a URL that names the object `path` (decoded once by [`object_path`], it is `path`
/// again).
pub fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Rejects bytes that must not appear in a path segment, raw or decoded.
fn check_byte(b: u8) -> Result<(), PathError> {
    match b {
        0 => Err(PathError::Nul),
        b'\\' => Err(PathError::Backslash),
        b if b < 0x20 || b == 0x7f => Err(PathError::Control),
        _ => Ok(()),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one segment, once.
fn decode_segment(raw: &str) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            check_byte(b)?;
            out.push(b);
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.next().and_then(hex_value),
            bytes.next().and_then(hex_value),
        ) else {
            return Err(PathError::BadPercentEncoding);
        };
        let d = hi << 4 | lo;
        if d == b'/' || d == b'\\' {
            return Err(PathError::EncodedSeparator);
        }
        check_byte(d)?;
        out.push(d);
    }
    Ok(out)
}

/// The path part of an origin-form or absolute-form target, with query and fragment dropped.
///
/// Absolute-form (`http://host/path`) is accepted by taking its path, because RFC 9112 §3.2.2
/// says servers must accept it; the authority is not compared with the Host header, since the
/// object namespace is the same whatever name the client used.
fn path_part(target: &str) -> Result<&str, PathError> {
    let rest = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let after_scheme = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(PathError::NotOriginForm);
        };
        let auth_end = after_scheme
            .find(['/', '?', '#'])
            .unwrap_or(after_scheme.len());
        if auth_end == 0 {
            return Err(PathError::NotOriginForm);
        }
        &after_scheme[auth_end..]
    };
    Ok(rest.split(['?', '#']).next().unwrap_or_default())
}

/// Turns a request target into a safe relative object path.
///
/// Drops query and fragment, percent-decodes exactly once (so `%252e%252e` becomes the plain
/// file name `%2e%2e`), rejects encoded separators (`%2F`, `%5C`), NUL, backslashes, control
/// characters, non-UTF-8 and any `..` segment (even one that would stay inside the root), drops
/// `.` segments and collapses repeated slashes. `/` alone is [`PathError::Empty`].
pub fn object_path(target: &str) -> Result<ObjectPath, PathError> {
    if target.len() > MAX_TARGET_BYTES {
        return Err(PathError::TooLong);
    }
    let mut out = String::with_capacity(target.len());
    for raw in path_part(target)?.split('/') {
        let seg = decode_segment(raw)?;
        match seg.as_slice() {
            b"" | b"." => continue,
            b".." => return Err(PathError::Traversal),
            _ => {}
        }
        let seg = String::from_utf8(seg).map_err(|_| PathError::NotUtf8)?;
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(&seg);
    }
    if out.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(ObjectPath(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(target: &str) -> String {
        match object_path(target) {
            Ok(p) => p.as_str().to_string(),
            Err(e) => panic!("{target:?} rejected: {e}"),
        }
    }

    fn err(target: &str) -> PathError {
        match object_path(target) {
            Ok(p) => panic!("{target:?} accepted as {p}"),
            Err(e) => e,
        }
    }

    #[test]
    fn percent_encoding_round_trips() {
        assert_eq!(percent_encode_path("a b/c%d?.bin"), "a%20b/c%25d%3F.bin");
        assert_eq!(percent_encode_path("\u{e4}/x~y_z-1.iso"), "%C3%A4/x~y_z-1.iso");
        for p in ["a b/c%d?.bin", "\u{e4}t\u{e9}/#;,<>\"'", "%2e%2e/x"] {
            assert_eq!(ok(&format!("/{}", percent_encode_path(p))), p);
        }
    }

    #[test]
    fn plain_paths() {
        assert_eq!(ok("/file.bin"), "file.bin");
        assert_eq!(ok("/dir/sub/file.bin"), "dir/sub/file.bin");
        assert_eq!(ok("/dir/file.bin?x=1&y=/../"), "dir/file.bin");
        assert_eq!(ok("/dir/file.bin#frag/.."), "dir/file.bin");
        assert_eq!(ok("/a%20b/%C3%A9t%C3%A9"), "a b/été");
        assert_eq!(ok("/..."), "...");
        assert_eq!(ok("/a..b/.hidden"), "a..b/.hidden");
    }

    #[test]
    fn normalizes_dots_and_slashes() {
        assert_eq!(ok("//a///b//"), "a/b");
        assert_eq!(ok("/./a/./b/."), "a/b");
        assert_eq!(ok("/%2e/a"), "a");
    }

    #[test]
    fn segments() {
        let p = object_path("/a//b/c.bin").expect("valid");
        assert_eq!(p.segments().collect::<Vec<_>>(), ["a", "b", "c.bin"]);
    }

    #[test]
    fn traversal() {
        assert_eq!(err("/.."), PathError::Traversal);
        assert_eq!(err("/../etc/passwd"), PathError::Traversal);
        assert_eq!(err("/a/../../etc/passwd"), PathError::Traversal);
        assert_eq!(err("/a/../b"), PathError::Traversal);
        assert_eq!(err("/%2e%2e"), PathError::Traversal);
        assert_eq!(err("/%2E%2e/x"), PathError::Traversal);
        assert_eq!(err("/.%2e/"), PathError::Traversal);
        assert_eq!(err("/a/%2e./b"), PathError::Traversal);
    }

    #[test]
    fn decodes_only_once() {
        assert_eq!(ok("/%252e%252e"), "%2e%2e");
        assert_eq!(ok("/%252e%252e/%252fx"), "%2e%2e/%2fx");
    }

    #[test]
    fn encoded_separators() {
        assert_eq!(err("/a%2fb"), PathError::EncodedSeparator);
        assert_eq!(err("/a%2Fb"), PathError::EncodedSeparator);
        assert_eq!(err("/..%2f..%2fetc"), PathError::EncodedSeparator);
        assert_eq!(err("/a%5cb"), PathError::EncodedSeparator);
        assert_eq!(err("/a%5Cb"), PathError::EncodedSeparator);
    }

    #[test]
    fn nul_backslash_control() {
        assert_eq!(err("/a%00b"), PathError::Nul);
        assert_eq!(err("/a\0b"), PathError::Nul);
        assert_eq!(err("/a\\b"), PathError::Backslash);
        assert_eq!(err("/..\\..\\x"), PathError::Backslash);
        assert_eq!(err("/a%0ab"), PathError::Control);
        assert_eq!(err("/a%7Fb"), PathError::Control);
        assert_eq!(err("/a\tb"), PathError::Control);
    }

    #[test]
    fn bad_percent_encoding() {
        assert_eq!(err("/%zz"), PathError::BadPercentEncoding);
        assert_eq!(err("/a%"), PathError::BadPercentEncoding);
        assert_eq!(err("/a%4"), PathError::BadPercentEncoding);
        assert_eq!(err("/a%4g"), PathError::BadPercentEncoding);
    }

    #[test]
    fn not_utf8() {
        assert_eq!(err("/%ff"), PathError::NotUtf8);
        assert_eq!(err("/%C3"), PathError::NotUtf8);
    }

    #[test]
    fn empty() {
        assert_eq!(err("/"), PathError::Empty);
        assert_eq!(err("//./"), PathError::Empty);
        assert_eq!(err("/?a=b"), PathError::Empty);
        assert_eq!(PathError::Empty.status(), 404);
    }

    #[test]
    fn too_long() {
        let at_limit = format!("/{}", "a".repeat(MAX_TARGET_BYTES - 1));
        assert_eq!(ok(&at_limit).len(), MAX_TARGET_BYTES - 1);
        let over = format!("/{}", "a".repeat(MAX_TARGET_BYTES));
        assert_eq!(err(&over), PathError::TooLong);
        assert_eq!(PathError::TooLong.status(), 414);
    }

    #[test]
    fn target_forms() {
        assert_eq!(ok("http://example.test/dir/f.bin"), "dir/f.bin");
        assert_eq!(ok("HTTPS://example.test:8443/f.bin?q"), "f.bin");
        assert_eq!(err("http://example.test"), PathError::Empty);
        assert_eq!(err("http://example.test?x"), PathError::Empty);
        assert_eq!(err("http:///f.bin"), PathError::NotOriginForm);
        assert_eq!(err("*"), PathError::NotOriginForm);
        assert_eq!(err("example.test:443"), PathError::NotOriginForm);
        assert_eq!(err("ftp://example.test/f"), PathError::NotOriginForm);
        assert_eq!(err("f.bin"), PathError::NotOriginForm);
        assert_eq!(err(""), PathError::NotOriginForm);
        assert_eq!(err("http://example.test/../x"), PathError::Traversal);
        assert_eq!(PathError::NotOriginForm.status(), 400);
    }

    #[test]
    fn from_relative() {
        assert_eq!(
            ObjectPath::from_relative("a/b.bin").map(|p| p.to_string()),
            Ok("a/b.bin".into())
        );
        assert_eq!(ObjectPath::from_relative(""), Err(PathError::Empty));
        assert_eq!(
            ObjectPath::from_relative("/a"),
            Err(PathError::NotNormalized)
        );
        assert_eq!(
            ObjectPath::from_relative("a/"),
            Err(PathError::NotNormalized)
        );
        assert_eq!(
            ObjectPath::from_relative("a//b"),
            Err(PathError::NotNormalized)
        );
        assert_eq!(
            ObjectPath::from_relative("./a"),
            Err(PathError::NotNormalized)
        );
        assert_eq!(
            ObjectPath::from_relative("a/../b"),
            Err(PathError::Traversal)
        );
        assert_eq!(ObjectPath::from_relative("a\\b"), Err(PathError::Backslash));
        assert_eq!(ObjectPath::from_relative("a\0b"), Err(PathError::Nul));
        assert_eq!(ObjectPath::from_relative("a\nb"), Err(PathError::Control));
        // Not decoded: a literal percent sequence is a plain name.
        assert_eq!(
            ObjectPath::from_relative("%2e%2e").map(|p| p.to_string()),
            Ok("%2e%2e".into())
        );
        // Whatever object_path returns is accepted back.
        let p = object_path("/x//./y%20z").expect("valid");
        assert_eq!(ObjectPath::from_relative(p.as_str()), Ok(p));
    }
}

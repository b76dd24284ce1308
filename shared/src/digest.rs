//! SHA-256 digests and the header values that carry them: strong ETags, RFC 9530 `Repr-Digest`
//! and RFC 3230 `Digest`.
//!
//! This module only formats and parses digest values; it never hashes file contents on its own
//! schedule or touches storage (callers hash with `sha2` and pass the result in).

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

/// A raw SHA-256 digest.
pub type Sha256 = [u8; 32];

/// Number of hex characters of the digest used in an ETag. 128 bits keep collisions out of reach
/// while leaving the header short.
pub const ETAG_HEX_CHARS: usize = 32;

/// Base64 decoder for incoming digests: the standard alphabet, padding optional (RFC 8941 byte
/// sequences should be padded, but senders that drop it are common and harmless).
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Lower-case hex of the whole digest (64 characters).
pub fn sha256_hex(d: &Sha256) -> String {
    hex::encode(d)
}

/// Strong entity tag for an object: the first [`ETAG_HEX_CHARS`] hex characters of its digest, in
/// double quotes, e.g. `"e3b0c44298fc1c149afbf4c8996fb924"`.
pub fn etag(d: &Sha256) -> String {
    let hex = sha256_hex(d);
    let mut out = String::with_capacity(ETAG_HEX_CHARS + 2);
    out.push('"');
    out.push_str(&hex[..ETAG_HEX_CHARS]);
    out.push('"');
    out
}

/// RFC 9530 `Repr-Digest` field value: `sha-256=:<base64>:`.
pub fn repr_digest_value(d: &Sha256) -> String {
    format!("sha-256=:{}:", STANDARD.encode(d))
}

/// RFC 3230 `Digest` field value: `SHA-256=<base64>`.
pub fn legacy_digest_value(d: &Sha256) -> String {
    format!("SHA-256={}", STANDARD.encode(d))
}

/// Finds the `sha-256` member of an RFC 9530 `Repr-Digest` (or `Content-Digest`) dictionary and
/// returns its digest. Other algorithms, member parameters and optional whitespace are ignored.
/// Returns `None` when there is no well-formed `sha-256` member with exactly 32 bytes.
pub fn parse_repr_digest(value: &[u8]) -> Option<Sha256> {
    for member in value.split(|&b| b == b',') {
        let member = trim_ows(member);
        let Some(rest) = member.strip_prefix(b"sha-256=:") else {
            continue;
        };
        let Some(end) = rest.iter().position(|&b| b == b':') else {
            continue;
        };
        // Anything after the closing colon must be parameters (`;key=value`), which we ignore.
        let after = &rest[end + 1..];
        if !after.is_empty() && after[0] != b';' {
            continue;
        }
        let Ok(bytes) = LENIENT_BASE64.decode(&rest[..end]) else {
            continue;
        };
        if let Ok(digest) = Sha256::try_from(bytes.as_slice()) {
            return Some(digest);
        }
    }
    None
}

/// Finds the `SHA-256` member (any case) of an RFC 3230 `Digest` value and returns its digest;
/// `None` when there is no well-formed member with exactly 32 bytes.
pub fn parse_legacy_digest(value: &[u8]) -> Option<Sha256> {
    value.split(|&b| b == b',').find_map(|member| {
        let member = trim_ows(member);
        let eq = member.iter().position(|&b| b == b'=')?;
        let (alg, v) = (trim_ows(&member[..eq]), trim_ows(&member[eq + 1..]));
        if !alg.eq_ignore_ascii_case(b"sha-256") {
            return None;
        }
        let bytes = LENIENT_BASE64.decode(v).ok()?;
        Sha256::try_from(bytes.as_slice()).ok()
    })
}

/// Trims optional whitespace (SP and HTAB, RFC 9110 §5.6.3) from both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of the empty string.
    static EMPTY: Sha256 = [
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
        0xb8, 0x55,
    ];
    static EMPTY_REPR: &str = "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:";

    #[test]
    fn fixture_matches_sha2() {
        use sha2::Digest as _;
        let computed: Sha256 = sha2::Sha256::digest(b"").into();
        assert_eq!(computed, EMPTY);
    }

    #[test]
    fn hex_and_etag() {
        assert_eq!(
            sha256_hex(&EMPTY),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(etag(&EMPTY), "\"e3b0c44298fc1c149afbf4c8996fb924\"");
    }

    #[test]
    fn digest_values() {
        assert_eq!(repr_digest_value(&EMPTY), EMPTY_REPR);
        assert_eq!(
            legacy_digest_value(&EMPTY),
            "SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn legacy_digest_parses_its_own_output_and_skips_other_algorithms() {
        assert_eq!(parse_legacy_digest(legacy_digest_value(&EMPTY).as_bytes()), Some(EMPTY));
        let v = format!("MD5=HUXZLQLMuI/KZ5KDcJPcOA==, sha-256={}", &legacy_digest_value(&EMPTY)[8..]);
        assert_eq!(parse_legacy_digest(v.as_bytes()), Some(EMPTY));
        assert_eq!(parse_legacy_digest(b"SHA-256=AAAA"), None);
        assert_eq!(parse_legacy_digest(b"MD5=HUXZLQLMuI/KZ5KDcJPcOA=="), None);
    }

    #[test]
    fn parse_own_output() {
        assert_eq!(parse_repr_digest(EMPTY_REPR.as_bytes()), Some(EMPTY));
        let other = [0x5a; 32];
        assert_eq!(
            parse_repr_digest(repr_digest_value(&other).as_bytes()),
            Some(other)
        );
    }

    #[test]
    fn parse_among_other_algorithms() {
        let v =
            b"sha-512=:AAAA:,  sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=: , md5=:x:";
        assert_eq!(parse_repr_digest(v), Some(EMPTY));
        let v = b"\tsha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:;p=1";
        assert_eq!(parse_repr_digest(v), Some(EMPTY));
        // Padding dropped.
        let v = b"sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU:";
        assert_eq!(parse_repr_digest(v), Some(EMPTY));
    }

    #[test]
    fn parse_rejects() {
        assert_eq!(parse_repr_digest(b""), None);
        assert_eq!(parse_repr_digest(b"sha-512=:AAAA:"), None);
        // Wrong length (31 bytes).
        assert_eq!(
            parse_repr_digest(b"sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:"),
            None
        );
        // Not base64.
        assert_eq!(parse_repr_digest(b"sha-256=:!!!:"), None);
        // Unterminated.
        assert_eq!(
            parse_repr_digest(b"sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
            None
        );
        // Legacy syntax is a different header.
        assert_eq!(
            parse_repr_digest(b"SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
            None
        );
        // Junk after the byte sequence.
        assert_eq!(
            parse_repr_digest(b"sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:x"),
            None
        );
    }

    #[test]
    fn trim() {
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
    }
}

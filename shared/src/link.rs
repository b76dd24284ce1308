//! RFC 8288 `Link` header values as RFC 6249 (Metalink/HTTP) uses them: `rel=duplicate` for a
//! mirror of the same representation, with its priority (`pri`) and country (`geo`), and
//! `rel=describedby; type="application/metalink4+xml"` for the Metalink document that describes
//! it.
//!
//! Writing is exact and fixed-order. Parsing takes header values from any server: it is bounded
//! in what it keeps, skips members it cannot read and never panics. It never resolves a relative
//! reference (it has no base URL) and never fetches anything.

use crate::digest::trim_ows;

/// Media type of a Metalink 4 document (RFC 5854 §6).
pub const METALINK_MEDIA_TYPE: &str = "application/metalink4+xml";

/// Largest `pri` RFC 6249 §3 allows (priorities run from 1, the most preferred, to 999999).
pub const MAX_PRI: u32 = 999_999;

/// Most `rel=duplicate` links [`parse_links`] keeps. A client uses a handful of mirrors at once;
/// more than this in one response is noise (or an attempt to make the client work).
pub const MAX_DUPLICATES: usize = 64;

/// Most Metalink document links [`parse_links`] keeps: a client fetches one, and tries another
/// only when that fails.
pub const MAX_METALINKS: usize = 4;

/// Most link members [`parse_links`] looks at across all the fields it is given, whatever they
/// are; the rest are ignored. Bounds the work for a response head full of tiny members.
pub const MAX_LINK_MEMBERS: usize = 256;

/// Most parameters read per link member; the rest of the member is skipped.
pub const MAX_LINK_PARAMS: usize = 32;

/// A mirror of the resource (`rel=duplicate`, RFC 6249 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The URI reference as written between `<` and `>` (relative references are not resolved).
    pub url: String,
    /// `pri`: 1 is the most preferred; `None` when absent or not in 1..=[`MAX_PRI`].
    pub pri: Option<u32>,
    /// `geo`: ISO 3166-1 alpha-2 country code, lower case; `None` when absent or not two letters.
    pub geo: Option<String>,
}

/// The links of a response that matter to a multi-source download.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// Mirrors, by `pri` (those without one last), in field order among equals.
    pub duplicates: Vec<Duplicate>,
    /// URI references of Metalink 4 documents describing the resource, in field order.
    pub metalinks: Vec<String>,
}

/// The `Link` field value for a mirror: `<url>; rel=duplicate; pri=N; geo=xx`, the optional
/// parameters only when present (and `geo` only when it is two ASCII letters, written in lower
/// case). Bytes that cannot stand between `<` and `>` in a header are percent-encoded.
pub fn duplicate_value(d: &Duplicate) -> String {
    let mut out = format!("<{}>; rel=duplicate", header_safe_url(&d.url));
    if let Some(pri) = d.pri {
        out.push_str(&format!("; pri={pri}"));
    }
    if let Some(geo) = d.geo.as_deref().and_then(country_code) {
        out.push_str(&format!("; geo={geo}"));
    }
    out
}

/// The `Link` field value pointing at a Metalink 4 document:
/// `<url>; rel=describedby; type="application/metalink4+xml"`.
pub fn describedby_metalink_value(url: &str) -> String {
    format!(
        "<{}>; rel=describedby; type=\"{METALINK_MEDIA_TYPE}\"",
        header_safe_url(url)
    )
}

/// A country code as RFC 6249 `geo` and RFC 5854 `location` carry it: two ASCII letters, lower
/// case. `None` for anything else.
pub fn country_code(code: &str) -> Option<String> {
    (code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| code.to_ascii_lowercase())
}

/// `url` with every byte that is not visible ASCII, and `<`, `>`, `"`, percent-encoded, so it
/// can neither end the `<…>` early nor break the header line.
fn header_safe_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for b in url.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads every link of the given `Link` field values (each may hold several comma-separated
/// members) and keeps the mirrors and Metalink documents.
///
/// Follows RFC 8288 §3: parameter names are case-insensitive, values are tokens or quoted
/// strings (commas and semicolons inside quotes do not split), `rel` is a space-separated list
/// of relation types (matched case-insensitively) and only its first occurrence counts, as for
/// every other parameter. A member without `<…>` or with an unterminated quoted string is
/// skipped; a parameter without a name is ignored. Counts are bounded by [`MAX_LINK_MEMBERS`],
/// [`MAX_LINK_PARAMS`], [`MAX_DUPLICATES`] and [`MAX_METALINKS`].
pub fn parse_links(values: &[&[u8]]) -> Links {
    let mut links = Links::default();
    let mut members = 0;
    'fields: for value in values {
        let mut p = Cursor { s: value, at: 0 };
        loop {
            p.skip(|b| matches!(b, b' ' | b'\t' | b','));
            if p.done() {
                break;
            }
            if members == MAX_LINK_MEMBERS {
                break 'fields;
            }
            members += 1;
            match member(&mut p) {
                Member::Link(link) => keep(&mut links, link),
                Member::Skipped => {}
                // Nothing after an unterminated `<` or quoted string can be split reliably.
                Member::Unreadable => continue 'fields,
            }
        }
    }
    // Stable: equal priorities keep their field order; no priority sorts last.
    links.duplicates.sort_by_key(|d| d.pri.unwrap_or(u32::MAX));
    links
}

/// One parsed link, with the parameters this module reads.
#[derive(Debug, Default)]
struct RawLink {
    url: String,
    rel: Option<Vec<u8>>,
    media_type: Option<Vec<u8>>,
    pri: Option<Vec<u8>>,
    geo: Option<Vec<u8>>,
}

enum Member {
    Link(RawLink),
    /// Malformed but delimited: the cursor is at the next member.
    Skipped,
    /// Malformed with no way to find the next member.
    Unreadable,
}

fn keep(links: &mut Links, link: RawLink) {
    let rel = link.rel.unwrap_or_default();
    let has_rel = |name: &[u8]| {
        rel.split(|&b| b == b' ' || b == b'\t')
            .any(|r| r.eq_ignore_ascii_case(name))
    };
    if has_rel(b"duplicate") && links.duplicates.len() < MAX_DUPLICATES {
        let pri = link
            .pri
            .and_then(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
            })
            .filter(|p| (1..=MAX_PRI).contains(p));
        let geo = link
            .geo
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(country_code));
        links.duplicates.push(Duplicate {
            url: link.url.clone(),
            pri,
            geo,
        });
    }
    let is_metalink = link
        .media_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case(METALINK_MEDIA_TYPE.as_bytes()));
    if has_rel(b"describedby") && is_metalink && links.metalinks.len() < MAX_METALINKS {
        links.metalinks.push(link.url);
    }
}

/// Parses one member starting at `<`, leaving the cursor after it (at a comma or the end).
fn member(p: &mut Cursor<'_>) -> Member {
    if !p.eat(b'<') {
        return if p.skip_member() {
            Member::Skipped
        } else {
            Member::Unreadable
        };
    }
    let Some(len) = p.rest().iter().position(|&b| b == b'>') else {
        return Member::Unreadable;
    };
    let url = &p.rest()[..len];
    p.at += len + 1;
    let url_ok = !url.is_empty() && url.iter().all(|&b| b.is_ascii_graphic() || b >= 0x80);
    let url = match std::str::from_utf8(url) {
        Ok(u) if url_ok => u.to_owned(),
        _ => {
            return if p.skip_member() {
                Member::Skipped
            } else {
                Member::Unreadable
            }
        }
    };
    let mut link = RawLink {
        url,
        ..RawLink::default()
    };
    let mut params = 0;
    loop {
        p.skip(|b| matches!(b, b' ' | b'\t'));
        match p.peek() {
            None | Some(b',') => return Member::Link(link),
            Some(b';') => {
                p.at += 1;
                continue;
            }
            Some(_) => {}
        }
        if params == MAX_LINK_PARAMS {
            return if p.skip_member() {
                Member::Link(link)
            } else {
                Member::Unreadable
            };
        }
        params += 1;
        let name = p.take(is_tchar);
        p.skip(|b| matches!(b, b' ' | b'\t'));
        let value = if p.eat(b'=') {
            p.skip(|b| matches!(b, b' ' | b'\t'));
            if p.peek() == Some(b'"') {
                match p.quoted() {
                    Some(v) => Some(v),
                    None => return Member::Unreadable,
                }
            } else {
                // A token, read leniently: servers write `type=application/metalink4+xml`
                // without the quotes its `/` needs.
                Some(
                    p.take(|b| !matches!(b, b';' | b',' | b' ' | b'\t' | b'"'))
                        .to_vec(),
                )
            }
        } else {
            None
        };
        // Anything else before the next `;` or `,` makes this parameter unreadable: skip it.
        p.skip(|b| matches!(b, b' ' | b'\t'));
        if !matches!(p.peek(), None | Some(b';' | b',')) {
            if !p.skip_param() {
                return Member::Unreadable;
            }
            continue;
        }
        let slot = match name.to_ascii_lowercase().as_slice() {
            b"rel" => &mut link.rel,
            b"type" => &mut link.media_type,
            b"pri" => &mut link.pri,
            b"geo" => &mut link.geo,
            _ => continue,
        };
        // Only the first occurrence counts (RFC 8288 §3.3 for rel; the same rule for the rest).
        if slot.is_none() {
            *slot = value.map(|v| trim_ows(&v).to_vec());
        }
    }
}

/// `tchar` (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A position in one field value.
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        self.s.get(self.at..).unwrap_or_default()
    }

    fn done(&self) -> bool {
        self.rest().is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.rest().first().copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn skip(&mut self, what: impl Fn(u8) -> bool) {
        self.take(what);
    }

    fn take(&mut self, what: impl Fn(u8) -> bool) -> &'a [u8] {
        let rest = self.rest();
        let n = rest.iter().position(|&b| !what(b)).unwrap_or(rest.len());
        self.at += n;
        &rest[..n]
    }

    /// Reads a quoted string (the cursor is at its `"`), undoing `\` escapes; `None` when it is
    /// not terminated.
    fn quoted(&mut self) -> Option<Vec<u8>> {
        let rest = self.rest();
        let mut out = Vec::new();
        let mut i = 1;
        while let Some(&b) = rest.get(i) {
            match b {
                b'"' => {
                    self.at += i + 1;
                    return Some(out);
                }
                b'\\' => {
                    out.push(*rest.get(i + 1)?);
                    i += 2;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        None
    }

    /// Moves to the next top-level `stop` byte (outside quotes) or the end; false when a quoted
    /// string is left open.
    fn skip_until(&mut self, stop: &[u8]) -> bool {
        while let Some(b) = self.peek() {
            if stop.contains(&b) {
                return true;
            }
            if b == b'"' {
                if self.quoted().is_none() {
                    return false;
                }
            } else {
                self.at += 1;
            }
        }
        true
    }

    /// Moves to the comma that ends this member (or the end).
    fn skip_member(&mut self) -> bool {
        self.skip_until(b",")
    }

    /// Moves to the `;` or `,` that ends this parameter (or the end).
    fn skip_param(&mut self) -> bool {
        self.skip_until(b";,")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(url: &str, pri: Option<u32>, geo: Option<&str>) -> Duplicate {
        Duplicate {
            url: url.to_owned(),
            pri,
            geo: geo.map(str::to_owned),
        }
    }

    fn parse(values: &[&str]) -> Links {
        let v: Vec<&[u8]> = values.iter().map(|s| s.as_bytes()).collect();
        parse_links(&v)
    }

    #[test]
    fn values_written() {
        assert_eq!(
            duplicate_value(&dup("http://198.18.2.10/iso/a.iso", Some(1), Some("DE"))),
            "<http://198.18.2.10/iso/a.iso>; rel=duplicate; pri=1; geo=de"
        );
        assert_eq!(
            duplicate_value(&dup("http://m/a", None, None)),
            "<http://m/a>; rel=duplicate"
        );
        // A geo that is not a country code is left out rather than written as is.
        assert_eq!(
            duplicate_value(&dup("http://m/a", Some(7), Some("d;e"))),
            "<http://m/a>; rel=duplicate; pri=7"
        );
        assert_eq!(
            describedby_metalink_value("http://203.0.113.10/iso/a.iso.meta4"),
            "<http://203.0.113.10/iso/a.iso.meta4>; rel=describedby; type=\"application/metalink4+xml\""
        );
    }

    #[test]
    fn urls_cannot_break_the_field() {
        assert_eq!(
            duplicate_value(&dup("http://m/a b>\r\nX: \"é", None, None)),
            "<http://m/a%20b%3E%0D%0AX:%20%22%C3%A9>; rel=duplicate"
        );
        assert_eq!(
            describedby_metalink_value("http://m/<x>"),
            "<http://m/%3Cx%3E>; rel=describedby; type=\"application/metalink4+xml\""
        );
    }

    #[test]
    fn written_values_parse_back() {
        let d = dup("http://198.18.2.10:8080/a%20b.iso", Some(3), Some("fr"));
        let meta = describedby_metalink_value("http://203.0.113.10/a%20b.iso.meta4");
        let links = parse(&[&duplicate_value(&d), &meta]);
        assert_eq!(
            links,
            Links {
                duplicates: vec![d],
                metalinks: vec!["http://203.0.113.10/a%20b.iso.meta4".into()]
            }
        );
    }

    /// The header fields of the response in RFC 6249 §7's example, one value per field.
    #[test]
    fn rfc6249_example_fields() {
        let links = parse(&[
            "<http://www2.example.com/example.ext>; rel=duplicate",
            "<ftp://ftp.example.com/example.ext>; rel=duplicate",
            "<http://example.com/example.ext.torrent>; rel=describedby; type=\"application/x-bittorrent\"",
            "<http://example.com/example.ext.meta4>; rel=describedby; type=\"application/metalink4+xml\"",
            "<http://example.com/example.ext.asc>; rel=describedby; type=\"application/pgp-signature\"",
        ]);
        assert_eq!(
            links,
            Links {
                duplicates: vec![
                    dup("http://www2.example.com/example.ext", None, None),
                    dup("ftp://ftp.example.com/example.ext", None, None),
                ],
                metalinks: vec!["http://example.com/example.ext.meta4".into()],
            }
        );
    }

    /// RFC 6249 §3's mirror parameters (`pri`, `pref`, `geo`, `depth`) in one field with two
    /// comma-separated members.
    #[test]
    fn rfc6249_mirror_parameters() {
        let links = parse(&[
            "<ftp://ftp.example.com/dir1/dir2/dir3/dir4/dir5/example.ext>; rel=duplicate; pri=2; geo=fr, \
             <http://www2.example.com/dir1/dir2/dir3/dir4/dir5/example.ext>; rel=duplicate; pri=1; pref; geo=gb; depth=4",
        ]);
        assert_eq!(
            links.duplicates,
            vec![
                dup(
                    "http://www2.example.com/dir1/dir2/dir3/dir4/dir5/example.ext",
                    Some(1),
                    Some("gb")
                ),
                dup(
                    "ftp://ftp.example.com/dir1/dir2/dir3/dir4/dir5/example.ext",
                    Some(2),
                    Some("fr")
                ),
            ]
        );
        assert!(links.metalinks.is_empty());
    }

    #[test]
    fn sorted_by_pri_with_missing_last_and_stable() {
        let links = parse(&[
            "<http://a/>; rel=duplicate",
            "<http://b/>; rel=duplicate; pri=5",
            "<http://c/>; rel=duplicate; pri=2, <http://d/>; rel=duplicate; pri=5",
            "<http://e/>; rel=duplicate; pri=1000000",
        ]);
        let urls: Vec<&str> = links.duplicates.iter().map(|d| d.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://c/",
                "http://b/",
                "http://d/",
                "http://a/",
                "http://e/"
            ]
        );
        assert_eq!(links.duplicates[4].pri, None, "out of range");
    }

    #[test]
    fn quoted_strings_and_rel_lists() {
        let links = parse(&[
            // The comma and the semicolon inside quotes do not end anything.
            "<http://a/>; title=\"one, two; three\"; REL=\"Duplicate mirror\"; PRI=\"3\"; Geo=\"JP\", <http://b/>; rel=duplicate",
            "<http://m/x.meta4>; rel=\"alternate describedby\"; TYPE=\"Application/Metalink4+XML\"",
            // Unquoted, as some servers send it.
            "<http://m/y.meta4>; rel=describedby; type=application/metalink4+xml",
            // Escapes inside quotes.
            "<http://c/>; title=\"a \\\"quoted\\\" word, here\"; rel=duplicate; pri=4",
        ]);
        assert_eq!(
            links.duplicates,
            vec![
                dup("http://a/", Some(3), Some("jp")),
                dup("http://c/", Some(4), None),
                dup("http://b/", None, None)
            ]
        );
        assert_eq!(links.metalinks, ["http://m/x.meta4", "http://m/y.meta4"]);
    }

    #[test]
    fn first_rel_wins_and_other_relations_are_ignored() {
        let links = parse(&[
            "<http://a/>; rel=describedby; rel=duplicate",
            "<http://b/>; rel=duplicates",
            "<http://c/>; rel=describedby",
            "<http://d/>; rel=describedby; type=\"application/metalink+xml\"",
            "<http://e/>",
        ]);
        assert_eq!(links, Links::default());
    }

    /// The kind of odd fields aria2's tests feed its own Link parser.
    #[test]
    fn odd_but_readable_members() {
        let links = parse(&[
            "<http://uri1/>; rel=duplicate; pri=1; pref; geo=JP",
            "<http://uri3/>;;;;;;;;rel=duplicate;;;;;pri=2;;;;;",
            "<http://uri4/>;rel=duplicate;=pri=1;pref",
            "<http://uri5/>; rel=duplicate; pri=-1;",
            "<http://uri6/> ; rel = duplicate ; pri = 9",
        ]);
        assert_eq!(
            links.duplicates,
            vec![
                dup("http://uri1/", Some(1), Some("jp")),
                dup("http://uri3/", Some(2), None),
                dup("http://uri6/", Some(9), None),
                dup("http://uri4/", None, None),
                dup("http://uri5/", None, None),
            ]
        );
    }

    #[test]
    fn malformed_members_are_skipped() {
        let links = parse(&[
            // No `<`: this member is skipped up to its comma, the next one is read.
            "http://bare/; rel=duplicate, <http://ok1/>; rel=duplicate",
            // A `<` closed only by the next member's `>`: the URL holds spaces, the member goes.
            "<http://open; rel=duplicate, <http://lost/>; rel=duplicate",
            // Unterminated quoted string: the rest of the field is unreadable.
            "<http://q/>; rel=\"duplicate, <http://lost2/>; rel=duplicate",
            // Spaces inside the URL, an empty URL.
            "<http://a b/>; rel=duplicate, <>; rel=duplicate, <http://ok2/>; rel=duplicate",
            // Junk after a parameter value skips that parameter only.
            "<http://ok3/>; pri=2x y; rel=duplicate; geo=fr",
            // Not UTF-8.
            "<http://\u{fffd}/>; rel=duplicate",
            "",
            " , ,, ",
        ]);
        let urls: Vec<&str> = links.duplicates.iter().map(|d| d.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://ok1/",
                "http://ok2/",
                "http://ok3/",
                "http://\u{fffd}/"
            ]
        );
        assert_eq!(links.duplicates[2], dup("http://ok3/", None, Some("fr")));
        let raw: &[u8] = b"<http://\xff/>; rel=duplicate, <http://fine/>; rel=duplicate";
        assert_eq!(
            parse_links(&[raw]).duplicates,
            vec![dup("http://fine/", None, None)]
        );
    }

    #[test]
    fn counts_are_bounded() {
        let many: String = (0..MAX_DUPLICATES + 10)
            .map(|i| format!("<http://m{i}/>; rel=duplicate; pri={i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let links = parse(&[&many]);
        assert_eq!(links.duplicates.len(), MAX_DUPLICATES);
        assert_eq!(
            links.duplicates[0].url, "http://m1/",
            "pri=0 is out of range and sorts last"
        );
        let meta: String = (0..10)
            .map(|i| {
                format!("<http://m/{i}.meta4>; rel=describedby; type=\"{METALINK_MEDIA_TYPE}\"")
            })
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse(&[&meta]).metalinks.len(), MAX_METALINKS);
        // Members past the limit are not looked at, even in later fields.
        let noise = "<http://n/>, ".repeat(MAX_LINK_MEMBERS);
        assert_eq!(
            parse(&[&noise, "<http://late/>; rel=duplicate"]),
            Links::default()
        );
        // Parameters past the limit end the member (its earlier parameters still count).
        let params = format!(
            "<http://p/>; rel=duplicate{}; pri=1",
            "; x=1".repeat(MAX_LINK_PARAMS)
        );
        assert_eq!(
            parse(&[&params, "<http://q/>; rel=duplicate"]).duplicates,
            vec![dup("http://p/", None, None), dup("http://q/", None, None)]
        );
    }

    #[test]
    fn never_panics_on_prefixes() {
        let field = "<http://a/>; rel=\"duplicate x\"; pri=\"2\"; geo=de, <http://b.meta4>; rel=describedby; type=\"application/metalink4+xml\"";
        for end in 0..=field.len() {
            let _ = parse(&[&field[..end]]);
        }
        for b in [b'<', b'>', b'"', b'\\', b';', b',', b'=', 0, 0xff] {
            let _ = parse_links(&[&[b], &[b, b'"', b'\\'], &[b'<', b'>', b';', b]]);
        }
    }

    /// What every parse must give: bounded counts, values in range, sorted mirrors, URLs that
    /// are non-empty runs of visible bytes taken from the input.
    fn check_links(values: &[&[u8]], links: &Links) {
        assert!(links.duplicates.len() <= MAX_DUPLICATES && links.metalinks.len() <= MAX_METALINKS);
        let from_input = |url: &str| {
            !url.is_empty()
                && url.bytes().all(|b| b.is_ascii_graphic() || b >= 0x80)
                && values.iter().any(|v| v.windows(url.len()).any(|w| w == url.as_bytes()))
        };
        for d in &links.duplicates {
            assert!(from_input(&d.url), "{:?}", d.url);
            assert!(d.pri.is_none_or(|p| (1..=MAX_PRI).contains(&p)));
            assert!(d.geo.as_deref().is_none_or(|g| g.len() == 2 && g.bytes().all(|b| b.is_ascii_lowercase())));
        }
        assert!(links.metalinks.iter().all(|u| from_input(u)));
        let keys: Vec<u32> = links.duplicates.iter().map(|d| d.pri.unwrap_or(u32::MAX)).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "sorted by pri: {keys:?}");
    }

    #[test]
    fn fuzz_parse_links() {
        let corpus: &[&[u8]] = &[
            b"<http://198.18.2.10/iso/a.iso>; rel=duplicate; pri=1; geo=de\n<http://m/b>; rel=duplicate",
            b"<http://m/x.meta4>; rel=\"alternate describedby\"; TYPE=\"Application/Metalink4+XML\", \
              <http://b/>; rel=duplicate",
            b"<http://a/>; title=\"one, two; three\"; REL=\"Duplicate mirror\"; PRI=\"3\"; Geo=\"JP\"",
            b"<http://uri3/>;;;;rel=duplicate;;pri=2;;, <http://uri4/>;rel=duplicate;=pri=1;pref\n\
              <http://c/>; title=\"a \\\"q\\\"\"; rel=duplicate",
        ];
        // A `\n` separates field values (it cannot appear in one).
        crate::fuzz::fuzz_bytes("parse_links", corpus, |input| {
            let values: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            let links = parse_links(&values);
            assert_eq!(parse_links(&values), links, "deterministic");
            check_links(&values, &links);
        });
    }

    #[test]
    fn fuzz_written_values_parse_back() {
        use crate::fuzz::string_from;
        use rand::Rng;
        crate::fuzz::fuzz_values(
            "link_values",
            |rng| {
                let d = Duplicate {
                    url: string_from(rng, "hp:/.a%<>\" ;,\\\u{e9}\r\n\t", 1..=24),
                    pri: rng.gen_bool(0.7).then(|| rng.gen_range(0..=MAX_PRI + 1)),
                    geo: rng.gen_bool(0.7).then(|| string_from(rng, "aZ;\"", 0..=3)),
                };
                (d, string_from(rng, "hp:/.a<>\" ;,\u{e9}", 1..=24))
            },
            |(d, meta)| {
                let fields = [duplicate_value(d), describedby_metalink_value(meta)];
                let values: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
                let links = parse_links(&values);
                check_links(&values, &links);
                let want = Duplicate {
                    url: header_safe_url(&d.url),
                    pri: d.pri.filter(|p| (1..=MAX_PRI).contains(p)),
                    geo: d.geo.as_deref().and_then(country_code),
                };
                assert_eq!(links, Links { duplicates: vec![want], metalinks: vec![header_safe_url(meta)] });
            },
        );
    }
}

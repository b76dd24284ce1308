//! Metalink 4 documents (RFC 5854): what a multi-source download needs of them — each file's
//! name, size, SHA-256, SHA-256 piece hashes and mirror URLs — written exactly and parsed from
//! untrusted bytes.
//!
//! The parser is bounded (document size, files, URLs, pieces, nesting), ignores what it does
//! not use (other elements and namespaces, other hash types, `metaurl`), refuses document type
//! declarations (so no entity can expand) and file names that could leave a download directory
//! (RFC 5854 §4.1.2.1), and never panics. This module never fetches a URL, opens a file or
//! decides which mirror to use.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::{NsReader, XmlVersion};

use crate::digest::Sha256;
use crate::link::country_code;

/// The Metalink 4 XML namespace (RFC 5854 §4).
pub const NAMESPACE: &str = "urn:ietf:params:xml:ns:metalink";

/// Largest document [`parse`] reads. A SHA-256 piece hash costs about 84 bytes of XML, so
/// 8 MiB holds [`MAX_PIECES`] of them (a 256 GiB file in 4 MiB pieces) with room for URLs,
/// while a hostile server cannot make a client hold more than this.
pub const MAX_METALINK_BYTES: usize = 8 << 20;

/// Most `<file>` elements in one document. A download names one file; documents for whole
/// releases list dozens.
pub const MAX_FILES: usize = 256;

/// Most `<url>` elements per file. Large mirror networks list well under a hundred per file.
pub const MAX_URLS: usize = 256;

/// Most SHA-256 piece hashes per file: 256 GiB in 4 MiB pieces, 16 GiB in the 256 KiB pieces
/// other generators use.
pub const MAX_PIECES: usize = 65_536;

/// Deepest element nesting. Metalink itself nests four deep (`metalink/file/pieces/hash`);
/// extensions add a few levels, never dozens.
pub const MAX_DEPTH: usize = 32;

/// Largest `priority` (RFC 5854 §4.2.16.2: 1, the most preferred, to 999999).
pub const MAX_PRIORITY: u32 = 999_999;

/// Characters of an offending value quoted in an error message.
const QUOTE_CHARS: usize = 64;

/// A Metalink document: the files it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metalink {
    pub files: Vec<MetaFile>,
}

/// One `<file>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFile {
    /// The `name` attribute: a relative path, checked by [`parse`] to stay below a directory.
    pub name: String,
    pub size: Option<u64>,
    /// The whole file's `<hash type="sha-256">`.
    pub sha256: Option<Sha256>,
    /// The `<pieces type="sha-256">` list.
    pub pieces: Option<Pieces>,
    /// The `<url>` elements, in document order.
    pub urls: Vec<MetaUrl>,
}

/// SHA-256 hashes of consecutive `length`-byte pieces (the last may be shorter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces {
    pub length: u64,
    pub sha256: Vec<Sha256>,
}

/// One `<url>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaUrl {
    /// The URL text, entities decoded and surrounding whitespace removed.
    pub url: String,
    /// 1 is the most preferred; `None` when absent or not in 1..=[`MAX_PRIORITY`].
    pub priority: Option<u32>,
    /// ISO 3166-1 alpha-2 country code in lower case; `None` when absent or not two letters.
    pub location: Option<String>,
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetalinkError {
    #[error("document of {len} bytes exceeds {MAX_METALINK_BYTES}")]
    TooLarge { len: usize },
    #[error("document is not utf-8")]
    NotUtf8,
    #[error("malformed xml at byte {at}: {reason}")]
    Xml { at: u64, reason: String },
    #[error("document ends inside an element")]
    Truncated,
    #[error("document type declarations are not allowed")]
    DocType,
    #[error("unknown entity &{name};")]
    UnknownEntity { name: String },
    #[error("root element is not a metalink 4 <metalink>")]
    NotMetalink,
    #[error("elements nest deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {limit} {what}")]
    TooMany { what: &'static str, limit: usize },
    #[error("document describes no file")]
    NoFiles,
    #[error("file has no name")]
    MissingName,
    #[error("file name {name:?} {reason}")]
    UnsafeName { name: String, reason: &'static str },
    #[error("file {name:?} has more than one {what}")]
    Repeated { name: String, what: &'static str },
    #[error("size {value:?} is not a number of bytes")]
    BadSize { value: String },
    #[error("sha-256 hash {value:?} is not 64 hex digits")]
    BadHash { value: String },
    #[error("piece length {value:?} is not a number of bytes")]
    BadPieceLength { value: String },
    #[error("piece length is zero")]
    ZeroPieceLength,
    #[error("file {name:?} of {size} bytes in {length}-byte pieces needs {expected} piece hashes, found {found}")]
    PieceCount {
        name: String,
        size: u64,
        length: u64,
        expected: u64,
        found: usize,
    },
}

/// Writes a document with the given `<generator>`: an XML declaration, then one element per
/// line, indented by two spaces, in a fixed order (`size`, `hash`, `pieces`, `url`s). Text and
/// attribute values are escaped; characters XML 1.0 cannot carry are dropped. `pieces` with no
/// hash and `location`s that are not two letters are left out (the schema allows neither).
pub fn write(m: &Metalink, generator: &str) -> String {
    let mut out = String::new();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!("<metalink xmlns=\"{NAMESPACE}\">\n"));
    out.push_str(&format!("  <generator>{}</generator>\n", escape(generator)));
    for f in &m.files {
        out.push_str(&format!("  <file name=\"{}\">\n", escape(&f.name)));
        if let Some(size) = f.size {
            out.push_str(&format!("    <size>{size}</size>\n"));
        }
        if let Some(h) = &f.sha256 {
            out.push_str(&format!(
                "    <hash type=\"sha-256\">{}</hash>\n",
                hex::encode(h)
            ));
        }
        if let Some(p) = f.pieces.as_ref().filter(|p| !p.sha256.is_empty()) {
            out.push_str(&format!(
                "    <pieces length=\"{}\" type=\"sha-256\">\n",
                p.length
            ));
            for h in &p.sha256 {
                out.push_str(&format!("      <hash>{}</hash>\n", hex::encode(h)));
            }
            out.push_str("    </pieces>\n");
        }
        for u in &f.urls {
            out.push_str("    <url");
            if let Some(p) = u.priority {
                out.push_str(&format!(" priority=\"{p}\""));
            }
            if let Some(cc) = u.location.as_deref().and_then(country_code) {
                out.push_str(&format!(" location=\"{cc}\""));
            }
            out.push_str(&format!(">{}</url>\n", escape(&u.url)));
        }
        out.push_str("  </file>\n");
    }
    out.push_str("</metalink>\n");
    out
}

/// `s` escaped for XML text and attribute values, without the characters XML 1.0 forbids.
fn escape(s: &str) -> String {
    let allowed: String = s
        .chars()
        .filter(|&c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .collect();
    quick_xml::escape::escape(allowed.as_str()).into_owned()
}

/// Parses a Metalink 4 document.
///
/// The root must be `metalink` in the [`NAMESPACE`] (any prefix). Inside it, `file` elements
/// are read for their `name` (required, checked by the rules of RFC 5854 §4.1.2.1: relative, no
/// `..` segment, no backslash, no control character, no empty or `.` segment), `size`,
/// `hash type="sha-256"`, `pieces type="sha-256"` (whose hash count must be
/// ceil(size / length) when the size is known; one without hashes reads as none) and `url`
/// (with `priority` and `location`).
/// Unknown elements and everything inside them, other hash types, `metaurl`, comments and
/// processing instructions are ignored. URLs that are empty or contain whitespace or control
/// characters are dropped.
pub fn parse(bytes: &[u8]) -> Result<Metalink, MetalinkError> {
    if bytes.len() > MAX_METALINK_BYTES {
        return Err(MetalinkError::TooLarge { len: bytes.len() });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| MetalinkError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Parser::default().run(text)
}

/// What an open element is, for the parser.
#[derive(Debug)]
enum Open {
    Metalink,
    File,
    Size,
    /// A file's `<hash>`; only a SHA-256 one is read.
    Hash {
        sha256: bool,
    },
    Pieces {
        sha256: bool,
    },
    PieceHash {
        sha256: bool,
    },
    Url {
        priority: Option<u32>,
        location: Option<String>,
    },
    /// Not used: nothing inside it is read.
    Ignored,
}

impl Open {
    /// Whether this element's text is read.
    fn wants_text(&self) -> bool {
        matches!(
            self,
            Open::Size
                | Open::Hash { sha256: true }
                | Open::PieceHash { sha256: true }
                | Open::Url { .. }
        )
    }
}

#[derive(Debug, Default)]
struct Parser {
    stack: Vec<Open>,
    /// Text of the innermost element, when it is one that is read.
    text: String,
    files: Vec<MetaFile>,
    /// The file being read.
    file: Option<MetaFile>,
    root_seen: bool,
}

impl Parser {
    fn run(mut self, text: &str) -> Result<Metalink, MetalinkError> {
        let mut reader = NsReader::from_str(text);
        loop {
            let (in_ns, event) = match reader.read_resolved_event() {
                Ok((ns, event)) => (
                    matches!(ns, ResolveResult::Bound(n) if n.0 == NAMESPACE),
                    event,
                ),
                Err(e) => {
                    return Err(MetalinkError::Xml {
                        at: reader.error_position(),
                        reason: e.to_string(),
                    })
                }
            };
            match event {
                Event::Start(e) => self.start(&e, in_ns)?,
                Event::Empty(e) => {
                    self.start(&e, in_ns)?;
                    self.end()?;
                }
                Event::End(_) => self.end()?,
                Event::Text(t) => self.push_text(&t.xml10_content())?,
                Event::CData(t) => self.push_text(&t.xml10_content())?,
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        Ok(None) => match quick_xml::escape::resolve_predefined_entity(&r) {
                            Some(s) => s.to_owned(),
                            None => return Err(MetalinkError::UnknownEntity { name: quote(&r) }),
                        },
                        Err(e) => {
                            return Err(MetalinkError::Xml {
                                at: reader.buffer_position(),
                                reason: e.to_string(),
                            })
                        }
                    };
                    self.push_text(&resolved)?;
                }
                Event::DocType(_) => return Err(MetalinkError::DocType),
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
                Event::Eof => break,
            }
        }
        if !self.stack.is_empty() {
            return Err(MetalinkError::Truncated);
        }
        if !self.root_seen {
            return Err(MetalinkError::NotMetalink);
        }
        if self.files.is_empty() {
            return Err(MetalinkError::NoFiles);
        }
        Ok(Metalink { files: self.files })
    }

    /// Keeps text for the element that reads it; text outside the root must be whitespace.
    fn push_text(&mut self, s: &str) -> Result<(), MetalinkError> {
        match self.stack.last() {
            Some(open) if open.wants_text() => self.text.push_str(s),
            Some(_) => {}
            None if s.chars().all(char::is_whitespace) => {}
            None => {
                return Err(MetalinkError::Xml {
                    at: 0,
                    reason: "text outside the root element".to_owned(),
                })
            }
        }
        Ok(())
    }

    fn file_name(&self) -> String {
        self.file
            .as_ref()
            .map(|f| quote(&f.name))
            .unwrap_or_default()
    }

    fn start(&mut self, e: &BytesStart<'_>, in_ns: bool) -> Result<(), MetalinkError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(MetalinkError::TooDeep);
        }
        let local = e.local_name();
        let name = if in_ns { local.as_ref() } else { "" };
        let open = match (self.stack.last(), name) {
            (None, _) if self.root_seen => {
                return Err(MetalinkError::Xml {
                    at: 0,
                    reason: "more than one root element".to_owned(),
                })
            }
            (None, "metalink") => {
                self.root_seen = true;
                Open::Metalink
            }
            (None, _) => return Err(MetalinkError::NotMetalink),
            (Some(Open::Metalink), "file") => {
                if self.files.len() == MAX_FILES {
                    return Err(MetalinkError::TooMany {
                        what: "files",
                        limit: MAX_FILES,
                    });
                }
                let name = attr(e, "name")?.ok_or(MetalinkError::MissingName)?;
                check_name(&name)?;
                self.file = Some(MetaFile {
                    name,
                    size: None,
                    sha256: None,
                    pieces: None,
                    urls: Vec::new(),
                });
                Open::File
            }
            (Some(Open::File), "size") => Open::Size,
            (Some(Open::File), "hash") => Open::Hash {
                sha256: is_sha256(attr(e, "type")?),
            },
            (Some(Open::File), "pieces") => {
                let value = attr(e, "length")?.unwrap_or_default();
                let length: u64 =
                    value
                        .trim()
                        .parse()
                        .map_err(|_| MetalinkError::BadPieceLength {
                            value: quote(&value),
                        })?;
                if length == 0 {
                    return Err(MetalinkError::ZeroPieceLength);
                }
                let sha256 = is_sha256(attr(e, "type")?);
                if sha256 {
                    let name = self.file_name();
                    let file = self.file.as_mut().ok_or(MetalinkError::NotMetalink)?;
                    if file.pieces.is_some() {
                        return Err(MetalinkError::Repeated {
                            name,
                            what: "sha-256 piece list",
                        });
                    }
                    file.pieces = Some(Pieces {
                        length,
                        sha256: Vec::new(),
                    });
                }
                Open::Pieces { sha256 }
            }
            (Some(Open::Pieces { sha256 }), "hash") => Open::PieceHash { sha256: *sha256 },
            (Some(Open::File), "url") => {
                let priority = attr(e, "priority")?
                    .and_then(|p| p.trim().parse::<u32>().ok())
                    .filter(|p| (1..=MAX_PRIORITY).contains(p));
                let location = attr(e, "location")?.and_then(|l| country_code(l.trim()));
                Open::Url { priority, location }
            }
            _ => Open::Ignored,
        };
        if open.wants_text() {
            self.text.clear();
        }
        self.stack.push(open);
        Ok(())
    }

    fn end(&mut self) -> Result<(), MetalinkError> {
        let Some(open) = self.stack.pop() else {
            return Err(MetalinkError::Xml {
                at: 0,
                reason: "end tag without a start".to_owned(),
            });
        };
        // Text read so far belongs to this element only if it reads text (an ignored child of a
        // `<url>` leaves the URL's text alone).
        let text = if open.wants_text() {
            std::mem::take(&mut self.text)
        } else {
            String::new()
        };
        let name = self.file_name();
        match open {
            Open::Size => {
                let size = text.trim().parse().map_err(|_| MetalinkError::BadSize {
                    value: quote(&text),
                })?;
                if let Some(f) = self.file.as_mut() {
                    if f.size.replace(size).is_some() {
                        return Err(MetalinkError::Repeated { name, what: "size" });
                    }
                }
            }
            Open::Hash { sha256: true } => {
                let h = parse_hex(&text)?;
                if let Some(f) = self.file.as_mut() {
                    if f.sha256.replace(h).is_some() {
                        return Err(MetalinkError::Repeated {
                            name,
                            what: "sha-256 hash",
                        });
                    }
                }
            }
            Open::PieceHash { sha256: true } => {
                let h = parse_hex(&text)?;
                if let Some(p) = self.file.as_mut().and_then(|f| f.pieces.as_mut()) {
                    if p.sha256.len() == MAX_PIECES {
                        return Err(MetalinkError::TooMany {
                            what: "pieces",
                            limit: MAX_PIECES,
                        });
                    }
                    p.sha256.push(h);
                }
            }
            Open::Url { priority, location } => {
                let url = text.trim();
                let usable =
                    !url.is_empty() && !url.chars().any(|c| c.is_whitespace() || c.is_control());
                if let Some(f) = self.file.as_mut().filter(|_| usable) {
                    if f.urls.len() == MAX_URLS {
                        return Err(MetalinkError::TooMany {
                            what: "urls",
                            limit: MAX_URLS,
                        });
                    }
                    f.urls.push(MetaUrl {
                        url: url.to_owned(),
                        priority,
                        location,
                    });
                }
            }
            Open::File => {
                if let Some(mut f) = self.file.take() {
                    check_piece_count(&f)?;
                    // A piece list without hashes names no piece (RFC 5854's schema requires
                    // one, and `write` leaves such a list out): it reads as none. Kept, it would
                    // fail every piece of a file whose size the document does not give.
                    if f.pieces.as_ref().is_some_and(|p| p.sha256.is_empty()) {
                        f.pieces = None;
                    }
                    self.files.push(f);
                }
            }
            Open::Metalink
            | Open::Hash { sha256: false }
            | Open::Pieces { .. }
            | Open::PieceHash { sha256: false }
            | Open::Ignored => {}
        }
        Ok(())
    }
}

/// The unprefixed attribute `key` of `e`, normalized and with entities decoded. Every attribute
/// is read, so a repeated one is an error wherever it is.
fn attr(e: &BytesStart<'_>, key: &str) -> Result<Option<String>, MetalinkError> {
    let mut found = None;
    for a in e.attributes() {
        let a = a.map_err(|err| MetalinkError::Xml {
            at: 0,
            reason: err.to_string(),
        })?;
        if a.key.prefix().is_none() && a.key.local_name().as_ref() == key {
            let value = a
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|err| match err {
                    quick_xml::Error::Escape(
                        quick_xml::escape::EscapeError::UnrecognizedEntity(_, name),
                    ) => MetalinkError::UnknownEntity { name: quote(&name) },
                    other => MetalinkError::Xml {
                        at: 0,
                        reason: other.to_string(),
                    },
                })?;
            found = Some(value.into_owned());
        }
    }
    Ok(found)
}

/// Whether a `type` attribute names SHA-256 (the IANA hash name, any case).
fn is_sha256(t: Option<String>) -> bool {
    t.is_some_and(|t| t.trim().eq_ignore_ascii_case("sha-256"))
}

fn parse_hex(text: &str) -> Result<Sha256, MetalinkError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| MetalinkError::BadHash {
        value: quote(text.trim()),
    })?;
    Ok(out)
}

/// The number of `length`-byte pieces of a `size`-byte file: ceil(size / length).
pub fn piece_count(size: u64, length: u64) -> u64 {
    if length == 0 {
        0
    } else {
        size.div_ceil(length)
    }
}

/// SHA-256 of a whole file and of each of its `length`-byte pieces, fed in order in chunks of
/// any size (the caller reads the file; this only hashes).
#[derive(Debug, Clone)]
pub struct PieceHasher {
    length: u64,
    whole: sha2::Sha256,
    piece: sha2::Sha256,
    /// Bytes of the current piece hashed so far.
    in_piece: u64,
    pieces: Vec<Sha256>,
}

impl PieceHasher {
    /// A hasher for pieces of `length` bytes; a zero length is taken as 1.
    pub fn new(length: u64) -> Self {
        use sha2::Digest as _;
        Self {
            length: length.max(1),
            whole: sha2::Sha256::new(),
            piece: sha2::Sha256::new(),
            in_piece: 0,
            pieces: Vec::new(),
        }
    }

    /// Hashes the next bytes of the file.
    pub fn update(&mut self, mut bytes: &[u8]) {
        use sha2::Digest as _;
        self.whole.update(bytes);
        while !bytes.is_empty() {
            let room = self.length - self.in_piece;
            let n = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
            let (now, rest) = bytes.split_at(n);
            self.piece.update(now);
            self.in_piece += n as u64;
            bytes = rest;
            if self.in_piece == self.length {
                self.pieces
                    .push(std::mem::take(&mut self.piece).finalize().into());
                self.in_piece = 0;
            }
        }
    }

    /// The whole file's digest and the pieces' digests ([`piece_count`] of them for the bytes
    /// fed: a shorter last piece counts, an empty file has none).
    pub fn finish(mut self) -> (Sha256, Vec<Sha256>) {
        use sha2::Digest as _;
        if self.in_piece > 0 {
            self.pieces.push(self.piece.finalize().into());
        }
        (self.whole.finalize().into(), self.pieces)
    }
}

fn check_piece_count(f: &MetaFile) -> Result<(), MetalinkError> {
    let (Some(size), Some(p)) = (f.size, &f.pieces) else {
        return Ok(());
    };
    let expected = piece_count(size, p.length);
    if expected != p.sha256.len() as u64 {
        return Err(MetalinkError::PieceCount {
            name: quote(&f.name),
            size,
            length: p.length,
            expected,
            found: p.sha256.len(),
        });
    }
    Ok(())
}

/// Checks a file name by RFC 5854 §4.1.2.1: a relative path that cannot leave the directory it
/// is saved in.
fn check_name(name: &str) -> Result<(), MetalinkError> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.starts_with('/') {
        Some("is absolute")
    } else if name.contains('\\') {
        Some("has a backslash")
    } else if name.chars().any(char::is_control) {
        Some("has a control character")
    } else if name.split('/').any(|s| s == "..") {
        Some("has a .. segment")
    } else if name.split('/').any(|s| s.is_empty() || s == ".") {
        Some("has an empty or . segment")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(MetalinkError::UnsafeName {
            name: quote(name),
            reason,
        }),
        None => Ok(()),
    }
}

/// The first [`QUOTE_CHARS`] characters of `s`, for an error message.
fn quote(s: &str) -> String {
    s.chars().take(QUOTE_CHARS).collect()
}

#[cfg(test)]
mod tests;

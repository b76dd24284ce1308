//! Metalink tests: a fixture both ways, documents as other generators write them, and hostile
//! documents with their exact errors.

use super::*;

static FIXTURE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<metalink xmlns="urn:ietf:params:xml:ns:metalink">
  <generator>baton/0.1</generator>
  <file name="a &amp; b.iso">
    <size>9437184</size>
    <hash type="sha-256">e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855</hash>
    <pieces length="4194304" type="sha-256">
      <hash>1111111111111111111111111111111111111111111111111111111111111111</hash>
      <hash>2222222222222222222222222222222222222222222222222222222222222222</hash>
      <hash>abababababababababababababababababababababababababababababababab</hash>
    </pieces>
    <url priority="1" location="de">http://198.18.2.10/a%20%26%20b.iso</url>
    <url priority="2">http://198.18.3.10:8080/a%20%26%20b.iso?x=1&amp;y=2</url>
    <url>http://203.0.113.10/a%20%26%20b.iso</url>
  </file>
  <file name="dir/c.bin">
    <url location="fr">http://198.18.2.10/dir/c.bin</url>
  </file>
</metalink>
"#;

/// SHA-256 of the empty string.
static EMPTY_SHA: Sha256 = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

fn url(url: &str, priority: Option<u32>, location: Option<&str>) -> MetaUrl {
    MetaUrl {
        url: url.to_owned(),
        priority,
        location: location.map(str::to_owned),
    }
}

fn fixture() -> Metalink {
    Metalink {
        files: vec![
            MetaFile {
                name: "a & b.iso".into(),
                size: Some(9_437_184),
                sha256: Some(EMPTY_SHA),
                pieces: Some(Pieces {
                    length: 4_194_304,
                    sha256: vec![[0x11; 32], [0x22; 32], [0xab; 32]],
                }),
                urls: vec![
                    url("http://198.18.2.10/a%20%26%20b.iso", Some(1), Some("de")),
                    url(
                        "http://198.18.3.10:8080/a%20%26%20b.iso?x=1&y=2",
                        Some(2),
                        None,
                    ),
                    url("http://203.0.113.10/a%20%26%20b.iso", None, None),
                ],
            },
            MetaFile {
                name: "dir/c.bin".into(),
                size: None,
                sha256: None,
                pieces: None,
                urls: vec![url("http://198.18.2.10/dir/c.bin", None, Some("fr"))],
            },
        ],
    }
}

fn err(doc: &str) -> MetalinkError {
    match parse(doc.as_bytes()) {
        Ok(m) => panic!("accepted: {m:?}"),
        Err(e) => e,
    }
}

fn ok(doc: &str) -> Metalink {
    match parse(doc.as_bytes()) {
        Ok(m) => m,
        Err(e) => panic!("refused: {e}"),
    }
}

/// A document with one file whose `<file>` has `attrs` and holds `inner`.
fn one_file(attrs: &str, inner: &str) -> String {
    format!("<metalink xmlns=\"{NAMESPACE}\"><file {attrs}>{inner}</file></metalink>")
}

#[test]
fn fixture_both_ways() {
    assert_eq!(parse(FIXTURE.as_bytes()), Ok(fixture()));
    assert_eq!(write(&fixture(), "baton/0.1"), FIXTURE);
}

#[test]
fn writer_escapes_and_drops_what_xml_cannot_carry() {
    let m = Metalink {
        files: vec![MetaFile {
            name: "q\"<'>\u{1}.bin".into(),
            size: Some(0),
            sha256: None,
            pieces: Some(Pieces {
                length: 4,
                sha256: Vec::new(),
            }),
            urls: vec![url("http://m/x?a=1&b=<2>", Some(3), Some("Deutschland"))],
        }],
    };
    assert_eq!(
        write(&m, "gen & co"),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<metalink xmlns=\"urn:ietf:params:xml:ns:metalink\">\n  \
<generator>gen &amp; co</generator>\n  \
<file name=\"q&quot;&lt;&apos;&gt;.bin\">\n    \
<size>0</size>\n    \
<url priority=\"3\">http://m/x?a=1&amp;b=&lt;2&gt;</url>\n  \
</file>\n\
</metalink>\n"
    );
}

/// A document in the shape aria2 and MirrorBrain serve (RFC 5854 §1.1's example plus the
/// extras they add): other metadata, other hash types, a sha-1 piece list, `metaurl`,
/// entities, CDATA, comments and foreign namespaces.
#[test]
fn other_generators_documents() {
    let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- generated elsewhere -->
<metalink xmlns="urn:ietf:params:xml:ns:metalink" xmlns:mb="http://www.mirrorbrain.org/">
  <generator>MirrorBrain/2.19.0</generator>
  <origin dynamic="true">http://example.com/example.ext.meta4</origin>
  <published>2009-05-15T12:23:23Z</published>
  <mb:publisher><mb:name>Example</mb:name></mb:publisher>
  <file name="example.ext">
    <size>
      14471447
    </size>
    <identity>Example</identity>
    <version>1.0</version>
    <language>en</language>
    <description>A description of the example file for download.</description>
    <hash type="md5">0d1e4e5d7c5c5a4a7b6d1a4c29f53b3a</hash>
    <hash type="sha-1">a97fcf6ba9358f8a6f62beee4421863d3e52b080</hash>
    <hash type="SHA-256">
      F0AD929CD259957E160EA442EB80986B5F01F0AD929CD259957E160EA442EB80
    </hash>
    <pieces length="1048576" type="sha-1">
      <hash>a97fcf6ba9358f8a6f62beee4421863d3e52b080</hash>
    </pieces>
    <signature mediatype="application/pgp-signature"><![CDATA[-----BEGIN PGP SIGNATURE-----]]></signature>
    <url location="DE" priority="1">ftp://ftp.example.com/example.ext</url>
    <url location="fr" priority="0">
      http://example.com/example.ext?mirror=fr&amp;x=&#x31;&#50;
    </url>
    <url location="deu" priority="1000000"><![CDATA[http://cdata.example.com/a&b]]></url>
    <url priority=" 7 ">http://example.com/with space.ext</url>
    <url priority="8"></url>
    <url priority="9">http://example.com/<mb:note>ignored</mb:note>mixed</url>
    <metaurl mediatype="torrent" priority="2">http://example.com/example.ext.torrent</metaurl>
    <mb:extra><url>http://foreign.example.com/example.ext</url></mb:extra>
    <?some-pi data?>
  </file>
  <mb:files><file name="../not-ours"/></mb:files>
</metalink>
"#;
    let mut sha = [0u8; 32];
    hex::decode_to_slice(
        "f0ad929cd259957e160ea442eb80986b5f01f0ad929cd259957e160ea442eb80",
        &mut sha,
    )
    .expect("hex");
    assert_eq!(
        ok(doc),
        Metalink {
            files: vec![MetaFile {
                name: "example.ext".into(),
                size: Some(14_471_447),
                sha256: Some(sha),
                pieces: None,
                urls: vec![
                    url("ftp://ftp.example.com/example.ext", Some(1), Some("de")),
                    url(
                        "http://example.com/example.ext?mirror=fr&x=12",
                        None,
                        Some("fr")
                    ),
                    url("http://cdata.example.com/a&b", None, None),
                    url("http://example.com/mixed", Some(9), None),
                ],
            }],
        }
    );
}

#[test]
fn prefixed_namespace_and_empty_elements() {
    let doc = format!(
        "<ml:metalink xmlns:ml=\"{NAMESPACE}\"><ml:file name=\"x\"><ml:size>5</ml:size>\
         <ml:pieces length=\"2\" type=\"sha-256\"><ml:hash>{a}</ml:hash><ml:hash>{a}</ml:hash><ml:hash>{a}</ml:hash></ml:pieces>\
         <url>http://unqualified/</url></ml:file><ml:file name=\"y\"/></ml:metalink>",
        a = "00".repeat(32)
    );
    assert_eq!(
        ok(&doc),
        Metalink {
            files: vec![
                MetaFile {
                    name: "x".into(),
                    size: Some(5),
                    sha256: None,
                    pieces: Some(Pieces {
                        length: 2,
                        sha256: vec![[0; 32]; 3]
                    }),
                    urls: Vec::new(),
                },
                MetaFile {
                    name: "y".into(),
                    size: None,
                    sha256: None,
                    pieces: None,
                    urls: Vec::new()
                },
            ],
        }
    );
}

#[test]
fn not_metalink_4() {
    assert_eq!(err(""), MetalinkError::NotMetalink);
    assert_eq!(err("<?xml version=\"1.0\"?>\n"), MetalinkError::NotMetalink);
    // Metalink 3 has another namespace (and another structure).
    assert_eq!(
        err("<metalink version=\"3.0\" xmlns=\"http://www.metalinker.org/\"><files><file name=\"a\"/></files></metalink>"),
        MetalinkError::NotMetalink
    );
    assert_eq!(
        err("<metalink><file name=\"a\"/></metalink>"),
        MetalinkError::NotMetalink
    );
    assert_eq!(
        err(&format!("<html xmlns=\"{NAMESPACE}\"/>")),
        MetalinkError::NotMetalink
    );
    assert_eq!(
        err(&format!("<metalink xmlns=\"{NAMESPACE}\"/>")),
        MetalinkError::NoFiles
    );
    assert_eq!(
        err(&format!(
            "<metalink xmlns=\"{NAMESPACE}\"><other><file name=\"a\"/></other></metalink>"
        )),
        MetalinkError::NoFiles
    );
    assert!(matches!(
        err(&format!("<metalink xmlns=\"{NAMESPACE}\"><file name=\"a\"/></metalink><metalink xmlns=\"{NAMESPACE}\"/>")),
        MetalinkError::Xml { .. }
    ));
}

#[test]
fn traversal_and_unsafe_names() {
    for (name, reason) in [
        ("", "is empty"),
        ("/etc/passwd", "is absolute"),
        ("../etc/passwd", "has a .. segment"),
        ("a/../../b", "has a .. segment"),
        ("a/..", "has a .. segment"),
        ("..", "has a .. segment"),
        ("a\\..\\b", "has a backslash"),
        ("C:\\x", "has a backslash"),
        ("a&#10;b", "has a control character"),
        ("a&#x7f;b", "has a control character"),
        ("./a", "has an empty or . segment"),
        ("a//b", "has an empty or . segment"),
        ("a/", "has an empty or . segment"),
    ] {
        let decoded = name.replace("&#10;", "\n").replace("&#x7f;", "\u{7f}");
        assert_eq!(
            err(&one_file(&format!("name=\"{name}\""), "")),
            MetalinkError::UnsafeName {
                name: decoded,
                reason
            },
            "{name:?}"
        );
    }
    assert_eq!(err(&one_file("", "")), MetalinkError::MissingName);
    assert_eq!(
        err(&one_file("mb:name=\"x\" xmlns:mb=\"urn:x\"", "")),
        MetalinkError::MissingName
    );
    // Dots inside names are fine.
    assert_eq!(
        ok(&one_file("name=\"a..b/.c/...\"", "")).files[0].name,
        "a..b/.c/..."
    );
}

#[test]
fn piece_lists_must_match_the_size() {
    let h = "ab".repeat(32);
    let hashes = |n: usize| format!("<hash>{h}</hash>").repeat(n);
    let doc = |size: u64, length: &str, n: usize| {
        one_file(
            "name=\"f\"",
            &format!(
                "<size>{size}</size><pieces length=\"{length}\" type=\"sha-256\">{}</pieces>",
                hashes(n)
            ),
        )
    };
    assert_eq!(
        ok(&doc(8, "4", 2)).files[0]
            .pieces
            .as_ref()
            .map(|p| p.sha256.len()),
        Some(2)
    );
    assert_eq!(
        ok(&doc(9, "4", 3)).files[0]
            .pieces
            .as_ref()
            .map(|p| p.sha256.len()),
        Some(3)
    );
    // An empty file needs no piece hash; a list without any reads as no list.
    assert_eq!(ok(&doc(0, "4", 0)).files[0].pieces, None);
    assert_eq!(
        err(&doc(9, "4", 2)),
        MetalinkError::PieceCount {
            name: "f".into(),
            size: 9,
            length: 4,
            expected: 3,
            found: 2
        }
    );
    assert_eq!(
        err(&doc(8, "4", 3)),
        MetalinkError::PieceCount {
            name: "f".into(),
            size: 8,
            length: 4,
            expected: 2,
            found: 3
        }
    );
    assert_eq!(err(&doc(8, "0", 0)), MetalinkError::ZeroPieceLength);
    assert_eq!(
        err(&doc(8, "4M", 2)),
        MetalinkError::BadPieceLength { value: "4M".into() }
    );
    assert_eq!(
        err(&one_file("name=\"f\"", "<pieces type=\"sha-256\"/>")),
        MetalinkError::BadPieceLength { value: "".into() }
    );
    // A zero length is refused whatever the hash type; other types are not counted.
    assert_eq!(
        err(&one_file(
            "name=\"f\"",
            "<pieces length=\"0\" type=\"sha-1\"/>"
        )),
        MetalinkError::ZeroPieceLength
    );
    let sha1 = one_file(
        "name=\"f\"",
        "<size>100</size><pieces length=\"1\" type=\"sha-1\"><hash>zz</hash></pieces>",
    );
    assert_eq!(ok(&sha1).files[0].pieces, None);
    // Without a size nothing can be checked.
    let no_size = one_file(
        "name=\"f\"",
        &format!(
            "<pieces length=\"4\" type=\"sha-256\">{}</pieces>",
            hashes(5)
        ),
    );
    assert_eq!(
        ok(&no_size).files[0]
            .pieces
            .as_ref()
            .map(|p| p.sha256.len()),
        Some(5)
    );
    let twice = one_file(
        "name=\"f\"",
        "<pieces length=\"4\" type=\"sha-256\"></pieces><pieces length=\"8\" type=\"sha-256\"></pieces>",
    );
    assert_eq!(
        err(&twice),
        MetalinkError::Repeated {
            name: "f".into(),
            what: "sha-256 piece list"
        }
    );
}

#[test]
fn bad_values() {
    let h = "ab".repeat(32);
    for bad in [
        "ab".repeat(31),
        "ab".repeat(33),
        format!("{}g", &h[..63]),
        "".to_owned(),
        format!("{} {}", &h[..32], &h[32..]),
    ] {
        assert_eq!(
            err(&one_file(
                "name=\"f\"",
                &format!("<hash type=\"sha-256\">{bad}</hash>")
            )),
            MetalinkError::BadHash {
                value: bad.chars().take(64).collect()
            },
            "{bad}"
        );
        let piece = format!("<pieces length=\"1\" type=\"sha-256\"><hash>{bad}</hash></pieces>");
        assert!(matches!(
            err(&one_file("name=\"f\"", &piece)),
            MetalinkError::BadHash { .. }
        ));
    }
    // Other hash types are not checked.
    assert!(ok(&one_file(
        "name=\"f\"",
        "<hash type=\"sha-512\">not hex</hash>"
    ))
    .files[0]
        .sha256
        .is_none());
    for bad in ["-1", "12 MB", "", "18446744073709551616"] {
        assert_eq!(
            err(&one_file("name=\"f\"", &format!("<size>{bad}</size>"))),
            MetalinkError::BadSize { value: bad.into() }
        );
    }
    assert_eq!(
        err(&one_file("name=\"f\"", "<size>1</size><size>1</size>")),
        MetalinkError::Repeated {
            name: "f".into(),
            what: "size"
        }
    );
    let two = format!("<hash type=\"sha-256\">{h}</hash><hash type=\"sha-256\">{h}</hash>");
    assert_eq!(
        err(&one_file("name=\"f\"", &two)),
        MetalinkError::Repeated {
            name: "f".into(),
            what: "sha-256 hash"
        }
    );
    // Long values are quoted short.
    let long = "9".repeat(1000);
    assert_eq!(
        err(&one_file("name=\"f\"", &format!("<size>{long}</size>"))),
        MetalinkError::BadSize {
            value: "9".repeat(QUOTE_CHARS)
        }
    );
}

#[test]
fn counts_are_bounded() {
    let files = |n: usize| {
        let body: String = (0..n).map(|i| format!("<file name=\"f{i}\"/>")).collect();
        format!("<metalink xmlns=\"{NAMESPACE}\">{body}</metalink>")
    };
    assert_eq!(ok(&files(MAX_FILES)).files.len(), MAX_FILES);
    assert_eq!(
        err(&files(MAX_FILES + 1)),
        MetalinkError::TooMany {
            what: "files",
            limit: MAX_FILES
        }
    );

    let urls = |n: usize| one_file("name=\"f\"", &"<url>http://m/</url>".repeat(n));
    assert_eq!(ok(&urls(MAX_URLS)).files[0].urls.len(), MAX_URLS);
    assert_eq!(
        err(&urls(MAX_URLS + 1)),
        MetalinkError::TooMany {
            what: "urls",
            limit: MAX_URLS
        }
    );

    let h = format!("<hash>{}</hash>", "00".repeat(32));
    let pieces = |n: usize| {
        one_file(
            "name=\"f\"",
            &format!(
                "<size>{n}</size><pieces length=\"1\" type=\"sha-256\">{}</pieces>",
                h.repeat(n)
            ),
        )
    };
    assert_eq!(
        ok(&pieces(MAX_PIECES)).files[0]
            .pieces
            .as_ref()
            .map(|p| p.sha256.len()),
        Some(MAX_PIECES)
    );
    assert_eq!(
        err(&pieces(MAX_PIECES + 1)),
        MetalinkError::TooMany {
            what: "pieces",
            limit: MAX_PIECES
        }
    );

    let deep = one_file(
        "name=\"f\"",
        &format!("{}{}", "<x>".repeat(MAX_DEPTH), "</x>".repeat(MAX_DEPTH)),
    );
    assert_eq!(err(&deep), MetalinkError::TooDeep);
    let fits = one_file(
        "name=\"f\"",
        &format!(
            "{}{}",
            "<x>".repeat(MAX_DEPTH - 2),
            "</x>".repeat(MAX_DEPTH - 2)
        ),
    );
    assert_eq!(ok(&fits).files.len(), 1);
}

#[test]
fn oversize_is_refused_before_reading() {
    let mut doc = FIXTURE.as_bytes().to_vec();
    doc.resize(MAX_METALINK_BYTES, b' ');
    assert_eq!(parse(&doc), Ok(fixture()));
    doc.push(b' ');
    assert_eq!(
        parse(&doc),
        Err(MetalinkError::TooLarge {
            len: MAX_METALINK_BYTES + 1
        })
    );
}

#[test]
fn truncated_documents_are_refused() {
    let end = FIXTURE.rfind("</metalink>").expect("closing tag") + "</metalink>".len();
    for n in 0..end {
        assert!(
            parse(&FIXTURE.as_bytes()[..n]).is_err(),
            "prefix of {n} bytes accepted"
        );
    }
    assert_eq!(parse(&FIXTURE.as_bytes()[..end]), Ok(fixture()));
    let at_tag = FIXTURE.find("<size>").expect("size");
    assert_eq!(
        parse(&FIXTURE.as_bytes()[..at_tag]),
        Err(MetalinkError::Truncated)
    );
}

#[test]
fn markup_that_is_refused() {
    let bomb = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]>\
         <metalink xmlns=\"{NAMESPACE}\"><file name=\"&lol2;\"/></metalink>"
    );
    assert_eq!(err(&bomb), MetalinkError::DocType);
    assert_eq!(
        err(&one_file("name=\"f\"", "<url>http://m/&nbsp;</url>")),
        MetalinkError::UnknownEntity {
            name: "nbsp".into()
        }
    );
    assert_eq!(
        err(&one_file("name=\"a&foo;\"", "")),
        MetalinkError::UnknownEntity { name: "foo".into() }
    );
    assert_eq!(
        parse(
            b"<metalink xmlns=\"urn:ietf:params:xml:ns:metalink\"><file name=\"\xff\"/></metalink>"
        ),
        Err(MetalinkError::NotUtf8)
    );
    assert!(matches!(
        err(&one_file("name=\"f\"", "<size>1</url>")),
        MetalinkError::Xml { .. }
    ));
    assert!(matches!(
        err(&one_file("name=\"f\" name=\"g\"", "")),
        MetalinkError::Xml { .. }
    ));
    assert!(matches!(
        err(&one_file("name=f", "")),
        MetalinkError::Xml { .. }
    ));
    assert!(matches!(
        err(&format!("junk{}", one_file("name=\"f\"", ""))),
        MetalinkError::Xml { .. }
    ));
    assert!(matches!(
        err(&format!("{}&amp;", one_file("name=\"f\"", ""))),
        MetalinkError::Xml { .. }
    ));
    // A byte-order mark is allowed.
    assert_eq!(
        parse(format!("\u{feff}{FIXTURE}").as_bytes()),
        Ok(fixture())
    );
}

#[test]
fn never_panics_on_mutations() {
    let bytes = FIXTURE.as_bytes();
    for i in 0..bytes.len() {
        for b in [b'<', b'>', b'&', b'"', b'/', b'0', 0, 0xff] {
            let mut doc = bytes.to_vec();
            doc[i] = b;
            let _ = parse(&doc);
        }
        let mut doc = bytes.to_vec();
        doc.remove(i);
        let _ = parse(&doc);
    }
}

#[test]
fn piece_counts() {
    assert_eq!(piece_count(0, 4), 0);
    assert_eq!(piece_count(1, 4), 1);
    assert_eq!(piece_count(4, 4), 1);
    assert_eq!(piece_count(5, 4), 2);
    assert_eq!(piece_count(u64::MAX, 1 << 22), 1 << 42);
    assert_eq!(piece_count(5, 0), 0);
}

#[test]
fn piece_hasher() {
    use sha2::Digest as _;
    let sha = |b: &[u8]| -> Sha256 { sha2::Sha256::digest(b).into() };
    let abc: Sha256 = {
        let mut out = [0u8; 32];
        hex::decode_to_slice(
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            &mut out,
        )
        .expect("hex");
        out
    };
    let data = b"abcdefg";
    // Fed in chunks that do not line up with the pieces.
    for chunks in [
        vec![7],
        vec![1, 1, 1, 1, 1, 1, 1],
        vec![2, 5],
        vec![3, 3, 1],
        vec![0, 6, 0, 1],
    ] {
        let mut h = PieceHasher::new(3);
        let mut at = 0;
        for n in chunks {
            h.update(&data[at..at + n]);
            at += n;
        }
        assert_eq!(h.finish(), (sha(data), vec![abc, sha(b"def"), sha(b"g")]));
    }
    let mut h = PieceHasher::new(3);
    h.update(b"abcdef");
    assert_eq!(h.finish(), (sha(b"abcdef"), vec![abc, sha(b"def")]));
    assert_eq!(PieceHasher::new(4).finish(), (EMPTY_SHA, Vec::new()));
    let mut h = PieceHasher::new(0);
    h.update(b"ab");
    assert_eq!(h.finish().1, vec![sha(b"a"), sha(b"b")]);
}

/// Found by `fuzz_parse`: a sha-256 piece list without hashes, in a file without a size, was
/// kept as a list of no pieces (every piece of the download would then fail its hash) and was
/// not written back by [`write`].
#[test]
fn regression_empty_piece_list_without_size() {
    let doc: &[u8] = b"<metalink xmlns=\"urn:ietf:params:xml:ns:metalink\"><file name=\"u\">\
<pieces length=\"7\" type=\"sha-256\">sh></pieces></file></metalink>";
    let m = parse(doc).expect("valid");
    assert_eq!(m.files[0].pieces, None);
    assert_eq!(parse(write(&m, "g").as_bytes()), Ok(m));
}

/// What every accepted document must satisfy, and that it is written and read back unchanged.
fn check_accepted(m: &Metalink) {
    assert!(!m.files.is_empty() && m.files.len() <= MAX_FILES);
    for f in &m.files {
        assert_eq!(check_name(&f.name), Ok(()));
        assert!(f.urls.len() <= MAX_URLS);
        for u in &f.urls {
            assert!(!u.url.is_empty() && !u.url.chars().any(|c| c.is_whitespace() || c.is_control()));
            assert!(u.priority.is_none_or(|p| (1..=MAX_PRIORITY).contains(&p)));
            assert!(u.location.as_deref().is_none_or(|l| country_code(l).as_deref() == Some(l)));
        }
        if let Some(p) = &f.pieces {
            assert!(p.length > 0 && p.sha256.len() <= MAX_PIECES);
            assert!(f.size.is_none_or(|size| piece_count(size, p.length) == p.sha256.len() as u64));
        }
    }
    let written = write(m, "fuzz");
    assert_eq!(parse(written.as_bytes()).as_ref(), Ok(m), "read back from {written}");
}

#[test]
fn fuzz_parse() {
    let inline = one_file(
        "name=\"d/\u{e9} x\"",
        "<size>+3</size><pieces length=\"2\" type=\"SHA-256\"><hash>\
         0000000000000000000000000000000000000000000000000000000000000000</hash><hash>\
         00000000000000000000000000000000000000000000000000000000000000ff</hash></pieces>\
         <url location=\"De\" priority=\" 5 \"><![CDATA[http://m/a&b]]></url><!-- c --><x:y xmlns:x=\"u\"/>",
    );
    let unsized_pieces = one_file(
        "name=\"u\"",
        "<pieces length=\"7\" type=\"sha-256\"><hash>\
         1111111111111111111111111111111111111111111111111111111111111111</hash></pieces>",
    );
    let corpus: &[&[u8]] = &[FIXTURE.as_bytes(), inline.as_bytes(), unsized_pieces.as_bytes()];
    crate::fuzz::fuzz_bytes("metalink_parse", corpus, |input| match parse(input) {
        Ok(m) => {
            assert!(input.len() <= MAX_METALINK_BYTES);
            check_accepted(&m);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    });
}

#[test]
fn fuzz_written_documents_parse_back() {
    use crate::fuzz::string_from;
    use rand::Rng;
    crate::fuzz::fuzz_values(
        "metalink_write",
        |rng| {
            let files = (0..rng.gen_range(1..=3))
                .map(|_| {
                    let size = rng.gen_bool(0.7).then(|| rng.gen_range(0..=1u64 << 20));
                    let pieces = rng.gen_bool(0.5).then(|| {
                        let length = rng.gen_range(1..=1u64 << 18).max(size.unwrap_or(0) / 64 + 1);
                        let count = size.map_or(rng.gen_range(1..=5), |s| piece_count(s, length));
                        Pieces { length, sha256: (0..count).map(|_| rng.gen()).collect() }
                    });
                    // An empty file has no piece hash, and a list without one is no list.
                    let pieces = pieces.filter(|p| !p.sha256.is_empty());
                    let urls = (0..rng.gen_range(0..=3))
                        .map(|_| MetaUrl {
                            url: string_from(rng, "hp:/.a&<>\"'%\u{e9}]", 1..=20),
                            priority: rng.gen_bool(0.5).then(|| rng.gen_range(1..=MAX_PRIORITY)),
                            location: rng.gen_bool(0.5).then(|| string_from(rng, "az", 2..=2)),
                        })
                        .collect();
                    let name = (0..rng.gen_range(1..=3))
                        .map(|_| string_from(rng, "a.&<>\"' \u{e9}\u{1f600}", 1..=8))
                        .filter(|s| s != "." && s != "..")
                        .collect::<Vec<_>>()
                        .join("/");
                    let name = if name.is_empty() { "n".to_owned() } else { name };
                    MetaFile { name, size, sha256: rng.gen_bool(0.5).then(|| rng.gen()), pieces, urls }
                })
                .collect();
            Metalink { files }
        },
        check_accepted,
    );
}

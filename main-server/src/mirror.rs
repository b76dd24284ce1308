//! The main's own answers to mirror discovery at the VIP: a HEAD of an object gets the object's
//! headers plus one RFC 6249 `Link: rel=duplicate` per mirror and the `rel=describedby` of its
//! Metalink document, and a GET or HEAD of `<path>.meta4` gets that document (RFC 5854), with
//! SHA-256 piece hashes computed once per object version.
//!
//! Which mirrors, in which order, is `baton_shared::mirror`'s (selection's ranking for the
//! client). This module never hands a connection off and never sends an object's bytes: a GET
//! of an object is not its business and goes on to the handoff as before.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddrV4;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

use baton_io::http::ServeConfig;
use baton_io::store::{DirStore, Object};
use baton_shared::digest::Sha256;
use baton_shared::geo::Coord;
use baton_shared::http::{
    object_path, plan_document_response, plan_object_response, Method, ObjectPath, RequestHead,
    ResponsePlan,
};
use baton_shared::link::METALINK_MEDIA_TYPE;
use baton_shared::metalink::{self, piece_count, PieceHasher, MAX_PIECES};
use baton_shared::mirror::{self, Mirror, MirrorHost, METALINK_PIECE_BYTES};
use tokio::sync::OnceCell;
use tracing::warn;

use crate::state::Shared;

/// Objects whose piece hashes are kept. Each costs 32 bytes per 4 MiB of object; the total is
/// also bounded by [`MAX_CACHED_PIECE_HASHES`].
pub const MAX_PIECE_CACHE_ENTRIES: usize = 1024;
/// Piece hashes kept across all objects (32 MiB of memory), enough for 4 PiB of objects in
/// 4 MiB pieces. The oldest objects are forgotten first; forgetting costs one more hashing pass.
pub const MAX_CACHED_PIECE_HASHES: usize = 1 << 20;
/// Read size while hashing pieces.
const HASH_READ_BYTES: usize = 1 << 20;
/// The `<generator>` of the documents the main writes.
pub const GENERATOR: &str = concat!("baton/", env!("CARGO_PKG_VERSION"));

/// What kind of answer the VIP gave itself (the `kind` label of `baton_mirror_answers_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// A HEAD of an object, with its mirrors.
    Head,
    /// A Metalink document (GET or HEAD).
    Metalink,
}

impl AnswerKind {
    pub fn label(self) -> &'static str {
        match self {
            AnswerKind::Head => "head",
            AnswerKind::Metalink => "metalink",
        }
    }
}

/// A request the main answers itself, and what it answers.
#[derive(Debug)]
pub struct Answer {
    /// Head and, for a document, its bytes (`plan.body` is always `None`).
    pub plan: ResponsePlan,
    pub kind: AnswerKind,
}

/// Answers mirror discovery, or says it is not that (`None`: the request goes on as before).
///
/// - HEAD of an object that exists: exactly the headers of the object's response, then a `Link`
///   per mirror and the Metalink `Link` (on a 200; a 304 stays as it is).
/// - GET or HEAD of `<path>.meta4` when that is not an object itself but `<path>` is: the
///   Metalink document of `<path>`.
///
/// `mirrors` gives the ranked mirrors of an object for this client; `vip` is the address the
/// client connected to, which the URLs of the main's own copy use.
pub async fn answer(
    head: &RequestHead,
    origin: &DirStore,
    cfg: &ServeConfig,
    pieces: &PieceCache,
    vip: SocketAddrV4,
    mirrors: impl FnOnce(&ObjectPath) -> Vec<Mirror>,
) -> Option<Answer> {
    let is_head = match head.method {
        Method::Get => false,
        Method::Head => true,
        Method::Other(_) => return None,
    };
    let path = object_path(&head.target).ok()?;
    if let Some(obj) = resolve(origin, &path).await? {
        if !is_head {
            return None;
        }
        let mut plan = plan_object_response(head, &obj.meta, &cfg.server_name);
        cfg.finish(&mut plan);
        if plan.status == 200 {
            for value in mirror::link_values(&mirrors(&path), vip, &path) {
                plan.add_header("Link", &value);
            }
        }
        return Some(Answer {
            plan,
            kind: AnswerKind::Head,
        });
    }
    let described = mirror::described_object(&path)?;
    let obj = resolve(origin, &described).await??;
    let hashes = match pieces.pieces(&described, &obj).await {
        Ok(h) => h,
        Err(e) => {
            warn!(path = described.as_str(), error = %e, "no piece hashes for the metalink document");
            None
        }
    };
    let doc = mirror::metalink(
        &described,
        obj.meta.size,
        obj.meta.sha256,
        hashes.map(|h| h.as_ref().clone()),
        &mirrors(&described),
        vip,
    );
    let doc = metalink::write(&doc, GENERATOR);
    let mut plan =
        plan_document_response(head, METALINK_MEDIA_TYPE, doc.as_bytes(), &cfg.server_name);
    cfg.finish(&mut plan);
    Some(Answer {
        plan,
        kind: AnswerKind::Metalink,
    })
}

/// `Some(None)` when there is no such object; `None` when the origin failed (logged; the request
/// goes on as before and gets its error there).
async fn resolve(origin: &DirStore, path: &ObjectPath) -> Option<Option<Object>> {
    match origin.resolve(path).await {
        Ok(found) => Some(found),
        Err(e) => {
            warn!(path = path.as_str(), error = %e, "origin lookup failed");
            None
        }
    }
}

impl Shared {
    /// The mirrors of `path` to advertise to a client at `client`: the participants selection
    /// would hand it to, best first, that run a mirror, with their countries from the GeoIP
    /// database.
    pub fn mirrors_for(&self, client: Option<Coord>, path: &ObjectPath) -> Vec<Mirror> {
        let hosts: Vec<MirrorHost> = self
            .registry
            .mirrors()
            .into_iter()
            .map(|(name, addr)| MirrorHost {
                country: self.geo.lookup(*addr.ip()).and_then(|g| g.country),
                name,
                addr,
            })
            .collect();
        if hosts.is_empty() {
            return Vec::new();
        }
        mirror::advertised(
            &self.policy,
            client,
            &self.candidates(Some(path.as_str())),
            &hosts,
            path,
        )
    }
}

/// One object version: its path and digest.
type PieceKey = (String, Sha256);
/// Piece hashes, filled once by whoever asks first while the others wait.
type PieceCell = Arc<OnceCell<Arc<Vec<Sha256>>>>;

/// Piece hashes by object version, bounded by [`MAX_PIECE_CACHE_ENTRIES`] and
/// [`MAX_CACHED_PIECE_HASHES`], oldest forgotten first.
#[derive(Debug, Default)]
pub struct PieceCache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    cells: HashMap<PieceKey, PieceCell>,
    order: VecDeque<PieceKey>,
}

impl PieceCache {
    fn lock(&self) -> MutexGuard<'_, CacheInner> {
        // Every update is one insert or remove: a panicking holder leaves it consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The [`METALINK_PIECE_BYTES`] piece hashes of `object` (the object at `path`), hashed from
    /// its file on first use in a blocking task. `None` when it has more pieces than a Metalink
    /// parser accepts ([`MAX_PIECES`]): the document then carries only the whole digest. Fails
    /// when the file cannot be read or no longer has the digest it was resolved with.
    pub async fn pieces(
        &self,
        path: &ObjectPath,
        object: &Object,
    ) -> io::Result<Option<Arc<Vec<Sha256>>>> {
        let size = object.meta.size;
        if piece_count(size, METALINK_PIECE_BYTES) > MAX_PIECES as u64 {
            return Ok(None);
        }
        let key: PieceKey = (path.as_str().to_owned(), object.meta.sha256);
        let cell = {
            let mut g = self.lock();
            match g.cells.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = PieceCell::default();
                    g.cells.insert(key.clone(), c.clone());
                    g.order.push_back(key.clone());
                    c
                }
            }
        };
        let expected = object.meta.sha256;
        let file = object.file.try_clone()?;
        let hashes = cell
            .get_or_try_init(|| async move {
                let (whole, pieces) = tokio::task::spawn_blocking(move || hash_pieces(&file, size))
                    .await
                    .map_err(io::Error::other)??;
                if whole != expected {
                    return Err(io::Error::other(
                        "the file changed while its pieces were hashed",
                    ));
                }
                Ok::<_, io::Error>(Arc::new(pieces))
            })
            .await?
            .clone();
        self.evict();
        Ok(Some(hashes))
    }

    /// Forgets the oldest entries until both bounds hold.
    fn evict(&self) {
        let mut g = self.lock();
        let mut hashes: usize = g
            .cells
            .values()
            .filter_map(|c| c.get().map(|h| h.len()))
            .sum();
        while g.cells.len() > MAX_PIECE_CACHE_ENTRIES || hashes > MAX_CACHED_PIECE_HASHES {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            if let Some(c) = g.cells.remove(&old) {
                hashes -= c.get().map_or(0, |h| h.len());
            }
        }
    }

    /// Object versions with an entry (hashed or being hashed).
    pub fn len(&self) -> usize {
        self.lock().cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The whole digest and the piece hashes of the first `size` bytes of `file`.
fn hash_pieces(file: &std::fs::File, size: u64) -> io::Result<(Sha256, Vec<Sha256>)> {
    let mut hasher = PieceHasher::new(METALINK_PIECE_BYTES);
    let mut buf = vec![0u8; HASH_READ_BYTES];
    let mut at = 0u64;
    while at < size {
        let want = usize::try_from(size - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than its size",
            ));
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    use baton_shared::http::parse_request_head;
    use sha2::Digest as _;

    use super::*;

    const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);

    /// A content root with `iso/a.iso` (5 MiB + 3 bytes of a pattern) and `iso/b.iso.meta4`
    /// (an object that happens to end in `.meta4`).
    fn origin(tag: &str) -> (PathBuf, DirStore, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("baton-mirror-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("iso")).expect("mkdir");
        let data: Vec<u8> = (0..(5u32 << 20) + 3).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("iso/a.iso"), &data).expect("write");
        std::fs::write(dir.join("iso/b.iso"), b"b").expect("write");
        std::fs::write(dir.join("iso/b.iso.meta4"), b"not generated").expect("write");
        let store = DirStore::open(&dir).expect("store");
        (dir, store, data)
    }

    /// Parses a test request, adding the `Host` an HTTP/1.1 request needs.
    fn req(raw: &str) -> RequestHead {
        let raw = if raw.contains("HTTP/1.1\r\n") && !raw.contains("Host:") {
            raw.replacen("HTTP/1.1\r\n", "HTTP/1.1\r\nHost: vip\r\n", 1)
        } else {
            raw.to_owned()
        };
        match parse_request_head(raw.as_bytes()) {
            Ok(Some((head, _))) => head,
            other => panic!("bad test request {raw:?}: {other:?}"),
        }
    }

    fn cfg() -> ServeConfig {
        ServeConfig {
            served_by: Some("main".into()),
            ..ServeConfig::default()
        }
    }

    fn mirrors(path: &ObjectPath) -> Vec<Mirror> {
        vec![
            Mirror {
                url: mirror::object_url(
                    SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 10), 8080),
                    path,
                ),
                rank: 1,
                country: Some("de".into()),
            },
            Mirror {
                url: mirror::object_url(SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 10), 80), path),
                rank: 2,
                country: None,
            },
        ]
    }

    fn text(a: &Answer) -> &str {
        std::str::from_utf8(&a.plan.head).expect("ascii")
    }

    fn sha(b: &[u8]) -> Sha256 {
        sha2::Sha256::digest(b).into()
    }

    #[tokio::test]
    async fn head_of_an_object_names_its_mirrors() {
        let (dir, store, data) = origin("head");
        let cache = PieceCache::default();
        let head = req("HEAD /iso/a.iso HTTP/1.1\r\nHost: vip\r\n\r\n");
        let a = answer(&head, &store, &cfg(), &cache, VIP, mirrors)
            .await
            .expect("answered");
        let digest = sha(&data);
        let mtime = std::fs::metadata(dir.join("iso/a.iso")).expect("stat");
        let last_modified = baton_shared::http::imf_fixdate({
            use std::os::unix::fs::MetadataExt as _;
            u64::try_from(mtime.mtime()).expect("mtime")
        })
        .expect("date");
        assert_eq!(
            text(&a),
            format!(
                "HTTP/1.1 200 OK\r\n\
Server: baton\r\n\
Content-Type: application/octet-stream\r\n\
Content-Length: 5242883\r\n\
Accept-Ranges: bytes\r\n\
ETag: \"{}\"\r\n\
Last-Modified: {last_modified}\r\n\
Repr-Digest: {}\r\n\
Digest: {}\r\n\
X-Served-By: main\r\n\
Link: <http://198.18.2.10:8080/iso/a.iso>; rel=duplicate; pri=1; geo=de\r\n\
Link: <http://198.18.3.10/iso/a.iso>; rel=duplicate; pri=2\r\n\
Link: <http://203.0.113.10/iso/a.iso.meta4>; rel=describedby; type=\"application/metalink4+xml\"\r\n\
\r\n",
                &hex::encode(digest)[..32],
                baton_shared::digest::repr_digest_value(&digest),
                baton_shared::digest::legacy_digest_value(&digest),
            )
        );
        assert_eq!(
            (a.kind, a.plan.status, a.plan.body, a.plan.keep_alive),
            (AnswerKind::Head, 200, None, true)
        );
        assert!(cache.is_empty(), "a HEAD hashes no pieces");

        // A 304 stays a 304; a closing request gets its Connection: close before the links.
        let etag = format!("\"{}\"", &hex::encode(digest)[..32]);
        let a = answer(
            &req(&format!(
                "HEAD /iso/a.iso HTTP/1.1\r\nIf-None-Match: {etag}\r\n\r\n"
            )),
            &store,
            &cfg(),
            &cache,
            VIP,
            mirrors,
        )
        .await
        .expect("answered");
        assert_eq!(a.plan.status, 304);
        assert!(!text(&a).contains("Link:"));
        let a = answer(
            &req("HEAD /iso/a.iso HTTP/1.0\r\n\r\n"),
            &store,
            &cfg(),
            &cache,
            VIP,
            |_| Vec::new(),
        )
        .await
        .expect("answered");
        assert!(!a.plan.keep_alive);
        assert!(text(&a).ends_with(
            "Connection: close\r\nX-Served-By: main\r\nLink: <http://203.0.113.10/iso/a.iso.meta4>; rel=describedby; type=\"application/metalink4+xml\"\r\n\r\n"
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn object_gets_and_everything_else_go_on() {
        let (dir, store, _) = origin("pass");
        let cache = PieceCache::default();
        for raw in [
            "GET /iso/a.iso HTTP/1.1\r\n\r\n",
            "GET /iso/a.iso?x HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n",
            "HEAD /missing HTTP/1.1\r\n\r\n",
            "GET /missing.meta4 HTTP/1.1\r\n\r\n",
            "HEAD /.meta4 HTTP/1.1\r\n\r\n",
            "GET /iso/b.iso.meta4 HTTP/1.1\r\n\r\n",
            "OPTIONS /iso/a.iso.meta4 HTTP/1.1\r\n\r\n",
            "GET /../etc/passwd HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                answer(&req(raw), &store, &cfg(), &cache, VIP, mirrors)
                    .await
                    .is_none(),
                "{raw:?}"
            );
        }
        // An object whose name ends in .meta4 is an object: its HEAD is answered as one.
        let a = answer(
            &req("HEAD /iso/b.iso.meta4 HTTP/1.1\r\n\r\n"),
            &store,
            &cfg(),
            &cache,
            VIP,
            mirrors,
        )
        .await
        .expect("answered");
        assert_eq!(a.kind, AnswerKind::Head);
        assert!(text(&a).contains("\r\nContent-Length: 13\r\n"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn metalink_document_with_pieces() {
        let (dir, store, data) = origin("meta4");
        let cache = PieceCache::default();
        let a = answer(
            &req("GET /iso/a.iso.meta4 HTTP/1.1\r\nHost: vip\r\n\r\n"),
            &store,
            &cfg(),
            &cache,
            VIP,
            mirrors,
        )
        .await
        .expect("answered");
        assert_eq!(
            (a.kind, a.plan.status, a.plan.body, a.plan.keep_alive),
            (AnswerKind::Metalink, 200, None, true)
        );
        let p4 = METALINK_PIECE_BYTES as usize;
        let doc = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<metalink xmlns=\"urn:ietf:params:xml:ns:metalink\">\n  \
<generator>{GENERATOR}</generator>\n  \
<file name=\"a.iso\">\n    \
<size>5242883</size>\n    \
<hash type=\"sha-256\">{}</hash>\n    \
<pieces length=\"4194304\" type=\"sha-256\">\n      \
<hash>{}</hash>\n      \
<hash>{}</hash>\n    \
</pieces>\n    \
<url priority=\"1\" location=\"de\">http://198.18.2.10:8080/iso/a.iso</url>\n    \
<url priority=\"2\">http://198.18.3.10/iso/a.iso</url>\n    \
<url priority=\"3\">http://203.0.113.10/iso/a.iso</url>\n  \
</file>\n\
</metalink>\n",
            hex::encode(sha(&data)),
            hex::encode(sha(&data[..p4])),
            hex::encode(sha(&data[p4..]))
        );
        assert_eq!(
            text(&a),
            format!(
                "HTTP/1.1 200 OK\r\nServer: baton\r\nContent-Type: application/metalink4+xml\r\nContent-Length: {}\r\nX-Served-By: main\r\n\r\n{doc}",
                doc.len()
            )
        );
        assert_eq!(cache.len(), 1);
        // The document parses back to what was published.
        let parsed = metalink::parse(doc.as_bytes()).expect("own document");
        assert_eq!(
            parsed.files[0].pieces.as_ref().map(|p| p.sha256.len()),
            Some(2)
        );

        // HEAD: the same head, no document; the pieces come from the cache.
        let a = answer(
            &req("HEAD /iso/a.iso.meta4 HTTP/1.1\r\n\r\n"),
            &store,
            &cfg(),
            &cache,
            VIP,
            mirrors,
        )
        .await
        .expect("answered");
        assert_eq!(
            text(&a),
            format!(
                "HTTP/1.1 200 OK\r\nServer: baton\r\nContent-Type: application/metalink4+xml\r\nContent-Length: {}\r\nX-Served-By: main\r\n\r\n",
                doc.len()
            )
        );
        assert_eq!(cache.len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn pieces_are_hashed_once_per_version_and_the_cache_is_bounded() {
        let (dir, store, _) = origin("cache");
        let cache = PieceCache::default();
        let path = ObjectPath::from_relative("iso/b.iso").expect("path");
        let obj = store
            .resolve(&path)
            .await
            .expect("resolve")
            .expect("exists");
        let first = cache
            .pieces(&path, &obj)
            .await
            .expect("hashed")
            .expect("pieces");
        assert_eq!(first.as_ref(), &vec![sha(b"b")]);
        let again = cache
            .pieces(&path, &obj)
            .await
            .expect("cached")
            .expect("pieces");
        assert!(Arc::ptr_eq(&first, &again), "hashed once");
        // Another version of the same path is another entry.
        std::fs::write(dir.join("iso/b.iso"), b"bb").expect("rewrite");
        let obj2 = store
            .resolve(&path)
            .await
            .expect("resolve")
            .expect("exists");
        let second = cache
            .pieces(&path, &obj2)
            .await
            .expect("hashed")
            .expect("pieces");
        assert_eq!(second.as_ref(), &vec![sha(b"bb")]);
        assert_eq!(cache.len(), 2);
        // A file that no longer matches its digest is not cached.
        let stale = Object {
            file: obj2.file.try_clone().expect("clone"),
            meta: baton_shared::http::ObjectMeta {
                sha256: [0; 32],
                ..obj2.meta.clone()
            },
        };
        let err = cache
            .pieces(&ObjectPath::from_relative("other").expect("path"), &stale)
            .await;
        assert!(err.is_err());
        // Too many pieces for a document: none.
        let huge = Object {
            file: obj2.file.try_clone().expect("clone"),
            meta: baton_shared::http::ObjectMeta {
                size: METALINK_PIECE_BYTES * MAX_PIECES as u64 + 1,
                ..obj2.meta.clone()
            },
        };
        assert_eq!(cache.pieces(&path, &huge).await.expect("no error"), None);
        // Entries beyond the bound push the oldest out.
        for i in 0..MAX_PIECE_CACHE_ENTRIES + 5 {
            let p = ObjectPath::from_relative(&format!("p{i}")).expect("path");
            let o = Object {
                file: obj2.file.try_clone().expect("clone"),
                meta: obj2.meta.clone(),
            };
            cache.pieces(&p, &o).await.expect("hashed");
        }
        assert_eq!(cache.len(), MAX_PIECE_CACHE_ENTRIES);
        assert!(
            cache.lock().cells.keys().all(|(p, _)| p.starts_with('p')),
            "the oldest went first"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

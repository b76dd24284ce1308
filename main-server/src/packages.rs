//! The cluster's package list for the peer cache, kept by the main, and its three HTTP endpoints
//! under [`PACKAGES_PREFIX`] on the origin listener (the wire side is `baton_io::peer::api`).
//!
//! The list is fed from two sides: the origin store describes each object whose SHA-256 it has
//! computed (digest and size, authoritative), and peers report that they hold a package at an
//! address (a hint, learned with the generation rule of [`PackageList::learn`]).
//!
//! It must never trust a report for integrity: a report only adds a location. It never sets a
//! package's digest or size, never makes an MD5 an alias of a SHA-256, and a report that
//! contradicts the origin (another size for an object the origin holds) is refused. Requesters
//! verify every byte against the origin's SHA-256 anyway, so a forged report costs at most one
//! failed attempt. The lock guards plain collections and is never held across an await.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use baton_io::http::ServeConfig;
use baton_io::metrics::{Exposition, Kind};
use baton_io::peer::api::{entry_doc, EntryDoc, Report, MAX_DOCUMENT_BYTES, PACKAGES_PREFIX};
use baton_shared::digest::{sha256_hex, Sha256};
use baton_shared::http::{reason_phrase, Method, RequestHead, ResponsePlan};
use baton_shared::peer::{IdError, Learned, Package, PackageId, PackageList, MAX_PACKAGES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest report body read. A report is an address, two digests and a size (about 200 bytes);
/// anything much bigger is not a report.
pub const MAX_REPORT_BYTES: usize = 4096;
/// Origin objects whose SHA-256 and size are remembered for checking reports. As many as the
/// list holds packages: the start-up pass hashes at most 10 000 objects, which leaves room for
/// objects added later; beyond it reports about new objects are only checked against the list.
pub const MAX_ORIGIN_DIGESTS: usize = MAX_PACKAGES;
/// Read size for report bodies.
const BODY_CHUNK_BYTES: usize = 4096;

/// Why a report was refused. [`ReportError::status`] gives the status to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("bad package id in the path: {0}")]
    Id(#[from] IdError),
    #[error("the report is not a valid JSON report ({{\"addr\":\"a.b.c.d:port\",\"sha256\":…,\"size\":…}}): {reason}")]
    Json { reason: String },
    #[error("the report's digests are malformed: sha256 must be 64 hex digits and md5 32")]
    Digests,
    #[error("the report describes package sha256 {reported}, which is not {id}")]
    WrongPackage { id: String, reported: String },
    #[error("the origin's object {sha256} is {origin} bytes; the report says {reported}")]
    WrongSize { sha256: String, origin: u64, reported: u64 },
    #[error("{addr} cannot serve peers (unspecified, broadcast or multicast address, or port 0)")]
    Address { addr: SocketAddrV4 },
    #[error("a report is at most {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("a report needs a Content-Length (chunked bodies are not read)")]
    LengthRequired,
}

impl ReportError {
    /// 409 when the report contradicts the origin, 413/411 for the body's framing, else 400.
    pub fn status(&self) -> u16 {
        match self {
            ReportError::WrongSize { .. } => 409,
            ReportError::TooLarge => 413,
            ReportError::LengthRequired => 411,
            _ => 400,
        }
    }
}

/// The list, what the origin knows, and the counters of the endpoints.
#[derive(Debug)]
pub struct Packages {
    inner: Mutex<Inner>,
    learned: AtomicU64,
    refused: AtomicU64,
    found: AtomicU64,
    unknown: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    list: PackageList,
    /// SHA-256 → size of the origin's objects (a fact about the bytes, never stale).
    origin: HashMap<Sha256, u64>,
    /// The draws of the generation rule.
    rng: StdRng,
}

impl Default for Packages {
    fn default() -> Self {
        Self::new()
    }
}

impl Packages {
    /// An empty list.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner { list: PackageList::new(), origin: HashMap::new(), rng: StdRng::from_entropy() }),
            learned: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            found: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the collections are still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Packages listed.
    pub fn len(&self) -> usize {
        self.lock().list.len()
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The origin store holds an object with this digest and size (it has just hashed it, or
    /// found the digest in its cache). Cheap when already described: called on every resolve.
    pub fn describe_origin(&self, sha256: Sha256, size: u64) {
        let package = Package { sha256, size, md5: None };
        let mut g = self.lock();
        let known = g.origin.get(&sha256) == Some(&size);
        if known && g.list.get(&package.id()).is_some_and(|e| e.package.is_some()) {
            return;
        }
        if !known && g.origin.len() < MAX_ORIGIN_DIGESTS {
            g.origin.insert(sha256, size);
        }
        g.list.describe(package);
    }

    /// The entry of `id`, counted as a lookup.
    pub fn lookup(&self, id: &PackageId) -> Option<EntryDoc> {
        let doc = {
            let g = self.lock();
            let canonical = g.list.resolve(id);
            g.list.get(id).map(|e| entry_doc(&canonical, e))
        };
        let counter = if doc.is_some() { &self.found } else { &self.unknown };
        counter.fetch_add(1, Ordering::Relaxed);
        doc
    }

    /// Every entry, by id. The entries are copied under the lock and turned into documents
    /// after it.
    pub fn documents(&self) -> Vec<EntryDoc> {
        let mut entries: Vec<_> = {
            let g = self.lock();
            g.list.iter().map(|(id, e)| (*id, e.clone())).collect()
        };
        entries.sort_by_key(|(id, _)| *id);
        entries.iter().map(|(id, e)| entry_doc(id, e)).collect()
    }

    /// A peer's report about `id` (the path's text) with `body`: checked, then learned. The
    /// entry as it is afterwards, or why the report was refused; counted either way.
    pub fn report(&self, id: &str, body: &[u8]) -> Result<EntryDoc, ReportError> {
        let result = self.check_and_learn(id, body);
        match &result {
            Ok(_) => self.learned.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.refused.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// Counts a report refused before its body was looked at (size, framing).
    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn check_and_learn(&self, id: &str, body: &[u8]) -> Result<EntryDoc, ReportError> {
        let id = PackageId::parse(id)?;
        let report: Report = serde_json::from_slice(body).map_err(|e| ReportError::Json { reason: e.to_string() })?;
        let package = report.package().ok_or(ReportError::Digests)?;
        let names_it = match id {
            PackageId::Sha256(d) => d == package.sha256,
            PackageId::Md5(m) => package.md5 == Some(m),
        };
        if !names_it {
            return Err(ReportError::WrongPackage { id: id.to_string(), reported: sha256_hex(&package.sha256) });
        }
        let ip = report.addr.ip();
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || report.addr.port() == 0 {
            return Err(ReportError::Address { addr: report.addr });
        }
        let canonical = package.id();
        let mut g = self.lock();
        let origin_size = g
            .origin
            .get(&package.sha256)
            .copied()
            .or_else(|| g.list.get(&canonical).and_then(|e| e.package).map(|p| p.size));
        if let Some(size) = origin_size.filter(|s| *s != package.size) {
            return Err(ReportError::WrongSize { sha256: sha256_hex(&package.sha256), origin: size, reported: package.size });
        }
        let draw: f64 = g.rng.gen();
        let learned = g.list.learn(&canonical, report.addr, draw);
        let doc = g.list.get(&canonical).map(|e| entry_doc(&canonical, e));
        drop(g);
        tracing::debug!(package = %canonical, addr = %report.addr, learned = learned_name(learned), "package report");
        Ok(doc.unwrap_or_else(|| EntryDoc { id: canonical.to_string(), sha256: None, size: None, location: None, alternates: Vec::new() }))
    }

    /// The list's Prometheus families.
    pub fn metrics(&self, e: &mut Exposition) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        e.single("baton_package_list_entries", Kind::Gauge, "Packages in the main's peer-cache list.", self.len() as f64);
        e.family("baton_package_list_reports_total", Kind::Counter, "Peers' reports of holding a package, by result.");
        e.sample("baton_package_list_reports_total", &[("result", "learned")], load(&self.learned));
        e.sample("baton_package_list_reports_total", &[("result", "refused")], load(&self.refused));
        e.family("baton_package_list_lookups_total", Kind::Counter, "Lookups of one package in the list, by result.");
        e.sample("baton_package_list_lookups_total", &[("result", "found")], load(&self.found));
        e.sample("baton_package_list_lookups_total", &[("result", "unknown")], load(&self.unknown));
    }
}

fn learned_name(l: Learned) -> &'static str {
    match l {
        Learned::First => "first",
        Learned::Same => "same",
        Learned::Replaced => "replaced",
        Learned::Kept => "kept",
    }
}

/// What a request target under [`PACKAGES_PREFIX`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// The prefix itself: every entry.
    List,
    /// One package, by the id text after the prefix (not parsed yet).
    One(&'a str),
    /// Something deeper below the prefix.
    Unknown,
}

/// The route of `target` when it is under [`PACKAGES_PREFIX`] (origin form; a query is
/// ignored), `None` when it is anything else (an object).
pub fn route(target: &str) -> Option<Route<'_>> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let rest = path.strip_prefix(PACKAGES_PREFIX)?;
    Some(match rest {
        "" | "/" => Route::List,
        _ => match rest.strip_prefix('/') {
            Some(id) if !id.contains('/') => Route::One(id),
            Some(_) => Route::Unknown,
            // `/.well-known/baton/packagesX` is not under the prefix.
            None => return None,
        },
    })
}

/// A JSON error document.
#[derive(Debug, Serialize)]
struct ErrorDoc<'a> {
    error: &'a str,
}

/// One answer: status, JSON body, and the `Allow` header of a 405.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Vec<u8>,
    allow: Option<&'static str>,
}

impl Reply {
    fn json<T: Serialize>(status: u16, doc: &T) -> Reply {
        // Serializing these plain structs cannot fail; an empty object stands in if it ever did.
        Reply { status, body: serde_json::to_vec(doc).unwrap_or_else(|_| b"{}".to_vec()), allow: None }
    }

    fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, &ErrorDoc { error: message })
    }
}

/// The list document: every entry, as many as fit in [`MAX_DOCUMENT_BYTES`] (what a member
/// reads at most), and the number of entries there are.
fn list_document(docs: &[EntryDoc]) -> (Vec<u8>, usize) {
    let mut out = b"[".to_vec();
    let mut listed = 0;
    for d in docs {
        let Ok(one) = serde_json::to_vec(d) else { continue };
        if out.len() + one.len() + 2 > MAX_DOCUMENT_BYTES {
            break;
        }
        if listed > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&one);
        listed += 1;
    }
    out.push(b']');
    (out, listed)
}

/// Answers one request under [`PACKAGES_PREFIX`] whose head (`head_len` bytes) is at the start
/// of `buf`, reading a report's body (bounded by [`MAX_REPORT_BYTES`], within the head deadline)
/// into `buf`. Returns whether the connection may carry another request; the bytes of this one
/// are gone from `buf` then.
pub async fn serve_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    head_len: usize,
    packages: &Packages,
    cfg: &ServeConfig,
) -> io::Result<bool> {
    let route = route(&head.target).unwrap_or(Route::Unknown);
    let chunked = head.header("transfer-encoding").is_some();
    let body_len = head.content_length().unwrap_or(0);
    let is_post = matches!(&head.method, Method::Other(m) if m == "POST");
    // A body that is not read leaves the stream unframed: the connection closes after the answer.
    let mut keep_alive = head.keep_alive() && !chunked;
    let mut body_read = body_len == 0;
    let send_body = head.method != Method::Head;
    let mut total = None;
    let reply = match (&head.method, route) {
        (Method::Get | Method::Head, Route::List) => {
            let docs = packages.documents();
            let (body, _) = list_document(&docs);
            total = Some(docs.len());
            Reply { status: 200, body, allow: None }
        }
        (Method::Get | Method::Head, Route::One(id)) => match PackageId::parse(id) {
            Err(e) => Reply::error(400, &format!("bad package id in the path: {e}")),
            Ok(id) => match packages.lookup(&id) {
                Some(doc) => Reply::json(200, &doc),
                None => Reply::error(404, &format!("package {id} is not in the list")),
            },
        },
        (_, Route::One(id)) if is_post => {
            let framing = if chunked {
                Err(ReportError::LengthRequired)
            } else {
                usize::try_from(body_len).ok().filter(|n| *n <= MAX_REPORT_BYTES).ok_or(ReportError::TooLarge)
            };
            match framing {
                Err(e) => {
                    packages.count_refused();
                    keep_alive = false;
                    Reply::error(e.status(), &e.to_string())
                }
                Ok(n) => {
                    let end = head_len + n;
                    if !read_to(stream, buf, end, cfg).await? {
                        // The client left or stalled inside its body: nothing is answered.
                        packages.count_refused();
                        return Ok(false);
                    }
                    body_read = true;
                    match packages.report(id, &buf[head_len..end]) {
                        Ok(doc) => Reply::json(200, &doc),
                        Err(e) => {
                            tracing::debug!(id, error = %e, "package report refused");
                            Reply::error(e.status(), &e.to_string())
                        }
                    }
                }
            }
        }
        (_, Route::Unknown) => Reply::error(404, &format!("no such endpoint; use {PACKAGES_PREFIX} or {PACKAGES_PREFIX}/<id>")),
        (m, Route::List) => Reply {
            allow: Some("GET, HEAD"),
            ..Reply::error(405, &format!("{} is not allowed on {PACKAGES_PREFIX}; use GET", m.as_str()))
        },
        (m, Route::One(_)) => Reply {
            allow: Some("GET, HEAD, POST"),
            ..Reply::error(405, &format!("{} is not allowed on a package; use GET or POST", m.as_str()))
        },
    };
    keep_alive &= body_read;
    let mut plan = ResponsePlan { status: reply.status, head: response_head(&reply, head, keep_alive, total, cfg), body: None, keep_alive };
    cfg.finish(&mut plan);
    if send_body {
        plan.head.extend_from_slice(&reply.body);
    }
    stream.write_all(&plan.head).await?;
    if keep_alive {
        buf.drain(..head_len + usize::try_from(body_len).unwrap_or(0));
    }
    Ok(keep_alive)
}

/// The head of `reply`: `Server`, `Content-Type`, `Content-Length`, `Cache-Control`, then the
/// list's entry count, `Allow` and `Connection` when they apply.
fn response_head(reply: &Reply, req: &RequestHead, keep_alive: bool, total: Option<usize>, cfg: &ServeConfig) -> Vec<u8> {
    let server: String = cfg.server_name.chars().filter(|c| matches!(c, ' '..='~')).collect();
    let mut h = format!(
        "HTTP/1.1 {} {}\r\nServer: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        reply.status,
        reason_phrase(reply.status),
        server.trim(),
        reply.body.len()
    );
    if let Some(n) = total {
        h.push_str(&format!("X-Baton-Entries: {n}\r\n"));
    }
    if let Some(allow) = reply.allow {
        h.push_str(&format!("Allow: {allow}\r\n"));
    }
    if !keep_alive {
        h.push_str("Connection: close\r\n");
    } else if req.minor_version == 0 {
        h.push_str("Connection: keep-alive\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Reads until `buf` holds `end` bytes; false when the client closed or the deadline (the
/// listener's head deadline) passed first.
async fn read_to(stream: &mut TcpStream, buf: &mut Vec<u8>, end: usize, cfg: &ServeConfig) -> io::Result<bool> {
    let deadline = tokio::time::Instant::now() + cfg.head_timeout;
    while buf.len() < end {
        let mut chunk = [0u8; BODY_CHUNK_BYTES];
        let want = (end - buf.len()).min(BODY_CHUNK_BYTES);
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await {
            Err(_) | Ok(Ok(0)) => return Ok(false),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const SHA: Sha256 = [7u8; 32];
    const ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 10), 8080);

    fn body(sha256: &Sha256, size: u64, md5: Option<&str>) -> Vec<u8> {
        let mut doc = serde_json::json!({ "addr": ADDR.to_string(), "sha256": sha256_hex(sha256), "size": size });
        if let Some(m) = md5 {
            doc["md5"] = serde_json::Value::String(m.to_owned());
        }
        serde_json::to_vec(&doc).expect("json")
    }

    #[test]
    fn routes_only_the_prefix() {
        assert_eq!(route("/.well-known/baton/packages"), Some(Route::List));
        assert_eq!(route("/.well-known/baton/packages/?x=1"), Some(Route::List));
        assert_eq!(route("/.well-known/baton/packages/abc?x=1"), Some(Route::One("abc")));
        assert_eq!(route("/.well-known/baton/packages/a/b"), Some(Route::Unknown));
        assert_eq!(route("/.well-known/baton/packagesX"), None);
        assert_eq!(route("/iso/a.iso"), None);
    }

    #[test]
    fn reports_are_checked_against_the_id_and_the_origin() {
        let p = Packages::new();
        p.describe_origin(SHA, 100);
        let id = sha256_hex(&SHA);
        assert_eq!(
            p.report(&id, &body(&SHA, 101, None)),
            Err(ReportError::WrongSize { sha256: id.clone(), origin: 100, reported: 101 })
        );
        assert_eq!(p.report(&id, &body(&SHA, 101, None)).map_err(|e| e.status()), Err(409));
        assert!(matches!(p.report(&id, &body(&[8u8; 32], 100, None)), Err(ReportError::WrongPackage { .. })));
        assert!(matches!(p.report("xyz", &body(&SHA, 100, None)), Err(ReportError::Id(_))));
        assert!(matches!(p.report(&id, b"{\"addr\":1}"), Err(ReportError::Json { .. })));
        assert_eq!(p.report(&id, &body(&SHA, 100, Some("zz"))), Err(ReportError::Digests));
        let doc = p.report(&id, &body(&SHA, 100, None)).expect("learned");
        assert_eq!((doc.sha256.as_deref(), doc.size), (Some(id.as_str()), Some(100)));
        assert_eq!(doc.location.map(|l| (l.addr, l.generation)), Some((ADDR, 1)));
        let mut e = Exposition::new();
        p.metrics(&mut e);
        let text = e.finish();
        assert!(text.contains("baton_package_list_reports_total{result=\"learned\"} 1\n"), "{text}");
        assert!(text.contains("baton_package_list_reports_total{result=\"refused\"} 6\n"), "{text}");
        assert!(text.contains("baton_package_list_entries 1\n"), "{text}");
    }

    #[test]
    fn an_md5_id_must_be_the_reports_md5_and_learns_under_the_sha256() {
        let p = Packages::new();
        let md5 = "00112233445566778899aabbccddeeff";
        assert!(matches!(p.report(md5, &body(&SHA, 5, None)), Err(ReportError::WrongPackage { .. })));
        let doc = p.report(md5, &body(&SHA, 5, Some(md5))).expect("learned");
        assert_eq!(doc.id, sha256_hex(&SHA));
        assert_eq!(doc.sha256, None, "a report never describes the package");
        let sha_id = PackageId::Sha256(SHA);
        assert_eq!(p.lookup(&sha_id).and_then(|d| d.location).map(|l| l.addr), Some(ADDR));
        assert!(p.lookup(&PackageId::parse(md5).expect("md5")).is_none(), "a report names no md5 alias");
    }

    #[test]
    fn unusable_addresses_are_refused() {
        let p = Packages::new();
        let id = sha256_hex(&SHA);
        let doc = format!("{{\"addr\":\"0.0.0.0:80\",\"sha256\":\"{id}\",\"size\":1}}");
        assert!(matches!(p.report(&id, doc.as_bytes()), Err(ReportError::Address { .. })));
        let doc = format!("{{\"addr\":\"198.18.2.10:0\",\"sha256\":\"{id}\",\"size\":1}}");
        assert!(matches!(p.report(&id, doc.as_bytes()), Err(ReportError::Address { .. })));
        assert!(p.is_empty());
    }

    #[test]
    fn describing_twice_changes_nothing_and_the_list_document_is_bounded() {
        let p = Packages::new();
        p.describe_origin(SHA, 9);
        p.describe_origin(SHA, 9);
        assert_eq!(p.len(), 1);
        let docs = p.documents();
        assert_eq!(docs[0].size, Some(9));
        let (doc, listed) = list_document(&docs);
        assert_eq!(listed, 1);
        let parsed: Vec<EntryDoc> = serde_json::from_slice(&doc).expect("array");
        assert_eq!(parsed, docs);
        let many: Vec<EntryDoc> = (0..40_000u32)
            .map(|i| EntryDoc { id: format!("{i:064x}"), sha256: Some(format!("{i:064x}")), size: Some(1), location: None, alternates: Vec::new() })
            .collect();
        let (doc, listed) = list_document(&many);
        assert!(doc.len() <= MAX_DOCUMENT_BYTES && listed < many.len(), "{} bytes, {listed} listed", doc.len());
        assert_eq!(serde_json::from_slice::<Vec<EntryDoc>>(&doc).expect("array").len(), listed);
    }
}

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
//!
//! Reports are not authenticated, so what one can do is narrowed instead:
//! - a host reports only itself: the report's address must be the connection's peer address,
//!   and never one nobody else can reach (loopback, link-local, unspecified, broadcast,
//!   multicast, reserved);
//! - packages the origin does not hold get a budget of their own ([`MAX_FOREIGN_PACKAGES`]),
//!   so a flood of reports for made-up digests cannot evict the origin's entries from the list
//!   (which drops the entry added longest ago when full).
//!
//! The full list is rendered one request at a time ([`MAX_LIST_RENDERS`]), converting entries
//! in short lock holds ([`RENDER_BATCH`]) and only as many as fit in [`MAX_DOCUMENT_BYTES`], so
//! object serving (which describes each object it resolves) never waits for a whole copy.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use baton_io::http::ServeConfig;
use baton_io::metrics::{Exposition, Kind};
use baton_io::peer::api::{entry_doc, EntryDoc, Report, MAX_DOCUMENT_BYTES, PACKAGES_PREFIX};
use baton_shared::digest::{sha256_hex, Sha256};
use baton_shared::http::{reason_phrase, Method, RequestHead, ResponsePlan};
use baton_shared::peer::{IdError, Learned, Package, PackageId, PackageList, MAX_PACKAGES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Largest report body read. A report is an address, two digests and a size (about 200 bytes);
/// anything much bigger is not a report.
pub const MAX_REPORT_BYTES: usize = 4096;
/// Origin objects whose SHA-256 and size are remembered for checking reports. As many as the
/// list holds packages: the start-up pass hashes at most 10 000 objects, which leaves room for
/// objects added later; beyond it reports about new objects are only checked against the list.
pub const MAX_ORIGIN_DIGESTS: usize = MAX_PACKAGES;
/// Packages the origin does not hold that the list keeps at once (learned from reports alone).
/// An honest member holds what it fetched from the origin or from peers, and the origin
/// describes every object it resolves, so such packages are rare: objects beyond
/// [`MAX_ORIGIN_DIGESTS`] or removed from the origin since. 1024 leaves room for those while a
/// flood of reports for made-up digests fills at most this many of the list's [`MAX_PACKAGES`]
/// places; an origin of up to `MAX_PACKAGES - MAX_FOREIGN_PACKAGES` objects never loses an entry
/// to reports. Beyond it, reports of new foreign packages are refused (429) until foreign
/// entries leave the list (evicted, or the origin comes to hold them).
pub const MAX_FOREIGN_PACKAGES: usize = 1024;
/// Full-list renderings that run at once. A rendering builds up to [`MAX_DOCUMENT_BYTES`] and
/// takes the list's lock once per [`RENDER_BATCH`] entries; several at once would only multiply
/// the memory and the lock holds (members look packages up one by one; the full list is for
/// operators and tools), so one.
pub const MAX_LIST_RENDERS: usize = 1;
/// How long a full-list request waits for the rendering that is running before it is answered
/// 503. A rendering takes milliseconds, so a longer wait means requests pile up; it is well
/// below a member's call deadline (`baton_io::peer::api::CALL_TIMEOUT`, 3 s).
pub const LIST_RENDER_WAIT: Duration = Duration::from_secs(1);
/// The `Retry-After` (seconds) of that 503: by then the rendering ahead has long finished.
pub const LIST_RETRY_AFTER_SECS: u32 = 1;
/// Entries converted to documents per hold of the list's lock while the full list is rendered:
/// a resolve that describes its object waits at most for one batch (tens of microseconds),
/// never for the whole list.
pub const RENDER_BATCH: usize = 256;
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
    #[error("{addr} cannot serve peers (unspecified, loopback, link-local, broadcast, multicast or reserved address, or port 0)")]
    Address { addr: SocketAddrV4 },
    #[error("the report names {addr}, but it came from {peer}: a host reports only its own address")]
    NotPeer { addr: SocketAddrV4, peer: IpAddr },
    #[error(
        "the list already holds {MAX_FOREIGN_PACKAGES} packages the origin does not hold; package sha256 {sha256} is not listed"
    )]
    ForeignBudget { sha256: String },
    #[error("a report is at most {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("a report needs a Content-Length (chunked bodies are not read)")]
    LengthRequired,
}

impl ReportError {
    /// 409 when the report contradicts the origin, 403 when it names another host, 429 when
    /// the foreign budget is spent, 413/411 for the body's framing, else 400.
    pub fn status(&self) -> u16 {
        match self {
            ReportError::WrongSize { .. } => 409,
            ReportError::NotPeer { .. } => 403,
            ReportError::ForeignBudget { .. } => 429,
            ReportError::TooLarge => 413,
            ReportError::LengthRequired => 411,
            _ => 400,
        }
    }
}

/// Why the full list was not rendered. [`ListError::status`] gives the status to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("another request is rendering the package list; retry in {LIST_RETRY_AFTER_SECS} s")]
    Busy,
}

impl ListError {
    /// 503, with `Retry-After: LIST_RETRY_AFTER_SECS`.
    pub fn status(&self) -> u16 {
        503
    }
}

/// The full list's document: a JSON array of entries by id, as many as fit in
/// [`MAX_DOCUMENT_BYTES`] (what a member reads at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListDocument {
    pub body: Vec<u8>,
    /// Entries in `body`.
    pub listed: usize,
    /// Entries the list held when the rendering started.
    pub total: usize,
}

/// The list, what the origin knows, and the counters of the endpoints.
#[derive(Debug)]
pub struct Packages {
    inner: Mutex<Inner>,
    /// Permits to render the full list ([`MAX_LIST_RENDERS`]).
    renders: Semaphore,
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
    /// Packages learned from reports alone (the origin does not hold them). Holds every such
    /// listed package, and possibly some the list has dropped since (pruned when at
    /// [`MAX_FOREIGN_PACKAGES`]).
    foreign: HashSet<Sha256>,
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
            inner: Mutex::new(Inner {
                list: PackageList::new(),
                origin: HashMap::new(),
                foreign: HashSet::new(),
                rng: StdRng::from_entropy(),
            }),
            renders: Semaphore::new(MAX_LIST_RENDERS),
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
        g.foreign.remove(&sha256);
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

    /// The full list's document, once a rendering permit is free: waits at most
    /// [`LIST_RENDER_WAIT`] for the rendering ahead ([`MAX_LIST_RENDERS`]), else
    /// [`ListError::Busy`]. The permit is released before the document is sent, so a client
    /// that reads slowly holds no permit.
    pub async fn list_document(&self) -> Result<ListDocument, ListError> {
        let _permit = match tokio::time::timeout(LIST_RENDER_WAIT, self.renders.acquire()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; a closed one is as good as a busy one.
            Ok(Err(_)) | Err(_) => {
                tracing::debug!(wait_ms = LIST_RENDER_WAIT.as_millis() as u64, "package list rendering busy");
                return Err(ListError::Busy);
            }
        };
        Ok(self.render_list())
    }

    /// Holds the rendering permit, as a running rendering does (tests of the 503).
    #[cfg(test)]
    pub(crate) async fn hold_rendering(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.renders.acquire().await.expect("the semaphore is never closed")
    }

    /// Renders the list by id: the ids are copied under one lock hold, then entries are turned
    /// into documents [`RENDER_BATCH`] at a time under the lock and serialized after it, until
    /// the next one would not fit in [`MAX_DOCUMENT_BYTES`] (the rest is never converted). An
    /// entry that leaves the list meanwhile is skipped; the document is a hint, not a snapshot.
    fn render_list(&self) -> ListDocument {
        let mut ids: Vec<PackageId> = self.lock().list.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let total = ids.len();
        let mut body = b"[".to_vec();
        let mut one = Vec::new();
        let mut listed = 0;
        'batches: for batch in ids.chunks(RENDER_BATCH) {
            let docs: Vec<EntryDoc> = {
                let g = self.lock();
                batch.iter().filter_map(|id| g.list.get(id).map(|e| entry_doc(id, e))).collect()
            };
            for doc in &docs {
                one.clear();
                if serde_json::to_writer(&mut one, doc).is_err() {
                    continue;
                }
                // Room for a separator and the closing bracket.
                if body.len() + one.len() + 2 > MAX_DOCUMENT_BYTES {
                    break 'batches;
                }
                if listed > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&one);
                listed += 1;
            }
        }
        body.push(b']');
        if listed < total {
            tracing::debug!(listed, total, bytes = body.len(), "package list document truncated at its size limit");
        }
        ListDocument { body, listed, total }
    }

    /// A report about `id` (the path's text) with `body`, from a connection whose peer is
    /// `peer`: checked, then learned. The entry as it is afterwards, or why the report was
    /// refused; counted either way.
    pub fn report(&self, id: &str, body: &[u8], peer: IpAddr) -> Result<EntryDoc, ReportError> {
        let result = self.check_and_learn(id, body, peer);
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

    fn check_and_learn(&self, id: &str, body: &[u8], peer: IpAddr) -> Result<EntryDoc, ReportError> {
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
        if !serves_peers(report.addr) {
            return Err(ReportError::Address { addr: report.addr });
        }
        if peer_v4(peer) != Some(*report.addr.ip()) {
            return Err(ReportError::NotPeer { addr: report.addr, peer });
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
        if origin_size.is_none() && g.list.get(&canonical).is_none() {
            // A new package the origin does not hold: it takes a place of the foreign budget.
            let Inner { list, foreign, .. } = &mut *g;
            if foreign.len() >= MAX_FOREIGN_PACKAGES {
                // Forget those the list dropped or the origin has come to hold.
                foreign.retain(|s| list.get(&PackageId::Sha256(*s)).is_some_and(|e| e.package.is_none()));
            }
            if foreign.len() >= MAX_FOREIGN_PACKAGES {
                return Err(ReportError::ForeignBudget { sha256: sha256_hex(&package.sha256) });
            }
            foreign.insert(package.sha256);
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

/// Whether peers can fetch from `addr`: not unspecified (nor `0.0.0.0/8`), loopback,
/// link-local, multicast or reserved (`240.0.0.0/4`, which holds the broadcast address), and
/// not port 0.
fn serves_peers(addr: SocketAddrV4) -> bool {
    let ip = addr.ip();
    let first = ip.octets()[0];
    !(first == 0 || first >= 240 || ip.is_loopback() || ip.is_link_local() || ip.is_multicast() || addr.port() == 0)
}

/// The IPv4 address of a connection's peer (also when it came as IPv4-mapped IPv6).
fn peer_v4(peer: IpAddr) -> Option<Ipv4Addr> {
    match peer {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
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

/// One answer: status, JSON body, the `Allow` header of a 405 and the `Retry-After` of a 503.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Vec<u8>,
    allow: Option<&'static str>,
    retry_after: Option<u32>,
}

impl Reply {
    fn json<T: Serialize>(status: u16, doc: &T) -> Reply {
        // Serializing these plain structs cannot fail; an empty object stands in if it ever did.
        Reply { status, body: serde_json::to_vec(doc).unwrap_or_else(|_| b"{}".to_vec()), allow: None, retry_after: None }
    }

    fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, &ErrorDoc { error: message })
    }
}

/// Answers one request under [`PACKAGES_PREFIX`] whose head (`head_len` bytes) is at the start
/// of `buf`, on a connection from `peer`, reading a report's body (bounded by
/// [`MAX_REPORT_BYTES`], within the head deadline) into `buf`. Returns whether the connection
/// may carry another request; the bytes of this one are gone from `buf` then.
pub async fn serve_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    head_len: usize,
    peer: IpAddr,
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
        (Method::Get | Method::Head, Route::List) => match packages.list_document().await {
            Ok(doc) => {
                total = Some(doc.total);
                Reply { status: 200, body: doc.body, allow: None, retry_after: None }
            }
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "package list request refused");
                Reply { retry_after: Some(LIST_RETRY_AFTER_SECS), ..Reply::error(e.status(), &e.to_string()) }
            }
        },
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
                    match packages.report(id, &buf[head_len..end], peer) {
                        Ok(doc) => Reply::json(200, &doc),
                        Err(e) => {
                            tracing::debug!(client = %peer, id, error = %e, "package report refused");
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
    baton_io::http::send_all(stream, &plan.head, cfg.send_timeout).await?;
    if keep_alive {
        buf.drain(..head_len + usize::try_from(body_len).unwrap_or(0));
    }
    Ok(keep_alive)
}

/// The head of `reply`: `Server`, `Content-Type`, `Content-Length`, `Cache-Control`, then the
/// list's entry count, `Allow`, `Retry-After` and `Connection` when they apply.
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
    if let Some(secs) = reply.retry_after {
        h.push_str(&format!("Retry-After: {secs}\r\n"));
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
    use super::*;

    const SHA: Sha256 = [7u8; 32];
    const ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 10), 8080);
    /// The connection's peer when the report is the reporter's own.
    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 10));

    fn body(sha256: &Sha256, size: u64, md5: Option<&str>) -> Vec<u8> {
        body_at(ADDR, sha256, size, md5)
    }

    fn body_at(addr: SocketAddrV4, sha256: &Sha256, size: u64, md5: Option<&str>) -> Vec<u8> {
        let mut doc = serde_json::json!({ "addr": addr.to_string(), "sha256": sha256_hex(sha256), "size": size });
        if let Some(m) = md5 {
            doc["md5"] = serde_json::Value::String(m.to_owned());
        }
        serde_json::to_vec(&doc).expect("json")
    }

    /// A distinct SHA-256 per `i`, with `tag` in its last byte (origin and foreign ones differ).
    fn digest(tag: u8, i: u32) -> Sha256 {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        d[31] = tag;
        d
    }

    fn metrics_text(p: &Packages) -> String {
        let mut e = Exposition::new();
        p.metrics(&mut e);
        e.finish()
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
            p.report(&id, &body(&SHA, 101, None), PEER),
            Err(ReportError::WrongSize { sha256: id.clone(), origin: 100, reported: 101 })
        );
        assert_eq!(p.report(&id, &body(&SHA, 101, None), PEER).map_err(|e| e.status()), Err(409));
        assert!(matches!(p.report(&id, &body(&[8u8; 32], 100, None), PEER), Err(ReportError::WrongPackage { .. })));
        assert!(matches!(p.report("xyz", &body(&SHA, 100, None), PEER), Err(ReportError::Id(_))));
        assert!(matches!(p.report(&id, b"{\"addr\":1}", PEER), Err(ReportError::Json { .. })));
        assert_eq!(p.report(&id, &body(&SHA, 100, Some("zz")), PEER), Err(ReportError::Digests));
        let doc = p.report(&id, &body(&SHA, 100, None), PEER).expect("learned");
        assert_eq!((doc.sha256.as_deref(), doc.size), (Some(id.as_str()), Some(100)));
        assert_eq!(doc.location.map(|l| (l.addr, l.generation)), Some((ADDR, 1)));
        let text = metrics_text(&p);
        assert!(text.contains("baton_package_list_reports_total{result=\"learned\"} 1\n"), "{text}");
        assert!(text.contains("baton_package_list_reports_total{result=\"refused\"} 6\n"), "{text}");
        assert!(text.contains("baton_package_list_entries 1\n"), "{text}");
    }

    #[test]
    fn an_md5_id_must_be_the_reports_md5_and_learns_under_the_sha256() {
        let p = Packages::new();
        let md5 = "00112233445566778899aabbccddeeff";
        assert!(matches!(p.report(md5, &body(&SHA, 5, None), PEER), Err(ReportError::WrongPackage { .. })));
        let doc = p.report(md5, &body(&SHA, 5, Some(md5)), PEER).expect("learned");
        assert_eq!(doc.id, sha256_hex(&SHA));
        assert_eq!(doc.sha256, None, "a report never describes the package");
        let sha_id = PackageId::Sha256(SHA);
        assert_eq!(p.lookup(&sha_id).and_then(|d| d.location).map(|l| l.addr), Some(ADDR));
        assert!(p.lookup(&PackageId::parse(md5).expect("md5")).is_none(), "a report names no md5 alias");
    }

    #[test]
    fn unusable_addresses_are_refused_even_from_that_address() {
        let p = Packages::new();
        p.describe_origin(SHA, 1);
        let id = sha256_hex(&SHA);
        for addr in [
            "0.0.0.0:80",
            "0.1.2.3:80",
            "127.0.0.1:8080",
            "127.5.5.5:8080",
            "169.254.10.1:8080",
            "224.0.0.251:8080",
            "239.255.255.250:8080",
            "240.0.0.1:8080",
            "255.255.255.255:8080",
            "198.18.2.10:0",
        ] {
            let addr: SocketAddrV4 = addr.parse().expect("addr");
            let from = IpAddr::V4(*addr.ip());
            let err = p.report(&id, &body_at(addr, &SHA, 1, None), from).expect_err("refused");
            assert_eq!(err, ReportError::Address { addr });
            assert_eq!(err.status(), 400);
            assert_eq!(
                err.to_string(),
                format!("{addr} cannot serve peers (unspecified, loopback, link-local, broadcast, multicast or reserved address, or port 0)")
            );
        }
        assert_eq!(p.lookup(&PackageId::Sha256(SHA)).and_then(|d| d.location), None, "nothing learned");
        assert!(metrics_text(&p).contains("baton_package_list_reports_total{result=\"refused\"} 10\n"));
    }

    #[test]
    fn a_report_names_only_the_address_it_came_from() {
        let p = Packages::new();
        p.describe_origin(SHA, 1);
        let id = sha256_hex(&SHA);
        let other = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 11));
        let err = p.report(&id, &body(&SHA, 1, None), other).expect_err("another host's address");
        assert_eq!(err, ReportError::NotPeer { addr: ADDR, peer: other });
        assert_eq!(err.status(), 403);
        assert_eq!(err.to_string(), "the report names 198.18.2.10:8080, but it came from 198.18.2.11: a host reports only its own address");
        let v6: IpAddr = "2001:db8::1".parse().expect("v6");
        assert_eq!(p.report(&id, &body(&SHA, 1, None), v6), Err(ReportError::NotPeer { addr: ADDR, peer: v6 }));
        assert_eq!(p.lookup(&PackageId::Sha256(SHA)).and_then(|d| d.location), None, "nothing learned");
        // The same address as IPv4-mapped IPv6 (a dual-stack listener) is the same host.
        let mapped: IpAddr = "::ffff:198.18.2.10".parse().expect("mapped");
        let doc = p.report(&id, &body(&SHA, 1, None), mapped).expect("learned");
        assert_eq!(doc.location.map(|l| l.addr), Some(ADDR));
        let text = metrics_text(&p);
        assert!(text.contains("baton_package_list_reports_total{result=\"refused\"} 2\n"), "{text}");
        assert!(text.contains("baton_package_list_reports_total{result=\"learned\"} 1\n"), "{text}");
    }

    #[test]
    fn foreign_reports_have_a_budget_and_never_evict_the_origins_entries() {
        let p = Packages::new();
        // The origin fills the list but for the foreign budget: without the budget, the first
        // foreign report beyond it would evict the oldest origin entry.
        let origin_objects = MAX_PACKAGES - MAX_FOREIGN_PACKAGES;
        for i in 0..origin_objects as u32 {
            p.describe_origin(digest(1, i), 10);
        }
        let flood = 2 * MAX_FOREIGN_PACKAGES as u32;
        let mut refused = 0;
        for i in 0..flood {
            let sha = digest(2, i);
            match p.report(&sha256_hex(&sha), &body(&sha, 10, None), PEER) {
                Ok(doc) => assert_eq!(doc.sha256, None, "a report describes nothing"),
                Err(e) => {
                    assert_eq!(e, ReportError::ForeignBudget { sha256: sha256_hex(&sha) });
                    assert_eq!(e.status(), 429);
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, flood as usize - MAX_FOREIGN_PACKAGES, "the first {MAX_FOREIGN_PACKAGES} are listed");
        assert_eq!(p.len(), MAX_PACKAGES);
        for i in [0, 1, origin_objects as u32 / 2, origin_objects as u32 - 1] {
            let doc = p.lookup(&PackageId::Sha256(digest(1, i))).expect("the origin's entry is still listed");
            assert_eq!(doc.size, Some(10));
        }
        assert!(p.lookup(&PackageId::Sha256(digest(2, 0))).is_some(), "a foreign package within the budget");
        assert!(p.lookup(&PackageId::Sha256(digest(2, flood - 1))).is_none(), "a refused one is not listed");
        // A listed foreign package still learns new locations, and origin objects always do.
        let second = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 11), 8080);
        let from = IpAddr::V4(*second.ip());
        assert!(p.report(&sha256_hex(&digest(2, 0)), &body_at(second, &digest(2, 0), 10, None), from).is_ok());
        assert!(p.report(&sha256_hex(&digest(1, 0)), &body(&digest(1, 0), 10, None), PEER).is_ok());
        // The origin coming to hold a foreign package frees its place in the budget.
        p.describe_origin(digest(2, 0), 10);
        let next = digest(2, flood - 1);
        assert!(p.report(&sha256_hex(&next), &body(&next, 10, None), PEER).is_ok(), "a place was freed");
        let text = metrics_text(&p);
        assert!(text.contains(&format!("baton_package_list_reports_total{{result=\"refused\"}} {refused}\n")), "{text}");
    }

    #[test]
    fn describing_twice_changes_nothing() {
        let p = Packages::new();
        p.describe_origin(SHA, 9);
        p.describe_origin(SHA, 9);
        assert_eq!(p.len(), 1);
        let doc = p.render_list();
        assert_eq!((doc.listed, doc.total), (1, 1));
        let parsed: Vec<EntryDoc> = serde_json::from_slice(&doc.body).expect("array");
        assert_eq!(parsed, vec![EntryDoc { id: sha256_hex(&SHA), sha256: Some(sha256_hex(&SHA)), size: Some(9), location: None, alternates: vec![] }]);
    }

    #[test]
    fn the_list_document_is_bounded_by_id_and_nearly_full() {
        let p = Packages::new();
        let n = 40_000u32;
        for i in 0..n {
            p.describe_origin(digest(1, i), u64::from(i));
        }
        let doc = p.render_list();
        assert_eq!(doc.total, n as usize);
        assert!(doc.body.len() <= MAX_DOCUMENT_BYTES && doc.listed < doc.total, "{} bytes, {} listed", doc.body.len(), doc.listed);
        let parsed: Vec<EntryDoc> = serde_json::from_slice(&doc.body).expect("array");
        assert_eq!(parsed.len(), doc.listed);
        // The lowest ids, in order; only the next entry did not fit.
        let want: Vec<String> = (0..doc.listed as u32).map(|i| sha256_hex(&digest(1, i))).collect();
        assert_eq!(parsed.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), want);
        let next_id = PackageId::Sha256(digest(1, doc.listed as u32));
        let next = p.lookup(&next_id).expect("listed, not in the document");
        let next = serde_json::to_vec(&next).expect("json");
        assert!(doc.body.len() + next.len() + 1 > MAX_DOCUMENT_BYTES, "{} bytes and the next is {}", doc.body.len(), next.len());
    }

    #[tokio::test]
    async fn one_list_rendering_at_a_time() {
        let p = Packages::new();
        p.describe_origin(SHA, 9);
        let running = p.renders.acquire().await.expect("permit");
        let started = tokio::time::Instant::now();
        assert_eq!(p.list_document().await, Err(ListError::Busy));
        assert!(started.elapsed() >= LIST_RENDER_WAIT, "it waited for the rendering ahead");
        assert_eq!(ListError::Busy.status(), 503);
        // A request that arrives while one renders gets the document once that one is done.
        let release = async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(running);
        };
        let (doc, ()) = tokio::join!(p.list_document(), release);
        let doc = doc.expect("rendered");
        assert_eq!((doc.listed, doc.total), (1, 1));
        assert_eq!(p.renders.available_permits(), MAX_LIST_RENDERS, "the permit is back");
    }
}

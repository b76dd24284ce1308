//! The participant's object cache: a directory filled on a miss, from the other participants
//! first when the peer cache is on (a [`Member`]), else (and when no peer has the object) from
//! the main's origin store.
//!
//! A filled object is written to a temporary file while it is hashed, and moved into place only
//! when its SHA-256 equals the digest the main published: the handoff's, when there is one, and
//! the origin's `Repr-Digest` for every origin byte. A cached object whose digest differs from a
//! handoff's is filled again. Bytes that fail verification are never served. Concurrent misses
//! for the same object share one fill. With the peer cache off, a miss is one GET at the origin,
//! exactly as before the peer cache existed.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddrV4;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use baton_io::peer::{Member, Obtained, Outcome, PeerError};
use baton_io::store::{DirStore, Object, ObjectSource, StoreError};
use baton_shared::digest::{sha256_hex, Sha256};
use baton_shared::handoff::ObjectPlan;
use baton_shared::http::ObjectPath;
use baton_shared::peer::{Package, PackageId};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use crate::origin::{Method, ObjectOrigin, OriginStore};

/// Read size while copying an origin body to disk.
const FILL_CHUNK_BYTES: usize = 256 * 1024;
/// Temporary files of unfinished fills start with this prefix (and are removed at start). The
/// peer cache member's temporary files use the same one.
pub const PARTIAL_PREFIX: &str = baton_io::peer::PARTIAL_PREFIX;
/// Most directory entries looked at when the cache directory is walked at start (to remove
/// unfinished fills, and to offer what it holds to peers). Far more than a cache holds; the
/// bound only stops a runaway walk of a wrongly configured directory.
pub const MAX_WALK_ENTRIES: usize = 1_000_000;
/// Deepest directory level walked below the cache root; object paths are a few levels deep.
pub const MAX_WALK_DEPTH: usize = 32;

/// What the main published about an object (a handoff's or a prepare's object plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub sha256: Sha256,
    pub size: u64,
}

impl From<&ObjectPlan> for Published {
    fn from(o: &ObjectPlan) -> Self {
        Published { sha256: o.sha256, size: o.size }
    }
}

/// The cache of one participant.
#[derive(Debug, Clone)]
pub struct CacheStore {
    dir: DirStore,
    origin: OriginStore,
    fills: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Bytes put into the cache by fills, wherever they came from.
    pub filled_bytes: Arc<AtomicU64>,
    peers: Option<Arc<Member>>,
}

impl CacheStore {
    /// Opens (creating) the cache directory and forgets unfinished fills of an earlier run, at
    /// any depth (the peer cache writes beside the object's final place).
    pub fn open(dir: &Path, origin: SocketAddrV4) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Root { root: dir.to_owned(), source })?;
        let store = DirStore::open(dir)?;
        walk(dir, |rel, partial| {
            if partial {
                let _ = std::fs::remove_file(dir.join(rel));
            }
        });
        Ok(Self {
            dir: store,
            origin: OriginStore { addr: origin },
            fills: Arc::default(),
            filled_bytes: Arc::default(),
            peers: None,
        })
    }

    /// Fills misses through the peer cache `member` from now on.
    pub fn with_peers(mut self, member: Arc<Member>) -> Self {
        self.peers = Some(member);
        self
    }

    /// The peer cache member, when the peer cache is on.
    pub fn peers(&self) -> Option<&Arc<Member>> {
        self.peers.as_ref()
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        self.dir.root()
    }

    /// Hashes every object already cached, one at a time, and offers each to the peers; the
    /// digests are kept, so the first request for one does not hash it again. Returns the
    /// number offered. Does nothing without the peer cache.
    pub async fn share_cached(&self) -> usize {
        let Some(member) = self.peers.clone() else { return 0 };
        let root = self.root().to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            walk(&root, |rel, partial| {
                if !partial {
                    found.push(rel.to_owned());
                }
            });
            found
        })
        .await
        .unwrap_or_default();
        let mut shared = 0;
        for rel in found {
            let Some(path) = rel.to_str().and_then(|s| ObjectPath::from_relative(s).ok()) else { continue };
            match self.share_one(&member, &path).await {
                Ok(true) => shared += 1,
                Ok(false) => {}
                Err(e) => tracing::debug!(path = path.as_str(), error = %e, "not offering a cached object to peers"),
            }
        }
        tracing::info!(objects = shared, "cached objects offered to peers");
        shared
    }

    /// Hashes one cached object and offers it; `Ok(false)` when it changed meanwhile.
    async fn share_one(&self, member: &Member, path: &ObjectPath) -> Result<bool, StoreError> {
        let io_err = |source| StoreError::Io { path: path.as_str().to_owned(), source };
        let Some((file, before)) = self.dir.open_file(path)? else { return Ok(false) };
        let abs = cache_path(self.root(), path);
        let hashed = abs.clone();
        let package = tokio::task::spawn_blocking(move || baton_io::peer::hash_package(&hashed))
            .await
            .map_err(|e| io_err(std::io::Error::other(e)))?
            .map_err(io_err)?;
        // The hash is of the file opened above only if the path still names it, unchanged.
        let now = std::fs::symlink_metadata(&abs).map_err(io_err)?;
        let after = file.metadata().map_err(io_err)?;
        let same = |m: &std::fs::Metadata| {
            (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec())
                == (before.dev(), before.ino(), before.len(), before.mtime(), before.mtime_nsec())
        };
        if !same(&now) || !same(&after) || package.size != before.len() {
            return Ok(false);
        }
        self.dir.remember_digest(path, &file, package.sha256)?;
        member.share(&abs, package);
        Ok(true)
    }

    /// Stops offering the version `sha256` of `path` to peers, if it is offered from this
    /// cache's file. A version that then is not replaced (the fill failed) stays un-offered
    /// until the next start offers what is cached.
    fn stop_offering(&self, path: &ObjectPath, sha256: Sha256) {
        if let Some(member) = &self.peers {
            if member.unshare_from(&PackageId::Sha256(sha256), &cache_path(self.root(), path)).is_some() {
                tracing::debug!(path = path.as_str(), old = %sha256_hex(&sha256), "the cached version is replaced; no longer offered to peers");
            }
        }
    }

    fn fill_lock(&self, path: &ObjectPath) -> Arc<tokio::sync::Mutex<()>> {
        let mut g = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(path.as_str().to_owned()).or_default().clone()
    }

    /// The cached object, filling it on a miss. With `expected`, a cached copy with another
    /// digest is replaced and the filled copy must match it.
    pub async fn get(&self, path: &ObjectPath, expected: Option<Published>) -> Result<Option<Object>, StoreError> {
        // Unfinished fills live in the cache directory too; they are never objects.
        if path.segments().any(|s| s.starts_with(PARTIAL_PREFIX)) {
            return Ok(None);
        }
        let wanted = |obj: &Object| expected.is_none_or(|e| e.sha256 == obj.meta.sha256);
        if let Some(obj) = self.dir.resolve(path).await? {
            if wanted(&obj) {
                return Ok(Some(obj));
            }
        }
        let lock = self.fill_lock(path);
        let _held = lock.lock().await;
        // Another task may have filled it while we waited.
        if let Some(obj) = self.dir.resolve(path).await? {
            if wanted(&obj) {
                return Ok(Some(obj));
            }
            // Another version is cached and about to be replaced: peers must not be served the
            // new bytes under the old digest (they would count this participant as lying).
            self.stop_offering(path, obj.meta.sha256);
        }
        let filled = match &self.peers {
            None => self.fill_origin(path, expected.map(|e| e.sha256)).await?,
            Some(member) => self.fill_peers(member, path, expected).await?,
        };
        if !filled {
            return Ok(None);
        }
        match self.dir.resolve(path).await? {
            Some(obj) if !wanted(&obj) => Err(StoreError::DigestMismatch {
                path: path.as_str().to_owned(),
                expected: expected.map(|e| sha256_hex(&e.sha256)).unwrap_or_default(),
                got: sha256_hex(&obj.meta.sha256),
            }),
            other => Ok(other),
        }
    }

    /// Fetches `path` from the origin store into the cache with one GET. `Ok(false)` when the
    /// origin has no such object.
    async fn fill_origin(&self, path: &ObjectPath, expected: Option<Sha256>) -> Result<bool, StoreError> {
        let fail = |reason: String| StoreError::Fill { path: path.as_str().to_owned(), reason };
        let mut reply = self.origin.request(Method::Get, path, 0).await.map_err(|e| fail(e.to_string()))?;
        match reply.head.status {
            200 => {}
            404 => return Ok(false),
            s => return Err(fail(format!("origin answered {s}"))),
        }
        let published = reply.published.ok_or_else(|| fail("origin published no sha-256 Repr-Digest".to_owned()))?;
        if let Some(exp) = expected {
            if exp != published {
                return Err(StoreError::DigestMismatch {
                    path: path.as_str().to_owned(),
                    expected: sha256_hex(&exp),
                    got: sha256_hex(&published),
                });
            }
        }
        let length = reply.body.remaining();

        let root = self.dir.root().to_owned();
        let tmp = root.join(format!("{PARTIAL_PREFIX}{}-{}", std::process::id(), unique()));
        let digest = match copy_body(&mut reply.body, &tmp).await {
            Ok(d) => d,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(fail(e.to_string()));
            }
        };
        if digest != published {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(StoreError::DigestMismatch {
                path: path.as_str().to_owned(),
                expected: sha256_hex(&published),
                got: sha256_hex(&digest),
            });
        }
        let dest = cache_path(&root, path);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| fail(format!("creating {}: {e}", parent.display())))?;
        }
        tokio::fs::rename(&tmp, &dest).await.map_err(|e| fail(format!("moving into place: {e}")))?;
        if let Ok(f) = std::fs::File::open(&dest) {
            let _ = self.dir.remember_digest(path, &f, digest);
        }
        self.filled_bytes.fetch_add(length, Ordering::Relaxed);
        if let Some(member) = &self.peers {
            member.share(&dest, Package { sha256: digest, size: length, md5: None });
        }
        tracing::info!(path = path.as_str(), bytes = length, "filled from the origin");
        Ok(true)
    }

    /// Fetches `path` through the peer cache: from a peer when one has it, else from the origin
    /// store by range requests. The object's digest and size come from the handoff, or else
    /// from a HEAD at the origin. `Ok(false)` when the origin has no such object.
    async fn fill_peers(&self, member: &Arc<Member>, path: &ObjectPath, expected: Option<Published>) -> Result<bool, StoreError> {
        let fail = |reason: String| StoreError::Fill { path: path.as_str().to_owned(), reason };
        let package = match expected {
            Some(p) => Package { sha256: p.sha256, size: p.size, md5: None },
            None => {
                let reply = self.origin.request(Method::Head, path, 0).await.map_err(|e| fail(e.to_string()))?;
                match reply.head.status {
                    200 => {}
                    404 => return Ok(false),
                    s => return Err(fail(format!("origin answered {s} to HEAD"))),
                }
                let sha256 = reply.published.ok_or_else(|| fail("origin published no sha-256 Repr-Digest".to_owned()))?;
                let size = reply.total.ok_or_else(|| fail("origin's HEAD has no valid Content-Length".to_owned()))?;
                Package { sha256, size, md5: None }
            }
        };
        let dest = cache_path(self.root(), path);
        let origin = ObjectOrigin { store: self.origin, path: path.clone(), sha256: package.sha256, size: package.size };
        let obtained = match member.obtain(package, &dest, &origin).await {
            Ok(o) => o,
            Err(PeerError::Origin { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(fail(e.to_string())),
        };
        if obtained.outcome == Outcome::Local {
            // Nothing was received: the member pointed at a file it offered before. Trust it
            // only after hashing it again; a file changed behind the cache's back is replaced
            // from the origin (which also makes the member's offer true again).
            let good = self.dir.resolve(path).await?.is_some_and(|o| o.meta.sha256 == package.sha256);
            if !good {
                tracing::warn!(path = path.as_str(), "the peer cache's copy no longer matches; filling from the origin");
                // Not offered again until the origin's bytes are in place.
                member.unshare(&package.id());
                return self.fill_origin(path, Some(package.sha256)).await;
            }
        } else if let Ok(f) = std::fs::File::open(&dest) {
            let _ = self.dir.remember_digest(path, &f, package.sha256);
        }
        self.filled_bytes.fetch_add(package.size, Ordering::Relaxed);
        log_obtained(path, &package, &obtained);
        Ok(true)
    }
}

fn log_obtained(path: &ObjectPath, package: &Package, o: &Obtained) {
    tracing::info!(
        path = path.as_str(),
        bytes = package.size,
        outcome = ?o.outcome,
        from_peers = o.from_peers,
        from_origin = o.from_origin,
        busy = o.busy,
        bad_peers = o.bad_peers.len(),
        "filled through the peer cache"
    );
}

/// Copies an origin body into a new file at `tmp`, hashing it; the SHA-256 of what arrived.
async fn copy_body(body: &mut baton_io::peer::transfer::Body, tmp: &Path) -> std::io::Result<Sha256> {
    let mut file = tokio::fs::File::create(tmp).await?;
    let mut hasher = sha2::Sha256::new();
    let mut chunk = vec![0u8; FILL_CHUNK_BYTES];
    loop {
        let n = body.read_some(&mut chunk).await?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n]).await?;
    }
    file.sync_data().await?;
    Ok(hasher.finalize().into())
}

impl ObjectSource for CacheStore {
    fn resolve(&self, path: &ObjectPath) -> impl Future<Output = Result<Option<Object>, StoreError>> + Send {
        self.get(path, None)
    }
}

fn cache_path(root: &Path, path: &ObjectPath) -> PathBuf {
    let mut p = root.to_path_buf();
    for seg in path.segments() {
        p.push(seg);
    }
    p
}

/// Calls `visit(relative path, is_unfinished_fill)` for every regular file below `root`
/// (symbolic links are not followed), within [`MAX_WALK_ENTRIES`] and [`MAX_WALK_DEPTH`].
fn walk(root: &Path, mut visit: impl FnMut(&Path, bool)) {
    let mut seen = 0usize;
    let mut stack = vec![(PathBuf::new(), 0usize)];
    while let Some((rel, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else { continue };
        for entry in rd.flatten() {
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                tracing::warn!(root = %root.display(), limit = MAX_WALK_ENTRIES, "cache directory walk stopped at its limit");
                return;
            }
            let Ok(kind) = entry.file_type() else { continue };
            let name = entry.file_name();
            let child = rel.join(&name);
            if kind.is_dir() && depth + 1 < MAX_WALK_DEPTH {
                stack.push((child, depth + 1));
            } else if kind.is_file() {
                visit(&child, name.to_string_lossy().starts_with(PARTIAL_PREFIX));
            }
        }
    }
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests;

/// Replacing a cached version withdraws its offer to peers (the shared tests live in
/// `cache/tests.rs`; this one needs only the cache and one member).
#[cfg(test)]
mod replace_tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use baton_io::http::{serve_listener, ServeConfig};
    use baton_io::peer::{Holding, Member, PeerConfig};
    use baton_io::store::DirStore;
    use baton_shared::http::object_path;
    use baton_shared::peer::PackageId;
    use sha2::Digest;

    use super::{cache_path, CacheStore, Published};

    #[tokio::test]
    async fn a_replaced_version_is_no_longer_offered_to_peers() {
        let base = std::env::temp_dir().join(format!("baton-cache-replace-{}", std::process::id()));
        let (o, c) = (base.join("origin"), base.join("cache"));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&o).expect("mkdir");
        std::fs::create_dir_all(&c).expect("mkdir");
        let (old, new) = (vec![0x11u8; 200_000], vec![0x22u8; 300_000]);
        std::fs::write(o.join("v.bin"), &new).expect("origin copy");
        std::fs::write(c.join("v.bin"), &old).expect("cached copy");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let std::net::SocketAddr::V4(origin) = listener.local_addr().expect("addr") else { panic!("v4") };
        let cfg = ServeConfig { server_name: "origin".to_owned(), head_timeout: Duration::from_secs(5), ..ServeConfig::default() };
        tokio::spawn(serve_listener(listener, DirStore::open(&o).expect("origin dir"), cfg, "origin"));
        let mut pc = PeerConfig::new(Ipv4Addr::LOCALHOST);
        pc.http_port = 0;
        pc.discovery_port = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr").port();
        pc.group = None;
        pc.query_wait = Duration::from_millis(50);
        let member = Member::start(pc).await.expect("member");
        let cache = CacheStore::open(&c, origin).expect("cache").with_peers(member.clone());
        assert_eq!(cache.share_cached().await, 1);
        let (old_id, new_id) = (PackageId::Sha256(sha2::Sha256::digest(&old).into()), PackageId::Sha256(sha2::Sha256::digest(&new).into()));
        assert!(member.holding(&old_id).is_some());

        // The main publishes the new version: the cached one is replaced.
        let path = object_path("/v.bin").expect("path");
        let published = Published { sha256: sha2::Sha256::digest(&new).into(), size: new.len() as u64 };
        let obj = cache.get(&path, Some(published)).await.expect("get").expect("found");
        assert_eq!(obj.meta.sha256, published.sha256);
        assert_eq!(std::fs::read(c.join("v.bin")).expect("cached"), new);
        assert!(member.holding(&old_id).is_none(), "the old version is still offered, from a file that holds the new one");
        let held = member.holding(&new_id);
        assert!(matches!(&held, Some(Holding::Complete { path: p, .. }) if *p == cache_path(&c, &path)), "{held:?}");
        let _ = std::fs::remove_dir_all(&base);
    }
}

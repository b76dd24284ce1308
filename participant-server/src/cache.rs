//! The participant's object cache: a directory filled from the main's origin store on a miss.
//!
//! A filled object is written to a temporary file while it is hashed, and moved into place only
//! when its SHA-256 equals the digest the origin published (and the digest the main put in the
//! handoff, when there is one). A cached object whose digest differs from a handoff's is filled
//! again. Bytes that fail verification are never served. Concurrent misses for the same object
//! share one fill.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_io::store::{DirStore, Object, ObjectSource, StoreError};
use baton_shared::digest::{parse_repr_digest, sha256_hex, Sha256};
use baton_shared::http::{parse_response_head, percent_encode_path, ObjectPath};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deadline for connecting to the origin and receiving its response head.
const ORIGIN_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause in an origin body before the fill is abandoned.
const ORIGIN_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Read size while copying an origin body to disk.
const FILL_CHUNK_BYTES: usize = 256 * 1024;
/// Temporary files of unfinished fills start with this prefix (and are removed at start).
pub const PARTIAL_PREFIX: &str = ".baton-partial-";

/// The cache of one participant.
#[derive(Debug, Clone)]
pub struct CacheStore {
    dir: DirStore,
    origin: SocketAddrV4,
    fills: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    pub filled_bytes: Arc<AtomicU64>,
}

impl CacheStore {
    /// Opens (creating) the cache directory and forgets unfinished fills of an earlier run.
    pub fn open(dir: &Path, origin: SocketAddrV4) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Root { root: dir.to_owned(), source })?;
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Self { dir: DirStore::open(dir)?, origin, fills: Arc::default(), filled_bytes: Arc::default() })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        self.dir.root()
    }

    fn fill_lock(&self, path: &ObjectPath) -> Arc<tokio::sync::Mutex<()>> {
        let mut g = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(path.as_str().to_owned()).or_default().clone()
    }

    /// The cached object, filling it from the origin on a miss. With `expected`, a cached copy
    /// with another digest is replaced and the origin's copy must match it.
    pub async fn get(&self, path: &ObjectPath, expected: Option<&Sha256>) -> Result<Option<Object>, StoreError> {
        if let Some(obj) = self.dir.resolve(path).await? {
            if expected.is_none_or(|d| *d == obj.meta.sha256) {
                return Ok(Some(obj));
            }
        }
        let lock = self.fill_lock(path);
        let _held = lock.lock().await;
        // Another task may have filled it while we waited.
        if let Some(obj) = self.dir.resolve(path).await? {
            if expected.is_none_or(|d| *d == obj.meta.sha256) {
                return Ok(Some(obj));
            }
        }
        if !self.fill(path, expected).await? {
            return Ok(None);
        }
        self.dir.resolve(path).await
    }

    /// Fetches `path` from the origin into the cache. `Ok(false)` when the origin has no such
    /// object.
    async fn fill(&self, path: &ObjectPath, expected: Option<&Sha256>) -> Result<bool, StoreError> {
        let fail = |reason: String| StoreError::Fill { path: path.as_str().to_owned(), reason };
        let mut stream = tokio::time::timeout(ORIGIN_HEAD_TIMEOUT, TcpStream::connect(self.origin))
            .await
            .map_err(|_| fail(format!("connecting to {} timed out", self.origin)))?
            .map_err(|e| fail(format!("connecting to {}: {e}", self.origin)))?;
        let req = format!(
            "GET /{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: baton-participant\r\nConnection: close\r\n\r\n",
            percent_encode_path(path.as_str()),
            self.origin
        );
        stream.write_all(req.as_bytes()).await.map_err(|e| fail(e.to_string()))?;
        let mut buf = Vec::with_capacity(FILL_CHUNK_BYTES);
        let (head, head_len) = tokio::time::timeout(ORIGIN_HEAD_TIMEOUT, async {
            loop {
                match parse_response_head(&buf) {
                    Ok(Some(h)) => return Ok(h),
                    Ok(None) => {}
                    Err(e) => return Err(fail(format!("bad response head: {e}"))),
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.map_err(|e| fail(e.to_string()))?;
                if n == 0 {
                    return Err(fail("origin closed before its response head".to_owned()));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .map_err(|_| fail("origin response head timed out".to_owned()))??;
        match head.status {
            200 => {}
            404 => return Ok(false),
            s => return Err(fail(format!("origin answered {s}"))),
        }
        let published = head
            .header("repr-digest")
            .and_then(parse_repr_digest)
            .ok_or_else(|| fail("origin published no sha-256 Repr-Digest".to_owned()))?;
        if let Some(exp) = expected {
            if *exp != published {
                return Err(StoreError::DigestMismatch {
                    path: path.as_str().to_owned(),
                    expected: sha256_hex(exp),
                    got: sha256_hex(&published),
                });
            }
        }
        let length: u64 = head
            .header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| fail("origin response has no valid Content-Length".to_owned()))?;

        let root = self.dir.root().to_owned();
        let tmp = root.join(format!("{PARTIAL_PREFIX}{}-{}", std::process::id(), unique()));
        let result = self.copy_body(&mut stream, &buf[head_len..], length, &tmp).await;
        let digest = match result {
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
        tracing::info!(path = path.as_str(), bytes = length, "filled from the origin");
        Ok(true)
    }

    async fn copy_body(&self, stream: &mut TcpStream, already: &[u8], length: u64, tmp: &Path) -> std::io::Result<Sha256> {
        let mut file = tokio::fs::File::create(tmp).await?;
        let mut hasher = sha2::Sha256::new();
        let first = &already[..already.len().min(usize::try_from(length).unwrap_or(usize::MAX))];
        hasher.update(first);
        file.write_all(first).await?;
        let mut got = first.len() as u64;
        let mut chunk = vec![0u8; FILL_CHUNK_BYTES];
        while got < length {
            let want = usize::try_from(length - got).unwrap_or(usize::MAX).min(chunk.len());
            let n = tokio::time::timeout(ORIGIN_STALL_TIMEOUT, stream.read(&mut chunk[..want]))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "origin stalled"))??;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("origin sent {got} of {length} bytes")));
            }
            hasher.update(&chunk[..n]);
            file.write_all(&chunk[..n]).await?;
            got += n as u64;
        }
        file.sync_data().await?;
        Ok(hasher.finalize().into())
    }
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

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

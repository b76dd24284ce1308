//! Objects on disk below a content root, with their SHA-256 digests.
//!
//! Files are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to the root,
//! so no path — not `..`, not a symlink pointing elsewhere — can make this module read anything
//! outside the root. Only regular files are objects. Digests are computed once per file version
//! (device, inode, size, mtime) and cached; this module never trusts a digest it did not compute.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use baton_shared::digest::Sha256;
use baton_shared::http::{ObjectMeta, ObjectPath};
use sha2::Digest;

/// Read size while hashing a file: large enough to keep the hash loop busy, small enough to be
/// irrelevant next to the page cache.
const HASH_CHUNK_BYTES: usize = 1 << 20;

/// `RESOLVE_*` flags of openat2(2) (include/uapi/linux/openat2.h).
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_BENEATH: u64 = 0x08;

/// `struct open_how` of openat2(2).
#[repr(C)]
#[derive(Debug, Default)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// An object ready to be served: an open file and what describes it.
#[derive(Debug)]
pub struct Object {
    pub file: File,
    pub meta: ObjectMeta,
}

/// Why an object could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening content root {root}: {source}")]
    Root {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("filling {path} from the origin: {reason}")]
    Fill { path: String, reason: String },
    #[error("{path}: received bytes have digest {got}, the origin published {expected}")]
    DigestMismatch { path: String, expected: String, got: String },
}

/// Something that turns a request path into an object.
pub trait ObjectSource: Send + Sync {
    /// `Ok(None)` means there is no such object (404).
    fn resolve(&self, path: &ObjectPath) -> impl Future<Output = Result<Option<Object>, StoreError>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

/// A directory of objects.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: Arc<OwnedFd>,
    root_path: PathBuf,
    digests: Arc<Mutex<HashMap<String, (FileVersion, Sha256)>>>,
}

impl DirStore {
    /// Opens the content root.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let dir = File::open(root).map_err(|source| StoreError::Root { root: root.to_owned(), source })?;
        let meta = dir.metadata().map_err(|source| StoreError::Root { root: root.to_owned(), source })?;
        if !meta.is_dir() {
            return Err(StoreError::Root {
                root: root.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(Self { root: Arc::new(OwnedFd::from(dir)), root_path: root.to_owned(), digests: Arc::default() })
    }

    /// The directory this store serves.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// Opens `path` below the root, with its metadata; `Ok(None)` when it does not exist or is
    /// not a regular file.
    pub fn open_file(&self, path: &ObjectPath) -> Result<Option<(File, std::fs::Metadata)>, StoreError> {
        let io_err = |source| StoreError::Io { path: path.as_str().to_owned(), source };
        let c_path = CString::new(path.as_str()).map_err(|_| io_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let how = OpenHow {
            flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64,
            mode: 0,
            resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: valid dirfd, NUL-terminated path and an open_how of the size we pass.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                // Missing, a path component that is not a directory, or an attempt to leave the
                // root: all are "no such object" to a client.
                Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::EXDEV) | Some(libc::ELOOP) => Ok(None),
                _ => Err(io_err(err)),
            };
        }
        // SAFETY: rc is a fresh descriptor returned by openat2.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(rc as i32) });
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some((file, meta)))
    }

    /// Opens and describes `path`, hashing it if this version has not been hashed yet.
    pub async fn resolve(&self, path: &ObjectPath) -> Result<Option<Object>, StoreError> {
        let Some((file, md)) = self.open_file(path)? else {
            return Ok(None);
        };
        let io_err = |source| StoreError::Io { path: path.as_str().to_owned(), source };
        let version = FileVersion {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        };
        let cached = self.lock_digests().get(path.as_str()).filter(|(v, _)| *v == version).map(|(_, d)| *d);
        let sha256 = match cached {
            Some(d) => d,
            None => {
                let clone = file.try_clone().map_err(io_err)?;
                let d = tokio::task::spawn_blocking(move || hash_file(clone))
                    .await
                    .map_err(|e| io_err(io::Error::other(e)))?
                    .map_err(io_err)?;
                self.lock_digests().insert(path.as_str().to_owned(), (version, d));
                d
            }
        };
        let last_modified_unix = u64::try_from(md.mtime()).ok();
        Ok(Some(Object { file, meta: ObjectMeta { size: version.size, sha256, last_modified_unix } }))
    }

    /// Records a digest the caller has just verified for the file now at `path` (used after a
    /// cache fill, so the bytes are not hashed twice).
    pub fn remember_digest(&self, path: &ObjectPath, file: &File, sha256: Sha256) -> Result<(), StoreError> {
        let md = file.metadata().map_err(|source| StoreError::Io { path: path.as_str().to_owned(), source })?;
        let version = FileVersion {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        };
        self.lock_digests().insert(path.as_str().to_owned(), (version, sha256));
        Ok(())
    }

    fn lock_digests(&self) -> std::sync::MutexGuard<'_, HashMap<String, (FileVersion, Sha256)>> {
        // A poisoned cache only means a hashing thread panicked; its entries are still valid.
        self.digests.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ObjectSource for DirStore {
    fn resolve(&self, path: &ObjectPath) -> impl Future<Output = Result<Option<Object>, StoreError>> + Send {
        DirStore::resolve(self, path)
    }
}

/// A source that answers one path with an object opened (and verified) beforehand, once, and
/// everything else from `inner`. A participant opens the handed-off object before it restores
/// the connection; the first response uses that object instead of opening it again.
#[derive(Debug)]
pub struct Primed<'a, S> {
    inner: &'a S,
    first: Mutex<Option<(ObjectPath, Object)>>,
}

impl<'a, S: ObjectSource> Primed<'a, S> {
    pub fn new(inner: &'a S, path: ObjectPath, object: Object) -> Self {
        Self { inner, first: Mutex::new(Some((path, object))) }
    }

    fn take(&self, path: &ObjectPath) -> Option<Object> {
        let mut g = self.first.lock().unwrap_or_else(|p| p.into_inner());
        match g.take() {
            Some((p, obj)) if p == *path => Some(obj),
            // Another path first: the primed object is of no further use.
            _ => None,
        }
    }
}

impl<S: ObjectSource> ObjectSource for Primed<'_, S> {
    fn resolve(&self, path: &ObjectPath) -> impl Future<Output = Result<Option<Object>, StoreError>> + Send {
        let primed = self.take(path);
        async move {
            match primed {
                Some(obj) => Ok(Some(obj)),
                None => self.inner.resolve(path).await,
            }
        }
    }
}

/// SHA-256 of a whole file from its start.
pub fn hash_file(mut file: File) -> io::Result<Sha256> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_shared::http::object_path;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("baton-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[tokio::test]
    async fn resolves_files_and_hashes_them() {
        let dir = tempdir("ok");
        std::fs::create_dir_all(dir.join("a")).expect("mkdir");
        std::fs::write(dir.join("a/b.bin"), b"abc").expect("write");
        let store = DirStore::open(&dir).expect("open");
        let obj = store.resolve(&object_path("/a/b.bin").expect("path")).await.expect("resolve").expect("found");
        assert_eq!(obj.meta.size, 3);
        assert_eq!(
            hex::encode(obj.meta.sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(store.resolve(&object_path("/a").expect("path")).await.expect("dir").is_none(), "directories are not objects");
        assert!(store.resolve(&object_path("/nope").expect("path")).await.expect("missing").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn primed_object_answers_its_path_once() {
        let dir = tempdir("primed");
        std::fs::write(dir.join("a"), b"from disk").expect("write");
        std::fs::write(dir.join("b"), b"bb").expect("write");
        let store = DirStore::open(&dir).expect("open");
        let a = object_path("/a").expect("path");
        let b = object_path("/b").expect("path");
        let mut primed_obj = store.resolve(&b).await.expect("resolve").expect("found");
        primed_obj.meta.size = 12345; // marks the primed copy
        let primed = Primed::new(&store, a.clone(), primed_obj);
        assert_eq!(primed.resolve(&a).await.expect("a").expect("found").meta.size, 12345, "first time: the primed object");
        assert_eq!(primed.resolve(&a).await.expect("a").expect("found").meta.size, 9, "then: from the store");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn symlinks_cannot_leave_the_root() {
        let dir = tempdir("root");
        let outside = tempdir("outside");
        std::fs::write(outside.join("secret"), b"secret").expect("write");
        std::os::unix::fs::symlink(outside.join("secret"), dir.join("abs")).expect("symlink");
        std::os::unix::fs::symlink("../baton-store-outside-x/secret", dir.join("rel")).expect("symlink");
        std::os::unix::fs::symlink(&outside, dir.join("dirlink")).expect("symlink");
        let store = DirStore::open(&dir).expect("open");
        for p in ["/abs", "/rel", "/dirlink/secret"] {
            assert!(store.resolve(&object_path(p).expect("path")).await.expect("no error").is_none(), "{p} escaped the root");
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&outside);
    }
}

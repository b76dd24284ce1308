//! The cache against a real origin store (a `DirStore` behind `serve_listener` on loopback)
//! and real peer cache members on loopback ports.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_io::http::{serve_listener, ServeConfig};
use baton_io::peer::{Holding, Member, PeerConfig};
use baton_io::store::{DirStore, Object, ObjectSource, StoreError};
use baton_shared::http::{object_path, ObjectPath};
use baton_shared::peer::PackageId;
use sha2::Digest;

use super::{CacheStore, Published, PARTIAL_PREFIX};

fn tempdir(tag: &str) -> PathBufGuard {
    let dir = std::env::temp_dir().join(format!("baton-cache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    PathBufGuard(dir)
}

/// A directory removed when the test ends.
struct PathBufGuard(std::path::PathBuf);

impl Drop for PathBufGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The origin's store, counting the requests it answers.
#[derive(Clone)]
struct Counted {
    dir: DirStore,
    requests: Arc<AtomicU64>,
}

impl ObjectSource for Counted {
    fn resolve(&self, path: &ObjectPath) -> impl std::future::Future<Output = Result<Option<Object>, StoreError>> + Send {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.dir.resolve(path)
    }
}

/// An origin store on a loopback port serving `dir`; its request counter.
async fn origin(dir: &std::path::Path) -> (SocketAddrV4, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let std::net::SocketAddr::V4(addr) = listener.local_addr().expect("addr") else { panic!("v4") };
    let requests = Arc::new(AtomicU64::new(0));
    let source = Counted { dir: DirStore::open(dir).expect("origin dir"), requests: requests.clone() };
    let cfg = ServeConfig { server_name: "origin".to_owned(), head_timeout: Duration::from_secs(5), ..ServeConfig::default() };
    tokio::spawn(serve_listener(listener, source, cfg, "origin"));
    (addr, requests)
}

fn data(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(bytes).into()
}

fn path(p: &str) -> ObjectPath {
    object_path(p).expect("path")
}

/// A free UDP port on loopback (for a member's discovery socket, whose port must be known).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr").port()
}

/// A member on loopback without multicast, polling `hosts`.
async fn member(discovery_port: u16, hosts: Vec<SocketAddrV4>) -> Arc<Member> {
    let mut cfg = PeerConfig::new(Ipv4Addr::LOCALHOST);
    cfg.http_port = 0;
    cfg.discovery_port = discovery_port;
    cfg.group = None;
    cfg.hosts = hosts;
    cfg.query_wait = Duration::from_millis(50);
    Member::start(cfg).await.expect("member")
}

#[tokio::test]
async fn without_peers_a_miss_is_one_get_at_the_origin() {
    let (o, c) = (tempdir("o1"), tempdir("c1"));
    let body = data(300_000, 1);
    std::fs::create_dir_all(o.0.join("d")).expect("mkdir");
    std::fs::write(o.0.join("d/x.bin"), &body).expect("write");
    let (addr, requests) = origin(&o.0).await;
    let cache = CacheStore::open(&c.0, addr).expect("cache");
    let published = Published { sha256: sha(&body), size: body.len() as u64 };

    // Two concurrent misses share one fill.
    let x = path("/d/x.bin");
    let (a, b) = tokio::join!(cache.get(&x, Some(published)), cache.get(&x, None));
    for got in [a, b] {
        let obj = got.expect("get").expect("found");
        assert_eq!((obj.meta.size, obj.meta.sha256), (body.len() as u64, sha(&body)));
    }
    assert_eq!(requests.load(Ordering::Relaxed), 1, "one GET");
    assert_eq!(cache.filled_bytes.load(Ordering::Relaxed), body.len() as u64);
    assert_eq!(std::fs::read(c.0.join("d/x.bin")).expect("cached"), body);
    // A hit asks nobody.
    cache.get(&path("/d/x.bin"), Some(published)).await.expect("hit").expect("found");
    assert_eq!(requests.load(Ordering::Relaxed), 1);

    // The handoff's digest must match the origin's.
    std::fs::write(o.0.join("y.bin"), b"other").expect("write");
    let e = cache.get(&path("/y.bin"), Some(published)).await.expect_err("mismatch");
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    assert!(!c.0.join("y.bin").exists(), "nothing unverified is kept");
    assert!(cache.get(&path("/nope.bin"), None).await.expect("404").is_none());
}

#[tokio::test]
async fn the_second_participant_fills_from_the_first_not_the_origin() {
    let (o, ca, cb) = (tempdir("o2"), tempdir("ca2"), tempdir("cb2"));
    let body = data(3 << 20, 2);
    std::fs::write(o.0.join("big.bin"), &body).expect("write");
    let (addr, requests) = origin(&o.0).await;
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let ma = member(pa, vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, pb)]).await;
    let mb = member(pb, vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, pa)]).await;
    let a = CacheStore::open(&ca.0, addr).expect("cache a").with_peers(ma.clone());
    let b = CacheStore::open(&cb.0, addr).expect("cache b").with_peers(mb.clone());
    let published = Published { sha256: sha(&body), size: body.len() as u64 };

    let obj = a.get(&path("/big.bin"), Some(published)).await.expect("a fills").expect("found");
    assert_eq!(obj.meta.sha256, sha(&body));
    assert_eq!(ma.counters.from_origin.load(Ordering::Relaxed), body.len() as u64);
    assert_eq!(ma.counters.from_peers.load(Ordering::Relaxed), 0);
    let origin_requests = requests.load(Ordering::Relaxed);
    assert!(origin_requests >= 1);

    let obj = b.get(&path("/big.bin"), Some(published)).await.expect("b fills").expect("found");
    assert_eq!(obj.meta.sha256, sha(&body));
    assert_eq!(std::fs::read(cb.0.join("big.bin")).expect("cached"), body);
    assert_eq!(mb.counters.from_peers.load(Ordering::Relaxed), body.len() as u64);
    assert_eq!(mb.counters.from_origin.load(Ordering::Relaxed), 0);
    assert_eq!(ma.counters.served_bytes.load(Ordering::Relaxed), body.len() as u64);
    assert_eq!(requests.load(Ordering::Relaxed), origin_requests, "b never asked the origin");
    assert_eq!(b.filled_bytes.load(Ordering::Relaxed), body.len() as u64);
    // b offers what it filled.
    assert!(matches!(mb.holding(&PackageId::Sha256(sha(&body))), Some(Holding::Complete { .. })));
    // No temporary file is left beside the object.
    let leftovers: Vec<_> = std::fs::read_dir(&cb.0)
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn without_a_handoff_digest_a_head_learns_it() {
    let (o, c) = (tempdir("o3"), tempdir("c3"));
    let body = data(100_000, 3);
    std::fs::create_dir_all(o.0.join("m")).expect("mkdir");
    std::fs::write(o.0.join("m/z.bin"), &body).expect("write");
    let (addr, requests) = origin(&o.0).await;
    let m = member(free_udp_port(), Vec::new()).await;
    let cache = CacheStore::open(&c.0, addr).expect("cache").with_peers(m.clone());
    let obj = cache.get(&path("/m/z.bin"), None).await.expect("fill").expect("found");
    assert_eq!((obj.meta.size, obj.meta.sha256), (body.len() as u64, sha(&body)));
    assert_eq!(requests.load(Ordering::Relaxed), 2, "a HEAD, then one GET");
    assert_eq!(m.counters.from_origin.load(Ordering::Relaxed), body.len() as u64);
    assert!(cache.get(&path("/m/none.bin"), None).await.expect("404").is_none());

    // A handoff's digest the origin does not publish: nothing is kept.
    let wrong = Published { sha256: [7; 32], size: body.len() as u64 };
    std::fs::write(o.0.join("w.bin"), &body).expect("write");
    let e = cache.get(&path("/w.bin"), Some(wrong)).await.expect_err("no such version");
    assert!(matches!(e, StoreError::Fill { .. }), "{e}");
    assert!(!c.0.join("w.bin").exists());
}

#[tokio::test]
async fn start_removes_unfinished_fills_at_any_depth_and_offers_what_is_cached() {
    let c = tempdir("c4");
    std::fs::create_dir_all(c.0.join("a/b")).expect("mkdir");
    let body = data(70_000, 4);
    std::fs::write(c.0.join("a/b/o.bin"), &body).expect("write");
    std::fs::write(c.0.join("top.bin"), b"top").expect("write");
    let partials = [c.0.join(format!("{PARTIAL_PREFIX}1-0")), c.0.join(format!("a/b/{PARTIAL_PREFIX}peer-1-0"))];
    for p in &partials {
        std::fs::write(p, b"half").expect("write");
    }
    let unused = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
    let m = member(free_udp_port(), Vec::new()).await;
    let cache = CacheStore::open(&c.0, unused).expect("cache").with_peers(m.clone());
    for p in &partials {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    assert_eq!(cache.share_cached().await, 2);
    match m.holding(&PackageId::Sha256(sha(&body))) {
        Some(Holding::Complete { path, package }) => {
            assert_eq!(path, c.0.join("a/b/o.bin"));
            assert_eq!(package.size, body.len() as u64);
            assert!(package.md5.is_some(), "offered with its MD5 too");
        }
        other => panic!("not offered: {other:?}"),
    }
    assert!(m.holding(&PackageId::Sha256(sha(b"top"))).is_some());
    // Unfinished fills are never objects, even while they exist.
    std::fs::write(c.0.join(format!("{PARTIAL_PREFIX}x")), b"half").expect("write");
    assert!(cache.get(&path(&format!("/{PARTIAL_PREFIX}x")), None).await.expect("get").is_none());
}

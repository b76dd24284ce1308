//! Members on loopback: sharing reports to a stand-in for the main's package list without
//! making the caller wait for it, and unsharing stops every way of being found and served.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_shared::digest::sha256_hex;
use baton_shared::peer::PackageId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::api::{Report, CALL_TIMEOUT, PACKAGES_PREFIX};
use super::transfer::{self, Got};
use super::{hash_package, serve, Holding, Member, PeerConfig};

/// A file removed when the test ends.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("baton-peer-{tag}-{}", std::process::id()));
        std::fs::write(&path, bytes).expect("write");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr").port()
}

async fn member(list: Option<SocketAddr>) -> Arc<Member> {
    let mut cfg = PeerConfig::new(Ipv4Addr::LOCALHOST);
    cfg.http_port = 0;
    cfg.discovery_port = free_udp_port();
    cfg.group = None;
    cfg.query_wait = Duration::from_millis(50);
    cfg.list = list;
    Member::start(cfg).await.expect("member")
}

/// A stand-in for the main's list: sends each request it receives (head and body) to the
/// channel, and answers `204` — or never answers when `silent`.
async fn fake_list(silent: bool) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then the Content-Length body.
                loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            let _ = tx.send(text);
                            break;
                        }
                    }
                }
                if silent {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                } else {
                    let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").await;
                }
            });
        }
    });
    (addr, rx)
}

fn body(tag: u8) -> Vec<u8> {
    (0..300_000u32).map(|i| (i as u8).wrapping_mul(7) ^ tag).collect()
}

#[tokio::test]
async fn sharing_a_file_reports_it_to_the_main_list() {
    let (list, mut requests) = fake_list(false).await;
    let m = member(Some(list)).await;
    let file = TempFile::new("report", &body(1));
    let package = m.share_file(&file.0).await.expect("share");
    assert!(m.reports_settled(CALL_TIMEOUT).await, "the report never finished");
    let req = requests.recv().await.expect("a request");
    let sha = sha256_hex(&package.sha256);
    assert!(req.starts_with(&format!("POST {PACKAGES_PREFIX}/{sha} HTTP/1.1\r\n")), "{req}");
    let doc: Report = serde_json::from_str(&req[req.find("\r\n\r\n").expect("head end") + 4..]).expect("report json");
    assert_eq!(
        doc,
        Report {
            addr: m.http_addr(),
            sha256: sha,
            size: 300_000,
            md5: package.md5.map(|d| PackageId::Md5(d).to_string()),
        }
    );
    assert_eq!(m.counters.reports_sent.load(Ordering::Relaxed), 1);
    assert_eq!(m.counters.reports_failed.load(Ordering::Relaxed), 0);
    assert!(requests.try_recv().is_err(), "one share, one report");

    // Without a list nothing is reported.
    let quiet = member(None).await;
    quiet.share_file(&file.0).await.expect("share");
    assert!(quiet.reports_settled(Duration::ZERO).await);
    assert_eq!(quiet.counters.reports_sent.load(Ordering::Relaxed) + quiet.counters.reports_failed.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_main_that_never_answers_does_not_hold_up_sharing() {
    let (list, mut requests) = fake_list(true).await;
    let m = member(Some(list)).await;
    let file = TempFile::new("silent", &body(2));
    let package = hash_package(&file.0).expect("hash");
    let started = Instant::now();
    m.share(&file.0, package);
    assert!(started.elapsed() < Duration::from_millis(100), "share waited {:?}", started.elapsed());
    requests.recv().await.expect("the report was sent");
    assert!(!m.reports_settled(Duration::from_millis(100)).await, "the report cannot have finished");
    // The call's own deadline ends it; it counts as failed.
    assert!(m.reports_settled(CALL_TIMEOUT + Duration::from_secs(2)).await, "the report outlived its deadline");
    assert_eq!(m.counters.reports_failed.load(Ordering::Relaxed), 1);
    assert_eq!(m.counters.reports_sent.load(Ordering::Relaxed), 0);
}

async fn status(m: &Member, id: &PackageId) -> u16 {
    let addr = SocketAddr::V4(m.http_addr());
    match transfer::get(addr, &addr.to_string(), &format!("{}{id}", serve::PATH_PREFIX), 0).await.expect("get") {
        Got::Body { head, .. } => head.status,
        Got::Status { status, .. } => status,
    }
}

#[tokio::test]
async fn unsharing_stops_serving_by_both_names() {
    let m = member(None).await;
    let file = TempFile::new("unshare", &body(3));
    let package = m.share_file(&file.0).await.expect("share");
    let (sha, md5) = (package.id(), PackageId::Md5(package.md5.expect("md5")));
    assert_eq!((status(&m, &sha).await, status(&m, &md5).await), (200, 200));
    // Its own address in its own list (as a list it was told about would give).
    m.state().list.learn(&sha, m.http_addr(), 0.0);

    // Offered from another file: unshare_from leaves it.
    assert!(m.unshare_from(&sha, &file.0.with_extension("other")).is_none());
    assert!(matches!(m.holding(&sha), Some(Holding::Complete { .. })));

    let gone = m.unshare_from(&md5, &file.0).expect("was offered");
    assert_eq!(*gone.package(), package);
    assert!(m.holding(&sha).is_none());
    assert!(m.holding(&md5).is_none());
    assert_eq!((status(&m, &sha).await, status(&m, &md5).await), (404, 404));
    assert!(m.state().list.candidates(&sha, |_| false).is_empty(), "still listed as its own location");
    assert!(m.state().md5.is_empty());
    assert!(m.unshare(&sha).is_none(), "nothing left to unshare");

    // Shared again, it is served again.
    m.share(&file.0, package);
    assert_eq!(status(&m, &sha).await, 200);
    assert!(m.unshare(&sha).is_some());
    assert_eq!(status(&m, &sha).await, 404);
}

#[tokio::test]
async fn an_unshared_package_gets_no_discovery_answer() {
    let holder = member(None).await;
    let file = TempFile::new("unshare-disc", &body(4));
    let package = holder.share_file(&file.0).await.expect("share");
    let mut cfg = PeerConfig::new(Ipv4Addr::LOCALHOST);
    cfg.http_port = 0;
    cfg.discovery_port = free_udp_port();
    cfg.group = None;
    cfg.query_wait = Duration::from_millis(100);
    cfg.hosts = vec![holder.me];
    let asker = Member::start(cfg).await.expect("asker");
    let offered = asker.ask(package.id(), 1).await.offers;
    assert_eq!(offered.iter().map(|o| o.addr).collect::<Vec<SocketAddrV4>>(), vec![holder.http_addr()]);
    holder.unshare(&package.id()).expect("offered");
    assert!(asker.ask(package.id(), 1).await.offers.is_empty());
}

/// An origin serving `bytes` from memory; with `stall_at`, it sends bytes up to there and
/// then nothing, ever.
struct MemOrigin {
    bytes: Vec<u8>,
    stall_at: Option<usize>,
}

impl MemOrigin {
    fn new(bytes: Vec<u8>) -> Self {
        Self { bytes, stall_at: None }
    }
}

struct MemBody {
    bytes: Vec<u8>,
    at: usize,
    end: usize,
}

impl transfer::BodyStream for MemBody {
    fn read<'a>(&'a mut self, out: &'a mut [u8]) -> transfer::BoxFuture<'a, std::io::Result<usize>> {
        Box::pin(async move {
            if self.at >= self.end && self.end < self.bytes.len() {
                std::future::pending::<()>().await;
            }
            let n = out.len().min(self.end - self.at);
            out[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        })
    }
}

impl transfer::Origin for MemOrigin {
    fn open(&self, offset: u64) -> transfer::BoxFuture<'_, std::io::Result<Box<dyn transfer::BodyStream>>> {
        let end = self.stall_at.unwrap_or(self.bytes.len()).min(self.bytes.len());
        let at = usize::try_from(offset).unwrap_or(usize::MAX).min(end);
        Box::pin(async move { Ok(Box::new(MemBody { bytes: self.bytes.clone(), at, end }) as Box<dyn transfer::BodyStream>) })
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

#[tokio::test]
async fn concurrent_obtains_share_one_lock_that_goes_when_they_are_done() {
    let m = member(None).await;
    let bytes = body(5);
    let src = TempFile::new("obtain-src", &bytes);
    let package = hash_package(&src.0).expect("hash");
    let (a, b) = (TempFile(src.0.with_extension("a")), TempFile(src.0.with_extension("b")));
    let origin = MemOrigin::new(bytes.clone());
    let (ra, rb) = tokio::join!(m.obtain(package, &a.0, &origin), m.obtain(package, &b.0, &origin));
    let mut outcomes = [ra.expect("a").outcome, rb.expect("b").outcome];
    outcomes.sort_by_key(|o| *o == super::Outcome::Local);
    assert_eq!(outcomes, [super::Outcome::Origin, super::Outcome::Local], "one fetched, the other waited for it");
    assert_eq!(std::fs::read(&a.0).expect("a"), bytes);
    assert_eq!(std::fs::read(&b.0).expect("b"), bytes);
    assert_eq!(m.counters.from_origin.load(Ordering::Relaxed), bytes.len() as u64);
    assert!(m.state().obtaining.is_empty(), "the per-package lock outlived its callers");
}

/// A cancelled obtain (baton-fetch interrupted, a caller's deadline) leaves no partial file
/// and stops offering the download it had made servable.
#[tokio::test]
async fn a_cancelled_obtain_leaves_no_file_and_no_offer() {
    let m = member(None).await;
    let bytes = body(9);
    let src = TempFile::new("cancel-src", &bytes);
    let package = hash_package(&src.0).expect("hash");
    let dir = std::env::temp_dir().join(format!("baton-peer-cancel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let dest = dir.join("out.bin");
    let origin = MemOrigin { bytes: bytes.clone(), stall_at: Some(bytes.len() / 2) };
    let partials = || {
        std::fs::read_dir(&dir).expect("dir").flatten().filter(|e| e.file_name().to_string_lossy().starts_with(super::PARTIAL_PREFIX)).count()
    };
    {
        let obtain = m.obtain(package, &dest, &origin);
        tokio::pin!(obtain);
        // Until half the bytes are in and the download is offered.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            tokio::select! {
                r = &mut obtain => panic!("the stalling origin finished: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if matches!(m.holding(&package.id()), Some(super::Holding::Downloading { .. })) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the download was never offered");
        }
        assert_eq!(partials(), 1);
    }
    // The obtain future is dropped here.
    assert!(m.holding(&package.id()).is_none(), "a cancelled download is still offered");
    assert_eq!(partials(), 0, "a cancelled download left its file");
    assert!(!dest.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Discovery listens to the member's own subnet and to its configured hosts only.
#[tokio::test]
async fn discovery_ignores_sources_outside_the_subnet_and_the_hosts() {
    let mut cfg = PeerConfig::new(Ipv4Addr::LOCALHOST);
    cfg.http_port = 0;
    cfg.discovery_port = free_udp_port();
    cfg.group = None;
    cfg.hosts = vec![SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 10), 7481)];
    let m = Member::start(cfg).await.expect("member");
    assert_eq!(m.subnet, Some((0x7f00_0000, 0xff00_0000)), "lo is 127.0.0.0/8");
    assert!(m.accepts_from(Ipv4Addr::new(127, 0, 0, 1)));
    assert!(m.accepts_from(Ipv4Addr::new(127, 9, 9, 9)));
    assert!(m.accepts_from(Ipv4Addr::new(198, 18, 3, 10)), "a configured host");
    assert!(!m.accepts_from(Ipv4Addr::new(198, 18, 3, 11)));
    assert!(!m.accepts_from(Ipv4Addr::new(203, 0, 113, 7)));
}

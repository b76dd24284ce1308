//! The origin listener on loopback: the package list's endpoints through the members' own
//! calls (`baton_io::peer::api`), and objects on the same listener, byte for byte.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use baton_io::metrics::Exposition;
use baton_io::peer::api::{self, EntryDoc, MAX_DOCUMENT_BYTES, PACKAGES_PREFIX};
use baton_shared::digest::{sha256_hex, Sha256};
use baton_shared::http::parse_response_head;
use baton_shared::peer::{Package, PackageId};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Where the test's peer says it serves (never connected to).
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 10), 8080);
/// The connection address of a report [`PEER`] makes itself. The test's own connections come
/// from loopback, so such reports are handed to the list directly.
const PEER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 10));

struct Fixture {
    dir: PathBuf,
    addr: SocketAddr,
    origin: Arc<Origin>,
    data: Vec<u8>,
    sha256: Sha256,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An origin root holding `pkg/a.bin` (300 KiB of a pattern), described by the start-up pass,
/// served on a loopback listener.
async fn start(tag: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("baton-origin-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pkg")).expect("mkdir");
    let data: Vec<u8> = (0..300u32 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("pkg/a.bin"), &data).expect("write");
    let sha256: Sha256 = sha2::Sha256::digest(&data).into();
    let origin = Arc::new(Origin {
        store: DirStore::open(&dir).expect("store"),
        packages: Arc::default(),
        serve: ServeConfig { served_by: Some("main".into()), head_timeout: Duration::from_secs(2), ..ServeConfig::default() },
        sent_bytes: Arc::default(),
    });
    prewarm(&origin.store, &origin.packages).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(run(listener, origin.clone()));
    Fixture { dir, addr, origin, data, sha256 }
}

/// Sends the request `raw` (with `Connection: close` added when it has none) and reads to the
/// end: the status, the head's text and the rest.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut raw = String::from_utf8(raw.to_vec()).expect("test requests are text");
    if !raw.contains("Connection: close") {
        raw = raw.replacen("Host: m\r\n", "Host: m\r\nConnection: close\r\n", 1);
    }
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("in time").expect("read");
    let (head, len) = parse_response_head(&buf).expect("parses").expect("complete head");
    let text = String::from_utf8(buf[..len].to_vec()).expect("ascii head");
    (head.status, text, buf[len..].to_vec())
}

/// A raw report of `package` at `addr`.
fn report_request(package: &Package, addr: SocketAddrV4) -> String {
    let doc = serde_json::json!({ "addr": addr.to_string(), "sha256": sha256_hex(&package.sha256), "size": package.size }).to_string();
    format!(
        "POST {PACKAGES_PREFIX}/{} HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{doc}",
        package.id(),
        doc.len()
    )
}

/// The report body of `package` at `addr`, as a member sends it.
fn report_body(package: &Package, addr: SocketAddrV4) -> Vec<u8> {
    let doc = serde_json::json!({ "addr": addr.to_string(), "sha256": sha256_hex(&package.sha256), "size": package.size });
    serde_json::to_vec(&doc).expect("json")
}

fn error_of(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).expect("json error");
    v["error"].as_str().expect("error text").to_owned()
}

fn metrics(f: &Fixture) -> String {
    let mut e = Exposition::new();
    f.origin.packages.metrics(&mut e);
    e.finish()
}

#[tokio::test]
async fn reports_lookups_and_the_list_beside_byte_exact_objects() {
    let f = start("list").await;
    let id = PackageId::Sha256(f.sha256);
    let size = f.data.len() as u64;

    // Described by the start-up pass: found by its SHA-256, with no location yet.
    assert!(api::lookup(f.addr, &id).await.is_empty(), "no peer has it yet");
    let target = format!("{PACKAGES_PREFIX}/{id}");
    let (status, head, body) = exchange(f.addr, format!("GET {target} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: application/json\r\n") && head.contains("X-Served-By: main\r\n"), "{head}");
    let doc: EntryDoc = serde_json::from_slice(&body).expect("entry");
    assert_eq!(doc, EntryDoc { id: id.to_string(), sha256: Some(sha256_hex(&f.sha256)), size: Some(size), location: None, alternates: vec![] });

    // Unknown and malformed ids.
    let unknown = PackageId::Sha256([0xab; 32]);
    let (status, _, body) = exchange(f.addr, format!("GET {PACKAGES_PREFIX}/{unknown} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 404);
    assert_eq!(error_of(&body), format!("package {unknown} is not in the list"));
    assert!(api::lookup(f.addr, &unknown).await.is_empty());
    let (status, _, body) = exchange(f.addr, format!("GET {PACKAGES_PREFIX}/nothex HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 400);
    assert!(error_of(&body).starts_with("bad package id in the path: "), "{}", error_of(&body));

    // A report of another size than the origin's object is refused, and learns nothing. (From
    // the peer's own connection: one from loopback naming the peer is refused before, 403.)
    let wrong = Package { sha256: f.sha256, size: size + 1, md5: None };
    let err = f.origin.packages.report(&id.to_string(), &report_body(&wrong, PEER), PEER_IP).expect_err("refused");
    assert_eq!(err.status(), 409);
    assert_eq!(err.to_string(), format!("the origin's object {} is {size} bytes; the report says {}", sha256_hex(&f.sha256), size + 1));
    let raw = format!("POST {target} HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\n\r\n{{nop}}");
    let (status, _, body) = exchange(f.addr, raw.as_bytes()).await;
    assert_eq!(status, 400);
    assert!(error_of(&body).starts_with("the report is not a valid JSON report"), "{}", error_of(&body));
    assert!(api::lookup(f.addr, &id).await.is_empty(), "refused reports leave no location");

    // A good report from the peer's own connection, then the lookup names that peer.
    let good = Package { sha256: f.sha256, size, md5: None };
    f.origin.packages.report(&id.to_string(), &report_body(&good, PEER), PEER_IP).expect("learned");
    assert_eq!(api::lookup(f.addr, &id).await, vec![PEER]);

    // The whole list holds the entry with the origin's digest and size and the location.
    let (status, head, body) = exchange(f.addr, format!("GET {PACKAGES_PREFIX} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 200);
    assert!(head.contains("X-Baton-Entries: 1\r\n"), "{head}");
    let list: Vec<EntryDoc> = serde_json::from_slice(&body).expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].sha256.as_deref(), list[0].size), (Some(sha256_hex(&f.sha256).as_str()), Some(size)));
    assert_eq!(list[0].location.as_ref().map(|l| (l.addr, l.generation)), Some((PEER, 1)));

    // An object on the same listener, byte for byte, and counted as origin egress.
    assert_eq!(f.origin.sent_bytes.load(Ordering::Relaxed), 0);
    let (status, head, body) = exchange(f.addr, b"GET /pkg/a.bin HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains(&format!("Content-Length: {size}\r\n")) && head.contains("X-Served-By: main\r\n"), "{head}");
    assert!(body == f.data, "the object's bytes, exactly ({} bytes received)", body.len());
    assert_eq!(f.origin.sent_bytes.load(Ordering::Relaxed), size);
    let (status, _, body) = exchange(f.addr, b"GET /pkg/a.bin HTTP/1.1\r\nHost: m\r\nRange: bytes=10-19\r\nConnection: close\r\n\r\n").await;
    assert_eq!((status, body.as_slice()), (206, &f.data[10..20]));
    assert_eq!(f.origin.sent_bytes.load(Ordering::Relaxed), size + 10);

    let text = metrics(&f);
    for line in [
        "baton_package_list_entries 1\n",
        "baton_package_list_reports_total{result=\"learned\"} 1\n",
        "baton_package_list_reports_total{result=\"refused\"} 2\n",
        "baton_package_list_lookups_total{result=\"found\"} 4\n",
        "baton_package_list_lookups_total{result=\"unknown\"} 2\n",
    ] {
        assert!(text.contains(line), "{line:?} missing in\n{text}");
    }
}

#[tokio::test]
async fn a_kept_alive_connection_goes_from_packages_to_objects() {
    let f = start("keep").await;
    let id = PackageId::Sha256(f.sha256);
    let raw = format!(
        "GET {PACKAGES_PREFIX}/{id} HTTP/1.1\r\nHost: m\r\n\r\nHEAD {PACKAGES_PREFIX} HTTP/1.1\r\nHost: m\r\n\r\nGET /pkg/a.bin HTTP/1.1\r\nHost: m\r\nRange: bytes=0-3\r\nConnection: close\r\n\r\n"
    );
    let mut s = TcpStream::connect(f.addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("in time").expect("read");
    let (h1, l1) = parse_response_head(&buf).expect("parses").expect("first");
    assert_eq!(h1.status, 200);
    let n1 = usize::try_from(h1.content_length().expect("length")).expect("small");
    let doc: EntryDoc = serde_json::from_slice(&buf[l1..l1 + n1]).expect("entry");
    assert_eq!(doc.size, Some(f.data.len() as u64));
    let rest = &buf[l1 + n1..];
    let (h2, l2) = parse_response_head(rest).expect("parses").expect("second");
    assert_eq!(h2.status, 200, "HEAD of the list");
    assert!(h2.content_length().is_some_and(|n| n > 2), "the length a GET would have");
    let rest = &rest[l2..];
    let (h3, l3) = parse_response_head(rest).expect("parses").expect("third");
    assert_eq!((h3.status, &rest[l3..]), (206, &f.data[..4]), "nothing of the HEAD's body was sent");
}

#[tokio::test]
async fn refuses_other_methods_big_bodies_and_deeper_paths() {
    let f = start("refuse").await;
    let id = PackageId::Sha256(f.sha256);
    let (status, head, body) = exchange(f.addr, format!("DELETE {PACKAGES_PREFIX}/{id} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD, POST\r\n"), "{head}");
    assert_eq!(error_of(&body), "DELETE is not allowed on a package; use GET or POST");
    let (status, head, _) = exchange(f.addr, format!("POST {PACKAGES_PREFIX} HTTP/1.1\r\nHost: m\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD\r\n"), "{head}");
    let big = crate::packages::MAX_REPORT_BYTES + 1;
    let (status, head, body) =
        exchange(f.addr, format!("POST {PACKAGES_PREFIX}/{id} HTTP/1.1\r\nHost: m\r\nContent-Length: {big}\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 413);
    assert!(head.contains("Connection: close\r\n"), "the unread body ends the connection: {head}");
    assert_eq!(error_of(&body), format!("a report is at most {} bytes", crate::packages::MAX_REPORT_BYTES));
    let (status, _, _) =
        exchange(f.addr, format!("POST {PACKAGES_PREFIX}/{id} HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 411);
    let (status, _, _) = exchange(f.addr, format!("GET {PACKAGES_PREFIX}/{id}/x HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 404);
    // A body that stops short is never answered; the connection just closes after the deadline.
    let mut s = TcpStream::connect(f.addr).await.expect("connect");
    s.write_all(format!("POST {PACKAGES_PREFIX}/{id} HTTP/1.1\r\nHost: m\r\nContent-Length: 50\r\n\r\n{{").as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("closed in time").expect("read");
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    // Object serving answers its own errors as before.
    let (status, _, _) = exchange(f.addr, b"PUT /pkg/a.bin HTTP/1.1\r\nHost: m\r\n\r\n").await;
    assert_eq!(status, 405);
    let (status, _, _) = exchange(f.addr, b"GET /pkg/none HTTP/1.1\r\nHost: m\r\n\r\n").await;
    assert_eq!(status, 404);
    let text = metrics(&f);
    assert!(text.contains("baton_package_list_reports_total{result=\"refused\"} 3\n"), "{text}");
    assert_eq!(f.origin.sent_bytes.load(Ordering::Relaxed), 0, "no object body was sent");
}

#[tokio::test]
async fn a_report_names_only_the_connections_own_reachable_address() {
    let f = start("own").await;
    let id = PackageId::Sha256(f.sha256);
    let good = Package { sha256: f.sha256, size: f.data.len() as u64, md5: None };

    // Naming another host: the member's own call sends from the address it names, which this
    // host does not have; a raw request from loopback gets 403.
    let err = api::report(f.addr, &good, PEER).await.expect_err("not this host's address");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrNotAvailable, "{err}");
    let (status, head, body) = exchange(f.addr, report_request(&good, PEER).as_bytes()).await;
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("Content-Type: application/json\r\n"), "{head}");
    assert_eq!(error_of(&body), "the report names 198.18.2.10:8080, but it came from 127.0.0.1: a host reports only its own address");

    // Naming loopback, from that very address: peers cannot fetch there, 400.
    let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080);
    let err = api::report(f.addr, &good, lo).await.expect_err("loopback");
    assert_eq!(err.to_string(), "the main answered 400");
    let (status, _, body) = exchange(f.addr, report_request(&good, lo).as_bytes()).await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body),
        "127.0.0.1:8080 cannot serve peers (unspecified, loopback, link-local, broadcast, multicast or reserved address, or port 0)"
    );

    assert!(api::lookup(f.addr, &id).await.is_empty(), "refused reports leave no location");
    // Three refused: the raw report naming another host, and both naming loopback.
    let text = metrics(&f);
    assert!(text.contains("baton_package_list_reports_total{result=\"refused\"} 3\n"), "{text}");
    assert!(text.contains("baton_package_list_reports_total{result=\"learned\"} 0\n"), "{text}");
}

#[tokio::test]
async fn the_origins_object_stays_listed_past_the_foreign_budget() {
    use crate::packages::{ReportError, MAX_FOREIGN_PACKAGES};
    let f = start("foreign").await;
    let packages = &f.origin.packages;
    let flood = MAX_FOREIGN_PACKAGES + 100;
    let mut refused = 0;
    for i in 0..flood as u32 {
        let mut sha256 = [0xf0u8; 32];
        sha256[..4].copy_from_slice(&i.to_be_bytes());
        let foreign = Package { sha256, size: 1, md5: None };
        match packages.report(&foreign.id().to_string(), &report_body(&foreign, PEER), PEER_IP) {
            Ok(_) => {}
            Err(ReportError::ForeignBudget { .. }) => refused += 1,
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    }
    assert_eq!(refused, flood - MAX_FOREIGN_PACKAGES);

    // The whole list over the wire: the origin's object and the budget's worth of others.
    let (status, head, body) = exchange(f.addr, format!("GET {PACKAGES_PREFIX} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains(&format!("X-Baton-Entries: {}\r\n", MAX_FOREIGN_PACKAGES + 1)), "{head}");
    let list: Vec<EntryDoc> = serde_json::from_slice(&body).expect("list");
    assert_eq!(list.len(), MAX_FOREIGN_PACKAGES + 1);
    let own = list.iter().find(|e| e.id == PackageId::Sha256(f.sha256).to_string()).expect("the origin's object is listed");
    assert_eq!(own.size, Some(f.data.len() as u64));
    assert_eq!(list.iter().filter(|e| e.sha256.is_none()).count(), MAX_FOREIGN_PACKAGES);
    let text = metrics(&f);
    assert!(text.contains(&format!("baton_package_list_reports_total{{result=\"refused\"}} {refused}\n")), "{text}");
}

#[tokio::test]
async fn the_full_list_is_bounded_and_rendered_one_at_a_time() {
    let f = start("bounded").await;
    let n = 40_000u32;
    for i in 0..n {
        let mut sha256 = [0x11u8; 32];
        sha256[..4].copy_from_slice(&i.to_be_bytes());
        f.origin.packages.describe_origin(sha256, u64::from(i));
    }
    let (status, head, body) = exchange(f.addr, format!("GET {PACKAGES_PREFIX} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains(&format!("X-Baton-Entries: {}\r\n", n + 1)), "{head}");
    assert!(body.len() <= MAX_DOCUMENT_BYTES, "{} bytes", body.len());
    let list: Vec<EntryDoc> = serde_json::from_slice(&body).expect("list");
    assert!(list.len() > 1000 && list.len() < n as usize + 1, "{} listed", list.len());

    // While a rendering runs, another request waits, then is told to come back.
    let running = f.origin.packages.hold_rendering().await;
    let (status, head, body) = exchange(f.addr, format!("GET {PACKAGES_PREFIX} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    assert_eq!(error_of(&body), "another request is rendering the package list; retry in 1 s");
    drop(running);
    let (status, _, _) = exchange(f.addr, format!("HEAD {PACKAGES_PREFIX} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes()).await;
    assert_eq!(status, 200);
}

//! baton-fetch against Baton's own HTTP object server (the participants' mirror code) on
//! loopback: several mirrors of one file, one that holds a different file of the same length,
//! one that is gone, and a resumed download. The lab tests (tests/tests/fetch.rs) add real link
//! rates, FTP, slow-downs and killed servers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_fetch::discover::Wanted;
use baton_fetch::{FetchError, Options};
use baton_io::http::{serve_listener, ServeConfig};
use baton_io::store::DirStore;
use sha2::Digest as _;

fn data(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("baton-fetch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Serves `root` on a loopback port; returns the base URL.
async fn server(root: &Path) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store = DirStore::open(root).expect("store");
    tokio::spawn(serve_listener(listener, store, ServeConfig::default(), "test"));
    format!("http://{addr}")
}

fn options(urls: &[String], out: &Path) -> Options {
    Options {
        wanted: Wanted {
            urls: urls.iter().map(|u| url::Url::parse(u).expect("url")).collect(),
            mirrors: false,
            ..Wanted::default()
        },
        output: Some(out.to_owned()),
        timeout: Duration::from_secs(5),
        ..Options::default()
    }
}

fn no_cancel() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mirrors_one_impostor_one_gone() {
    let dir = temp_dir("mirrors");
    let body = data(24 << 20, 7);
    let sha = hex::encode(sha2::Sha256::digest(&body));
    let mut urls = Vec::new();
    for i in 0..3 {
        let root = dir.join(format!("m{i}"));
        std::fs::create_dir_all(&root).expect("dir");
        std::fs::write(root.join("f.bin"), &body).expect("write");
        urls.push(format!("{}/f.bin", server(&root).await));
    }
    // Same length, other bytes: its own digest gives it away.
    let evil = dir.join("evil");
    std::fs::create_dir_all(&evil).expect("dir");
    std::fs::write(evil.join("f.bin"), data(24 << 20, 8)).expect("write");
    urls.push(format!("{}/f.bin", server(&evil).await));
    // Nobody listens here.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    urls.push(format!("http://{gone}/f.bin"));

    let out = dir.join("out.bin");
    let summary = baton_fetch::run(&options(&urls, &out), no_cancel())
        .await
        .expect("download");
    let got = std::fs::read(&out).expect("output");
    assert_eq!(hex::encode(sha2::Sha256::digest(&got)), sha);
    assert_eq!(summary.verified, "sha-256");
    assert_eq!(summary.sha256.as_deref(), Some(sha.as_str()));
    let state = |u: &str| {
        summary
            .servers
            .iter()
            .find(|s| s.url == u)
            .map(|s| s.state)
            .expect("listed")
    };
    assert_eq!(state(&urls[3]), "rejected");
    assert_eq!(state(&urls[4]), "unreachable");
    let used: u64 = summary
        .servers
        .iter()
        .filter(|s| s.state == "used")
        .map(|s| s.bytes)
        .sum();
    assert!(used >= 24 << 20, "{summary:#?}");
    assert!(
        summary.servers.iter().filter(|s| s.state == "used").count() >= 2,
        "{summary:#?}"
    );
    assert!(!state_files_left(&out));
    // The output exists now: a second run refuses to replace it.
    let again = baton_fetch::run(&options(&urls[..1], &out), no_cancel()).await;
    assert!(
        matches!(again, Err(FetchError::Setup(ref m)) if m.contains("exists")),
        "{again:?}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

fn state_files_left(out: &Path) -> bool {
    let (part, state) = baton_fetch::state::paths(out);
    part.exists() || state.exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_state_is_resumed_and_its_bytes_are_not_fetched_again() {
    let dir = temp_dir("resume");
    let body = data(8 << 20, 11);
    let root = dir.join("m");
    std::fs::create_dir_all(&root).expect("dir");
    std::fs::write(root.join("f.bin"), &body).expect("write");
    let url = format!("{}/f.bin", server(&root).await);
    let out = dir.join("out.bin");
    // An earlier run left the first 5 MiB and its state.
    let (part, state_path) = baton_fetch::state::paths(&out);
    let mut partial = body[..5 << 20].to_vec();
    partial.resize(8 << 20, 0);
    std::fs::write(&part, &partial).expect("part");
    let sha = sha2::Sha256::digest(&body);
    let st = baton_fetch::state::State::new(
        8 << 20,
        Some(hex::encode(sha)),
        None,
        None,
        &baton_fetch::plan::Ranges::from_ranges([(0, 5 << 20)]),
    );
    baton_fetch::state::save(&state_path, &st).expect("state");
    let summary = baton_fetch::run(&options(&[url], &out), no_cancel())
        .await
        .expect("download");
    assert_eq!(summary.resumed, 5 << 20);
    // Only the missing 3 MiB were fetched; a split may cost up to one read buffer of bytes
    // received past a shortened range.
    assert!(
        summary.received >= 3 << 20 && summary.received < 4 << 20,
        "{summary:#?}"
    );
    assert_eq!(std::fs::read(&out).expect("output"), body);
    assert!(!state_files_left(&out));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_claimed_digest_leaves_nothing_under_the_output_name() {
    let dir = temp_dir("verify");
    let root = dir.join("m");
    std::fs::create_dir_all(&root).expect("dir");
    std::fs::write(root.join("f.bin"), data(1 << 20, 3)).expect("write");
    let url = format!("{}/f.bin", server(&root).await);
    let out = dir.join("out.bin");
    let mut opts = options(&[url], &out);
    opts.wanted.checksum = Some([7; 32]);
    let r = baton_fetch::run(&opts, no_cancel()).await;
    // The primary's own digest contradicts the one given: refused before any byte.
    assert!(matches!(r, Err(FetchError::Discover(_))), "{r:?}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// An HTTPS server on loopback for `data` at `/f.bin`: rustls with a certificate for
/// `localhost`, answers planned by Baton's own response planner (Range, digests). Returns the
/// URL and the CA file to trust.
async fn https_server(dir: &Path, data: Vec<u8>) -> (String, PathBuf) {
    use baton_shared::http::{parse_request_head, plan_object_response, ObjectMeta};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).expect("ca file");
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let meta = ObjectMeta { size: data.len() as u64, sha256: sha2::Sha256::digest(&data).into(), last_modified_unix: None };
    let data = std::sync::Arc::new(data);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, meta, data) = (acceptor.clone(), meta.clone(), data.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                loop {
                    let (head, len) = loop {
                        if let Ok(Some(h)) = parse_request_head(&buf) {
                            break h;
                        }
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    buf.drain(..len);
                    let plan = if head.target == "/f.bin" {
                        plan_object_response(&head, &meta, "test")
                    } else {
                        baton_shared::http::plan_request_error(&head, 404, "test")
                    };
                    if tls.write_all(&plan.head).await.is_err() {
                        return;
                    }
                    if let Some((off, len)) = plan.body {
                        if tls.write_all(&data[off as usize..(off + len) as usize]).await.is_err() {
                            return;
                        }
                    }
                    if !plan.keep_alive {
                        return;
                    }
                }
            });
        }
    });
    (format!("https://localhost:{port}/f.bin"), ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_mirrors_with_a_private_ca() {
    let dir = temp_dir("https");
    let body = data(6 << 20, 21);
    let (url, ca) = https_server(&dir, body.clone()).await;
    let out = dir.join("out.bin");
    // Without trusting the CA the only server fails its TLS handshake.
    let r = baton_fetch::run(&options(std::slice::from_ref(&url), &out), no_cancel()).await;
    assert!(matches!(r, Err(FetchError::Discover(ref e)) if e.to_string().contains("tls")), "{r:?}");
    let mut opts = options(&[url], &out);
    opts.cacert = Some(ca);
    let summary = baton_fetch::run(&opts, no_cancel()).await.expect("download");
    assert_eq!(std::fs::read(&out).expect("output"), body);
    assert_eq!(summary.verified, "sha-256");
    assert_eq!(summary.servers[0].protocol, baton_fetch::source::Protocol::Https);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

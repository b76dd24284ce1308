//! baton-fetch in the lab: the main publishes a file's mirrors (Link headers, digests, a
//! Metalink), and baton-fetch in a client namespace downloads from the three participants'
//! mirrors at different link rates, with a real vsftpd as an FTP mirror. Every download's
//! SHA-256 is checked here, independently of baton-fetch's own verification.
//!
//! Two labs with their own names and /21s, so they run in parallel with the rest of the suite:
//! `fetcha` does not disturb its mirrors; `fetchb` slows one down, kills one and interrupts a
//! download.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use baton_lab::Rate;
use baton_tests::ftp::Vsftpd;
use baton_tests::{
    fetch_json, fetch_topology, pseudo_random, wait_fetch, require_root, sha256_file, spawn_fetch, Cluster, ClusterOptions, FETCH_MIRROR_RATES,
};
use serde_json::Value;

const OBJECT: &str = "pkg/file.bin";
const CLIENT: &str = "c-fra";
/// Bound on any one download in these tests (they take seconds).
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(120);

fn cluster(name: &str, block: &str) -> Cluster {
    let mut opts = ClusterOptions::new(name, block);
    opts.topology_yaml = Some(fetch_topology());
    Cluster::start(&opts).expect("cluster starts")
}

/// Runs baton-fetch to completion; returns its JSON summary (or error object) and output.
fn fetch(c: &Cluster, args: &[&str]) -> (Value, Output) {
    let child = spawn_fetch(c, CLIENT, args).expect("baton-fetch starts");
    let out = wait_fetch(child, DOWNLOAD_LIMIT);
    (fetch_json(&out), out)
}

fn ok(json: &Value, out: &Output) {
    assert!(
        out.status.success(),
        "baton-fetch failed ({}): {json}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn servers(json: &Value) -> Vec<Value> {
    json["servers"].as_array().cloned().unwrap_or_default()
}

/// The summary line of the server whose URL names `addr` (with `scheme`).
fn server(json: &Value, scheme: &str, addr: &str) -> Value {
    let needle = format!("{scheme}://{addr}");
    servers(json)
        .into_iter()
        .find(|s| {
            s["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(&format!("{needle}/")) || u.starts_with(&format!("{needle}:")))
        })
        .unwrap_or_else(|| panic!("no server {needle} in {json:#}"))
}

fn bytes(v: &Value) -> u64 {
    v["bytes"].as_u64().unwrap_or(0)
}

fn out_path(c: &Cluster, name: &str) -> PathBuf {
    c.lab.state_dir().join(name)
}

fn addr(c: &Cluster, node: &str) -> String {
    c.addr(node).expect("node address").to_string()
}

/// A directory vsftpd may serve (world-readable, writable by its owner only) holding `data` as
/// [`OBJECT`].
fn ftp_root(c: &Cluster, name: &str, data: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = c.lab.state_dir().join(name);
    let file = root.join(OBJECT);
    std::fs::create_dir_all(file.parent().expect("parent")).expect("ftp dir");
    std::fs::write(&file, data).expect("ftp file");
    for d in [root.clone(), root.join("pkg")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    root
}

fn vsftpd(c: &Cluster, node: &str, root: &Path, pasv: (u16, u16)) -> Vsftpd {
    let cmd = c.lab.command(node, baton_tests::ftp::VSFTPD).expect("command");
    Vsftpd::start(cmd, c.lab.state_dir(), root, c.addr(node).expect("addr"), 2121, pasv).expect("vsftpd starts")
}

#[test]
fn mirrors_rates_impostors_ftp_and_aria2() {
    if !require_root() {
        return;
    }
    let c = cluster("fetcha", "198.18.136.0/21");
    let size = 64 << 20;
    let sha = c.write_object(OBJECT, size, 51).expect("object");
    c.provision(OBJECT).expect("provision");
    let vip_url = c.vip_url(OBJECT);
    let [(fra, _), (par, _), (sin, _)] = FETCH_MIRROR_RATES;

    // 1. From the VIP alone: the main's Link headers and Metalink name the three mirrors;
    //    the fastest link delivers the most.
    let o1 = out_path(&c, "one.bin");
    let (j, out) = fetch(&c, &["--json", "-o", o1.to_str().expect("utf-8"), &vip_url]);
    ok(&j, &out);
    assert_eq!(sha256_file(&o1).expect("sha"), sha);
    assert_eq!(j["sha256"].as_str(), Some(sha.as_str()));
    assert_eq!(j["verified"].as_str(), Some("pieces+sha-256"), "{j:#}");
    let (bf, bp, bs) = (
        bytes(&server(&j, "http", &addr(&c, fra))),
        bytes(&server(&j, "http", &addr(&c, par))),
        bytes(&server(&j, "http", &addr(&c, sin))),
    );
    // The VIP's connections are handed off to p-fra (the client's nearest), so they share the
    // fastest link with p-fra's mirror: that link, not the mirror alone, delivers the most.
    let bv = bytes(&server(&j, "http", &c.lab.vip().to_string()));
    assert!(
        bf + bv > bp && bf + bv > bs && bp > 0 && bs > 0,
        "bytes fra {bf} (+ VIP {bv}) par {bp} sin {bs}: {j:#}"
    );
    for n in [fra, par, sin] {
        // Named by the main: in its Link headers and in the Metalink they point to.
        let found = server(&j, "http", &addr(&c, n))["found"].as_str().map(str::to_owned);
        assert!(matches!(found.as_deref(), Some("link" | "metalink")), "{j:#}");
    }

    // 2. An FTP mirror with another file of the same length: left out before the download
    //    (it publishes no digest, so sampled ranges decide).
    let evil_root = ftp_root(&c, "ftp-evil", &pseudo_random(size, 52));
    let evil = vsftpd(&c, sin, &evil_root, (30000, 30019));
    let o2 = out_path(&c, "two.bin");
    let (j, out) = fetch(
        &c,
        &["--json", "-o", o2.to_str().expect("utf-8"), &vip_url, &evil.url(OBJECT)],
    );
    ok(&j, &out);
    assert_eq!(sha256_file(&o2).expect("sha"), sha);
    let e = server(&j, "ftp", &addr(&c, sin));
    assert_eq!(e["state"].as_str(), Some("rejected"), "{j:#}");
    assert!(e["reason"].as_str().is_some_and(|r| r.contains("sampled")), "{e:#}");
    assert_eq!(bytes(&e), 0);
    drop(evil);

    // 3. HTTP and FTP mixed, no discovery: one participant's mirror and a vsftpd serving the
    //    origin's copy.
    let good_root = ftp_root(&c, "ftp-good", &pseudo_random(size, 51));
    let good = vsftpd(&c, par, &good_root, (30020, 30039));
    let http_url = format!("http://{}/{OBJECT}", addr(&c, fra));
    let o3 = out_path(&c, "three.bin");
    let (j, out) = fetch(
        &c,
        &[
            "--json",
            "--no-mirrors",
            "-o",
            o3.to_str().expect("utf-8"),
            &http_url,
            &good.url(OBJECT),
        ],
    );
    ok(&j, &out);
    assert_eq!(sha256_file(&o3).expect("sha"), sha);
    let f = server(&j, "ftp", &addr(&c, par));
    assert_eq!(f["state"].as_str(), Some("used"), "{j:#}");
    assert!(bytes(&f) > 0 && bytes(&server(&j, "http", &addr(&c, fra))) > 0, "{j:#}");
    assert_eq!(servers(&j).len(), 2, "--no-mirrors uses only the URLs given: {j:#}");
    drop(good);

    // 4. aria2c follows the main's Metalink (it checks the hash itself too).
    let dir = c.lab.state_dir().join("aria2");
    std::fs::create_dir_all(&dir).expect("dir");
    let meta_url = format!("{vip_url}.meta4");
    let out = c
        .exec(
            CLIENT,
            &[
                "aria2c",
                "-q",
                "--allow-overwrite=true",
                "--max-tries=3",
                "-d",
                dir.to_str().expect("utf-8"),
                &meta_url,
            ],
        )
        .expect("aria2c runs");
    assert!(
        out.status.success(),
        "aria2c failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&dir.join("file.bin")).expect("sha"), sha);
}

/// Polls the state file beside `output` until at least `fraction` of `size` is saved as done.
fn wait_saved(output: &Path, size: u64, fraction: f64) -> u64 {
    let state = PathBuf::from(format!("{}.baton-fetch", output.display()));
    let deadline = Instant::now() + DOWNLOAD_LIMIT;
    loop {
        let done = saved(&state);
        if done as f64 >= fraction * size as f64 {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "{} never reached {fraction} of {size}",
            state.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Done bytes recorded in a state file (0 when absent or unreadable mid-rename).
fn saved(state: &Path) -> u64 {
    let Ok(text) = std::fs::read(state) else { return 0 };
    let Ok(v) = serde_json::from_slice::<Value>(&text) else {
        return 0;
    };
    v["done"].as_array().map_or(0, |r| {
        r.iter()
            .map(|p| p[1].as_u64().unwrap_or(0) - p[0].as_u64().unwrap_or(0))
            .sum()
    })
}

#[test]
fn slow_killed_and_interrupted_mirrors() {
    if !require_root() {
        return;
    }
    let mut c = cluster("fetchb", "198.18.144.0/21");
    let size: u64 = 96 << 20;
    let sha = c.write_object(OBJECT, size as usize, 61).expect("object");
    c.provision(OBJECT).expect("provision");
    let vip_url = c.vip_url(OBJECT);
    let [(fra, fra_rate), (par, _), _] = FETCH_MIRROR_RATES;
    let fast_opts = ["--json", "--slow-grace", "1", "--stall-timeout", "3"];

    // 1. The fastest mirror's link slows to a crawl mid-transfer: dropped, the rest elsewhere.
    let o1 = out_path(&c, "slow.bin");
    let mut args = fast_opts.to_vec();
    args.extend(["-o", o1.to_str().expect("utf-8"), &vip_url]);
    let child = spawn_fetch(&c, CLIENT, &args).expect("starts");
    wait_saved(&o1, size, 0.15);
    c.lab
        .set_rate(fra, "200kbit".parse::<Rate>().expect("rate"))
        .expect("slow down");
    let out = wait_fetch(child, DOWNLOAD_LIMIT);
    c.lab
        .set_rate(fra, fra_rate.parse::<Rate>().expect("rate"))
        .expect("restore");
    let j: Value = serde_json::from_slice(&out.stdout).expect("json");
    ok(&j, &out);
    assert_eq!(sha256_file(&o1).expect("sha"), sha);
    let f = server(&j, "http", &addr(&c, fra));
    assert_eq!(f["state"].as_str(), Some("dropped"), "{j:#}");
    let why = f["reason"].as_str().unwrap_or_default();
    assert!(why.starts_with("slow") || why.starts_with("stalled"), "{why}");

    // 2. A mirror's process is killed mid-transfer.
    let o2 = out_path(&c, "killed.bin");
    let mut args = fast_opts.to_vec();
    args.extend(["-o", o2.to_str().expect("utf-8"), &vip_url]);
    let child = spawn_fetch(&c, CLIENT, &args).expect("starts");
    wait_saved(&o2, size, 0.15);
    c.kill(par, "baton-participant");
    let out = wait_fetch(child, DOWNLOAD_LIMIT);
    let j: Value = serde_json::from_slice(&out.stdout).expect("json");
    ok(&j, &out);
    assert_eq!(sha256_file(&o2).expect("sha"), sha);
    assert_eq!(
        server(&j, "http", &addr(&c, par))["state"].as_str(),
        Some("dropped"),
        "{j:#}"
    );
    c.restart_participant(par).expect("restart");

    // 3. SIGINT, then the same command again: the saved ranges are not fetched again.
    let o3 = out_path(&c, "resumed.bin");
    let mut args = fast_opts.to_vec();
    args.extend(["-o", o3.to_str().expect("utf-8"), &vip_url]);
    let child = spawn_fetch(&c, CLIENT, &args).expect("starts");
    wait_saved(&o3, size, 0.3);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = wait_fetch(child, DOWNLOAD_LIMIT);
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!o3.exists(), "an interrupted download is not under the final name");
    let state = PathBuf::from(format!("{}.baton-fetch", o3.display()));
    let kept = saved(&state);
    assert!(kept >= (size as f64 * 0.3) as u64 && kept < size, "kept {kept}");
    let (j, out) = fetch(&c, &args);
    ok(&j, &out);
    assert_eq!(sha256_file(&o3).expect("sha"), sha);
    assert_eq!(j["resumed"].as_u64(), Some(kept), "{j:#}");
    let received = j["received"].as_u64().unwrap_or(u64::MAX);
    // What was missing, plus at most a few read buffers past shortened ranges and endgame
    // duplicates; fetching the kept ranges again would add `kept`.
    assert!(
        received >= size - kept && received < size - kept + (8 << 20),
        "received {received}, missing {}: {j:#}",
        size - kept
    );
    assert!(!state.exists());
}

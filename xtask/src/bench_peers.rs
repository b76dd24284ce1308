//! `cargo xtask bench peers`: N = 2, 4 and 8 peers on one LAN fetch the same package at once,
//! the origin (the main's origin store) behind a slower uplink — side by side in one run, with
//! the peer cache (`baton-fetch --peer`) and with every peer going to the origin (curl, as a
//! site without a peer cache would).
//!
//! Per N and mode: completion times p50 and p99 (nearest rank; with at most 8 samples p99 is
//! the slowest peer), and the origin's egress as a multiple of the package size, counted from
//! the main interface's transmit counter. Every file's SHA-256 is checked: a wrong file fails
//! the benchmark; a missed target only prints "target missed".

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_tests::{lan_topology, sha256_file, Cluster, ClusterOptions};

/// Lab name and address block of this benchmark (unique among the labs that may run at once; a
/// /20, since nine nodes need nine /24 links).
const LAB_NAME: &str = "bpeers";
const LAB_BLOCK: &str = "198.19.160.0/20";
/// The peers; a run with N uses the first N.
const PEERS: [&str; 8] = ["peer1", "peer2", "peer3", "peer4", "peer5", "peer6", "peer7", "peer8"];
/// Peer counts compared.
const COUNTS: [usize; 3] = [2, 4, 8];
/// The origin's uplink: slower than the LAN, as a site's link to its package origin is.
const ORIGIN_RATE: &str = "200mbit";
/// Each peer's port on the LAN.
const LAN_RATE: &str = "1gbit";
/// Bound on one run (all peers of one N and mode); a run that needs longer fails.
const RUN_LIMIT: Duration = Duration::from_secs(900);
/// Seconds a peer keeps serving after its own download once no upload runs.
const LINGER_SECS: &str = "2";
/// Targets of the issue: origin egress about 1x for every N (at most this), and p99 growing
/// less than linearly with N.
const EGRESS_TARGET: f64 = 1.1;

/// What `bench peers` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub size_mib: u64,
}

#[derive(Debug, Clone)]
struct Run {
    n: usize,
    mode: &'static str,
    seconds: Vec<f64>,
    egress: u64,
}

impl Run {
    fn p(&self, q: f64) -> f64 {
        let mut v = self.seconds.clone();
        v.sort_by(f64::total_cmp);
        // Nearest rank.
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let size = opts.size_mib << 20;
    let mut copts = ClusterOptions::new(LAB_NAME, LAB_BLOCK);
    copts.topology_yaml = Some(lan_topology(&PEERS, Some(ORIGIN_RATE), Some(LAN_RATE)));
    copts.participants = false;
    let cluster = Cluster::start(&copts)?;
    let main = cluster.addr("main")?;
    println!(
        "bench peers: a {} MiB package, origin uplink {ORIGIN_RATE}, LAN ports {LAN_RATE}; N = {COUNTS:?}; peer cache (baton-fetch --peer) against everyone from the origin (curl)",
        opts.size_mib
    );
    let mut runs = Vec::new();
    for (i, &n) in COUNTS.iter().enumerate() {
        for mode in ["peer cache", "origin only"] {
            // A package of its own per run, so nothing is cached anywhere from an earlier one.
            let name = format!("bench/peers-{n}-{}.bin", mode.replace(' ', "-"));
            let sha = cluster.write_object(&name, usize::try_from(size)?, 0x7065_6572 + i as u64)?;
            let url = format!("http://{main}:{}/{name}", baton_shared::config::DEFAULT_ORIGIN_PORT);
            let r = one(&cluster, n, mode, &url, &sha)?;
            println!(
                "  N={n} {mode:<12} p50 {:>6.2} s  p99 {:>6.2} s  origin sent {:.2}x the package",
                r.p(0.5),
                r.p(0.99),
                r.egress as f64 / size as f64
            );
            runs.push(r);
            std::fs::remove_file(cluster.origin_dir.join(&name)).ok();
        }
    }

    println!();
    println!("| N | mode | p50 s | p99 s | origin egress / size | p99: origin only / peer cache |");
    println!("|---:|---|---:|---:|---:|---:|");
    for r in &runs {
        let other = runs.iter().find(|o| o.n == r.n && o.mode == "peer cache").map_or(f64::NAN, |pc| r.p(0.99) / pc.p(0.99));
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} |",
            r.n,
            r.mode,
            r.p(0.5),
            r.p(0.99),
            r.egress as f64 / size as f64,
            if r.mode == "peer cache" { "1.00".to_owned() } else { format!("{other:.2}") }
        );
    }
    let peer_runs: Vec<&Run> = runs.iter().filter(|r| r.mode == "peer cache").collect();
    let worst_egress = peer_runs.iter().map(|r| r.egress as f64 / size as f64).fold(0.0, f64::max);
    let (first, last) = (peer_runs.first().context("no runs")?, peer_runs.last().context("no runs")?);
    let growth = last.p(0.99) / first.p(0.99);
    let linear = last.n as f64 / first.n as f64;
    println!();
    println!(
        "peer cache: origin egress at most {worst_egress:.2}x the package ({}); p99 from N={} to N={} grew {growth:.2}x against {linear:.0}x for linear ({})",
        if worst_egress <= EGRESS_TARGET { "target met" } else { "target missed" },
        first.n,
        last.n,
        if growth < linear { "target met" } else { "target missed" }
    );
    Ok(())
}

fn out_path(cluster: &Cluster, node: &str) -> anyhow::Result<PathBuf> {
    let dir = cluster.lab.state_dir().join(format!("bench-{node}"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("package.bin");
    let _ = std::fs::remove_file(&path);
    Ok(path)
}

/// One run: the first `n` peers at once in `mode`.
fn one(cluster: &Cluster, n: usize, mode: &'static str, url: &str, sha: &str) -> anyhow::Result<Run> {
    let before = cluster.tx_bytes("main")?;
    let mut children: Vec<(&str, PathBuf, Child)> = Vec::new();
    for node in &PEERS[..n] {
        let out = out_path(cluster, node)?;
        let o = out.display().to_string();
        let child = if mode == "peer cache" {
            let addr = cluster.addr(node)?.to_string();
            cluster
                .lab
                .command(node, baton_tests::bin_dir().join("baton-fetch"))?
                .args(["--peer", "--json", "--peer-addr", &addr, "--peer-linger", LINGER_SECS, "-o", &o, url])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting baton-fetch")?
        } else {
            cluster
                .lab
                .command(node, "curl")?
                .args(["-sS", "--fail", "-o", &o, "-w", "%{time_total}", url])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting curl")?
        };
        children.push((node, out, child));
    }
    let deadline = Instant::now() + RUN_LIMIT;
    let mut seconds = Vec::new();
    for (node, out, mut child) in children {
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{node} ({mode}, N={n}) took longer than {RUN_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!("{node} ({mode}, N={n}) failed: {}", output.status);
        }
        check(&out, sha, node)?;
        let text = String::from_utf8_lossy(&output.stdout);
        let s = if mode == "peer cache" {
            let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{node}: summary {text}"))?;
            v["obtain_seconds"].as_f64().with_context(|| format!("{node}: no obtain_seconds in {text}"))?
        } else {
            text.trim().parse::<f64>().with_context(|| format!("{node}: curl printed {text:?}"))?
        };
        seconds.push(s);
    }
    let egress = cluster.tx_bytes("main")? - before;
    Ok(Run { n, mode, seconds, egress })
}

fn check(path: &Path, sha: &str, node: &str) -> anyhow::Result<()> {
    let got = sha256_file(path)?;
    if got != sha {
        bail!("{node} got a file with sha-256 {got}, not {sha}");
    }
    Ok(())
}

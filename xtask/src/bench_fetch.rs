//! `cargo xtask bench fetch`: one file from three mirrors at 80, 40 and 20 Mbit/s, the fastest of
//! which slows to a crawl a few seconds in, downloaded side by side in one run by baton-fetch,
//! aria2c (given the mirrors, at two -x/-s settings, and given the main's Metalink) and axel
//! (when it installs).
//!
//! Per tool: completion time, its ratio to baton-fetch's, and efficiency = the file's size over
//! what the links could carry during the download (the rate sum before the slowdown, the rate
//! sum after it; ceiling 1.0). Every download's SHA-256 is checked: a wrong file fails the
//! benchmark; a missed speed target only prints "target missed".

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_lab::Rate;
use baton_tests::{fetch_topology, sha256_file, Cluster, ClusterOptions, FETCH_MIRROR_RATES};

/// Lab name and address block of this benchmark (unique among the labs that may run at once).
const LAB_NAME: &str = "bfetch";
const LAB_BLOCK: &str = "198.19.152.0/21";
const CLIENT: &str = "c-fra";
const OBJECT: &str = "bench/fetch.bin";
const OBJECT_SEED: u64 = 0x6665_7463;
/// When the fastest mirror slows down, after each download starts.
const SLOWDOWN_AFTER: Duration = Duration::from_secs(4);
/// Its rate from then on: a crawl.
const CRAWL: &str = "200kbit";
/// Bound on one download; a tool that needs longer counts as failed.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(600);
/// The targets of issue 5: faster than aria2c in the degraded case, efficiency at least 0.9.
const EFFICIENCY_TARGET: f64 = 0.9;

/// What `bench fetch` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub size_mib: u64,
}

struct Run {
    tool: String,
    seconds: f64,
    ok: bool,
    note: String,
}

fn bits(rate: &str) -> anyhow::Result<f64> {
    Ok(rate.parse::<Rate>().map_err(|e| anyhow::anyhow!("{rate}: {e}"))?.bits_per_second() as f64)
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let size = opts.size_mib << 20;
    let mut copts = ClusterOptions::new(LAB_NAME, LAB_BLOCK);
    copts.topology_yaml = Some(fetch_topology());
    let cluster = Cluster::start(&copts)?;
    let sha = cluster.write_object(OBJECT, usize::try_from(size)?, OBJECT_SEED)?;
    cluster.provision(OBJECT)?;
    let [(slow, slow_rate), ..] = FETCH_MIRROR_RATES;
    let mirrors: Vec<String> = FETCH_MIRROR_RATES
        .iter()
        .map(|(n, _)| Ok(format!("http://{}/{OBJECT}", cluster.addr(n)?)))
        .collect::<anyhow::Result<_>>()?;
    let before: f64 = FETCH_MIRROR_RATES.iter().map(|(_, r)| bits(r)).sum::<anyhow::Result<f64>>()? / 8.0;
    let after = before - bits(slow_rate)? / 8.0 + bits(CRAWL)? / 8.0;
    let have_axel = ensure_axel();
    let dir = cluster.lab.state_dir().join("bench-out");
    std::fs::create_dir_all(&dir)?;
    let out = |name: &str| dir.join(name).display().to_string();
    let meta = format!("{}.meta4", cluster.vip_url(OBJECT));
    println!(
        "baton-fetch against aria2c and axel: {} MiB from mirrors at {}; {slow} slows to {CRAWL} after {} s",
        opts.size_mib,
        FETCH_MIRROR_RATES.iter().map(|(n, r)| format!("{n} {r}")).collect::<Vec<_>>().join(", "),
        SLOWDOWN_AFTER.as_secs()
    );

    let mut tools: Vec<(String, Vec<String>, String)> = Vec::new();
    let mut bf = vec!["baton-fetch".to_owned(), "-q".into(), "--force".into(), "--no-resume".into(), "--no-mirrors".into(), "-o".into(), out("baton.bin")];
    bf.extend(mirrors.iter().cloned());
    tools.push(("baton-fetch (mirrors)".into(), bf, out("baton.bin")));
    for (x, s) in [(16, 16), (4, 12)] {
        let mut a = vec![
            "aria2c".to_owned(),
            "-q".into(),
            format!("-x{x}"),
            format!("-s{s}"),
            "-k1M".into(),
            "--file-allocation=none".into(),
            "--allow-overwrite=true".into(),
            "--auto-file-renaming=false".into(),
            "-d".into(),
            dir.display().to_string(),
            "-o".into(),
            format!("aria-{x}-{s}.bin"),
        ];
        a.extend(mirrors.iter().cloned());
        tools.push((format!("aria2c -x{x} -s{s} (mirrors)"), a, out(&format!("aria-{x}-{s}.bin"))));
    }
    let metadir = dir.join("aria-meta");
    std::fs::create_dir_all(&metadir)?;
    tools.push((
        "aria2c -x16 -s16 (metalink)".into(),
        [
            "aria2c", "-q", "-x16", "-s16", "-k1M", "--file-allocation=none", "--allow-overwrite=true",
            "--auto-file-renaming=false", "-d", metadir.to_str().unwrap_or("."), &meta,
        ]
        .map(str::to_owned)
        .to_vec(),
        metadir.join("fetch.bin").display().to_string(),
    ));
    if have_axel {
        let mut a = vec!["axel".to_owned(), "-q".into(), "-n".into(), "16".into(), "-o".into(), out("axel.bin")];
        a.extend(mirrors.iter().cloned());
        tools.push(("axel -n16 (mirrors)".into(), a, out("axel.bin")));
    }

    let mut runs = Vec::new();
    for (name, argv, output) in &tools {
        let _ = std::fs::remove_file(output);
        let r = one(&cluster, name, argv, Path::new(output), &sha, slow, slow_rate)?;
        println!("  {:<30} {:>8.2} s  {}", r.tool, r.seconds, if r.ok { "sha-256 ok" } else { &r.note });
        runs.push(r);
    }

    let base = runs.first().map(|r| r.seconds).unwrap_or(1.0);
    let capacity = |t: f64| {
        let s = SLOWDOWN_AFTER.as_secs_f64();
        if t <= s {
            before * t
        } else {
            before * s + after * (t - s)
        }
    };
    println!();
    println!("| tool | seconds | MiB/s | time / baton-fetch | efficiency |");
    println!("|---|---:|---:|---:|---:|");
    for r in &runs {
        if !r.ok {
            println!("| {} | failed after {:.2} s: {} | | | |", r.tool, r.seconds, r.note);
            continue;
        }
        println!(
            "| {} | {:.2} | {:.1} | {:.2} | {:.2} |",
            r.tool,
            r.seconds,
            size as f64 / r.seconds / 1048576.0,
            r.seconds / base,
            (size as f64 / capacity(r.seconds)).min(1.0)
        );
    }
    let bf = &runs[0];
    let best_aria = runs.iter().filter(|r| r.tool.starts_with("aria2c") && r.ok).map(|r| r.seconds).fold(f64::INFINITY, f64::min);
    let eff = size as f64 / capacity(bf.seconds);
    println!();
    println!(
        "baton-fetch against the best aria2c: {:.2}x faster ({}); efficiency {:.2} ({})",
        best_aria / bf.seconds,
        if bf.seconds < best_aria { "target met" } else { "target missed" },
        eff,
        if eff >= EFFICIENCY_TARGET { "target met" } else { "target missed" }
    );
    if !have_axel {
        println!("axel: not installed (apt-get install axel failed); left out");
    }
    if runs.iter().any(|r| !r.ok && r.tool.starts_with("baton")) {
        bail!("baton-fetch's download was wrong: {}", bf.note);
    }
    Ok(())
}

/// One download by one tool in the client, with the slowdown at [`SLOWDOWN_AFTER`].
fn one(cluster: &Cluster, name: &str, argv: &[String], output: &Path, sha: &str, slow: &str, slow_rate: &str) -> anyhow::Result<Run> {
    let program = if argv[0] == "baton-fetch" { baton_tests::bin_dir().join("baton-fetch").display().to_string() } else { argv[0].clone() };
    let mut child = cluster
        .lab
        .command(CLIENT, &program)?
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let started = Instant::now();
    let mut slowed = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if !slowed && started.elapsed() >= SLOWDOWN_AFTER {
            cluster.lab.set_rate(slow, CRAWL.parse::<Rate>().map_err(|e| anyhow::anyhow!("{e}"))?)?;
            slowed = true;
        }
        if started.elapsed() > DOWNLOAD_LIMIT {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = started.elapsed().as_secs_f64();
    cluster.lab.set_rate(slow, slow_rate.parse::<Rate>().map_err(|e| anyhow::anyhow!("{e}"))?)?;
    let stderr = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
    let (ok, note) = match status {
        None => (false, format!("gave up after {} s", DOWNLOAD_LIMIT.as_secs())),
        Some(st) if !st.success() => (false, format!("exit {st}: {}", stderr.lines().last().unwrap_or_default())),
        Some(_) => match sha256_file(output) {
            Ok(got) if got == sha => (true, String::new()),
            Ok(got) => (false, format!("wrong SHA-256 {got}")),
            Err(e) => (false, format!("no output: {e}")),
        },
    };
    // The next tool starts from quiet links.
    std::thread::sleep(Duration::from_secs(1));
    Ok(Run { tool: name.to_owned(), seconds, ok, note })
}

/// Installs axel when missing; false when that fails (the benchmark then leaves it out).
fn ensure_axel() -> bool {
    let have = |c: &str| Command::new("sh").args(["-c", &format!("command -v {c}")]).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if have("axel") {
        return true;
    }
    eprintln!("xtask: installing axel with apt for the comparison");
    let _ = Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends", "axel"]).env("DEBIAN_FRONTEND", "noninteractive").status();
    have("axel")
}

//! `cargo xtask demo | test | bench | soak | lab`: the README's commands.
//!
//! Both `demo` and `test` install what is missing on a Debian host (saying what, via apt), build
//! the release binaries, and then run; neither needs any other set-up step.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use baton_tests::{curl_download, Cluster, ClusterOptions};
use clap::{Parser, Subcommand};

mod bench_breakdown;
mod bench_bpf;
mod bench_e2e;
mod bench_fetch;
mod bench_move;
mod bench_peers;
mod report;

/// Size of the object each demo client downloads.
const DEMO_OBJECT_BYTES: usize = 64 << 20;
/// The benchmark's large object.
const BENCH_LARGE_BYTES: usize = 256 << 20;
/// Requests per side for the time-to-first-byte comparison.
const BENCH_TTFB_REQUESTS: usize = 200;
/// Duration of each request-rate run.
const BENCH_RATE_SECONDS: u64 = 5;
/// Client threads of the request-rate runs, each with one connection at a time.
const BENCH_RATE_THREADS: usize = 8;
/// Rounds of the large download, alternating handoff and direct.
const BENCH_LARGE_ROUNDS: usize = 7;

/// Commands and the Debian packages that provide them.
const REQUIRED_COMMANDS: &[(&str, &str)] =
    &[
        ("clang", "clang"),
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("curl", "curl"),
        ("tcpdump", "tcpdump"),
        // The baton-fetch tests: a real FTP mirror, and aria2 reading the main's metalink.
        ("vsftpd", "vsftpd"),
        ("aria2c", "aria2"),
        // The peer-cache tests block multicast in the lab with nftables.
        ("nft", "nftables"),
        // bench e2e reads the main's BPF program run time.
        ("bpftool", "bpftool"),
        // `bench e2e`: the conventional reverse proxy and the load generator Baton is compared with.
        ("nginx", "nginx"),
        ("wrk", "wrk"),
    ];
/// Header files and the Debian packages that provide them.
const REQUIRED_FILES: &[(&str, &str)] =
    &[("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"), ("/usr/include/linux/bpf.h", "linux-libc-dev")];

#[derive(Debug, Parser)]
#[command(about = "Baton's build, demo, test and benchmark commands")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what is missing, build, bring up the default lab and download through the VIP.
    Demo {
        /// Leave the lab and servers running afterwards (tear down with `cargo xtask lab down`).
        #[arg(long)]
        keep: bool,
    },
    /// Install what is missing, build, and run the whole test suite (lab tests included).
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks (side-by-side ratios in one run).
    Bench {
        #[arg(value_parser = ["all", "handoff", "bpf", "e2e", "breakdown", "move", "fetch", "peers"])]
        which: String,
        /// `move`, `fetch`, `peers`: size of the downloaded object in MiB (default 256; 128 for
        /// `peers`).
        #[arg(long)]
        size_mib: Option<u64>,
        /// `move`: graceful moves during the first download.
        #[arg(long, default_value_t = 3)]
        moves: usize,
        /// `move`: kills of the serving participant during the second download.
        #[arg(long, default_value_t = 2)]
        kills: usize,
        /// `move`: keep the client's captures (move.pcap, kill.pcap) in this directory.
        #[arg(long)]
        keep_pcap: Option<PathBuf>,
    },
    /// The soak test at a chosen length; its report goes to `results/soak-<date>-<mode>.md`.
    Soak {
        /// Length in seconds (the test suite runs it for 600).
        #[arg(long, default_value_t = 600)]
        secs: u64,
        /// The main's data plane: tc, xdp or userspace.
        #[arg(long, default_value = "tc", value_parser = ["tc", "xdp", "userspace"])]
        dataplane: String,
        /// Seed of the event schedule (default: the time).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Drive baton-lab (up, down, status, exec ...).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Demo { keep } => {
            ensure_host()?;
            build()?;
            demo(keep)
        }
        Cmd::Test { args } => {
            ensure_host()?;
            build()?;
            test(&args)
        }
        Cmd::Soak { secs, dataplane, seed } => {
            ensure_host()?;
            build()?;
            soak(secs, &dataplane, seed)
        }
        Cmd::Bench { which, size_mib, moves, kills, keep_pcap } => {
            ensure_host()?;
            build()?;
            match which.as_str() {
                "handoff" => bench_handoff(),
                "all" => bench_all(),
                "bpf" => bench_one(bench_bpf::run),
                "e2e" => bench_one(bench_e2e::run),
                "breakdown" => bench_one(bench_breakdown::run),
                "move" => bench_move::run(bench_move::Options { size_mib: size_mib.unwrap_or(256), moves, kills, keep_pcap }),
                "fetch" => bench_fetch::run(bench_fetch::Options { size_mib: size_mib.unwrap_or(256) }),
                "peers" => bench_peers::run(bench_peers::Options { size_mib: size_mib.unwrap_or(128) }),
                other => bail!("unknown benchmark {other}"),
            }
        }
        Cmd::Lab { args } => {
            build()?;
            let st = Command::new(root.join("target/release/baton-lab")).args(&args).status()?;
            std::process::exit(st.code().unwrap_or(1));
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn have_command(cmd: &str) -> bool {
    // Daemons (vsftpd) live in sbin, which a non-login PATH may lack.
    let sbin = ["/usr/sbin", "/sbin"].map(std::path::PathBuf::from);
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).chain(sbin).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Installs missing tools with apt (saying which), checks root, and mounts bpffs.
fn ensure_host() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    for (cmd, pkg) in REQUIRED_COMMANDS {
        if !have_command(cmd) && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    for (file, pkg) in REQUIRED_FILES {
        if !Path::new(file).exists() && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    let arch_asm = format!("/usr/include/{}-linux-gnu/asm/types.h", std::env::consts::ARCH);
    if !Path::new(&arch_asm).exists() && !missing.contains(&"linux-libc-dev") {
        missing.push("linux-libc-dev");
    }
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing packages {missing:?}; install them as root: apt-get install {}", missing.join(" "));
        }
        eprintln!("xtask: installing missing packages with apt: {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        {
            // Packages with a daemon (nginx, vsftpd) must not start it on the host: the labs run
            // their own instances in namespaces.
            let _no_start = NoServiceStart::install()?;
            run(Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
        if missing.contains(&"nginx") {
            stop_packaged_nginx();
        }
    }
    if !is_root() {
        bail!("the lab needs root (network namespaces, TCP_REPAIR, BPF): run this as root");
    }
    if !Path::new("/sys/fs/bpf").exists() || !is_bpffs("/sys/fs/bpf") {
        eprintln!("xtask: mounting bpffs at /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

/// Debian's `policy-rc.d` hook: while it exits 101, package installs start no service.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Keeps apt from starting services while it lives: writes [`POLICY_RC_D`] when there is
/// none and removes it again on drop (an existing one is left as it is).
struct NoServiceStart {
    created: bool,
}

impl NoServiceStart {
    fn install() -> anyhow::Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { created: false });
        }
        std::fs::write(POLICY_RC_D, "#!/bin/sh\n# written by cargo xtask while it installs packages\nexit 101\n")
            .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("chmod {POLICY_RC_D}"))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

/// Makes sure the nginx service of the Debian package is neither running nor enabled on the
/// host (it would hold port 80): disabled through systemd when systemd runs, else stopped.
fn stop_packaged_nginx() {
    if Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl").args(["disable", "--now", "nginx"]).status();
    } else if Path::new("/run/nginx.pid").exists() {
        let _ = Command::new("nginx").args(["-s", "stop"]).status();
    }
}

fn is_bpffs(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(path) && l.split_whitespace().nth(2) == Some("bpf")))
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

fn build() -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "--bins", "-p", "baton-main", "-p", "baton-participant", "-p", "baton-lab", "-p", "baton-fetch"]))
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    run(cargo().args(["test", "--release", "--workspace"]).args(extra))
}

fn soak(secs: u64, dataplane: &str, seed: Option<u64>) -> anyhow::Result<()> {
    std::fs::create_dir_all("results")?;
    let report = Path::new("results").join(format!("soak-{}-{dataplane}.md", report::utc_date_today()));
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "baton-tests", "--test", "soak", "--", "--nocapture"])
        .env("BATON_SOAK_SECS", secs.to_string())
        .env("BATON_TEST_DATAPLANES", dataplane)
        .env("BATON_SOAK_REPORT", &report);
    if let Some(seed) = seed {
        cmd.env("BATON_SOAK_SEED", seed.to_string());
    }
    run(&mut cmd)?;
    println!("report: {}", report.display());
    Ok(())
}

fn demo(keep: bool) -> anyhow::Result<()> {
    let mut opts = ClusterOptions::new("baton", "198.18.0.0/21");
    opts.participants = true;
    println!("Bringing up the default lab (router, main, 3 participants, 3 clients) ...");
    let cluster = Cluster::start(&opts)?;
    let sha = cluster.write_object("demo.bin", DEMO_OBJECT_BYTES, 0x5eed)?;
    println!("Origin object demo.bin: {} MiB, sha256 {}", DEMO_OBJECT_BYTES >> 20, &sha[..16]);
    println!();
    println!("{:<8} {:<10} {:>10} {:>10} {:>10} {:>8} {:>10}", "client", "served by", "distance", "bytes", "MB/s", "sha256", "only VIP");
    let mut all_ok = true;
    for client in cluster.client_names() {
        let cap = cluster.capture(&client)?;
        let dl = curl_download(&cluster, &client, &cluster.vip_url("demo.bin"), &[])?;
        let packets = cap.finish()?;
        let client_ip = cluster.addr(&client)?;
        let vip = cluster.lab.vip();
        let to_client: Vec<_> = packets.iter().filter(|p| p.dst == client_ip).collect();
        let only_vip = !to_client.is_empty() && to_client.iter().all(|p| p.src == vip);
        let served = dl.served_by().unwrap_or("?").to_owned();
        let distance = distance_km(&cluster, &client, &served).map(|d| format!("{d:.0} km")).unwrap_or_else(|| "-".into());
        let ok = dl.exit == 0 && dl.sha256 == sha;
        all_ok &= ok && only_vip;
        println!(
            "{:<8} {:<10} {:>10} {:>10} {:>10.1} {:>8} {:>10}",
            client,
            served,
            distance,
            dl.bytes,
            dl.bytes as f64 / dl.seconds.max(1e-9) / 1e6,
            if ok { "match" } else { "MISMATCH" },
            if only_vip { "yes" } else { "NO" }
        );
    }
    println!();
    let stats = cluster.batonctl(&["stats"])?;
    print!("{}", String::from_utf8_lossy(&stats.stdout));
    if keep {
        println!("\nThe lab keeps running: `cargo xtask lab status`; tear down with `cargo xtask lab down --name baton`.");
        cluster.detach();
    }
    if !all_ok {
        bail!("the demo saw a failed download, a digest mismatch or a non-VIP source address");
    }
    Ok(())
}

fn distance_km(cluster: &Cluster, a: &str, b: &str) -> Option<f64> {
    let la = cluster.lab.node(a).ok()?.location.clone()?;
    let lb = cluster.lab.node(b).ok()?.location.clone()?;
    let ca = baton_shared::geo::Coord::new(la.lat, la.lon).ok()?;
    let cb = baton_shared::geo::Coord::new(lb.lat, lb.lon).ok()?;
    Some(baton_shared::geo::distance_km(ca, cb))
}

/// Bytes per second of one download of `url` into /dev/null; fails unless it is complete.
fn throughput(cluster: &Cluster, client: &str, url: &str) -> anyhow::Result<f64> {
    let out = cluster.exec(client, &["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total} %{http_code}", url])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let f: Vec<&str> = text.split_whitespace().collect();
    if !out.status.success() || f.len() != 3 || f[2] != "200" || f[0] != BENCH_LARGE_BYTES.to_string() {
        bail!("{url}: incomplete download ({text}): {}", String::from_utf8_lossy(&out.stderr));
    }
    let secs: f64 = f[1].parse().context("curl timing")?;
    Ok(BENCH_LARGE_BYTES as f64 / secs)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Time to first byte of `n` fresh connections, in microseconds, sorted.
fn ttfb(cluster: &Cluster, client: &str, url: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let out = cluster.exec(client, &["curl", "-sS", "-o", "/dev/null", "-w", "%{time_starttransfer}", url])?;
        if !out.status.success() {
            bail!("curl {url} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let s: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("curl timing")?;
        v.push(s * 1e6);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v)
}

/// Runs one benchmark of the side-by-side suite and prints its comparisons as markdown (even
/// when it failed part-way: what it measured before is shown, then the error).
fn bench_one(run: fn(&mut report::Report) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut report = report::Report::default();
    let result = run(&mut report);
    println!();
    print!("{}", report.markdown(&report::utc_date_today()));
    result
}

/// The benchmarks of `bench all`, in order.
const BENCH_ALL: &[(&str, fn(&mut report::Report) -> anyhow::Result<()>)] =
    &[("bpf", bench_bpf::run), ("e2e", bench_e2e::run), ("breakdown", bench_breakdown::run)];

/// `bench all`: every benchmark of the side-by-side suite in one run. A benchmark that fails is
/// recorded in the report's context and the others still run; then `results/<date>.md`,
/// `results/<date>.svg` and the README's table are written.
fn bench_all() -> anyhow::Result<()> {
    let mut report = report::Report::default();
    for (name, run) in BENCH_ALL {
        println!("== bench {name}");
        if let Err(e) = run(&mut report) {
            eprintln!("xtask: bench {name} failed: {e:#}");
            report.context.push(format!("bench {name} failed: {e:#}"));
        }
    }
    let date = report::utc_date_today();
    println!();
    print!("{}", report.markdown(&date));
    let written = report::write_results(&report, &workspace_root(), &date)?;
    println!();
    println!("Wrote {}, {} and the table in {}", written.markdown.display(), written.svg.display(), written.readme.display());
    Ok(())
}

fn bench_handoff() -> anyhow::Result<()> {
    let cluster = Cluster::start(&ClusterOptions::new("bbench", "198.19.200.0/21"))?;
    let client = cluster.client_names().into_iter().next().context("no client")?;
    let sha = cluster.write_object("large.bin", BENCH_LARGE_BYTES, 7)?;
    cluster.write_object("small.bin", 4096, 8)?;
    // Warm the participant's cache and learn which participant serves this client.
    let warm = curl_download(&cluster, &client, &cluster.vip_url("large.bin"), &[])?;
    let served = warm.served_by().context("no X-Served-By")?.to_owned();
    let direct_base = format!("http://{}", cluster.addr(&served)?);
    curl_download(&cluster, &client, &format!("{direct_base}/small.bin"), &[])?;

    println!("(a) 256 MiB download, client {client} -> participant {served}");
    // Bytes are verified once per path; the timed rounds discard the body so that writing it
    // does not compete with the transfer for the machine's cores.
    for url in [cluster.vip_url("large.bin"), format!("{direct_base}/large.bin")] {
        let dl = curl_download(&cluster, &client, &url, &[])?;
        if dl.exit != 0 || dl.sha256 != sha {
            bail!("{url}: digest mismatch or failure during the benchmark: {}", dl.stderr);
        }
    }
    let mut ratios = Vec::new();
    for round in 0..BENCH_LARGE_ROUNDS {
        let tv = throughput(&cluster, &client, &cluster.vip_url("large.bin"))?;
        let td = throughput(&cluster, &client, &format!("{direct_base}/large.bin"))?;
        ratios.push(tv / td);
        println!("    round {round}: handoff {:.0} MB/s, direct {:.0} MB/s, ratio {:.3}", tv / 1e6, td / 1e6, tv / td);
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!("    median ratio handoff/direct: {:.3} (target >= 0.9)", ratios[ratios.len() / 2]);

    println!("(b) time to first byte, {BENCH_TTFB_REQUESTS} new connections each, 4 KiB object");
    let via = ttfb(&cluster, &client, &cluster.vip_url("small.bin"), BENCH_TTFB_REQUESTS)?;
    let direct = ttfb(&cluster, &client, &format!("{direct_base}/small.bin"), BENCH_TTFB_REQUESTS)?;
    let (v50, v99, d50, d99) = (percentile(&via, 0.5), percentile(&via, 0.99), percentile(&direct, 0.5), percentile(&direct, 0.99));
    println!("    handoff: p50 {v50:.0} us, p99 {v99:.0} us");
    println!("    direct:  p50 {d50:.0} us, p99 {d99:.0} us");
    println!("    added by the handoff at p50: {:.0} us (target <= 150 us); ratio p50 {:.2}", v50 - d50, v50 / d50);

    println!("(c) request rate: {BENCH_RATE_THREADS} client threads, a new connection per 4 KiB GET, {BENCH_RATE_SECONDS} s each");
    let before = handoffs(&cluster)?;
    let via = request_rate(&cluster, &client, SocketAddrV4::new(cluster.lab.vip(), 80))?;
    let handed = handoffs(&cluster)? - before;
    let direct = request_rate(&cluster, &client, SocketAddrV4::new(cluster.addr(&served)?, 80))?;
    println!(
        "    through the handoff: {:.0} req/s ({handed} handoffs, {} failed); direct: {:.0} req/s ({} failed); ratio {:.2}",
        via.per_second(),
        via.failed,
        direct.per_second(),
        direct.failed,
        via.per_second() / direct.per_second()
    );
    drop(cluster);
    Ok(())
}

/// Completed and failed requests of a rate run.
#[derive(Debug, Clone, Copy)]
struct Rate {
    done: u64,
    failed: u64,
    seconds: f64,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.done as f64 / self.seconds
    }
}

/// Runs closed-loop clients in `client`'s namespace for [`BENCH_RATE_SECONDS`]: each thread
/// connects, sends `GET /small.bin` with `Connection: close`, reads to EOF, and counts a success
/// when the response is a 200 with the whole body.
fn request_rate(cluster: &Cluster, client: &str, target: SocketAddrV4) -> anyhow::Result<Rate> {
    cluster.in_node(client, move || {
        let deadline = Instant::now() + std::time::Duration::from_secs(BENCH_RATE_SECONDS);
        let start = Instant::now();
        let workers: Vec<_> = (0..BENCH_RATE_THREADS)
            .map(|_| {
                // Threads inherit the namespace of the thread that creates them.
                std::thread::spawn(move || {
                    let (mut done, mut failed) = (0u64, 0u64);
                    let req = b"GET /small.bin HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
                    let mut buf = Vec::with_capacity(8192);
                    while Instant::now() < deadline {
                        buf.clear();
                        let ok = (|| -> std::io::Result<bool> {
                            let mut s = TcpStream::connect_timeout(&target.into(), std::time::Duration::from_secs(2))?;
                            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
                            s.write_all(req)?;
                            s.read_to_end(&mut buf)?;
                            Ok(buf.starts_with(b"HTTP/1.1 200") && buf.len() > 4096)
                        })();
                        match ok {
                            Ok(true) => done += 1,
                            _ => failed += 1,
                        }
                    }
                    (done, failed)
                })
            })
            .collect();
        let (mut done, mut failed) = (0, 0);
        for w in workers {
            let (d, f) = w.join().unwrap_or((0, 1));
            done += d;
            failed += f;
        }
        Rate { done, failed, seconds: start.elapsed().as_secs_f64() }
    })
}

fn handoffs(cluster: &Cluster) -> anyhow::Result<u64> {
    let out = cluster.batonctl(&["--json", "stats"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v.get("handoffs").and_then(|h| h.as_u64()).context("stats without handoffs")
}

//! `cargo xtask bench e2e`: Baton end to end against nginx, every figure measured side by side in
//! one run of one lab, with the paths alternating in rounds.
//!
//! - Goodput of 1 and of 16 concurrent 256 MiB downloads (curl in a client): through the handoff
//!   (VIP), straight from the serving participant's own mirror HTTP (the ceiling), and through
//!   nginx as a reverse proxy on the main in front of that same mirror.
//! - CPU seconds the main spends per GiB delivered during the 16-download batches: baton-main's
//!   process CPU plus its BPF programs' run time, against all nginx processes' CPU.
//! - 4 KiB objects with a new connection per request (wrk): request rate and latency through the
//!   handoff, through the nginx proxy, and from nginx serving the file in the participant's
//!   namespace (the floor).
//!
//! Every download's status and size are checked, and each path's bytes are checked once against
//! the object's SHA-256, so a path that serves wrong bytes fails the benchmark instead of
//! winning it. It must never leave nginx, curl, wrk, the lab, its temp directory or the BPF
//! statistics switch behind: each has a guard that undoes it on drop.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use baton_tests::bench::{self, BpfRunTime, BpfStats, Nginx, ScratchDir, WrkLoad, WrkReport};
use baton_tests::{curl_download, pseudo_random, Cluster, ClusterOptions};

use crate::report::{Comparison, Measured, Report, Target};

/// Lab name and address block of this benchmark (unique among the labs that may run at once).
const LAB_NAME: &str = "be2e";
const LAB_BLOCK: &str = "198.18.208.0/21";

/// The large object, its size and the seed of its bytes.
const LARGE_OBJECT: &str = "large.bin";
const LARGE_BYTES: u64 = 256 << 20;
const LARGE_SEED: u64 = 0xe2e0_0256;
/// The small object of the request-rate runs, its size and seed.
const SMALL_OBJECT: &str = "small.bin";
const SMALL_BYTES: usize = 4 << 10;
const SMALL_SEED: u64 = 0xe2e0_0004;

/// Concurrent downloads of the goodput runs: one alone, and enough to keep both cores busy.
const CONCURRENCY: [usize; 2] = [1, 16];
/// Rounds of each goodput comparison; each round runs every path once (the order rotates).
const LARGE_ROUNDS: usize = 3;
/// Rounds of the small-object comparison, alternating the paths the same way.
const SMALL_ROUNDS: usize = 3;
/// curl gives up on one 256 MiB download after this long (a stuck path fails the benchmark
/// instead of hanging it); 16 at once at 10 MB/s each would still finish.
const CURL_MAX_SECONDS: &str = "180";

/// Port of the participants' mirror HTTP on their own addresses (the harness's default).
const MIRROR_PORT: u16 = 80;
/// Port of the VIP's HTTP listener on the main.
const VIP_PORT: u16 = 80;
/// Port of the nginx reverse proxy on the main's own address (beside baton-main's origin 8081,
/// control 7100 and admin ports).
const PROXY_PORT: u16 = 8080;
/// Port of the nginx file server on the participant's own address (its mirror has port 80).
const NGINX_DIRECT_PORT: u16 = 8088;
/// Idle keep-alive connections each nginx worker keeps to the upstream mirror: more than the
/// 16 concurrent requests, so no request waits for a new upstream connection in steady state.
const PROXY_UPSTREAM_KEEPALIVE: u32 = 32;

/// The wrk load of the small-object runs: two threads (one per core), 16 connections, each
/// request on a new connection, 5 s per run.
const WRK_LOAD: WrkLoad = WrkLoad { threads: 2, connections: 16, seconds: 5, close: true };
/// One connection at a time, for the latency without queueing behind other requests (shown in
/// the note of "added at p50").
const UNLOADED_LOAD: WrkLoad = WrkLoad { threads: 1, connections: 1, seconds: 3, close: true };

/// Sequential curl requests per path whose phases (connect, first byte) go into the note of
/// "added at p50", to show where a request's time goes.
const CURL_PHASE_SAMPLES: usize = 20;
/// Goodput through the handoff must reach this share of the direct path's.
const GOODPUT_TARGET: f64 = 0.9;
/// The main's CPU per GiB with Baton must be at most this share of nginx's (20x lower).
const CPU_TARGET: f64 = 0.05;
/// Latency the handoff may add at p50 over nginx serving the file itself, in microseconds.
const ADDED_P50_TARGET_US: f64 = 150.0;

const SECTION_GOODPUT: &str = "Goodput";
const SECTION_CPU: &str = "Main CPU per GiB";
const SECTION_SMALL: &str = "Small objects (4 KiB)";

/// Commands this benchmark runs and the Debian packages that have them.
const TOOLS: [(&str, &str); 4] = [("nginx", "nginx"), ("wrk", "wrk"), ("bpftool", "bpftool"), ("curl", "curl")];

/// The three ways a client gets the large object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Large {
    Handoff,
    Direct,
    Proxy,
}

const LARGE_PATHS: [Large; 3] = [Large::Handoff, Large::Direct, Large::Proxy];

impl Large {
    fn label(self) -> &'static str {
        match self {
            Large::Handoff => "handoff",
            Large::Direct => "direct",
            Large::Proxy => "nginx reverse proxy",
        }
    }

    fn index(self) -> usize {
        match self {
            Large::Handoff => 0,
            Large::Direct => 1,
            Large::Proxy => 2,
        }
    }
}

/// Where the small object is fetched from, in the order of [`Small::index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Small {
    Handoff,
    Proxy,
    NginxDirect,
}

const SMALL_PATHS: [Small; 3] = [Small::Handoff, Small::Proxy, Small::NginxDirect];

impl Small {
    fn label(self) -> &'static str {
        match self {
            Small::Handoff => "handoff",
            Small::Proxy => "nginx reverse proxy",
            Small::NginxDirect => "nginx direct",
        }
    }

    fn index(self) -> usize {
        match self {
            Small::Handoff => 0,
            Small::Proxy => 1,
            Small::NginxDirect => 2,
        }
    }
}

/// Addresses of the run: the client, the serving participant, the URLs of each path.
#[derive(Debug)]
struct Setup {
    client: String,
    participant: String,
    main_node: String,
    main_addr: Ipv4Addr,
    participant_addr: Ipv4Addr,
    vip: Ipv4Addr,
}

impl Setup {
    fn large_url(&self, path: Large) -> String {
        match path {
            Large::Handoff => format!("http://{}:{VIP_PORT}/{LARGE_OBJECT}", self.vip),
            Large::Direct => format!("http://{}:{MIRROR_PORT}/{LARGE_OBJECT}", self.participant_addr),
            Large::Proxy => format!("http://{}:{PROXY_PORT}/{LARGE_OBJECT}", self.main_addr),
        }
    }

    fn small_url(&self, path: Small) -> String {
        match path {
            Small::Handoff => format!("http://{}:{VIP_PORT}/{SMALL_OBJECT}", self.vip),
            Small::Proxy => format!("http://{}:{PROXY_PORT}/{SMALL_OBJECT}", self.main_addr),
            Small::NginxDirect => format!("http://{}:{NGINX_DIRECT_PORT}/{SMALL_OBJECT}", self.participant_addr),
        }
    }
}

/// Runs the benchmark and adds its comparisons to `report`.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
    check_tools()?;
    let versions = versions();
    report.context.push(format!("bench e2e: {versions}"));
    println!("bench e2e: {versions}");

    // Drop order (reverse of declaration): the nginx servers, then the cluster and its lab, then
    // the scratch directory their files are in.
    let scratch = ScratchDir::new("be2e")?;
    let cluster = Cluster::start(&ClusterOptions::new(LAB_NAME, LAB_BLOCK))?;
    let client = cluster.client_names().into_iter().next().context("the lab has no client")?;
    let large_sha = cluster.write_object(LARGE_OBJECT, usize::try_from(LARGE_BYTES)?, LARGE_SEED)?;
    let small_sha = cluster.write_object(SMALL_OBJECT, SMALL_BYTES, SMALL_SEED)?;

    // The first download through the VIP fills the participant's cache (from the origin,
    // verified) and says which participant serves this client; its bytes are checked.
    let vip = cluster.lab.vip();
    let first = curl_download(&cluster, &client, &format!("http://{vip}:{VIP_PORT}/{LARGE_OBJECT}"), &[])?;
    check_download("handoff", &first, &large_sha, LARGE_BYTES)?;
    let participant = first.served_by().context("the handoff's response has no X-Served-By")?.to_owned();
    let main_node = cluster.main_node()?;
    let setup = Setup {
        main_addr: cluster.addr(&main_node)?,
        participant_addr: cluster.addr(&participant)?,
        client,
        participant,
        main_node,
        vip,
    };
    println!("    client {} -> participant {} ({}); main {}", setup.client, setup.participant, setup.participant_addr, setup.main_addr);

    let proxy_dir = scratch.subdir("proxy")?;
    let proxy = Nginx::start(
        &cluster,
        &setup.main_node,
        &proxy_dir,
        &proxy_http(&setup, &proxy_dir),
        SocketAddrV4::new(setup.main_addr, PROXY_PORT),
    )?;
    let docroot = scratch.subdir("docroot")?;
    write_docroot(&docroot)?;
    let direct_dir = scratch.subdir("direct")?;
    let nginx_direct = Nginx::start(
        &cluster,
        &setup.participant,
        &direct_dir,
        &direct_http(&setup, &direct_dir, &docroot),
        SocketAddrV4::new(setup.participant_addr, NGINX_DIRECT_PORT),
    )?;

    // Every path's bytes, once: the timed runs discard the body.
    for path in [Large::Direct, Large::Proxy] {
        let dl = curl_download(&cluster, &setup.client, &setup.large_url(path), &[])?;
        check_download(path.label(), &dl, &large_sha, LARGE_BYTES)?;
    }
    for path in SMALL_PATHS {
        let dl = curl_download(&cluster, &setup.client, &setup.small_url(path), &[])?;
        check_download(path.label(), &dl, &small_sha, SMALL_BYTES as u64)?;
    }
    println!("    SHA-256 checked on every path (256 MiB: handoff, direct, nginx proxy; 4 KiB: handoff, nginx proxy, nginx direct)");

    let cpu = goodput(&cluster, &setup, &proxy, report)?;
    report.push(cpu);
    small_objects(&cluster, &setup, &proxy, &nginx_direct, report)?;
    drop(nginx_direct);
    drop(proxy);
    drop(cluster);
    drop(scratch);
    Ok(())
}

/// Fails unless every command the benchmark runs is installed.
fn check_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS.iter().filter(|(cmd, _)| !have_command(cmd)).map(|(_, pkg)| *pkg).collect();
    if !missing.is_empty() {
        bail!("bench e2e needs {missing:?}: apt-get install {}", missing.join(" "));
    }
    Ok(())
}

fn have_command(cmd: &str) -> bool {
    let sbin = ["/usr/sbin", "/sbin"].map(std::path::PathBuf::from);
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).chain(sbin).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// First line a command prints about its version (on stdout or stderr, whatever its status).
fn version_of(cmd: &str, arg: &str) -> String {
    match std::process::Command::new(cmd).arg(arg).stdin(Stdio::null()).output() {
        Ok(out) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            text.lines().next().unwrap_or("?").trim().to_owned()
        }
        Err(e) => format!("{cmd}: {e}"),
    }
}

fn versions() -> String {
    format!("{}; {}; {}", version_of("nginx", "-v"), version_of("wrk", "-v"), version_of("bpftool", "--version"))
}

fn check_download(what: &str, dl: &baton_tests::Download, sha: &str, size: u64) -> anyhow::Result<()> {
    if dl.exit != 0 || dl.bytes != size || dl.sha256 != sha {
        bail!("{what}: download failed or wrong bytes (exit {}, {} of {size} bytes, sha256 {}): {}", dl.exit, dl.bytes, dl.sha256, dl.stderr);
    }
    Ok(())
}

/// The proxy's `http {}` body: production settings for large downloads. Buffering on (nginx
/// reads the upstream into memory buffers as fast as it can and frees the upstream early), no
/// spooling to temp files (a 256 MiB response would otherwise be written to disk and read back),
/// HTTP/1.1 keep-alive to the upstream, buffered access log.
fn proxy_http(s: &Setup, dir: &Path) -> String {
    format!(
        "    access_log {log} combined buffer=64k flush=1s;\n\
         \x20   sendfile on;\n\
         \x20   tcp_nopush on;\n\
         \x20   tcp_nodelay on;\n\
         \x20   keepalive_timeout 65s;\n\
         \x20   upstream mirror {{\n\
         \x20       server {addr}:{MIRROR_PORT};\n\
         \x20       keepalive {PROXY_UPSTREAM_KEEPALIVE};\n\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {listen}:{PROXY_PORT} reuseport;\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://mirror;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_set_header Host $host;\n\
         \x20           proxy_buffering on;\n\
         \x20           proxy_buffer_size 64k;\n\
         \x20           proxy_buffers 32 64k;\n\
         \x20           proxy_busy_buffers_size 256k;\n\
         \x20           proxy_max_temp_file_size 0;\n\
         \x20       }}\n\
         \x20   }}",
        log = dir.join("access.log").display(),
        addr = s.participant_addr,
        listen = s.main_addr,
    )
}

/// The participant-side nginx's `http {}` body: a static file server with sendfile and an open
/// file cache, as nginx serves files in production.
fn direct_http(s: &Setup, dir: &Path, docroot: &Path) -> String {
    format!(
        "    access_log {log} combined buffer=64k flush=1s;\n\
         \x20   sendfile on;\n\
         \x20   tcp_nopush on;\n\
         \x20   tcp_nodelay on;\n\
         \x20   keepalive_timeout 65s;\n\
         \x20   open_file_cache max=1000 inactive=60s;\n\
         \x20   server {{\n\
         \x20       listen {listen}:{NGINX_DIRECT_PORT} reuseport;\n\
         \x20       root {root};\n\
         \x20   }}",
        log = dir.join("access.log").display(),
        listen = s.participant_addr,
        root = docroot.display(),
    )
}

/// The same 4 KiB object as the origin's, readable by nginx's unprivileged workers.
fn write_docroot(docroot: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = docroot.join(SMALL_OBJECT);
    std::fs::write(&file, pseudo_random(SMALL_BYTES, SMALL_SEED)).with_context(|| format!("writing {}", file.display()))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).with_context(|| format!("chmod {}", file.display()))?;
    Ok(())
}

/// curl processes of one batch; those still running are killed on drop.
#[derive(Debug, Default)]
struct Curls(Vec<Child>);

impl Drop for Curls {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Goodput of `n` concurrent downloads of the large object from `url`, in bytes per second,
/// bodies discarded. One download: curl's own transfer time; several: all bytes over the wall
/// time from starting the first curl to the exit of the last. Fails unless every download is a
/// complete 200.
fn batch(cluster: &Cluster, client: &str, url: &str, n: usize) -> anyhow::Result<f64> {
    let mut curls = Curls::default();
    let start = Instant::now();
    for _ in 0..n {
        let child = cluster
            .lab
            .command(client, "curl")?
            .args(["-sS", "--max-time", CURL_MAX_SECONDS, "-o", "/dev/null", "-w", "%{size_download} %{time_total} %{http_code}", url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting curl")?;
        curls.0.push(child);
    }
    let mut curl_seconds = 0.0f64;
    // Waiting in reverse start order; the wall time ends when the last one has exited.
    while let Some(child) = curls.0.pop() {
        let out = child.wait_with_output().context("waiting for curl")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let f: Vec<&str> = text.split_whitespace().collect();
        if !out.status.success() || f.len() != 3 || f[2] != "200" || f[0] != LARGE_BYTES.to_string() {
            bail!("{url}: incomplete download ({text}): {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        curl_seconds = curl_seconds.max(f[1].parse().with_context(|| format!("curl's time_total {:?}", f[1]))?);
    }
    let wall = start.elapsed().as_secs_f64();
    let seconds = if n == 1 { curl_seconds } else { wall };
    Ok((LARGE_BYTES * n as u64) as f64 / seconds)
}

/// What the main spends: baton-main's CPU and its BPF programs' run time.
#[derive(Debug)]
struct MainCost {
    pid: i32,
    programs: Vec<u32>,
}

impl MainCost {
    fn snapshot(&self) -> anyhow::Result<(f64, BpfRunTime)> {
        let cpu = bench::process_cpu(self.pid).context("baton-main's CPU time")?;
        Ok((cpu.own, bench::programs_run_time(&self.programs)?))
    }
}

/// The goodput rows (pushed here) and the main-CPU row (returned), from the same batches.
fn goodput(cluster: &Cluster, s: &Setup, proxy: &Nginx, report: &mut Report) -> anyhow::Result<Comparison> {
    let stats = BpfStats::enable()?;
    let main = MainCost {
        pid: bench::process_named(cluster, &s.main_node, "baton-main")?,
        programs: bench::pinned_link_programs(&cluster.lab.pin_dir().join("main"))?,
    };
    let mut cpu_baton = Vec::new();
    let mut cpu_nginx = Vec::new();
    let mut bpf_total = BpfRunTime::default();
    let mut proc_total = 0.0;
    for n in CONCURRENCY {
        println!("    {n} x 256 MiB, {LARGE_ROUNDS} rounds (handoff / direct / nginx proxy, order rotating)");
        let mut rates: [Vec<f64>; 3] = Default::default();
        for round in 0..LARGE_ROUNDS {
            let mut line = format!("      round {round}:");
            for k in 0..LARGE_PATHS.len() {
                let path = LARGE_PATHS[(round + k) % LARGE_PATHS.len()];
                let url = s.large_url(path);
                let measure_cpu = n == *CONCURRENCY.iter().max().unwrap_or(&1);
                let gib = (LARGE_BYTES * n as u64) as f64 / f64::from(1u32 << 30);
                let rate = match path {
                    Large::Handoff if measure_cpu => {
                        let (p0, b0) = main.snapshot()?;
                        let rate = batch(cluster, &s.client, &url, n)?;
                        let (p1, b1) = main.snapshot()?;
                        let bpf = BpfRunTime { runs: b1.runs.saturating_sub(b0.runs), nanos: b1.nanos.saturating_sub(b0.nanos) };
                        proc_total += p1 - p0;
                        bpf_total.runs += bpf.runs;
                        bpf_total.nanos += bpf.nanos;
                        cpu_baton.push(((p1 - p0) + bpf.nanos as f64 / 1e9) / gib);
                        rate
                    }
                    Large::Proxy if measure_cpu => {
                        let c0 = proxy.cpu_seconds()?;
                        let rate = batch(cluster, &s.client, &url, n)?;
                        let c1 = proxy.cpu_seconds()?;
                        cpu_nginx.push((c1 - c0) / gib);
                        rate
                    }
                    _ => batch(cluster, &s.client, &url, n)?,
                };
                line.push_str(&format!(" {} {:.0} MB/s", path.label(), rate / 1e6));
                rates[path.index()].push(rate);
            }
            println!("{line}");
        }
        let med = |p: Large| bench::median(&rates[p.index()]) / 1e6;
        let ratios = |reference: Large| -> String {
            rates[Large::Handoff.index()]
                .iter()
                .zip(&rates[reference.index()])
                .map(|(h, r)| format!("{:.2}", h / r))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let what = format!("{n} x 256 MiB");
        let timing = if n == 1 {
            "time = curl's time_total".to_owned()
        } else {
            format!("goodput = {n} x 256 MiB / wall time from the first curl's start to the last one's exit")
        };
        // The method once per section; each row says how it is timed and its per-round ratios.
        let how = if n == CONCURRENCY[0] {
            format!(
                "median of {LARGE_ROUNDS} rounds, paths alternating (order rotated each round); curl in {} with the body \
                 discarded; bytes checked once per path by SHA-256; direct = {}'s own mirror HTTP at {}:{MIRROR_PORT}; nginx \
                 proxy on the main at {}:{PROXY_PORT} (proxy_buffering on, keepalive upstream to that mirror, no temp files), \
                 its traffic crossing the main's 10 Gbit/s lab link twice; ",
                s.client, s.participant, s.participant_addr, s.main_addr,
            )
        } else {
            String::new()
        };
        report.push(Comparison {
            section: SECTION_GOODPUT.to_owned(),
            what: what.clone(),
            subject: Measured::new(Large::Handoff.label(), med(Large::Handoff)),
            reference: Measured::new(Large::Direct.label(), med(Large::Direct)),
            unit: "MB/s".to_owned(),
            higher_is_better: true,
            target: Some(Target::RatioAtLeast(GOODPUT_TARGET)),
            note: format!("{how}{timing}; per-round handoff/direct {}", ratios(Large::Direct)),
        });
        report.push(Comparison {
            section: SECTION_GOODPUT.to_owned(),
            what,
            subject: Measured::new(Large::Handoff.label(), med(Large::Handoff)),
            reference: Measured::new(Large::Proxy.label(), med(Large::Proxy)),
            unit: "MB/s".to_owned(),
            higher_is_better: true,
            target: None,
            note: format!("per-round handoff/nginx proxy {}", ratios(Large::Proxy)),
        });
    }
    drop(stats);
    let ns_per_run = if bpf_total.runs == 0 { 0.0 } else { bpf_total.nanos as f64 / bpf_total.runs as f64 };
    let n = CONCURRENCY.iter().max().unwrap_or(&1);
    Ok(Comparison {
        section: SECTION_CPU.to_owned(),
        what: format!("{n} x 256 MiB"),
        subject: Measured::new("Baton (baton-main + main eBPF)", bench::median(&cpu_baton)),
        reference: Measured::new(Large::Proxy.label(), bench::median(&cpu_nginx)),
        unit: "CPU s/GiB".to_owned(),
        higher_is_better: false,
        target: Some(Target::RatioAtMost(CPU_TARGET)),
        note: format!(
            "median of {LARGE_ROUNDS} rounds of the {n} x 256 MiB goodput batches above, CPU over the GiB delivered in the same batch. \
             Baton: baton-main's utime+stime (all threads, /proc/<pid>/stat; its background work such as heartbeats and health \
             probes included) plus the run_time_ns of the programs behind the main's pinned BPF links (kernel.bpf_stats_enabled=1 \
             during the batches, restored after): in all rounds {:.3} s in baton-main and {} program runs taking {:.3} s \
             ({ns_per_run:.0} ns per run). nginx: utime+stime of its master and workers (all threads) plus reaped children. Not \
             counted on either side: kernel work outside the processes' context and outside BPF (softirq packet receive, \
             IPIP encapsulation's transmit on the main, the kernel's TCP on the main for nginx when it runs in softirq), the \
             participant, the client. Per round: Baton {}, nginx {}",
            proc_total,
            bpf_total.runs,
            bpf_total.nanos as f64 / 1e9,
            cpu_baton.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(", "),
            cpu_nginx.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(", "),
        ),
    })
}

/// The main's handoff counters from `batonctl stats`: handoffs, failed handoffs, requests the
/// main served itself.
fn handoff_counters(cluster: &Cluster) -> anyhow::Result<[u64; 3]> {
    let out = cluster.batonctl(&["--json", "stats"])?;
    if !out.status.success() {
        bail!("batonctl stats failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("batonctl stats JSON")?;
    let get = |k: &str| v.get(k).and_then(|x| x.as_u64()).with_context(|| format!("batonctl stats without {k}"));
    Ok([get("handoffs")?, get("handoff_failures")?, get("local_serves")?])
}

/// CPU microseconds per completed request of the processes on each path, summed over the runs.
#[derive(Debug, Default)]
struct PerRequest {
    /// Per process label: CPU seconds, requests.
    rows: Vec<(String, f64, u64)>,
}

impl PerRequest {
    fn add(&mut self, label: &str, seconds: f64, requests: u64) {
        match self.rows.iter_mut().find(|(l, _, _)| l == label) {
            Some(row) => {
                row.1 += seconds;
                row.2 += requests;
            }
            None => self.rows.push((label.to_owned(), seconds, requests)),
        }
    }

    fn describe(&self) -> String {
        self.rows
            .iter()
            .map(|(l, secs, reqs)| format!("{l} {:.0} us", if *reqs == 0 { 0.0 } else { secs * 1e6 / *reqs as f64 }))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The processes whose CPU a small-object run is charged with.
#[derive(Debug)]
struct SmallCost<'a> {
    main: i32,
    participant: i32,
    proxy: &'a Nginx,
    direct: &'a Nginx,
}

impl SmallCost<'_> {
    /// CPU seconds so far of the processes serving `path`, with their labels.
    fn snapshot(&self, path: Small) -> anyhow::Result<Vec<(&'static str, f64)>> {
        let cpu = |pid| bench::process_cpu(pid).map(|c| c.own);
        Ok(match path {
            Small::Handoff => vec![("baton-main", cpu(self.main)?), ("baton-participant", cpu(self.participant)?)],
            Small::Proxy => vec![("nginx proxy", self.proxy.cpu_seconds()?), ("baton-participant (mirror)", cpu(self.participant)?)],
            Small::NginxDirect => vec![("nginx direct", self.direct.cpu_seconds()?)],
        })
    }
}

/// Medians of curl's connect, first-byte and total times (microseconds) over
/// [`CURL_PHASE_SAMPLES`] sequential requests of `url`, each on a new connection.
fn curl_phases(cluster: &Cluster, client: &str, url: &str) -> anyhow::Result<String> {
    let mut v: [Vec<f64>; 3] = Default::default();
    for _ in 0..CURL_PHASE_SAMPLES {
        let out = cluster.exec(client, &["curl", "-sS", "-o", "/dev/null", "-w", "%{time_connect} %{time_starttransfer} %{time_total} %{http_code}", url])?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let f: Vec<&str> = text.split_whitespace().collect();
        if !out.status.success() || f.len() != 4 || f[3] != "200" {
            bail!("{url}: curl failed ({text}): {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        for (slot, field) in v.iter_mut().zip(&f) {
            slot.push(field.parse::<f64>().with_context(|| format!("curl timing {field:?}"))? * 1e6);
        }
    }
    Ok(format!(
        "connect {:.0} us, first byte {:.0} us, total {:.0} us",
        bench::median(&v[0]),
        bench::median(&v[1]),
        bench::median(&v[2])
    ))
}

/// The small-object rows: wrk against each path, alternating in rounds.
fn small_objects(cluster: &Cluster, s: &Setup, proxy: &Nginx, direct: &Nginx, report: &mut Report) -> anyhow::Result<()> {
    let load = WRK_LOAD;
    println!(
        "    4 KiB, wrk -t{} -c{} -d{}s --latency -H 'Connection: close', {SMALL_ROUNDS} rounds",
        load.threads, load.connections, load.seconds
    );
    let cost = SmallCost {
        main: bench::process_named(cluster, &s.main_node, "baton-main")?,
        participant: bench::process_named(cluster, &s.participant, "baton-participant")?,
        proxy,
        direct,
    };
    let mut runs: [Vec<WrkReport>; 3] = Default::default();
    let mut per_request: [PerRequest; 3] = Default::default();
    let mut counters = [0u64; 3];
    for round in 0..SMALL_ROUNDS {
        let mut line = format!("      round {round}:");
        for k in 0..SMALL_PATHS.len() {
            let path = SMALL_PATHS[(round + k) % SMALL_PATHS.len()];
            let before = if path == Small::Handoff { Some(handoff_counters(cluster)?) } else { None };
            let cpu_before = cost.snapshot(path)?;
            let (r, _) = bench::run_wrk(cluster, &s.client, &s.small_url(path), load)?;
            let cpu_after = cost.snapshot(path)?;
            for ((label, b), (_, a)) in cpu_before.iter().zip(&cpu_after) {
                per_request[path.index()].add(label, a - b, r.requests);
            }
            if let Some(b) = before {
                let a = handoff_counters(cluster)?;
                for (total, (after, before)) in counters.iter_mut().zip(a.iter().zip(&b)) {
                    *total += after.saturating_sub(*before);
                }
            }
            line.push_str(&format!(" {} {:.0} req/s p50 {:.0} us p99 {:.0} us", path.label(), r.rate, r.p50_us, r.p99_us));
            if r.socket_errors() + r.non_2xx_3xx > 0 {
                line.push_str(&format!(" ({} socket errors, {} non-2xx/3xx)", r.socket_errors(), r.non_2xx_3xx));
            }
            runs[path.index()].push(r);
        }
        println!("{line}");
    }
    // The same requests without queueing: one connection at a time.
    let mut unloaded = Vec::new();
    for path in [Small::Handoff, Small::NginxDirect] {
        let (r, _) = bench::run_wrk(cluster, &s.client, &s.small_url(path), UNLOADED_LOAD)?;
        println!("      unloaded (wrk -t1 -c1): {} p50 {:.0} us p99 {:.0} us, {:.0} req/s", path.label(), r.p50_us, r.p99_us, r.rate);
        unloaded.push(format!("{} p50 {:.0} us, p99 {:.0} us", path.label(), r.p50_us, r.p99_us));
    }
    let mut phases = Vec::new();
    for path in [Small::Handoff, Small::NginxDirect] {
        let p = curl_phases(cluster, &s.client, &s.small_url(path))?;
        println!("      curl, {CURL_PHASE_SAMPLES} fresh connections: {} {p}", path.label());
        phases.push(format!("{} {p}", path.label()));
    }
    let med = |p: Small, f: fn(&WrkReport) -> f64| bench::median(&runs[p.index()].iter().map(f).collect::<Vec<_>>());
    let problems: Vec<String> = SMALL_PATHS
        .iter()
        .map(|p| {
            let rs = &runs[p.index()];
            let sum = |f: fn(&WrkReport) -> u64| rs.iter().map(f).sum::<u64>();
            let reqs = sum(|r| r.requests);
            let (c, rd, w, t, bad) = (
                sum(|r| r.errors_connect),
                sum(|r| r.errors_read),
                sum(|r| r.errors_write),
                sum(|r| r.errors_timeout),
                sum(|r| r.non_2xx_3xx),
            );
            if c + rd + w + t + bad == 0 {
                format!("{}: {reqs} requests, no socket errors, all 2xx", p.label())
            } else {
                format!("{}: {reqs} requests, socket errors connect {c} read {rd} write {w} timeout {t}, {bad} non-2xx/3xx", p.label())
            }
        })
        .collect();
    let how = format!(
        "median of {SMALL_ROUNDS} rounds of wrk -t{} -c{} -d{}s --latency -H 'Connection: close' in {} (a new TCP connection per \
         request; wrk's latency runs from writing the request to the end of the response, the connect is not in it), paths \
         alternating; nginx proxy on the main ({}:{PROXY_PORT}) with keep-alive upstream to {}'s mirror; nginx direct serves \
         the same bytes from {}:{NGINX_DIRECT_PORT}; {}; the main counted {} handoffs (health probes included), {} failed \
         handoffs and {} requests it served itself during the handoff runs",
        load.threads,
        load.connections,
        load.seconds,
        s.client,
        s.main_addr,
        s.participant,
        s.participant_addr,
        problems.join("; "),
        counters[0],
        counters[1],
        counters[2],
    );
    let cpu_note = format!(
        "CPU per request (utime+stime over the same runs): {}",
        SMALL_PATHS.iter().map(|p| per_request[p.index()].describe()).collect::<Vec<_>>().join("; ")
    );
    let rate = |p: Small| Measured::new(p.label(), med(p, |r| r.rate));
    let p50 = |p: Small| Measured::new(p.label(), med(p, |r| r.p50_us));
    let p99 = |p: Small| Measured::new(p.label(), med(p, |r| r.p99_us));
    let row = |what: &str, subject: Measured, reference: Measured, unit: &str, higher: bool, target: Option<Target>, note: String| Comparison {
        section: SECTION_SMALL.to_owned(),
        what: what.to_owned(),
        subject,
        reference,
        unit: unit.to_owned(),
        higher_is_better: higher,
        target,
        note,
    };
    report.push(row("request rate", rate(Small::Handoff), rate(Small::Proxy), "req/s", true, None, how));
    report.push(row("request rate", rate(Small::Handoff), rate(Small::NginxDirect), "req/s", true, None, cpu_note));
    for reference in [Small::Proxy, Small::NginxDirect] {
        report.push(row("latency p50", p50(Small::Handoff), p50(reference), "us", false, None, String::new()));
    }
    for reference in [Small::Proxy, Small::NginxDirect] {
        report.push(row("latency p99", p99(Small::Handoff), p99(reference), "us", false, None, String::new()));
    }
    report.push(row(
        "added at p50",
        p50(Small::Handoff),
        p50(Small::NginxDirect),
        "us",
        false,
        Some(Target::DifferenceAtMost(ADDED_P50_TARGET_US)),
        format!(
            "handoff p50 minus nginx direct p50 under the load above; without queueing (wrk -t1 -c1 -d{}s, one run each): {}; \
             curl phases, median of {CURL_PHASE_SAMPLES} sequential fresh connections: {}",
            UNLOADED_LOAD.seconds,
            unloaded.join("; "),
            phases.join("; ")
        ),
    ));
    Ok(())
}

//! Helpers of the side-by-side benchmarks that run real third-party programs in a lab: nginx (a
//! reverse proxy or a file server) in a node's namespace, wrk's report, and the CPU time of
//! processes and of BPF programs.
//!
//! Everything started here is stopped when its guard drops (also on an error or a panic), and a
//! setting changed here is put back the same way. Nothing here decides what a benchmark compares
//! or whether a figure is good; it must never leave a process, a directory or a sysctl behind.

use std::collections::BTreeSet;
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::Cluster;

/// How long nginx may take from its start until it accepts connections.
pub const NGINX_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long nginx may take for its fast shutdown (SIGTERM) before it and its workers are killed.
pub const NGINX_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of each connection attempt while waiting for a server to listen.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Pause between two such attempts.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Connections each nginx worker may hold: well above the benchmarks' 16 client connections plus
/// their upstream connections.
const NGINX_WORKER_CONNECTIONS: u32 = 4096;
/// Bytes of a program name the kernel keeps as a task's comm (TASK_COMM_LEN less the NUL).
pub const COMM_LEN: usize = 15;
/// The kernel switch that makes every BPF program count its runs and their time.
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// A directory of this process under the system temp dir, removed with everything in it on drop.
/// Mode 0755, so that servers which drop privileges (nginx's workers) can read it.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(tag: &str) -> anyhow::Result<ScratchDir> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("baton-{tag}-{}", std::process::id()));
        // A directory of an earlier, crashed run of the same pid is stale.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (mode 0755) and returns the subdirectory `name`.
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).with_context(|| format!("chmod {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// CPU time of one process as `/proc/<pid>/stat` reports it, in seconds: its own (every thread,
/// live or exited) and that of its reaped children.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// utime + stime.
    pub own: f64,
    /// cutime + cstime.
    pub children: f64,
}

/// Reads [`CpuTimes`] of `pid`.
pub fn process_cpu(pid: i32) -> anyhow::Result<CpuTimes> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&text, clock_ticks()?).with_context(|| format!("parsing {path}"))
}

fn clock_ticks() -> anyhow::Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(t as f64)
}

/// The CPU fields of a `/proc/<pid>/stat` line. The command name (field 2) may contain spaces and
/// parentheses, so the fields are counted from its last `)`: utime is field 14 of the line.
fn parse_stat_cpu(text: &str, ticks_per_second: f64) -> anyhow::Result<CpuTimes> {
    let rest = text.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("no command name"))?;
    // Field 3 (state) is index 0 here.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> anyhow::Result<f64> {
        let v: u64 = f.get(i).ok_or_else(|| anyhow!("only {} fields", f.len() + 2))?.parse().context("not a number")?;
        Ok(v as f64 / ticks_per_second)
    };
    Ok(CpuTimes { own: num(11)? + num(12)?, children: num(13)? + num(14)? })
}

/// The parent pid of `pid`, if it still exists.
fn parent_of(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The pids whose parent is `pid` now.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter(|&p| parent_of(p) == Some(pid)).collect()
}

/// The process whose program is named `name` running in `node` (matched against
/// `/proc/<pid>/comm`, which holds the first [`COMM_LEN`] bytes); fails unless there is exactly
/// one.
pub fn process_named(cluster: &Cluster, node: &str, name: &str) -> anyhow::Result<i32> {
    let comm = name.get(..COMM_LEN).unwrap_or(name);
    let found: Vec<i32> = cluster
        .lab
        .processes(node)
        .with_context(|| format!("listing the processes of {node}"))?
        .into_iter()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm))
        .collect();
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no {name} process in {node}"),
        many => bail!("{} {name} processes in {node}: {many:?}", many.len()),
    }
}

/// Turns on the kernel's BPF run-time statistics (`kernel.bpf_stats_enabled=1`) while it lives
/// and puts the previous value back on drop. The switch is global to the host.
#[derive(Debug)]
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> anyhow::Result<BpfStats> {
        let previous = std::fs::read_to_string(BPF_STATS_SYSCTL).with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?;
        std::fs::write(BPF_STATS_SYSCTL, "1").with_context(|| format!("enabling {BPF_STATS_SYSCTL}"))?;
        Ok(BpfStats { previous: previous.trim().to_owned() })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS_SYSCTL, &self.previous) {
            eprintln!("could not restore {BPF_STATS_SYSCTL} to {}: {e}", self.previous);
        }
    }
}

fn bpftool_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running bpftool (Debian package bpftool)")?;
    if !out.status.success() {
        bail!("bpftool {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {args:?} printed no JSON"))
}

/// The ids of the programs behind every BPF link pinned in `dir` (files named `link_*`, the
/// Baton data planes' pins), without duplicates.
pub fn pinned_link_programs(dir: &Path) -> anyhow::Result<Vec<u32>> {
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with("link_") {
            continue;
        }
        let path = entry.path();
        let v = bpftool_json(&["link", "show", "pinned", &path.display().to_string()])?;
        let id = v.get("prog_id").and_then(|x| x.as_u64()).ok_or_else(|| anyhow!("{}: link without prog_id: {v}", path.display()))?;
        ids.insert(u32::try_from(id).context("program id")?);
    }
    if ids.is_empty() {
        bail!("no BPF link pinned in {}", dir.display());
    }
    Ok(ids.into_iter().collect())
}

/// Total runs and run time of BPF programs, as counted by the kernel while statistics are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BpfRunTime {
    pub runs: u64,
    pub nanos: u64,
}

/// Sums [`BpfRunTime`] over the programs `ids` (a program that has not run yet reports none).
pub fn programs_run_time(ids: &[u32]) -> anyhow::Result<BpfRunTime> {
    let mut t = BpfRunTime::default();
    for id in ids {
        let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
        t.runs += v.get("run_cnt").and_then(|x| x.as_u64()).unwrap_or(0);
        t.nanos += v.get("run_time_ns").and_then(|x| x.as_u64()).unwrap_or(0);
    }
    Ok(t)
}

/// nginx running in a lab node (master and workers); stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    prefix: PathBuf,
    listen: SocketAddrV4,
}

impl Nginx {
    /// Starts nginx in `node` with its prefix, configuration, logs and temp files in `prefix`,
    /// and waits until it accepts connections on `listen`. `http` is the body of the `http {}`
    /// block (upstreams and servers); the rest of nginx.conf is written here: no daemon, a
    /// master with one worker per core, logs and pid in `prefix`.
    pub fn start(cluster: &Cluster, node: &str, prefix: &Path, http: &str, listen: SocketAddrV4) -> anyhow::Result<Nginx> {
        let p = prefix.display();
        let conf = format!(
            "# Generated by the Baton benchmark; removed with its directory.\n\
             daemon off;\n\
             master_process on;\n\
             worker_processes auto;\n\
             user nobody nogroup;\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/error.log warn;\n\
             events {{\n    worker_connections {NGINX_WORKER_CONNECTIONS};\n}}\n\
             http {{\n\
             \x20   default_type application/octet-stream;\n\
             \x20   client_body_temp_path {p}/client_body;\n\
             \x20   proxy_temp_path {p}/proxy;\n\
             \x20   fastcgi_temp_path {p}/fastcgi;\n\
             \x20   uwsgi_temp_path {p}/uwsgi;\n\
             \x20   scgi_temp_path {p}/scgi;\n\
             {http}\n\
             }}\n"
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
        let log = std::fs::File::create(prefix.join("stderr.log")).context("nginx stderr log")?;
        let child = cluster
            .lab
            .command(node, "nginx")?
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting nginx in {node}"))?;
        let mut nginx = Nginx { child: Some(child), prefix: prefix.to_owned(), listen };
        nginx.wait_listening(cluster, node)?;
        Ok(nginx)
    }

    fn wait_listening(&mut self, cluster: &Cluster, node: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + NGINX_START_TIMEOUT;
        let addr = self.listen;
        loop {
            if cluster.in_node(node, move || TcpStream::connect_timeout(&addr.into(), PROBE_CONNECT_TIMEOUT).is_ok())? {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("nginx in {node} exited with {status}: {}", self.logs());
                }
            }
            if Instant::now() > deadline {
                bail!("nginx in {node} does not accept on {addr} after {NGINX_START_TIMEOUT:?}: {}", self.logs());
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }

    /// What nginx wrote to its error log and stderr.
    pub fn logs(&self) -> String {
        ["error.log", "stderr.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.prefix.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn master(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// CPU seconds of this nginx so far: master and live workers (every thread), plus the
    /// workers that exited and were reaped by the master.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let master = self.master().ok_or_else(|| anyhow!("nginx is stopped"))?;
        let m = process_cpu(master)?;
        let mut total = m.own + m.children;
        for w in children_of(master) {
            // A worker that exits meanwhile is counted in the master's children next time.
            if let Ok(c) = process_cpu(w) {
                total += c.own;
            }
        }
        Ok(total)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let Ok(master) = i32::try_from(child.id()) else { return };
        let workers = children_of(master);
        // SAFETY: signalling our own, not yet reaped child. SIGTERM is nginx's fast shutdown.
        unsafe { libc::kill(master, libc::SIGTERM) };
        let deadline = Instant::now() + NGINX_STOP_TIMEOUT;
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Workers outlive a killed master; kill those that are still there by pid (only while
        // they are still nginx: a pid could have been reused).
        for w in workers {
            if std::fs::read_to_string(format!("/proc/{w}/comm")).is_ok_and(|c| c.trim_end() == "nginx") {
                // SAFETY: a plain signal to a pid we saw as this nginx's worker.
                unsafe { libc::kill(w, libc::SIGKILL) };
            }
        }
    }
}

/// What wrk printed at the end of a run (with `--latency`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WrkReport {
    /// Completed requests.
    pub requests: u64,
    pub seconds: f64,
    /// "Requests/sec".
    pub rate: f64,
    /// Latency percentiles from the "Latency Distribution" block, in microseconds.
    pub p50_us: f64,
    pub p75_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// "Socket errors: connect, read, write, timeout" (all zero when wrk prints no such line).
    pub errors_connect: u64,
    pub errors_read: u64,
    pub errors_write: u64,
    pub errors_timeout: u64,
    /// "Non-2xx or 3xx responses" (zero when wrk prints no such line).
    pub non_2xx_3xx: u64,
}

impl WrkReport {
    /// Socket errors of all kinds.
    pub fn socket_errors(&self) -> u64 {
        self.errors_connect + self.errors_read + self.errors_write + self.errors_timeout
    }
}

/// A wrk duration such as `812.00us`, `1.25ms`, `2.00s` or `1.00m`, in microseconds.
fn wrk_duration_us(s: &str) -> anyhow::Result<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(|| anyhow!("duration without unit: {s}"))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().with_context(|| format!("duration {s}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        other => bail!("unknown duration unit {other} in {s}"),
    };
    Ok(v * scale)
}

/// Parses the report wrk prints (`wrk --latency ...`).
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkReport> {
    let mut r = WrkReport::default();
    let (mut have_rate, mut have_total) = (false, false);
    let mut have = [false; 4];
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [pct, d] if pct.ends_with('%') && d.ends_with('s') => {
                let slot = match *pct {
                    "50%" => 0,
                    "75%" => 1,
                    "90%" => 2,
                    "99%" => 3,
                    _ => continue,
                };
                let us = wrk_duration_us(d)?;
                match slot {
                    0 => r.p50_us = us,
                    1 => r.p75_us = us,
                    2 => r.p90_us = us,
                    _ => r.p99_us = us,
                }
                have[slot] = true;
            }
            [n, "requests", "in", secs, ..] => {
                r.requests = n.parse().with_context(|| format!("request count in {line:?}"))?;
                r.seconds = wrk_duration_us(secs.trim_end_matches(','))? / 1e6;
                have_total = true;
            }
            ["Requests/sec:", v] => {
                r.rate = v.parse().with_context(|| format!("rate in {line:?}"))?;
                have_rate = true;
            }
            ["Socket", "errors:", "connect", c, "read", rd, "write", w, "timeout", t] => {
                let n = |s: &str| s.trim_end_matches(',').parse::<u64>().with_context(|| format!("socket errors in {line:?}"));
                r.errors_connect = n(c)?;
                r.errors_read = n(rd)?;
                r.errors_write = n(w)?;
                r.errors_timeout = n(t)?;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                r.non_2xx_3xx = n.parse().with_context(|| format!("non-2xx count in {line:?}"))?;
            }
            _ => {}
        }
    }
    if !(have_rate && have_total && have.iter().all(|h| *h)) {
        bail!("wrk printed no complete report (run it with --latency):\n{text}");
    }
    Ok(r)
}

/// A closed-loop wrk load: fixed threads and connections for a fixed time.
#[derive(Debug, Clone, Copy)]
pub struct WrkLoad {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
    /// `Connection: close` on every request, so each request makes a new TCP connection.
    pub close: bool,
}

/// Runs wrk with `load` against `url` in `node` (to its end: wrk stops itself after
/// `load.seconds`) and returns its parsed report and its raw output.
pub fn run_wrk(cluster: &Cluster, node: &str, url: &str, load: WrkLoad) -> anyhow::Result<(WrkReport, String)> {
    let (t, c, d) = (load.threads.to_string(), load.connections.to_string(), format!("{}s", load.seconds));
    let mut argv = vec!["wrk", "-t", &t, "-c", &c, "-d", &d, "--latency"];
    if load.close {
        argv.extend(["-H", "Connection: close"]);
    }
    argv.push(url);
    let out = cluster.exec(node, &argv).with_context(|| format!("running wrk in {node}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk {url} failed with {}: {text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok((parse_wrk(&text).with_context(|| format!("wrk {url}"))?, text))
}

/// The median (the mean of the two middle values for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wrk 4.1.0's report of a run with socket errors and non-2xx answers.
    static WRK_OUTPUT: &str = "Running 5s test @ http://203.0.113.10/small.bin
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.34us  301.20us  12.50ms   91.02%
    Req/Sec     4.91k   210.33     5.40k    70.00%
  Latency Distribution
     50%  760.00us
     75%    0.90ms
     90%    1.05ms
     99%    2.10ms
  48877 requests in 5.00s, 213.25MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:   9772.18
Transfer/sec:     42.64MB
";

    #[test]
    fn parses_wrk_report() {
        let r = parse_wrk(WRK_OUTPUT).expect("parse");
        assert_eq!(
            r,
            WrkReport {
                requests: 48877,
                seconds: 5.0,
                rate: 9772.18,
                p50_us: 760.0,
                p75_us: 900.0,
                p90_us: 1050.0,
                p99_us: 2100.0,
                errors_connect: 0,
                errors_read: 3,
                errors_write: 0,
                errors_timeout: 2,
                non_2xx_3xx: 7,
            }
        );
        assert_eq!(r.socket_errors(), 5);
    }

    #[test]
    fn refuses_report_without_latency_distribution() {
        let cut: String = WRK_OUTPUT.lines().filter(|l| !l.contains('%') || l.contains("Stdev")).collect::<Vec<_>>().join("\n");
        assert!(parse_wrk(&cut).is_err());
    }

    #[test]
    fn wrk_durations() {
        assert_eq!(wrk_duration_us("812.00us").expect("us"), 812.0);
        assert_eq!(wrk_duration_us("1.25ms").expect("ms"), 1250.0);
        assert_eq!(wrk_duration_us("2.00s").expect("s"), 2_000_000.0);
        assert!(wrk_duration_us("2.00").is_err());
        assert!(wrk_duration_us("2.00xs").is_err());
    }

    #[test]
    fn stat_cpu_fields_after_a_command_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let line = "42 (nginx: worker (x)) S 1 42 42 0 -1 4194560 10 0 0 0 250 150 30 20 20 0 1 0 100 0 0";
        let c = parse_stat_cpu(line, 100.0).expect("parse");
        assert_eq!(c, CpuTimes { own: 4.0, children: 0.5 });
        assert!(parse_stat_cpu("42 (x) S 1 2", 100.0).is_err());
    }

    #[test]
    fn medians() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}

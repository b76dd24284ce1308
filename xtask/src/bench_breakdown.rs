//! `cargo xtask bench breakdown`: the handoff latency broken into its steps.
//!
//! One client sends [`REQUESTS`] new-connection GETs of a 4 KiB object through the VIP and as
//! many straight to the serving participant's mirror address, alternating, and measures each
//! one's time to first byte from connect to the first response byte. The step durations come
//! from the servers' own per-handoff log lines (`handed off` on the main, `handed-off connection
//! done` on the participant): they carry exact microseconds for every request, where the
//! `baton_handoff_step_seconds` histograms only place a value within a 1-2.5-5 bucket. The
//! histograms are scraped before and after and their counts checked against the requests, so
//! the exported metrics are exercised by the same run; their bucket-interpolated p50 is printed
//! next to the exact one.
//!
//! Nothing here changes the servers; the lab and its processes go away when the cluster drops,
//! on success or failure.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_tests::{curl_download, Cluster, ClusterOptions};

use crate::report::{Comparison, Measured, Report, Target};

/// Requests per side (through the VIP, direct). 300 gives a stable p50 and a p99 that is the
/// third-worst request, in about ten seconds.
const REQUESTS: usize = 300;
/// Requests per side before the timed ones: warm caches, ARP entries, the allocators.
const WARMUP_REQUESTS: usize = 30;
/// Size of the object (a small response: latency, not throughput).
const OBJECT_BYTES: usize = 4096;
/// Per-request connect and read timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for the servers' last log lines (the participant logs when a connection
/// ends, just after the client saw the whole response).
const LOG_SETTLE: Duration = Duration::from_secs(3);
/// Section of the report.
const SECTION: &str = "Handoff latency";
/// The main's step fields in its `handed off` line, in handoff order, with their metric label.
const MAIN_STEPS: [(&str, &str); 5] =
    [("head_read", "head_read_us"), ("select", "select_us"), ("dump", "dump_us"), ("control", "control_us"), ("total", "total_us")];
/// The participant's step fields in its `handed-off connection done` line.
const PARTICIPANT_STEPS: [(&str, &str); 2] = [("restore", "answered_us"), ("first_byte", "first_byte_us")];
/// Metrics ports of the main and of a participant (the servers' defaults).
const MAIN_METRICS_PORT: u16 = 9470;
const PARTICIPANT_METRICS_PORT: u16 = 9471;
/// The step histograms' family on both servers.
const HISTOGRAM_FAMILY: &str = "baton_handoff_step_seconds";

/// Runs the benchmark and adds its comparisons to `report`.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
    let mut opts = ClusterOptions::new("bbrk", "198.18.224.0/21");
    // No health probes during the run: each is a handoff too, and would compete for the cores.
    opts.main_args = vec!["--probe-interval-ms".into(), "600000".into()];
    let cluster = Cluster::start(&opts)?;
    let client = cluster.client_names().into_iter().next().context("no client in the lab")?;
    cluster.write_object("breakdown.bin", OBJECT_BYTES, 0xb4ea)?;
    let warm = curl_download(&cluster, &client, &cluster.vip_url("breakdown.bin"), &[])?;
    let served = warm.served_by().context("no X-Served-By on the warm-up download")?.to_owned();
    let main = cluster.main_node()?;
    let vip = SocketAddrV4::new(cluster.lab.vip(), 80);
    let direct = SocketAddrV4::new(cluster.addr(&served)?, 80);

    run_requests(&cluster, &client, vip, direct, WARMUP_REQUESTS)?;
    let main_log = cluster.lab.state_dir().join(format!("{main}.baton-main.log"));
    let part_log = cluster.lab.state_dir().join(format!("{served}.baton-participant.log"));
    let (main_from, part_from) = (file_len(&main_log), file_len(&part_log));
    let hist_before = scrape_histograms(&cluster, &main, &served)?;

    let (via, straight) = run_requests(&cluster, &client, vip, direct, REQUESTS)?;
    let deadline = Instant::now() + LOG_SETTLE;
    let (main_steps, part_steps) = loop {
        let main_steps = log_fields(&main_log, main_from, "handed off", &MAIN_STEPS)?;
        let part_steps = log_fields(&part_log, part_from, "handed-off connection done", &PARTICIPANT_STEPS)?;
        let complete = |m: &BTreeMap<&str, Vec<f64>>| m.values().all(|v| v.len() >= REQUESTS);
        if (complete(&main_steps) && complete(&part_steps)) || Instant::now() > deadline {
            break (main_steps, part_steps);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let hist_after = scrape_histograms(&cluster, &main, &served)?;
    drop(cluster);

    let (v50, v99) = (percentile(&via, 0.5), percentile(&via, 0.99));
    let (d50, d99) = (percentile(&straight, 0.5), percentile(&straight, 0.99));
    println!("bench breakdown: {REQUESTS} new-connection {OBJECT_BYTES}-byte GETs each way, client {client}, participant {served}");
    println!("  {:<22} {:>9} {:>9} {:>9} {:>14}", "", "n", "p50 us", "p99 us", "histogram p50");
    println!("  {:<22} {:>9} {v50:>9.0} {v99:>9.0}", "TTFB through the VIP", via.len());
    println!("  {:<22} {:>9} {d50:>9.0} {d99:>9.0}", "TTFB direct", straight.len());
    let steps = MAIN_STEPS.iter().map(|(s, _)| ("main", *s, &main_steps)).chain(PARTICIPANT_STEPS.iter().map(|(s, _)| ("participant", *s, &part_steps)));
    for (side, step, values) in steps {
        let mut v = values.get(step).cloned().unwrap_or_default();
        v.sort_by(|a, b| a.total_cmp(b));
        let (p50, p99) = (percentile(&v, 0.5), percentile(&v, 0.99));
        let hist = histogram_delta(&hist_before, &hist_after, step);
        let hist_p50 = hist.as_ref().map(|h| histogram_quantile(h, 0.5) * 1e6);
        let hist_count = hist.as_ref().map(|h| h.last().map_or(0.0, |b| b.1)).unwrap_or(0.0);
        println!(
            "  {:<22} {:>9} {p50:>9.0} {p99:>9.0} {:>14}",
            format!("{side} {step}"),
            v.len(),
            hist_p50.map(|p| format!("{p:.0}")).unwrap_or_else(|| "-".into())
        );
        if v.len() != REQUESTS || hist_count as usize != REQUESTS {
            report.context.push(format!(
                "bench breakdown: {side} step {step}: {} log values and {hist_count} histogram observations for {REQUESTS} requests",
                v.len()
            ));
        }
        report.push(Comparison {
            section: SECTION.to_owned(),
            what: format!("{side}: {step}"),
            subject: Measured::new(format!("{step} p50"), p50),
            reference: Measured::new("direct TTFB p50", d50),
            unit: "us".to_owned(),
            higher_is_better: false,
            target: None,
            note: format!(
                "{} handoffs of a {OBJECT_BYTES}-byte object on new connections; step p50 from the per-handoff log values (p99 {p99:.0} us; histogram estimate of p50 {}); reference: direct time to first byte p50 ({d50:.0} us), to show the share",
                v.len(),
                hist_p50.map(|p| format!("{p:.0} us")).unwrap_or_else(|| "n/a".into())
            ),
        });
    }
    println!("  added at p50: {:.0} us (target <= 150 us); at p99: {:.0} us", v50 - d50, v99 - d99);
    report.push(Comparison {
        section: SECTION.to_owned(),
        what: "added at p50".to_owned(),
        subject: Measured::new("handoff TTFB p50", v50),
        reference: Measured::new("direct TTFB p50", d50),
        unit: "us".to_owned(),
        higher_is_better: false,
        target: Some(Target::DifferenceAtMost(150.0)),
        note: format!(
            "{REQUESTS} new-connection GETs of {OBJECT_BYTES} bytes each way, alternating VIP and direct, from connect to the first response byte in the client's namespace (p99: handoff {v99:.0} us, direct {d99:.0} us)"
        ),
    });
    Ok(())
}

/// Sends `n` requests each way, alternating (so drift in the machine's load hits both sides
/// alike), and returns the times to first byte in microseconds, sorted: through the VIP, direct.
fn run_requests(cluster: &Cluster, client: &str, vip: SocketAddrV4, direct: SocketAddrV4, n: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let measured = cluster.in_node(client, move || -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let (mut via, mut straight) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            via.push(one_request(vip).with_context(|| format!("request {i} through the VIP"))?);
            straight.push(one_request(direct).with_context(|| format!("request {i} direct"))?);
        }
        via.sort_by(|a, b| a.total_cmp(b));
        straight.sort_by(|a, b| a.total_cmp(b));
        Ok((via, straight))
    })??;
    Ok(measured)
}

/// One GET on a new connection: microseconds from the start of connect to the first response
/// byte. Fails unless the whole 200 response with its 4 KiB body arrives.
fn one_request(target: SocketAddrV4) -> anyhow::Result<f64> {
    let req = b"GET /breakdown.bin HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&target.into(), REQUEST_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.write_all(req)?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = s.read(&mut buf)?;
    let ttfb = t0.elapsed();
    if n == 0 {
        bail!("connection closed before the response");
    }
    let mut all = buf[..n].to_vec();
    s.read_to_end(&mut all)?;
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").context("no response head")? + 4;
    if !all.starts_with(b"HTTP/1.1 200") || all.len() - head_end != OBJECT_BYTES {
        bail!("bad response: {} bytes, head {:?}", all.len(), String::from_utf8_lossy(&all[..head_end.min(all.len())]));
    }
    Ok(ttfb.as_secs_f64() * 1e6)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The values of `fields` (step name, log field) in the lines after byte `from` of a server's
/// log whose message is `message`, by step.
fn log_fields<'a>(path: &Path, from: u64, message: &str, fields: &[(&'a str, &str)]) -> anyhow::Result<BTreeMap<&'a str, Vec<f64>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    let text = strip_ansi(&String::from_utf8_lossy(&bytes[start..]));
    let mut out: BTreeMap<&str, Vec<f64>> = fields.iter().map(|(s, _)| (*s, Vec::new())).collect();
    for line in text.lines().filter(|l| l.contains(message)) {
        for (step, field) in fields {
            if let Some(v) = field_value(line, field) {
                out.entry(step).or_default().push(v);
            }
        }
    }
    Ok(out)
}

/// The number after ` field=` in a tracing text line.
fn field_value(line: &str, field: &str) -> Option<f64> {
    let key = format!(" {field}=");
    let at = line.find(&key)? + key.len();
    let digits: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Removes ANSI colour sequences (`ESC [ … letter`) that the servers' text logs may carry.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Buckets (`le` in seconds, cumulative count) of every step series on the main and the
/// participant, by step.
type Histograms = BTreeMap<String, Vec<(f64, f64)>>;

fn scrape_histograms(cluster: &Cluster, main: &str, participant: &str) -> anyhow::Result<Histograms> {
    let mut out = Histograms::new();
    for (node, port) in [(main, MAIN_METRICS_PORT), (participant, PARTICIPANT_METRICS_PORT)] {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let page = cluster.exec(node, &["curl", "-sS", "--max-time", "5", &url])?;
        if !page.status.success() {
            bail!("scraping {node}: {}", String::from_utf8_lossy(&page.stderr));
        }
        for line in String::from_utf8_lossy(&page.stdout).lines() {
            let Some(rest) = line.strip_prefix(&format!("{HISTOGRAM_FAMILY}_bucket{{")) else { continue };
            let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
            let label = |name: &str| labels.split(',').find_map(|kv| kv.strip_prefix(&format!("{name}=\"")).map(|v| v.trim_end_matches('"').to_owned()));
            let (Some(step), Some(le), Ok(n)) = (label("step"), label("le"), value.parse::<f64>()) else { continue };
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().with_context(|| format!("bucket bound {le}"))? };
            out.entry(step).or_default().push((le, n));
        }
    }
    Ok(out)
}

/// The buckets of `step` observed between two scrapes.
fn histogram_delta(before: &Histograms, after: &Histograms, step: &str) -> Option<Vec<(f64, f64)>> {
    let a = after.get(step)?;
    let b = before.get(step);
    Some(a.iter().enumerate().map(|(i, (le, n))| (*le, n - b.and_then(|b| b.get(i)).map_or(0.0, |x| x.1))).collect())
}

/// Prometheus-style quantile estimate: linear interpolation inside the bucket holding rank
/// `q × count` (the lower bound of the first bucket is 0; the `+Inf` bucket reports its lower
/// bound).
fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return lo;
            }
            let inside = n - below;
            return if inside > 0.0 { lo + (le - lo) * (rank - below) / inside } else { le };
        }
        (lo, below) = (le, n);
    }
    lo
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_coloured_lines() {
        let line = "\u{1b}[2m2026-12-01T22:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m flow{flow=7}: handed off \u{1b}[3mhead_read_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m412 \u{1b}[3mselect_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m9";
        let plain = strip_ansi(line);
        assert_eq!(field_value(&plain, "head_read_us"), Some(412.0));
        assert_eq!(field_value(&plain, "select_us"), Some(9.0));
        assert_eq!(field_value(&plain, "read_us"), None);
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        let b = [(0.00001, 0.0), (0.000025, 10.0), (0.00005, 20.0), (f64::INFINITY, 20.0)];
        assert!((histogram_quantile(&b, 0.5) - 0.000025).abs() < 1e-12);
        assert!((histogram_quantile(&b, 0.75) - 0.0000375).abs() < 1e-12);
        assert!(histogram_quantile(&[(f64::INFINITY, 0.0)], 0.5).is_nan());
    }
}

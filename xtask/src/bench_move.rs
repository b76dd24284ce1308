//! `cargo xtask bench move`: what moving a live connection costs the client, from captures taken
//! at the client. One download with graceful moves (p-fra → p-iad → p-sin → p-fra ...), one with
//! the serving participant killed, in a lab with a 40 ms round trip and 300 Mbit/s links.
//!
//! Per move: the stall (longest pause between segments carrying new data, from the command to
//! shortly after the move completed) against the round trip; per kill: the time from the death
//! to the first new byte from the participant that took over; for both downloads: bytes sent
//! again, and bytes lost, which must be 0.
//!
//! It fails when bytes were lost or the digest differs (the benchmark is also a check), never
//! because a speed target was missed: it prints "target met" / "target missed" instead.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_tests::tcpflow::{self, Captured, Stream, TcpCapture};
use baton_tests::{spawn_curl, Background, Cluster, ClusterOptions, Download};

/// Lab name and address block of this benchmark (unique among the labs that may run at once).
const LAB_NAME: &str = "bmove";
const LAB_BLOCK: &str = "198.19.176.0/21";
/// The client node; the participants in the order moves rotate through them.
const CLIENT: &str = "c-fra";
const ROTATION: [&str; 3] = ["p-fra", "p-iad", "p-sin"];
/// Rate of every participant and client link; the main's link is fast. 10 ms of one-way delay
/// on each link, so 40 ms round trip between a participant and the client and megabytes in
/// flight, like a real cross-region transfer.
const RATE: &str = baton_tests::WAN_RATE;
const DELAY: &str = baton_tests::WAN_DELAY;
/// Names the `baton-lab` binary that runs the lab's delay lines.
const LAB_BIN_ENV: &str = "BATON_LAB_BIN";
/// The object both downloads fetch.
const OBJECT: &str = "move.bin";
const OBJECT_SEED: u64 = 0x6d6f_7665;

/// The target for a graceful move's stall is one round trip plus this (processing on the way).
const STALL_SLACK_US: u64 = 2_000;
/// The recovery target after a participant dies.
const RECOVERY_TARGET_US: u64 = 1_000_000;
/// How long GLB needs only to detect a failed backend, for comparison.
const GLB_DETECTION_US: u64 = 6_000_000;

/// How long a move may take from the command until the flow is active on its target.
const MOVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the main may take to hand a dead participant's flow to another one.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// New bytes at the client after a takeover that count as "data flows again".
const FLOWING_BYTES: u64 = 1 << 20;
/// How long data may take to flow again after a takeover.
const FLOWING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the download may take to reach the next move or kill point.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the new download's flow may take to appear in the main's flow list.
const FLOW_APPEAR_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of the flow-list polls (each is one batonctl run).
const POLL: Duration = Duration::from_millis(10);
/// Each event's analysis window runs from its start for at least this long, and at least this
/// long past its completion; it ends early where the next event starts.
const WINDOW_US: u64 = 2_000_000;
const AFTER_DONE_US: u64 = 500_000;
/// curl gives up when the download moves less than 1 byte per second for this many seconds, so a
/// connection a move broke ends the run with its figures instead of curl's 180 s limit.
const CURL_STALL_SECONDS: &str = "15";
/// curl's -w: the fields `Background::finish` reads on stdout, then the head's length on stderr.
const CURL_WRITE_OUT: &str = "%{size_download} %{time_total}%{stderr}head_bytes=%{size_header}\n";

/// What `bench move` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub size_mib: u64,
    pub moves: usize,
    pub kills: usize,
    /// A directory to keep the two captures in (move.pcap, kill.pcap).
    pub keep_pcap: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Move,
    Kill,
}

/// One move or kill as the benchmark drove it (wall-clock microseconds).
#[derive(Debug, Clone)]
struct Event {
    from: String,
    /// The move's target, or the participant that took the killed one's flow.
    to: Option<String>,
    at_bytes: u64,
    /// When the move command was sent or the participant was killed.
    start_us: u64,
    /// When the flow list showed the flow active on `to`.
    done_us: Option<u64>,
    problem: Option<String>,
}

/// One download with its events and capture.
#[derive(Debug)]
struct Run {
    kind: Kind,
    download: Download,
    captured: Captured,
    stream: Option<Stream>,
    events: Vec<Event>,
    /// What went wrong outside the events.
    notes: Vec<String>,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let size = opts.size_mib << 20;
    // The lab's delay lines run `baton-lab`; without this it would take the one next to this
    // (debug) program, which `build` does not refresh.
    if std::env::var_os(LAB_BIN_ENV).is_none() {
        std::env::set_var(LAB_BIN_ENV, baton_tests::bin_dir().join("baton-lab"));
    }
    let mut copts = ClusterOptions::new(LAB_NAME, LAB_BLOCK);
    copts.topology_yaml = Some(baton_tests::wan_topology());
    let mut cluster = Cluster::start(&copts)?;
    let sha = cluster.write_object(OBJECT, usize::try_from(size)?, OBJECT_SEED)?;
    println!(
        "Moving a live connection: {} MiB download by {CLIENT}, participants {}, {RATE} links, {DELAY} one-way per link",
        opts.size_mib,
        ROTATION.join(" ")
    );
    warm_caches(&cluster)?;
    if let Some(dir) = &opts.keep_pcap {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let keep = |name: &str| opts.keep_pcap.as_ref().map(|d| d.join(name));
    let moves = transfer(&mut cluster, size, opts.moves, Kind::Move, keep("move.pcap"))?;
    let kills = transfer(&mut cluster, size, opts.kills, Kind::Kill, keep("kill.pcap"))?;
    report_moves(&moves);
    report_kills(&kills);
    let ok = report_totals(&[&moves, &kills], size, &sha);
    let problems = moves.events.iter().chain(&kills.events).any(|e| e.problem.is_some());
    if problems || !ok || !moves.notes.is_empty() || !kills.notes.is_empty() {
        print_logs(&cluster);
    }
    drop(cluster);
    if !ok {
        bail!("bytes were lost or the digest differs (see above)");
    }
    Ok(())
}

/// Has every participant fetch and verify the object (a one-byte range request to its mirror),
/// so that a move measures the move and not the new owner's cache fill.
fn warm_caches(cluster: &Cluster) -> anyhow::Result<()> {
    for p in ROTATION {
        let url = format!("http://{}/{OBJECT}", cluster.addr(p)?);
        let out = cluster.exec(CLIENT, &["curl", "-sS", "-o", "/dev/null", "-r", "0-0", "-w", "%{http_code}", &url])?;
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() || !(code == "206" || code == "200") {
            bail!("warming {p}'s cache: {url} answered {code}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    println!("    (each participant's cache holds the object before the downloads start)");
    Ok(())
}

fn field<'a>(row: &'a serde_json::Value, k: &str) -> &'a str {
    row.get(k).and_then(|v| v.as_str()).unwrap_or_default()
}

/// The flow's participant and phase, if it is listed.
fn flow_state(cluster: &Cluster, id: u64) -> Option<(String, String)> {
    let rows = cluster.flows().ok()?;
    let row = rows.iter().find(|r| r.get("id").and_then(|v| v.as_u64()) == Some(id))?;
    Some((field(row, "participant").to_owned(), field(row, "phase").to_owned()))
}

/// Polls the flow until `pred(participant, phase)` holds; returns the participant, or the last
/// state seen on timeout.
fn wait_flow(cluster: &Cluster, id: u64, limit: Duration, pred: impl Fn(&str, &str) -> bool) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let mut last = None;
    loop {
        if let Some((p, phase)) = flow_state(cluster, id) {
            if pred(&p, &phase) {
                return Ok(p);
            }
            last = Some((p, phase));
        }
        if Instant::now() > deadline {
            return Err(match last {
                Some((p, phase)) => format!("after {limit:?} the flow is {phase} on {p}"),
                None => format!("after {limit:?} the flow is not listed"),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until the download has `bytes`; false if it ended or stalled first.
fn wait_received(dl: &mut Background, bytes: u64) -> bool {
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    while dl.received() < bytes {
        if !dl.running() || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// One captured download with `count` moves or kills spread evenly through it.
fn transfer(cluster: &mut Cluster, size: u64, count: usize, kind: Kind, keep: Option<std::path::PathBuf>) -> anyhow::Result<Run> {
    let known: HashSet<u64> = cluster.flows()?.iter().filter_map(|r| r.get("id").and_then(|v| v.as_u64())).collect();
    let cap = TcpCapture::start(cluster, CLIENT)?;
    let curl_args = ["-w", CURL_WRITE_OUT, "--speed-limit", "1", "--speed-time", CURL_STALL_SECONDS];
    let mut dl = spawn_curl(cluster, CLIENT, &cluster.vip_url(OBJECT), &curl_args)?;
    let deadline = Instant::now() + FLOW_APPEAR_TIMEOUT;
    let flow = loop {
        let rows = cluster.flows()?;
        let fresh = rows.iter().find(|r| {
            r.get("id").and_then(|v| v.as_u64()).is_some_and(|id| !known.contains(&id))
                && field(r, "phase") == "active"
                && ROTATION.contains(&field(r, "participant"))
        });
        if let Some(id) = fresh.and_then(|r| r.get("id")).and_then(|v| v.as_u64()) {
            break id;
        }
        if Instant::now() > deadline || !dl.running() {
            bail!("the download's flow did not become active on a participant; flows: {rows:?}");
        }
        std::thread::sleep(POLL);
    };
    let (mut events, mut notes) = (Vec::new(), Vec::new());
    for i in 0..count {
        let at = size * (i as u64 + 1) / (count as u64 + 1);
        if !wait_received(&mut dl, at) {
            let state = if dl.running() { "stalled" } else { "ended" };
            notes.push(format!("the download {state} at {} bytes, before event {} of {count}", dl.received(), i + 1));
            break;
        }
        events.push(match kind {
            Kind::Move => graceful_move(cluster, flow, &dl),
            Kind::Kill => kill_owner(cluster, flow, &mut dl)?,
        });
    }
    let download = dl.finish()?;
    let captured = cap.finish_keeping(keep.as_deref())?;
    let client = cluster.addr(CLIENT)?;
    let conn =
        tcpflow::connections(&captured.segments, 80).into_iter().find(|c| *c.client.ip() == client && *c.server.ip() == cluster.lab.vip());
    let stream = conn.map(|c| Stream::analyse(&captured.segments, c));
    Ok(Run { kind, download, captured, stream, events, notes })
}

fn graceful_move(cluster: &Cluster, flow: u64, dl: &Background) -> Event {
    let from = flow_state(cluster, flow).map(|(p, _)| p).unwrap_or_default();
    let next = ROTATION.iter().position(|p| *p == from).map_or(0, |i| (i + 1) % ROTATION.len());
    let to = ROTATION[next];
    let at_bytes = dl.received();
    let start_us = tcpflow::now_us();
    let mut ev = Event { from, to: Some(to.to_owned()), at_bytes, start_us, done_us: None, problem: None };
    match cluster.batonctl(&["flow", "move", &flow.to_string(), "--to", to]) {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            ev.problem = Some(format!("batonctl flow move failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            return ev;
        }
        Err(e) => {
            ev.problem = Some(format!("batonctl: {e:#}"));
            return ev;
        }
    }
    match wait_flow(cluster, flow, MOVE_TIMEOUT, |p, phase| p == to && phase == "active") {
        Ok(_) => ev.done_us = Some(tcpflow::now_us()),
        Err(e) => ev.problem = Some(format!("move to {to} did not complete: {e}")),
    }
    ev
}

fn kill_owner(cluster: &mut Cluster, flow: u64, dl: &mut Background) -> anyhow::Result<Event> {
    let victim = flow_state(cluster, flow).map(|(p, _)| p).context("the flow is gone")?;
    let at_bytes = dl.received();
    let start_us = tcpflow::now_us();
    cluster.kill(&victim, "baton-participant");
    let mut ev = Event { from: victim.clone(), to: None, at_bytes, start_us, done_us: None, problem: None };
    match wait_flow(cluster, flow, TAKEOVER_TIMEOUT, |p, phase| p != victim && p != "main" && phase == "active") {
        Ok(p) => {
            ev.to = Some(p);
            ev.done_us = Some(tcpflow::now_us());
            let deadline = Instant::now() + FLOWING_TIMEOUT;
            let target = dl.received() + FLOWING_BYTES;
            while dl.received() < target && dl.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if dl.received() < target && dl.running() {
                ev.problem = Some(format!("less than {FLOWING_BYTES} bytes arrived in {FLOWING_TIMEOUT:?} after the takeover"));
            }
        }
        Err(e) => ev.problem = Some(format!("no takeover: {e}")),
    }
    cluster.restart_participant(&victim)?;
    cluster.wait_registered(ROTATION.len())?;
    Ok(ev)
}

/// Each event's analysis window: from its start to [`WINDOW_US`] after it or [`AFTER_DONE_US`]
/// after it completed, whichever is later, but not past the next event's start.
fn windows(events: &[Event]) -> Vec<(u64, u64)> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let end = (e.start_us + WINDOW_US).max(e.done_us.unwrap_or(e.start_us) + AFTER_DONE_US);
            (e.start_us, events.get(i + 1).map_or(end, |n| end.min(n.start_us)))
        })
        .collect()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

fn print_rtt(stream: &Stream) {
    let show = |v: Option<u64>| v.map_or("-".to_owned(), |us| format!("{:.1} ms", ms(us)));
    println!(
        "    round trip from the capture: {} on the data path (least TCP timestamp echo delay); {} to the main (SYN -> SYN-ACK)",
        show(stream.data_rtt_us),
        show(stream.handshake_rtt_us)
    );
}

fn report_moves(run: &Run) {
    println!();
    println!("(a) {} graceful move(s) during one download", run.events.len());
    print_notes(run);
    let Some(stream) = &run.stream else {
        println!("    no connection to the VIP in the capture");
        return;
    };
    print_rtt(stream);
    let rtt = stream.rtt_us();
    println!(
        "    {:<4} {:<16} {:>7} {:>10} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}  target: stall <= RTT + 2 ms",
        "move", "from -> to", "at MiB", "cmd->done", "stall ms", "stall/RTT", "switch ms", "rewind B", "seg B", "resent B", "dup B"
    );
    let mut stalls = Vec::new();
    for (n, (e, (from, to))) in run.events.iter().zip(windows(&run.events)).enumerate() {
        let path = format!("{} -> {}", e.from, e.to.as_deref().unwrap_or("?"));
        let took = e.done_us.map_or("-".to_owned(), |d| format!("{:.0} ms", ms(d - e.start_us)));
        let stall = stream.largest_new_gap(from, to);
        let switch = stream.sender_switch(from, to);
        let switch_ms = switch.map_or("-".to_owned(), |w| format!("{:.1}", ms(w.gap.us())));
        let segs = switch
            .map_or("-".to_owned(), |w| format!("{}->{}", stream.largest_payload(w.old_sender), stream.largest_payload(w.new_sender)));
        let rewind = switch.map_or("-".to_owned(), |w| w.rewind.to_string());
        let resent = stream.resent_between(from, to);
        let (stall_s, ratio, verdict) = match (stall, rtt) {
            (Some(g), Some(r)) => {
                stalls.push(g.us() as f64 / r as f64);
                let limit = r + STALL_SLACK_US;
                let verdict =
                    if g.us() <= limit { "target met".to_owned() } else { format!("target missed by {:.1} ms", ms(g.us() - limit)) };
                (format!("{:.1}", ms(g.us())), format!("{:.2}", g.us() as f64 / r as f64), verdict)
            }
            (Some(g), None) => (format!("{:.1}", ms(g.us())), "-".to_owned(), "no RTT".to_owned()),
            (None, _) => ("-".to_owned(), "-".to_owned(), "no new data in the window".to_owned()),
        };
        println!(
            "    {:<4} {:<16} {:>7.1} {:>10} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}  {verdict}",
            n + 1,
            path,
            mib(e.at_bytes),
            took,
            stall_s,
            ratio,
            switch_ms,
            rewind,
            segs,
            resent.bytes,
            resent.duplicate
        );
        if let Some(p) = &e.problem {
            println!("         PROBLEM: {p}");
        }
    }
    if !stalls.is_empty() {
        stalls.sort_by(f64::total_cmp);
        println!(
            "    stall/RTT: median {:.2}, worst {:.2} (1.00 = one round trip; switch = last segment of the old owner to the first of the new;\n     rewind = how far below the highest byte sent the new owner started; seg = largest segment old->new)",
            stalls[stalls.len() / 2],
            stalls[stalls.len() - 1]
        );
    }
}

fn print_notes(run: &Run) {
    for n in &run.notes {
        println!("    PROBLEM: {n}");
    }
}

fn report_kills(run: &Run) {
    println!();
    println!("(b) {} participant death(s) (SIGKILL of the serving participant) during one download", run.events.len());
    print_notes(run);
    let Some(stream) = &run.stream else {
        println!("    no connection to the VIP in the capture");
        return;
    };
    print_rtt(stream);
    println!(
        "    {:<4} {:<16} {:>7} {:>10} {:>14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  target: death -> new byte <= 1 s",
        "kill", "dead -> new", "at MiB", "kill->done", "death->byte ms", "/GLB 6 s", "tail B", "rewind B", "seg B", "resent B", "dup B"
    );
    for (n, (e, (from, to))) in run.events.iter().zip(windows(&run.events)).enumerate() {
        let path = format!("{} -> {}", e.from, e.to.as_deref().unwrap_or("?"));
        let took = e.done_us.map_or("-".to_owned(), |d| format!("{:.0} ms", ms(d - e.start_us)));
        let rec = stream.recovery_after(from, to);
        let switch = stream.sender_switch(from, to);
        let segs = switch
            .map_or("-".to_owned(), |w| format!("{}->{}", stream.largest_payload(w.old_sender), stream.largest_payload(w.new_sender)));
        let rewind = switch.map_or("-".to_owned(), |w| w.rewind.to_string());
        let resent = stream.resent_between(from, to);
        let (first, glb, tail, verdict) = match rec {
            Some(r) => {
                let us = r.first_new_us - e.start_us;
                let how = if r.by_sender { "" } else { " (by the longest pause: no change of sender seen)" };
                let verdict = if us <= RECOVERY_TARGET_US { "target met" } else { "target missed" };
                (
                    format!("{:.1}", ms(us)),
                    format!("{:.3}", us as f64 / GLB_DETECTION_US as f64),
                    r.tail_bytes.to_string(),
                    format!("{verdict}{how}"),
                )
            }
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned(), "target missed: no new data from another participant".to_owned()),
        };
        println!(
            "    {:<4} {:<16} {:>7.1} {:>10} {:>14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  {verdict}",
            n + 1,
            path,
            mib(e.at_bytes),
            took,
            first,
            glb,
            tail,
            rewind,
            segs,
            resent.bytes,
            resent.duplicate
        );
        if let Some(p) = &e.problem {
            println!("         PROBLEM: {p}");
        }
    }
    println!(
        "    (tail = new bytes the dead participant had in flight that still arrived; /GLB = share of GLB's 6 s failure detection alone)"
    );
    println!("    (rewind = how far below the highest byte sent the new participant started; seg = largest segment old->new)");
}

/// Prints both downloads' byte accounting side by side; returns whether no byte was lost.
fn report_totals(runs: &[&Run], size: u64, sha: &str) -> bool {
    println!();
    println!("(c) bytes, per download");
    let name = |r: &Run| if r.kind == Kind::Move { "moves" } else { "kills" };
    let mut header = format!("    {:<36}", "");
    for r in runs {
        header.push_str(&format!(" {:>20}", name(r)));
    }
    println!("{header}");
    let row = |label: &str, f: &dyn Fn(&Run) -> String| {
        let mut line = format!("    {label:<36}");
        for r in runs {
            line.push_str(&format!(" {:>20}", f(r)));
        }
        println!("{line}");
    };
    let lost = |r: &Run| size.saturating_sub(r.download.bytes);
    let head =
        |r: &Run| r.download.stderr.split_whitespace().find_map(|w| w.strip_prefix("head_bytes=")).and_then(|v| v.parse::<u64>().ok());
    let windows_resent =
        |r: &Run| r.stream.as_ref().map_or(0, |s| windows(&r.events).iter().map(|&(a, b)| s.resent_between(a, b).bytes).sum::<u64>());
    row("curl exit", &|r| r.download.exit.to_string());
    row("body bytes received / expected", &|r| format!("{}/{}", r.download.bytes, size));
    row("sha256", &|r| if r.download.sha256 == sha { "match".to_owned() } else { "MISMATCH".to_owned() });
    row("bytes lost (must be 0)", &|r| lost(r).to_string());
    row("resent bytes, whole download", &|r| r.stream.as_ref().map_or("-".to_owned(), |s| s.resent_total().bytes.to_string()));
    row("resent bytes, in move/kill windows", &|r| windows_resent(r).to_string());
    row("  of all resent: already at the client", &|r| {
        r.stream.as_ref().map_or("-".to_owned(), |s| s.resent_total().duplicate.to_string())
    });
    row("stream end = head + body", &|r| match (r.stream.as_ref(), head(r)) {
        (Some(s), Some(h)) if s.length() == h + size => format!("yes ({} + {size})", h),
        (Some(s), Some(h)) => format!("NO: {} != {}", s.length(), h + size),
        (Some(s), None) => format!("{} (head ?)", s.length()),
        (None, _) => "-".to_owned(),
    });
    row("bytes missing from the capture", &|r| r.stream.as_ref().map_or("-".to_owned(), |s| s.holes.to_string()));
    row("packets tcpdump dropped", &|r| r.captured.dropped.map_or("?".to_owned(), |d| d.to_string()));
    row("resets at the client", &|r| r.stream.as_ref().map_or("-".to_owned(), |s| s.resets.to_string()));
    row("download time", &|r| format!("{:.2} s", r.download.seconds));
    let mut ok = true;
    for r in runs {
        if r.download.exit != 0 || lost(r) != 0 || r.download.sha256 != sha {
            ok = false;
            let said: Vec<&str> = r.download.stderr.lines().filter(|l| !l.starts_with("head_bytes=")).collect();
            println!("    {}: LOST BYTES or wrong content; curl said: {}", name(r), said.join(" ").trim());
        }
    }
    ok
}

fn print_logs(cluster: &Cluster) {
    println!();
    println!("Something did not complete; server logs (last lines) from {}:", cluster.lab.state_dir().display());
    let mut nodes = vec![(cluster.main_node().unwrap_or_else(|_| "main".to_owned()), "baton-main")];
    nodes.extend(ROTATION.iter().map(|p| ((*p).to_owned(), "baton-participant")));
    for (node, bin) in nodes {
        println!("==== {bin} in {node} ====\n{}", strip_ansi(&cluster.log_tail(&node, bin)));
    }
}

/// Text without ANSI escape sequences (the servers' logs are coloured).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(start_us: u64, done_us: Option<u64>) -> Event {
        Event { from: "p-fra".into(), to: None, at_bytes: 0, start_us, done_us, problem: None }
    }

    #[test]
    fn windows_last_two_seconds_or_past_completion_and_stop_at_the_next_event() {
        let evs = [event(1_000_000, Some(1_100_000)), event(2_500_000, Some(5_000_000)), event(9_000_000, None)];
        assert_eq!(windows(&evs), vec![(1_000_000, 2_500_000), (2_500_000, 5_500_000), (9_000_000, 11_000_000)]);
    }

    #[test]
    fn ansi_colours_are_removed() {
        assert_eq!(strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"), "2026  INFO x");
    }
}

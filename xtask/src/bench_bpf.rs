//! `cargo xtask bench bpf`: what the main's data plane costs, measured side by side with its
//! reference in the same run.
//!
//! 1. **BPF program cost**: the main program, loaded and attached in a fresh namespace
//!    (`bbpf-<pid>`, 198.18.232.0/24), timed by the kernel with `BPF_PROG_TEST_RUN` on a packet
//!    it passes (no flow) and on one it encapsulates (a forwarded flow), next to the empty
//!    program of the same hook (`ebpf/c/empty.bpf.c`), for tc and XDP.
//! 2. **Forwarding rate on one core**: a generator namespace sends one forwarded flow's ACKs
//!    through a veth to the main namespace, whose data plane (XDP, tc, or the userspace one)
//!    encapsulates them through a second veth to a sink namespace, where an XDP program drops
//!    them and the interface counts them. Modes alternate round by round.
//!
//! Everything it makes (namespaces `bbpf-*` / `bpps-*`, pins under `/sys/fs/bpf/baton-bench-*`)
//! is removed when it returns, also on failure; leftovers of a crashed run (whose process is
//! gone) are removed first. It never touches the host's interfaces.

use std::fs::File;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_ebpf::bench::{EmptyPrograms, SinkXdp, TimedProgram};
use baton_ebpf::{AttachMode, Encap, FlowKey, MainCounter, MainDataplane, MainOptions, UserspaceDataplane, Verdict};

use crate::report::{Comparison, Measured, Report, Target};

/// Where bpffs is mounted (`ensure_host` mounts it).
const BPFFS: &str = "/sys/fs/bpf";
/// Name prefix of this benchmark's pin directories under [`BPFFS`].
const PIN_PREFIX: &str = "baton-bench-";
/// Name prefix of the program-cost namespace.
const COST_NS_PREFIX: &str = "bbpf-";
/// Name prefix of the forwarding-rate namespaces.
const RATE_NS_PREFIX: &str = "bpps-";

/// Runs per `BPF_PROG_TEST_RUN` of a frame the program leaves as it is: enough for the
/// kernel's mean to be stable to a tenth of a nanosecond, short enough (well under a second)
/// to repeat.
const COST_REPEAT: u32 = 1_000_000;
/// Repeated test runs per program and frame; the median is reported.
const COST_SAMPLES: usize = 5;
/// Single test runs (repeat 1) of the forwarded frame per program: the kernel would hand a
/// repeat the frame the first run encapsulated, so each run is its own syscall and the
/// kernel's durations are averaged.
const FORWARD_SINGLE_RUNS: usize = 100_000;

/// Rounds per forwarding mode (modes alternate within a round); the median is reported.
const RATE_ROUNDS: usize = 3;
/// How long the generator sends in one round (a round stays under 3 s with the set-up).
const RATE_SEND: Duration = Duration::from_secs(2);
/// Time after the generator stops for frames still in the veth rings to reach the sink.
const RATE_DRAIN: Duration = Duration::from_millis(100);
/// Frames per `sendmmsg`: amortises the syscall without holding the CPU for long.
const SEND_BATCH: usize = 64;
/// CPU the generator runs on.
const GEN_CPU: usize = 0;
/// CPU the main's forwarding runs on (its NAPI thread, the userspace workers): "one core".
const FORWARD_CPU: usize = 1;
/// Forwarded at least this share of what was sent: the generator, not the forwarder, set
/// the rate.
const GENERATOR_LIMITED: f64 = 0.97;

/// The program-cost lab: the main's interface and the participant behind it.
mod cost_lab {
    use std::net::{Ipv4Addr, SocketAddrV4};

    pub const MAIN_IFACE: &str = "bbpf0";
    pub const PEER_IFACE: &str = "bbpf1";
    pub const MAIN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 232, 1);
    pub const MAIN_CIDR: &str = "198.18.232.1/24";
    pub const MAIN_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0x32, 0x01];
    pub const PARTICIPANT: Ipv4Addr = Ipv4Addr::new(198, 18, 232, 2);
    pub const PARTICIPANT_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0x32, 0x02];
    /// The client's router, source MAC of the frames.
    pub const ROUTER_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0x32, 0xfe];
    pub const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 232, 100), 40_000);
    /// Same client, another port: no flow.
    pub const OTHER_CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 232, 100), 40_001);
    pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 250), 80);
}

/// The forwarding-rate lab: gen --veth--> main --veth--> sink.
mod rate_lab {
    use std::net::{Ipv4Addr, SocketAddrV4};

    pub const GEN_IFACE: &str = "bpps-g0";
    pub const GEN_CIDR: &str = "198.18.233.2/24";
    pub const GEN_ADDR: &str = "198.18.233.2";
    pub const GEN_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0x33, 0x02];
    /// The main's gen-facing interface, where the data plane runs.
    pub const MAIN_IN: &str = "bpps-m0";
    pub const MAIN_IN_CIDR: &str = "198.18.233.1/24";
    pub const MAIN_IN_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0x33, 0x01];
    /// The main's sink-facing interface; its address is the outer source.
    pub const MAIN_OUT: &str = "bpps-m1";
    pub const MAIN_OUT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 234, 1);
    pub const MAIN_OUT_CIDR: &str = "198.18.234.1/24";
    pub const MAIN_OUT_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0x34, 0x01];
    pub const SINK_IFACE: &str = "bpps-s0";
    pub const SINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 234, 2);
    pub const SINK_CIDR: &str = "198.18.234.2/24";
    pub const SINK_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0x34, 0x02];
    /// The clients' subnet, behind the generator.
    pub const CLIENT_NET: &str = "198.18.235.0/24";
    pub const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 235, 7), 40_000);
    pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 250), 80);
}

/// Runs the benchmark and adds its comparisons to `report`.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
    remove_stale();
    report.context.push(format!("bench bpf: kernel {}, {} CPUs", kernel_release(), cpu_count()));
    let cost = program_cost(report).context("BPF program cost");
    let rate = forwarding_rate(report).context("forwarding rate");
    // Both parts run even when one fails; the first failure is the result.
    cost.and(rate)
}

// ---------------------------------------------------------------------------------------------
// Part 1: program cost.

fn program_cost(report: &mut Report) -> anyhow::Result<()> {
    use cost_lab::*;
    println!("BPF program cost (BPF_PROG_TEST_RUN, kernel-timed)");
    let ns = Netns::create(format!("{COST_NS_PREFIX}{}", std::process::id()))?;
    ns.ip(&["link", "add", MAIN_IFACE, "address", &mac(MAIN_MAC), "type", "veth", "peer", "name", PEER_IFACE, "address", &mac(PARTICIPANT_MAC)])?;
    ns.ip(&["addr", "add", MAIN_CIDR, "dev", MAIN_IFACE])?;
    ns.ip(&["link", "set", MAIN_IFACE, "up"])?;
    ns.ip(&["link", "set", PEER_IFACE, "up"])?;
    ns.ip(&["neigh", "replace", &PARTICIPANT.to_string(), "lladdr", &mac(PARTICIPANT_MAC), "dev", MAIN_IFACE, "nud", "permanent"])?;
    in_ns(&ns.name, None, || {
        sysctl("net/ipv4/conf/all/forwarding", "1")?;
        sysctl(&format!("net/ipv4/conf/{MAIN_IFACE}/forwarding"), "1")
    })?;
    let pins = PinDir::new("cost")?;
    // Test runs resolve the interface index in the caller's namespace: everything runs in the lab's.
    let pin_dir = pins.path.clone();
    let rows = in_ns(&ns.name, None, move || measure_cost(&pin_dir))?;
    for row in rows {
        report.push(row);
    }
    drop(pins);
    drop(ns);
    Ok(())
}

/// Part 1 in the calling thread's namespace (the lab's): the rows for tc and XDP.
fn measure_cost(pin_dir: &Path) -> anyhow::Result<Vec<Comparison>> {
    use cost_lab::*;
    let mut rows = Vec::new();
    let empty = EmptyPrograms::load().context("loading the empty programs")?;

    let forward_frame = tcp_ack_frame(MAIN_MAC, ROUTER_MAC, CLIENT, VIP, 1_000_000, 2_000_000);
    let pass_frame = tcp_ack_frame(MAIN_MAC, ROUTER_MAC, OTHER_CLIENT, VIP, 1_000_000, 2_000_000);
    let key = FlowKey::new(CLIENT, VIP);
    let opts = |mode| MainOptions { iface: MAIN_IFACE.to_owned(), mode, pin_dir: pin_dir.to_owned(), local_addr: MAIN_ADDR, encap: Encap::Ipip };

    for mode in [AttachMode::Tc, AttachMode::Xdp] {
        let name = mode_name(mode);
        let dp = MainDataplane::load(&opts(mode)).context("loading the main's data plane")?;
        dp.forward(&key, PARTICIPANT).context("installing the forwarded flow")?;
        let main = TimedProgram::by_id(dp.program_id()?, mode).context("opening the main program")?;
        let ifindex = dp.ifindex();
        let forward_verdict = if mode == AttachMode::Tc { Verdict::Redirect } else { Verdict::Tx };

        // The frames do what the rows say they do.
        let pass = main.time(&pass_frame, ifindex, 1)?;
        if pass.verdict != Verdict::Pass || pass.data != pass_frame {
            bail!("{name}: the no-flow frame was not passed unchanged ({:?})", pass.verdict);
        }
        let fwd = main.time(&forward_frame, ifindex, 1)?;
        if fwd.verdict != forward_verdict || fwd.data.len() != forward_frame.len() + 20 {
            bail!("{name}: the forwarded flow's frame was not encapsulated and sent ({:?}, {} bytes)", fwd.verdict, fwd.data.len());
        }
        for (what, frame) in [("no-flow", &pass_frame), ("forwarded", &forward_frame)] {
            let e = empty.time(mode, frame, ifindex, 1)?;
            if e.verdict != Verdict::Pass {
                bail!("{name}: the empty program did not pass the {what} frame ({:?})", e.verdict);
            }
        }

        // PASS: repeated in the kernel, interleaved sample by sample.
        let (mut main_pass, mut empty_pass) = (Vec::new(), Vec::new());
        for _ in 0..COST_SAMPLES {
            main_pass.push(f64::from(main.time(&pass_frame, ifindex, COST_REPEAT)?.ns_per_run));
            empty_pass.push(f64::from(empty.time(mode, &pass_frame, ifindex, COST_REPEAT)?.ns_per_run));
        }

        // FORWARD: one run per syscall, alternating main and empty; every main run must forward.
        let before = counter(&dp, MainCounter::ForwardOk)?;
        let (mut main_sum, mut empty_sum) = (0u64, 0u64);
        for _ in 0..FORWARD_SINGLE_RUNS {
            let t = main.time(&forward_frame, ifindex, 1)?;
            if t.verdict != forward_verdict {
                bail!("{name}: a timed run of the forwarded frame returned {:?}", t.verdict);
            }
            main_sum += u64::from(t.ns_per_run);
            empty_sum += u64::from(empty.time(mode, &forward_frame, ifindex, 1)?.ns_per_run);
        }
        let forwarded = counter(&dp, MainCounter::ForwardOk)? - before;
        if forwarded != FORWARD_SINGLE_RUNS as u64 {
            bail!("{name}: {forwarded} of {FORWARD_SINGLE_RUNS} timed runs counted as forward_ok");
        }
        let main_fwd = main_sum as f64 / FORWARD_SINGLE_RUNS as f64;
        let empty_fwd = empty_sum as f64 / FORWARD_SINGLE_RUNS as f64;
        let (mp, ep) = (median(&mut main_pass), median(&mut empty_pass));
        println!("  {name}: PASS main {mp:.1} ns, empty {ep:.1} ns; FORWARD main {main_fwd:.1} ns, empty {empty_fwd:.1} ns");

        let row = |what: String, subject: f64, reference: f64, note: String| Comparison {
            section: "BPF program cost".into(),
            what,
            subject: Measured::new("main program", subject),
            reference: Measured::new("empty program", reference),
            unit: "ns/packet".into(),
            higher_is_better: false,
            target: None,
            note,
        };
        rows.push(row(
            format!("PASS packet, no flow ({name})"),
            mp,
            ep,
            format!(
                "BPF_PROG_TEST_RUN with repeat {COST_REPEAT}, the kernel's mean duration; median of {COST_SAMPLES} runs per program, \
                 interleaved; a {}-byte TCP ACK to the VIP",
                pass_frame.len()
            ),
        ));
        rows.push(row(
            format!("FORWARD packet, IPIP ({name})"),
            main_fwd,
            empty_fwd,
            format!(
                "mean kernel duration of {FORWARD_SINGLE_RUNS} single runs per program, alternating (a repeat would run the program \
                 on the frame it had already encapsulated); each run verified as {} and counted as forward_ok; both sides include \
                 the test-run timer's own overhead",
                if mode == AttachMode::Tc { "TC_ACT_REDIRECT" } else { "XDP_TX" }
            ),
        ));
        drop(main);
        drop(dp);
    }
    drop(empty);
    Ok(rows)
}

fn counter(dp: &MainDataplane, which: MainCounter) -> anyhow::Result<u64> {
    Ok(dp.counters()?.into_iter().find(|(c, _)| *c == which).map_or(0, |(_, v)| v))
}

// ---------------------------------------------------------------------------------------------
// Part 2: forwarding rate.

/// How the main forwards in the rate benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FwdMode {
    Xdp,
    Tc,
    Userspace,
}

impl FwdMode {
    const ALL: [FwdMode; 3] = [FwdMode::Xdp, FwdMode::Tc, FwdMode::Userspace];

    fn name(self) -> &'static str {
        match self {
            FwdMode::Xdp => "xdp",
            FwdMode::Tc => "tc",
            FwdMode::Userspace => "userspace",
        }
    }
}

/// A running forwarder in the main namespace.
enum Forwarder {
    Bpf(MainDataplane),
    Userspace(UserspaceDataplane),
}

impl Forwarder {
    /// Packets it reports as forwarded so far (for the sanity check against the sink).
    fn forwarded(&self) -> anyhow::Result<u64> {
        let counters = match self {
            Forwarder::Bpf(dp) => dp.counters()?,
            Forwarder::Userspace(dp) => dp.counters()?,
        };
        Ok(counters.into_iter().find(|(c, _)| *c == MainCounter::ForwardOk).map_or(0, |(_, v)| v))
    }
}

/// Starts `mode`'s forwarder on the main namespace's gen-facing interface (from a thread
/// pinned to [`FORWARD_CPU`], so threads it starts inherit that CPU) with the lab's flow
/// forwarded to the sink. Whatever was attached through `pin_dir` before is detached first;
/// the userspace data plane keeps its table in `state_dir`.
fn start_forwarder(mode: FwdMode, main_ns: &str, pin_dir: &Path, state_dir: &Path) -> anyhow::Result<Forwarder> {
    use rate_lab::*;
    baton_ebpf::detach_pinned(pin_dir).context("detaching the previous forwarder")?;
    let key = FlowKey::new(CLIENT, VIP);
    let opts = |mode| MainOptions { iface: MAIN_IN.to_owned(), mode, pin_dir: pin_dir.to_owned(), local_addr: MAIN_OUT_ADDR, encap: Encap::Ipip };
    in_ns(main_ns, Some(FORWARD_CPU), move || match mode {
        FwdMode::Xdp | FwdMode::Tc => {
            let attach = if mode == FwdMode::Xdp { AttachMode::Xdp } else { AttachMode::Tc };
            let dp = MainDataplane::load(&opts(attach)).context("loading the main's data plane")?;
            dp.forward(&key, SINK_ADDR).context("installing the forwarded flow")?;
            Ok(Forwarder::Bpf(dp))
        }
        // Its receive thread is started here, so it inherits this thread's CPU and namespace.
        FwdMode::Userspace => {
            let dp = UserspaceDataplane::load(&opts(AttachMode::Tc), state_dir).context("starting the userspace data plane")?;
            dp.forward(&key, SINK_ADDR).context("installing the forwarded flow")?;
            Ok(Forwarder::Userspace(dp))
        }
    })
}

/// Stops a forwarder: drops its handles and detaches what it attached.
fn stop_forwarder(fwd: Forwarder, pin_dir: &Path) -> anyhow::Result<()> {
    match fwd {
        Forwarder::Bpf(dp) => drop(dp),
        // Stops its threads and removes its nftables table.
        Forwarder::Userspace(dp) => dp.detach().context("stopping the userspace data plane")?,
    }
    baton_ebpf::detach_pinned(pin_dir).context("detaching the forwarder")?;
    Ok(())
}

/// One measured round.
#[derive(Clone, Copy, Debug)]
struct Round {
    sent_pps: f64,
    forwarded_pps: f64,
    /// `sendmmsg` calls refused because the path had not freed the earlier frames yet.
    refused: u64,
}

fn forwarding_rate(report: &mut Report) -> anyhow::Result<()> {
    use rate_lab::*;
    println!("Forwarding rate (one core): gen -> main ({}) -> sink, {RATE_ROUNDS} rounds of {} s per mode", MAIN_IN, RATE_SEND.as_secs_f64());
    let pid = std::process::id();
    let gen = Netns::create(format!("{RATE_NS_PREFIX}{pid}-gen"))?;
    let main = Netns::create(format!("{RATE_NS_PREFIX}{pid}-main"))?;
    let sink = Netns::create(format!("{RATE_NS_PREFIX}{pid}-sink"))?;
    main.ip(&["link", "add", MAIN_IN, "address", &mac(MAIN_IN_MAC), "type", "veth", "peer", "name", GEN_IFACE, "address", &mac(GEN_MAC), "netns", &gen.name])?;
    main.ip(&["link", "add", MAIN_OUT, "address", &mac(MAIN_OUT_MAC), "type", "veth", "peer", "name", SINK_IFACE, "address", &mac(SINK_MAC), "netns", &sink.name])?;
    main.ip(&["addr", "add", MAIN_IN_CIDR, "dev", MAIN_IN])?;
    main.ip(&["addr", "add", MAIN_OUT_CIDR, "dev", MAIN_OUT])?;
    main.ip(&["addr", "add", &format!("{}/32", VIP.ip()), "dev", "lo"])?;
    gen.ip(&["addr", "add", GEN_CIDR, "dev", GEN_IFACE])?;
    sink.ip(&["addr", "add", SINK_CIDR, "dev", SINK_IFACE])?;
    for (ns, dev) in [(&main, MAIN_IN), (&main, MAIN_OUT), (&gen, GEN_IFACE), (&sink, SINK_IFACE)] {
        ns.ip(&["link", "set", dev, "up"])?;
    }
    main.ip(&["route", "add", CLIENT_NET, "via", GEN_ADDR])?;
    // XDP cannot resolve a neighbour: the sink's entry is static.
    main.ip(&["neigh", "replace", &SINK_ADDR.to_string(), "lladdr", &mac(SINK_MAC), "dev", MAIN_OUT, "nud", "permanent"])?;
    in_ns(&main.name, None, || {
        for path in ["net/ipv4/conf/all/forwarding", &format!("net/ipv4/conf/{MAIN_IN}/forwarding"), &format!("net/ipv4/conf/{MAIN_OUT}/forwarding")] {
            sysctl(path, "1")?;
        }
        Ok(())
    })?;
    // GRO gives the veth a NAPI context in every mode (XDP would give it one anyway), so all
    // three modes run the same receive path in a NAPI thread that can be pinned.
    baton_lab::offload::set_gro(&main.name, MAIN_IN, true).context("GRO on the main's interface")?;
    main.exec_sh(&format!("echo 1 > /sys/class/net/{MAIN_IN}/threaded")).context("threaded NAPI on the main's interface")?;
    let _sink_xdp = in_ns(&sink.name, None, || SinkXdp::attach(SINK_IFACE).context("attaching the sink's XDP program"))?;
    let pins = PinDir::new("rate")?;
    let state = TempDir::new("userspace")?;
    let frame = tcp_ack_frame(MAIN_IN_MAC, GEN_MAC, CLIENT, VIP, 1_000_000, 2_000_000);

    let mut rounds: Vec<(FwdMode, Round)> = Vec::new();
    let mut unavailable: Vec<(FwdMode, String)> = Vec::new();
    let mut napi_note: Option<String> = None;
    for round in 0..RATE_ROUNDS {
        for mode in FwdMode::ALL {
            if unavailable.iter().any(|(m, _)| *m == mode) {
                continue;
            }
            let fwd = match start_forwarder(mode, &main.name, &pins.path, &state.path) {
                Ok(f) => f,
                Err(e) if mode == FwdMode::Userspace => {
                    println!("  {}: not measured: {e:#}", mode.name());
                    unavailable.push((mode, format!("{e:#}")));
                    continue;
                }
                Err(e) => return Err(e.context(format!("starting the {} forwarder", mode.name()))),
            };
            let result = (|| -> anyhow::Result<Round> {
                // Give the kernel a moment to create the NAPI thread, then pin it.
                std::thread::sleep(Duration::from_millis(50));
                if let Err(e) = pin_napi_thread(MAIN_IN, FORWARD_CPU) {
                    napi_note.get_or_insert(format!("{e:#}"));
                }
                let rx0 = rx_packets(&sink.name, SINK_IFACE)?;
                let fwd0 = fwd.forwarded()?;
                let sent = generate(&gen.name, GEN_IFACE, &frame, RATE_SEND)?;
                std::thread::sleep(RATE_DRAIN);
                let rx = rx_packets(&sink.name, SINK_IFACE)?.saturating_sub(rx0);
                let counted = fwd.forwarded()?.saturating_sub(fwd0);
                if rx == 0 {
                    bail!("{}: nothing reached the sink ({} sent, {counted} counted as forwarded)", mode.name(), sent.packets);
                }
                let r = Round { sent_pps: sent.packets as f64 / sent.seconds, forwarded_pps: rx as f64 / sent.seconds, refused: sent.refused };
                println!(
                    "  round {} {:>9}: sent {:>10.0} pps, at the sink {:>10.0} pps ({rx} frames; data plane counted {counted}; {} full-buffer refusals)",
                    round + 1,
                    mode.name(),
                    r.sent_pps,
                    r.forwarded_pps,
                    sent.refused
                );
                Ok(r)
            })();
            let stopped = stop_forwarder(fwd, &pins.path);
            rounds.push((mode, result.with_context(|| format!("round {} of {}", round + 1, mode.name()))?));
            stopped?;
        }
    }

    let med = |mode: FwdMode| -> Option<(f64, f64)> {
        let mut fwd: Vec<f64> = rounds.iter().filter(|(m, _)| *m == mode).map(|(_, r)| r.forwarded_pps).collect();
        let mut sent: Vec<f64> = rounds.iter().filter(|(m, _)| *m == mode).map(|(_, r)| r.sent_pps).collect();
        (!fwd.is_empty()).then(|| (median(&mut fwd), median(&mut sent)))
    };
    let refused = |mode: FwdMode| rounds.iter().filter(|(m, _)| *m == mode).map(|(_, r)| r.refused).sum::<u64>();
    // Everything sent arrived and the socket never pushed back: the generator set the pace.
    let limited = |mode: FwdMode| refused(mode) == 0 && med(mode).is_some_and(|(f, s)| f >= GENERATOR_LIMITED * s);
    let mut note = format!(
        "sink packets per second, median of {RATE_ROUNDS} rounds of {} s, modes alternating; one forwarded flow (IPIP); generator: \
         AF_PACKET sendmmsg x{SEND_BATCH}, non-blocking, of a {}-byte ACK pinned to CPU {GEN_CPU}; main: veth with GRO and threaded NAPI pinned \
         to CPU {FORWARD_CPU}; sink: XDP drop",
        RATE_SEND.as_secs_f64(),
        frame.len()
    );
    for mode in FwdMode::ALL {
        if let Some((f, s)) = med(mode) {
            note.push_str(&format!("; {}: median sent {} pps", mode.name(), s.round()));
            if limited(mode) {
                note.push_str(" (generator-limited: all of it arrived and the socket never refused, so this mode may forward more)");
            } else if refused(mode) > 0 {
                note.push_str(&format!(" ({} sendmmsg calls refused while the path still held earlier frames: forwarder-limited)", refused(mode)));
            } else if f < GENERATOR_LIMITED * s {
                note.push_str(" (frames lost on the way: forwarder-limited)");
            }
        }
    }
    if let Some(n) = &napi_note {
        note.push_str(&format!("; NAPI thread not pinned: {n}"));
    }
    let mut push = |what: &str, a: FwdMode, b: FwdMode, target: Option<Target>| {
        if let (Some((fa, _)), Some((fb, _))) = (med(a), med(b)) {
            report.push(Comparison {
                section: "Forwarding rate (one core)".into(),
                what: what.into(),
                subject: Measured::new(a.name(), fa),
                reference: Measured::new(b.name(), fb),
                unit: "pps".into(),
                higher_is_better: true,
                target,
                note: note.clone(),
            });
        }
    };
    push("xdp vs userspace", FwdMode::Xdp, FwdMode::Userspace, Some(Target::RatioAtLeast(10.0)));
    push("tc vs userspace", FwdMode::Tc, FwdMode::Userspace, None);
    push("xdp vs tc", FwdMode::Xdp, FwdMode::Tc, None);
    for (mode, why) in &unavailable {
        report.context.push(format!("bench bpf: forwarding rate of {} not measured: {why}", mode.name()));
    }
    drop(state);
    drop(pins);
    Ok(())
}

/// What the generator did.
#[derive(Clone, Copy, Debug)]
struct Sent {
    packets: u64,
    /// `sendmmsg` calls the kernel refused (socket buffer full).
    refused: u64,
    seconds: f64,
}

/// Sends `frame` out of `iface` in `ns` for `duration` from a thread pinned to [`GEN_CPU`],
/// in `sendmmsg` batches of [`SEND_BATCH`] through an AF_PACKET socket that bypasses the qdisc.
fn generate(ns: &str, iface: &str, frame: &[u8], duration: Duration) -> anyhow::Result<Sent> {
    let frame = frame.to_vec();
    let iface = iface.to_owned();
    in_ns(ns, Some(GEN_CPU), move || {
        let ifindex = if_index(&iface)?;
        // SAFETY: plain socket(2); the fd is owned right below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int of the stated size.
        let rc = unsafe {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, (&one as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as u32)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
        }
        // SAFETY: a zeroed sockaddr_ll is valid; the used fields are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = i32::try_from(ifindex).context("ifindex")?;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let mut iov = libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() };
        // SAFETY: a zeroed mmsghdr is valid; each points at `addr` and `iov`, which outlive the loop.
        let mut msgs: Vec<libc::mmsghdr> = (0..SEND_BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for m in &mut msgs {
            m.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let (mut packets, mut refused) = (0u64, 0u64);
        let start = Instant::now();
        while start.elapsed() < duration {
            // SAFETY: msgs holds SEND_BATCH valid headers whose buffers outlive the call.
            // Never blocks: a full socket buffer or ring is a refusal, so the generator does not
            // wait for the forwarder and "sent" only counts frames the kernel accepted.
            let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), SEND_BATCH as u32, libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => refused += 1,
                    _ => return Err(e).context("sendmmsg"),
                }
            } else {
                packets += n as u64;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        if packets == 0 {
            bail!("the generator sent nothing ({refused} refused batches)");
        }
        Ok(Sent { packets, refused, seconds })
    })
}

/// `rx_packets` of `iface` in namespace `ns` (from that namespace's `/proc/net/dev`).
fn rx_packets(ns: &str, iface: &str) -> anyhow::Result<u64> {
    let iface = iface.to_owned();
    in_ns(ns, None, move || {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").context("reading /proc/thread-self/net/dev")?;
        parse_rx_packets(&text, &iface).with_context(|| format!("no {iface} in /proc/net/dev of {ns}", ns = "the namespace"))
    })
}

/// The receive-packets column of `iface`'s line in `/proc/net/dev` text.
fn parse_rx_packets(text: &str, iface: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        (name.trim() == iface).then(|| rest.split_whitespace().nth(1)?.parse().ok())?
    })
}

/// Pins the NAPI kernel thread of `iface` (named `napi/<iface>-<id>`, truncated to 15
/// characters) to `cpu`.
fn pin_napi_thread(iface: &str, cpu: usize) -> anyhow::Result<()> {
    let prefix: String = format!("napi/{iface}-").chars().take(15).collect();
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else { continue };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else { continue };
        if comm.trim_end().starts_with(&prefix) {
            set_affinity(pid, cpu).with_context(|| format!("pinning {} (pid {pid})", comm.trim_end()))?;
            pinned += 1;
        }
    }
    if pinned == 0 {
        bail!("no {prefix}* kernel thread");
    }
    Ok(())
}

/// Restricts thread `pid` (0: the calling thread) to `cpu`.
fn set_affinity(pid: libc::pid_t, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; cpu is below CPU_SETSIZE (checked by the caller's CPU count).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid set of the stated size.
    let rc = unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("sched_setaffinity to CPU {cpu}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Frames.

/// RFC 1071 checksum over `data` with a starting sum.
fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame with a client's TCP ACK (with timestamps, no payload) to the VIP.
fn tcp_ack_frame(dst_mac: [u8; 6], src_mac: [u8; 6], client: SocketAddrV4, vip: SocketAddrV4, seq: u32, ack: u32) -> Vec<u8> {
    /// IPv4 header, TCP header with NOP NOP TS.
    const IP_LEN: usize = 20;
    const TCP_LEN: usize = 32;
    let mut f = Vec::with_capacity(14 + IP_LEN + TCP_LEN);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0x00]);
    f.extend_from_slice(&((IP_LEN + TCP_LEN) as u16).to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]);
    f.extend_from_slice(&client.ip().octets());
    f.extend_from_slice(&vip.ip().octets());
    let ip_sum = checksum(0, &f[ip_start..ip_start + IP_LEN]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp_start = f.len();
    f.extend_from_slice(&client.port().to_be_bytes());
    f.extend_from_slice(&vip.port().to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(&[((TCP_LEN / 4) as u8) << 4, 0x10]);
    f.extend_from_slice(&501u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10]);
    f.extend_from_slice(&111_111u32.to_be_bytes());
    f.extend_from_slice(&222_222u32.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&client.ip().octets());
    pseudo.extend_from_slice(&vip.ip().octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(TCP_LEN as u16).to_be_bytes());
    let pseudo_sum: u32 = pseudo.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    let tcp_sum = checksum(pseudo_sum, &f[tcp_start..]);
    f[tcp_start + 16..tcp_start + 18].copy_from_slice(&tcp_sum.to_be_bytes());
    f
}

fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

// ---------------------------------------------------------------------------------------------
// Namespaces, pins, helpers.

/// A named network namespace (`ip netns add`), deleted with everything in it on drop.
#[derive(Debug)]
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> anyhow::Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run_ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No IPv6: the kernel's own router solicitations and MLD reports would be traffic too.
        in_ns(&ns.name, None, || {
            sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
            sysctl("net/ipv6/conf/default/disable_ipv6", "1")
        })
        .or_else(|e| if Path::new("/proc/sys/net/ipv6").exists() { Err(e) } else { Ok(()) })?;
        Ok(ns)
    }

    /// `ip -n <ns> args...`.
    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// `ip netns exec <ns> sh -c script` (a private /sys of the namespace, for sysfs writes).
    fn exec_sh(&self, script: &str) -> anyhow::Result<()> {
        let out = Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", script]).output().context("running ip netns exec")?;
        if !out.status.success() {
            bail!("ip netns exec {} sh -c {script:?}: {}", self.name, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn run_ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A private directory under bpffs, removed with everything pinned in it on drop (which
/// detaches programs attached through links pinned there).
#[derive(Debug)]
struct PinDir {
    path: PathBuf,
}

impl PinDir {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let path = Path::new(BPFFS).join(format!("{PIN_PREFIX}{}-{tag}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(PinDir { path })
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = baton_ebpf::detach_pinned(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A private directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{PIN_PREFIX}{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Runs `f` on a new thread inside network namespace `ns` (threads it starts are in it too),
/// restricted to `cpu` when given.
fn in_ns<T: Send>(ns: &str, cpu: Option<usize>, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<T> {
            let file = File::open(Path::new("/run/netns").join(ns)).with_context(|| format!("opening netns {ns}"))?;
            // SAFETY: setns on this thread only, with a namespace file we hold open.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context(format!("setns {ns}"));
            }
            if let Some(cpu) = cpu {
                set_affinity(0, cpu)?;
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Writes `/proc/sys/<path>` (network sysctls are the calling thread's namespace's).
fn sysctl(path: &str, value: &str) -> anyhow::Result<()> {
    let full = Path::new("/proc/sys").join(path);
    std::fs::write(&full, value).with_context(|| format!("writing {}", full.display()))
}

fn if_index(iface: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface {iface}");
    }
    Ok(index)
}

/// Removes namespaces, pin directories and temporary directories of this benchmark left by a
/// run whose process is gone.
fn remove_stale() {
    let alive = |pid: &str| pid.parse::<u32>().is_ok_and(|p| Path::new("/proc").join(p.to_string()).exists());
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(COST_NS_PREFIX).or_else(|| name.strip_prefix(RATE_NS_PREFIX)) else { continue };
            let pid = rest.split('-').next().unwrap_or_default();
            if !alive(pid) {
                println!("removing namespace {name} of an earlier run");
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(PIN_PREFIX) else { continue };
            if !alive(rest.split('-').next().unwrap_or_default()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(BPFFS) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(PIN_PREFIX) else { continue };
            let pid = rest.split('-').next().unwrap_or_default();
            if !alive(pid) {
                println!("removing pin directory {name} of an earlier run");
                let _ = baton_ebpf::detach_pinned(&entry.path());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Tc => "tc",
        AttachMode::Xdp => "xdp",
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".into())
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_frame_bytes() {
        let f = tcp_ack_frame(rate_lab::MAIN_IN_MAC, rate_lab::GEN_MAC, rate_lab::CLIENT, rate_lab::VIP, 1_000_000, 2_000_000);
        let expected: Vec<u8> = [
            &[0x02, 0xbb, 0, 0, 0x33, 0x01, 0x02, 0xbb, 0, 0, 0x33, 0x02, 0x08, 0x00][..],
            // IPv4: 52 bytes, id 0x1234, DF, TTL 64, TCP, checksum, 198.18.235.7 -> 203.0.113.250.
            &[0x45, 0x00, 0x00, 0x34, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x3a, 0x7b, 198, 18, 235, 7, 203, 0, 113, 250],
            // TCP 40000 -> 80, seq 1000000, ack 2000000, offset 8, ACK, window 501, checksum, urg 0.
            &[0x9c, 0x40, 0x00, 0x50, 0x00, 0x0f, 0x42, 0x40, 0x00, 0x1e, 0x84, 0x80, 0x80, 0x10, 0x01, 0xf5],
            &[0x0d, 0x1b, 0x00, 0x00],
            // NOP NOP TS 111111 222222.
            &[1, 1, 8, 10, 0x00, 0x01, 0xb2, 0x07, 0x00, 0x03, 0x64, 0x0e],
        ]
        .concat();
        assert_eq!(f, expected);
        // Both checksums verify: the sum over the header with its checksum is 0.
        assert_eq!(checksum(0, &f[14..34]), 0);
        let mut pseudo = vec![198, 18, 235, 7, 203, 0, 113, 250, 0, 6, 0, 32];
        pseudo.extend_from_slice(&f[34..]);
        assert_eq!(checksum(0, &pseudo), 0);
    }

    #[test]
    fn proc_net_dev() {
        let text = "Inter-|   Receive                            |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n    \
                    lo:       0       0    0    0    0     0          0         0        0       0\n\
                    bpps-s0: 6600 100 0 0 0 0 0 0 0 0\n";
        assert_eq!(parse_rx_packets(text, "bpps-s0"), Some(100));
        assert_eq!(parse_rx_packets(text, "lo"), Some(0));
        assert_eq!(parse_rx_packets(text, "bpps-m0"), None);
    }
}

//! The delay line: delay, jitter and loss on a lab link, in user space, because the lab's
//! kernel has no `netem`.
//!
//! A link with an impairment runs through one more namespace, `<lab>-<node>_dl`, which holds
//! no address:
//!
//! ```text
//!   node namespace        delay-line namespace                        router namespace
//!   eth0 <---veth---> to-node  [delay line]  to-router <---veth---> veth<i>
//! ```
//!
//! The delay line is a daemon (`baton-lab delay-line`, a hidden subcommand) running in that
//! namespace. It reads every frame that arrives on one side through an AF_PACKET socket
//! (promiscuous, blind to its own output), stamps it, and writes it unchanged on the other side
//! when the link's [`Schedule`] says so: after `delay + U[0, jitter]`, never before the frame
//! ahead of it, or never when the loss draw drops it. Frames keep their MACs, so node and
//! router still see one wire: ARP, the addresses (router `.1`, node `.2`) and the `tbf` rate
//! limits on `eth0` and `veth<i>` work exactly as on a link without a delay line. The veth
//! offloads that would hand it frames bigger than the MTU are off ([`crate::offload`]).
//!
//! It sleeps until the next frame is due or a frame arrives, never spins, and moves frames in
//! batches (`recvmmsg`/`sendmmsg`).
//!
//! Process model: [`start`] runs the daemon from the `baton-lab` binary inside the delay-line
//! namespace. It opens its sockets, forks, and the parent writes the child's pid to
//! `<state_dir>/delay-line-<node>.pid` and exits, so [`start`] returns once the line runs; the
//! child is its own session, logs to `<state_dir>/delay-line-<node>.log`, and outlives
//! whatever started it (`baton-lab up` exits, the lab stays). `down` stops it like any process
//! in the lab's namespaces, and it also exits by itself when one of its interfaces disappears
//! (its namespace or a peer namespace was deleted).
//!
//! A delay line never sends a frame it did not receive, never changes one, and never touches
//! an interface outside its namespace.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};

use baton_packet::{Frame, Options as SocketOptions, PacketError, PacketSocket, RxBatch};

use crate::impairment::{Counters, Impairment, Schedule, QUEUE_LIMIT_FRAMES};
use crate::lab::LabError;
use crate::netns::{command_in, run};
use crate::units::{Delay, Loss};

/// The delay line's interface towards the node, inside the delay-line namespace.
pub const NODE_SIDE_IFACE: &str = "to-node";

/// The delay line's interface towards the router, inside the delay-line namespace.
pub const ROUTER_SIDE_IFACE: &str = "to-router";

/// The environment variable that names the `baton-lab` binary that runs delay lines.
pub const BIN_ENV: &str = "BATON_LAB_BIN";

/// The file name of the `baton-lab` binary.
pub const BIN_NAME: &str = "baton-lab";

/// The hidden subcommand of `baton-lab` that runs a delay line.
pub const SUBCOMMAND: &str = "delay-line";

/// Frames moved per `recvmmsg`/`sendmmsg` call: one system call per 64 frames keeps a
/// 400 Mbit/s link (about 33,000 frames/s) at a few hundred calls per second.
pub const BATCH: usize = 64;

/// Most batches read from one side before the delay line turns to sending, so that a flood on
/// one side cannot hold back frames that are due.
pub const MAX_BATCHES_PER_TURN: usize = 16;

/// Bytes of one receive buffer. Lab links have an MTU of 1500, so with the offloads off every
/// frame is at most 1514 bytes (1518 with a VLAN tag); longer ones are dropped and counted.
pub const FRAME_CAPACITY: usize = 2048;

/// Kernel socket buffer for each side, in bytes (see [`baton_packet::SOCKET_BUFFER_BYTES`]).
pub const SOCKET_BUFFER_BYTES: libc::c_int = baton_packet::SOCKET_BUFFER_BYTES;

/// Longest sleep of an idle delay line before it checks that its interfaces still exist.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How often a delay line logs its counters when they changed.
pub const STATS_INTERVAL: Duration = Duration::from_secs(10);

/// Why a delay line could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DelayLineError {
    /// A socket or file operation failed.
    #[error("{action} {what}: {error}")]
    Io {
        /// What was being done (`bind`, `recvmmsg`, ...).
        action: &'static str,
        /// The interface or file.
        what: String,
        /// Why.
        error: io::Error,
    },
    /// The daemon could not fork.
    #[error("fork: {0}")]
    Fork(nix::Error),
}

fn io_error(action: &'static str, what: &str) -> impl FnOnce(io::Error) -> DelayLineError {
    let what = what.to_owned();
    move |error| DelayLineError::Io {
        action,
        what,
        error,
    }
}

/// What `baton-lab delay-line` is told to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The interface towards the node.
    pub node_iface: String,
    /// The interface towards the router.
    pub router_iface: String,
    /// What happens to frames, in both directions.
    pub impairment: Impairment,
    /// Seed of the randomness (each direction derives its own stream).
    pub seed: u64,
    /// Where the daemon's pid goes.
    pub pid_file: PathBuf,
    /// Where the daemon logs.
    pub log_file: PathBuf,
}

/// A delay line of a running lab, as [`crate::Lab::delay_lines`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayLine {
    /// The node whose link it sits on.
    pub node: String,
    /// Its namespace, `<lab>-<node>_dl`.
    pub ns: String,
    /// What it does to frames.
    pub impairment: Impairment,
    /// The file holding its pid.
    pub pid_file: PathBuf,
    /// Its log.
    pub log_file: PathBuf,
}

impl DelayLine {
    /// The delay line of `node` in a lab whose state lives in `state_dir`.
    pub(crate) fn new(state_dir: &Path, node: &str, ns: String, impairment: Impairment) -> Self {
        DelayLine {
            node: node.to_owned(),
            ns,
            impairment,
            pid_file: pid_file(state_dir, node),
            log_file: state_dir.join(format!("delay-line-{node}.log")),
        }
    }

    /// The daemon's pid, from its pid file; `None` if the file is missing or unreadable.
    pub fn pid(&self) -> Option<i32> {
        read_pid(&self.pid_file)
    }
}

/// The pid file of `node`'s delay line.
fn pid_file(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join(format!("delay-line-{node}.pid"))
}

/// The pid in `path`.
fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The delay-line daemons that pid files in `state_dir` name and that still run as the delay
/// line of that very pid file (checked on their command line, so a reused pid is never
/// taken for one).
pub(crate) fn running_daemons(state_dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("delay-line-") && name.ends_with(".pid")) {
            continue;
        }
        let Some(pid) = read_pid(&path) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let ours = args.contains(&SUBCOMMAND.as_bytes())
            && args.contains(&path.as_os_str().as_encoded_bytes());
        if ours {
            pids.push(pid);
        }
    }
    pids
}

/// The `baton-lab` binary: `$BATON_LAB_BIN`, else this program if it is `baton-lab`, else
/// `baton-lab` next to this program or in its parent directory (integration tests run from
/// `target/<profile>/deps/`, the binary is in `target/<profile>/`).
pub fn binary() -> Result<PathBuf, LabError> {
    if let Some(path) = std::env::var_os(BIN_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LabError::MissingBinary {
                tried: format!("{} (from ${BIN_ENV})", path.display()),
            })
        };
    }
    let exe = std::env::current_exe().map_err(|error| LabError::MissingBinary {
        tried: format!("nothing: the path of this program is unknown ({error})"),
    })?;
    if exe.file_name() == Some(BIN_NAME.as_ref()) {
        return Ok(exe);
    }
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(BIN_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(LabError::MissingBinary {
        tried: tried.join(", "),
    })
}

/// Starts delay line `line` in its namespace and returns once it runs. The impairment fields
/// are the node's, as the topology writes them.
pub(crate) fn start(
    line: &DelayLine,
    seed: u64,
    delay: Option<Delay>,
    jitter: Option<Delay>,
    loss: Option<Loss>,
) -> Result<(), LabError> {
    let binary = binary()?;
    let mut command = command_in(&line.ns, &binary)?;
    let text = |value: Option<String>| value.unwrap_or_else(|| "0".to_owned());
    command
        .arg(SUBCOMMAND)
        .args(["--node-iface", NODE_SIDE_IFACE])
        .args(["--router-iface", ROUTER_SIDE_IFACE])
        .args(["--delay", &text(delay.map(|d| d.to_string()))])
        .args(["--jitter", &text(jitter.map(|d| d.to_string()))])
        .args(["--loss", &text(loss.map(|l| l.to_string()))])
        .args(["--seed", &seed.to_string()])
        .arg("--pid-file")
        .arg(&line.pid_file)
        .arg("--log-file")
        .arg(&line.log_file);
    run(command)?;
    tracing::info!(
        node = line.node,
        ns = line.ns,
        pid = line.pid(),
        impairment = ?line.impairment,
        "delay line up"
    );
    Ok(())
}

/// Set by SIGTERM/SIGINT; the loop sees it after `ppoll` returns.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// One side of the delay line: an AF_PACKET socket bound to one interface.
#[derive(Debug)]
struct Port {
    socket: PacketSocket,
    iface: String,
    /// Frames longer than [`FRAME_CAPACITY`], dropped.
    oversize: u64,
    /// Frames the kernel refused to send (`ENOBUFS`, link down), dropped.
    send_failed: u64,
    /// Frames the kernel dropped before we read them (socket buffer full).
    kernel_drops: u64,
}

impl Port {
    fn open(iface: &str) -> Result<Port, DelayLineError> {
        // Frames on the link are addressed to the MAC at the far end, not to our interface.
        let socket = PacketSocket::open(iface, SocketOptions { promiscuous: true, auxdata: false }).map_err(|e| match e {
            PacketError::NoSuchInterface { .. } => DelayLineError::Io {
                action: "find interface",
                what: iface.to_owned(),
                error: io::Error::from(io::ErrorKind::NotFound),
            },
            PacketError::Io { action, source, .. } => io_error(action, iface)(source),
        })?;
        Ok(Port { socket, iface: iface.to_owned(), oversize: 0, send_failed: 0, kernel_drops: 0 })
    }

    /// Whether the interface this port is bound to still exists.
    fn present(&self) -> bool {
        self.socket.present()
    }

    /// Adds the kernel's drop count since the last call (reading resets it).
    fn collect_kernel_drops(&mut self) {
        self.kernel_drops += self.socket.take_kernel_drops();
    }
}

/// The system error inside a packet socket's error (`None` for a missing interface).
fn os_error(error: &PacketError) -> Option<i32> {
    match error {
        PacketError::Io { source, .. } => source.raw_os_error(),
        PacketError::NoSuchInterface { .. } => None,
    }
}

fn packet_error(error: PacketError) -> DelayLineError {
    match error {
        PacketError::Io { action, iface, source } => io_error(action, &iface)(source),
        PacketError::NoSuchInterface { iface } => DelayLineError::Io {
            action: "find interface",
            what: iface,
            error: io::Error::from(io::ErrorKind::NotFound),
        },
    }
}

/// Why the loop ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// SIGTERM or SIGINT.
    Signalled,
    /// An interface disappeared (a peer namespace or ours was deleted).
    InterfaceGone(String),
}

/// The running delay line: two ports and a schedule per direction. Direction 0 carries frames
/// from the node to the router, direction 1 from the router to the node.
struct Line {
    ports: [Port; 2],
    schedules: [Schedule<Box<[u8]>>; 2],
    rx: RxBatch,
    due: Vec<Box<[u8]>>,
}

impl Line {
    /// Reads what waits on `side` and schedules it in direction `side`.
    fn receive(&mut self, side: usize) -> Result<Option<Exit>, DelayLineError> {
        for _ in 0..MAX_BATCHES_PER_TURN {
            let count = match self.ports[side].socket.receive(&mut self.rx) {
                Ok(count) => count,
                Err(error) if os_error(&error) == Some(libc::ENETDOWN) => {
                    return Ok(self.check_ports());
                }
                Err(error) => return Err(packet_error(error)),
            };
            let now = Instant::now();
            for i in 0..count {
                match self.rx.frame(i) {
                    Some(Frame::Data { bytes, .. }) => {
                        self.schedules[side].arrive(bytes.into(), now);
                    }
                    None => {}
                    Some(Frame::Oversize(len)) => {
                        let port = &mut self.ports[side];
                        if port.oversize == 0 {
                            tracing::warn!(
                                iface = port.iface,
                                len,
                                "dropping a frame longer than {FRAME_CAPACITY} bytes \
                                 (are the sender's offloads on?)"
                            );
                        }
                        port.oversize += 1;
                    }
                }
            }
            if count < BATCH {
                break;
            }
        }
        Ok(None)
    }

    /// Sends what is due in direction `side` out of the other side.
    fn transmit(&mut self, side: usize, now: Instant) -> Result<Option<Exit>, DelayLineError> {
        let out = 1 - side;
        loop {
            self.due.clear();
            while self.due.len() < BATCH {
                match self.schedules[side].pop_due(now) {
                    Some(frame) => self.due.push(frame),
                    None => break,
                }
            }
            if self.due.is_empty() {
                return Ok(None);
            }
            let frames: Vec<&[u8]> = self.due.iter().map(|f| &f[..]).collect();
            match self.ports[out].socket.send(&frames) {
                Ok(refused) => self.ports[out].send_failed += refused,
                Err(error) if matches!(os_error(&error), Some(libc::ENETDOWN | libc::ENXIO)) => {
                    // The link is down: its frames are lost, as on a cable that was pulled.
                    self.ports[out].send_failed += self.due.len() as u64;
                    if let Some(exit) = self.check_ports() {
                        return Ok(Some(exit));
                    }
                }
                Err(error) => return Err(packet_error(error)),
            }
        }
    }

    /// `Some` when an interface is gone.
    fn check_ports(&self) -> Option<Exit> {
        self.ports
            .iter()
            .find(|port| !port.present())
            .map(|port| Exit::InterfaceGone(port.iface.clone()))
    }

    fn log_counters(&mut self, why: &str) {
        for port in &mut self.ports {
            port.collect_kernel_drops();
        }
        for (side, name) in [(0, "node->router"), (1, "router->node")] {
            let Counters {
                arrived,
                lost,
                overflow,
                released,
            } = self.schedules[side].counters();
            let input = &self.ports[side];
            let output = &self.ports[1 - side];
            tracing::info!(
                direction = name,
                arrived,
                lost,
                overflow,
                released,
                queued = self.schedules[side].len(),
                oversize = input.oversize,
                kernel_drops = input.kernel_drops,
                send_failed = output.send_failed,
                "{why}"
            );
        }
    }

    /// Moves frames until a signal or a vanished interface ends it.
    fn run(&mut self, wait_mask: &libc::sigset_t) -> Result<Exit, DelayLineError> {
        let mut last_check = Instant::now();
        let mut last_stats = Instant::now();
        let mut logged_arrivals = 0;
        loop {
            for side in 0..2 {
                if let Some(exit) = self.receive(side)? {
                    return Ok(exit);
                }
            }
            let now = Instant::now();
            for side in 0..2 {
                if let Some(exit) = self.transmit(side, now)? {
                    return Ok(exit);
                }
            }
            let now = Instant::now();
            if now.duration_since(last_check) >= IDLE_CHECK {
                last_check = now;
                if let Some(exit) = self.check_ports() {
                    return Ok(exit);
                }
            }
            if now.duration_since(last_stats) >= STATS_INTERVAL {
                last_stats = now;
                let arrivals: u64 = self.schedules.iter().map(|s| s.counters().arrived).sum();
                if arrivals != logged_arrivals {
                    logged_arrivals = arrivals;
                    self.log_counters("counters");
                }
            }
            let next_due = self.schedules.iter().filter_map(Schedule::next_due).min();
            let wait = next_due
                .map_or(IDLE_CHECK, |due| due.saturating_duration_since(now))
                .min(IDLE_CHECK);
            if self.wait(wait, wait_mask)? {
                return Ok(Exit::Signalled);
            }
        }
    }

    /// Sleeps until a frame arrives, `timeout` passes or a stop signal comes; `true` on the
    /// signal. Stop signals are blocked except inside `ppoll`, so none is missed.
    fn wait(
        &mut self,
        timeout: Duration,
        wait_mask: &libc::sigset_t,
    ) -> Result<bool, DelayLineError> {
        if timeout.is_zero() {
            return Ok(STOP.load(Ordering::SeqCst));
        }
        let mut fds = self.ports.each_ref().map(|port| libc::pollfd {
            fd: port.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        };
        // SAFETY: `fds` holds two pollfds; timeout and mask are live.
        let result = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &timeout, wait_mask) };
        if result < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(io_error("ppoll on", "both sides")(error));
            }
        }
        // POLLERR (ENETDOWN after the link went down or away) is read and judged by the next
        // receive.
        Ok(STOP.load(Ordering::SeqCst))
    }
}

/// Blocks SIGTERM and SIGINT, installs a handler that sets [`STOP`], and returns the signal
/// mask to wait with (the old one, with both unblocked).
fn prepare_signals() -> Result<libc::sigset_t, DelayLineError> {
    let signal_error = |error: nix::Error| DelayLineError::Io {
        action: "set up",
        what: "signal handling".to_owned(),
        error: error.into(),
    };
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    let handler = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &handler) }.map_err(signal_error)?;
    }
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stop), Some(&mut old))
        .map_err(signal_error)?;
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        old.remove(signal);
    }
    Ok(*old.as_ref())
}

/// Points stdin at /dev/null and stdout and stderr at `log`.
fn redirect_stdio(log: &File) -> io::Result<()> {
    let null = File::open("/dev/null")?;
    for (from, to) in [
        (null.as_raw_fd(), libc::STDIN_FILENO),
        (log.as_raw_fd(), libc::STDOUT_FILENO),
        (log.as_raw_fd(), libc::STDERR_FILENO),
    ] {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes `pid` to `path` through a temporary file, so a reader never sees half of it.
fn write_pid(path: &Path, pid: i32) -> io::Result<()> {
    let mut temp = OsString::from(path.as_os_str());
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let mut file = File::create(&temp)?;
    writeln!(file, "{pid}")?;
    drop(file);
    std::fs::rename(&temp, path)
}

/// Runs a delay line as a daemon (the body of `baton-lab delay-line`): opens both sockets,
/// forks, and returns in the parent once the child's pid is in `options.pid_file`. The child
/// returns when it is told to stop or its interfaces are gone.
pub fn serve(options: &Options) -> Result<(), DelayLineError> {
    let ports = [
        Port::open(&options.node_iface)?,
        Port::open(&options.router_iface)?,
    ];
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&options.log_file)
        .map_err(io_error("open", &options.log_file.display().to_string()))?;
    // SAFETY: this process is single-threaded here, so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(DelayLineError::Fork)? {
        nix::unistd::ForkResult::Parent { child } => {
            if let Err(error) = write_pid(&options.pid_file, child.as_raw()) {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                return Err(io_error("write", &options.pid_file.display().to_string())(
                    error,
                ));
            }
            Ok(())
        }
        nix::unistd::ForkResult::Child => {
            // Before anything else: the parent's caller waits for our copy of its pipes to
            // close.
            redirect_stdio(&log).map_err(io_error("redirect output to", "the log"))?;
            // Its own session: a terminal's Ctrl-C or hangup never reaches the lab's links.
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
            let wait_mask = prepare_signals()?;
            let impairment = options.impairment;
            tracing::info!(
                pid = std::process::id(),
                node_iface = options.node_iface,
                router_iface = options.router_iface,
                ?impairment,
                seed = options.seed,
                queue_limit = QUEUE_LIMIT_FRAMES,
                "delay line running"
            );
            let mut line = Line {
                ports,
                schedules: [
                    Schedule::new(impairment, options.seed, QUEUE_LIMIT_FRAMES),
                    Schedule::new(impairment, !options.seed, QUEUE_LIMIT_FRAMES),
                ],
                rx: RxBatch::new(BATCH, FRAME_CAPACITY),
                due: Vec::with_capacity(BATCH),
            };
            let exit = line.run(&wait_mask);
            line.log_counters("final counters");
            match exit? {
                Exit::Signalled => tracing::info!("stopped by signal"),
                Exit::InterfaceGone(iface) => {
                    tracing::info!(iface, "interface is gone; stopping");
                }
            }
            // The pid file is ours only while it names us.
            if read_pid(&options.pid_file) == i32::try_from(std::process::id()).ok() {
                let _ = std::fs::remove_file(&options.pid_file);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_named_with_the_way_to_build_it() {
        // No other unit test reads this variable.
        std::env::set_var(BIN_ENV, "/nonexistent/baton-lab");
        let result = binary().map_err(|error| error.to_string());
        std::env::remove_var(BIN_ENV);
        let error = result.expect_err("there is no binary there");
        assert_eq!(
            error,
            "links with delay, jitter or loss run their delay line from the `baton-lab` binary, \
             which was not found (tried: /nonexistent/baton-lab (from $BATON_LAB_BIN)); build it \
             with `cargo build --release -p baton-lab`, or set $BATON_LAB_BIN to its path"
        );
    }

    #[test]
    fn pid_files_of_dead_or_foreign_processes_name_no_daemon() {
        let dir = std::env::temp_dir().join(format!("baton-lab-pids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // This test process is alive but is no delay line; pid 0 is nobody.
        write_pid(
            &pid_file(&dir, "a"),
            i32::try_from(std::process::id()).expect("pid"),
        )
        .expect("write");
        write_pid(&pid_file(&dir, "b"), 0).expect("write");
        assert_eq!(
            read_pid(&pid_file(&dir, "a")),
            i32::try_from(std::process::id()).ok()
        );
        assert_eq!(running_daemons(&dir), Vec::<i32>::new());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_live_process_with_the_delay_line_command_line_is_found() {
        let dir = std::env::temp_dir().join(format!("baton-lab-daemon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pid_path = pid_file(&dir, "c1");
        // `sh -c SCRIPT NAME ARG`: its command line holds `delay-line` and the pid file, as a
        // delay line's does; `; :` keeps sh itself running instead of exec'ing sleep.
        let mut stand_in = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :", SUBCOMMAND])
            .arg(&pid_path)
            .spawn()
            .expect("sh runs");
        let pid = i32::try_from(stand_in.id()).expect("pid");
        write_pid(&pid_path, pid).expect("write");
        // Until the child has exec'd, its command line is still this test's: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = running_daemons(&dir);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = running_daemons(&dir);
        }
        let _ = stand_in.kill();
        let _ = stand_in.wait();
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(found, [pid]);
    }
}

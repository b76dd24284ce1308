//! A running lab: building it from a topology, finding it again, and tearing it down.
//!
//! `up` creates one network namespace per node plus the router, one veth pair per node (made
//! directly inside the two namespaces, so nothing appears in the root namespace and labs never
//! clash), addresses, routes, sysctls, rate limits, the lab's GeoIP database and a state file
//! under `/run/baton-lab/<name>/`. A link with delay, jitter or loss gets a delay-line
//! namespace `<name>-<node>_dl` between node and router, and a delay-line daemon in it
//! ([`crate::delay_line`]). The members of a LAN keep their own veth pairs, but the router ends
//! of them are ports of one bridge per LAN in the router's namespace, which holds the router's
//! address on the LAN. `down` removes all of it, and also what a crashed run left: it
//! finds namespaces by the `<name>-` prefix even without a state file, and stops every process
//! in them, delay lines included.
//!
//! A lab never touches the root namespace's interfaces, routes or sysctls, and never a
//! namespace that another running lab's state file claims.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::delay_line::{self, DelayLine, NODE_SIDE_IFACE, ROUTER_SIDE_IFACE};
use crate::impairment::seed_for;
use crate::netns::{self, command_in, netns_path, processes_in, sysctl, tool};
use crate::offload::{self, End};
use crate::units::Rate;
use crate::topology::{
    router_iface, validate_lab_name, Lan, Node, NodeSpec, Role, Topology, TopologyError,
    NODE_IFACE,
};

/// Where labs keep their state: `/run/baton-lab/<name>/`. On tmpfs, so a reboot (which also
/// removes every namespace) forgets every lab.
pub const STATE_ROOT: &str = "/run/baton-lab";

/// The lab's state file inside its state directory.
pub const STATE_FILE: &str = "state.json";

/// The lab's GeoIP database inside its state directory.
pub const GEOIP_FILE: &str = "geoip.mmdb";

/// Where bpffs is mounted; `up` mounts it if nothing is.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Where Baton's servers pin a lab's maps: `<PIN_ROOT>/<name>`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/baton";

/// How long processes in a lab get to exit after SIGTERM before they get SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// How long `down` waits for processes to disappear after SIGKILL before giving up on them.
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// How often `down` looks whether the lab's processes are gone.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// How long a packet may wait in a rate-limited link's `tbf` queue before it is dropped; sets
/// the queue length to rate × this. 20 ms keeps queueing delay small next to real WAN RTTs.
pub const TBF_LATENCY: &str = "20ms";

/// Version of the `state.json` layout.
const STATE_FORMAT: u32 = 1;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The topology (or a lab name) is invalid.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// Building a lab needs root.
    #[error("baton-lab must run as root: it creates network namespaces, veth links and qdiscs")]
    NotRoot,
    /// A command ran and exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {error}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        error: std::io::Error,
    },
    /// `run` was given no program.
    #[error("no program given to run in node `{node}`")]
    NoProgram {
        /// The node.
        node: String,
    },
    /// A network namespace could not be opened.
    #[error("cannot open network namespace `{ns}`: {error}")]
    Netns {
        /// The namespace name.
        ns: String,
        /// Why.
        error: std::io::Error,
    },
    /// A file or directory operation failed.
    #[error("cannot {action} {path}: {error}")]
    Io {
        /// What was being done (`write`, `remove`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        error: std::io::Error,
    },
    /// The state file is unreadable.
    #[error("bad state file {path}: {error}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why it could not be read or written.
        error: serde_json::Error,
    },
    /// `open` found no state file.
    #[error("no lab named `{name}` is up (no {path})")]
    NoSuchLab {
        /// The lab name.
        name: String,
        /// The state file that is missing.
        path: PathBuf,
    },
    /// The lab has no node of that name.
    #[error("lab `{lab}` has no node `{node}` (it has: {known})")]
    NoSuchNode {
        /// The lab name.
        lab: String,
        /// The node asked for.
        node: String,
        /// The nodes it has, comma-separated.
        known: String,
    },
    /// A namespace the lab needs exists already and is not the lab's own leftover.
    #[error("network namespace `{ns}` already exists and belongs to lab `{owner}`")]
    NamespaceTaken {
        /// The namespace.
        ns: String,
        /// The lab whose state file claims it.
        owner: String,
    },
    /// The GeoIP database could not be built.
    #[error("cannot build the GeoIP database: {error}")]
    GeoIp {
        /// The writer's error.
        error: mmdb_writer::Error,
    },
    /// bpffs could not be mounted.
    #[error("cannot mount bpffs at {BPFFS}: {error}")]
    Mount {
        /// Why.
        error: nix::Error,
    },
    /// A link needs a delay line, and the `baton-lab` binary that runs it is missing.
    #[error(
        "links with delay, jitter or loss run their delay line from the `baton-lab` binary, \
         which was not found (tried: {tried}); build it with `cargo build --release -p \
         baton-lab`, or set ${} to its path",
        delay_line::BIN_ENV
    )]
    MissingBinary {
        /// Where it was looked for.
        tried: String,
    },
    /// Offloads of an interface next to a delay line could not be turned off.
    #[error("cannot turn off offloads of {iface} in namespace `{ns}`: {reason}")]
    Offload {
        /// The namespace.
        ns: String,
        /// The interface.
        iface: String,
        /// Why.
        reason: String,
    },
    /// Tearing down went wrong in one or more steps; every other step still ran.
    #[error("tearing down lab `{name}` failed: {}", errors.join("; "))]
    Teardown {
        /// The lab name.
        name: String,
        /// One message per failed step.
        errors: Vec<String>,
    },
}

/// What `state.json` holds: enough for another process to find and drive the lab. The
/// delay-line namespaces follow from the topology.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: u32,
    topology: Topology,
    nodes: Vec<Node>,
}

/// A lab of network namespaces.
///
/// A lab from [`Lab::up`] is torn down when dropped unless [`Lab::keep`] is called; a lab from
/// [`Lab::open`] belongs to whoever brought it up and is left alone on drop (call
/// [`Lab::down`] to remove it).
#[derive(Debug)]
pub struct Lab {
    topology: Topology,
    nodes: Vec<Node>,
    state_dir: PathBuf,
    teardown_on_drop: bool,
}

/// The state directory of lab `name`.
fn state_dir_of(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
    let path = path.to_owned();
    move |error| LabError::Io {
        action,
        path,
        error,
    }
}

fn require_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Reads the state file of lab `name`; `Ok(None)` if there is none.
fn read_state(name: &str) -> Result<Option<State>, LabError> {
    let path = state_dir_of(name).join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("read", &path)(error)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| LabError::State { path, error })
}

/// The namespaces claimed by the state files of every lab other than `name`, with their owner.
/// Unreadable state files are skipped: they cannot protect anything.
fn namespaces_of_other_labs(name: &str) -> HashMap<String, String> {
    let mut claimed = HashMap::new();
    let Ok(entries) = std::fs::read_dir(STATE_ROOT) else {
        return claimed;
    };
    for entry in entries.flatten() {
        let Some(other) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if other == name || validate_lab_name(&other).is_err() {
            continue;
        }
        match read_state(&other) {
            Ok(Some(state)) => {
                for ns in all_namespaces(&state.topology, &state.nodes) {
                    claimed.insert(ns, other.clone());
                }
            }
            Ok(None) => {}
            Err(error) => tracing::debug!(lab = other, %error, "ignoring unreadable state"),
        }
    }
    claimed
}

/// Every namespace of a lab: its nodes' (router first) and then its delay lines'.
fn all_namespaces(topology: &Topology, nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|node| node.ns.clone())
        .chain(topology.delay_line_namespaces())
        .collect()
}

/// Whether bpffs is mounted at [`BPFFS`].
fn bpffs_mounted() -> Result<bool, LabError> {
    let path = Path::new("/proc/self/mounts");
    let mounts = std::fs::read_to_string(path).map_err(io_error("read", path))?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}

/// An exclusive lock on [`STATE_ROOT`], held while a lab changes host-wide things: the bpffs
/// mount and the first `ip netns add`, which turns `/run/netns` into a shared mount point.
/// Doing either twice at once would stack two mounts, and the upper one hides what was made in
/// the lower (pins, or namespaces).
fn lock_host() -> Result<Flock<File>, LabError> {
    let root = Path::new(STATE_ROOT);
    std::fs::create_dir_all(root).map_err(io_error("create", root))?;
    let dir = File::open(root).map_err(io_error("open", root))?;
    Flock::lock(dir, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_error("lock", root)(errno.into()))
}

/// Mounts bpffs at [`BPFFS`] unless it is mounted; call with [`lock_host`] held.
fn ensure_bpffs() -> Result<(), LabError> {
    if bpffs_mounted()? {
        return Ok(());
    }
    tracing::info!(path = BPFFS, "mounting bpffs");
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|error| LabError::Mount { error })
}

/// SIGTERM, then after [`TERM_GRACE`] SIGKILL, for every process in `namespaces` (except this
/// one) and every live process in `daemons` (delay lines found through their pid files, which
/// may run in a namespace that no longer has a name). Failures are added to `errors`.
fn stop_processes(namespaces: &[String], daemons: &[i32], errors: &mut Vec<String>) {
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let list = |errors: &mut Vec<String>| -> Vec<(i32, String)> {
        let mut found = match processes_in(namespaces) {
            Ok(found) => found.into_iter().filter(|(pid, _)| *pid != me).collect(),
            Err(error) => {
                errors.push(error.to_string());
                Vec::new()
            }
        };
        for &pid in daemons {
            // A zombie or a finished process has no namespace link any more.
            let alive = Path::new(&format!("/proc/{pid}/ns/net")).exists();
            if alive && !found.iter().any(|(known, _)| *known == pid) {
                found.push((pid, "delay line".to_owned()));
            }
        }
        found
    };
    let signal_all = |found: &[(i32, String)], signal: Signal| {
        for (pid, ns) in found {
            tracing::debug!(pid, ns, ?signal, "signalling");
            // ESRCH: it exited meanwhile, which is what we want.
            let _ = kill(Pid::from_raw(*pid), signal);
        }
    };
    let wait_until_gone = |limit: Duration, errors: &mut Vec<String>| -> Vec<(i32, String)> {
        let deadline = Instant::now() + limit;
        loop {
            let found = list(errors);
            if found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            thread::sleep(EXIT_POLL);
        }
    };

    let found = list(errors);
    if found.is_empty() {
        return;
    }
    tracing::info!(count = found.len(), "stopping lab processes");
    signal_all(&found, Signal::SIGTERM);
    let left = wait_until_gone(TERM_GRACE, errors);
    if left.is_empty() {
        return;
    }
    tracing::warn!(
        count = left.len(),
        "processes ignored SIGTERM; killing them"
    );
    signal_all(&left, Signal::SIGKILL);
    let left = wait_until_gone(KILL_WAIT, errors);
    if !left.is_empty() {
        errors.push(format!("processes survived SIGKILL: {left:?}"));
    }
}

/// Removes `path` and everything under it, if it exists.
fn remove_tree(path: &Path, errors: &mut Vec<String>) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => errors.push(io_error("remove", path)(error).to_string()),
    }
}

impl Lab {
    /// Builds the lab described by `topology`, first removing whatever a previous lab of the
    /// same name left. On failure everything built so far is removed again.
    pub fn up(topology: &Topology) -> Result<Lab, LabError> {
        let nodes = topology.resolve()?;
        require_root()?;
        if !topology.delay_line_namespaces().is_empty() {
            // Before anything is built or removed: a missing binary is a setup error.
            delay_line::binary()?;
        }
        let name = topology.name();
        Lab::down_by_name(name)?;
        let claimed = namespaces_of_other_labs(name);
        let existing: BTreeSet<String> = netns::list_namespaces()?.into_iter().collect();
        for ns in all_namespaces(topology, &nodes) {
            if existing.contains(&ns) {
                let owner = claimed
                    .get(&ns)
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                return Err(LabError::NamespaceTaken { ns, owner });
            }
        }
        let lab = Lab {
            topology: topology.clone(),
            nodes,
            state_dir: state_dir_of(name),
            teardown_on_drop: true,
        };
        tracing::info!(lab = name, block = %topology.block(), "bringing lab up");
        // On error `lab` is dropped here, which tears down what was built.
        lab.build()?;
        tracing::info!(lab = name, "lab is up");
        Ok(lab)
    }

    /// Finds the running lab `name` through its state file. The returned lab is not torn down
    /// on drop.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        validate_lab_name(name)?;
        let state = read_state(name)?.ok_or_else(|| LabError::NoSuchLab {
            name: name.to_owned(),
            path: state_dir_of(name).join(STATE_FILE),
        })?;
        let path = state_dir_of(name).join(STATE_FILE);
        if state.format != STATE_FORMAT || state.topology.name() != name {
            return Err(LabError::State {
                path,
                error: serde::de::Error::custom("written by another version or for another lab"),
            });
        }
        Ok(Lab {
            topology: state.topology,
            nodes: state.nodes,
            state_dir: state_dir_of(name),
            teardown_on_drop: false,
        })
    }

    /// Removes everything of lab `name`: its processes (SIGTERM, then SIGKILL; delay lines
    /// included), namespaces (and with them the veths and qdiscs), pin dir and state dir. Works
    /// from the state file and from the `<name>-` namespace prefix, so it also cleans up after a
    /// crash. Namespaces that another lab's state file claims are left alone. Succeeds if
    /// nothing exists.
    pub fn down_by_name(name: &str) -> Result<(), LabError> {
        validate_lab_name(name)?;
        let mut errors = Vec::new();
        let mut namespaces = BTreeSet::new();
        match read_state(name) {
            Ok(Some(state)) => namespaces.extend(all_namespaces(&state.topology, &state.nodes)),
            Ok(None) => {}
            // The prefix scan below still finds the namespaces, and the state dir goes anyway.
            Err(error) => tracing::warn!(lab = name, %error, "ignoring unreadable state"),
        }
        let prefix = format!("{name}-");
        let existing: BTreeSet<String> = match netns::list_namespaces() {
            Ok(list) => list.into_iter().collect(),
            Err(error) => {
                errors.push(error.to_string());
                BTreeSet::new()
            }
        };
        namespaces.extend(
            existing
                .iter()
                .filter(|ns| ns.starts_with(&prefix))
                .cloned(),
        );
        let claimed = namespaces_of_other_labs(name);
        namespaces.retain(|ns| match claimed.get(ns) {
            Some(owner) => {
                tracing::info!(ns, owner, "leaving namespace of another lab alone");
                false
            }
            None => true,
        });
        let namespaces: Vec<String> = namespaces.into_iter().collect();

        let daemons = delay_line::running_daemons(&state_dir_of(name));
        stop_processes(&namespaces, &daemons, &mut errors);
        for ns in &namespaces {
            if !existing.contains(ns) && !netns_path(ns).exists() {
                continue;
            }
            tracing::info!(ns, "deleting namespace");
            if let Err(error) = tool("ip", &["netns", "delete", ns]) {
                errors.push(error.to_string());
            }
        }
        remove_tree(&Path::new(PIN_ROOT).join(name), &mut errors);
        // The parent is shared by all labs; remove it only when no lab has pins left.
        let _ = std::fs::remove_dir(PIN_ROOT);
        remove_tree(&state_dir_of(name), &mut errors);

        if errors.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown {
                name: name.to_owned(),
                errors,
            })
        }
    }

    /// Tears the lab down now (see [`Lab::down_by_name`]).
    pub fn down(mut self) -> Result<(), LabError> {
        self.teardown_on_drop = false;
        tracing::info!(lab = self.name(), "tearing lab down");
        Lab::down_by_name(self.name())
    }

    /// Forgets the lab without tearing it down; it stays up for `baton-lab down` or the next
    /// `up` of the same name.
    pub fn keep(mut self) {
        self.teardown_on_drop = false;
    }

    /// The lab name.
    pub fn name(&self) -> &str {
        self.topology.name()
    }

    /// The topology the lab was built from.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The VIP.
    pub fn vip(&self) -> Ipv4Addr {
        self.topology.vip()
    }

    /// The node called `name` (`router` for the router).
    pub fn node(&self, name: &str) -> Result<&Node, LabError> {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .ok_or_else(|| LabError::NoSuchNode {
                lab: self.name().to_owned(),
                node: name.to_owned(),
                known: self
                    .nodes
                    .iter()
                    .map(|node| node.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// All nodes: the router first, then the topology's nodes in link order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The nodes with `role`, in link order.
    pub fn nodes_with_role(&self, role: Role) -> Vec<&Node> {
        self.nodes.iter().filter(|node| node.role == role).collect()
    }

    /// `/run/baton-lab/<name>/`: state file, GeoIP database, and anything a run writes (logs).
    /// Removed by `down`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The lab's GeoIP database, `<state_dir>/geoip.mmdb`.
    pub fn geoip_path(&self) -> PathBuf {
        self.state_dir.join(GEOIP_FILE)
    }

    /// Where Baton's servers pin this lab's BPF maps, `/sys/fs/bpf/baton/<name>`. The servers
    /// create it; `down` removes it.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(self.name())
    }

    /// A [`Command`] that runs `program` inside `node`'s network namespace.
    ///
    /// It enters the namespace with `setns(2)` in the child instead of `ip netns exec`, which
    /// would remount `/sys` and so hide the bpffs at `/sys/fs/bpf` that Baton's servers pin
    /// maps in. See [`crate::netns`].
    pub fn command(&self, node: &str, program: impl AsRef<OsStr>) -> Result<Command, LabError> {
        command_in(&self.node(node)?.ns, program)
    }

    /// Runs `argv` inside `node`'s namespace to completion; a non-zero exit is an error that
    /// carries stderr.
    pub fn run(&self, node: &str, argv: &[&str]) -> Result<Output, LabError> {
        let (program, args) = argv.split_first().ok_or_else(|| LabError::NoProgram {
            node: node.to_owned(),
        })?;
        let mut command = self.command(node, program)?;
        command.args(args);
        netns::run(command)
    }

    /// The delay lines of the lab, one per link with delay, jitter or loss, in link order.
    pub fn delay_lines(&self) -> Vec<DelayLine> {
        self.impaired_links()
            .into_iter()
            .map(|(_, _, _, line)| line)
            .collect()
    }

    /// The links that need a delay line: link index, node, its topology entry, its line.
    fn impaired_links(&self) -> Vec<(usize, &Node, &NodeSpec, DelayLine)> {
        self.linked_nodes()
            .zip(self.topology.node_specs())
            .filter_map(|((i, node), spec)| {
                let impairment = spec.impairment()?;
                let ns = self.topology.delay_line_namespace(&node.name);
                let line = DelayLine::new(&self.state_dir, &node.name, ns, impairment);
                Some((i, node, spec, line))
            })
            .collect()
    }

    /// The processes running inside `node`'s namespace.
    pub fn processes(&self, node: &str) -> Result<Vec<i32>, LabError> {
        let ns = self.node(node)?.ns.clone();
        Ok(processes_in(&[ns])?
            .into_iter()
            .map(|(pid, _)| pid)
            .collect())
    }

    fn router(&self) -> &Node {
        &self.nodes[0]
    }

    /// The router's end of `node`'s link (namespace, interface), unless `node` is on a LAN.
    pub fn router_end(&self, node: &str) -> Result<Option<(String, String)>, LabError> {
        self.node(node)?;
        Ok(self.linked_nodes().find(|(_, n)| n.name == node).map(|(i, _)| (self.router().ns.clone(), router_iface(i))))
    }

    /// Turns off checksum and segmentation offload on the router's end of `node`'s link, so
    /// every frame `node` receives carries finished checksums and fits the MTU (what an XDP
    /// program on `node` needs; see `offload`).
    pub fn plain_frames_to(&self, node: &str) -> Result<(), LabError> {
        match self.router_end(node)? {
            Some((ns, iface)) => offload::turn_off(&ns, &iface, End::Sender),
            None => Ok(()),
        }
    }

    /// The topology's nodes (without the router) with their link index.
    fn linked_nodes(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes.iter().skip(1).enumerate()
    }

    fn write_state(&self) -> Result<(), LabError> {
        let dir = &self.state_dir;
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        let state = State {
            format: STATE_FORMAT,
            topology: self.topology.clone(),
            nodes: self.nodes.clone(),
        };
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(&state).map_err(|error| LabError::State {
            path: path.clone(),
            error,
        })?;
        let temp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&temp, text).map_err(io_error("write", &temp))?;
        std::fs::rename(&temp, &path).map_err(io_error("rename", &temp))
    }

    fn build(&self) -> Result<(), LabError> {
        // The state file comes first, so that even a crash halfway leaves a lab `down` can find.
        self.write_state()?;
        let impaired = self.impaired_links();
        let delay_line_of = |node: &str| {
            impaired
                .iter()
                .find(|(_, linked, _, _)| linked.name == node)
                .map(|(_, _, _, line)| line)
        };
        let namespaces = all_namespaces(&self.topology, &self.nodes);
        {
            let _lock = lock_host()?;
            ensure_bpffs()?;
            for ns in &namespaces {
                tool("ip", &["netns", "add", ns])?;
            }
        }
        let router = self.router();
        let lans = self.topology.lans();
        let lan_of = |i: usize| lans.iter().find(|lan| lan.members.contains(&i));
        for (i, node) in self.linked_nodes() {
            let veth = router_iface(i);
            // Without a delay line the link is one veth pair; with one, two pairs meet in the
            // delay line's namespace.
            let (router_peer, router_peer_ns) = match delay_line_of(&node.name) {
                None => (NODE_IFACE, node.ns.as_str()),
                Some(line) => (ROUTER_SIDE_IFACE, line.ns.as_str()),
            };
            add_veth_pair((&veth, &router.ns), (router_peer, router_peer_ns))?;
            if let Some(line) = delay_line_of(&node.name) {
                add_veth_pair((NODE_IFACE, &node.ns), (NODE_SIDE_IFACE, &line.ns))?;
            }
        }
        for lan in &lans {
            add_bridge(&router.ns, lan)?;
        }
        // Sysctls before any link is up, so no packet leaves under the kernel defaults.
        for node in &self.nodes {
            sysctl(&node.ns, &self.sysctls(node, &lans))?;
        }
        for (_, _, _, line) in &impaired {
            let settings = ipv6_off();
            if !settings.is_empty() {
                sysctl(&line.ns, &settings)?;
            }
        }
        for ns in &namespaces {
            tool("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (_, _, _, line) in &impaired {
            for iface in [NODE_SIDE_IFACE, ROUTER_SIDE_IFACE] {
                tool("ip", &["-n", &line.ns, "link", "set", iface, "up"])?;
            }
        }
        for (i, node) in self.linked_nodes() {
            let veth = router_iface(i);
            let gateway = format!("{}/{}", node.gateway, node.subnet.prefix_len());
            let addr = format!("{}/{}", node.addr, node.subnet.prefix_len());
            // On a LAN the router's address is on the bridge, set once for its first member.
            let router_dev = match lan_of(i) {
                None => Some(veth.as_str()),
                Some(lan) if lan.members.first() == Some(&i) => Some(lan.bridge.as_str()),
                Some(_) => None,
            };
            if let Some(dev) = router_dev {
                tool(
                    "ip",
                    &["-n", &router.ns, "addr", "add", &gateway, "dev", dev],
                )?;
                tool("ip", &["-n", &router.ns, "link", "set", dev, "up"])?;
            }
            if router_dev != Some(veth.as_str()) {
                tool("ip", &["-n", &router.ns, "link", "set", &veth, "up"])?;
            }
            tool(
                "ip",
                &["-n", &node.ns, "addr", "add", &addr, "dev", &node.iface],
            )?;
            tool("ip", &["-n", &node.ns, "link", "set", &node.iface, "up"])?;
        }
        self.start_delay_lines(&impaired)?;
        self.configure_roles()?;
        self.apply_rates()?;
        crate::geoip::write(self.name(), &self.nodes, &self.geoip_path())
    }

    /// Turns off the offloads around each delay line and starts it.
    fn start_delay_lines(
        &self,
        impaired: &[(usize, &Node, &NodeSpec, DelayLine)],
    ) -> Result<(), LabError> {
        let router = self.router();
        for (i, node, spec, line) in impaired {
            offload::turn_off(&node.ns, NODE_IFACE, End::Sender)?;
            offload::turn_off(&router.ns, &router_iface(*i), End::Sender)?;
            for iface in [NODE_SIDE_IFACE, ROUTER_SIDE_IFACE] {
                offload::turn_off(&line.ns, iface, End::DelayLine)?;
            }
            let seed = seed_for(self.name(), &node.name);
            delay_line::start(line, seed, spec.delay, spec.jitter, spec.loss)?;
        }
        Ok(())
    }

    /// The sysctls of `node`'s namespace.
    fn sysctls(&self, node: &Node, lans: &[Lan]) -> Vec<(String, &'static str)> {
        let mut settings = ipv6_off();
        let rp_filter_off = |iface: &str| (format!("net.ipv4.conf.{iface}.rp_filter"), "0");
        match node.role {
            Role::Router => {
                settings.push(("net.ipv4.ip_forward".to_owned(), "1"));
                // Participants answer clients with the VIP as source, but those packets reach
                // the router over the participant's link, while the router's route to the VIP
                // points at the main. Strict reverse-path filtering would drop every reply.
                settings.push(rp_filter_off("all"));
                settings.push(rp_filter_off("default"));
                for (i, _) in self.linked_nodes() {
                    settings.push(rp_filter_off(&router_iface(i)));
                }
                // A LAN's bridge is where its members' packets enter the router's routing.
                for lan in lans {
                    settings.push(rp_filter_off(&lan.bridge));
                }
            }
            Role::Participant => {
                // The LVS-DR / Katran direct-return recipe: the participant holds the VIP on lo
                // but must never answer ARP for it (arp_ignore=1: only for addresses on the
                // asking interface) nor use it as the source of its own ARP requests
                // (arp_announce=2), or it would pull the VIP's traffic away from the main.
                for iface in ["all", NODE_IFACE] {
                    settings.push((format!("net.ipv4.conf.{iface}.arp_ignore"), "1"));
                    settings.push((format!("net.ipv4.conf.{iface}.arp_announce"), "2"));
                }
                // Packets the main forwards arrive encapsulated and are decapsulated by Baton's
                // program; the inner packet must not be judged by reverse-path filtering.
                for iface in ["all", "default", NODE_IFACE] {
                    settings.push(rp_filter_off(iface));
                }
            }
            Role::Main => {
                // The main's data-plane program re-routes handed-off client packets (with their
                // new outer header) to participants through the kernel's FIB, which routes only
                // for interfaces with IPv4 forwarding on.
                settings.push(("net.ipv4.ip_forward".to_owned(), "1"));
            }
            Role::Client => {}
        }
        settings
    }

    /// VIP addresses and routes.
    fn configure_roles(&self) -> Result<(), LabError> {
        let vip = format!("{}/32", self.vip());
        let main = self.nodes_with_role(Role::Main);
        let main_addr = main
            .first()
            .map(|node| node.addr.to_string())
            .ok_or_else(|| TopologyError::Invalid {
                field: "nodes".into(),
                reason: "no node has role `main`".into(),
            })?;
        tool(
            "ip",
            &[
                "-n",
                &self.router().ns,
                "route",
                "add",
                &vip,
                "via",
                &main_addr,
            ],
        )?;
        for (_, node) in self.linked_nodes() {
            if matches!(node.role, Role::Main | Role::Participant) {
                tool("ip", &["-n", &node.ns, "addr", "add", &vip, "dev", "lo"])?;
            }
            let gateway = node.gateway.to_string();
            tool(
                "ip",
                &["-n", &node.ns, "route", "add", "default", "via", &gateway],
            )?;
        }
        Ok(())
    }

    /// A `tbf` on both ends of every link that has a rate.
    fn apply_rates(&self) -> Result<(), LabError> {
        for (node, spec) in self.linked_nodes().map(|(_, n)| n).zip(self.topology.node_specs()) {
            if let Some(rate) = spec.rate {
                self.set_rate(&node.name, rate)?;
            }
        }
        Ok(())
    }

    /// Sets (or changes, while traffic flows) the rate of a node's link, both directions.
    pub fn set_rate(&self, node: &str, rate: Rate) -> Result<(), LabError> {
        let router = self.router();
        let Some((i, node)) = self.linked_nodes().find(|(_, n)| n.name == node) else {
            let known = self.linked_nodes().map(|(_, n)| n.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(LabError::NoSuchNode { lab: self.name().to_owned(), node: node.to_owned(), known });
        };
        let rate_arg = format!("{}bit", rate.bits_per_second());
        let burst = rate.tbf_burst_bytes().to_string();
        let veth = router_iface(i);
        for (ns, dev) in [(&node.ns, node.iface.as_str()), (&router.ns, veth.as_str())] {
            tool(
                "tc",
                &["-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate_arg, "burst", &burst, "latency", TBF_LATENCY],
            )?;
        }
        tracing::info!(node = node.name, %rate, burst, "rate limit");
        Ok(())
    }
}

/// Creates a veth pair with one end, `(name, namespace)`, in each of two namespaces, directly
/// there: nothing appears in the root namespace, so labs never clash.
fn add_veth_pair(one: (&str, &str), other: (&str, &str)) -> Result<(), LabError> {
    let args = [
        "link", "add", one.0, "netns", one.1, "type", "veth", "peer", "name", other.0, "netns",
        other.1,
    ];
    tool("ip", &args).map(drop)
}

/// Creates the bridge of `lan` in the router's namespace `ns` and makes its members' router-side
/// veths its ports. Multicast snooping is off, so the bridge floods multicast to every port like
/// a plain switch instead of waiting for IGMP reports that a lab without a querier may never
/// send in time. With STP off (the default) ports forward at once.
fn add_bridge(ns: &str, lan: &Lan) -> Result<(), LabError> {
    tool(
        "ip",
        &[
            "-n",
            ns,
            "link",
            "add",
            &lan.bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    )?;
    for &i in &lan.members {
        let veth = router_iface(i);
        tool("ip", &["-n", ns, "link", "set", &veth, "master", &lan.bridge])?;
    }
    tracing::info!(lan = lan.name, bridge = lan.bridge, ports = lan.members.len(), "LAN");
    Ok(())
}

/// The sysctls that turn IPv6 off in a namespace. The lab is IPv4 only: without this every
/// interface would pick an IPv6 link-local address and send router solicitations, addresses and
/// traffic nobody asked for. Empty on a kernel without IPv6.
fn ipv6_off() -> Vec<(String, &'static str)> {
    if Path::new("/proc/sys/net/ipv6").exists() {
        vec![
            ("net.ipv6.conf.all.disable_ipv6".to_owned(), "1"),
            ("net.ipv6.conf.default.disable_ipv6".to_owned(), "1"),
        ]
    } else {
        Vec::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.teardown_on_drop {
            return;
        }
        tracing::info!(lab = self.name(), "tearing lab down on drop");
        if let Err(error) = Lab::down_by_name(self.name()) {
            tracing::error!(lab = self.name(), %error, "teardown failed");
        }
    }
}

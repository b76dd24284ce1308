//! The main server's data plane: loads `main.bpf.o`, attaches it to the
//! ingress of the VIP interface through a pinned link and drives the flow map.
//!
//! The attachment outlives this process: while `baton-main` is down or
//! restarting, the last loaded program keeps forwarding every flow in the
//! pinned map, and the next load replaces it atomically (see `link.rs`).
//!
//! Policy (which flow goes where, when to freeze) belongs to the caller; this
//! module only writes what it is told. It must never remove a flow on its own
//! and never recreate the pinned flow map (that would cut every handed-off
//! connection).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{HashMap, MapData, MapError, MapType, PerCpuArray};

use crate::error::DataplaneError;
use crate::pin::ExpectedMap;
use crate::program::{AttachMode, Loaded, ObjectSpec};
use crate::test_run::TestRunOutput;
use crate::types::{
    Encap, FlowKey, FlowSeed, FlowTarget, FlowValue, MainConfig, MainCounter,
    FLOW_MAP_MAX_ENTRIES,
};

/// `BPF_EXIST`: update an element only if it is there.
const BPF_EXIST: u64 = 2;

/// The loopback interface, where the main's own probe connections arrive.
const LOOPBACK_IFACE: &str = "lo";
/// The flow map (pinned).
const FLOWS_MAP: &str = "baton_flows";
/// The configuration map (not pinned).
const CONFIG_MAP: &str = "baton_main_cfg";
/// The counters map (pinned).
const STATS_MAP: &str = "baton_main_stats";

static MAIN_OBJECT: ObjectSpec = ObjectSpec {
    name: "main.bpf.o",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/main.bpf.o")),
    tc_program: "baton_main_tc",
    xdp_program: "baton_main_xdp",
    egress_program: None,
    pinned: &[
        ExpectedMap {
            name: FLOWS_MAP,
            map_type: MapType::Hash,
            key_size: std::mem::size_of::<FlowKey>() as u32,
            value_size: std::mem::size_of::<FlowValue>() as u32,
            max_entries: FLOW_MAP_MAX_ENTRIES,
            disposable: false,
        },
        ExpectedMap {
            name: STATS_MAP,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: MainCounter::ALL.len() as u32,
            disposable: true,
        },
    ],
};

/// How to run the main's data plane.
#[derive(Clone, Debug)]
pub struct MainOptions {
    /// Interface the client traffic (to the VIP) arrives on.
    pub iface: String,
    /// tc or XDP.
    pub mode: AttachMode,
    /// bpffs directory for the pinned maps and the program's link (created
    /// if missing). Removing it detaches the program.
    pub pin_dir: PathBuf,
    /// Outer source address of encapsulated packets.
    pub local_addr: Ipv4Addr,
    /// Encapsulation toward participants.
    pub encap: Encap,
}

/// The loaded and attached main program and its maps. Dropping it detaches
/// nothing: the program stays attached through its pinned link and keeps
/// forwarding the flows in the pinned map until the next load replaces it or
/// [`detach_pinned`](crate::detach_pinned) / [`MainDataplane::detach`]
/// removes the link.
pub struct MainDataplane {
    loaded: Loaded,
    flows: Mutex<HashMap<MapData, FlowKey, FlowValue>>,
    stats: Mutex<PerCpuArray<MapData, u64>>,
    /// Kept open for the program's lifetime.
    _config: aya::maps::Array<MapData, MainConfig>,
}

impl std::fmt::Debug for MainDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainDataplane")
            .field("iface", &self.iface())
            .field("ifindex", &self.ifindex())
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl MainDataplane {
    /// Creates `pin_dir`, loads the program (reusing pinned maps), writes the
    /// configuration and attaches to the ingress of `iface` through the link
    /// pinned in `pin_dir`: when an earlier run left one there, its program
    /// is swapped for this one atomically, so the flows never meet the
    /// kernel's stack in between. A link of the other [`AttachMode`] on the
    /// same interface is unpinned once this one is attached.
    pub fn load(opts: &MainOptions) -> Result<Self, DataplaneError> {
        crate::program::ifindex(&opts.iface)?;
        warn_if_forwarding_disabled(&opts.iface);
        let mut loaded = MAIN_OBJECT.load(&opts.pin_dir, opts.mode)?;

        let mut config: aya::maps::Array<MapData, MainConfig> = loaded
            .take_map(CONFIG_MAP)?
            .try_into()
            .map_err(|e| DataplaneError::map(CONFIG_MAP, e))?;
        config
            .set(0, MainConfig::new(opts.local_addr, opts.encap), 0)
            .map_err(|e| DataplaneError::map(CONFIG_MAP, e))?;
        let flows: HashMap<MapData, FlowKey, FlowValue> = loaded
            .take_map(FLOWS_MAP)?
            .try_into()
            .map_err(|e| DataplaneError::map(FLOWS_MAP, e))?;
        let stats: PerCpuArray<MapData, u64> = loaded
            .take_map(STATS_MAP)?
            .try_into()
            .map_err(|e| DataplaneError::map(STATS_MAP, e))?;
        if stats.len() as usize != MainCounter::ALL.len() {
            return Err(DataplaneError::CounterCountMismatch {
                map: STATS_MAP,
                actual: stats.len(),
                expected: MainCounter::ALL.len(),
            });
        }

        loaded.attach(&opts.iface)?;
        Ok(Self {
            loaded,
            flows: Mutex::new(flows),
            stats: Mutex::new(stats),
            _config: config,
        })
    }

    /// Also runs the program on the ingress of `lo`, so that the main's own
    /// connections to the VIP (its health probes) are handed off like a
    /// client's: their later segments, which the kernel loops back, are
    /// forwarded to the participant instead of meeting the main's stack.
    pub fn attach_loopback(&self) -> Result<(), DataplaneError> {
        self.loaded.attach_tc_ingress_also(LOOPBACK_IFACE).map(|_| ())
    }

    /// Marks a flow frozen: its packets are dropped from now on. Overwrites
    /// any existing entry and clears its observations.
    pub fn freeze(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        let mut flows = self.flows.lock().map_err(|_| DataplaneError::Poisoned)?;
        flows
            .insert(key, FlowValue::frozen(), 0)
            .map_err(|e| DataplaneError::map(FLOWS_MAP, e))
    }

    /// Points a flow at `participant`. Observations of an existing entry are
    /// kept (a packet racing with this call may lose its observation update;
    /// the next packet repeats it).
    pub fn forward(&self, key: &FlowKey, participant: Ipv4Addr) -> Result<(), DataplaneError> {
        let mut flows = self.flows.lock().map_err(|_| DataplaneError::Poisoned)?;
        let current = match flows.get(key, 0) {
            Ok(value) => value,
            Err(MapError::KeyNotFound) => FlowValue::default(),
            Err(e) => return Err(DataplaneError::map(FLOWS_MAP, e)),
        };
        flows
            .insert(key, current.with_forward(participant), 0)
            .map_err(|e| DataplaneError::map(FLOWS_MAP, e))
    }

    /// Marks a flow frozen with its observations seeded from the main's
    /// `TCP_REPAIR` dump at handoff: `last_ack` = `seed.snd_nxt` (no wraps),
    /// `client_next_seq` = `seed.rcv_nxt`. The program's forward-only
    /// comparisons then start from a correct base: an old segment that
    /// arrives late cannot set a lower ACK. Overwrites any existing entry.
    pub fn freeze_seeded(&self, key: &FlowKey, seed: FlowSeed) -> Result<(), DataplaneError> {
        let mut flows = self.flows.lock().map_err(|_| DataplaneError::Poisoned)?;
        flows
            .insert(key, FlowValue::frozen_seeded(seed), 0)
            .map_err(|e| DataplaneError::map(FLOWS_MAP, e))
    }

    /// Changes only the state and participant of an existing flow (a move
    /// between participants: freeze, then forward to the new one), keeping
    /// every observation. Fails with [`DataplaneError::NoSuchFlow`] when the
    /// flow is not in the map (never created here: an entry without its
    /// observations would mislead a later recovery).
    ///
    /// This is a read-modify-write of the whole entry, and the program may
    /// update the entry between the read and the write: that update is lost
    /// (the write carries the older observations). The forward-only fields
    /// then lag behind, never run ahead: the ACK and its wrap count are read
    /// and written together, so they stay consistent, and the client's next
    /// segment moves them forward again. A recovery that uses a lagging ACK
    /// resends bytes the client already has, which TCP discards; it never
    /// skips any. Packet and byte counts may miss the racing packet.
    pub fn set_state(&self, key: &FlowKey, target: FlowTarget) -> Result<(), DataplaneError> {
        let mut flows = self.flows.lock().map_err(|_| DataplaneError::Poisoned)?;
        let current = match flows.get(key, 0) {
            Ok(value) => value,
            Err(MapError::KeyNotFound) => return Err(DataplaneError::NoSuchFlow { key: *key }),
            Err(e) => return Err(DataplaneError::map(FLOWS_MAP, e)),
        };
        // BPF_EXIST: if the program deleted the entry meanwhile (a stale SYN), do not revive it.
        match flows.insert(key, current.with_target(target), BPF_EXIST) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(DataplaneError::NoSuchFlow { key: *key }),
            Err(e) => Err(DataplaneError::map(FLOWS_MAP, e)),
        }
    }

    /// Forgets a flow; its packets go to the local stack again. Absent is fine.
    pub fn remove(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        let mut flows = self.flows.lock().map_err(|_| DataplaneError::Poisoned)?;
        match flows.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(DataplaneError::map(FLOWS_MAP, e)),
        }
    }

    /// The entry of one flow.
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowValue>, DataplaneError> {
        let flows = self.flows.lock().map_err(|_| DataplaneError::Poisoned)?;
        match flows.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DataplaneError::map(FLOWS_MAP, e)),
        }
    }

    /// Every flow in the map (entries removed during the walk are skipped).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, DataplaneError> {
        let flows = self.flows.lock().map_err(|_| DataplaneError::Poisoned)?;
        flows
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DataplaneError::map(FLOWS_MAP, e))
    }

    /// Every counter, summed over CPUs, in [`MainCounter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(MainCounter, u64)>, DataplaneError> {
        sum_counters(&self.stats, STATS_MAP, MainCounter::ALL, |c| c.index())
    }

    /// Runs one Ethernet frame through the loaded program as if it had
    /// arrived on the attached interface (BPF_PROG_TEST_RUN). Nothing is sent;
    /// the flow map and counters are updated as for a real packet.
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRunOutput, DataplaneError> {
        self.loaded.test_run(frame, self.ifindex())
    }

    /// Index of the attached interface.
    pub fn ifindex(&self) -> u32 {
        self.loaded.attached().map_or(0, |(_, index)| index)
    }

    /// Name of the attached interface.
    pub fn iface(&self) -> &str {
        self.loaded.attached().map_or("", |(name, _)| name)
    }

    /// How the program is attached.
    pub fn mode(&self) -> AttachMode {
        self.loaded.mode()
    }

    /// The pin directory (maps and link).
    pub fn pin_dir(&self) -> &Path {
        self.loaded.pin_dir()
    }

    /// The kernel's id of this load's program: what the pinned link runs
    /// until the next load replaces it.
    pub fn program_id(&self) -> Result<u32, DataplaneError> {
        self.loaded.program_id(false)
    }

    /// Detaches the program for a clean shutdown: unpins every link in the
    /// pin directory (see [`detach_pinned`](crate::detach_pinned)). The
    /// pinned maps stay, so flows are kept for a later load, but until then
    /// their packets reach the kernel, which resets them. Returns the pins
    /// removed.
    pub fn detach(self) -> Result<Vec<PathBuf>, DataplaneError> {
        crate::link::detach_pinned(self.loaded.pin_dir())
    }
}

pub(crate) fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// bpf_fib_lookup refuses to route for an interface with IPv4 forwarding
/// off; every forwarded packet would then be dropped as drop_fib_failed.
fn warn_if_forwarding_disabled(iface: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
    if let Ok(value) = std::fs::read_to_string(&path) {
        if value.trim() == "0" {
            tracing::warn!(
                iface,
                "IPv4 forwarding is off on {iface}: the kernel will not route encapsulated packets \
                 to participants (counted as drop_fib_failed); set net.ipv4.conf.{iface}.forwarding=1"
            );
        }
    }
}

/// Reads every counter of a per-CPU counters map and sums it over CPUs, in `all`'s order.
pub(crate) fn sum_counters<C: Copy>(
    stats: &Mutex<PerCpuArray<MapData, u64>>,
    map: &'static str,
    all: &[C],
    index: impl Fn(C) -> u32,
) -> Result<Vec<(C, u64)>, DataplaneError> {
    let stats = stats.lock().map_err(|_| DataplaneError::Poisoned)?;
    all.iter()
        .map(|&counter| {
            let per_cpu = stats.get(&index(counter), 0).map_err(|e| DataplaneError::map(map, e))?;
            Ok((counter, per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v))))
        })
        .collect()
}

//! A participant's data plane: loads `participant.bpf.o`, attaches its
//! decapsulation to the ingress of the interface encapsulated traffic from
//! the main arrives on, and its egress guard to the egress of the interfaces
//! toward clients; drives the guard map.
//!
//! It must never accept encapsulated packets from anyone but the configured
//! main: that is what keeps strangers from injecting segments into restored
//! connections. Both attachments are pinned links, and the guard map is
//! pinned: after the participant process dies the guard keeps its kernel
//! from ending the connections it owned ("fail silent") until the main has
//! moved them and someone removes the entries or the links.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{HashMap, MapData, MapError, MapType, PerCpuArray};

use crate::error::DataplaneError;
use crate::main_dataplane::is_not_found;
use crate::pin::ExpectedMap;
use crate::program::{AttachMode, Loaded, ObjectSpec};
use crate::test_run::TestRunOutput;
use crate::types::{
    Encap, FlowKey, GuardState, ParticipantConfig, ParticipantCounter, GUARD_MAP_MAX_ENTRIES,
};

/// The configuration map (not pinned).
const CONFIG_MAP: &str = "baton_part_cfg";
/// The counters map (pinned).
const STATS_MAP: &str = "baton_part_stats";
/// The egress guard map (pinned).
const GUARD_MAP: &str = "baton_guard";
/// The egress guard program.
const GUARD_PROGRAM: &str = "baton_guard_tc";

static PARTICIPANT_OBJECT: ObjectSpec = ObjectSpec {
    name: "participant.bpf.o",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/participant.bpf.o")),
    tc_program: "baton_participant_tc",
    xdp_program: "baton_participant_xdp",
    egress_program: Some(GUARD_PROGRAM),
    pinned: &[
        ExpectedMap {
            name: STATS_MAP,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: ParticipantCounter::ALL.len() as u32,
            disposable: true,
        },
        // Never replaced: it protects live connections.
        ExpectedMap {
            name: GUARD_MAP,
            map_type: MapType::Hash,
            key_size: std::mem::size_of::<FlowKey>() as u32,
            value_size: 4,
            max_entries: GUARD_MAP_MAX_ENTRIES,
            disposable: false,
        },
    ],
};

/// How to run a participant's data plane.
#[derive(Clone, Debug)]
pub struct ParticipantOptions {
    /// Interface encapsulated packets from the main arrive on. The egress
    /// guard is attached to its egress too; attach it to other interfaces
    /// toward clients with [`ParticipantDataplane::attach_guard`].
    pub iface: String,
    /// tc or XDP.
    pub mode: AttachMode,
    /// bpffs directory for the pinned counters, guard map and links (created
    /// if missing). Removing it detaches the programs.
    pub pin_dir: PathBuf,
    /// The only outer source address accepted.
    pub main_addr: Ipv4Addr,
    /// Encapsulation the main uses.
    pub encap: Encap,
    /// Drop encapsulated TCP segments that no local socket takes, rather than letting the
    /// kernel reset them from the VIP (segments the main forwards before the restore).
    pub require_socket: bool,
}

/// The loaded and attached participant programs. Dropping it detaches
/// nothing (pinned links); see [`ParticipantDataplane::detach`].
pub struct ParticipantDataplane {
    loaded: Loaded,
    stats: Mutex<PerCpuArray<MapData, u64>>,
    guard: Mutex<HashMap<MapData, FlowKey, u32>>,
    /// Kept open for the program's lifetime.
    _config: aya::maps::Array<MapData, ParticipantConfig>,
}

impl std::fmt::Debug for ParticipantDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParticipantDataplane")
            .field("iface", &self.iface())
            .field("ifindex", &self.ifindex())
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl ParticipantDataplane {
    /// Creates `pin_dir`, loads the programs, writes the configuration,
    /// attaches the decapsulation to the ingress of `iface` and the guard to
    /// its egress, each through a link pinned in `pin_dir` (an earlier run's
    /// pinned link gets the new program atomically).
    pub fn load(opts: &ParticipantOptions) -> Result<Self, DataplaneError> {
        crate::program::ifindex(&opts.iface)?;
        let mut loaded = PARTICIPANT_OBJECT.load(&opts.pin_dir, opts.mode)?;

        let mut config: aya::maps::Array<MapData, ParticipantConfig> = loaded
            .take_map(CONFIG_MAP)?
            .try_into()
            .map_err(|e| DataplaneError::map(CONFIG_MAP, e))?;
        config
            .set(0, ParticipantConfig::new(opts.main_addr, opts.encap, opts.require_socket), 0)
            .map_err(|e| DataplaneError::map(CONFIG_MAP, e))?;
        let stats: PerCpuArray<MapData, u64> = loaded
            .take_map(STATS_MAP)?
            .try_into()
            .map_err(|e| DataplaneError::map(STATS_MAP, e))?;
        if stats.len() as usize != ParticipantCounter::ALL.len() {
            return Err(DataplaneError::CounterCountMismatch {
                map: STATS_MAP,
                actual: stats.len(),
                expected: ParticipantCounter::ALL.len(),
            });
        }

        let guard: HashMap<MapData, FlowKey, u32> = loaded
            .take_map(GUARD_MAP)?
            .try_into()
            .map_err(|e| DataplaneError::map(GUARD_MAP, e))?;

        loaded.attach(&opts.iface)?;
        loaded.attach_egress(&opts.iface)?;
        Ok(Self {
            loaded,
            stats: Mutex::new(stats),
            guard: Mutex::new(guard),
            _config: config,
        })
    }

    /// Attaches the egress guard to another interface toward clients (when
    /// responses leave by a different interface than the main's packets
    /// arrive on), through its own pinned link.
    pub fn attach_guard(&self, iface: &str) -> Result<(), DataplaneError> {
        self.loaded.attach_egress(iface).map(|_| ())
    }

    /// Puts a restored connection under the guard: from now on the kernel
    /// here may not end it (FIN, RST) nor let an orphaned socket talk to the
    /// client. Call it before the restored socket can send anything. Keyed as
    /// the main keys flows (client, VIP).
    pub fn guard_own(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        self.guard_set(key, GuardState::Owned)
    }

    /// Lets a guarded connection end normally (the participant closes it
    /// itself, with the main's consent): everything passes. Call it before
    /// the close.
    pub fn guard_closing(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        self.guard_set(key, GuardState::Closing)
    }

    /// Freezes a guarded connection while its socket is dumped for a move:
    /// the guard stays as for [`guard_own`](Self::guard_own), and the
    /// client's segments the main forwards here are dropped on ingress, so
    /// the socket cannot take data the dump does not describe (the client
    /// retransmits it to the next owner).
    pub fn guard_freeze(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        self.guard_set(key, GuardState::Frozen)
    }

    fn guard_set(&self, key: &FlowKey, state: GuardState) -> Result<(), DataplaneError> {
        let mut guard = self.guard.lock().map_err(|_| DataplaneError::Poisoned)?;
        guard
            .insert(key, state.raw(), 0)
            .map_err(|e| DataplaneError::map(GUARD_MAP, e))
    }

    /// Takes a connection out of the guard (it ended, or moved away and its
    /// socket here is gone). Absent is fine.
    pub fn guard_remove(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        let mut guard = self.guard.lock().map_err(|_| DataplaneError::Poisoned)?;
        match guard.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(DataplaneError::map(GUARD_MAP, e)),
        }
    }

    /// The guard state of one connection.
    pub fn guard_get(&self, key: &FlowKey) -> Result<Option<GuardState>, DataplaneError> {
        let guard = self.guard.lock().map_err(|_| DataplaneError::Poisoned)?;
        match guard.get(key, 0) {
            Ok(raw) => Ok(Some(GuardState::from_raw(raw))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DataplaneError::map(GUARD_MAP, e)),
        }
    }

    /// Every guarded connection (the map is pinned: after a restart this is
    /// what the previous process left, to reconcile with the main).
    pub fn guard_entries(&self) -> Result<Vec<(FlowKey, GuardState)>, DataplaneError> {
        let guard = self.guard.lock().map_err(|_| DataplaneError::Poisoned)?;
        guard
            .iter()
            .map(|entry| entry.map(|(k, raw)| (k, GuardState::from_raw(raw))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DataplaneError::map(GUARD_MAP, e))
    }

    /// Every counter, summed over CPUs, in [`ParticipantCounter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(ParticipantCounter, u64)>, DataplaneError> {
        crate::main_dataplane::sum_counters(&self.stats, STATS_MAP, ParticipantCounter::ALL, |c| c.index())
    }

    /// Runs one Ethernet frame through the loaded program as if it had
    /// arrived on the attached interface (BPF_PROG_TEST_RUN). Nothing is
    /// delivered; counters are updated as for a real packet.
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRunOutput, DataplaneError> {
        self.loaded.test_run(frame, self.ifindex())
    }

    /// Runs one Ethernet frame through the egress guard as if the attached
    /// interface sent it (BPF_PROG_TEST_RUN). Nothing is sent; counters move
    /// as for a real packet. The kernel gives a test run a placeholder socket
    /// that is not a TCP socket, so only the FIN/RST rule applies here; the
    /// orphan rule needs real traffic.
    pub fn guard_test_run(&self, frame: &[u8]) -> Result<TestRunOutput, DataplaneError> {
        self.loaded.test_run_egress(frame, self.ifindex())
    }

    /// Index of the attached interface.
    pub fn ifindex(&self) -> u32 {
        self.loaded.attached().map_or(0, |(_, index)| index)
    }

    /// Name of the attached interface.
    pub fn iface(&self) -> &str {
        self.loaded.attached().map_or("", |(name, _)| name)
    }

    /// How the ingress program is attached.
    pub fn mode(&self) -> AttachMode {
        self.loaded.mode()
    }

    /// The pin directory (maps and links).
    pub fn pin_dir(&self) -> &Path {
        self.loaded.pin_dir()
    }

    /// The kernel's id of this load's ingress program.
    pub fn program_id(&self) -> Result<u32, DataplaneError> {
        self.loaded.program_id(false)
    }

    /// The kernel's id of this load's egress guard program.
    pub fn guard_program_id(&self) -> Result<u32, DataplaneError> {
        self.loaded.program_id(true)
    }

    /// Detaches both programs for a clean shutdown by unpinning every link in
    /// the pin directory (see [`detach_pinned`](crate::detach_pinned)). The
    /// guard map and counters stay pinned. Returns the pins removed.
    pub fn detach(self) -> Result<Vec<PathBuf>, DataplaneError> {
        crate::link::detach_pinned(self.loaded.pin_dir())
    }
}

//! A participant's data plane: loads `participant.bpf.o` and attaches its
//! decapsulation to the ingress of the interface encapsulated traffic from
//! the main arrives on, through a pinned link that outlives the process.
//!
//! It must never accept encapsulated packets from anyone but the configured
//! main: that is what keeps strangers from injecting segments into restored
//! connections.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{MapData, MapType, PerCpuArray};

use crate::error::DataplaneError;
use crate::pin::ExpectedMap;
use crate::program::{AttachMode, Loaded, ObjectSpec};
use crate::test_run::TestRunOutput;
use crate::types::{Encap, ParticipantConfig, ParticipantCounter};

/// The configuration map (not pinned).
const CONFIG_MAP: &str = "baton_part_cfg";
/// The counters map (pinned).
const STATS_MAP: &str = "baton_part_stats";

static PARTICIPANT_OBJECT: ObjectSpec = ObjectSpec {
    name: "participant.bpf.o",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/participant.bpf.o")),
    tc_program: "baton_participant_tc",
    xdp_program: "baton_participant_xdp",
    egress_program: None,
    pinned: &[ExpectedMap {
        name: STATS_MAP,
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size: 8,
        max_entries: ParticipantCounter::ALL.len() as u32,
        disposable: true,
    }],
};

/// How to run a participant's data plane.
#[derive(Clone, Debug)]
pub struct ParticipantOptions {
    /// Interface encapsulated packets from the main arrive on.
    pub iface: String,
    /// tc or XDP.
    pub mode: AttachMode,
    /// bpffs directory for the pinned counters and the link (created if
    /// missing). Removing it detaches the program.
    pub pin_dir: PathBuf,
    /// The only outer source address accepted.
    pub main_addr: Ipv4Addr,
    /// Encapsulation the main uses.
    pub encap: Encap,
    /// Drop encapsulated TCP segments that no local socket takes, rather than letting the
    /// kernel reset them from the VIP (segments the main forwards before the restore).
    pub require_socket: bool,
}

/// The loaded and attached participant program. Dropping it detaches
/// nothing (pinned link); see [`ParticipantDataplane::detach`].
pub struct ParticipantDataplane {
    loaded: Loaded,
    stats: Mutex<PerCpuArray<MapData, u64>>,
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
    /// Creates `pin_dir`, loads the program, writes the configuration and
    /// attaches to the ingress of `iface` through a link pinned in `pin_dir`
    /// (an earlier run's pinned link gets the new program atomically).
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

        loaded.attach(&opts.iface)?;
        Ok(Self {
            loaded,
            stats: Mutex::new(stats),
            _config: config,
        })
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

    /// The pin directory (maps and links).
    pub fn pin_dir(&self) -> &Path {
        self.loaded.pin_dir()
    }

    /// The kernel's id of this load's ingress program.
    pub fn program_id(&self) -> Result<u32, DataplaneError> {
        self.loaded.program_id(false)
    }

    /// Detaches the program for a clean shutdown by unpinning every link in
    /// the pin directory (see [`detach_pinned`](crate::detach_pinned)). The
    /// counters stay pinned. Returns the pins removed.
    pub fn detach(self) -> Result<Vec<PathBuf>, DataplaneError> {
        crate::link::detach_pinned(self.loaded.pin_dir())
    }
}

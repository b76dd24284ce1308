//! The main's data plane in whichever mode it runs: the BPF program (tc or XDP) or the
//! userspace fallback. One type for the main server to hold, with the operations both have.

use std::net::Ipv4Addr;

use crate::error::DataplaneError;
use crate::main_dataplane::{MainDataplane, MainOptions};
use crate::types::{FlowKey, FlowSeed, FlowTarget, FlowValue, MainCounter};
use crate::userspace::UserspaceDataplane;

/// How the main forwards handed-off flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaneMode {
    /// The BPF program, attached as [`MainOptions::mode`] says.
    Bpf,
    /// Threads of `baton-main` with AF_PACKET, a raw socket and nftables; the flow table is
    /// saved in `state_dir`.
    Userspace { state_dir: std::path::PathBuf },
}

/// The main's data plane.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "one per process, never moved around")]
pub enum MainPlane {
    /// The BPF program (tc or XDP).
    Bpf(MainDataplane),
    /// The userspace fallback.
    Userspace(UserspaceDataplane),
}

macro_rules! both {
    ($self:ident, $dp:ident => $e:expr) => {
        match $self {
            MainPlane::Bpf($dp) => $e,
            MainPlane::Userspace($dp) => $e,
        }
    };
}

impl MainPlane {
    /// Loads the data plane of `mode` on `opts.iface`.
    pub fn load(opts: &MainOptions, mode: &PlaneMode) -> Result<Self, DataplaneError> {
        Ok(match mode {
            PlaneMode::Bpf => MainPlane::Bpf(MainDataplane::load(opts)?),
            PlaneMode::Userspace { state_dir } => MainPlane::Userspace(UserspaceDataplane::load(opts, state_dir)?),
        })
    }

    /// `"tc"`, `"xdp"` or `"userspace"`.
    pub fn mode_name(&self) -> &'static str {
        match self {
            MainPlane::Bpf(dp) => match dp.mode() {
                crate::AttachMode::Tc => "tc",
                crate::AttachMode::Xdp => "xdp",
            },
            MainPlane::Userspace(_) => "userspace",
        }
    }

    /// Also handles the flows whose packets arrive on `lo` (the main's own health probes).
    pub fn attach_loopback(&self) -> Result<(), DataplaneError> {
        both!(self, dp => dp.attach_loopback())
    }

    /// See [`MainDataplane::freeze`].
    pub fn freeze(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        both!(self, dp => dp.freeze(key))
    }

    /// See [`MainDataplane::freeze_seeded`].
    pub fn freeze_seeded(&self, key: &FlowKey, seed: FlowSeed) -> Result<(), DataplaneError> {
        both!(self, dp => dp.freeze_seeded(key, seed))
    }

    /// See [`MainDataplane::forward`].
    pub fn forward(&self, key: &FlowKey, participant: Ipv4Addr) -> Result<(), DataplaneError> {
        both!(self, dp => dp.forward(key, participant))
    }

    /// See [`MainDataplane::set_state`].
    pub fn set_state(&self, key: &FlowKey, target: FlowTarget) -> Result<(), DataplaneError> {
        both!(self, dp => dp.set_state(key, target))
    }

    /// See [`MainDataplane::remove`].
    pub fn remove(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        both!(self, dp => dp.remove(key))
    }

    /// See [`MainDataplane::get`].
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowValue>, DataplaneError> {
        both!(self, dp => dp.get(key))
    }

    /// See [`MainDataplane::flows`].
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, DataplaneError> {
        both!(self, dp => dp.flows())
    }

    /// See [`MainDataplane::counters`].
    pub fn counters(&self) -> Result<Vec<(MainCounter, u64)>, DataplaneError> {
        both!(self, dp => dp.counters())
    }

    /// Name of the VIP interface.
    pub fn iface(&self) -> &str {
        both!(self, dp => dp.iface())
    }
}

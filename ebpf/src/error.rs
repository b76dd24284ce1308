//! The one error type of the data-plane crate.
//!
//! Messages are lowercase and name what was being done and to what; they
//! never suggest a fix that this crate did not verify (the capability and
//! bpffs errors name the exact requirement).

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong loading, attaching or driving the programs.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The process lacks capabilities the data plane needs.
    #[error(
        "missing capabilities {missing}: the data plane needs CAP_BPF and CAP_NET_ADMIN \
         (run as root or grant them with setcap)"
    )]
    MissingCapabilities {
        /// Comma-separated capability names.
        missing: String,
    },
    /// Creating a trivial BPF map failed although the capabilities look present.
    #[error(
        "the kernel refused a test bpf(2) map creation: {source}; the data plane needs \
         CAP_BPF and CAP_NET_ADMIN and a kernel with BPF enabled"
    )]
    BpfUnavailable {
        /// The bpf(2) error.
        source: io::Error,
    },
    /// Reading the process's capabilities failed.
    #[error("reading capabilities from {path}: {source}")]
    ReadCapabilities {
        /// Usually `/proc/self/status`.
        path: PathBuf,
        /// The read error.
        source: io::Error,
    },
    /// The interface does not exist (in this network namespace).
    #[error("interface {iface} not found")]
    NoSuchInterface {
        /// Interface name as given.
        iface: String,
    },
    /// The pin directory could not be created or inspected.
    #[error("pin directory {path}: {source}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The pin directory is not on a BPF filesystem.
    #[error("pin directory {path} is not on a bpf filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs {
        /// The directory.
        path: PathBuf,
    },
    /// A map pinned by an earlier run does not fit this build.
    #[error("pinned map {path} does not match this build ({detail}); remove it to start with an empty map")]
    PinnedMapMismatch {
        /// The pinned file.
        path: PathBuf,
        /// What differs.
        detail: String,
    },
    /// A stale pinned map could not be removed.
    #[error("removing stale pinned map {path}: {source}")]
    RemoveStalePin {
        /// The pinned file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The embedded object could not be loaded (maps created, relocated).
    #[error("loading bpf object {object}: {source}")]
    LoadObject {
        /// Object name, e.g. `main.bpf.o`.
        object: &'static str,
        /// aya's error.
        source: Box<aya::EbpfError>,
    },
    /// A program or map the loader expects is not in the object.
    #[error("{what} {name} is missing from {object}")]
    MissingFromObject {
        /// `"program"` or `"map"`.
        what: &'static str,
        /// Its name.
        name: &'static str,
        /// Object name.
        object: &'static str,
    },
    /// The kernel rejected a program (verifier) or a program operation failed.
    #[error("program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// aya's error (the verifier log is in here).
        source: Box<aya::programs::ProgramError>,
    },
    /// Attaching a program to an interface failed.
    #[error("attaching {program} to {iface}: {source}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Interface name.
        iface: String,
        /// aya's error.
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// aya's error.
        source: Box<aya::maps::MapError>,
    },
    /// The flow is not in the flow map.
    #[error("flow {key} is not in the flow map")]
    NoSuchFlow {
        /// The flow.
        key: crate::types::FlowKey,
    },
    /// The counters map has a different size than this build's counter list.
    #[error("map {map} has {actual} entries, this build counts {expected} reasons")]
    CounterCountMismatch {
        /// Map name.
        map: &'static str,
        /// Entries in the map.
        actual: u32,
        /// Counters this build knows.
        expected: usize,
    },
    /// The kernel has no BPF link type for this hook. Baton attaches only
    /// through pinned links, so its programs outlive the process.
    #[error(
        "cannot attach {program} to {iface}: this kernel ({kernel}) lacks bpf_link support for \
         {hook} attachments (Linux {needs} or later), which Baton needs so that its programs \
         stay attached while its processes restart"
    )]
    LinkUnsupported {
        /// Program name.
        program: &'static str,
        /// Interface name.
        iface: String,
        /// `"tcx ingress"`, `"tcx egress"` or `"xdp"`.
        hook: &'static str,
        /// The first kernel version with that link type.
        needs: String,
        /// The running kernel's version.
        kernel: String,
    },
    /// A pinned link could not be opened, inspected, updated or unpinned.
    #[error("pinned link {path}: {source}")]
    PinnedLink {
        /// The pinned file.
        path: PathBuf,
        /// The bpf(2) or file-system error.
        source: io::Error,
    },
    /// A file where this build pins a link holds something else.
    #[error("pinned link {path} does not fit ({detail}); remove it to attach afresh")]
    PinnedLinkMismatch {
        /// The pinned file.
        path: PathBuf,
        /// What differs.
        detail: String,
    },
    /// Pinning a new link failed (it is detached again).
    #[error("pinning the link of {program} at {path}: {source}")]
    PinLink {
        /// Program name.
        program: &'static str,
        /// Where it was to be pinned.
        path: PathBuf,
        /// aya's error.
        source: Box<aya::pin::PinError>,
    },
    /// BPF_PROG_TEST_RUN failed.
    #[error("test run of {program}: {source}")]
    TestRun {
        /// Program name.
        program: &'static str,
        /// The bpf(2) error.
        source: io::Error,
    },
    /// The userspace data plane's nftables table could not be changed.
    #[error("nftables: {detail}")]
    Nft {
        /// What failed, with nft's message.
        detail: String,
    },
    /// A system call of the userspace data plane failed.
    #[error("userspace data plane: {action}: {source}")]
    Userspace {
        /// What was being done.
        action: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// A packet socket of the userspace data plane failed.
    #[error("userspace data plane: {source}")]
    Packet {
        /// The socket's error.
        source: baton_packet::PacketError,
    },
    /// The userspace flow table holds as many flows as the BPF map would.
    #[error("the flow table is full ({capacity} flows)")]
    FlowTableFull {
        /// Its capacity.
        capacity: u32,
    },
    /// A thread panicked while holding the data-plane lock.
    #[error("data-plane lock poisoned by a panic")]
    Poisoned,
}

impl DataplaneError {
    pub(crate) fn map(map: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            map,
            source: Box::new(source),
        }
    }

    /// The flow table (BPF map or userspace table) has no room for another flow: the kernel
    /// refuses a new hash-map element with `E2BIG`.
    pub fn is_table_full(&self) -> bool {
        match self {
            Self::FlowTableFull { .. } => true,
            Self::Map { source, .. } => {
                matches!(source.as_ref(), aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG))
            }
            _ => false,
        }
    }

    pub(crate) fn program(program: &'static str, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            program,
            source: Box::new(source),
        }
    }
}

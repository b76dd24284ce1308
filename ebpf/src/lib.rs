//! Baton's data plane: BPF programs written in C (compiled by `build.rs`
//! with clang) and the Rust code that loads, attaches and drives them.
//!
//! - The **main** program runs on the main server's ingress. For client
//!   segments of handed-off flows it records the client's latest ACK, window
//!   and timestamp echo, and either drops them (flow frozen while it moves)
//!   or encapsulates them to the participant that owns the connection.
//! - The **participant** program removes that encapsulation, accepting it
//!   only from its main, so the segment reaches the restored socket. Its
//!   egress **guard** keeps a dying participant's kernel from ending
//!   connections the main is about to move (no FIN, RST or orphan traffic
//!   for flows it owns).
//!
//! - The **userspace** fallback ([`UserspaceDataplane`]) runs the main program's rules in
//!   threads of `baton-main` (AF_PACKET, a raw socket, nftables) where BPF cannot be loaded;
//!   [`MainPlane`] is either.
//!
//! Programs are attached through BPF links pinned next to the maps
//! ([`detach_pinned`] removes them): they keep running while the processes
//! restart or after they die, and a new load swaps them atomically.
//!
//! This crate holds no policy: it never decides which flow goes where or
//! when, and never removes flows on its own.

pub mod bench;
mod caps;
mod error;
mod link;
mod main_dataplane;
mod participant_dataplane;
mod pin;
mod plane;
mod program;
mod test_run;
mod types;
pub mod userspace;

pub use caps::check_capabilities;
pub use error::DataplaneError;
pub use link::{detach_pinned, pinned_links, LinkKind, LinkPin};
pub use main_dataplane::{MainDataplane, MainOptions};
pub use plane::{MainPlane, PlaneMode};
pub use userspace::UserspaceDataplane;
pub use participant_dataplane::{ParticipantDataplane, ParticipantOptions};
pub use program::AttachMode;
pub use test_run::{
    TestRunOutput, Verdict, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS,
    XDP_REDIRECT, XDP_TX,
};
pub use types::{
    monotonic_now_ns, Encap, FlowKey, FlowSeed, FlowState, FlowTarget, FlowValue, GuardState,
    MainConfig, MainCounter, ParticipantConfig, ParticipantCounter, FLOW_MAP_MAX_ENTRIES,
    GUARD_MAP_MAX_ENTRIES,
};

/// The data planes are shared between tokio tasks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MainDataplane>();
    assert_send_sync::<ParticipantDataplane>();
    assert_send_sync::<UserspaceDataplane>();
};

//! The participant's egress guard, seen from the agent: which connections this host's kernel
//! may end on its own.
//!
//! While a handed-off connection is owned here, the data plane drops any FIN or RST the kernel
//! would send on it, and anything an orphaned socket sends: if this process dies (kill -9, a
//! crash), the kernel closing its sockets stays invisible to the client, and the main moves the
//! connection to another participant as if this machine had lost power. The agent lifts the
//! guard just before it closes a connection on purpose, and freezes a connection (its inbound
//! segments are dropped) while it dumps it for a move, so nothing the client sends lands in a
//! socket that is already described to the next owner.
//!
//! Failures to update the map are logged, not fatal: the connection still works; only the
//! crash guarantee for it is weaker.

use std::sync::Arc;

use baton_ebpf::{FlowKey, ParticipantDataplane};
use tracing::warn;

/// Handle on the guard map (absent in setups without a data plane, e.g. unit tests).
#[derive(Debug, Clone, Default)]
pub struct Guard {
    plane: Option<Arc<ParticipantDataplane>>,
}

impl Guard {
    pub fn new(plane: Arc<ParticipantDataplane>) -> Self {
        Self { plane: Some(plane) }
    }

    /// The connection is owned here: the kernel may not end it.
    pub fn own(&self, key: FlowKey) {
        if let Some(p) = &self.plane {
            if let Err(e) = p.guard_own(&key) {
                warn!(error = %e, "guard: could not own the flow");
            }
        }
    }

    /// The connection is being dumped for a move: drop what the client sends meanwhile.
    pub fn freeze(&self, key: FlowKey) {
        if let Some(p) = &self.plane {
            if let Err(e) = p.guard_freeze(&key) {
                warn!(error = %e, "guard: could not freeze the flow");
            }
        }
    }

    /// The connection is no longer guarded (closed on purpose, or gone to another owner).
    pub fn remove(&self, key: FlowKey) {
        if let Some(p) = &self.plane {
            if let Err(e) = p.guard_remove(&key) {
                warn!(error = %e, "guard: could not remove the flow");
            }
        }
    }
}

//! The main's side of moving live connections: drives the [`Conductor`] from control messages,
//! operator commands and a clock, and carries out what it decides (data-plane updates, control
//! messages, serving a connection locally when no participant can).
//!
//! Lock order: the conductor's lock is taken first and never held across an `await`; the
//! registry and the flow table are only touched briefly while it is held.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_ebpf::{FlowKey, FlowTarget};
use baton_io::repair::{restore, Resume};
use baton_io::session::{Ending, PendingBody, Session};
use baton_shared::control::Message;
use baton_shared::select;
use baton_shared::handoff::Handoff;
use baton_shared::http::object_path;
use baton_shared::moves::{Action, Conductor, Env, FlowId, Ledger, Observation};
use tokio::net::TcpStream;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::state::Shared;

/// How often the conductor's clock ticks (heartbeat and move deadlines).
pub const TICK: Duration = Duration::from_millis(20);

/// The data-plane key of a ledger's connection.
pub fn key_of(ledger: &Ledger) -> FlowKey {
    FlowKey::new(ledger.origin.remote, ledger.origin.local)
}

/// The conductor's view of the running main.
#[derive(Debug)]
pub struct MainEnv<'a> {
    pub shared: &'a Shared,
}

impl Env for MainEnv<'_> {
    fn observe(&self, _flow: FlowId, ledger: &Ledger) -> Option<Observation> {
        let key = key_of(ledger);
        let v = match self.shared.dataplane.get(&key) {
            Ok(Some(v)) => v,
            Ok(None) => return None,
            Err(e) => {
                warn!(error = %e, "reading the flow's observations");
                return None;
            }
        };
        // Seeded with the origin's snd_seq (epoch 0): the position minus that is the offset.
        let base = u64::from(ledger.origin.snd_seq);
        Some(Observation {
            acked: v.acked_position(base)?.saturating_sub(base),
            client_next: v.client_next_seq().unwrap_or(ledger.origin.rcv_seq),
            window: v.last_window(),
            tsecr: v.last_tsecr(),
            idle: crate::idle_for(&v, Instant::now()),
        })
    }

    fn choose(&self, _flow: FlowId, ledger: &Ledger, exclude: &BTreeSet<String>) -> Option<String> {
        let coord = self.shared.geo.locate(*ledger.origin.remote.ip());
        let object = ledger.responses.back().and_then(|r| r.body.as_ref()).map(|b| b.object.path.as_str());
        // Called by the conductor, under its lock: it excludes draining participants itself.
        let candidates: Vec<_> =
            self.shared.candidates_given(object, |_| false).into_iter().filter(|c| !exclude.contains(&c.name)).collect();
        select::choose(&self.shared.policy, coord, &candidates)
    }
}

impl Shared {
    /// Time on the conductor's clock.
    pub fn clock(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Runs `f` on the conductor with the main's environment, then carries out its actions.
    pub fn conduct<T>(self: &Arc<Self>, f: impl FnOnce(&mut Conductor, &MainEnv<'_>, Duration) -> T) -> T {
        let (out, actions) = {
            let mut c = self.conductor.lock().unwrap_or_else(|p| p.into_inner());
            let env = MainEnv { shared: self };
            let out = f(&mut c, &env, self.clock());
            (out, c.drain_actions())
        };
        if !actions.is_empty() {
            self.mark_dirty();
        }
        for action in actions {
            self.apply(action);
        }
        out
    }

    fn apply(self: &Arc<Self>, action: Action) {
        match action {
            Action::Prepare { participant, flow, objects } => {
                debug!(flow, %participant, objects = objects.len(), "asking to prepare");
                self.registry.expect_prepared(&participant, flow);
                for o in &objects {
                    self.registry.holds(&participant, &o.path);
                }
                if let Err(e) = self.registry.send(&participant, Message::Prepare { flow_id: flow, objects }) {
                    warn!(flow, %participant, error = %e, "could not ask to prepare");
                    self.conduct(|c, _, _| c.prepare_failed(&participant, flow));
                }
            }
            Action::Release { participant, flow } => {
                info!(flow, %participant, "asking for the flow back");
                if let Err(e) = self.registry.send(&participant, Message::Release { flow_id: flow }) {
                    warn!(flow, %participant, error = %e, "could not ask for the flow");
                }
            }
            Action::Forward { flow, participant } => {
                let Some(key) = self.flows.key_of(flow) else { return };
                let Some(addr) = self.registry.addr_of(&participant) else {
                    warn!(flow, %participant, "no address for the new owner");
                    return;
                };
                if let Err(e) = self.dataplane.set_state(&key, FlowTarget::Forward(addr)) {
                    warn!(flow, error = %e, "could not repoint the flow");
                }
            }
            Action::Freeze { flow } => {
                let Some(key) = self.flows.key_of(flow) else { return };
                if let Err(e) = self.dataplane.set_state(&key, FlowTarget::Frozen) {
                    warn!(flow, error = %e, "could not freeze the orphaned flow");
                }
            }
            Action::Handoff { participant, handoff } => {
                info!(flow = handoff.flow_id, %participant, offset = handoff.snd_offset, "handing the flow over");
                if let Some(o) = &handoff.object {
                    self.registry.holds(&participant, &o.path);
                }
                if let Err(e) = self.registry.send(&participant, Message::Handoff(handoff.clone())) {
                    warn!(flow = handoff.flow_id, %participant, error = %e, "handoff not sent");
                    let me = self.clone();
                    me.conduct(|c, env, now| c.restore_failed(&participant, handoff.flow_id, Some(handoff.clone()), now, env));
                }
            }
            Action::ServeLocally { handoff } => {
                self.metrics.local_serves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let me = self.clone();
                let flow = handoff.flow_id;
                tokio::spawn(async move { me.serve_locally(handoff).await }.instrument(info_span!("flow", flow)));
            }
            Action::Forget { flow, reason } => {
                info!(flow, reason, "flow over");
                self.flows.closed(flow, Instant::now());
            }
        }
    }

    /// No participant can take the connection: restore it here and finish it from the origin.
    async fn serve_locally(self: Arc<Self>, h: Handoff) {
        let flow_id = h.flow_id;
        let Some(key) = self.flows.key_of(flow_id) else { return };
        let mut pending = Vec::with_capacity(h.pending.len());
        for r in &h.pending {
            let file = match &r.body {
                None => None,
                Some(b) => {
                    let found = match object_path(&format!("/{}", b.object.path)) {
                        Ok(p) => self.origin.resolve(&p).await.ok().flatten(),
                        Err(_) => None,
                    };
                    match found {
                        Some(obj) if obj.meta.sha256 == b.object.sha256 => Some(obj.file),
                        _ => {
                            warn!(path = %b.object.path, "the origin no longer has the object; dropping the flow");
                            self.conduct(|c, _, _| c.remove(flow_id));
                            return;
                        }
                    }
                }
            };
            pending.push(PendingBody { response: r.clone(), file });
        }
        // The socket first, then the data-plane entry goes: from then on the kernel has a
        // socket for every segment of the flow, so it never answers one with a reset.
        let fd = match restore(&h.tcp, Resume::Quiet) {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "could not restore the flow locally");
                self.conduct(|c, _, _| c.remove(flow_id));
                return;
            }
        };
        if let Err(e) = self.dataplane.remove(&key) {
            warn!(error = %e, "could not take the flow out of the data plane");
        }
        let std_stream = std::net::TcpStream::from(fd);
        let stream = std_stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(std_stream));
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "restored socket unusable");
                self.conduct(|c, _, _| c.remove(flow_id));
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        info!(offset = h.snd_offset, "serving the flow here");
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut report = |_| {};
        let origin = self.origin.clone();
        let ended = Session::new(&mut stream, &origin, &self.serve, h.snd_offset, h.tcp.rcv_seq, h.request, stop_rx, &mut report)
            .resume(pending)
            .await;
        match ended {
            Ok(Ending::Finished(s)) => info!(requests = s.requests, bytes = s.body_bytes, "locally served flow done"),
            Ok(Ending::Stopped { .. }) => {}
            Err(e) => info!(error = %e, "locally served flow ended"),
        }
        self.conduct(|c, _, _| c.remove(flow_id));
        self.flows.forget(flow_id);
    }
}

/// Advances the conductor's clock until the process ends.
pub async fn run_clock(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.conduct(|c, env, now| c.tick(now, env));
    }
}

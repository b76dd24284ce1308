//! The main's Prometheus metrics: handoffs, flows by phase, moves and recoveries, participants,
//! origin egress, the package list, and the data plane's per-reason packet counters. Rendered
//! fresh on every scrape from the counters the other modules keep; nothing here counts on its own.

use std::sync::atomic::Ordering;

use baton_io::metrics::{Exposition, Kind};
use baton_shared::moves::Phase;

use crate::state::Shared;

/// The whole metrics page.
pub fn render(shared: &Shared) -> String {
    let mut e = Exposition::new();
    let m = &shared.metrics;
    let counter = |e: &mut Exposition, name: &str, help: &str, v: u64| {
        e.single(name, Kind::Counter, help, v as f64);
    };
    counter(&mut e, "baton_handoffs_total", "Connections handed to a participant.", m.handoffs.load(Ordering::Relaxed));
    counter(&mut e, "baton_handoff_failures_total", "Handoffs that failed and were served by the main.", m.handoff_failures.load(Ordering::Relaxed));
    counter(
        &mut e,
        "baton_handoffs_unconfirmed_total",
        "Handoffs whose participant never reported the restore.",
        m.handoffs_unconfirmed.load(Ordering::Relaxed),
    );
    counter(&mut e, "baton_local_serves_total", "Connections (or flows) the main served itself.", m.local_serves.load(Ordering::Relaxed));

    {
        let c = shared.conductor.lock().unwrap_or_else(|p| p.into_inner());
        let counts = c.counts();
        counter(&mut e, "baton_moves_started_total", "Moves between participants started (operator, drain).", counts.moves_started);
        counter(&mut e, "baton_moves_done_total", "Moves and recoveries completed.", counts.moves_done);
        counter(&mut e, "baton_moves_abandoned_total", "Moves abandoned (the owner kept the flow).", counts.moves_abandoned);
        counter(&mut e, "baton_recoveries_total", "Flows rebuilt after their participant died.", counts.recoveries);
        counter(&mut e, "baton_flows_lost_total", "Flows that could not be saved.", counts.lost);
        let mut phases = [("active", 0u64), ("preparing", 0), ("releasing", 0), ("restoring", 0), ("orphaned", 0), ("local", 0)];
        for (_, f) in c.flows() {
            let i = match f.phase {
                Phase::Active => 0,
                Phase::Preparing { .. } => 1,
                Phase::Releasing { .. } => 2,
                Phase::Restoring { .. } => 3,
                Phase::Orphaned { .. } => 4,
                Phase::Local => 5,
            };
            phases[i].1 += 1;
        }
        e.family("baton_flows", Kind::Gauge, "Handed-off flows by phase.");
        for (phase, n) in phases {
            e.sample("baton_flows", &[("phase", phase)], n as f64);
        }
        e.family("baton_participant_up", Kind::Gauge, "1 when the participant is connected.");
        let list = shared.registry.list();
        for p in &list {
            e.sample("baton_participant_up", &[("participant", &p.name)], if p.connected { 1.0 } else { 0.0 });
        }
        e.family("baton_participant_draining", Kind::Gauge, "1 when the participant is being drained.");
        for p in &list {
            e.sample("baton_participant_draining", &[("participant", &p.name)], if c.is_draining(&p.name) { 1.0 } else { 0.0 });
        }
        e.family("baton_participant_flows", Kind::Gauge, "Flows each participant reports serving.");
        for p in &list {
            e.sample("baton_participant_flows", &[("participant", &p.name)], f64::from(p.active_flows));
        }
    }

    let states = shared.candidates(None);
    e.family("baton_participant_healthy", Kind::Gauge, "1 when the participant may get new flows (connected, probes pass, not draining).");
    for c in &states {
        e.sample("baton_participant_healthy", &[("participant", &c.name)], if c.health == baton_shared::select::Health::Healthy { 1.0 } else { 0.0 });
    }
    let load = shared.registry.list();
    e.family("baton_participant_send_bytes_per_second", Kind::Gauge, "What each participant reports sending, per second.");
    for p in &load {
        e.sample("baton_participant_send_bytes_per_second", &[("participant", &p.name)], p.load.bytes_per_sec as f64);
    }
    e.family("baton_participant_load_average", Kind::Gauge, "Each participant's one-minute load average.");
    for p in &load {
        e.sample("baton_participant_load_average", &[("participant", &p.name)], f64::from(p.load.load_avg_milli) / 1000.0);
    }
    let tallies = [
        ("baton_selections_total", "New flows by the participant selection chose (none: the main served).", "participant", &m.selections),
        ("baton_probes_total", "Health probes through the VIP path, by result.", "result", &m.probes),
        ("baton_control_refused_total", "Control connections and messages refused, by reason.", "reason", &m.control_refused),
        ("baton_mirror_answers_total", "Mirror discovery requests the VIP answered itself, by kind (head, metalink).", "kind", &m.mirror_answers),
    ];
    for (name, help, label, tally) in tallies {
        e.family(name, Kind::Counter, help);
        for (value, n) in tally.snapshot() {
            e.sample(name, &[(label, &value)], n as f64);
        }
    }
    counter(&mut e, "baton_health_changes_total", "Participants becoming healthy or unhealthy.", m.health_changes.load(Ordering::Relaxed));
    counter(&mut e, "baton_admin_requests_total", "Admin API requests carried out.", m.admin_requests.load(Ordering::Relaxed));
    counter(&mut e, "baton_admin_refused_total", "Admin HTTP requests refused for want of a valid token.", m.admin_refused.load(Ordering::Relaxed));
    counter(
        &mut e,
        "baton_origin_sent_bytes_total",
        "Body bytes of the object responses the origin listener sent (counted as each starts).",
        m.origin_sent_bytes.load(Ordering::Relaxed),
    );
    shared.packages.metrics(&mut e);

    if let Ok(counters) = shared.dataplane.counters() {
        e.family("baton_dataplane_packets_total", Kind::Counter, "Packets the main's eBPF program handled, by outcome.");
        for (c, n) in counters {
            e.sample("baton_dataplane_packets_total", &[("reason", c.name())], n as f64);
        }
    }
    e.finish()
}

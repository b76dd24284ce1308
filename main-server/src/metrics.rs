//! The main's Prometheus metrics: handoffs, flows by phase, moves and recoveries, participants,
//! send timeouts, origin egress, the package list, the data plane's per-reason packet counters, and the
//! handoff's step timings. Rendered fresh on every scrape from the counters the other modules
//! keep; apart from [`HANDOFF_STEPS`] (which the VIP listener fills), nothing here counts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_io::histogram::{render_family, Histogram};
use baton_io::metrics::{Exposition, Kind};
use baton_shared::moves::Phase;

use crate::state::Shared;

/// Name of the step-timing histogram family (the participant exports its own steps under the
/// same name).
pub const HANDOFF_STEP_FAMILY: &str = "baton_handoff_step_seconds";

/// How long each step of the handoffs that completed took, on the main.
///
/// A process-wide `static` rather than a field of [`crate::state::Metrics`]: the VIP listener is
/// the only writer, every step is an observation of a few relaxed atomic adds, and the
/// histograms then need no plumbing through the state the data plane is built with.
#[derive(Debug)]
pub struct HandoffSteps {
    /// Accept (or the previous mirror answer) until the request head was complete.
    pub head_read: Histogram,
    /// Choosing the participant (geolocation and ranking).
    pub select: Histogram,
    /// Freeze through the TCP_REPAIR dump (and the drain of bytes that raced the freeze).
    pub dump: Histogram,
    /// Handoff sent until the participant's Restored answer arrived.
    pub control: Histogram,
    /// Head read through the Restored answer: the whole handoff as the main sees it.
    pub total: Histogram,
}

impl HandoffSteps {
    const fn new() -> Self {
        Self { head_read: Histogram::new(), select: Histogram::new(), dump: Histogram::new(), control: Histogram::new(), total: Histogram::new() }
    }

    /// Records one completed handoff.
    pub fn observe(&self, head_read: Duration, select: Duration, dump: Duration, control: Duration, total: Duration) {
        self.head_read.observe(head_read);
        self.select.observe(select);
        self.dump.observe(dump);
        self.control.observe(control);
        self.total.observe(total);
    }

    /// Appends the family to a rendered page.
    pub fn render(&self, out: &mut String) {
        render_family(
            out,
            HANDOFF_STEP_FAMILY,
            "Duration of each step of the handoffs the main completed (head_read, select, dump, control, total).",
            &[
                (&[("step", "head_read")], &self.head_read),
                (&[("step", "select")], &self.select),
                (&[("step", "dump")], &self.dump),
                (&[("step", "control")], &self.control),
                (&[("step", "total")], &self.total),
            ],
        );
    }
}

/// The main's handoff step timings (see [`HandoffSteps`]).
pub static HANDOFF_STEPS: HandoffSteps = HandoffSteps::new();

/// The whole metrics page.
pub fn render(shared: &Shared) -> String {
    let mut e = Exposition::new();
    let m = &shared.metrics;
    let counter = |e: &mut Exposition, name: &str, help: &str, v: u64| {
        e.single(name, Kind::Counter, help, v as f64);
    };
    counter(&mut e, "baton_handoffs_total", "Connections handed to a participant.", m.handoffs.load(Ordering::Relaxed));
    counter(&mut e, "baton_handoff_failures_total", "Handoffs that failed and were served by the main.", m.handoff_failures.load(Ordering::Relaxed));
    counter(&mut e, "baton_flow_table_full_total", "Handoffs refused because the data plane's flow table was full; the main served them.", m.flow_table_full.load(Ordering::Relaxed));
    counter(
        &mut e,
        "baton_handoffs_unconfirmed_total",
        "Handoffs whose participant never reported the restore.",
        m.handoffs_unconfirmed.load(Ordering::Relaxed),
    );
    counter(&mut e, "baton_local_serves_total", "Connections (or flows) the main served itself.", m.local_serves.load(Ordering::Relaxed));
    counter(
        &mut e,
        "baton_send_timeouts_total",
        "Client connections closed because a response write made no progress for the send timeout (the client stopped reading).",
        baton_io::http::SEND_TIMEOUTS.load(Ordering::Relaxed),
    );

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
    let mut page = e.finish();
    HANDOFF_STEPS.render(&mut page);
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_family_has_one_series_per_step() {
        let steps = HandoffSteps::new();
        let us = Duration::from_micros;
        steps.observe(us(300), us(20), us(40), us(700), us(1_100));
        let mut out = String::new();
        steps.render(&mut out);
        let lines: Vec<&str> = out.lines().collect();
        // HELP, TYPE, then 13 finite buckets + Inf + sum + count per step.
        assert_eq!(lines.len(), 2 + 5 * 16);
        assert_eq!(lines[1], "# TYPE baton_handoff_step_seconds histogram");
        let summary: Vec<&str> = lines.iter().copied().filter(|l| l.contains("_sum") || l.contains("_count")).collect();
        assert_eq!(
            summary,
            [
                "baton_handoff_step_seconds_sum{step=\"head_read\"} 0.0003",
                "baton_handoff_step_seconds_count{step=\"head_read\"} 1",
                "baton_handoff_step_seconds_sum{step=\"select\"} 0.00002",
                "baton_handoff_step_seconds_count{step=\"select\"} 1",
                "baton_handoff_step_seconds_sum{step=\"dump\"} 0.00004",
                "baton_handoff_step_seconds_count{step=\"dump\"} 1",
                "baton_handoff_step_seconds_sum{step=\"control\"} 0.0007",
                "baton_handoff_step_seconds_count{step=\"control\"} 1",
                "baton_handoff_step_seconds_sum{step=\"total\"} 0.0011",
                "baton_handoff_step_seconds_count{step=\"total\"} 1",
            ]
        );
        assert!(out.contains("baton_handoff_step_seconds_bucket{step=\"select\",le=\"0.000025\"} 1\n"));
        assert!(out.contains("baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.000025\"} 0\n"));
        assert!(out.contains("baton_handoff_step_seconds_bucket{step=\"dump\",le=\"0.00005\"} 1\n"));
    }
}

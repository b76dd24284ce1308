//! The participant's Prometheus metrics: connections restored, served, refused and given
//! back, closed for a send timeout, objects prepared, body bytes, bytes filled into the cache, its data plane's
//! per-reason packet counters (the egress guard's among them), and with the peer cache on the
//! member's `baton_peer_*` families, and the handoff step timings
//! (`baton_handoff_step_seconds{step="restore"|"first_byte"}`).

use std::sync::atomic::Ordering;

use baton_ebpf::ParticipantDataplane;
use baton_io::histogram::render_family;
use baton_io::metrics::{Exposition, Kind};

use crate::agent::{Agent, AgentStats};

/// The whole metrics page.
pub fn render(agent: &Agent, dataplane: &ParticipantDataplane) -> String {
    let mut e = Exposition::new();
    let s = &agent.stats;
    let name = agent.identity.name.as_str();
    let labels = [("participant", name)];
    let mut counter = |metric: &str, help: &str, v: u64| {
        e.family(metric, Kind::Counter, help).sample(metric, &labels, v as f64);
    };
    counter("baton_participant_restored_total", "Connections restored here (handoffs and moves).", s.restored.load(Ordering::Relaxed));
    counter("baton_participant_refused_total", "Handoffs refused (object or restore failed).", s.refused.load(Ordering::Relaxed));
    counter("baton_participant_released_total", "Connections given back for a move.", s.released.load(Ordering::Relaxed));
    counter("baton_participant_finished_total", "Connections served to their end.", s.finished.load(Ordering::Relaxed));
    counter("baton_participant_body_bytes_total", "Response body bytes of finished connections.", s.body_bytes.load(Ordering::Relaxed));
    counter(
        "baton_send_timeouts_total",
        "Client connections closed because a response write made no progress for the send timeout (the client stopped reading).",
        baton_io::http::SEND_TIMEOUTS.load(Ordering::Relaxed),
    );
    counter("baton_participant_prepared_total", "Prepare requests fulfilled (objects cached).", s.prepared.load(Ordering::Relaxed));
    counter("baton_participant_prepare_failed_total", "Prepare requests that failed.", s.prepare_failed.load(Ordering::Relaxed));
    counter(
        "baton_participant_cache_filled_bytes_total",
        "Bytes put into the cache by fills (from peers or the origin store).",
        agent.cache.filled_bytes.load(Ordering::Relaxed),
    );
    e.family("baton_participant_active_flows", Kind::Gauge, "Connections being served now.")
        .sample("baton_participant_active_flows", &labels, f64::from(agent.serving()));
    if let Ok(counters) = dataplane.counters() {
        e.family("baton_participant_dataplane_packets_total", Kind::Counter, "Packets the participant's eBPF programs handled, by outcome.");
        for (c, n) in counters {
            e.sample("baton_participant_dataplane_packets_total", &[("participant", name), ("reason", c.name())], n as f64);
        }
    }
    if let Some(member) = agent.cache.peers() {
        member.metrics(&mut e);
    }
    let mut page = e.finish();
    render_steps(&mut page, name, s);
    page
}

/// Name of the step-timing histogram family, shared with the main's steps.
pub const HANDOFF_STEP_FAMILY: &str = "baton_handoff_step_seconds";

/// The participant's handoff steps (`restore`, `first_byte`) as a histogram family.
fn render_steps(out: &mut String, participant: &str, s: &AgentStats) {
    render_family(
        out,
        HANDOFF_STEP_FAMILY,
        "Duration of the participant's handoff steps for new connections, from the Handoff message: restored and answered (restore), first response byte written (first_byte).",
        &[
            (&[("participant", participant), ("step", "restore")], &s.restore_step),
            (&[("participant", participant), ("step", "first_byte")], &s.first_byte_step),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn steps_render_per_participant() {
        let s = AgentStats::default();
        s.restore_step.observe(Duration::from_micros(60));
        s.first_byte_step.observe(Duration::from_micros(90));
        s.first_byte_step.observe(Duration::from_micros(30));
        let mut out = String::new();
        render_steps(&mut out, "p-fra", &s);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2 + 2 * 16);
        assert_eq!(lines[1], "# TYPE baton_handoff_step_seconds histogram");
        assert_eq!(lines[2], "baton_handoff_step_seconds_bucket{participant=\"p-fra\",step=\"restore\",le=\"0.00001\"} 0");
        assert_eq!(lines[5], "baton_handoff_step_seconds_bucket{participant=\"p-fra\",step=\"restore\",le=\"0.0001\"} 1");
        assert_eq!(lines[16], "baton_handoff_step_seconds_sum{participant=\"p-fra\",step=\"restore\"} 0.00006");
        assert_eq!(lines[17], "baton_handoff_step_seconds_count{participant=\"p-fra\",step=\"restore\"} 1");
        assert_eq!(lines[20], "baton_handoff_step_seconds_bucket{participant=\"p-fra\",step=\"first_byte\",le=\"0.00005\"} 1");
        assert_eq!(lines[21], "baton_handoff_step_seconds_bucket{participant=\"p-fra\",step=\"first_byte\",le=\"0.0001\"} 2");
        assert_eq!(lines[32], "baton_handoff_step_seconds_sum{participant=\"p-fra\",step=\"first_byte\"} 0.00012");
        assert_eq!(lines[33], "baton_handoff_step_seconds_count{participant=\"p-fra\",step=\"first_byte\"} 2");
    }
}

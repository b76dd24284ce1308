//! The participant's Prometheus metrics: connections restored, served, refused and given
//! back, objects prepared, body bytes, bytes filled into the cache, its data plane's
//! per-reason packet counters (the egress guard's among them), and with the peer cache on the
//! member's `baton_peer_*` families.

use std::sync::atomic::Ordering;

use baton_ebpf::ParticipantDataplane;
use baton_io::metrics::{Exposition, Kind};

use crate::agent::Agent;

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
    e.finish()
}

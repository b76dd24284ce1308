//! The peer cache between participants, end to end: two participants close to each other (in
//! different subnets, so they find each other by unicast polls, not multicast), each a peer of
//! the other. The first download through the VIP fills the first participant's cache from the
//! main's origin store; the second, by a client near the other participant, fills that one's
//! cache from the first participant instead of the origin. Every download's SHA-256 is checked
//! here, independently of the participants' own verification.
//!
//! Own lab name (`tppeer`) and /21, so it runs in parallel with the rest of the suite.

use std::collections::BTreeMap;
use std::path::PathBuf;

use baton_tests::{curl_download, require_root, scrape_metrics, Cluster, ClusterOptions};

const OBJECT: &str = "peer/obj.bin";
const OBJECT_BYTES: usize = 32 << 20;
/// Bound on each download (they take about a second).
const DOWNLOAD_SECONDS: &str = "60";
const MAIN_METRICS_PORT: u16 = 9470;
const PARTICIPANT_METRICS_PORT: u16 = 9471;

/// The main in Amsterdam; p-a in Frankfurt and p-b in Mainz, 30 km apart, each with a client
/// next to it. Fast links: the test is about where bytes come from, not how fast.
fn topology() -> String {
    let node = |name: &str, role: &str, city: &str, cc: &str, lat: f64, lon: f64| {
        format!("  - name: {name}\n    role: {role}\n    location: {{ city: {city}, country: {cc}, lat: {lat}, lon: {lon} }}\n    rate: 1gbit\n")
    };
    [
        "name: tppeer\nblock: 198.18.200.0/21\nvip: 203.0.113.10\nnodes:\n".to_owned(),
        node("main", "main", "Amsterdam", "NL", 52.37, 4.90),
        node("p-a", "participant", "Frankfurt", "DE", 50.11, 8.68),
        node("p-b", "participant", "Mainz", "DE", 50.00, 8.27),
        node("c-a", "client", "Offenbach", "DE", 50.10, 8.76),
        node("c-b", "client", "Wiesbaden", "DE", 50.08, 8.24),
    ]
    .concat()
}

/// A file removed when the test ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn metric(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or_else(|| panic!("no {series} in {m:?}"))
}

#[test]
fn the_second_participant_fills_from_the_first_not_the_origin() {
    if !require_root() {
        return;
    }
    // Two participants this close differ by far less in distance than in "already holds the
    // object", so the main would send the second client to the first participant too: the
    // object term is off here, so each client goes to its own participant. No standby copies
    // and no health probes either (both would fill caches before the clients ask).
    let main_cfg = TempFile(std::env::temp_dir().join(format!("baton-tppeer-main-{}.yaml", std::process::id())));
    std::fs::write(&main_cfg.0, "selection:\n  weights:\n    object: 0\n").expect("main config");
    let mut opts = ClusterOptions::new("tppeer", "198.18.200.0/21");
    opts.topology_yaml = Some(topology());
    opts.participants = false;
    opts.main_args = vec![
        "--config".into(),
        main_cfg.0.display().to_string(),
        "--no-standby".into(),
        "--probe-interval-ms".into(),
        "600000".into(),
    ];
    let mut c = Cluster::start(&opts).expect("cluster");
    let sha = c.write_object(OBJECT, OBJECT_BYTES, 21).expect("object");

    for (me, other) in [("p-a", "p-b"), ("p-b", "p-a")] {
        let peer = c.addr(other).expect("peer address");
        let file = c.lab.state_dir().join(format!("{me}.yaml"));
        std::fs::write(&file, format!("peer_cache:\n  enabled: true\n  peers: [{peer}]\n")).expect("participant config");
        c.start_participant(me, &["--config", &file.display().to_string()]).expect("participant");
    }
    c.wait_registered(2).expect("registered");

    let peer = "baton_peer_received_bytes_total{source=\"peer\"}";
    let origin = "baton_peer_received_bytes_total{source=\"origin\"}";
    let size = OBJECT_BYTES as f64;
    let before = scrape_metrics(&c, "p-b", PARTICIPANT_METRICS_PORT);
    assert_eq!((metric(&before, peer), metric(&before, origin)), (0.0, 0.0), "nothing received before the downloads");

    // 1. Near p-a: p-a has nobody to ask and fills from the origin.
    let dl = curl_download(&c, "c-a", &c.vip_url(OBJECT), &["--max-time", DOWNLOAD_SECONDS]).expect("curl c-a");
    assert_eq!(dl.exit, 0, "c-a: {}", dl.stderr);
    assert_eq!(dl.bytes, OBJECT_BYTES as u64, "c-a: size");
    assert_eq!(dl.sha256, sha, "c-a: digest");
    assert_eq!(dl.served_by(), Some("p-a"), "c-a: served by its nearest participant");
    let a = scrape_metrics(&c, "p-a", PARTICIPANT_METRICS_PORT);
    assert_eq!(metric(&a, origin), size, "p-a filled from the origin");
    assert_eq!(metric(&a, peer), 0.0);

    // 2. Near p-b: p-b fills from p-a, and asks the origin for nothing.
    let dl = curl_download(&c, "c-b", &c.vip_url(OBJECT), &["--max-time", DOWNLOAD_SECONDS]).expect("curl c-b");
    assert_eq!(dl.exit, 0, "c-b: {}", dl.stderr);
    assert_eq!(dl.bytes, OBJECT_BYTES as u64, "c-b: size");
    assert_eq!(dl.sha256, sha, "c-b: digest");
    assert_eq!(dl.served_by(), Some("p-b"), "c-b: served by its nearest participant");
    let b = scrape_metrics(&c, "p-b", PARTICIPANT_METRICS_PORT);
    assert!(metric(&b, peer) >= size, "p-b received {} bytes from peers, less than the object", metric(&b, peer));
    assert_eq!(metric(&b, origin), 0.0, "p-b received bytes from the origin");
    assert_eq!(metric(&b, "baton_peer_lookups_total{outcome=\"origin\"}"), 0.0);
    assert_eq!(metric(&b, "baton_participant_cache_filled_bytes_total{participant=\"p-b\"}"), size);
    let a = scrape_metrics(&c, "p-a", PARTICIPANT_METRICS_PORT);
    assert!(metric(&a, "baton_peer_served_bytes_total") >= size, "p-a served the object to p-b: {a:?}");
    assert_eq!(metric(&a, origin), size, "p-a did not go back to the origin");

    // The main's origin store sent about one object in all (when the main counts it).
    let m = scrape_metrics(&c, "main", MAIN_METRICS_PORT);
    match m.get("baton_origin_sent_bytes_total") {
        Some(&sent) => assert!((size..1.5 * size).contains(&sent), "the origin sent {sent} bytes for one {size}-byte object"),
        None => eprintln!("NOTE: the main exports no baton_origin_sent_bytes_total; checked the participants' counters only"),
    }
}

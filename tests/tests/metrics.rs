//! `/metrics` on the main and the participants: valid Prometheus text, and counters that move
//! as traffic goes through.

use std::collections::BTreeMap;

use baton_tests::{curl_download, parse_metrics as parse, require_root, scrape_metrics as scrape, Cluster, ClusterOptions};

#[test]
fn metrics_parse_and_count_the_traffic() {
    if !require_root() {
        return;
    }
    // Health probes are handed off too; none run here, so every count below is the clients'.
    let mut opts = ClusterOptions::new("tmetric", "198.18.104.0/21");
    opts.main_args = vec!["--probe-interval-ms".into(), "600000".into()];
    let c = Cluster::start(&opts).expect("cluster");
    let sha = c.write_object("m.bin", 1 << 20, 9).expect("object");
    let before = scrape(&c, "main", 9470);
    assert_eq!(before.get("baton_handoffs_total"), Some(&0.0));
    assert_eq!(before.get("baton_participant_up{participant=\"p-fra\"}"), Some(&1.0));
    let p_before = scrape(&c, "p-fra", 9471);
    assert_eq!(p_before.get("baton_participant_restored_total{participant=\"p-fra\"}"), Some(&0.0));

    for _ in 0..2 {
        let d = curl_download(&c, "c-fra", &c.vip_url("m.bin"), &[]).expect("download");
        assert_eq!(d.sha256, sha);
    }
    let after = scrape(&c, "main", 9470);
    assert_eq!(after.get("baton_handoffs_total"), Some(&2.0));
    let forwarded = |m: &BTreeMap<String, f64>| m.get("baton_dataplane_packets_total{reason=\"forward_ok\"}").copied().unwrap_or(0.0);
    assert!(forwarded(&after) > forwarded(&before), "the data plane forwarded the clients' segments: {after:?}");
    // The participant reports its close right after the download; give the report a moment.
    let mut p_after = scrape(&c, "p-fra", 9471);
    for _ in 0..50 {
        if p_after.get("baton_participant_finished_total{participant=\"p-fra\"}") == Some(&2.0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        p_after = scrape(&c, "p-fra", 9471);
    }
    assert_eq!(p_after.get("baton_participant_restored_total{participant=\"p-fra\"}"), Some(&2.0));
    assert_eq!(p_after.get("baton_participant_finished_total{participant=\"p-fra\"}"), Some(&2.0));
    assert_eq!(p_after.get("baton_participant_body_bytes_total{participant=\"p-fra\"}"), Some(&f64::from(2u32 << 20)));
}

#[test]
fn the_parser_refuses_malformed_pages() {
    assert!(parse("# TYPE a counter\na 1\n").is_ok());
    assert!(parse("a 1\n").is_err(), "sample without TYPE");
    assert!(parse("# TYPE a counter\na x\n").is_err(), "value");
    assert!(parse("# TYPE 1a counter\n").is_err(), "name");
    assert!(parse("# TYPE a counter\na{b=\"c\" 1\n").is_err(), "labels");
}

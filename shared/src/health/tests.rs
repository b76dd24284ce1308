//! Health tracker tests: exact thresholds, and damping checked against the half-life math.

use std::time::Duration;

use super::*;

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn assert_close(actual: f64, expected: f64) {
    assert!((actual - expected).abs() < 1e-6, "{actual} vs {expected}");
}

fn policy(fall: u32, rise: u32) -> HealthPolicy {
    HealthPolicy { fall, rise, ..HealthPolicy::default() }
}

/// Feeds probe results one second apart starting at `from` seconds; returns each transition
/// with its time in seconds.
fn feed(t: &mut Tracker, from: u64, results: &[bool]) -> Vec<(u64, Transition)> {
    let mut out = Vec::new();
    for (i, &ok) in results.iter().enumerate() {
        let at = from + i as u64;
        if let Some(tr) = t.probe(ok, s(at)) {
            out.push((at, tr));
        }
    }
    out
}

#[test]
fn a_new_participant_is_healthy() {
    let t = Tracker::new(&HealthPolicy::default(), s(5));
    assert!(t.healthy());
    assert_eq!(
        t.view(s(6)),
        HealthView {
            healthy: true,
            consecutive_ok: 0,
            consecutive_failed: 0,
            penalty: 0.0,
            suppressed: false,
            flaps: 0,
            last_change: 5000,
            reason: None,
        }
    );
}

#[test]
fn falls_after_exactly_fall_failures() {
    let mut t = Tracker::new(&policy(3, 2), s(0));
    assert_eq!(feed(&mut t, 1, &[false, false, true, false, false]), []);
    assert!(t.healthy());
    assert_eq!(t.view(s(5)).consecutive_failed, 2);
    assert_eq!(t.probe(false, s(6)), Some(Transition::BecameUnhealthy));
    assert!(!t.healthy());
    // More failures change nothing.
    assert_eq!(feed(&mut t, 7, &[false, false]), []);
    let v = t.view(s(8));
    assert_eq!((v.consecutive_failed, v.flaps, v.last_change, v.suppressed), (5, 1, 6000, false));
}

#[test]
fn rises_after_exactly_rise_successes() {
    let mut t = Tracker::new(&policy(1, 3), s(0));
    assert_eq!(t.probe(false, s(1)), Some(Transition::BecameUnhealthy));
    assert_eq!(feed(&mut t, 2, &[true, true, false, true, true]), []);
    assert!(!t.healthy());
    assert_eq!(t.view(s(6)).consecutive_ok, 2);
    assert_eq!(t.probe(true, s(7)), Some(Transition::BecameHealthy));
    assert!(t.healthy());
    assert_eq!(t.probe(true, s(8)), None);
    assert_eq!(t.view(s(8)).last_change, 7000);
}

#[test]
fn zero_thresholds_count_as_one() {
    let mut t = Tracker::new(&policy(0, 0), s(0));
    assert_eq!(t.probe(false, s(1)), Some(Transition::BecameUnhealthy));
    // rise 0 would make it healthy again at once, without a good probe.
    assert_eq!(t.tick(s(2)), None);
    assert_eq!(t.probe(true, s(3)), Some(Transition::BecameHealthy));
}

#[test]
fn penalty_decays_by_the_half_life() {
    let mut t = Tracker::new(&policy(1, 1), s(0));
    assert_eq!(t.probe(false, s(1)), Some(Transition::BecameUnhealthy));
    assert_close(t.penalty(s(1)), 1000.0);
    assert_close(t.penalty(s(11)), 793.700526); // 1000 × 2^(−1/3)
    assert_close(t.penalty(s(16)), 707.106781); // 1000 × 2^(−1/2)
    assert_close(t.penalty(s(31)), 500.0);
    assert_close(t.penalty(s(91)), 125.0);
    assert_close(t.view(s(61)).penalty, 250.0);
    // Decaying in steps gives the same as in one go.
    for at in [5, 12, 20, 31] {
        t.tick(s(at));
    }
    assert_close(t.penalty(s(61)), 250.0);
    // Time that goes backwards decays nothing.
    assert_close(t.penalty(s(2)), 500.0);
    assert_eq!(t.tick(s(2)), None);
    assert_close(t.penalty(s(31)), 500.0);
}

#[test]
fn unsuppressed_participant_rises_despite_a_penalty() {
    // Two falls: 1000 × 2^(−4/30) + 1000 ≈ 1912, above reuse but below suppress.
    let mut t = Tracker::new(&HealthPolicy::default(), s(0));
    let falls = feed(&mut t, 0, &[false, false, true, true, false, false]);
    assert_eq!(
        falls,
        [(1, Transition::BecameUnhealthy), (3, Transition::BecameHealthy), (5, Transition::BecameUnhealthy)]
    );
    assert_close(t.penalty(s(5)), 1911.722489);
    assert!(!t.suppressed());
    assert_eq!(feed(&mut t, 6, &[true, true]), [(7, Transition::BecameHealthy)]);
}

/// Default damping (penalty 1000, suppress 2500, reuse 800, half-life 30 s), fall 2, rise 2,
/// probes every second: fail, fail, ok, ok three times.
fn flapping() -> Tracker {
    let mut t = Tracker::new(&HealthPolicy::default(), s(0));
    let pattern = [false, false, true, true, false, false, true, true, false, false];
    assert_eq!(
        feed(&mut t, 0, &pattern),
        [
            (1, Transition::BecameUnhealthy),
            (3, Transition::BecameHealthy),
            (5, Transition::BecameUnhealthy),
            (7, Transition::BecameHealthy),
            (9, Transition::BecameUnhealthy),
        ]
    );
    t
}

#[test]
fn flapping_participant_is_suppressed_until_the_penalty_decays() {
    let mut t = flapping();
    // Falls at 1, 5 and 9 s: 1000 × (2^(−8/30) + 2^(−4/30) + 1) ≥ 2500.
    let at_suppression = 1000.0 * ((-8.0f64 / 30.0).exp2() + (-4.0f64 / 30.0).exp2() + 1.0);
    assert_close(at_suppression, 2742.960385);
    assert_close(t.penalty(s(9)), at_suppression);
    assert!(t.suppressed());
    let v = t.view(s(9));
    assert_eq!((v.flaps, v.suppressed, v.healthy, v.last_change), (3, true, false, 9000));

    // Below reuse after 30 × log2(2742.96 / 800) = 53.33 s, at 62.33 s.
    let hold = 30.0 * (at_suppression / 800.0).log2();
    assert_close(hold, 53.329856);
    let release = t.release_at().expect("held");
    assert!((release.as_secs_f64() - (9.0 + hold)).abs() < 1e-3, "{release:?}");

    // Good probes every second do not help until then.
    let goods = [true; 53];
    assert_eq!(feed(&mut t, 10, &goods), []);
    assert!(t.suppressed() && !t.healthy());
    assert_close(t.penalty(s(62)), 806.120334);
    assert_eq!(t.probe(true, s(63)), Some(Transition::BecameHealthy));
    assert_close(t.penalty(s(63)), 787.708520);
    assert!(!t.suppressed());
    assert_eq!(t.view(s(63)).last_change, 63_000);
}

#[test]
fn tick_releases_at_release_at() {
    let mut t = flapping();
    assert_eq!(feed(&mut t, 10, &[true, true]), []);
    let release = t.release_at().expect("held");
    assert_eq!(t.tick(release - ms(1)), None);
    assert!(t.suppressed());
    assert_eq!(t.tick(release), Some(Transition::BecameHealthy));
    assert!(t.penalty(release) < 800.0);
    assert_eq!(t.release_at(), None);
}

#[test]
fn tick_needs_rise_good_probes() {
    let mut t = flapping();
    // One good probe during the hold: released at 62.33 s but not healthy until the second.
    assert_eq!(t.probe(true, s(10)), None);
    assert_eq!(t.tick(s(70)), None);
    assert!(!t.suppressed() && !t.healthy());
    assert_eq!(t.probe(true, s(71)), Some(Transition::BecameHealthy));
}

#[test]
fn max_hold_releases_before_the_penalty_decays() {
    let damping = Damping { max_hold_ms: 10_000, ..Damping::default() };
    let mut t = Tracker::new(&HealthPolicy { damping, ..HealthPolicy::default() }, s(0));
    let pattern = [false, false, true, true, false, false, true, true, false, false];
    assert_eq!(feed(&mut t, 0, &pattern).len(), 5);
    assert!(t.suppressed());
    assert_eq!(t.release_at(), Some(s(19)));
    assert_eq!(feed(&mut t, 10, &[true; 9]), []);
    assert!(t.suppressed());
    // At 19 s the penalty would still be 2742.96 × 2^(−1/3) = 2177.09; it is cut to reuse.
    assert_close(t.penalty(s(19)), 2177.089100);
    assert_eq!(t.tick(s(19)), Some(Transition::BecameHealthy));
    assert_close(t.penalty(s(19)), 800.0);
    assert_close(t.penalty(s(49)), 400.0);

    // Not forgiven entirely: two more falls suppress it again (three did the first time).
    let pattern = [false, false, true, true, false, false];
    assert_eq!(
        feed(&mut t, 20, &pattern),
        [(21, Transition::BecameUnhealthy), (23, Transition::BecameHealthy), (25, Transition::BecameUnhealthy)]
    );
    assert_close(t.penalty(s(25)), 2608.162939); // (800 × 2^(−2/30) + 1000) × 2^(−4/30) + 1000
    assert!(t.suppressed());
    assert_eq!(t.view(s(25)).flaps, 5);
}

#[test]
fn max_hold_is_measured_even_without_inputs_in_between() {
    // One fall of 10 000 suppresses at once; the next input comes long after the hold.
    let damping = Damping { penalty: 10_000.0, max_hold_ms: 60_000, ..Damping::default() };
    let mut t = Tracker::new(&HealthPolicy { fall: 1, rise: 1, damping, ..HealthPolicy::default() }, s(0));
    assert_eq!(t.probe(false, s(1)), Some(Transition::BecameUnhealthy));
    assert!(t.suppressed());
    assert_eq!(t.release_at(), Some(s(61)));
    // Cut to 800 at 61 s, then 30 s of decay.
    assert_eq!(t.probe(true, s(91)), Some(Transition::BecameHealthy));
    assert_close(t.penalty(s(91)), 400.0);
}

#[test]
fn failure_reasons_are_kept() {
    let mut t = Tracker::new(&policy(2, 1), s(0));
    assert_eq!(t.probe_result(Err("connect: connection refused".to_string()), s(1)), None);
    assert_eq!(t.probe_result(Err("timed out after 2000 ms".to_string()), s(2)), Some(Transition::BecameUnhealthy));
    assert_eq!(t.probe_result(Ok(()), s(3)), Some(Transition::BecameHealthy));
    let v = t.view(s(3));
    assert_eq!(v.reason.as_deref(), Some("timed out after 2000 ms"));
    // A failure without a reason replaces the old one.
    assert_eq!(t.probe(false, s(4)), None);
    assert_eq!(t.view(s(4)).reason, None);
}

#[test]
fn view_serializes() {
    let mut t = Tracker::new(&policy(1, 1), ms(1500));
    t.probe_result(Err("status 503".to_string()), ms(2500));
    assert_eq!(
        serde_json::to_string(&t.view(ms(32_500))).expect("serialize"),
        r#"{"healthy":false,"consecutive_ok":0,"consecutive_failed":1,"penalty":500.0,"suppressed":false,"flaps":1,"last_change":2500,"reason":"status 503"}"#
    );
    assert_eq!(
        serde_json::to_string(&[Transition::BecameUnhealthy, Transition::BecameHealthy]).expect("serialize"),
        r#"["became_unhealthy","became_healthy"]"#
    );
}

#[test]
fn policy_check() {
    assert_eq!(HealthPolicy::default().check(), Ok(()));
    assert_eq!(policy(0, 2).check(), Err(HealthError::ZeroThreshold { name: "fall" }));
    assert_eq!(policy(2, 0).check(), Err(HealthError::ZeroThreshold { name: "rise" }));
    let with = |damping| HealthPolicy { damping, ..HealthPolicy::default() }.check();
    assert_eq!(
        with(Damping { reuse: 2500.0, ..Damping::default() }),
        Err(HealthError::ReuseNotBelowSuppress { reuse: 2500.0, suppress: 2500.0 })
    );
    assert_eq!(
        with(Damping { penalty: -1.0, ..Damping::default() }),
        Err(HealthError::Penalty { name: "penalty", value: -1.0 })
    );
    assert_eq!(with(Damping { half_life_ms: 0, ..Damping::default() }), Err(HealthError::ZeroHalfLife));
    assert_eq!(HealthError::ZeroThreshold { name: "rise" }.to_string(), "rise must be at least 1 probe");
}

#[test]
fn zero_half_life_forgets_at_once() {
    let damping = Damping { half_life_ms: 0, penalty: 5000.0, ..Damping::default() };
    let mut t = Tracker::new(&HealthPolicy { fall: 1, rise: 1, damping, ..HealthPolicy::default() }, s(0));
    assert_eq!(t.probe(false, s(1)), Some(Transition::BecameUnhealthy));
    assert!(t.suppressed());
    assert_close(t.penalty(s(1)), 5000.0);
    assert_eq!(t.penalty(ms(1001)), 0.0);
    assert_eq!(t.probe(true, ms(1001)), Some(Transition::BecameHealthy));
}

#[test]
fn health_policy_serde_shape_is_unchanged() {
    let p: HealthPolicy = serde_json::from_str(
        r#"{"interval_ms":500,"timeout_ms":900,"fall":3,"rise":4,"probe_path":"/health",
            "damping":{"penalty":1.0,"suppress":3.0,"reuse":2.0,"half_life_ms":10,"max_hold_ms":20}}"#,
    )
    .expect("valid");
    assert_eq!(
        p,
        HealthPolicy {
            interval_ms: 500,
            timeout_ms: 900,
            fall: 3,
            rise: 4,
            probe_path: Some("/health".to_string()),
            damping: Damping { penalty: 1.0, suppress: 3.0, reuse: 2.0, half_life_ms: 10, max_hold_ms: 20 },
        }
    );
    assert_eq!(serde_json::from_str::<HealthPolicy>("{}").expect("defaults"), HealthPolicy::default());
}

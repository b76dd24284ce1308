//! Selection tests: real city coordinates, exact scores and exact reasons.

use super::*;

fn at(lat: f64, lon: f64) -> Coord {
    Coord::new(lat, lon).expect("test coordinate in range")
}

fn paris() -> Coord {
    at(48.8566, 2.3522)
}
fn frankfurt() -> Coord {
    at(50.1109, 8.6821)
}
fn london() -> Coord {
    at(51.5074, -0.1278)
}
fn new_york() -> Coord {
    at(40.7128, -74.0060)
}
fn ashburn() -> Coord {
    at(39.0438, -77.4874)
}
fn singapore() -> Coord {
    at(1.3521, 103.8198)
}
fn sydney() -> Coord {
    at(-33.8688, 151.2093)
}

/// Distances from Paris by the same haversine formula, computed independently (IEEE doubles in
/// another language); the last digits may differ by rounding in sin/cos/asin.
const PARIS_FRANKFURT_KM: f64 = 477.89231386239106;
const PARIS_LONDON_KM: f64 = 343.55653488088313;
const PARIS_NEW_YORK_KM: f64 = 5837.248966566374;

fn cand(name: &str, coord: Coord, health: Health, active: u32, cap: u32) -> Candidate {
    Candidate { name: name.to_string(), coord, health, active_flows: active, capacity: cap, has_object: false }
}

fn healthy(name: &str, coord: Coord, active: u32, cap: u32) -> Candidate {
    cand(name, coord, Health::Healthy, active, cap)
}

fn names(r: &Ranking) -> Vec<&str> {
    r.ranked.iter().map(|r| r.name.as_str()).collect()
}

fn exclusions(r: &Ranking) -> Vec<Option<Exclusion>> {
    r.ranked.iter().map(|r| r.excluded).collect()
}

fn assert_close(actual: f64, expected: f64) {
    assert!((actual - expected).abs() < 1e-9, "{actual} vs {expected}");
}

fn filter(radius_km: f64) -> Policy {
    Policy { mode: GeoMode::Filter, filter_radius_km: radius_km, ..Policy::default() }
}

#[test]
fn nearest_eligible_first_and_exclusions_last() {
    let cs = [
        healthy("sg", singapore(), 0, 10),
        cand("fra", frankfurt(), Health::Down, 0, 10),
        healthy("lon", london(), 10, 10),
        healthy("nyc", new_york(), 3, 10),
        healthy("syd", sydney(), 0, 0),
    ];
    // Frankfurt and London are nearer to Paris but excluded; the excluded ones follow by score
    // (Frankfurt is idle, London's load of 1 costs it 0.5).
    let r = rank(&Policy::default(), Some(paris()), &cs);
    assert_eq!(names(&r), ["nyc", "sg", "fra", "lon", "syd"]);
    assert_eq!(exclusions(&r), [None, None, Some(Exclusion::Down), Some(Exclusion::Full), Some(Exclusion::Full)]);
    assert_eq!(r.ranked[0].load, 0.3);
    assert_eq!(r.ranked[4].load, 1.0);
    assert!(r.ranked.iter().all(|r| r.distance_km.is_some()));
    assert_eq!(r.winner.as_deref(), Some("nyc"));
    assert_eq!(
        r.reason,
        "nyc wins: fra is down; next best by score, over sg (score 0.642 vs 0.736): \
         4892 km nearer (distance 0.29 vs 0.54 × 1.0); despite more loaded (load 0.30 vs 0.00 × 0.5)"
    );
    assert_eq!(choose(&Policy::default(), Some(paris()), &cs).as_deref(), Some("nyc"));
    assert_eq!(eligible(&Policy::default(), Some(paris()), &cs), ["nyc", "sg"]);
}

#[test]
fn exclusion_precedence() {
    let cs = [
        cand("a-down", frankfurt(), Health::Down, 5, 5),
        cand("b-unhealthy", frankfurt(), Health::Unhealthy, 5, 5),
        cand("c-draining", frankfurt(), Health::Draining, 5, 5),
        healthy("d-full", frankfurt(), 5, 5),
        healthy("e-over", frankfurt(), 7, 5),
        healthy("f-zero", frankfurt(), 0, 0),
    ];
    let r = rank(&Policy::default(), None, &cs);
    // Equal scores among the full ones (the load term stops at 1); the raw load breaks the tie.
    assert_eq!(names(&r), ["a-down", "b-unhealthy", "c-draining", "d-full", "f-zero", "e-over"]);
    assert_eq!(
        exclusions(&r),
        [
            Some(Exclusion::Down),
            Some(Exclusion::Unhealthy),
            Some(Exclusion::Draining),
            Some(Exclusion::Full),
            Some(Exclusion::Full),
            Some(Exclusion::Full),
        ]
    );
    assert_eq!((r.ranked[5].load, r.ranked[5].terms.load, r.ranked[5].free_slots), (1.4, 1.0, 0));
    assert_eq!(r.winner, None);
    assert_eq!(r.reason, "no participant can serve: 1 down, 1 unhealthy, 1 draining, 3 full (the main serves itself)");
}

#[test]
fn ties_by_load_then_name() {
    let cs = [healthy("b", frankfurt(), 1, 10), healthy("c", frankfurt(), 5, 10), healthy("a", frankfurt(), 1, 10)];
    let r = rank(&Policy::default(), Some(london()), &cs);
    assert_eq!(names(&r), ["a", "b", "c"]);
    assert_eq!(r.winner.as_deref(), Some("a"));
    assert!(r.reason.starts_with("a wins over b (equal score "), "{}", r.reason);
    assert!(r.reason.ends_with("): tie broken by name"), "{}", r.reason);
}

#[test]
fn equal_scores_break_ties_by_distance_then_load() {
    // In filter mode distance does not count, so equal loads give equal scores.
    let cs = [healthy("fra", frankfurt(), 1, 10), healthy("lon", london(), 1, 10)];
    let r = rank(&filter(1000.0), Some(paris()), &cs);
    assert_eq!(names(&r), ["lon", "fra"]);
    assert_eq!(r.reason, "lon wins over fra (equal score 0.250): tie broken by distance, 134 km nearer");

    // Same place, same score: capacity weight 1 makes 0.5 load on 2 slots equal to 0 load on 1.
    let policy =
        Policy { weights: Weights { distance: 0.0, load: 1.0, capacity: 1.0, object: 0.0 }, ..Policy::default() };
    let cs = [healthy("big", london(), 1, 2), healthy("small", london(), 0, 2), healthy("one", london(), 0, 1)];
    let r = rank(&policy, Some(paris()), &cs);
    // small: load 0, capacity 0; big: load 0.5, capacity 0.5 (1 of 2 free); one: 0 + 0.5.
    assert_eq!(names(&r), ["small", "one", "big"]);
    assert_eq!(r.ranked[1].score, 0.5);
    assert_eq!(r.ranked[2].score, 1.0);
    let cs = [healthy("big", london(), 1, 4), healthy("one", london(), 0, 2)];
    // big: load 0.25 + capacity 0 = 0.25; one: load 0 + capacity 1 − 2/3.
    let r = rank(&policy, Some(paris()), &cs);
    assert_eq!(names(&r), ["big", "one"]);
    assert_eq!(
        r.reason,
        "big wins over one (score 0.250 vs 0.333): more free slots, 3 vs 2 (capacity 0.00 vs 0.33 × 1.0); \
         despite more loaded (load 0.25 vs 0.00 × 1.0)"
    );
}

#[test]
fn unknown_client_location_ranks_by_load() {
    let cs = [healthy("near", london(), 8, 10), healthy("far", sydney(), 1, 10), healthy("mid", new_york(), 1, 2)];
    let r = rank(&Policy::default(), None, &cs);
    assert_eq!(names(&r), ["far", "mid", "near"]);
    assert!(r.ranked.iter().all(|r| r.distance_km.is_none() && r.terms.distance == 0.0));
    assert_eq!(
        r.reason,
        "far wins over mid (score 0.250 vs 0.450): less loaded (load 0.10 vs 0.50 × 0.5); \
         client location unknown, distance not counted"
    );
    assert_eq!(choose(&Policy::default(), None, &cs).as_deref(), Some("far"));
}

#[test]
fn unknown_client_location_filters_nothing() {
    let cs = [healthy("near", london(), 8, 10), healthy("far", sydney(), 1, 10)];
    let r = rank(&filter(0.0), None, &cs);
    assert_eq!(names(&r), ["far", "near"]);
    assert_eq!(exclusions(&r), [None, None]);
    // With the location known, a radius of 0 leaves only the nearest.
    let r = rank(&filter(0.0), Some(paris()), &cs);
    assert_eq!(names(&r), ["near", "far"]);
    assert_eq!(exclusions(&r), [None, Some(Exclusion::OutsideRadius)]);
}

#[test]
fn nobody_can_serve() {
    let r = rank(&Policy::default(), None, &[]);
    assert_eq!(r.winner, None);
    assert!(r.ranked.is_empty());
    assert_eq!(r.reason, "no participant can serve: none is registered (the main serves itself)");
    let cs = [cand("x", london(), Health::Down, 0, 1), cand("y", paris(), Health::Unhealthy, 0, 1)];
    assert_eq!(choose(&Policy::default(), Some(london()), &cs), None);
    assert!(eligible(&Policy::default(), Some(london()), &cs).is_empty());
    assert_eq!(
        rank(&Policy::default(), Some(london()), &cs).reason,
        "no participant can serve: 1 down, 1 unhealthy (the main serves itself)"
    );
}

#[test]
fn only_one_can_serve() {
    let r = rank(&Policy::default(), Some(paris()), &[healthy("lon", london(), 0, 1)]);
    assert_eq!(r.reason, "lon wins: the only participant");
    let cs = [healthy("lon", london(), 0, 1), cand("nyc", new_york(), Health::Draining, 0, 1)];
    let r = rank(&Policy::default(), Some(paris()), &cs);
    assert_eq!(r.winner.as_deref(), Some("lon"));
    assert_eq!(r.reason, "lon wins: the only participant that can serve (others: 1 draining)");
}

#[test]
fn ranking_serializes_for_explain() {
    let r = rank(&Policy::default(), None, &[cand("x", london(), Health::Down, 1, 4)]);
    assert_eq!(
        serde_json::to_string(&r).expect("serialize"),
        r#"{"ranked":[{"name":"x","distance_km":null,"load":0.25,"free_slots":3,"health":"down","has_object":false,"#
            .to_owned()
            + r#""terms":{"distance":0.0,"load":0.25,"capacity":0.0,"object":1.0},"score":0.325,"excluded":"down"}],"#
            + r#""winner":null,"reason":"no participant can serve: 1 down (the main serves itself)"}"#
    );
    let names = |v: &[Exclusion]| serde_json::to_string(v).expect("serialize");
    assert_eq!(names(&Exclusion::ALL), r#"["down","unhealthy","draining","full","outside_radius"]"#);
    assert_eq!(
        serde_json::to_string(&[Health::Healthy, Health::Unhealthy, Health::Draining, Health::Down])
            .expect("serialize"),
        r#"["healthy","unhealthy","draining","down"]"#
    );
}

/// Client in Paris; Frankfurt holds the object, London is nearest, New York is idle and biggest.
#[test]
fn worked_example_three_cities() {
    let policy = Policy {
        mode: GeoMode::Rank,
        filter_radius_km: 1000.0,
        weights: Weights { distance: 1.0, load: 0.5, capacity: 0.1, object: 0.2 },
    };
    let cs = [
        Candidate { has_object: true, ..healthy("fra", frankfurt(), 300, 1000) },
        healthy("lon", london(), 100, 400),
        healthy("nyc", new_york(), 0, 2000),
    ];
    let r = rank(&policy, Some(paris()), &cs);
    assert_eq!(names(&r), ["fra", "lon", "nyc"]);
    assert_eq!(r.winner.as_deref(), Some("fra"));

    let [fra, lon, nyc] = &r.ranked[..] else { panic!("three rows: {r:?}") };
    for (row, km) in [(fra, PARIS_FRANKFURT_KM), (lon, PARIS_LONDON_KM), (nyc, PARIS_NEW_YORK_KM)] {
        assert_close(row.distance_km.expect("client location known"), km);
        assert_close(row.terms.distance, km / (std::f64::consts::PI * crate::geo::EARTH_RADIUS_KM));
    }
    // Most free slots among the eligible: New York's 2000.
    assert_eq!([fra.free_slots, lon.free_slots, nyc.free_slots], [700, 300, 2000]);
    assert_eq!((fra.terms.load, fra.terms.capacity, fra.terms.object), (0.3, 0.65, 0.0));
    assert_eq!((lon.terms.load, lon.terms.capacity, lon.terms.object), (0.25, 0.85, 1.0));
    assert_eq!((nyc.terms.load, nyc.terms.capacity, nyc.terms.object), (0.0, 0.0, 1.0));
    assert_close(fra.terms.distance, 0.02387657164021592);
    assert_close(lon.terms.distance, 0.01716485488383432);
    assert_close(nyc.terms.distance, 0.29164204798684196);
    // 0.0239 + 0.5 × 0.3 + 0.1 × 0.65 + 0 ; 0.0172 + 0.125 + 0.085 + 0.2 ; 0.2916 + 0 + 0 + 0.2
    assert_close(fra.score, 0.23887657164021592);
    assert_close(lon.score, 0.4271648548838343);
    assert_close(nyc.score, 0.49164204798684197);
    assert_eq!(
        r.reason,
        "fra wins over lon (score 0.239 vs 0.427): holds the object (object 0.00 vs 1.00 × 0.2), \
         more free slots, 700 vs 300 (capacity 0.65 vs 0.85 × 0.1); \
         despite more loaded (load 0.30 vs 0.25 × 0.5), 134 km farther (distance 0.02 vs 0.02 × 1.0)"
    );
}

#[test]
fn load_weight_changes_the_winner() {
    let cs = [healthy("lon", london(), 300, 1000), healthy("nyc", new_york(), 0, 1000)];
    let r = rank(&Policy::default(), Some(paris()), &cs);
    assert_eq!(r.winner.as_deref(), Some("lon"));
    assert_eq!(
        r.reason,
        "lon wins over nyc (score 0.367 vs 0.492): 5494 km nearer (distance 0.02 vs 0.29 × 1.0); \
         despite more loaded (load 0.30 vs 0.00 × 0.5)"
    );

    let heavy = Policy { weights: Weights { load: 2.0, ..Weights::default() }, ..Policy::default() };
    let r = rank(&heavy, Some(paris()), &cs);
    assert_eq!(names(&r), ["nyc", "lon"]);
    assert_eq!(
        r.reason,
        "nyc wins over lon (score 0.492 vs 0.817): less loaded (load 0.00 vs 0.30 × 2.0); \
         despite 5494 km farther (distance 0.29 vs 0.02 × 1.0)"
    );
}

#[test]
fn filter_mode_less_loaded_wins_within_the_radius() {
    let cs = [
        healthy("lon", london(), 600, 1000),
        healthy("fra", frankfurt(), 100, 1000),
        healthy("nyc", new_york(), 0, 1000),
    ];
    let r = rank(&filter(1000.0), Some(paris()), &cs);
    assert_eq!(names(&r), ["fra", "lon", "nyc"]);
    assert_eq!(exclusions(&r), [None, None, Some(Exclusion::OutsideRadius)]);
    assert_eq!(eligible(&filter(1000.0), Some(paris()), &cs), ["fra", "lon"]);
    assert!(r.ranked.iter().all(|r| r.terms.distance == 0.0));
    assert_eq!(r.ranked[0].score, 0.25);
    assert_eq!(r.ranked[2].score, 0.2);
    assert_eq!(
        r.reason,
        "fra wins: nyc is outside the radius (5837 km, more than 1000 km beyond the nearest at 344 km); \
         next best by score, over lon (score 0.250 vs 0.500): less loaded (load 0.10 vs 0.60 × 0.5)"
    );

    // A radius of 100 km leaves only London (Frankfurt is 134 km farther).
    let r = rank(&filter(100.0), Some(paris()), &cs);
    assert_eq!(names(&r), ["lon", "nyc", "fra"]);
    assert_eq!(exclusions(&r), [None, Some(Exclusion::OutsideRadius), Some(Exclusion::OutsideRadius)]);
    assert_eq!(r.winner.as_deref(), Some("lon"));
    assert!(
        r.reason.starts_with("lon wins: nyc is outside the radius (5837 km, more than 100 km beyond"),
        "{}",
        r.reason
    );
}

#[test]
fn filter_radius_counts_from_the_nearest_that_can_serve() {
    // London is nearest but full: the radius counts from Frankfurt, and New York stays out.
    let cs = [
        healthy("lon", london(), 1000, 1000),
        healthy("fra", frankfurt(), 900, 1000),
        healthy("nyc", new_york(), 0, 1000),
    ];
    let r = rank(&filter(1000.0), Some(paris()), &cs);
    assert_eq!(r.winner.as_deref(), Some("fra"));
    let nyc = r.ranked.iter().find(|r| r.name == "nyc").expect("nyc ranked");
    assert_eq!(nyc.excluded, Some(Exclusion::OutsideRadius));
    let lon = r.ranked.iter().find(|r| r.name == "lon").expect("lon ranked");
    assert_eq!(lon.excluded, Some(Exclusion::Full));
    assert!(r.reason.contains("beyond the nearest at 478 km"), "{}", r.reason);

    // A NaN radius (rejected by Policy::check) counts as 0 km rather than excluding everyone.
    let r = rank(&filter(f64::NAN), Some(paris()), &cs);
    assert_eq!(r.winner.as_deref(), Some("fra"));
}

#[test]
fn full_nearest_sends_new_flows_to_the_next() {
    let cs = [healthy("p-fra", frankfurt(), 1000, 1000), healthy("p-iad", ashburn(), 10, 1000)];
    let r = rank(&Policy::default(), Some(paris()), &cs);
    assert_eq!(names(&r), ["p-iad", "p-fra"]);
    assert_eq!(exclusions(&r), [None, Some(Exclusion::Full)]);
    assert_eq!(r.reason, "p-iad wins: p-fra is full (1000/1000); next best by score");
    // One slot free and it can win again (when load does not count).
    let cs = [healthy("p-fra", frankfurt(), 999, 1000), healthy("p-iad", ashburn(), 10, 1000)];
    let no_load = Policy { weights: Weights { load: 0.0, ..Weights::default() }, ..Policy::default() };
    assert_eq!(choose(&no_load, Some(paris()), &cs).as_deref(), Some("p-fra"));
}

#[test]
fn holding_the_object_tips_a_tie() {
    let cs = [healthy("a", frankfurt(), 5, 10), Candidate { has_object: true, ..healthy("b", frankfurt(), 5, 10) }];
    let r = rank(&Policy::default(), Some(paris()), &cs);
    assert_eq!(names(&r), ["b", "a"]);
    assert_close(r.ranked[1].score - r.ranked[0].score, 0.2);
    assert!(r.reason.starts_with("b wins over a (score "), "{}", r.reason);
    assert!(r.reason.ends_with("): holds the object (object 0.00 vs 1.00 × 0.2)"), "{}", r.reason);
    // Without the object weight it is a tie again, broken by name.
    let no_object = Policy { weights: Weights { object: 0.0, ..Weights::default() }, ..Policy::default() };
    assert_eq!(choose(&no_object, Some(paris()), &cs).as_deref(), Some("a"));
}

#[test]
fn zero_capacity_is_nan_free() {
    let cs = [healthy("z", london(), 0, 0), healthy("y", paris(), 3, 0), cand("d", paris(), Health::Down, 0, 0)];
    let r = rank(&Policy::default(), Some(paris()), &cs);
    assert_eq!(r.winner, None);
    for row in &r.ranked {
        let t = row.terms;
        for v in [t.distance, t.load, t.capacity, t.object, row.score] {
            assert!(v.is_finite(), "{row:?}");
        }
        assert_eq!((row.load, row.free_slots, t.capacity), (1.0, 0, 0.0));
    }
    // Nothing eligible has free slots: the capacity term is 0, not 0/0.
    let cs = [healthy("z", london(), 0, 0), healthy("a", london(), 0, 1)];
    let capacity = Policy { weights: Weights { capacity: 1.0, ..Weights::default() }, ..Policy::default() };
    let r = rank(&capacity, Some(paris()), &cs);
    assert_eq!(r.winner.as_deref(), Some("a"));
    assert!(r.ranked.iter().all(|r| r.score.is_finite()));
}

#[test]
fn capacity_term_is_clamped_for_excluded() {
    // The draining one has more free slots than any eligible one; its term stays in 0..=1.
    let capacity = Policy { weights: Weights { capacity: 1.0, ..Weights::default() }, ..Policy::default() };
    let cs = [healthy("a", london(), 0, 10), cand("big", london(), Health::Draining, 0, 100)];
    let r = rank(&capacity, Some(paris()), &cs);
    assert_eq!(exclusions(&r), [None, Some(Exclusion::Draining)]);
    assert_eq!(r.ranked[0].terms.capacity, 0.0);
    assert_eq!(r.ranked[1].terms.capacity, 0.0);
}

#[test]
fn policy_check() {
    assert_eq!(Policy::default().check(), Ok(()));
    assert_eq!(Policy { filter_radius_km: f64::INFINITY, ..Policy::default() }.check(), Ok(()));
    assert_eq!(Policy { filter_radius_km: -1.0, ..Policy::default() }.check(), Err(SelectError::Radius { km: -1.0 }));
    assert!(matches!(
        Policy { filter_radius_km: f64::NAN, ..Policy::default() }.check(),
        Err(SelectError::Radius { km }) if km.is_nan()
    ));
    let w = |weights| Policy { weights, ..Policy::default() }.check();
    assert_eq!(
        w(Weights { load: -0.5, ..Weights::default() }),
        Err(SelectError::Weight { term: "load", weight: -0.5 })
    );
    assert_eq!(
        w(Weights { object: f64::INFINITY, ..Weights::default() }),
        Err(SelectError::Weight { term: "object", weight: f64::INFINITY })
    );
    assert_eq!(
        SelectError::Weight { term: "load", weight: -0.5 }.to_string(),
        "weight of load is -0.5; weights must be finite and not negative"
    );
}

#[test]
fn policy_serde_shape_is_unchanged() {
    let p: Policy = serde_json::from_str(
        r#"{"mode":"filter","filter_radius_km":500.0,"weights":{"distance":1.0,"load":2.0,"capacity":0.5,"object":0.0}}"#,
    )
    .expect("valid policy");
    assert_eq!(
        p,
        Policy {
            mode: GeoMode::Filter,
            filter_radius_km: 500.0,
            weights: Weights { distance: 1.0, load: 2.0, capacity: 0.5, object: 0.0 }
        }
    );
    assert_eq!(serde_json::from_str::<Policy>("{}").expect("defaults"), Policy::default());
    assert!(serde_json::from_str::<Policy>(r#"{"radius":1}"#).is_err());
}

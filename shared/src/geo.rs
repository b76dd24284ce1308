//! Great-circle geometry and the participant selection policy: which participant should serve a
//! client, and why the others were not chosen.
//!
//! Pure functions over values the caller passes in. This module must never look up an address in
//! a GeoIP database, read health state or keep state of its own; the main server gathers those
//! facts and asks here for a decision.

use std::cmp::Ordering;

/// Mean Earth radius in kilometres (IUGG R1), the usual choice for a spherical model.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Errors from building geographic values.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum GeoError {
    /// Latitude or longitude was NaN or infinite.
    #[error("coordinate is not a finite number")]
    NotFinite,
    /// Latitude outside -90..=90 degrees.
    #[error("latitude {lat} is outside -90..=90")]
    Latitude { lat: f64 },
    /// Longitude outside -180..=180 degrees.
    #[error("longitude {lon} is outside -180..=180")]
    Longitude { lon: f64 },
}

/// A point on Earth in decimal degrees (WGS 84). Always finite and in range: build it with
/// [`Coord::new`]; deserializing checks the same rules.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "UncheckedCoord")]
pub struct Coord {
    pub lat: f64,
    pub lon: f64,
}

/// Serde's view of a [`Coord`] before the range check.
#[derive(serde::Deserialize)]
struct UncheckedCoord {
    lat: f64,
    lon: f64,
}

impl TryFrom<UncheckedCoord> for Coord {
    type Error = GeoError;
    fn try_from(c: UncheckedCoord) -> Result<Coord, GeoError> {
        Coord::new(c.lat, c.lon)
    }
}

impl Coord {
    /// Checks that both values are finite and within range.
    pub fn new(lat: f64, lon: f64) -> Result<Coord, GeoError> {
        if !lat.is_finite() || !lon.is_finite() {
            return Err(GeoError::NotFinite);
        }
        if !(-90.0..=90.0).contains(&lat) {
            return Err(GeoError::Latitude { lat });
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(GeoError::Longitude { lon });
        }
        Ok(Coord { lat, lon })
    }
}

/// Great-circle distance by the haversine formula on a sphere of [`EARTH_RADIUS_KM`]. Good to
/// about 0.5% against the ellipsoid, which is far finer than GeoIP accuracy.
pub fn distance_km(a: Coord, b: Coord) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    // Rounding can push h a hair above 1 for antipodes; asin would then return NaN.
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// What the selection knows about one participant.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub coord: Coord,
    /// Healthy and registered.
    pub up: bool,
    pub active_flows: u32,
    /// Most flows it accepts; 0 means it accepts none.
    pub capacity: u32,
}

/// Why a candidate cannot serve. When several apply, the first in declaration order is given.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Exclusion {
    /// Not up.
    Down,
    /// `active_flows >= capacity`.
    Full,
}

/// One line of the ranking, as `batonctl explain` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ranked {
    pub name: String,
    /// Distance from the client, when the client's location is known.
    pub distance_km: Option<f64>,
    /// `active_flows / capacity`; 1.0 when capacity is 0.
    pub load: f64,
    /// `None` for candidates that can serve.
    pub excluded: Option<Exclusion>,
}

fn load(c: &Candidate) -> f64 {
    if c.capacity == 0 {
        1.0
    } else {
        f64::from(c.active_flows) / f64::from(c.capacity)
    }
}

fn exclusion(c: &Candidate) -> Option<Exclusion> {
    if !c.up {
        Some(Exclusion::Down)
    } else if c.active_flows >= c.capacity {
        Some(Exclusion::Full)
    } else {
        None
    }
}

/// Orders every candidate: eligible ones first, nearest first (by load when the client's
/// location is unknown), ties broken by load and then by name; excluded ones follow in the same
/// order, each with its reason.
pub fn rank(client: Option<Coord>, candidates: &[Candidate]) -> Vec<Ranked> {
    let mut out: Vec<Ranked> = candidates
        .iter()
        .map(|c| Ranked {
            name: c.name.clone(),
            distance_km: client.map(|at| distance_km(at, c.coord)),
            load: load(c),
            excluded: exclusion(c),
        })
        .collect();
    out.sort_by(|a, b| {
        a.excluded
            .is_some()
            .cmp(&b.excluded.is_some())
            .then_with(|| match (a.distance_km, b.distance_km) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                _ => Ordering::Equal,
            })
            .then_with(|| a.load.total_cmp(&b.load))
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// The participant that should serve, or `None` when none can (the main then serves itself).
pub fn choose(client: Option<Coord>, candidates: &[Candidate]) -> Option<String> {
    rank(client, candidates)
        .into_iter()
        .find(|r| r.excluded.is_none())
        .map(|r| r.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: f64, lon: f64) -> Coord {
        Coord::new(lat, lon).expect("test coordinate in range")
    }

    fn frankfurt() -> Coord {
        at(50.1109, 8.6821)
    }
    fn singapore() -> Coord {
        at(1.3521, 103.8198)
    }
    fn new_york() -> Coord {
        at(40.7128, -74.0060)
    }
    fn london() -> Coord {
        at(51.5074, -0.1278)
    }
    fn sydney() -> Coord {
        at(-33.8688, 151.2093)
    }

    fn within(actual: f64, expected: f64, fraction: f64) -> bool {
        (actual - expected).abs() <= expected * fraction
    }

    #[test]
    fn coord_range_checks() {
        assert_eq!(
            Coord::new(90.0, 180.0),
            Ok(Coord {
                lat: 90.0,
                lon: 180.0
            })
        );
        assert_eq!(
            Coord::new(-90.0, -180.0),
            Ok(Coord {
                lat: -90.0,
                lon: -180.0
            })
        );
        assert_eq!(Coord::new(90.5, 0.0), Err(GeoError::Latitude { lat: 90.5 }));
        assert_eq!(
            Coord::new(0.0, -180.1),
            Err(GeoError::Longitude { lon: -180.1 })
        );
        assert_eq!(Coord::new(f64::NAN, 0.0), Err(GeoError::NotFinite));
        assert_eq!(Coord::new(0.0, f64::INFINITY), Err(GeoError::NotFinite));
    }

    #[test]
    fn coord_serde_checks_range() {
        let c: Coord = serde_json::from_str(r#"{"lat":1.5,"lon":-2.25}"#).expect("valid");
        assert_eq!(c, at(1.5, -2.25));
        assert_eq!(
            serde_json::to_string(&c).expect("serialize"),
            r#"{"lat":1.5,"lon":-2.25}"#
        );
        assert!(serde_json::from_str::<Coord>(r#"{"lat":91.0,"lon":0.0}"#).is_err());
    }

    #[test]
    fn known_city_pairs() {
        let d = distance_km(frankfurt(), singapore());
        assert!(within(d, 10_260.0, 0.005), "frankfurt-singapore {d}");
        let d = distance_km(london(), new_york());
        assert!(within(d, 5_570.0, 0.005), "london-new york {d}");
        let d = distance_km(sydney(), london());
        assert!(within(d, 16_990.0, 0.005), "sydney-london {d}");
    }

    #[test]
    fn symmetric_and_zero() {
        assert_eq!(distance_km(frankfurt(), frankfurt()), 0.0);
        assert_eq!(
            distance_km(frankfurt(), singapore()),
            distance_km(singapore(), frankfurt())
        );
    }

    #[test]
    fn antipodes_are_half_the_circumference() {
        let half = std::f64::consts::PI * EARTH_RADIUS_KM;
        for (a, b) in [
            (at(0.0, 0.0), at(0.0, 180.0)),
            (at(90.0, 0.0), at(-90.0, 0.0)),
            (at(40.0, -3.7), at(-40.0, 176.3)),
        ] {
            let d = distance_km(a, b);
            assert!(d.is_finite());
            // Within a metre: decimal degrees are not exact in binary.
            assert!((d - half).abs() < 1e-3, "{d} vs {half}");
        }
    }

    fn cand(name: &str, coord: Coord, up: bool, active: u32, cap: u32) -> Candidate {
        Candidate {
            name: name.to_string(),
            coord,
            up,
            active_flows: active,
            capacity: cap,
        }
    }

    fn names(r: &[Ranked]) -> Vec<&str> {
        r.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn nearest_eligible_first_and_exclusions_last() {
        let cs = [
            cand("sg", singapore(), true, 0, 10),
            cand("fra", frankfurt(), false, 0, 10),
            cand("lon", london(), true, 10, 10),
            cand("nyc", new_york(), true, 3, 10),
            cand("syd", sydney(), true, 0, 0),
        ];
        // A client in Paris: Frankfurt and London are nearer but excluded.
        let client = Some(at(48.8566, 2.3522));
        let r = rank(client, &cs);
        assert_eq!(names(&r), ["nyc", "sg", "lon", "fra", "syd"]);
        assert_eq!(r[0].excluded, None);
        assert_eq!(r[1].excluded, None);
        assert_eq!(r[2].excluded, Some(Exclusion::Full));
        assert_eq!(r[3].excluded, Some(Exclusion::Down));
        assert_eq!(r[4].excluded, Some(Exclusion::Full));
        assert_eq!(r[0].load, 0.3);
        assert_eq!(r[4].load, 1.0);
        assert!(r.iter().all(|r| r.distance_km.is_some()));
        assert_eq!(choose(client, &cs).as_deref(), Some("nyc"));
    }

    #[test]
    fn down_wins_over_full() {
        let r = rank(None, &[cand("a", frankfurt(), false, 5, 5)]);
        assert_eq!(r[0].excluded, Some(Exclusion::Down));
    }

    #[test]
    fn ties_by_load_then_name() {
        let cs = [
            cand("b", frankfurt(), true, 1, 10),
            cand("c", frankfurt(), true, 5, 10),
            cand("a", frankfurt(), true, 1, 10),
        ];
        let r = rank(Some(london()), &cs);
        assert_eq!(names(&r), ["a", "b", "c"]);
        assert_eq!(choose(Some(london()), &cs).as_deref(), Some("a"));
    }

    #[test]
    fn unknown_client_location_ranks_by_load() {
        let cs = [
            cand("near", london(), true, 8, 10),
            cand("far", sydney(), true, 1, 10),
            cand("mid", new_york(), true, 1, 2),
        ];
        let r = rank(None, &cs);
        assert_eq!(names(&r), ["far", "mid", "near"]);
        assert!(r.iter().all(|r| r.distance_km.is_none()));
        assert_eq!(choose(None, &cs).as_deref(), Some("far"));
    }

    #[test]
    fn nobody_can_serve() {
        assert_eq!(choose(None, &[]), None);
        assert_eq!(
            choose(Some(london()), &[cand("x", london(), false, 0, 1)]),
            None
        );
    }

    #[test]
    fn ranked_serializes_for_explain() {
        let r = rank(None, &[cand("x", london(), false, 1, 4)]);
        assert_eq!(
            serde_json::to_string(&r).expect("serialize"),
            r#"[{"name":"x","distance_km":null,"load":0.25,"excluded":"Down"}]"#
        );
    }
}

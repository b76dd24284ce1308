//! Great-circle geometry: checked coordinates and the distance between two points on Earth.
//! Which participant should serve a client is decided in [`crate::select`], which uses these
//! distances as one of its inputs.
//!
//! Pure functions over values the caller passes in. This module must never look up an address in
//! a GeoIP database, read health or load, or keep state of its own.

/// Mean Earth radius in kilometres (IUGG R1), the usual choice for a spherical model.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// The longest great-circle distance on the sphere (between antipodes), π × [`EARTH_RADIUS_KM`]:
/// no two points are farther apart, so dividing by it maps any distance into 0..=1.
pub const HALF_CIRCUMFERENCE_KM: f64 = std::f64::consts::PI * EARTH_RADIUS_KM;

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
        assert_eq!(Coord::new(90.0, 180.0), Ok(Coord { lat: 90.0, lon: 180.0 }));
        assert_eq!(Coord::new(-90.0, -180.0), Ok(Coord { lat: -90.0, lon: -180.0 }));
        assert_eq!(Coord::new(90.5, 0.0), Err(GeoError::Latitude { lat: 90.5 }));
        assert_eq!(Coord::new(0.0, -180.1), Err(GeoError::Longitude { lon: -180.1 }));
        assert_eq!(Coord::new(f64::NAN, 0.0), Err(GeoError::NotFinite));
        assert_eq!(Coord::new(0.0, f64::INFINITY), Err(GeoError::NotFinite));
    }

    #[test]
    fn coord_serde_checks_range() {
        let c: Coord = serde_json::from_str(r#"{"lat":1.5,"lon":-2.25}"#).expect("valid");
        assert_eq!(c, at(1.5, -2.25));
        assert_eq!(serde_json::to_string(&c).expect("serialize"), r#"{"lat":1.5,"lon":-2.25}"#);
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
        assert_eq!(distance_km(frankfurt(), singapore()), distance_km(singapore(), frankfurt()));
    }

    #[test]
    fn antipodes_are_half_the_circumference() {
        let half = HALF_CIRCUMFERENCE_KM;
        for (a, b) in
            [(at(0.0, 0.0), at(0.0, 180.0)), (at(90.0, 0.0), at(-90.0, 0.0)), (at(40.0, -3.7), at(-40.0, 176.3))]
        {
            let d = distance_km(a, b);
            assert!(d.is_finite());
            // Within a metre: decimal degrees are not exact in binary.
            assert!((d - half).abs() < 1e-3, "{d} vs {half}");
        }
    }
}

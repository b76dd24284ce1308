//! The lab's own GeoIP database: every node subnet mapped to the node's city.
//!
//! The members of a LAN share one subnet; it maps to the city of the first member (in link
//! order) that has a location.
//!
//! The file uses the GeoIP2/GeoLite2 City schema (`city.names.en`, `country.iso_code`,
//! `location.latitude`, ...) and database type `GeoLite2-City`, so Baton's main server reads it
//! exactly as it would read a real MaxMind database. Only lab subnets (198.18.0.0/15) are in
//! it; it never describes real addresses.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use ipnet::IpNet;
use mmdb_writer::Writer;
use serde::Serialize;

use crate::lab::LabError;
use crate::topology::Node;

/// Database type written to the metadata, as in MaxMind's free city database.
pub const DATABASE_TYPE: &str = "GeoLite2-City";

/// Accuracy radius written for every entry, in kilometres: a lab subnet stands for one city,
/// and city-level entries in GeoLite2 commonly carry a radius of this order.
pub const ACCURACY_RADIUS_KM: u16 = 20;

/// English names for the countries lab topologies commonly use; other codes are written as
/// their own name.
const COUNTRY_NAMES: &[(&str, &str)] = &[
    ("AU", "Australia"),
    ("BR", "Brazil"),
    ("CA", "Canada"),
    ("CH", "Switzerland"),
    ("DE", "Germany"),
    ("ES", "Spain"),
    ("FR", "France"),
    ("GB", "United Kingdom"),
    ("IE", "Ireland"),
    ("IN", "India"),
    ("IT", "Italy"),
    ("JP", "Japan"),
    ("KR", "South Korea"),
    ("MY", "Malaysia"),
    ("NL", "Netherlands"),
    ("PL", "Poland"),
    ("SE", "Sweden"),
    ("SG", "Singapore"),
    ("US", "United States"),
    ("ZA", "South Africa"),
];

/// English name of an ISO 3166-1 alpha-2 country code.
pub fn country_name(code: &str) -> &str {
    COUNTRY_NAMES
        .iter()
        .find(|(known, _)| *known == code)
        .map_or(code, |(_, name)| name)
}

#[derive(Serialize)]
struct Names<'a> {
    names: BTreeMap<&'static str, &'a str>,
}

#[derive(Serialize)]
struct Country<'a> {
    iso_code: &'a str,
    names: BTreeMap<&'static str, &'a str>,
}

#[derive(Serialize)]
struct GeoLocation {
    latitude: f64,
    longitude: f64,
    accuracy_radius: u16,
}

/// One entry in the GeoIP2 City schema.
#[derive(Serialize)]
struct CityRecord<'a> {
    city: Names<'a>,
    country: Country<'a>,
    location: GeoLocation,
}

/// The database bytes: one entry per node subnet, for every node that has a location. A
/// subnet shared by a LAN's members gets the location of the first member that has one.
pub fn database(lab_name: &str, nodes: &[Node]) -> Result<Vec<u8>, mmdb_writer::Error> {
    let description = format!("baton-lab {lab_name}: lab subnets mapped to topology cities");
    let mut writer = Writer::builder(DATABASE_TYPE)
        .description(&[("en", &description)])
        .build();
    let mut mapped = HashSet::new();
    for node in nodes {
        let Some(location) = &node.location else {
            continue;
        };
        // The writer lets a later insert of the same subnet win; the first member must.
        if !mapped.insert(node.subnet) {
            continue;
        }
        let record = CityRecord {
            city: Names {
                names: BTreeMap::from([("en", location.city.as_str())]),
            },
            country: Country {
                iso_code: &location.country,
                names: BTreeMap::from([("en", country_name(&location.country))]),
            },
            location: GeoLocation {
                latitude: location.lat,
                longitude: location.lon,
                accuracy_radius: ACCURACY_RADIUS_KM,
            },
        };
        writer.insert(IpNet::V4(node.subnet), &record)?;
    }
    writer.to_bytes()
}

/// Writes the database for `nodes` to `path`.
pub fn write(lab_name: &str, nodes: &[Node], path: &Path) -> Result<(), LabError> {
    let bytes = database(lab_name, nodes).map_err(|error| LabError::GeoIp { error })?;
    std::fs::write(path, bytes).map_err(|error| LabError::Io {
        action: "write",
        path: path.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use maxminddb::geoip2;

    use super::*;
    use crate::topology::Topology;

    #[test]
    fn every_located_node_subnet_maps_to_its_city() {
        let nodes = Topology::default_topology().resolve().expect("resolves");
        let bytes = database("baton", &nodes).expect("database builds");
        let reader = maxminddb::Reader::from_source(bytes).expect("reader opens it");
        assert_eq!(reader.metadata.database_type, DATABASE_TYPE);

        let expected = [
            (
                Ipv4Addr::new(198, 18, 0, 2),
                "Amsterdam",
                "NL",
                "Netherlands",
                52.37,
                4.90,
            ),
            (
                Ipv4Addr::new(198, 18, 1, 77),
                "Frankfurt",
                "DE",
                "Germany",
                50.11,
                8.68,
            ),
            (
                Ipv4Addr::new(198, 18, 2, 2),
                "Ashburn",
                "US",
                "United States",
                39.04,
                -77.49,
            ),
            (
                Ipv4Addr::new(198, 18, 3, 254),
                "Singapore",
                "SG",
                "Singapore",
                1.29,
                103.85,
            ),
            (
                Ipv4Addr::new(198, 18, 4, 2),
                "Mainz",
                "DE",
                "Germany",
                50.00,
                8.27,
            ),
            (
                Ipv4Addr::new(198, 18, 5, 2),
                "Washington",
                "US",
                "United States",
                38.90,
                -77.04,
            ),
            (
                Ipv4Addr::new(198, 18, 6, 1),
                "Johor Bahru",
                "MY",
                "Malaysia",
                1.49,
                103.74,
            ),
        ];
        for (addr, city_name, iso, country, lat, lon) in expected {
            let city: geoip2::City = reader
                .lookup(IpAddr::V4(addr))
                .unwrap_or_else(|error| panic!("{addr}: {error}"));
            let names = city.city.and_then(|c| c.names).unwrap_or_default();
            assert_eq!(names.get("en").copied(), Some(city_name), "{addr}");
            let found_country = city.country.expect("country");
            assert_eq!(found_country.iso_code, Some(iso), "{addr}");
            let country_names = found_country.names.unwrap_or_default();
            assert_eq!(country_names.get("en").copied(), Some(country), "{addr}");
            let location = city.location.expect("location");
            assert_eq!(location.latitude, Some(lat), "{addr}");
            assert_eq!(location.longitude, Some(lon), "{addr}");
            assert_eq!(location.accuracy_radius, Some(ACCURACY_RADIUS_KM), "{addr}");
        }
    }

    #[test]
    fn a_lan_subnet_maps_to_its_first_located_member() {
        let yaml = "\
name: t
block: 198.18.8.0/22
vip: 203.0.113.10
nodes:
  - { name: main, role: main, location: { city: Amsterdam, country: NL, lat: 52.37, lon: 4.9 } }
  - { name: a, role: client, lan: office }
  - { name: b, role: client, lan: office, location: { city: Berlin, country: DE, lat: 52.52, lon: 13.4 } }
  - { name: c, role: client, lan: office, location: { city: Paris, country: FR, lat: 48.86, lon: 2.35 } }
";
        let nodes = Topology::from_yaml(yaml)
            .expect("parses")
            .resolve()
            .expect("resolves");
        let bytes = database("t", &nodes).expect("a shared subnet is no error");
        let reader = maxminddb::Reader::from_source(bytes).expect("reader opens it");
        for (addr, expected) in [
            (Ipv4Addr::new(198, 18, 8, 2), "Amsterdam"),
            // a (no location), b and c, and any other host of the LAN's /24.
            (Ipv4Addr::new(198, 18, 9, 2), "Berlin"),
            (Ipv4Addr::new(198, 18, 9, 3), "Berlin"),
            (Ipv4Addr::new(198, 18, 9, 4), "Berlin"),
            (Ipv4Addr::new(198, 18, 9, 200), "Berlin"),
        ] {
            let city: geoip2::City = reader
                .lookup(IpAddr::V4(addr))
                .unwrap_or_else(|error| panic!("{addr}: {error}"));
            let names = city.city.and_then(|c| c.names).unwrap_or_default();
            assert_eq!(names.get("en").copied(), Some(expected), "{addr}");
        }
        // The reserved links of b and c are in no one's subnet.
        for addr in [Ipv4Addr::new(198, 18, 10, 2), Ipv4Addr::new(198, 18, 11, 2)] {
            let result: Result<geoip2::City, _> = reader.lookup(IpAddr::V4(addr));
            assert!(
                matches!(
                    result,
                    Err(maxminddb::MaxMindDBError::AddressNotFoundError(_))
                ),
                "{addr}: {result:?}"
            );
        }
    }

    #[test]
    fn addresses_outside_node_subnets_are_not_found() {
        let nodes = Topology::default_topology().resolve().expect("resolves");
        let bytes = database("baton", &nodes).expect("database builds");
        let reader = maxminddb::Reader::from_source(bytes).expect("reader opens it");
        for addr in [Ipv4Addr::new(198, 18, 7, 2), Ipv4Addr::new(203, 0, 113, 10)] {
            let result: Result<geoip2::City, _> = reader.lookup(IpAddr::V4(addr));
            assert!(
                matches!(
                    result,
                    Err(maxminddb::MaxMindDBError::AddressNotFoundError(_))
                ),
                "{addr}: {result:?}"
            );
        }
    }
}

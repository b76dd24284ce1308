//! Mirror publication: which participants the main advertises as mirrors of an object to one
//! client, in which order, and the RFC 6249 `Link` fields and RFC 5854 Metalink document that
//! carry them.
//!
//! The order is selection's ([`crate::select::eligible`]): the first mirror is the participant
//! the client would be handed to, and participants that may not take new flows are not
//! advertised at all. Pure functions over what the caller passes in; this module never looks up
//! a country, reads a file or decides health.

use std::net::SocketAddrV4;

use crate::digest::Sha256;
use crate::geo::Coord;
use crate::http::{percent_encode_path, ObjectPath};
use crate::link::{country_code, describedby_metalink_value, duplicate_value, Duplicate};
use crate::metalink::{MetaFile, MetaUrl, Metalink, Pieces};
use crate::select::{self, Candidate, Policy};

/// Piece length of the Metalink documents the main publishes. 4 MiB pieces let a client check a
/// range from a mirror before it has the whole file, while a 16 GiB file still needs only 4096
/// hashes (about 340 KiB of XML).
pub const METALINK_PIECE_BYTES: u64 = 4 << 20;

/// Most mirrors advertised in one answer. A client downloads from a handful at once; 16 `Link`
/// fields stay near 1.5 KiB, far inside any client's head limit.
pub const MAX_ADVERTISED_MIRRORS: usize = 16;

/// What a Metalink document's path adds to its object's path (`iso/a.iso.meta4` describes
/// `iso/a.iso`).
pub const METALINK_SUFFIX: &str = ".meta4";

/// A participant that runs a mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorHost {
    /// Its registered name, as selection knows it.
    pub name: String,
    /// Where its mirror listens.
    pub addr: SocketAddrV4,
    /// ISO 3166-1 alpha-2 country of `addr` (any case), when known.
    pub country: Option<String>,
}

/// One advertised mirror of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The object's URL on the mirror.
    pub url: String,
    /// 1 for the best; consecutive.
    pub rank: u32,
    /// Lower-case country code, when known.
    pub country: Option<String>,
}

/// `http://host[:port]/path` for the object `path` on the server at `addr`; the port is left
/// out when it is 80 (RFC 3986 §6.2.3) and the path is percent-encoded.
pub fn object_url(addr: SocketAddrV4, path: &ObjectPath) -> String {
    let path = percent_encode_path(path.as_str());
    match addr.port() {
        80 => format!("http://{}/{path}", addr.ip()),
        port => format!("http://{}:{port}/{path}", addr.ip()),
    }
}

/// The URL of the Metalink document of `path` at `vip`.
pub fn metalink_url(vip: SocketAddrV4, path: &ObjectPath) -> String {
    object_url(vip, path) + METALINK_SUFFIX
}

/// The object a Metalink document path names: `path` without [`METALINK_SUFFIX`]. `None` when
/// `path` does not end with it or nothing (or only a directory) is left.
pub fn described_object(path: &ObjectPath) -> Option<ObjectPath> {
    let object = path.as_str().strip_suffix(METALINK_SUFFIX)?;
    ObjectPath::from_relative(object).ok()
}

/// The mirrors to advertise to a client at `client` for `path`: every candidate selection ranks
/// as able to serve, best first, that has a mirror in `hosts`, at most
/// [`MAX_ADVERTISED_MIRRORS`], ranked 1, 2, … in that order.
pub fn advertised(
    policy: &Policy,
    client: Option<Coord>,
    candidates: &[Candidate],
    hosts: &[MirrorHost],
    path: &ObjectPath,
) -> Vec<Mirror> {
    select::eligible(policy, client, candidates)
        .iter()
        .filter_map(|name| hosts.iter().find(|h| h.name == *name))
        .take(MAX_ADVERTISED_MIRRORS)
        .zip(1u32..)
        .map(|(h, rank)| Mirror {
            url: object_url(h.addr, path),
            rank,
            country: h.country.as_deref().and_then(country_code),
        })
        .collect()
}

/// The mirrors as RFC 6249 duplicates: `pri` is the rank, `geo` the country.
pub fn duplicates(mirrors: &[Mirror]) -> Vec<Duplicate> {
    mirrors
        .iter()
        .map(|m| Duplicate {
            url: m.url.clone(),
            pri: Some(m.rank),
            geo: m.country.clone(),
        })
        .collect()
}

/// The `Link` field values of the main's answer to a HEAD of `path`: one `rel=duplicate` per
/// mirror, best first, then the `rel=describedby` of its Metalink document at `vip`.
pub fn link_values(mirrors: &[Mirror], vip: SocketAddrV4, path: &ObjectPath) -> Vec<String> {
    let mut out: Vec<String> = duplicates(mirrors).iter().map(duplicate_value).collect();
    out.push(describedby_metalink_value(&metalink_url(vip, path)));
    out
}

/// The Metalink document of the object `path`: one file named after its last segment, with its
/// size, SHA-256 and [`METALINK_PIECE_BYTES`] piece hashes (when given), the mirrors with
/// `priority` = rank and `location` = country, and the object at `vip` last (ranked after every
/// mirror).
pub fn metalink(
    path: &ObjectPath,
    size: u64,
    sha256: Sha256,
    pieces: Option<Vec<Sha256>>,
    mirrors: &[Mirror],
    vip: SocketAddrV4,
) -> Metalink {
    let mut urls: Vec<MetaUrl> = mirrors
        .iter()
        .map(|m| MetaUrl {
            url: m.url.clone(),
            priority: Some(m.rank),
            location: m.country.clone(),
        })
        .collect();
    let vip_rank = u32::try_from(mirrors.len())
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    urls.push(MetaUrl {
        url: object_url(vip, path),
        priority: Some(vip_rank),
        location: None,
    });
    let name = path.segments().last().unwrap_or(path.as_str()).to_owned();
    Metalink {
        files: vec![MetaFile {
            name,
            size: Some(size),
            sha256: Some(sha256),
            pieces: pieces.map(|sha256| Pieces {
                length: METALINK_PIECE_BYTES,
                sha256,
            }),
            urls,
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::select::Health;

    fn path(p: &str) -> ObjectPath {
        ObjectPath::from_relative(p).expect("test path")
    }

    fn at(lat: f64, lon: f64) -> Coord {
        Coord::new(lat, lon).expect("test coordinate")
    }

    fn cand(name: &str, coord: Coord, health: Health, active: u32) -> Candidate {
        Candidate {
            name: name.into(),
            coord,
            health,
            active_flows: active,
            capacity: 100,
            has_object: false,
        }
    }

    fn host(name: &str, last: u8, port: u16, country: Option<&str>) -> MirrorHost {
        MirrorHost {
            name: name.into(),
            addr: SocketAddrV4::new(Ipv4Addr::new(198, 18, last, 10), port),
            country: country.map(str::to_owned),
        }
    }

    const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);

    /// Paris client; Frankfurt, London, New York and a drained Brussels participant.
    fn scene() -> (Vec<Candidate>, Vec<MirrorHost>) {
        let candidates = vec![
            cand("nyc", at(40.7128, -74.0060), Health::Healthy, 0),
            cand("fra", at(50.1109, 8.6821), Health::Healthy, 0),
            cand("lon", at(51.5074, -0.1278), Health::Healthy, 0),
            cand("bru", at(50.8503, 4.3517), Health::Draining, 0),
            cand("ams", at(52.3676, 4.9041), Health::Healthy, 0),
        ];
        let hosts = vec![
            host("fra", 2, 80, Some("DE")),
            host("lon", 3, 8080, Some("gb")),
            host("nyc", 4, 80, None),
            host("bru", 5, 80, Some("BE")),
            // ams runs no mirror: no host entry.
        ];
        (candidates, hosts)
    }

    #[test]
    fn urls() {
        let p = path("iso/a b+c.iso");
        assert_eq!(object_url(VIP, &p), "http://203.0.113.10/iso/a%20b%2Bc.iso");
        assert_eq!(
            object_url(SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 10), 8080), &p),
            "http://198.18.2.10:8080/iso/a%20b%2Bc.iso"
        );
        assert_eq!(
            metalink_url(VIP, &p),
            "http://203.0.113.10/iso/a%20b%2Bc.iso.meta4"
        );
        assert_eq!(
            described_object(&path("iso/a.iso.meta4")),
            Some(path("iso/a.iso"))
        );
        assert_eq!(described_object(&path("iso/a.iso")), None);
        assert_eq!(described_object(&path(".meta4")), None);
        assert_eq!(described_object(&path("iso/.meta4")), None);
        assert_eq!(
            described_object(&path("a.meta4.meta4")),
            Some(path("a.meta4"))
        );
    }

    #[test]
    fn advertised_in_selection_order_without_excluded_or_mirrorless() {
        let (candidates, hosts) = scene();
        let paris = Some(at(48.8566, 2.3522));
        let p = path("iso/a.iso");
        let mirrors = advertised(&Policy::default(), paris, &candidates, &hosts, &p);
        assert_eq!(
            mirrors,
            vec![
                Mirror {
                    url: "http://198.18.3.10:8080/iso/a.iso".into(),
                    rank: 1,
                    country: Some("gb".into())
                },
                Mirror {
                    url: "http://198.18.2.10/iso/a.iso".into(),
                    rank: 2,
                    country: Some("de".into())
                },
                Mirror {
                    url: "http://198.18.4.10/iso/a.iso".into(),
                    rank: 3,
                    country: None
                },
            ]
        );
        // The first mirror is the participant selection hands this client to, when it has one.
        assert_eq!(
            select::choose(&Policy::default(), paris, &candidates).as_deref(),
            Some("lon")
        );
        // New York is nearest for a client there; nobody is advertised when nobody can serve.
        let mirrors = advertised(
            &Policy::default(),
            Some(at(40.7, -74.0)),
            &candidates,
            &hosts,
            &p,
        );
        assert_eq!(mirrors[0].url, "http://198.18.4.10/iso/a.iso");
        let down: Vec<Candidate> = candidates
            .iter()
            .map(|c| Candidate {
                health: Health::Down,
                ..c.clone()
            })
            .collect();
        assert!(advertised(&Policy::default(), paris, &down, &hosts, &p).is_empty());
    }

    #[test]
    fn at_most_the_limit() {
        let n = MAX_ADVERTISED_MIRRORS + 4;
        let candidates: Vec<Candidate> = (0..n)
            .map(|i| cand(&format!("p{i:02}"), at(0.0, i as f64), Health::Healthy, 0))
            .collect();
        let hosts: Vec<MirrorHost> = (0..n)
            .map(|i| host(&format!("p{i:02}"), i as u8, 80, None))
            .collect();
        let mirrors = advertised(
            &Policy::default(),
            Some(at(0.0, 0.0)),
            &candidates,
            &hosts,
            &path("f"),
        );
        assert_eq!(mirrors.len(), MAX_ADVERTISED_MIRRORS);
        assert_eq!(
            mirrors.last().map(|m| m.rank),
            Some(MAX_ADVERTISED_MIRRORS as u32)
        );
        assert_eq!(mirrors[0].url, "http://198.18.0.10/f");
    }

    #[test]
    fn head_links() {
        let (candidates, hosts) = scene();
        let p = path("iso/a.iso");
        let mirrors = advertised(
            &Policy::default(),
            Some(at(48.8566, 2.3522)),
            &candidates,
            &hosts,
            &p,
        );
        assert_eq!(
            link_values(&mirrors, VIP, &p),
            [
                "<http://198.18.3.10:8080/iso/a.iso>; rel=duplicate; pri=1; geo=gb",
                "<http://198.18.2.10/iso/a.iso>; rel=duplicate; pri=2; geo=de",
                "<http://198.18.4.10/iso/a.iso>; rel=duplicate; pri=3",
                "<http://203.0.113.10/iso/a.iso.meta4>; rel=describedby; type=\"application/metalink4+xml\"",
            ]
        );
        assert_eq!(
            link_values(&[], VIP, &p),
            ["<http://203.0.113.10/iso/a.iso.meta4>; rel=describedby; type=\"application/metalink4+xml\""]
        );
        // What a client reads back is the same list.
        let values = link_values(&mirrors, VIP, &p);
        let fields: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        let links = crate::link::parse_links(&fields);
        assert_eq!(links.duplicates, duplicates(&mirrors));
        assert_eq!(links.metalinks, ["http://203.0.113.10/iso/a.iso.meta4"]);
    }

    #[test]
    fn metalink_document() {
        let (candidates, hosts) = scene();
        let p = path("iso/a.iso");
        let mirrors = advertised(
            &Policy::default(),
            Some(at(48.8566, 2.3522)),
            &candidates,
            &hosts,
            &p,
        );
        let m = metalink(
            &p,
            5 << 20,
            [7; 32],
            Some(vec![[1; 32], [2; 32]]),
            &mirrors,
            VIP,
        );
        let h = |b: u8| hex::encode([b; 32]);
        assert_eq!(
            crate::metalink::write(&m, "baton"),
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<metalink xmlns=\"urn:ietf:params:xml:ns:metalink\">\n  \
<generator>baton</generator>\n  \
<file name=\"a.iso\">\n    \
<size>5242880</size>\n    \
<hash type=\"sha-256\">{}</hash>\n    \
<pieces length=\"4194304\" type=\"sha-256\">\n      \
<hash>{}</hash>\n      \
<hash>{}</hash>\n    \
</pieces>\n    \
<url priority=\"1\" location=\"gb\">http://198.18.3.10:8080/iso/a.iso</url>\n    \
<url priority=\"2\" location=\"de\">http://198.18.2.10/iso/a.iso</url>\n    \
<url priority=\"3\">http://198.18.4.10/iso/a.iso</url>\n    \
<url priority=\"4\">http://203.0.113.10/iso/a.iso</url>\n  \
</file>\n\
</metalink>\n",
                h(7),
                h(1),
                h(2)
            )
        );
        assert_eq!(
            crate::metalink::parse(crate::metalink::write(&m, "baton").as_bytes()),
            Ok(m)
        );
        // Without mirrors the VIP is the only URL; without pieces there is no piece list.
        let m = metalink(&path("top.bin"), 0, [7; 32], None, &[], VIP);
        assert_eq!(m.files[0].name, "top.bin");
        assert_eq!(m.files[0].pieces, None);
        assert_eq!(
            m.files[0].urls,
            vec![MetaUrl {
                url: "http://203.0.113.10/top.bin".into(),
                priority: Some(1),
                location: None
            }]
        );
    }
}

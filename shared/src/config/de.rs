//! Field deserializers that check a value's range or syntax while it is read, so that serde_yaml
//! attaches the position of the offending value to the error. Each rejects with
//! `invalid_value`, whose message starts "invalid value:" (the loader files those under
//! [`super::ConfigErrorKind::BadValue`]).
//!
//! They must never coerce a value into range: an out-of-range setting is an error, not a clamp.

use std::fmt;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{Error, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};

use super::{
    PeerHost, TlsConfig, MAX_IFACE_BYTES, MAX_LATITUDE, MAX_LONGITUDE, MAX_MULTICAST_TTL, MAX_PEER_UPLOAD_SLOTS, MAX_THREADS,
    MIN_PATH_MTU,
};
use crate::control::{validate_name, MAX_NAME_BYTES};

/// An unsigned integer in `min..=max`.
struct UintIn {
    what: &'static str,
    min: u64,
    max: u64,
}

impl<'de> Visitor<'de> for UintIn {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.max == u64::MAX {
            write!(f, "{} of at least {}", self.what, self.min)
        } else {
            write!(f, "{} from {} to {}", self.what, self.min, self.max)
        }
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
        if (self.min..=self.max).contains(&v) {
            Ok(v)
        } else {
            Err(E::invalid_value(Unexpected::Unsigned(v), &self))
        }
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }
}

/// Reads an unsigned integer in `min..=max` and narrows it to the field's type (`max` must fit).
/// Through `deserialize_any`, so that a negative number reaches `UintIn::visit_i64` and is
/// reported as out of range rather than as the wrong type.
fn uint_in<'de, D, T>(d: D, what: &'static str, min: u64, max: T) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + Into<u64> + Copy,
{
    let v = d.deserialize_any(UintIn { what, min, max: max.into() })?;
    T::try_from(v).map_err(|_| D::Error::custom("number does not fit its field"))
}

/// A port that something connects to or listens on: 1 to 65535.
pub(super) fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    uint_in(d, "a port number", 1, u16::MAX)
}

/// A port where 0 means "off": 0 to 65535.
pub(super) fn port_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    uint_in(d, "a port number (0 for off)", 0, u16::MAX)
}

/// A path MTU: [`MIN_PATH_MTU`] to 65535.
pub(super) fn path_mtu<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    uint_in(d, "a path MTU in bytes", MIN_PATH_MTU.into(), u16::MAX)
}

/// A worker thread count: 1 to [`MAX_THREADS`].
pub(super) fn threads<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let max = u64::try_from(MAX_THREADS).map_err(|_| D::Error::custom("thread limit does not fit u64"))?;
    let v = d.deserialize_any(UintIn { what: "a thread count", min: 1, max })?;
    usize::try_from(v).map_err(|_| D::Error::custom("number does not fit its field"))
}

/// A multicast TTL: 1 to [`MAX_MULTICAST_TTL`] (0 would keep datagrams on the host).
pub(super) fn ttl<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    uint_in(d, "a multicast TTL", 1, MAX_MULTICAST_TTL)
}

/// A peer cache's upload slots: 1 to [`MAX_PEER_UPLOAD_SLOTS`].
pub(super) fn upload_slots<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let max = u64::try_from(MAX_PEER_UPLOAD_SLOTS).map_err(|_| D::Error::custom("slot limit does not fit u64"))?;
    let v = d.deserialize_any(UintIn { what: "a number of upload slots", min: 1, max })?;
    usize::try_from(v).map_err(|_| D::Error::custom("number does not fit its field"))
}

/// A timeout in milliseconds: at least 1 (a zero timeout would fail every wait at once).
pub(super) fn timeout_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    uint_in(d, "a timeout in milliseconds", 1, u64::MAX)
}

/// A participant's capacity in concurrent flows: at least 1 (load is flows / capacity).
pub(super) fn capacity<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    uint_in(d, "a capacity in flows", 1, u32::MAX)
}

/// A finite number in `-limit..=limit`.
struct Degrees {
    what: &'static str,
    limit: f64,
}

impl<'de> Visitor<'de> for Degrees {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} in degrees from -{} to {}", self.what, self.limit, self.limit)
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<f64, E> {
        // NaN fails the range test.
        if (-self.limit..=self.limit).contains(&v) {
            Ok(v)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<f64, E> {
        match i32::try_from(v) {
            Ok(small) => self.visit_f64(f64::from(small)),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<f64, E> {
        match u32::try_from(v) {
            Ok(small) => self.visit_f64(f64::from(small)),
            Err(_) => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
        }
    }
}

/// A latitude: -[`MAX_LATITUDE`] to [`MAX_LATITUDE`].
pub(super) fn latitude<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_f64(Degrees { what: "a latitude", limit: MAX_LATITUDE })
}

/// A longitude: -[`MAX_LONGITUDE`] to [`MAX_LONGITUDE`].
pub(super) fn longitude<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_f64(Degrees { what: "a longitude", limit: MAX_LONGITUDE })
}

/// A string that `T::from_str` accepts.
struct Parsed<T> {
    what: &'static str,
    to: PhantomData<T>,
}

impl<'de, T: FromStr> Visitor<'de> for Parsed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
    }
}

/// An IPv4 address in dotted-quad form.
pub(super) fn ipv4<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
    d.deserialize_str(Parsed { what: "an IPv4 address such as 198.18.0.1", to: PhantomData })
}

/// An IPv4 multicast group (224.0.0.0/4).
pub(super) fn multicast_group<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
    struct Group;

    impl<'de> Visitor<'de> for Group {
        type Value = Ipv4Addr;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an IPv4 multicast group (224.0.0.0 to 239.255.255.255) such as 239.255.74.80")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Ipv4Addr, E> {
            match v.parse::<Ipv4Addr>() {
                Ok(ip) if ip.is_multicast() => Ok(ip),
                _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
            }
        }
    }

    d.deserialize_str(Group)
}

/// An optional IPv4 address; `~` (null) is none.
pub(super) fn opt_ipv4<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    struct Opt;

    impl<'de> Visitor<'de> for Opt {
        type Value = Option<Ipv4Addr>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an IPv4 address such as 198.18.1.255, or ~")
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            ipv4(d).map(Some)
        }
    }

    d.deserialize_option(Opt)
}

/// A peer to poll: `IPv4` or `IPv4:port` (port 1 to 65535).
pub(super) fn peer_host<'de, D: Deserializer<'de>>(d: D) -> Result<PeerHost, D::Error> {
    d.deserialize_str(Parsed { what: "an IPv4 address or address:port such as 198.18.1.10 or 198.18.1.10:7481", to: PhantomData })
}

/// An `address:port` socket address.
pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(Parsed { what: "an address and port such as 127.0.0.1:9470", to: PhantomData })
}

/// An optional `address:port`; `~` (null) is none.
pub(super) fn opt_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    struct Opt;

    impl<'de> Visitor<'de> for Opt {
        type Value = Option<SocketAddr>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an address and port such as 198.18.0.1:8443, or ~")
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            socket_addr(d).map(Some)
        }
    }

    d.deserialize_option(Opt)
}

/// A string that `check` accepts; `what` says what was expected.
struct Checked {
    what: fn(&mut fmt::Formatter) -> fmt::Result,
    check: fn(&str) -> bool,
}

impl<'de> Visitor<'de> for Checked {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        (self.what)(f)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
        if (self.check)(v) {
            Ok(v.to_owned())
        } else {
            Err(E::invalid_value(Unexpected::Str(v), &self))
        }
    }
}

/// A network interface name as the kernel accepts it: 1 to [`MAX_IFACE_BYTES`] bytes, not `.`
/// or `..`, no `/`, `:` or whitespace.
pub(super) fn iface<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(Checked {
        what: |f| write!(f, "an interface name of 1 to {MAX_IFACE_BYTES} bytes without '/', ':' or spaces"),
        check: |s| {
            !s.is_empty()
                && s.len() <= MAX_IFACE_BYTES
                && s != "."
                && s != ".."
                && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
        },
    })
}

/// A participant name, as [`validate_name`] accepts it.
pub(super) fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(Checked {
        what: |f| write!(f, "a name of 1 to {MAX_NAME_BYTES} bytes of [a-z0-9-]"),
        check: |s| validate_name(s).is_ok(),
    })
}

/// A `tls:` section as written: every key may be left out (or `~`) and takes its default.
#[derive(Deserialize)]
#[serde(rename = "TlsConfig", deny_unknown_fields)]
struct TlsKeys {
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
}

impl TlsKeys {
    fn or(self, defaults: TlsConfig) -> TlsConfig {
        TlsConfig {
            ca: self.ca.unwrap_or(defaults.ca),
            cert: self.cert.unwrap_or(defaults.cert),
            key: self.key.unwrap_or(defaults.key),
        }
    }
}

/// The main's `control.tls`, missing keys from [`TlsConfig::main_default`].
pub(super) fn main_tls<'de, D: Deserializer<'de>>(d: D) -> Result<TlsConfig, D::Error> {
    Ok(TlsKeys::deserialize(d)?.or(TlsConfig::main_default()))
}

/// A participant's `tls`, missing keys from [`TlsConfig::participant_default`].
pub(super) fn participant_tls<'de, D: Deserializer<'de>>(d: D) -> Result<TlsConfig, D::Error> {
    Ok(TlsKeys::deserialize(d)?.or(TlsConfig::participant_default()))
}

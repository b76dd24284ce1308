//! Typed YAML configuration of the main ([`MainConfig`]) and the participants
//! ([`ParticipantConfig`]): defaults, range checks, command-line overrides ([`Override`]) and
//! errors that name the file, the field (`control.restore_timeout_ms`, `participants[1].addr`)
//! and the line.
//!
//! This module never reads a file, the environment or a clock: the binaries read the config file
//! and pass its name and text in, with the flags that override it.
//!
//! Every struct denies unknown keys, so a misspelt key is an error rather than a silently ignored
//! setting. Range checks run while a value is read (see `de`), so their errors carry the line of
//! the value; cross-field checks run afterwards and find their line by a scan of the text (see
//! `locate`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::health::HealthPolicy;
use crate::select::Policy;

mod de;
mod locate;
#[cfg(test)]
mod tests;

/// Longest network interface name, in bytes: the kernel's `IFNAMSIZ` (16) less the terminating
/// NUL. A longer name can never match an interface.
pub const MAX_IFACE_BYTES: usize = 15;

/// Smallest path MTU: the IPv4 datagram size every host must accept (RFC 791). Below it the
/// encapsulated handoff and forwarded packets could not be sized.
pub const MIN_PATH_MTU: u16 = 576;

/// Most worker threads of a server. Far beyond the cores of the hosts Baton runs on; a bigger
/// number is a typo, not a plan.
pub const MAX_THREADS: usize = 256;

/// Largest absolute latitude, in degrees (the poles).
pub const MAX_LATITUDE: f64 = 90.0;

/// Largest absolute longitude, in degrees (the antimeridian).
pub const MAX_LONGITUDE: f64 = 180.0;

/// Default virtual IP the clients connect to: a TEST-NET-3 documentation address (RFC 5737),
/// a placeholder every real deployment replaces.
pub const DEFAULT_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// Default port of the VIP's HTTP service.
pub const DEFAULT_HTTP_PORT: u16 = 80;

/// Default network interface the dataplane attaches to.
pub const DEFAULT_IFACE: &str = "eth0";

/// Default path MTU: Ethernet's.
pub const DEFAULT_PATH_MTU: u16 = 1500;

/// Default port of the main's origin store, which participants fill their caches from.
pub const DEFAULT_ORIGIN_PORT: u16 = 8081;

/// Default port of the main's control channel, which participants connect to.
pub const DEFAULT_CONTROL_PORT: u16 = 7100;

/// Default UDP port of GUE encapsulation.
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// Largest multicast TTL: the IPv4 TTL field's range.
pub const MAX_MULTICAST_TTL: u32 = 255;

/// Default concurrent uploads of a participant's peer cache; the same as
/// `baton_io::peer::DEFAULT_UPLOAD_SLOTS` (baton-participant's tests hold them equal): a few
/// fast transfers beat many slow ones.
pub const DEFAULT_PEER_UPLOAD_SLOTS: usize = 4;

/// Most concurrent uploads of a peer cache. Each is a whole-object transfer on one link; more
/// than this is a typo, not a plan.
pub const MAX_PEER_UPLOAD_SLOTS: usize = 1024;

/// Largest peer-cache secret file, in bytes: far more than any HMAC key needs, small enough
/// that a wrong file (a log, an image) is refused instead of read.
pub const MAX_PEER_SECRET_BYTES: usize = 4096;

/// Default worker threads: one, which serves a lab comfortably.
pub const DEFAULT_THREADS: usize = 1;

/// Default time a client has to send a complete request head, in milliseconds.
pub const DEFAULT_HEAD_TIMEOUT_MS: u64 = 10_000;

/// Default time a response write may make no progress (the client accepts not a byte) before
/// the connection is closed, in milliseconds: nginx's `send_timeout`; the same as
/// `baton_io::http::DEFAULT_SEND_TIMEOUT`.
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 60_000;

/// Default capacity of a participant, in concurrent flows.
pub const DEFAULT_CAPACITY: u32 = 1000;

/// Default time the main waits for a participant's answer to a command, in milliseconds.
pub const DEFAULT_PARTICIPANT_TIMEOUT_MS: u64 = 500;

/// Default time the main waits for a participant to restore a handed-off flow, in milliseconds.
pub const DEFAULT_RESTORE_TIMEOUT_MS: u64 = 10_000;

/// Default time the main waits for a participant to release a flow, in milliseconds.
pub const DEFAULT_RELEASE_TIMEOUT_MS: u64 = 5_000;

/// Default time the main waits for a participant to prepare (fill its cache for) a move, in
/// milliseconds: long, since it may fetch whole objects.
pub const DEFAULT_PREPARE_TIMEOUT_MS: u64 = 60_000;

/// Default address of the main's Prometheus endpoint: loopback only.
pub const DEFAULT_MAIN_METRICS_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9470));

/// Default address of a participant's Prometheus endpoint: loopback only, and a port apart from
/// the main's so both can run on one host.
pub const DEFAULT_PARTICIPANT_METRICS_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9471));

/// Default directory of the main's pinned eBPF maps and links.
pub const DEFAULT_MAIN_PIN_DIR: &str = "/sys/fs/bpf/baton/main";

/// Default directory of a participant's pinned eBPF maps and links.
pub const DEFAULT_PARTICIPANT_PIN_DIR: &str = "/sys/fs/bpf/baton/participant";

/// Default directory of the main's persistent state.
pub const DEFAULT_MAIN_STATE_DIR: &str = "/var/lib/baton/main";

/// Default Unix socket of the main's admin API.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/baton/main.sock";

/// Default CA certificate both sides of the control channel trust.
pub const DEFAULT_TLS_CA: &str = "/etc/baton/tls/ca.pem";

/// Default certificate and key of the main.
pub const DEFAULT_MAIN_TLS_CERT: &str = "/etc/baton/tls/main.pem";
/// See [`DEFAULT_MAIN_TLS_CERT`].
pub const DEFAULT_MAIN_TLS_KEY: &str = "/etc/baton/tls/main.key";

/// Default certificate and key of a participant.
pub const DEFAULT_PARTICIPANT_TLS_CERT: &str = "/etc/baton/tls/participant.pem";
/// See [`DEFAULT_PARTICIPANT_TLS_CERT`].
pub const DEFAULT_PARTICIPANT_TLS_KEY: &str = "/etc/baton/tls/participant.key";

/// A complete main config file with every key at its default and lab values (198.18.0.0/15)
/// for the required ones; `batonctl` prints it and the tests parse it.
pub const MAIN_EXAMPLE: &str = include_str!("config/main.example.yaml");

/// A complete participant config file, like [`MAIN_EXAMPLE`].
pub const PARTICIPANT_EXAMPLE: &str = include_str!("config/participant.example.yaml");

// ---------------------------------------------------------------------------------------------
// Shared sections

/// Where the eBPF program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataplaneMode {
    /// tc (clsact) ingress: works on every interface.
    #[default]
    Tc,
    /// XDP: faster, needs driver support.
    Xdp,
    /// The main only: no BPF at all; threads of `baton-main` forward the flows (AF_PACKET,
    /// raw socket, nftables). For hosts that cannot load BPF programs; much slower.
    Userspace,
}

/// How packets are encapsulated between the main and the participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncapKind {
    /// IP-in-IP (protocol 4).
    #[default]
    Ipip,
    /// Generic UDP Encapsulation to [`DataplaneConfig::gue_port`].
    Gue,
}

/// The `dataplane:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    pub mode: DataplaneMode,
    pub encap: EncapKind,
    /// UDP port of GUE encapsulation; unused with `ipip`.
    #[serde(deserialize_with = "de::port")]
    pub gue_port: u16,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self { mode: DataplaneMode::Tc, encap: EncapKind::Ipip, gue_port: DEFAULT_GUE_PORT }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `log:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// Certificate files of the control channel (mutual TLS). In a config file every key is
/// optional: the main's `control.tls` defaults to [`TlsConfig::main_default`], a participant's
/// `tls` to [`TlsConfig::participant_default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (PEM) the peer's certificate must chain to.
    pub ca: PathBuf,
    /// Own certificate chain (PEM).
    pub cert: PathBuf,
    /// Own private key (PEM).
    pub key: PathBuf,
}

impl TlsConfig {
    /// The main's default files.
    pub fn main_default() -> Self {
        Self { ca: DEFAULT_TLS_CA.into(), cert: DEFAULT_MAIN_TLS_CERT.into(), key: DEFAULT_MAIN_TLS_KEY.into() }
    }

    /// A participant's default files.
    pub fn participant_default() -> Self {
        Self {
            ca: DEFAULT_TLS_CA.into(),
            cert: DEFAULT_PARTICIPANT_TLS_CERT.into(),
            key: DEFAULT_PARTICIPANT_TLS_KEY.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The main

/// The main server's config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainConfig {
    /// The virtual IP clients connect to.
    #[serde(default = "default_vip", deserialize_with = "de::ipv4")]
    pub vip: Ipv4Addr,
    /// The VIP's HTTP port.
    #[serde(default = "default_http_port", deserialize_with = "de::port")]
    pub port: u16,
    /// The main's own address on `iface` (required): the outer source of encapsulated packets.
    #[serde(deserialize_with = "de::ipv4")]
    pub local_addr: Ipv4Addr,
    /// Interface the dataplane attaches to.
    #[serde(default = "default_iface", deserialize_with = "de::iface")]
    pub iface: String,
    /// Path MTU towards the participants, for sizing encapsulated packets.
    #[serde(default = "default_path_mtu", deserialize_with = "de::path_mtu")]
    pub path_mtu: u16,
    /// Directory of the objects the main serves (required).
    pub origin_dir: PathBuf,
    /// Port of the origin store participants fill their caches from.
    #[serde(default = "default_origin_port", deserialize_with = "de::port")]
    pub origin_port: u16,
    /// GeoIP database (MaxMind format) for client locations; none: locations unknown.
    #[serde(default)]
    pub geoip: Option<PathBuf>,
    /// Directory of pinned eBPF maps and links.
    #[serde(default = "default_main_pin_dir")]
    pub pin_dir: PathBuf,
    /// Directory of persistent state.
    #[serde(default = "default_main_state_dir")]
    pub state_dir: PathBuf,
    /// Address of the Prometheus endpoint.
    #[serde(default = "default_main_metrics_addr", deserialize_with = "de::socket_addr")]
    pub metrics_addr: SocketAddr,
    /// Worker threads, 1 to [`MAX_THREADS`].
    #[serde(default = "default_threads", deserialize_with = "de::threads")]
    pub threads: usize,
    /// Time a client has to send a complete request head, in milliseconds.
    #[serde(default = "default_head_timeout_ms", deserialize_with = "de::timeout_ms")]
    pub head_timeout_ms: u64,
    /// Time a response write may make no progress before the connection is closed, in
    /// milliseconds.
    #[serde(default = "default_send_timeout_ms", deserialize_with = "de::timeout_ms")]
    pub send_timeout_ms: u64,
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Health checking of participants; checked by the loader (see [`parse_main`]).
    #[serde(default)]
    pub health: HealthPolicy,
    /// Participant selection; checked by the loader (see [`parse_main`]).
    #[serde(default)]
    pub selection: Policy,
    /// Participants known before any registers (they still connect to be used).
    #[serde(default)]
    pub participants: Vec<StaticParticipant>,
}

/// The main's `control:` section: the channel participants connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    #[serde(deserialize_with = "de::port")]
    pub port: u16,
    #[serde(deserialize_with = "de::main_tls")]
    pub tls: TlsConfig,
    /// Time to wait for a participant's answer to a command, in milliseconds.
    #[serde(deserialize_with = "de::timeout_ms")]
    pub participant_timeout_ms: u64,
    /// Time to wait for a participant to restore a handed-off flow, in milliseconds.
    #[serde(deserialize_with = "de::timeout_ms")]
    pub restore_timeout_ms: u64,
    /// Time to wait for a participant to release a flow, in milliseconds.
    #[serde(deserialize_with = "de::timeout_ms")]
    pub release_timeout_ms: u64,
    /// Time to wait for a participant to prepare a move, in milliseconds.
    #[serde(deserialize_with = "de::timeout_ms")]
    pub prepare_timeout_ms: u64,
    /// Whether a standby participant is kept ready to take flows over.
    pub standby: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_CONTROL_PORT,
            tls: TlsConfig::main_default(),
            participant_timeout_ms: DEFAULT_PARTICIPANT_TIMEOUT_MS,
            restore_timeout_ms: DEFAULT_RESTORE_TIMEOUT_MS,
            release_timeout_ms: DEFAULT_RELEASE_TIMEOUT_MS,
            prepare_timeout_ms: DEFAULT_PREPARE_TIMEOUT_MS,
            standby: true,
        }
    }
}

/// The main's `admin:` section: the API `batonctl` uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Unix socket of the admin API (always on).
    pub socket: PathBuf,
    /// Also serve the admin API over HTTP on this TCP address; needs `token_file`.
    #[serde(deserialize_with = "de::opt_socket_addr")]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token the TCP admin API requires; required with `listen`.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { socket: DEFAULT_ADMIN_SOCKET.into(), listen: None, token_file: None }
    }
}

/// A participant listed in the main's file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticParticipant {
    #[serde(deserialize_with = "de::name")]
    pub name: String,
    #[serde(deserialize_with = "de::ipv4")]
    pub addr: Ipv4Addr,
    #[serde(deserialize_with = "de::latitude")]
    pub lat: f64,
    #[serde(deserialize_with = "de::longitude")]
    pub lon: f64,
    /// Concurrent flows it takes.
    #[serde(default = "default_capacity", deserialize_with = "de::capacity")]
    pub capacity: u32,
}

// ---------------------------------------------------------------------------------------------
// The participants

/// A participant server's config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantConfig {
    /// Its name (required), as [`crate::control::validate_name`] accepts it.
    #[serde(deserialize_with = "de::name")]
    pub name: String,
    /// Its own address (required), where encapsulated packets reach it.
    #[serde(deserialize_with = "de::ipv4")]
    pub addr: Ipv4Addr,
    /// The VIP it serves for.
    #[serde(default = "default_vip", deserialize_with = "de::ipv4")]
    pub vip: Ipv4Addr,
    /// Its location (required), for geo selection.
    #[serde(deserialize_with = "de::latitude")]
    pub lat: f64,
    /// See `lat`.
    #[serde(deserialize_with = "de::longitude")]
    pub lon: f64,
    /// Concurrent flows it takes.
    #[serde(default = "default_capacity", deserialize_with = "de::capacity")]
    pub capacity: u32,
    /// Directory of its object cache (required).
    pub cache_dir: PathBuf,
    #[serde(default = "default_iface", deserialize_with = "de::iface")]
    pub iface: String,
    #[serde(default = "default_participant_pin_dir")]
    pub pin_dir: PathBuf,
    /// Port of its plain-HTTP mirror service on `addr`; 0 turns the mirror off.
    #[serde(default = "default_http_port", deserialize_with = "de::port_or_off")]
    pub mirror_port: u16,
    #[serde(default = "default_participant_metrics_addr", deserialize_with = "de::socket_addr")]
    pub metrics_addr: SocketAddr,
    #[serde(default = "default_threads", deserialize_with = "de::threads")]
    pub threads: usize,
    #[serde(default = "default_head_timeout_ms", deserialize_with = "de::timeout_ms")]
    pub head_timeout_ms: u64,
    #[serde(default = "default_send_timeout_ms", deserialize_with = "de::timeout_ms")]
    pub send_timeout_ms: u64,
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// How to reach the main (required, for `main.addr`).
    pub main: MainLinkConfig,
    #[serde(default = "TlsConfig::participant_default", deserialize_with = "de::participant_tls")]
    pub tls: TlsConfig,
    /// Filling the cache from other participants first.
    #[serde(default)]
    pub peer_cache: PeerCacheConfig,
}

/// A participant's `peer_cache:` section: whether it fills its cache from other participants
/// before the main's origin store, and how it finds and serves them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerCacheConfig {
    /// Whether the peer cache is used; off, every miss is filled from the origin store alone.
    pub enabled: bool,
    /// TCP port on `addr` where it serves cached objects to other participants.
    #[serde(deserialize_with = "de::port")]
    pub port: u16,
    /// UDP port of discovery, the same on every participant.
    #[serde(deserialize_with = "de::port")]
    pub discovery_port: u16,
    /// Whether discovery queries go to the multicast `group` (on the local segment).
    pub multicast: bool,
    /// Multicast group of discovery.
    #[serde(deserialize_with = "de::multicast_group")]
    pub group: Ipv4Addr,
    /// Multicast TTL, 1 to [`MAX_MULTICAST_TTL`]; 1 keeps queries on the local segment.
    #[serde(deserialize_with = "de::ttl")]
    pub ttl: u32,
    /// Subnet broadcast address to query as well; none: no broadcast.
    #[serde(deserialize_with = "de::opt_ipv4")]
    pub broadcast: Option<Ipv4Addr>,
    /// Other participants to poll by unicast (`IPv4`, or `IPv4:port` for another discovery
    /// port), for peers that multicast does not reach (other subnets).
    pub peers: Vec<PeerHost>,
    /// File holding the group secret that authenticates discovery datagrams (1 to
    /// [`MAX_PEER_SECRET_BYTES`] bytes, not readable by others); none: unauthenticated.
    pub secret_file: Option<PathBuf>,
    /// Concurrent uploads to other participants, 1 to [`MAX_PEER_UPLOAD_SLOTS`].
    #[serde(deserialize_with = "de::upload_slots")]
    pub slots: usize,
    /// Whether the main's package list (on its origin store) is asked who holds an object, and
    /// told what this participant holds.
    pub use_main_list: bool,
}

impl Default for PeerCacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            port: crate::peer::limit::DEFAULT_HTTP_PORT,
            discovery_port: crate::peer::limit::DEFAULT_DISCOVERY_PORT,
            multicast: true,
            group: crate::peer::limit::DEFAULT_GROUP,
            ttl: crate::peer::limit::DEFAULT_MULTICAST_TTL,
            broadcast: None,
            peers: Vec::new(),
            secret_file: None,
            slots: DEFAULT_PEER_UPLOAD_SLOTS,
            use_main_list: true,
        }
    }
}

impl PeerCacheConfig {
    /// The discovery addresses of `peers`, each without a port taking `discovery_port`.
    pub fn peer_addrs(&self) -> Vec<SocketAddrV4> {
        self.peers.iter().map(|p| SocketAddrV4::new(p.ip, p.port.unwrap_or(self.discovery_port))).collect()
    }
}

/// One entry of `peer_cache.peers`: `198.18.1.10` or `198.18.1.10:7481`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHost {
    pub ip: Ipv4Addr,
    /// The peer's discovery port; none: the section's `discovery_port`.
    pub port: Option<u16>,
}

/// Text that is neither `IPv4` nor `IPv4:port` with a port from 1 to 65535.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an IPv4 address or address:port")]
pub struct BadPeerHost;

impl std::str::FromStr for PeerHost {
    type Err = BadPeerHost;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(PeerHost { ip, port: None });
        }
        match s.parse::<SocketAddrV4>() {
            // Port 0 names no discovery socket.
            Ok(a) if a.port() != 0 => Ok(PeerHost { ip: *a.ip(), port: Some(a.port()) }),
            _ => Err(BadPeerHost),
        }
    }
}

impl std::fmt::Display for PeerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl Serialize for PeerHost {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerHost {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::peer_host(d)
    }
}

/// A participant's `main:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainLinkConfig {
    /// The main's address (required).
    #[serde(deserialize_with = "de::ipv4")]
    pub addr: Ipv4Addr,
    #[serde(default = "default_control_port", deserialize_with = "de::port")]
    pub control_port: u16,
    #[serde(default = "default_origin_port", deserialize_with = "de::port")]
    pub origin_port: u16,
}

fn default_vip() -> Ipv4Addr {
    DEFAULT_VIP
}
fn default_http_port() -> u16 {
    DEFAULT_HTTP_PORT
}
fn default_iface() -> String {
    DEFAULT_IFACE.to_owned()
}
fn default_path_mtu() -> u16 {
    DEFAULT_PATH_MTU
}
fn default_origin_port() -> u16 {
    DEFAULT_ORIGIN_PORT
}
fn default_control_port() -> u16 {
    DEFAULT_CONTROL_PORT
}
fn default_main_pin_dir() -> PathBuf {
    DEFAULT_MAIN_PIN_DIR.into()
}
fn default_participant_pin_dir() -> PathBuf {
    DEFAULT_PARTICIPANT_PIN_DIR.into()
}
fn default_main_state_dir() -> PathBuf {
    DEFAULT_MAIN_STATE_DIR.into()
}
fn default_main_metrics_addr() -> SocketAddr {
    DEFAULT_MAIN_METRICS_ADDR
}
fn default_participant_metrics_addr() -> SocketAddr {
    DEFAULT_PARTICIPANT_METRICS_ADDR
}
fn default_threads() -> usize {
    DEFAULT_THREADS
}
fn default_head_timeout_ms() -> u64 {
    DEFAULT_HEAD_TIMEOUT_MS
}
fn default_send_timeout_ms() -> u64 {
    DEFAULT_SEND_TIMEOUT_MS
}
fn default_capacity() -> u32 {
    DEFAULT_CAPACITY
}

// ---------------------------------------------------------------------------------------------
// Errors

/// What kind of mistake a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigErrorKind {
    /// The YAML is not well-formed (includes duplicate keys and multiple documents).
    Syntax,
    /// A value of the wrong type: a string for a number, a list for a section, a file that is
    /// not a mapping.
    WrongType,
    /// A key (or an override's path) that names no config field.
    UnknownField,
    /// A required field is missing.
    MissingField,
    /// A value of the right type that is not acceptable: a bad address, out of range, an
    /// unknown enum variant, a failed check.
    BadValue,
    /// Anything else.
    Other,
}

/// A config file or override that cannot be used. Displays as
/// `main.yaml:7:3: control.port: invalid type: …`, leaving out what is unknown; for a
/// command-line override `file` is the flag (`--restore-timeout-ms`) and there is no line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The file's name as the caller gave it, or the override's flag.
    pub file: String,
    /// Dotted path of the field (`control.port`, `participants[1].addr`); empty for errors of
    /// the whole file.
    pub field: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// 1-based column in the file, when known.
    pub column: Option<usize>,
    pub kind: ConfigErrorKind,
    /// What is wrong, without the file, field or position.
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut out = self.file.clone();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
            if let Some(column) = self.column {
                out.push_str(&format!(":{column}"));
            }
        }
        out.push_str(": ");
        if !self.field.is_empty() {
            out.push_str(&self.field);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Overrides and roles

/// A command-line flag's value applied over the file: `path` is the dotted config path
/// (`control.restore_timeout_ms`), `raw` the flag's text (`250`), `flag` its name
/// (`--restore-timeout-ms`). `raw` is read as a YAML scalar (`~` or empty is null); for a string
/// or path field, text that reads as a number or boolean is taken as the string it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub flag: String,
    pub path: String,
    pub raw: String,
}

impl Override {
    pub fn new(flag: impl Into<String>, path: impl Into<String>, raw: impl Into<String>) -> Self {
        Self { flag: flag.into(), path: path.into(), raw: raw.into() }
    }
}

/// Which server a config file is for: a top-level `name:` key means participant (used by
/// `batonctl config check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigRole {
    Main,
    Participant,
}

/// [`ConfigRole::Participant`] when `text` has a top-level `name:` key, else [`ConfigRole::Main`].
/// YAML that does not parse is looked at line by line, so that the right parser can then report
/// the syntax error.
pub fn detect_role(text: &str) -> ConfigRole {
    let participant = match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(map)) => map.contains_key("name"),
        Ok(_) => false,
        Err(_) => text.lines().any(|line| {
            ["name:", "\"name\":", "'name':"]
                .iter()
                .any(|key| line.strip_prefix(key).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t'])))
        }),
    };
    if participant {
        ConfigRole::Participant
    } else {
        ConfigRole::Main
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Reads a main config file. `file` names it in errors, `text` is its content (may be empty when
/// `overrides` supply the required fields), `overrides` are applied over it in order.
///
/// Besides what the types and ranges enforce, checks that `admin.listen` comes with
/// `admin.token_file`, that `health` is usable (`fall`, `rise` ≥ 1, nonzero times, `probe_path`
/// absolute, damping `reuse` < `suppress`), that every `selection` weight and the filter radius
/// are finite and ≥ 0, and that static participants' names and addresses are unique.
pub fn parse_main(file: &str, text: &str, overrides: &[Override]) -> Result<MainConfig, ConfigError> {
    parse(file, text, overrides, check_main)
}

/// Reads a participant config file; see [`parse_main`].
pub fn parse_participant(file: &str, text: &str, overrides: &[Override]) -> Result<ParticipantConfig, ConfigError> {
    parse(file, text, overrides, check_participant)
}

fn check_participant(config: &ParticipantConfig) -> Result<(), Invalid> {
    if config.dataplane.mode == DataplaneMode::Userspace {
        return Err(Invalid::bad(
            "dataplane.mode".to_owned(),
            "userspace is a mode of the main only; a participant decapsulates with its BPF program (tc or xdp)".to_owned(),
        ));
    }
    Ok(())
}

/// An error as deserialization reports it, before it is tied to the file or a flag.
#[derive(Debug)]
struct Failure {
    field: String,
    kind: ConfigErrorKind,
    message: String,
    line: Option<usize>,
    column: Option<usize>,
}

/// A failed check of a whole deserialized config.
#[derive(Debug)]
struct Invalid {
    field: String,
    kind: ConfigErrorKind,
    message: String,
    /// The path whose line the error points at (usually `field`).
    at: String,
}

impl Invalid {
    fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        Self { at: field.clone(), field, kind: ConfigErrorKind::BadValue, message: message.into() }
    }
}

/// The input of one parse.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
    overrides: &'a [Override],
}

fn parse<T: DeserializeOwned>(
    file: &str,
    text: &str,
    overrides: &[Override],
    check: fn(&T) -> Result<(), Invalid>,
) -> Result<T, ConfigError> {
    let src = Source { file, text, overrides };
    let document = src.document()?;
    // The file alone first: its errors carry lines. A required field the file leaves out, or an
    // error in a value a flag replaces, is no error if the flags supply it.
    let alone = document
        .as_ref()
        .map(|_| serde_path_to_error::deserialize::<_, T>(serde_yaml::Deserializer::from_str(text)).map_err(failure));
    let config = match alone {
        Some(Ok(config)) if overrides.is_empty() => config,
        Some(Err(f)) if !src.overridden(&f) => return Err(src.file_error(f)),
        _ => src.merged(document.unwrap_or_default())?,
    };
    check(&config).map_err(|invalid| src.invalid(invalid))?;
    Ok(config)
}

impl Source<'_> {
    /// The top-level mapping; `None` for an empty file (or one of only comments, or `~`).
    fn document(&self) -> Result<Option<Mapping>, ConfigError> {
        let value = serde_yaml::from_str::<Value>(self.text).map_err(|e| {
            let location = e.location();
            let (line, column) = location.as_ref().map(|l| (l.line(), l.column())).unzip();
            let message = without_location(e.to_string(), line, column);
            self.error(String::new(), ConfigErrorKind::Syntax, message, line, column)
        })?;
        let found = match value {
            Value::Null => return Ok(None),
            Value::Mapping(map) => return Ok(Some(map)),
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Sequence(_) => "a sequence",
            Value::Tagged(_) => "a tagged value",
        };
        let message = format!("invalid type: {found}, expected a mapping of settings (key: value) at the top level");
        let line = locate::first_content_line(self.text);
        Err(self.error(String::new(), ConfigErrorKind::WrongType, message, line, line.map(|_| 1)))
    }

    fn error(
        &self,
        field: String,
        kind: ConfigErrorKind,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    ) -> ConfigError {
        ConfigError { file: self.file.to_owned(), field, line, column, kind, message }
    }

    /// Whether `f`, found in the file alone, may be cured by the overrides: a missing field (or
    /// section) one of them supplies, or an error in or under a value one of them replaces.
    fn overridden(&self, f: &Failure) -> bool {
        self.overrides.iter().any(|o| match f.kind {
            ConfigErrorKind::Syntax => false,
            ConfigErrorKind::MissingField => within(&o.path, &f.field),
            _ => within(&f.field, &o.path),
        })
    }

    /// The error of the file alone, as serde_yaml placed it; a missing field points at its
    /// section's key (serde_yaml would point at the section's first key instead).
    fn file_error(&self, f: Failure) -> ConfigError {
        if f.kind == ConfigErrorKind::MissingField {
            let (line, column) = self.missing_position(&f.field);
            return self.error(f.field, f.kind, f.message, line, column);
        }
        self.error(f.field, f.kind, f.message, f.line, f.column)
    }

    /// Where a missing field would go: its section's key, nothing for a top-level field.
    fn missing_position(&self, field: &str) -> (Option<usize>, Option<usize>) {
        let parent = parent(field);
        if parent.is_empty() {
            (None, None)
        } else {
            locate::locate(self.text, parent).unzip()
        }
    }

    /// The last override whose path is `field` or a section above it.
    fn covering(&self, field: &str) -> Option<&Override> {
        self.overrides.iter().rev().find(|o| within(field, &o.path))
    }

    /// The file with the overrides applied, deserialized.
    fn merged<T: DeserializeOwned>(&self, document: Mapping) -> Result<T, ConfigError> {
        let mut root = Value::Mapping(document);
        for o in self.overrides {
            set(&mut root, o)?;
        }
        loop {
            let f = match serde_path_to_error::deserialize::<_, T>(root.clone()) {
                Ok(config) => return Ok(config),
                Err(e) => failure(e),
            };
            // A string or path field given text that reads as a number or boolean: take the text.
            if f.kind == ConfigErrorKind::WrongType {
                if let Some(o) = self.overrides.iter().rev().find(|o| o.path == f.field) {
                    if let Some(slot) = slot_mut(&mut root, &o.path).filter(|v| !v.is_string()) {
                        *slot = Value::String(o.raw.clone());
                        continue;
                    }
                }
            }
            return Err(self.merged_error(f));
        }
    }

    /// Ties an error of the merged config to the flag that caused it, or to the file.
    fn merged_error(&self, f: Failure) -> ConfigError {
        // An override path through a key no section has, or through a value as if it were one.
        let unknown = match f.kind {
            ConfigErrorKind::UnknownField => self.overrides.iter().rev().find(|o| within(&o.path, &f.field)),
            ConfigErrorKind::WrongType => {
                self.overrides.iter().rev().find(|o| o.path != f.field && within(&o.path, &f.field))
            }
            _ => None,
        };
        if let Some(o) = unknown {
            return no_such_field(o);
        }
        if let Some(o) = self.covering(&f.field) {
            return ConfigError {
                file: o.flag.clone(),
                field: f.field,
                line: None,
                column: None,
                kind: f.kind,
                message: f.message,
            };
        }
        let (line, column) = if f.kind == ConfigErrorKind::MissingField {
            self.missing_position(&f.field)
        } else {
            locate::locate(self.text, &f.field).unzip()
        };
        self.error(f.field, f.kind, f.message, line, column)
    }

    /// Ties a failed check to the flag that set the field, or to the file.
    fn invalid(&self, invalid: Invalid) -> ConfigError {
        if let Some(o) = self.covering(&invalid.field) {
            return ConfigError {
                file: o.flag.clone(),
                field: invalid.field,
                line: None,
                column: None,
                kind: invalid.kind,
                message: invalid.message,
            };
        }
        let (line, column) = locate::locate(self.text, &invalid.at).unzip();
        self.error(invalid.field, invalid.kind, invalid.message, line, column)
    }
}

fn no_such_field(o: &Override) -> ConfigError {
    ConfigError {
        file: o.flag.clone(),
        field: o.path.clone(),
        line: None,
        column: None,
        kind: ConfigErrorKind::UnknownField,
        message: "no such config field".to_owned(),
    }
}

/// Sets `o.path` in `root` to `o.raw` read as a YAML scalar, making missing (or `~`) sections.
fn set(root: &mut Value, o: &Override) -> Result<(), ConfigError> {
    let keys: Vec<&str> = o.path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(no_such_field(o));
    }
    let value = match serde_yaml::from_str::<Value>(&o.raw) {
        Ok(v @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
        _ => Value::String(o.raw.clone()),
    };
    let mut node = root;
    for (i, key) in keys.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else {
            let mut e = no_such_field(o);
            e.message = format!("no such config field ({} is a value, not a section)", keys[..i].join("."));
            return Err(e);
        };
        let key = Value::String((*key).to_owned());
        if i + 1 == keys.len() {
            map.insert(key, value);
            return Ok(());
        }
        node = map.entry(key).or_insert(Value::Null);
    }
    Ok(())
}

/// The value at a dotted path of mappings.
fn slot_mut<'a>(root: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(root, |node, key| node.as_mapping_mut()?.get_mut(key))
}

/// Whether `path` is `ancestor` or lies under it (`a.b`, `a[1]` under `a`); everything lies
/// under the empty path.
fn within(path: &str, ancestor: &str) -> bool {
    ancestor.is_empty()
        || path.strip_prefix(ancestor).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The path one step up: `a.b` → `a`, `a[1]` → `a`, `a` → ``.
fn parent(path: &str) -> &str {
    path.rfind(['.', '[']).map_or("", |at| &path[..at])
}

/// `a` + `b` → `a.b`; the empty path + `b` → `b`.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The text between the first pair of backquotes after `prefix` at the start of `message`.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.find('`').map(|end| &rest[..end])
}

/// `message` without serde_yaml's " at line L column C" for the error's own position.
fn without_location(message: String, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => message.replacen(&format!(" at line {line} column {column}"), "", 1),
        _ => message,
    }
}

/// Turns a deserialization error into a [`Failure`]: the field's full path (the missing field's
/// name appended for a missing field), the message without serde_yaml's path prefix and position
/// suffix, and the kind read from serde's standard wording.
fn failure(e: serde_path_to_error::Error<serde_yaml::Error>) -> Failure {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let inner = e.into_inner();
    let (line, column) = inner.location().map(|l| (l.line(), l.column())).unzip();
    let mut message = without_location(inner.to_string(), line, column);
    // serde_yaml prefixes the path of the node it was reading: the field itself, or for a key
    // error the mapping that holds it.
    for prefix in [path.as_str(), parent(&path)] {
        if !prefix.is_empty() {
            if let Some(rest) = message.strip_prefix(prefix).and_then(|m| m.strip_prefix(": ")) {
                message = rest.to_owned();
                break;
            }
        }
    }
    let kind = if message.starts_with("invalid type: ") {
        ConfigErrorKind::WrongType
    } else if message.starts_with("invalid value: ")
        || message.starts_with("invalid length ")
        || message.starts_with("unknown variant ")
    {
        ConfigErrorKind::BadValue
    } else if message.starts_with("unknown field ") {
        ConfigErrorKind::UnknownField
    } else if message.starts_with("missing field ") {
        ConfigErrorKind::MissingField
    } else if message.starts_with("duplicate field ") {
        ConfigErrorKind::Syntax
    } else {
        ConfigErrorKind::Other
    };
    let mut field = path;
    match kind {
        ConfigErrorKind::MissingField => {
            if let Some(name) = quoted_after(&message, "missing field ") {
                field = join(&field, name);
            }
        }
        ConfigErrorKind::UnknownField => {
            // serde_path_to_error names the unknown key itself; make sure of it.
            if let Some(name) = quoted_after(&message, "unknown field ") {
                if !field.ends_with(name) {
                    field = join(&field, name);
                }
            }
        }
        _ => {}
    }
    Failure { field, kind, message, line, column }
}

// ---------------------------------------------------------------------------------------------
// Checks of a whole config

fn check_main(config: &MainConfig) -> Result<(), Invalid> {
    if config.admin.listen.is_some() && config.admin.token_file.is_none() {
        return Err(Invalid {
            field: "admin.token_file".to_owned(),
            kind: ConfigErrorKind::MissingField,
            message: "required when admin.listen is set (the TCP admin API needs a bearer token)".to_owned(),
            at: "admin.listen".to_owned(),
        });
    }
    check_health(&config.health)?;
    check_selection(&config.selection)?;
    for (i, p) in config.participants.iter().enumerate() {
        if let Some(first) = config.participants[..i].iter().position(|q| q.name == p.name) {
            return Err(Invalid::bad(
                format!("participants[{i}].name"),
                format!("{:?} is already the name of participants[{first}]", p.name),
            ));
        }
        if let Some(first) = config.participants[..i].iter().position(|q| q.addr == p.addr) {
            return Err(Invalid::bad(
                format!("participants[{i}].addr"),
                format!("{} is already the address of participants[{first}]", p.addr),
            ));
        }
    }
    Ok(())
}

fn check_health(h: &HealthPolicy) -> Result<(), Invalid> {
    let at_least_1 = |field: &str, v: u32| {
        if v >= 1 {
            Ok(())
        } else {
            Err(Invalid::bad(format!("health.{field}"), format!("must be at least 1, not {v}")))
        }
    };
    let nonzero = |field: &str, v: u64| {
        if v > 0 {
            Ok(())
        } else {
            Err(Invalid::bad(format!("health.{field}"), "must be more than 0"))
        }
    };
    let amount = |field: &str, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(Invalid::bad(format!("health.{field}"), format!("must be a finite number of at least 0, not {v}")))
        }
    };
    at_least_1("fall", h.fall)?;
    at_least_1("rise", h.rise)?;
    nonzero("interval_ms", h.interval_ms)?;
    nonzero("timeout_ms", h.timeout_ms)?;
    if let Some(path) = &h.probe_path {
        if !path.starts_with('/') {
            return Err(Invalid::bad("health.probe_path", format!("must start with '/', not {path:?}")));
        }
    }
    let d = &h.damping;
    amount("damping.penalty", d.penalty)?;
    amount("damping.suppress", d.suppress)?;
    amount("damping.reuse", d.reuse)?;
    if d.reuse >= d.suppress {
        return Err(Invalid::bad(
            "health.damping.reuse",
            format!("must be less than damping.suppress ({}), not {}", d.suppress, d.reuse),
        ));
    }
    nonzero("damping.half_life_ms", d.half_life_ms)?;
    Ok(())
}

fn check_selection(s: &Policy) -> Result<(), Invalid> {
    let w = &s.weights;
    for (field, v) in [
        ("weights.distance", w.distance),
        ("weights.load", w.load),
        ("weights.capacity", w.capacity),
        ("weights.object", w.object),
        ("filter_radius_km", s.filter_radius_km),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Invalid::bad(
                format!("selection.{field}"),
                format!("must be a finite number of at least 0, not {v}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod helper_tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(within("control.port", "control"));
        assert!(within("participants[1].addr", "participants"));
        assert!(within("control", "control"));
        assert!(!within("controls", "control"));
        assert!(!within("control", "control.port"));
        assert_eq!(parent("participants[1]"), "participants");
        assert_eq!(parent("participants[1].addr"), "participants[1]");
        assert_eq!(parent("port"), "");
        assert_eq!(join("", "port"), "port");
        assert_eq!(join("main", "addr"), "main.addr");
    }
}

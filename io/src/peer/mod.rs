//! A peer cache member: the I/O around `baton_shared::peer`. It answers discovery queries for
//! what it holds, serves packages over HTTP with a bounded number of upload slots, and obtains
//! packages for its owner (baton-participant's cache fill, `baton-fetch --peer`):
//!
//! 1. its own package list, then the list the main keeps (when configured);
//! 2. a discovery query: UDP multicast on the LAN (TTL 1 by default), the subnet broadcast when
//!    enabled, and unicast polls of the peers it knows when multicast gets no answer;
//! 3. when nobody answers, an election among the requesters heard meanwhile: the lowest claim
//!    announces that it will have the package and fetches it from the origin; the others fetch
//!    from it while it downloads.
//!
//! Every byte is hashed on arrival and the package is renamed into place only when its SHA-256
//! equals the origin's; a peer whose bytes did not match is marked and avoided. This module
//! never accepts a package whose digest it has not checked, and never holds a lock across an
//! await.

pub mod api;
pub mod secret;
pub mod serve;
pub mod transfer;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_shared::digest::{sha256_hex, Sha256};
use baton_shared::peer::limit::{PerSource, TokenBucket, ANSWER_BURST, ANSWER_RATE_PER_SOURCE, QUERY_BURST, QUERY_RATE_PER_SEC};
use baton_shared::peer::wire::{HaveState, Kind, Message};
use baton_shared::peer::{rank_offers, wins_election, BadPeers, Offer, Package, PackageId, PackageList};
use md5::Digest as _;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, watch, Semaphore};

use crate::metrics::{Exposition, Kind as MetricKind};
use transfer::{BodyStream, Got, Origin};

/// `Server` header of the peer HTTP server.
pub const SERVER_NAME: &str = "baton-peer";
/// How long one discovery round waits for answers. Peers share a LAN, where a round trip is
/// well under a millisecond; the rest is room for a busy host to schedule its responder.
pub const DEFAULT_QUERY_WAIT: Duration = Duration::from_millis(300);
/// How long a requester that lost the election waits for the winner's announcement before it
/// asks again. Covers the winner's own discovery rounds (two of [`DEFAULT_QUERY_WAIT`]) with
/// margin.
pub const ELECTION_WAIT: Duration = Duration::from_secs(2);
/// How long queries and announcements heard from other peers count for an election. A
/// requester that starts just after another must still see it.
pub const RECENT_WINDOW: Duration = Duration::from_secs(2);
/// Discovery rounds before the origin is used regardless (each busy or failed round costs one).
pub const MAX_LOOKUP_ROUNDS: usize = 8;
/// Concurrent uploads a member serves, the usual upload-slot count of peer-to-peer clients: a
/// few fast transfers beat many slow ones, and requesters told busy go elsewhere.
pub const DEFAULT_UPLOAD_SLOTS: usize = 4;
/// Attempts at the origin (each continues where the last stopped).
pub const ORIGIN_ATTEMPTS: usize = 3;
/// Largest discovery datagram read (messages are about a hundred bytes).
const MAX_DATAGRAM_BYTES: usize = 512;
/// Peers remembered for unicast polling; a LAN rarely has more, and the cap bounds what
/// forged datagrams can make us poll.
pub const MAX_KNOWN_PEERS: usize = 256;
/// Own recent nonces remembered, to ignore our own multicast and broadcast datagrams.
const OWN_NONCES: usize = 256;
/// Heard queries and announcements remembered (within [`RECENT_WINDOW`]).
const MAX_RECENT: usize = 1024;
/// Offers kept from one discovery round (the first to arrive; one per address). A LAN has a
/// handful of holders; more would only be forged answers to poll in vain.
pub const MAX_OFFERS_PER_ROUND: usize = 32;
/// Other requesters' claims and announcers kept per round, for the same reason.
pub const MAX_HEARD_PER_ROUND: usize = 64;
/// A peer transfer that delivers less than [`PEER_MIN_BYTES`] in any [`PEER_RATE_WINDOW`] is
/// abandoned and continued elsewhere: 64 KiB in 10 s (about 50 kbit/s) is far below any LAN,
/// but stops a peer that trickles a byte now and then from holding a download forever.
pub const PEER_RATE_WINDOW: Duration = Duration::from_secs(10);
/// See [`PEER_RATE_WINDOW`].
pub const PEER_MIN_BYTES: u64 = 64 * 1024;
/// Pause before asking again when holders were seen but none served in a round (their
/// transfers broke off, or they had no bytes yet).
pub const HOLDER_RETRY_WAIT: Duration = Duration::from_millis(200);
/// Longest pause before the next lookup round after every candidate answered busy (the
/// `Retry-After` they sent, capped by this).
pub const MAX_BUSY_WAIT: Duration = Duration::from_secs(2);
/// Read size while copying a body into a package file.
const COPY_CHUNK_BYTES: usize = 256 * 1024;
/// Temporary files of unfinished downloads start with this (baton-participant removes them at
/// start, as it does its own).
pub const PARTIAL_PREFIX: &str = ".baton-partial-";
/// Reports to the main's package list queued or running at once. Every share makes one (a
/// participant offering its whole cache at start makes one per object), each bounded by
/// [`api::CALL_TIMEOUT`]; beyond this a report is skipped: the list is only a hint, and
/// discovery still finds the package.
pub const MAX_PENDING_REPORTS: usize = 256;
/// Reports sent at once, so a burst of shares does not open hundreds of connections to the main.
pub const REPORT_CONCURRENCY: usize = 4;

/// How a member finds and serves peers.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// This member's LAN address: where it serves, what it advertises, the multicast interface.
    pub addr: Ipv4Addr,
    /// HTTP port for serving packages (0: any free port).
    pub http_port: u16,
    /// UDP port of discovery, the same on every member.
    pub discovery_port: u16,
    /// Multicast group of discovery; `None` disables multicast.
    pub group: Option<Ipv4Addr>,
    /// Multicast TTL; 1 keeps queries on the local segment.
    pub ttl: u32,
    /// Subnet broadcast address to query too, if any.
    pub broadcast: Option<Ipv4Addr>,
    /// Discovery addresses of known peers, polled by unicast when multicast gets no answer.
    pub hosts: Vec<SocketAddrV4>,
    /// Group secret: when set, every datagram is authenticated with it and others are ignored.
    pub secret: Option<Vec<u8>>,
    /// Concurrent uploads.
    pub slots: usize,
    /// How long a discovery round waits.
    pub query_wait: Duration,
    /// The main's package list (the origin store's address), if any.
    pub list: Option<SocketAddr>,
}

impl PeerConfig {
    /// The defaults for a member on `addr`.
    pub fn new(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            http_port: baton_shared::peer::limit::DEFAULT_HTTP_PORT,
            discovery_port: baton_shared::peer::limit::DEFAULT_DISCOVERY_PORT,
            group: Some(baton_shared::peer::limit::DEFAULT_GROUP),
            ttl: baton_shared::peer::limit::DEFAULT_MULTICAST_TTL,
            broadcast: None,
            hosts: Vec::new(),
            secret: None,
            slots: DEFAULT_UPLOAD_SLOTS,
            query_wait: DEFAULT_QUERY_WAIT,
            list: None,
        }
    }
}

/// Why the member could not start or obtain a package.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("binding the peer {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the origin {origin} failed: {source}")]
    Origin {
        origin: String,
        #[source]
        source: io::Error,
    },
    #[error("the origin {origin} sent bytes with sha-256 {got}, but published {expected}")]
    OriginDigest { origin: String, expected: String, got: String },
}

/// Where an obtained package came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// This member held it already.
    Local,
    /// From a peer its own list named.
    OwnList,
    /// From a peer the main's list named.
    MainList,
    /// From a peer that answered a discovery query.
    Discovered,
    /// From a peer that announced it would have it.
    Announced,
    /// From the origin (after announcing).
    Origin,
    /// Not obtained.
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 7] =
        [Outcome::Local, Outcome::OwnList, Outcome::MainList, Outcome::Discovered, Outcome::Announced, Outcome::Origin, Outcome::Failed];

    fn label(self) -> &'static str {
        match self {
            Outcome::Local => "local",
            Outcome::OwnList => "own_list",
            Outcome::MainList => "main_list",
            Outcome::Discovered => "discovered",
            Outcome::Announced => "announced",
            Outcome::Origin => "origin",
            Outcome::Failed => "failed",
        }
    }
}

/// What [`Member::obtain`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Obtained {
    pub outcome: Outcome,
    /// Bytes received from peers (including any discarded after a mismatch).
    pub from_peers: u64,
    /// Bytes received from the origin.
    pub from_origin: u64,
    /// Peers that served bytes that did not match, now avoided.
    pub bad_peers: Vec<SocketAddrV4>,
    /// Busy replies received.
    pub busy: u64,
}

/// The member's counters (Prometheus families in [`Member::metrics`]).
#[derive(Debug, Default)]
pub struct Counters {
    pub from_peers: AtomicU64,
    pub from_origin: AtomicU64,
    pub served_bytes: AtomicU64,
    pub busy_sent: AtomicU64,
    pub busy_received: AtomicU64,
    pub bad_peers: AtomicU64,
    pub queries_sent: AtomicU64,
    pub answers_sent: AtomicU64,
    pub rate_limited: AtomicU64,
    pub invalid_datagrams: AtomicU64,
    /// Datagrams from outside the member's subnet and configured hosts.
    pub outside_datagrams: AtomicU64,
    /// Reports the main's package list accepted.
    pub reports_sent: AtomicU64,
    /// Reports that failed (unreachable, refused, timed out).
    pub reports_failed: AtomicU64,
    /// Reports not sent because [`MAX_PENDING_REPORTS`] were pending.
    pub reports_skipped: AtomicU64,
    lookups: [AtomicU64; Outcome::ALL.len()],
}

impl Counters {
    fn lookup(&self, outcome: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.lookups[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lookups that ended with `outcome`.
    pub fn lookups(&self, outcome: Outcome) -> u64 {
        Outcome::ALL.iter().position(|o| *o == outcome).map_or(0, |i| self.lookups[i].load(Ordering::Relaxed))
    }
}

/// How far a download has come, for those served from it while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub have: u64,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Done,
    Failed,
}

/// A package this member can serve.
#[derive(Debug, Clone)]
pub enum Holding {
    Complete { path: PathBuf, package: Package },
    Downloading { path: PathBuf, package: Package, progress: watch::Receiver<Progress> },
}

impl Holding {
    fn package(&self) -> &Package {
        match self {
            Holding::Complete { package, .. } | Holding::Downloading { package, .. } => package,
        }
    }
}

/// Something heard from another requester.
#[derive(Debug, Clone)]
enum Heard {
    Query { id: PackageId, claim: u64, from: SocketAddrV4 },
    Announce { id: PackageId, claim: u64, from: SocketAddrV4 },
}

#[derive(Debug)]
struct State {
    list: PackageList,
    bad: BadPeers,
    local: HashMap<Sha256, Holding>,
    md5: HashMap<[u8; 16], Sha256>,
    known: BTreeSet<SocketAddrV4>,
    own_nonces: (HashSet<u64>, VecDeque<u64>),
    recent: VecDeque<(Instant, Heard)>,
    queries: TokenBucket,
    answers: PerSource,
    waiters: HashMap<u64, mpsc::UnboundedSender<(Message, SocketAddrV4)>>,
    obtaining: HashMap<Sha256, Arc<tokio::sync::Mutex<()>>>,
    rng: rand::rngs::StdRng,
}

/// A running member.
#[derive(Debug)]
pub struct Member {
    cfg: PeerConfig,
    http: SocketAddrV4,
    udp: UdpSocket,
    me: SocketAddrV4,
    /// The subnet of `cfg.addr` (network, mask): discovery datagrams from elsewhere are
    /// ignored unless they come from a configured host. `None`: the subnet is unknown.
    subnet: Option<(u32, u32)>,
    state: Mutex<State>,
    events: broadcast::Sender<Heard>,
    slots: Arc<Semaphore>,
    /// Reports to the main's list queued or running.
    reports: Arc<watch::Sender<usize>>,
    report_slots: Arc<Semaphore>,
    pub counters: Arc<Counters>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn discovery_socket(cfg: &PeerConfig) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, cfg.discovery_port)).into())?;
    if let Some(group) = cfg.group {
        socket.join_multicast_v4(&group, &cfg.addr)?;
        socket.set_multicast_if_v4(&cfg.addr)?;
        socket.set_multicast_ttl_v4(cfg.ttl)?;
        socket.set_multicast_loop_v4(false)?;
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

impl Member {
    /// Binds the HTTP server and the discovery socket and starts serving.
    pub async fn start(cfg: PeerConfig) -> Result<Arc<Member>, PeerError> {
        let listener = tokio::net::TcpListener::bind(SocketAddrV4::new(cfg.addr, cfg.http_port))
            .await
            .map_err(|source| PeerError::Bind { what: "HTTP server", addr: format!("{}:{}", cfg.addr, cfg.http_port), source })?;
        let http = match listener.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            _ => SocketAddrV4::new(cfg.addr, cfg.http_port),
        };
        let udp = discovery_socket(&cfg)
            .map_err(|source| PeerError::Bind { what: "discovery socket", addr: format!("0.0.0.0:{}", cfg.discovery_port), source })?;
        let now = Instant::now();
        let me = SocketAddrV4::new(cfg.addr, cfg.discovery_port);
        let subnet = local_subnet(cfg.addr);
        if subnet.is_none() {
            tracing::warn!(addr = %cfg.addr, "no local interface has this address's subnet; discovery accepts datagrams from any source");
        }
        let known = cfg.hosts.iter().copied().filter(|h| *h != me).take(MAX_KNOWN_PEERS).collect();
        let state = State {
            list: PackageList::new(),
            bad: BadPeers::default(),
            local: HashMap::new(),
            md5: HashMap::new(),
            known,
            own_nonces: (HashSet::new(), VecDeque::new()),
            recent: VecDeque::new(),
            queries: TokenBucket::new(QUERY_RATE_PER_SEC, QUERY_BURST, now),
            answers: PerSource::new(ANSWER_RATE_PER_SOURCE, ANSWER_BURST),
            waiters: HashMap::new(),
            obtaining: HashMap::new(),
            rng: rand::rngs::StdRng::from_entropy(),
        };
        let member = Arc::new(Member {
            slots: Arc::new(Semaphore::new(cfg.slots.max(1))),
            cfg,
            http,
            udp,
            me,
            subnet,
            state: Mutex::new(state),
            events: broadcast::channel(256).0,
            reports: Arc::new(watch::channel(0).0),
            report_slots: Arc::new(Semaphore::new(REPORT_CONCURRENCY)),
            counters: Arc::default(),
        });
        tokio::spawn(serve::run(listener, member.clone()));
        tokio::spawn(member.clone().listen());
        tracing::info!(http = %member.http, discovery = %member.me, group = ?member.cfg.group, "peer cache member started");
        Ok(member)
    }

    /// Uploads running now.
    pub fn uploads(&self) -> usize {
        self.cfg.slots.max(1).saturating_sub(self.slots.available_permits())
    }

    /// Where this member serves packages.
    pub fn http_addr(&self) -> SocketAddrV4 {
        self.http
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What this member holds under `id`.
    pub fn holding(&self, id: &PackageId) -> Option<Holding> {
        let st = self.state();
        let sha = match id {
            PackageId::Sha256(d) => *d,
            PackageId::Md5(m) => *st.md5.get(m)?,
        };
        st.local.get(&sha).cloned()
    }

    /// Offers a complete, verified file as `package`, and tells the main's list (when one is
    /// configured) in the background: the caller never waits for the main.
    pub fn share(&self, path: &Path, package: Package) {
        {
            let mut st = self.state();
            if let Some(m) = package.md5 {
                st.md5.insert(m, package.sha256);
            }
            st.list.describe(package);
            st.local.insert(package.sha256, Holding::Complete { path: path.to_owned(), package });
        }
        self.report_later(package);
    }

    /// Stops offering `id` (a SHA-256, or an MD5 this member knows): forgets its file, its MD5
    /// alias and this member's own address in its list. Requests for it are answered 404 from
    /// now on; uploads already running finish from the file they opened. A download of it
    /// that is running offers the package again when it completes. Returns what was offered.
    ///
    /// The main's list is not told (it has no way to forget a location); requesters it sends
    /// here get a 404 and forget this member for the package.
    pub fn unshare(&self, id: &PackageId) -> Option<Holding> {
        self.unshare_if(id, |_| true)
    }

    /// Stops offering `id` only if it is offered complete from `path` (the file there is about
    /// to be replaced or removed; the same package offered from elsewhere stays offered).
    pub fn unshare_from(&self, id: &PackageId, path: &Path) -> Option<Holding> {
        self.unshare_if(id, |h| matches!(h, Holding::Complete { path: p, .. } if p == path))
    }

    fn unshare_if(&self, id: &PackageId, which: impl Fn(&Holding) -> bool) -> Option<Holding> {
        let mut st = self.state();
        let sha = match id {
            PackageId::Sha256(d) => *d,
            PackageId::Md5(m) => *st.md5.get(m)?,
        };
        if !st.local.get(&sha).is_some_and(which) {
            return None;
        }
        let removed = st.local.remove(&sha);
        st.md5.retain(|_, s| *s != sha);
        st.list.forget(&PackageId::Sha256(sha), self.http);
        tracing::debug!(id = %PackageId::Sha256(sha), "no longer offered to peers");
        removed
    }

    /// Hashes a file (SHA-256 and MD5) and offers it.
    pub async fn share_file(&self, path: &Path) -> io::Result<Package> {
        let p = path.to_owned();
        let package = tokio::task::spawn_blocking(move || hash_package(&p)).await.map_err(io::Error::other)??;
        self.share(path, package);
        Ok(package)
    }

    /// Sends `msg` to `to`, counting it against the query rate when it is a query.
    async fn send(&self, msg: &Message, to: SocketAddrV4) {
        let bytes = msg.emit(self.cfg.secret.as_deref());
        if let Err(e) = self.udp.send_to(&bytes, to).await {
            tracing::debug!(%to, error = %e, "discovery send failed");
        }
    }

    fn remember_own(&self, nonce: u64) {
        let mut st = self.state();
        let (set, order) = &mut st.own_nonces;
        if set.insert(nonce) {
            order.push_back(nonce);
            if order.len() > OWN_NONCES {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }

    async fn listen(self: Arc<Self>) {
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        loop {
            let (n, from) = match self.udp.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "discovery receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let SocketAddr::V4(from) = from else { continue };
            if !self.accepts_from(*from.ip()) {
                self.counters.outside_datagrams.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "ignoring a discovery datagram from outside the LAN and the configured hosts");
                continue;
            }
            match Message::parse(&buf[..n], self.cfg.secret.as_deref(), now_ms()) {
                Ok(msg) => self.on_message(msg, from).await,
                Err(e) => {
                    self.counters.invalid_datagrams.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%from, error = %e, "ignoring a discovery datagram");
                }
            }
        }
    }

    /// Whether discovery listens to `ip`: a host on this member's subnet, or a configured peer.
    /// A host that reaches another interface of this machine (its WAN side) is not a peer.
    fn accepts_from(&self, ip: Ipv4Addr) -> bool {
        match self.subnet {
            None => true,
            Some((net, mask)) => u32::from(ip) & mask == net || self.cfg.hosts.iter().any(|h| *h.ip() == ip),
        }
    }

    async fn on_message(&self, msg: Message, from: SocketAddrV4) {
        let http = SocketAddrV4::new(*from.ip(), msg.port);
        let answer = {
            let mut st = self.state();
            // Our own queries and announcements come back through broadcast; answers carry
            // the nonce of our query and are for us.
            if from == self.me || (msg.kind != Kind::Answer && st.own_nonces.0.contains(&msg.nonce)) {
                return;
            }
            let now = Instant::now();
            let heard = match msg.kind {
                Kind::Query => Some(Heard::Query { id: msg.id, claim: msg.claim, from: http }),
                Kind::Announce => {
                    let draw = st.rng.gen::<f64>();
                    st.list.learn(&msg.id, http, draw);
                    Some(Heard::Announce { id: msg.id, claim: msg.claim, from: http })
                }
                Kind::Answer => {
                    // Only a peer that answered a query of ours is remembered for polling: a
                    // forged source cannot fill the set without knowing a live nonce.
                    if let Some(tx) = st.waiters.get(&msg.nonce) {
                        let _ = tx.send((msg.clone(), from));
                        if st.known.len() < MAX_KNOWN_PEERS {
                            st.known.insert(from);
                        }
                    }
                    None
                }
            };
            if let Some(h) = heard {
                st.recent.push_back((now, h.clone()));
                while st.recent.len() > MAX_RECENT || st.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > RECENT_WINDOW) {
                    st.recent.pop_front();
                }
                let _ = self.events.send(h);
            }
            if msg.kind != Kind::Query {
                return;
            }
            let sha = match msg.id {
                PackageId::Sha256(d) => Some(d),
                PackageId::Md5(m) => st.md5.get(&m).copied(),
            };
            let Some(holding) = sha.and_then(|d| st.local.get(&d).cloned()) else { return };
            if !st.answers.try_take(*from.ip(), now) {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let (state, have) = match &holding {
                Holding::Complete { package, .. } => (HaveState::Complete, package.size),
                Holding::Downloading { progress, .. } => (HaveState::Downloading, progress.borrow().have),
            };
            Message {
                kind: Kind::Answer,
                nonce: msg.nonce,
                sent_ms: now_ms(),
                id: msg.id,
                port: self.http.port(),
                claim: 0,
                state,
                have,
                size: holding.package().size,
            }
        };
        self.counters.answers_sent.fetch_add(1, Ordering::Relaxed);
        self.send(&answer, from).await;
    }

    /// Sends a query (or announcement) to `targets`, within the query rate.
    async fn send_many(&self, msg: &Message, targets: &[SocketAddrV4]) -> usize {
        let mut sent = 0;
        for &to in targets {
            let allowed = self.state().queries.try_take(Instant::now());
            if !allowed {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.send(msg, to).await;
            sent += 1;
        }
        sent
    }

    fn group_targets(&self) -> Vec<SocketAddrV4> {
        let port = self.cfg.discovery_port;
        self.cfg.group.iter().chain(self.cfg.broadcast.iter()).map(|ip| SocketAddrV4::new(*ip, port)).collect()
    }

    fn known(&self) -> Vec<SocketAddrV4> {
        self.state().known.iter().copied().collect()
    }

    /// One discovery: multicast/broadcast first, unicast polls when they got no answer.
    async fn ask(&self, id: PackageId, claim: u64) -> Round {
        let nonce = {
            let mut st = self.state();
            st.rng.gen::<u64>()
        };
        self.remember_own(nonce);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut events = self.events.subscribe();
        let mut round = Round::default();
        {
            let mut st = self.state();
            st.waiters.insert(nonce, tx);
            let now = Instant::now();
            for (t, h) in &st.recent {
                if now.duration_since(*t) <= RECENT_WINDOW {
                    round.hear(&id, h);
                }
            }
        }
        let msg = self.request_datagram(Kind::Query, nonce, id, claim, 0);
        let phases: [Vec<SocketAddrV4>; 2] = [self.group_targets(), Vec::new()];
        for (i, mut targets) in phases.into_iter().enumerate() {
            if i == 1 {
                if !round.offers.is_empty() {
                    break;
                }
                targets = self.known();
            }
            if targets.is_empty() {
                continue;
            }
            let sent = self.send_many(&msg, &targets).await;
            self.counters.queries_sent.fetch_add(sent as u64, Ordering::Relaxed);
            let deadline = tokio::time::Instant::now() + self.cfg.query_wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    got = rx.recv() => {
                        let Some((m, from)) = got else { break };
                        let addr = SocketAddrV4::new(*from.ip(), m.port);
                        if m.id == id
                            && m.state != HaveState::None
                            && round.offers.len() < MAX_OFFERS_PER_ROUND
                            && !round.offers.iter().any(|o| o.addr == addr)
                        {
                            round.offers.push(Offer {
                                addr,
                                complete: m.state == HaveState::Complete,
                                have: m.have,
                                size: m.size,
                            });
                        }
                    }
                    heard = events.recv() => {
                        if let Ok(h) = heard {
                            round.hear(&id, &h);
                        }
                    }
                }
            }
        }
        self.state().waiters.remove(&nonce);
        round
    }

    /// A query or an announcement of this member's, sent now.
    fn request_datagram(&self, kind: Kind, nonce: u64, id: PackageId, claim: u64, size: u64) -> Message {
        Message { kind, nonce, sent_ms: now_ms(), id, port: self.http.port(), claim, state: HaveState::None, have: 0, size }
    }

    async fn announce(&self, id: PackageId, size: u64, claim: u64) {
        let nonce = self.state().rng.gen::<u64>();
        self.remember_own(nonce);
        let msg = self.request_datagram(Kind::Announce, nonce, id, claim, size);
        let mut targets = self.group_targets();
        targets.extend(self.known());
        self.send_many(&msg, &targets).await;
    }

    /// Waits for an announcement of `id` by another peer.
    async fn wait_announce(&self, id: PackageId, wait: Duration) -> Option<SocketAddrV4> {
        let mut events = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return None,
                Ok(Ok(Heard::Announce { id: got, from, .. })) if got == id => return Some(from),
                Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
    }

    /// After announcing with `mine`: waits `wait` for (or recalls) an announcement of `id` with
    /// a lower claim, and returns its sender.
    async fn crossing_announcement(&self, id: PackageId, mine: (u64, SocketAddrV4), wait: Duration) -> Option<SocketAddrV4> {
        let lower = |h: &Heard| match h {
            Heard::Announce { id: got, claim, from } if *got == id && *from != mine.1 && !wins_election(mine, &[(*claim, *from)]) => Some(*from),
            _ => None,
        };
        let mut events = self.events.subscribe();
        {
            let now = Instant::now();
            let st = self.state();
            if let Some(from) = st.recent.iter().filter(|(t, _)| now.duration_since(*t) <= RECENT_WINDOW).find_map(|(_, h)| lower(h)) {
                return Some(from);
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Ok(Ok(h)) => {
                    if let Some(from) = lower(&h) {
                        return Some(from);
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            }
        }
    }

    fn is_bad(&self, addr: SocketAddrV4) -> bool {
        self.state().bad.is_bad(addr, Instant::now())
    }

    /// Obtains `package` into `dest`: from peers when any can serve, else from `origin`. The
    /// file appears at `dest` only with the origin's SHA-256.
    pub async fn obtain(self: &Arc<Self>, package: Package, dest: &Path, origin: &dyn Origin) -> Result<Obtained, PeerError> {
        let id = package.id();
        let entry = Obtaining::enter(self, package.sha256);
        let _one_at_a_time = entry.lock.lock().await;
        self.state().list.describe(package);
        if let Some(Holding::Complete { path, .. }) = self.holding(&id) {
            if path == dest || link_or_copy(&path, dest).is_ok() {
                self.counters.lookup(Outcome::Local);
                if path == dest {
                    // Held already, and reported when it was shared; the main's list may have
                    // let the entry go since.
                    self.report_later(package);
                } else {
                    self.share(dest, package);
                }
                return Ok(Obtained { outcome: Outcome::Local, from_peers: 0, from_origin: 0, bad_peers: Vec::new(), busy: 0 });
            }
        }
        let mut sink = Sink::new(dest, package, self)?;
        let mut report = Obtained { outcome: Outcome::Failed, from_peers: 0, from_origin: 0, bad_peers: Vec::new(), busy: 0 };
        let result = self.obtain_into(&mut sink, origin, &mut report).await;
        match result {
            Ok(outcome) => {
                report.outcome = outcome;
                // The verified file was shared (and so reported to the main's list) when it
                // was moved into place.
                self.counters.lookup(outcome);
                Ok(report)
            }
            Err(e) => {
                // Dropping the sink stops serving it and removes its file.
                self.counters.lookup(Outcome::Failed);
                Err(e)
            }
        }
    }

    async fn obtain_into(self: &Arc<Self>, sink: &mut Sink, origin: &dyn Origin, report: &mut Obtained) -> Result<Outcome, PeerError> {
        let id = sink.package.id();
        let claim = self.state().rng.gen::<u64>();
        // 1. Our own list.
        let own = {
            let now = Instant::now();
            let st = self.state();
            st.list.candidates(&id, |a| st.bad.is_bad(a, now) || a == self.http)
        };
        if self.try_peers(sink, &own, report).await? == Tried::Done {
            return Ok(Outcome::OwnList);
        }
        // 2. The main's list.
        if let Some(list) = self.cfg.list {
            let listed = api::lookup(list, &id).await;
            let mut cands = Vec::new();
            for addr in listed {
                if addr != self.http && !self.is_bad(addr) {
                    let draw = self.state().rng.gen::<f64>();
                    self.state().list.learn(&id, addr, draw);
                    cands.push(addr);
                }
            }
            if self.try_peers(sink, &cands, report).await? == Tried::Done {
                return Ok(Outcome::MainList);
            }
        }
        // 3. Ask the peers.
        let mut deferred = false;
        // Whether any peer offered the package (or answered busy) in some round: then it is
        // on the LAN, and the origin is used only once every round has failed.
        let mut seen_holders = false;
        for _ in 0..MAX_LOOKUP_ROUNDS {
            let round = self.ask(id, claim).await;
            seen_holders |= !round.offers.is_empty();
            for offer in &round.offers {
                let draw = self.state().rng.gen::<f64>();
                self.state().list.learn(&id, offer.addr, draw);
            }
            let ranked = {
                let now = Instant::now();
                let st = self.state();
                let offers: Vec<Offer> = round.offers.iter().filter(|o| o.size == sink.package.size).cloned().collect();
                rank_offers(&offers, |a| rate_of(&st.list, &id, a), |a| st.bad.is_bad(a, now) || a == self.http)
            };
            match self.try_peers(sink, &ranked, report).await? {
                Tried::Done => return Ok(Outcome::Discovered),
                Tried::Busy(wait) => {
                    // Every holder is busy: ask again once the first says it may have a slot.
                    seen_holders = true;
                    tokio::time::sleep(wait.min(MAX_BUSY_WAIT)).await;
                    continue;
                }
                Tried::Nothing => {}
            }
            let announcers: Vec<SocketAddrV4> = round.announcers.iter().copied().filter(|a| *a != self.http && !self.is_bad(*a)).collect();
            if self.try_peers(sink, &announcers, report).await? == Tried::Done {
                return Ok(Outcome::Announced);
            }
            if !deferred && !wins_election((claim, self.http), &round.claims) {
                deferred = true;
                tracing::debug!(%id, "another requester will fetch it; waiting for its announcement");
                if let Some(from) = self.wait_announce(id, ELECTION_WAIT).await {
                    if self.try_peers(sink, &[from], report).await? == Tried::Done {
                        return Ok(Outcome::Announced);
                    }
                }
                continue;
            }
            if seen_holders {
                tracing::debug!(%id, "holders are on the LAN but none served this round; asking again");
                tokio::time::sleep(HOLDER_RETRY_WAIT).await;
                continue;
            }
            break;
        }
        // 4. Announce, then the origin — unless another requester that nobody heard in time
        //    announced too: of two crossing announcements the lower claim fetches, the other
        //    defers to it. The download is servable from the announcement on, so a requester
        //    that started too late to hear it still finds this member by its query (and one
        //    whose query came too early to be heard here streams from it all the same).
        self.announce(id, sink.package.size, claim).await;
        self.register(sink);
        if let Some(from) = self.crossing_announcement(id, (claim, self.http), self.cfg.query_wait).await {
            tracing::debug!(%id, %from, "another requester announced with a lower claim; fetching from it");
            if self.try_peers(sink, &[from], report).await? == Tried::Done {
                return Ok(Outcome::Announced);
            }
        }
        self.fetch_origin(sink, origin, report).await?;
        Ok(Outcome::Origin)
    }

    /// Tries peers in order until the package is complete and verified.
    async fn try_peers(&self, sink: &mut Sink, candidates: &[SocketAddrV4], report: &mut Obtained) -> Result<Tried, PeerError> {
        let mut busy: Option<Duration> = None;
        for &peer in candidates {
            if self.is_bad(peer) {
                continue;
            }
            let target = format!("{}{}", serve::PATH_PREFIX, sink.package.id());
            let started = Instant::now();
            let got = match transfer::get(SocketAddr::V4(peer), &peer.to_string(), &target, sink.offset).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "peer unreachable");
                    continue;
                }
            };
            let (mut body, start) = match got {
                Got::Body { body, start, total, .. } if total == sink.package.size && start <= sink.offset => (body, start),
                Got::Body { total, .. } => {
                    tracing::debug!(%peer, total, "peer offered another size or range");
                    continue;
                }
                Got::Status { status: 503, retry_after } => {
                    let wait = retry_after.unwrap_or(Duration::from_secs(serve::BUSY_RETRY_AFTER_SECS));
                    busy = Some(busy.map_or(wait, |b| b.min(wait)));
                    report.busy += 1;
                    self.counters.busy_received.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "peer busy; next candidate");
                    continue;
                }
                Got::Status { status, .. } => {
                    if status == 404 {
                        self.state().list.forget(&sink.package.id(), peer);
                    }
                    continue;
                }
            };
            if let Err(e) = body.skip(sink.offset - start).await {
                tracing::debug!(%peer, error = %e, "peer body failed");
                continue;
            }
            let before = sink.offset;
            let copied = self.pump(sink, &mut body, Source::Peer(peer)).await;
            report.from_peers += sink.offset - before;
            self.state().list.record_throughput(&sink.package.id(), peer, sink.offset - before, started.elapsed());
            if let Err(e) = copied {
                if sink.single_source {
                    tracing::debug!(%peer, error = %e, at = sink.offset, "peer transfer broke off; starting over from the next (one source only)");
                    sink.restart()?;
                } else {
                    tracing::debug!(%peer, error = %e, at = sink.offset, "peer transfer broke off; continuing elsewhere");
                }
                continue;
            }
            if self.verify(sink, report)? {
                return Ok(Tried::Done);
            }
        }
        Ok(busy.map_or(Tried::Nothing, Tried::Busy))
    }

    /// Whether the complete sink verified. On a mismatch the sink starts over; the peer is
    /// marked bad and avoided when it was the only peer that contributed (the origin is
    /// trusted). When several did, nobody can be blamed — one liar could have made honest
    /// peers look bad by breaking off after a wrong byte — so nobody is marked and the package
    /// is fetched again from one source alone, which is then accountable.
    fn verify(&self, sink: &mut Sink, report: &mut Obtained) -> Result<bool, PeerError> {
        if sink.offset < sink.package.size {
            return Ok(false);
        }
        let got = sink.digest();
        if got == sink.package.sha256 {
            sink.commit(self)?;
            return Ok(true);
        }
        let peers: Vec<SocketAddrV4> = sink.sources.iter().filter_map(|s| if let Source::Peer(p) = s { Some(*p) } else { None }).collect();
        match peers.as_slice() {
            [] => {
                return Err(PeerError::OriginDigest {
                    origin: "the origin".to_owned(),
                    expected: sha256_hex(&sink.package.sha256),
                    got: sha256_hex(&got),
                })
            }
            [liar] => {
                tracing::warn!(expected = %sha256_hex(&sink.package.sha256), got = %sha256_hex(&got), peer = %liar, "received bytes do not match the origin's digest; avoiding the peer");
                {
                    let mut st = self.state();
                    st.bad.mark(*liar, Instant::now());
                    st.list.forget(&sink.package.id(), *liar);
                }
                self.counters.bad_peers.fetch_add(1, Ordering::Relaxed);
                report.bad_peers.push(*liar);
                sink.restart()?;
            }
            several => {
                tracing::warn!(expected = %sha256_hex(&sink.package.sha256), got = %sha256_hex(&got), peers = ?several, "received bytes do not match the origin's digest; fetching again from one source at a time");
                sink.restart()?;
                sink.single_source = true;
            }
        }
        Ok(false)
    }

    async fn fetch_origin(&self, sink: &mut Sink, origin: &dyn Origin, report: &mut Obtained) -> Result<(), PeerError> {
        let mut last = None;
        for _ in 0..ORIGIN_ATTEMPTS * 2 {
            let mut body = match origin.open(sink.offset).await {
                Ok(b) => b,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let before = sink.offset;
            let copied = self.pump(sink, body.as_mut(), Source::Origin).await;
            report.from_origin += sink.offset - before;
            if let Err(e) = copied {
                tracing::debug!(origin = origin.describe(), error = %e, at = sink.offset, "origin transfer broke off");
                last = Some(e);
                continue;
            }
            match self.verify(sink, report) {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    // Peers' bytes spoiled it: fetch the whole package from the origin again.
                    self.register(sink);
                    continue;
                }
                Err(PeerError::OriginDigest { expected, got, .. }) => {
                    return Err(PeerError::OriginDigest { origin: origin.describe(), expected, got })
                }
                Err(e) => return Err(e),
            }
        }
        Err(PeerError::Origin {
            origin: origin.describe(),
            source: last.unwrap_or_else(|| io::Error::other("the origin sent less than the package")),
        })
    }

    /// Copies a body into the sink, publishing progress; registers the download for serving
    /// once the first bytes are in.
    async fn pump(&self, sink: &mut Sink, body: &mut (dyn BodyStream + '_), source: Source) -> io::Result<()> {
        let mut buf = vec![0u8; COPY_CHUNK_BYTES];
        if !sink.sources.contains(&source) {
            sink.sources.push(source);
        }
        let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
        while sink.offset < sink.package.size {
            let want = usize::try_from(sink.package.size - sink.offset).unwrap_or(usize::MAX).min(buf.len());
            let n = body.read(&mut buf[..want]).await?;
            if matches!(source, Source::Peer(_)) {
                window_bytes += n as u64;
                if window_start.elapsed() >= PEER_RATE_WINDOW {
                    if window_bytes < PEER_MIN_BYTES {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the peer sent {window_bytes} bytes in {PEER_RATE_WINDOW:?}, less than {PEER_MIN_BYTES}"),
                        ));
                    }
                    (window_start, window_bytes) = (Instant::now(), 0);
                }
            }
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the body ended before the package did"));
            }
            sink.write(&buf[..n]).await?;
            match source {
                Source::Peer(_) => self.counters.from_peers.fetch_add(n as u64, Ordering::Relaxed),
                Source::Origin => self.counters.from_origin.fetch_add(n as u64, Ordering::Relaxed),
            };
            if !sink.registered {
                self.register(sink);
            }
        }
        Ok(())
    }

    /// Makes the download servable.
    fn register(&self, sink: &mut Sink) {
        sink.registered = true;
        let holding = Holding::Downloading { path: sink.tmp.clone(), package: sink.package, progress: sink.progress.subscribe() };
        let mut st = self.state();
        if let Some(m) = sink.package.md5 {
            st.md5.insert(m, sink.package.sha256);
        }
        if !matches!(st.local.get(&sink.package.sha256), Some(Holding::Complete { .. })) {
            st.local.insert(sink.package.sha256, holding);
        }
    }

    /// Stops serving the download in `tmp` (it failed, or starts over).
    fn unregister(&self, sha256: &Sha256, tmp: &Path) {
        let mut st = self.state();
        if matches!(st.local.get(sha256), Some(Holding::Downloading { path, .. }) if path == tmp) {
            st.local.remove(sha256);
        }
    }

    /// Tells the main's list, from a task of its own, that this member has `package`; does
    /// nothing without a list. At most [`REPORT_CONCURRENCY`] reports run at once, each bounded
    /// by [`api::CALL_TIMEOUT`]; failures are logged at debug and counted.
    fn report_later(&self, package: Package) {
        let Some(list) = self.cfg.list else { return };
        let id = package.id();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(%id, "no runtime to report from; the main's package list is not told");
            return;
        };
        let mut admitted = false;
        self.reports.send_if_modified(|n| {
            admitted = *n < MAX_PENDING_REPORTS;
            if admitted {
                *n += 1;
            }
            admitted
        });
        if !admitted {
            self.counters.reports_skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%id, pending = MAX_PENDING_REPORTS, "too many reports pending; the main's package list is not told");
            return;
        }
        let pending = PendingReport(self.reports.clone());
        let (slots, counters, addr) = (self.report_slots.clone(), self.counters.clone(), self.http);
        runtime.spawn(async move {
            let _pending = pending;
            let Ok(_slot) = slots.acquire_owned().await else { return };
            match api::report(list, &package, addr).await {
                Ok(()) => {
                    counters.reports_sent.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%list, %id, %addr, "reported to the main's package list");
                }
                Err(e) => {
                    counters.reports_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%list, %id, error = %e, "reporting to the main's package list failed");
                }
            }
        });
    }

    /// Waits, at most `within`, until no report to the main's list is queued or running (a
    /// process about to exit calls this so its last shares reach the list). Whether none is.
    pub async fn reports_settled(&self, within: Duration) -> bool {
        let mut rx = self.reports.subscribe();
        let waited = tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// The member's Prometheus families.
    pub fn metrics(&self, out: &mut Exposition) {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        out.family("baton_peer_received_bytes_total", MetricKind::Counter, "Package bytes received, by source.")
            .sample("baton_peer_received_bytes_total", &[("source", "peer")], load(&c.from_peers))
            .sample("baton_peer_received_bytes_total", &[("source", "origin")], load(&c.from_origin));
        out.single("baton_peer_served_bytes_total", MetricKind::Counter, "Package bytes served to other peers.", load(&c.served_bytes));
        out.family("baton_peer_lookups_total", MetricKind::Counter, "Package lookups, by how they ended.");
        for o in Outcome::ALL {
            out.sample("baton_peer_lookups_total", &[("outcome", o.label())], c.lookups(o) as f64);
        }
        out.family("baton_peer_busy_total", MetricKind::Counter, "Busy replies (no free upload slot), sent and received.")
            .sample("baton_peer_busy_total", &[("direction", "sent")], load(&c.busy_sent))
            .sample("baton_peer_busy_total", &[("direction", "received")], load(&c.busy_received));
        out.single("baton_peer_bad_peers_total", MetricKind::Counter, "Peers caught serving bytes that did not match.", load(&c.bad_peers));
        out.family("baton_peer_discovery_total", MetricKind::Counter, "Discovery datagrams, by what happened.")
            .sample("baton_peer_discovery_total", &[("event", "query_sent")], load(&c.queries_sent))
            .sample("baton_peer_discovery_total", &[("event", "answer_sent")], load(&c.answers_sent))
            .sample("baton_peer_discovery_total", &[("event", "rate_limited")], load(&c.rate_limited))
            .sample("baton_peer_discovery_total", &[("event", "invalid")], load(&c.invalid_datagrams))
            .sample("baton_peer_discovery_total", &[("event", "outside")], load(&c.outside_datagrams));
        out.family("baton_peer_list_reports_total", MetricKind::Counter, "Reports to the main's package list, by result.")
            .sample("baton_peer_list_reports_total", &[("result", "sent")], load(&c.reports_sent))
            .sample("baton_peer_list_reports_total", &[("result", "failed")], load(&c.reports_failed))
            .sample("baton_peer_list_reports_total", &[("result", "skipped")], load(&c.reports_skipped));
    }
}

/// One caller of [`Member::obtain`] for a package: the lock that makes concurrent callers for
/// the same package take turns, and the map entry removed when its last caller is done (so the
/// map holds only packages being obtained, not every package ever obtained).
struct Obtaining<'a> {
    member: &'a Member,
    sha256: Sha256,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Obtaining<'a> {
    fn enter(member: &'a Member, sha256: Sha256) -> Self {
        let lock = member.state().obtaining.entry(sha256).or_default().clone();
        Obtaining { member, sha256, lock }
    }
}

impl Drop for Obtaining<'_> {
    fn drop(&mut self) {
        // Clones are made under the state lock, so with it held a count of two (the map's and
        // ours) means no other caller has it or can take it before the entry goes.
        let mut st = self.member.state();
        if Arc::strong_count(&self.lock) == 2 && st.obtaining.get(&self.sha256).is_some_and(|l| Arc::ptr_eq(l, &self.lock)) {
            st.obtaining.remove(&self.sha256);
        }
    }
}

/// Counts one report as pending until dropped (when its task ends, however it ends).
struct PendingReport(Arc<watch::Sender<usize>>);

impl Drop for PendingReport {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn rate_of(list: &PackageList, id: &PackageId, addr: SocketAddrV4) -> f64 {
    list.get(id).map_or(0.0, |e| e.rate(addr))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tried {
    Done,
    /// Some candidate answered busy; the shortest `Retry-After` among them.
    Busy(Duration),
    Nothing,
}

/// What one discovery round learned.
#[derive(Debug, Default)]
struct Round {
    offers: Vec<Offer>,
    claims: Vec<(u64, SocketAddrV4)>,
    announcers: Vec<SocketAddrV4>,
}

impl Round {
    fn hear(&mut self, id: &PackageId, h: &Heard) {
        match h {
            Heard::Query { id: got, claim, from }
                if got == id && self.claims.len() < MAX_HEARD_PER_ROUND && !self.claims.iter().any(|(_, f)| f == from) =>
            {
                self.claims.push((*claim, *from));
            }
            Heard::Announce { id: got, from, .. }
                if got == id && self.announcers.len() < MAX_HEARD_PER_ROUND && !self.announcers.contains(from) =>
            {
                self.announcers.push(*from);
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Peer(SocketAddrV4),
    Origin,
}

/// A package being received: a temporary file beside `dest`, written and hashed in order.
#[derive(Debug)]
struct Sink {
    dest: PathBuf,
    tmp: PathBuf,
    file: Arc<std::fs::File>,
    package: Package,
    offset: u64,
    sha: sha2::Sha256,
    md5: md5::Md5,
    sources: Vec<Source>,
    progress: watch::Sender<Progress>,
    registered: bool,
    /// After a mismatch that several peers contributed to: one source per attempt.
    single_source: bool,
    /// Moved into place; nothing to clean up.
    committed: bool,
    owner: std::sync::Weak<Member>,
}

impl Sink {
    fn new(dest: &Path, package: Package, owner: &Arc<Member>) -> Result<Sink, PeerError> {
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| PeerError::Store { path: dir.to_owned(), source })?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = dir.join(format!("{PARTIAL_PREFIX}peer-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| PeerError::Store { path: tmp.clone(), source })?;
        Ok(Sink {
            dest: dest.to_owned(),
            tmp,
            file: Arc::new(file),
            package,
            offset: 0,
            sha: sha2::Sha256::new(),
            md5: md5::Md5::new(),
            sources: Vec::new(),
            progress: watch::channel(Progress { have: 0, phase: Phase::Running }).0,
            registered: false,
            single_source: false,
            committed: false,
            owner: Arc::downgrade(owner),
        })
    }

    /// Discards what was received and starts over in a new file (the old one is cleaned up
    /// as on drop); `single_source` carries over.
    fn restart(&mut self) -> Result<(), PeerError> {
        let owner = self.owner.upgrade().ok_or_else(|| PeerError::Store { path: self.tmp.clone(), source: io::Error::other("the member is gone") })?;
        let single_source = self.single_source;
        *self = Sink::new(&self.dest, self.package, &owner)?;
        self.single_source = single_source;
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sha.update(bytes);
        self.md5.update(bytes);
        let (file, data, at) = (self.file.clone(), bytes.to_vec(), self.offset);
        tokio::task::spawn_blocking(move || file.write_all_at(&data, at)).await.map_err(io::Error::other)??;
        self.offset += bytes.len() as u64;
        self.progress.send_replace(Progress { have: self.offset, phase: Phase::Running });
        Ok(())
    }

    fn digest(&self) -> Sha256 {
        self.sha.clone().finalize().into()
    }

    /// Syncs and moves the verified file into place; the member now holds it complete.
    fn commit(&mut self, member: &Member) -> Result<(), PeerError> {
        let store = |source| PeerError::Store { path: self.dest.clone(), source };
        self.file.sync_data().map_err(store)?;
        std::fs::rename(&self.tmp, &self.dest).map_err(store)?;
        let md5: [u8; 16] = self.md5.clone().finalize().into();
        let package = Package { md5: Some(md5), ..self.package };
        self.committed = true;
        member.share(&self.dest, package);
        self.progress.send_replace(Progress { have: self.offset, phase: Phase::Done });
        Ok(())
    }
}

/// An unfinished sink — failed, started over, or its `obtain` cancelled — stops being served
/// (those streaming from it see the failure) and its file is removed.
impl Drop for Sink {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        self.progress.send_replace(Progress { have: self.offset, phase: Phase::Failed });
        if let Some(member) = self.owner.upgrade() {
            member.unregister(&self.package.sha256, &self.tmp);
        }
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The subnet of the interface address `addr` on this host, as (network, mask).
fn local_subnet(addr: Ipv4Addr) -> Option<(u32, u32)> {
    let interfaces = nix::ifaddrs::getifaddrs().ok()?;
    for ifa in interfaces {
        let (Some(a), Some(m)) = (ifa.address, ifa.netmask) else { continue };
        let (Some(a), Some(m)) = (a.as_sockaddr_in(), m.as_sockaddr_in()) else { continue };
        if a.ip() == addr {
            let mask = u32::from(m.ip());
            return Some((u32::from(addr) & mask, mask));
        }
    }
    None
}

/// SHA-256, size and MD5 of a file.
pub fn hash_package(path: &Path) -> io::Result<Package> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut sha = sha2::Sha256::new();
    let mut md5 = md5::Md5::new();
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        md5.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Package { sha256: sha.finalize().into(), size, md5: Some(md5.finalize().into()) })
}

/// Puts a copy of `from` at `to` (a hard link when both are on one file system, else a copy
/// into a temporary file beside `to`, renamed into place when complete).
fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    let dir = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!("{PARTIAL_PREFIX}copy-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let made = std::fs::hard_link(from, &tmp).or_else(|_| std::fs::copy(from, &tmp).map(|_| ()));
    let placed = made.and_then(|()| std::fs::rename(&tmp, to));
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed
}

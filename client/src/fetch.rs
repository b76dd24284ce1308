//! The download: discover and check the servers, rank them, run connections that fetch ranges
//! into `<output>.part`, watch every link and drop the ones that fall behind, save the resume
//! state, verify, and only then move the file to its final name.
//!
//! One monitor loop owns every decision (which server gets connections, which link is dropped);
//! workers only fetch what [`Plan::assign`] gives them and commit what they wrote.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_shared::digest::Sha256;
use baton_shared::metalink::PieceHasher;
use tokio::sync::mpsc;
use url::Url;

use crate::discover::{self, Candidate, Target, Verdict, Wanted};
use crate::http::TlsClient;
use crate::plan::{Plan, Progress, Ranges, ServerId, SplitRules, Task};
use crate::progress::Bars;
use crate::source::{Conn, Net, SourceError};
use crate::state::{self, State};
use crate::watch::{self, Link, WatchRules};

/// How often the monitor looks at the links, updates the bars and spawns connections.
const TICK: Duration = Duration::from_millis(100);
/// How often the resume state is saved (after syncing the part file).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Read buffer of one connection.
const READ_BYTES: usize = 256 * 1024;
/// A new request should take about this long at the connection's rate: long enough that the
/// request's round trip is small next to it, short enough that the work spreads evenly.
const TARGET_REQUEST: Duration = Duration::from_secs(2);
/// Bounds of a request's length.
const MIN_CHUNK: u64 = 512 * 1024;
const MAX_CHUNK: u64 = 64 << 20;
/// Request length before a server's rate is known.
const FIRST_CHUNK: u64 = 2 << 20;
/// Consecutive failed requests after which a server is dropped.
const MAX_SERVER_ERRORS: u32 = 3;
/// Rounds of re-fetching pieces that failed their hash before giving up.
const MAX_VERIFY_ROUNDS: u32 = 2;
/// Read size when hashing the finished file.
const HASH_READ_BYTES: usize = 1 << 20;

/// Everything a download needs to know.
#[derive(Debug, Clone)]
pub struct Options {
    pub wanted: Wanted,
    /// The output file; by default the metalink's or URL's file name in the current directory.
    pub output: Option<PathBuf>,
    /// Connections per server.
    pub per_server: usize,
    /// Connections in all.
    pub total: usize,
    pub watch: WatchRules,
    pub split: SplitRules,
    /// Bound on connecting and on any wait for a server.
    pub timeout: Duration,
    pub cacert: Option<PathBuf>,
    /// Replace an existing output file.
    pub force: bool,
    /// Use a matching state file beside the output.
    pub resume: bool,
    /// Draw progress bars.
    pub bars: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            wanted: Wanted {
                mirrors: true,
                ..Wanted::default()
            },
            output: None,
            per_server: 4,
            total: 16,
            watch: WatchRules::default(),
            split: SplitRules::default(),
            timeout: Duration::from_secs(15),
            cacert: None,
            force: false,
            resume: true,
            bars: false,
        }
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Discover(#[from] discover::DiscoverError),
    #[error("{0}")]
    Setup(String),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("no usable server is left; {missing} bytes are missing (rerun to resume)")]
    NoServers { missing: u64 },
    #[error("interrupted; {done} of {size} bytes are saved (rerun to resume)")]
    Interrupted { done: u64, size: u64 },
    #[error("verification failed: {0}; nothing was left under the output name")]
    Verify(String),
}

impl FetchError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            FetchError::Interrupted { .. } => 130,
            FetchError::Verify(_) => 3,
            FetchError::Setup(_) | FetchError::File { .. } => 2,
            _ => 1,
        }
    }
}

/// One server's line in the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerReport {
    pub url: String,
    pub protocol: crate::source::Protocol,
    pub found: discover::Found,
    /// `used`, `dropped`, `unused` (a duplicate not needed), `rejected` (not the same file) or
    /// `unreachable`.
    pub state: &'static str,
    pub check: String,
    pub reason: Option<String>,
    pub rtt_ms: Option<f64>,
    pub bytes: u64,
    /// Mean rate while it had work, bytes per second.
    pub rate: Option<f64>,
}

/// What happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub output: PathBuf,
    pub size: u64,
    pub sha256: Option<String>,
    /// `sha-256`, `pieces+sha-256`, `pieces` or `none`.
    pub verified: &'static str,
    pub seconds: f64,
    /// Bytes that were already on disk from an earlier run.
    pub resumed: u64,
    /// Bytes received from servers in this run (duplicates included).
    pub received: u64,
    /// Received bytes that were not needed (endgame duplicates, overlaps).
    pub wasted: u64,
    /// New bytes per second of this run.
    pub rate: f64,
    pub servers: Vec<ServerReport>,
    pub dropped: Vec<String>,
}

/// One server during the download.
struct Server {
    cand: Candidate,
    bytes: Arc<AtomicU64>,
    link: Link,
    conns: usize,
    errors: u32,
    dropped: Option<String>,
    busy_time: Duration,
    bar: usize,
}

/// What a worker tells the monitor when it ends.
struct Ended {
    server: ServerId,
    result: Result<(), SourceError>,
}

/// Shared between the monitor and the workers.
struct Shared {
    plan: Mutex<Plan>,
    file: std::fs::File,
    size: u64,
    net: Net,
    /// Each server's latest rate (bytes/s, as f64 bits) and request length.
    rates: Vec<AtomicU64>,
    chunks: Vec<AtomicU64>,
}

impl Shared {
    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rate(&self, s: ServerId) -> f64 {
        self.rates
            .get(s)
            .map_or(0.0, |r| f64::from_bits(r.load(Ordering::Relaxed)))
    }

    /// A task for an idle connection of `server`.
    fn assign(&self, server: ServerId) -> Option<Task> {
        let chunk = self
            .chunks
            .get(server)
            .map_or(FIRST_CHUNK, |c| c.load(Ordering::Relaxed));
        let own = self.rate(server);
        self.plan().assign(server, chunk, |t| {
            // Duplicate the task expected to finish last, unless this server is much slower
            // than its holder.
            let holder = self.rate(t.server);
            if own > 0.0 && holder > 0.0 && own < holder / 4.0 {
                return None;
            }
            let eta_ms = t.remaining() as f64 / holder.max(1.0) * 1000.0;
            Some(eta_ms.min(i64::MAX as f64) as i64)
        })
    }
}

/// Fetches the file. `cancel` turning true stops the download and saves the state.
pub async fn run(opts: &Options, mut cancel: tokio::sync::watch::Receiver<bool>) -> Result<Summary, FetchError> {
    let started = Instant::now();
    let tls = TlsClient::new(opts.cacert.as_deref()).map_err(|e| FetchError::Setup(e.to_string()))?;
    let net = Net {
        tls,
        timeout: opts.timeout,
    };
    let (target, cands) = discover::discover(&opts.wanted, &net).await?;
    for c in &cands {
        match &c.verdict {
            Verdict::Rejected(_) | Verdict::Unreachable(_) => {
                tracing::warn!(url = %c.url, "left out: {}", discover::verdict_text(&c.verdict))
            }
            v => {
                tracing::info!(url = %c.url, rtt_ms = c.rtt.map(|d| d.as_secs_f64() * 1000.0), "{}", discover::verdict_text(v))
            }
        }
    }
    let output = output_path(opts, &target)?;
    let (part, state_path) = state::paths(&output);
    if output.exists() && !opts.force {
        return Err(FetchError::Setup(format!(
            "{} exists (use --force to replace it)",
            output.display()
        )));
    }
    let identity = State::new(
        target.size,
        target.sha256.as_ref().map(hex::encode),
        target.etag.clone(),
        target.last_modified.clone(),
        &Ranges::new(),
    );
    let mut done = Ranges::new();
    if opts.resume && part.exists() {
        if let Some(old) = state::load(&state_path)? {
            if old.same_file(&identity) {
                done = old.ranges();
            } else {
                tracing::warn!(state = %state_path.display(), "the saved state is for another file; starting over");
            }
        }
    }
    let resumed = done.total();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(resumed == 0)
        .open(&part)
        .map_err(|source| FetchError::File {
            path: part.clone(),
            source,
        })?;
    file.set_len(target.size).map_err(|source| FetchError::File {
        path: part.clone(),
        source,
    })?;
    if resumed > 0 {
        tracing::info!(bytes = resumed, "resuming");
    }

    // Servers in rank order: the reference first, then by probe time.
    let mut usable: Vec<Candidate> = cands.iter().filter(|c| c.usable()).cloned().collect();
    usable.sort_by_key(|c| (c.verdict != Verdict::Reference, c.rtt.unwrap_or(Duration::MAX)));
    let mut bars = Bars::new(target.size, resumed, opts.bars);
    let mut servers: Vec<Server> = usable
        .into_iter()
        .map(|cand| {
            let bar = bars.add_server(cand.url.as_str());
            Server {
                cand,
                bytes: Arc::new(AtomicU64::new(0)),
                link: Link::default(),
                conns: 0,
                errors: 0,
                dropped: None,
                busy_time: Duration::ZERO,
                bar,
            }
        })
        .collect();
    let shared = Arc::new(Shared {
        plan: Mutex::new(Plan::new(target.size, done, opts.split)),
        file,
        size: target.size,
        net,
        rates: servers.iter().map(|_| AtomicU64::new(0f64.to_bits())).collect(),
        chunks: servers.iter().map(|_| AtomicU64::new(FIRST_CHUNK)).collect(),
    });

    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<Ended>();
    let mut workers = tokio::task::JoinSet::new();
    let mut handles: Vec<Vec<tokio::task::AbortHandle>> = servers.iter().map(|_| Vec::new()).collect();
    let mut dropped_log = Vec::new();
    let mut last_save = Instant::now();
    let mut rounds = 0;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let outcome: Result<&'static str, FetchError> = loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(e) = ended_rx.recv() => {
                let s = &mut servers[e.server];
                s.conns = s.conns.saturating_sub(1);
                match e.result {
                    Ok(()) => s.errors = 0,
                    Err(err) => {
                        s.errors += 1;
                        tracing::info!(server = %s.cand.url, error = %err, "request failed");
                        if s.errors >= MAX_SERVER_ERRORS && s.dropped.is_none() {
                            let why = format!("failed {} times: {err}", s.errors);
                            drop_server(&shared, &mut servers, e.server, why, &mut handles, &mut dropped_log);
                        }
                    }
                }
                continue;
            }
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() {
                    workers.abort_all();
                    break Err(FetchError::Interrupted { done: 0, size: target.size });
                }
            }
        }
        while workers.try_join_next().is_some() {}
        let now = Instant::now();

        // Links: rates, stalls, slowness.
        let busy: Vec<bool> = {
            let plan = shared.plan();
            (0..servers.len())
                .map(|i| plan.tasks().any(|t| t.server == i))
                .collect()
        };
        for (i, s) in servers.iter_mut().enumerate() {
            s.link
                .sample(now, s.bytes.load(Ordering::Relaxed), busy[i] && s.dropped.is_none());
            if busy[i] {
                s.busy_time += TICK;
            }
        }
        let live: Vec<usize> = (0..servers.len()).filter(|&i| servers[i].dropped.is_none()).collect();
        let drops = {
            let mut links: Vec<&mut Link> = Vec::new();
            for (i, s) in servers.iter_mut().enumerate() {
                if live.contains(&i) {
                    links.push(&mut s.link);
                }
            }
            watch::judge(&mut links, now, &opts.watch)
        };
        for (k, why) in drops {
            let i = live[k];
            // Never drop the last server: a slow link is better than none.
            if servers.iter().filter(|s| s.dropped.is_none()).count() > 1 {
                drop_server(
                    &shared,
                    &mut servers,
                    i,
                    why.to_string(),
                    &mut handles,
                    &mut dropped_log,
                );
            }
        }
        for (i, s) in servers.iter().enumerate() {
            if let Some(r) = s.link.rate {
                shared.rates[i].store(r.to_bits(), Ordering::Relaxed);
                let per_conn = r / s.conns.max(1) as f64;
                let chunk = ((per_conn * TARGET_REQUEST.as_secs_f64()) as u64).clamp(MIN_CHUNK, MAX_CHUNK);
                shared.chunks[i].store(chunk, Ordering::Relaxed);
            }
        }

        // Completion and verification.
        let (complete, done_bytes) = {
            let plan = shared.plan();
            (plan.is_complete(), plan.done_bytes())
        };
        bars.total(done_bytes);
        for s in &servers {
            let msg = match (&s.dropped, s.link.rate) {
                (Some(why), _) => format!("dropped ({why})"),
                (None, Some(r)) if s.conns > 0 => format!("{} conns {}", s.conns, watch::human_rate(r)),
                (None, _) => format!("{} conns", s.conns),
            };
            bars.server(s.bar, s.bytes.load(Ordering::Relaxed), &msg);
        }
        if complete {
            workers.abort_all();
            let check = {
                let shared = shared.clone();
                let target = target.clone();
                tokio::task::spawn_blocking(move || check_file(&shared.file, &target)).await
            };
            let check = match check {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    break Err(FetchError::File {
                        path: part.clone(),
                        source: e,
                    })
                }
                Err(e) => break Err(FetchError::Setup(format!("hashing failed: {e}"))),
            };
            if !check.bad_pieces.is_empty() && rounds < MAX_VERIFY_ROUNDS {
                rounds += 1;
                tracing::warn!(
                    pieces = check.bad_pieces.len(),
                    "pieces failed their hash; fetching them again"
                );
                let mut plan = shared.plan();
                for (s, e) in &check.bad_pieces {
                    plan.undo(*s, *e);
                }
                continue;
            }
            if !check.bad_pieces.is_empty() {
                break Err(FetchError::Verify(format!(
                    "{} pieces still fail their hash",
                    check.bad_pieces.len()
                )));
            }
            if let Some(want) = target.sha256 {
                let got = check.sha256;
                if want != got {
                    break Err(FetchError::Verify(format!(
                        "SHA-256 is {}, expected {}",
                        hex::encode(got),
                        hex::encode(want)
                    )));
                }
            }
            break Ok(match (target.pieces.is_some(), target.sha256.is_some()) {
                (true, true) => "pieces+sha-256",
                (true, false) => "pieces",
                (false, true) => "sha-256",
                (false, false) => "none",
            });
        }

        // Connections: servers in rank order (measured rate, then probe time) up to the limits.
        let mut order: Vec<usize> = (0..servers.len()).filter(|&i| servers[i].dropped.is_none()).collect();
        if order.is_empty() {
            break Err(FetchError::NoServers {
                missing: target.size - done_bytes,
            });
        }
        order.sort_by(|&a, &b| {
            let (ra, rb) = (
                servers[a].link.rate.unwrap_or(f64::MAX),
                servers[b].link.rate.unwrap_or(f64::MAX),
            );
            rb.total_cmp(&ra).then(servers[a].cand.rtt.cmp(&servers[b].cand.rtt))
        });
        let mut running: usize = servers.iter().map(|s| s.conns).sum();
        for i in order {
            while servers[i].conns < opts.per_server && running < opts.total {
                let Some(task) = shared.assign(i) else { break };
                let s = &mut servers[i];
                s.conns += 1;
                running += 1;
                let (shared, bytes, url, tx) = (shared.clone(), s.bytes.clone(), s.cand.url.clone(), ended_tx.clone());
                let handle = workers.spawn(async move {
                    let result = worker(&shared, i, &url, task, &bytes).await;
                    let _ = tx.send(Ended { server: i, result });
                });
                handles[i].retain(|h| !h.is_finished());
                handles[i].push(handle);
            }
        }

        if last_save.elapsed() >= SAVE_EVERY {
            last_save = Instant::now();
            save_state(&shared, &identity, &state_path)?;
        }
    };

    workers.abort_all();
    while workers.join_next().await.is_some() {}
    bars.finish();
    let done_bytes = shared.plan().done_bytes();
    let verified = match outcome {
        Ok(v) => v,
        Err(FetchError::Interrupted { size, .. }) => {
            save_state(&shared, &identity, &state_path)?;
            return Err(FetchError::Interrupted { done: done_bytes, size });
        }
        Err(e @ FetchError::Verify(_)) => {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&state_path);
            return Err(e);
        }
        Err(e) => {
            let _ = save_state(&shared, &identity, &state_path);
            return Err(e);
        }
    };
    shared.file.sync_all().map_err(|source| FetchError::File {
        path: part.clone(),
        source,
    })?;
    std::fs::rename(&part, &output).map_err(|source| FetchError::File {
        path: output.clone(),
        source,
    })?;
    let _ = std::fs::remove_file(&state_path);

    let seconds = started.elapsed().as_secs_f64();
    let received: u64 = servers.iter().map(|s| s.bytes.load(Ordering::Relaxed)).sum();
    let fetched_new = target.size - resumed;
    let mut reports: Vec<ServerReport> = servers
        .iter()
        .map(|s| {
            let bytes = s.bytes.load(Ordering::Relaxed);
            ServerReport {
                url: s.cand.url.to_string(),
                protocol: s.cand.protocol,
                found: s.cand.found,
                state: if s.dropped.is_some() {
                    "dropped"
                } else if bytes > 0 {
                    "used"
                } else {
                    "unused"
                },
                check: discover::verdict_text(&s.cand.verdict),
                reason: s.dropped.clone(),
                rtt_ms: s.cand.rtt.map(|d| d.as_secs_f64() * 1000.0),
                bytes,
                rate: (s.busy_time > Duration::ZERO).then(|| bytes as f64 / s.busy_time.as_secs_f64()),
            }
        })
        .collect();
    for c in cands.iter().filter(|c| !c.usable()) {
        reports.push(ServerReport {
            url: c.url.to_string(),
            protocol: c.protocol,
            found: c.found,
            state: if matches!(c.verdict, Verdict::Rejected(_)) {
                "rejected"
            } else {
                "unreachable"
            },
            check: discover::verdict_text(&c.verdict),
            reason: match &c.verdict {
                Verdict::Rejected(w) | Verdict::Unreachable(w) => Some(w.clone()),
                _ => None,
            },
            rtt_ms: c.rtt.map(|d| d.as_secs_f64() * 1000.0),
            bytes: 0,
            rate: None,
        });
    }
    Ok(Summary {
        output,
        size: target.size,
        sha256: target.sha256.as_ref().map(hex::encode),
        verified,
        seconds,
        resumed,
        received,
        wasted: received.saturating_sub(fetched_new),
        rate: fetched_new as f64 / seconds.max(1e-9),
        servers: reports,
        dropped: dropped_log,
    })
}

fn drop_server(
    shared: &Shared,
    servers: &mut [Server],
    i: ServerId,
    why: String,
    handles: &mut [Vec<tokio::task::AbortHandle>],
    log: &mut Vec<String>,
) {
    let s = &mut servers[i];
    if s.dropped.is_some() {
        return;
    }
    let at: Vec<u64> = shared.plan().tasks().filter(|t| t.server == i).map(|t| t.pos).collect();
    tracing::warn!(server = %s.cand.url, reason = why.as_str(), resume_at = ?at, "dropping the link; its ranges continue elsewhere");
    log.push(format!("{}: {why}", s.cand.url));
    s.dropped = Some(why);
    shared.plan().drop_server(i);
    // Its connections end now, also one blocked in a read on a stalled link.
    for h in handles.get_mut(i).map(std::mem::take).unwrap_or_default() {
        h.abort();
    }
    s.conns = 0;
    s.link.sample(Instant::now(), 0, false);
}

/// Syncs the part file, then saves which bytes it holds.
fn save_state(shared: &Shared, identity: &State, path: &Path) -> Result<(), FetchError> {
    let done = shared.plan().done().clone();
    shared.file.sync_data().map_err(|source| FetchError::File {
        path: path.to_owned(),
        source,
    })?;
    let mut st = identity.clone();
    st.done = done.as_slice().to_vec();
    state::save(path, &st)?;
    Ok(())
}

/// Fetches tasks for one connection until there is no work or the server fails.
async fn worker(
    shared: &Shared,
    server: ServerId,
    url: &Url,
    first: Task,
    bytes: &AtomicU64,
) -> Result<(), SourceError> {
    let mut conn: Option<Conn> = None;
    let mut task = Some(first);
    let mut buf = vec![0u8; READ_BYTES];
    while let Some(t) = task.take() {
        let result = fetch_task(shared, url, &t, &mut conn, &mut buf, bytes).await;
        shared.plan().release(t.id);
        result?;
        task = shared.assign(server);
    }
    if let Some(Conn::Ftp { session, .. }) = conn {
        session.quit().await;
    }
    Ok(())
}

async fn fetch_task(
    shared: &Shared,
    url: &Url,
    t: &Task,
    conn: &mut Option<Conn>,
    buf: &mut [u8],
    bytes: &AtomicU64,
) -> Result<(), SourceError> {
    let net = &shared.net;
    if !conn.as_ref().is_some_and(|c| c.reusable(url)) {
        *conn = Some(Conn::open(url, net).await?);
    }
    let Some(c) = conn.as_mut() else { return Ok(()) };
    if let Err(e) = c.start(url, t.start, t.end, shared.size, net).await {
        *conn = None;
        return Err(e);
    }
    let mut at = t.start;
    let stop = loop {
        let n = match tokio::time::timeout(net.timeout, c.read(buf)).await {
            Err(_) => break Err(SourceError::Timeout("waiting for data")),
            Ok(Err(e)) => break Err(e),
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => n,
        };
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        let window = shared.plan().window(t.id, at, n as u64);
        let Some((skip, len)) = window else { break Ok(()) };
        if len > 0 {
            let (skip, len) = (skip as usize, len as usize);
            if let Err(e) = shared.file.write_all_at(&buf[skip..skip + len], at + skip as u64) {
                break Err(SourceError::Refused(format!("writing the file: {e}")));
            }
            match shared.plan().commit(t.id, at + skip as u64, len as u64) {
                Progress::Continue { end } if at + n as u64 >= end => break Ok(()),
                Progress::Continue { .. } => {}
                Progress::Finished | Progress::Gone => break Ok(()),
            }
        }
        at += n as u64;
    };
    let reusable = stop.is_ok() && c.end(net).await;
    if !reusable {
        *conn = None;
    }
    stop
}

/// The result of hashing the finished file.
struct Check {
    sha256: Sha256,
    bad_pieces: Vec<(u64, u64)>,
}

fn check_file(file: &std::fs::File, target: &Target) -> std::io::Result<Check> {
    // Without a piece list the whole file is one piece: only its digest is used.
    let piece_len = target.pieces.as_ref().map_or(target.size, |p| p.length).max(1);
    let mut hasher = PieceHasher::new(piece_len);
    let mut buf = vec![0u8; HASH_READ_BYTES];
    let mut at = 0u64;
    while at < target.size {
        let want = (target.size - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..want], at)?;
        hasher.update(&buf[..want]);
        at += want as u64;
    }
    let (whole, pieces) = hasher.finish();
    let bad_pieces = match &target.pieces {
        None => Vec::new(),
        Some(p) => (0u64..)
            .zip(&pieces)
            .filter(|&(i, got)| p.sha256.get(i as usize) != Some(got))
            .map(|(i, _)| (i * piece_len, ((i + 1) * piece_len).min(target.size)))
            .collect(),
    };
    Ok(Check { sha256: whole, bad_pieces })
}

pub(crate) fn output_path(opts: &Options, target: &Target) -> Result<PathBuf, FetchError> {
    if let Some(o) = &opts.output {
        return Ok(o.clone());
    }
    let name = target.name.clone().unwrap_or_default();
    let name = name.rsplit('/').next().unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." || name.contains('\\') || name.chars().any(char::is_control) {
        return Err(FetchError::Setup(
            "no usable file name in the URL or metalink; give one with -o".into(),
        ));
    }
    Ok(PathBuf::from(name))
}

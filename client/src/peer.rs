//! `baton-fetch --peer`: the file through the LAN peer cache. The primary is probed as usual
//! (size, and the SHA-256 it publishes or `--sha256`); then peers on the LAN are asked first, and
//! the origin is used only when none can serve. While it runs, and for `--peer-linger` after,
//! this process serves what it has to other peers — the file being downloaded included.
//!
//! Peer mode never writes a file under the output name whose SHA-256 differs from the origin's,
//! and refuses to start without that digest.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_io::peer::transfer::{BodyStream, BoxFuture, Origin};
use baton_io::peer::{Member, Obtained, PeerConfig};
use baton_shared::digest::sha256_hex;
use baton_shared::peer::Package;
use url::Url;

use crate::discover;
use crate::fetch::{FetchError, Options};
use crate::http::{HttpConn, TlsClient};
use crate::source::Net;

/// How often a lingering member checks whether it is still serving.
const LINGER_POLL: Duration = Duration::from_millis(200);
/// Longest wait, after the download, for uploads still running when `--peer-linger` is 0.
pub const DRAIN_UPLOADS: Duration = Duration::from_secs(60);
/// Longest wait at exit for reports to the main's package list still running: one call's
/// deadline, since they run side by side.
pub const REPORTS_SETTLE: Duration = baton_io::peer::api::CALL_TIMEOUT;

/// What peer mode needs beyond the download options.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Address of this host on the LAN; `None`: the one it uses to reach the origin.
    pub addr: Option<Ipv4Addr>,
    pub config: PeerConfig,
    /// Files to offer to other peers too.
    pub shares: Vec<PathBuf>,
    /// Keep serving until no upload has run for this long.
    pub linger: Duration,
}

/// What peer mode did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerSummary {
    pub output: Option<PathBuf>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub verified: &'static str,
    /// Seconds from the start until the file was verified and in place (0 without a URL).
    pub obtain_seconds: f64,
    /// Seconds from the start until this process stopped serving.
    pub seconds: f64,
    pub obtained: Option<Obtained>,
    /// Package bytes this process served to other peers.
    pub served_bytes: u64,
    /// Busy replies this process gave.
    pub busy_sent: u64,
    /// Reports the main's package list accepted (with `--peer-list`): one per share and per
    /// obtained file.
    pub reported: u64,
    pub shared: Vec<String>,
    /// Where this process served (`ip:port`).
    pub serving: SocketAddrV4,
}

/// The origin for peer mode: the primary URL over HTTP or HTTPS, from any offset.
struct UrlOrigin {
    url: Url,
    tls: TlsClient,
    timeout: Duration,
}

struct HttpBody(HttpConn);

impl BodyStream for HttpBody {
    fn read<'a>(&'a mut self, out: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(async move { self.0.read_body(out).await.map_err(io::Error::other) })
    }
}

impl Origin for UrlOrigin {
    fn open(&self, offset: u64) -> BoxFuture<'_, io::Result<Box<dyn BodyStream>>> {
        Box::pin(async move {
            let mut conn = HttpConn::connect(&self.url, &self.tls, self.timeout).await.map_err(io::Error::other)?;
            let range = (offset > 0).then_some((offset, u64::MAX));
            let resp = conn.request("GET", &self.url, range, self.timeout).await.map_err(io::Error::other)?;
            match resp.head.status {
                206 => {}
                200 if offset == 0 => {}
                s => return Err(io::Error::other(format!("the origin answered {s} for a range from {offset}"))),
            }
            Ok(Box::new(HttpBody(conn)) as Box<dyn BodyStream>)
        })
    }

    fn describe(&self) -> String {
        self.url.to_string()
    }
}

/// The address this host uses towards `host:port` (no packet is sent: a UDP `connect` only
/// picks the route).
fn route_source(host: &str, port: u16) -> io::Result<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect((host, port))?;
    match socket.local_addr()? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(_) => Err(io::Error::other("only IPv4 peers are supported")),
    }
}

/// Runs peer mode: serve the shares, obtain the file when URLs were given, then linger.
pub async fn run(opts: &Options, peer: &PeerOptions, mut cancel: tokio::sync::watch::Receiver<bool>) -> Result<PeerSummary, FetchError> {
    let started = Instant::now();
    let tls = TlsClient::new(opts.cacert.as_deref()).map_err(|e| FetchError::Setup(e.to_string()))?;
    let primary = opts.wanted.urls.first().cloned();
    let addr = match (peer.addr, &primary) {
        (Some(a), _) => a,
        (None, Some(url)) => {
            let host = url.host_str().unwrap_or_default().to_owned();
            route_source(&host, url.port_or_known_default().unwrap_or(80))
                .map_err(|e| FetchError::Setup(format!("finding this host's LAN address (give --peer-addr): {e}")))?
        }
        (None, None) => return Err(FetchError::Setup("--peer without a URL needs --peer-addr".into())),
    };
    let mut config = peer.config.clone();
    config.addr = addr;
    let member = Member::start(config).await.map_err(|e| FetchError::Setup(e.to_string()))?;
    let mut shared = Vec::new();
    for path in &peer.shares {
        let package = member
            .share_file(path)
            .await
            .map_err(|source| FetchError::File { path: path.clone(), source })?;
        tracing::info!(path = %path.display(), id = %package.id(), "sharing");
        shared.push(package.id().to_string());
    }

    let mut summary = PeerSummary {
        output: None,
        size: None,
        sha256: None,
        verified: "none",
        obtain_seconds: 0.0,
        seconds: 0.0,
        obtained: None,
        served_bytes: 0,
        busy_sent: 0,
        reported: 0,
        shared,
        serving: member.http_addr(),
    };
    let outcome = match primary {
        Some(url) => Some(obtain(opts, &member, url, tls, &mut summary, &mut cancel).await),
        None => None,
    };
    if let Some(Err(e)) = outcome {
        return Err(e);
    }
    if outcome.is_some() {
        summary.obtain_seconds = started.elapsed().as_secs_f64();
    }
    linger(&member, peer.linger, &mut cancel).await;
    // Reports run in the background; let the last ones reach the main before exiting.
    if !member.reports_settled(REPORTS_SETTLE).await {
        tracing::debug!("reports to the main's package list still pending at exit");
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.reported = member.counters.reports_sent.load(Ordering::Relaxed);
    summary.served_bytes = member.counters.served_bytes.load(Ordering::Relaxed);
    summary.busy_sent = member.counters.busy_sent.load(Ordering::Relaxed);
    Ok(summary)
}

async fn obtain(
    opts: &Options,
    member: &Arc<Member>,
    url: Url,
    tls: TlsClient,
    summary: &mut PeerSummary,
    cancel: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::Setup(format!("--peer needs an http or https origin, not {}", url.scheme())));
    }
    let net = Net { tls: tls.clone(), timeout: opts.timeout };
    let wanted = discover::Wanted { urls: vec![url.clone()], metalink: opts.wanted.metalink.clone(), checksum: opts.wanted.checksum, mirrors: false };
    let (target, _) = discover::discover(&wanted, &net).await?;
    let sha256 = target.sha256.ok_or_else(|| {
        FetchError::Setup("--peer needs the SHA-256 the origin publishes (Repr-Digest or Digest) or --sha256".into())
    })?;
    let output = crate::fetch::output_path(opts, &target)?;
    if output.exists() && !opts.force {
        return Err(FetchError::Setup(format!("{} exists (use --force to replace it)", output.display())));
    }
    let package = Package { sha256, size: target.size, md5: None };
    let origin = UrlOrigin { url, tls, timeout: opts.timeout };
    let obtained = tokio::select! {
        r = member.obtain(package, &output, &origin) => r.map_err(|e| match e {
            baton_io::peer::PeerError::OriginDigest { .. } => FetchError::Verify(e.to_string()),
            baton_io::peer::PeerError::Store { path, source } => FetchError::File { path, source },
            e => FetchError::Setup(e.to_string()),
        })?,
        _ = cancel.wait_for(|c| *c) => return Err(FetchError::Interrupted { done: 0, size: target.size }),
    };
    tracing::info!(outcome = ?obtained.outcome, from_peers = obtained.from_peers, from_origin = obtained.from_origin, "obtained");
    summary.output = Some(output);
    summary.size = Some(target.size);
    summary.sha256 = Some(sha256_hex(&sha256));
    summary.verified = "sha-256";
    summary.obtained = Some(obtained);
    Ok(())
}

/// Serves on until no upload has run for `linger` (with 0: until running uploads end, at most
/// [`DRAIN_UPLOADS`]), or until cancelled.
async fn linger(member: &Member, linger: Duration, cancel: &mut tokio::sync::watch::Receiver<bool>) {
    let started = Instant::now();
    let mut idle_since = Instant::now();
    let mut last_served = member.counters.served_bytes.load(Ordering::Relaxed);
    loop {
        if *cancel.borrow() {
            return;
        }
        let served = member.counters.served_bytes.load(Ordering::Relaxed);
        let uploading = member.uploads() > 0;
        if served != last_served || uploading {
            last_served = served;
            idle_since = Instant::now();
        }
        if linger.is_zero() {
            if !uploading || started.elapsed() >= DRAIN_UPLOADS {
                return;
            }
        } else if idle_since.elapsed() >= linger {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(LINGER_POLL) => {}
            _ = cancel.changed() => {}
        }
    }
}

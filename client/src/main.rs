//! The `baton-fetch` command: one file from several servers at once.
//!
//! `baton-fetch URL [URL...]`, or `--metalink FILE|URL`. Progress bars on a terminal, a summary
//! at the end (`--json` for scripts). Exit codes: 0 done and verified (or nothing to verify),
//! 1 download failed, 2 usage or local file error, 3 verification failed, 130 interrupted (the
//! state is saved; rerun the same command to resume).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use std::net::{Ipv4Addr, SocketAddrV4};

use baton_fetch::peer::PeerOptions;
use baton_fetch::{discover::Wanted, plan::SplitRules, watch::WatchRules, Options, Summary};
use baton_io::peer::PeerConfig;
use baton_shared::peer::limit;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "baton-fetch",
    version,
    about = "Download one file from several servers at once (HTTP, HTTPS, FTP)"
)]
struct Args {
    /// URLs of the file; the first is the primary. Mirrors it lists (RFC 6249 Link headers, its
    /// metalink) are found and checked too.
    urls: Vec<String>,
    /// A Metalink 4 file or URL describing the file and its mirrors.
    #[arg(long, short = 'M')]
    metalink: Option<String>,
    /// Output file (default: the file name from the metalink or URL).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    /// Start over even if a matching state file exists.
    #[arg(long)]
    no_resume: bool,
    /// Use only the URLs given, not the mirrors the primary lists.
    #[arg(long)]
    no_mirrors: bool,
    /// Connections per server.
    #[arg(long, short = 'x', default_value_t = 4)]
    max_conn_per_server: usize,
    /// Connections in all.
    #[arg(long, short = 'j', default_value_t = 16)]
    max_conns: usize,
    /// Expected SHA-256 of the file (hex), checked in addition to what servers publish.
    #[arg(long)]
    sha256: Option<String>,
    /// A link slower than this fraction of the median link ...
    #[arg(long, default_value_t = 0.25)]
    slow_fraction: f64,
    /// ... and slower than this many bytes per second (suffixes K, M, G) ...
    #[arg(long, default_value = "1M")]
    slow_floor: String,
    /// ... for this many seconds is dropped.
    #[arg(long, default_value_t = 3.0)]
    slow_grace: f64,
    /// A link that delivers nothing for this many seconds while it has work is dropped.
    #[arg(long, default_value_t = 5.0)]
    stall_timeout: f64,
    /// Do not duplicate the last outstanding ranges on a second server.
    #[arg(long)]
    no_endgame: bool,
    /// Bound on connecting and on any wait for a server, in seconds.
    #[arg(long, default_value_t = 15.0)]
    timeout: f64,
    /// Extra CA certificates (PEM) to trust for HTTPS.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bars and no summary table.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Use the LAN peer cache: ask peers first, use the origin only when none can serve, and
    /// serve other peers meanwhile (needs the origin's SHA-256: Repr-Digest, Digest or --sha256).
    #[arg(long)]
    peer: bool,
    /// This host's LAN address for the peer cache (default: the one it uses to reach the origin).
    #[arg(long, requires = "peer")]
    peer_addr: Option<Ipv4Addr>,
    /// Port where this host serves packages to peers.
    #[arg(long, requires = "peer", default_value_t = limit::DEFAULT_HTTP_PORT)]
    peer_port: u16,
    /// UDP port of peer discovery (the same on every peer).
    #[arg(long, requires = "peer", default_value_t = limit::DEFAULT_DISCOVERY_PORT)]
    peer_discovery_port: u16,
    /// Multicast group of peer discovery.
    #[arg(long, requires = "peer", default_value_t = limit::DEFAULT_GROUP)]
    peer_group: Ipv4Addr,
    /// Do not use multicast (poll --peer-host peers, and broadcast if asked).
    #[arg(long, requires = "peer")]
    peer_no_multicast: bool,
    /// Multicast TTL (1 keeps queries on this network segment).
    #[arg(long, requires = "peer", default_value_t = limit::DEFAULT_MULTICAST_TTL)]
    peer_ttl: u32,
    /// Also query this subnet broadcast address (e.g. 198.18.40.255).
    #[arg(long, requires = "peer")]
    peer_broadcast: Option<Ipv4Addr>,
    /// A known peer (IP or IP:PORT of its discovery socket), polled when multicast gets no
    /// answer; repeat for more.
    #[arg(long = "peer-host", requires = "peer")]
    peer_hosts: Vec<String>,
    /// File holding the group secret that authenticates discovery datagrams (not readable by
    /// others; trailing white space is not part of it).
    #[arg(long, requires = "peer")]
    peer_secret_file: Option<PathBuf>,
    /// Uploads served at once; more requesters are told busy (503).
    #[arg(long, requires = "peer", default_value_t = baton_io::peer::DEFAULT_UPLOAD_SLOTS)]
    peer_slots: usize,
    /// The main's package list (HOST:PORT of its origin store).
    #[arg(long, requires = "peer")]
    peer_list: Option<String>,
    /// Offer this file to peers too; repeat for more. With no URL, only serve.
    #[arg(long = "peer-share", requires = "peer")]
    peer_shares: Vec<PathBuf>,
    /// After the download, keep serving until no upload has run for this many seconds (0: until
    /// the uploads running then end).
    #[arg(long, requires = "peer", default_value_t = 0.0)]
    peer_linger: f64,
}

fn peer_options(a: &Args) -> Result<Option<PeerOptions>, String> {
    if !a.peer {
        return Ok(None);
    }
    let mut config = PeerConfig::new(Ipv4Addr::UNSPECIFIED);
    config.http_port = a.peer_port;
    config.discovery_port = a.peer_discovery_port;
    config.group = (!a.peer_no_multicast).then_some(a.peer_group);
    if !a.peer_group.is_multicast() {
        return Err(format!("--peer-group {} is not a multicast address", a.peer_group));
    }
    if a.peer_ttl == 0 || a.peer_ttl > 255 {
        return Err(format!("--peer-ttl must be between 1 and 255, not {}", a.peer_ttl));
    }
    config.ttl = a.peer_ttl;
    config.broadcast = a.peer_broadcast;
    for h in &a.peer_hosts {
        let addr = match h.parse::<SocketAddrV4>() {
            Ok(a) => a,
            Err(_) => SocketAddrV4::new(
                h.parse::<Ipv4Addr>().map_err(|_| format!("--peer-host {h:?} is not IP or IP:PORT"))?,
                a.peer_discovery_port,
            ),
        };
        config.hosts.push(addr);
    }
    if let Some(path) = &a.peer_secret_file {
        let secret = baton_io::peer::secret::read_secret(path).map_err(|e| format!("--peer-secret-file {e}"))?;
        config.secret = Some(secret);
    }
    if a.peer_slots == 0 {
        return Err("--peer-slots must be at least 1".into());
    }
    config.slots = a.peer_slots;
    if let Some(list) = &a.peer_list {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(list.as_str())
            .map_err(|e| format!("--peer-list {list:?}: {e}"))?
            .find(std::net::SocketAddr::is_ipv4)
            .ok_or_else(|| format!("--peer-list {list:?}: no IPv4 address"))?;
        config.list = Some(addr);
    }
    if !(a.peer_linger.is_finite() && (0.0..=86_400.0).contains(&a.peer_linger)) {
        return Err(format!("--peer-linger must be between 0 and 86400 seconds, not {}", a.peer_linger));
    }
    if a.urls.len() > 1 || a.metalink.is_some() {
        return Err("--peer takes one URL (the origin), not mirrors or a metalink".into());
    }
    if a.urls.is_empty() && a.peer_shares.is_empty() {
        return Err("--peer needs a URL or at least one --peer-share".into());
    }
    Ok(Some(PeerOptions {
        addr: a.peer_addr,
        config,
        shares: a.peer_shares.clone(),
        linger: Duration::from_secs_f64(a.peer_linger),
    }))
}

fn parse_bytes(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1024.0),
        Some((i, 'M' | 'm')) => (&s[..i], 1024.0 * 1024.0),
        Some((i, 'G' | 'g')) => (&s[..i], 1024.0 * 1024.0 * 1024.0),
        _ => (s, 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v * mult),
        _ => Err(format!("{s:?} is not a byte rate (e.g. 512K, 1M)")),
    }
}

fn seconds(name: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("--{name} must be between 0 and 86400 seconds, not {v}"))
    }
}

fn options(a: &Args) -> Result<Options, String> {
    let mut urls = Vec::new();
    for u in &a.urls {
        let url = url::Url::parse(u).map_err(|e| format!("{u}: {e}"))?;
        baton_fetch::source::Protocol::of(&url).map_err(|e| e.to_string())?;
        urls.push(url);
    }
    if urls.is_empty() && a.metalink.is_none() && !a.peer {
        return Err("give at least one URL or --metalink".into());
    }
    let checksum = match &a.sha256 {
        None => None,
        Some(h) => {
            let bytes = hex::decode(h.trim()).map_err(|e| format!("--sha256: {e}"))?;
            Some(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| "--sha256 must be 64 hex digits".to_owned())?)
        }
    };
    if a.max_conn_per_server == 0 || a.max_conns == 0 {
        return Err("connection limits must be at least 1".into());
    }
    if !(a.slow_fraction > 0.0 && a.slow_fraction < 1.0) {
        return Err(format!(
            "--slow-fraction must be between 0 and 1, not {}",
            a.slow_fraction
        ));
    }
    Ok(Options {
        wanted: Wanted {
            urls,
            metalink: a.metalink.clone(),
            checksum,
            mirrors: !a.no_mirrors,
        },
        output: a.output.clone(),
        per_server: a.max_conn_per_server,
        total: a.max_conns,
        watch: WatchRules {
            slow_fraction: a.slow_fraction,
            slow_floor: parse_bytes(&a.slow_floor)?,
            grace: seconds("slow-grace", a.slow_grace)?,
            stall: seconds("stall-timeout", a.stall_timeout)?,
            ..WatchRules::default()
        },
        split: SplitRules {
            endgame: !a.no_endgame,
            ..SplitRules::default()
        },
        timeout: seconds("timeout", a.timeout)?,
        cacert: a.cacert.clone(),
        force: a.force,
        resume: !a.no_resume,
        bars: !a.quiet && !a.json && std::io::stderr().is_terminal(),
    })
}

fn print_table(s: &Summary) {
    eprintln!(
        "{}: {} bytes in {:.2} s ({:.1} MiB/s), verified: {}{}",
        s.output.display(),
        s.size,
        s.seconds,
        s.rate / 1024.0 / 1024.0,
        s.verified,
        if s.resumed > 0 {
            format!(", {} bytes resumed", s.resumed)
        } else {
            String::new()
        }
    );
    for r in &s.servers {
        eprintln!(
            "  {:<10} {:>12} bytes {:>10} {}{}",
            r.state,
            r.bytes,
            r.rate
                .map(|v| format!("{:.1} MiB/s", v / 1024.0 / 1024.0))
                .unwrap_or_default(),
            r.url,
            r.reason.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
        );
    }
}

fn fail(e: &baton_fetch::FetchError, json: bool) -> i32 {
    eprintln!("baton-fetch: {e}");
    if json {
        let v = serde_json::json!({ "error": e.to_string(), "exit": e.exit_code() });
        println!("{v}");
    }
    e.exit_code()
}

fn print_peer(s: &baton_fetch::peer::PeerSummary) {
    if let (Some(out), Some(o)) = (&s.output, &s.obtained) {
        eprintln!(
            "{}: {} bytes, verified: {}, via {:?}: {} bytes from peers, {} from the origin{}",
            out.display(),
            s.size.unwrap_or_default(),
            s.verified,
            o.outcome,
            o.from_peers,
            o.from_origin,
            if o.bad_peers.is_empty() { String::new() } else { format!(", avoided bad peers {:?}", o.bad_peers) }
        );
    }
    eprintln!("served {} bytes to peers from {} ({} busy replies)", s.served_bytes, s.serving, s.busy_sent);
    if s.reported > 0 {
        eprintln!("reported {} package(s) to the main's package list", s.reported);
    }
}

fn main() {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_FETCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if args.quiet || args.json { "error" } else { "warn" }));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let opts = match options(&args).and_then(|o| Ok((o, peer_options(&args)?))) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("baton-fetch: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-fetch: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            let _ = tx.send(true);
        });
        let (opts, peer) = opts;
        if let Some(peer) = peer {
            return match baton_fetch::peer::run(&opts, &peer, rx).await {
                Ok(summary) => {
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
                    } else if !args.quiet {
                        print_peer(&summary);
                    }
                    0
                }
                Err(e) => fail(&e, args.json),
            };
        }
        match baton_fetch::run(&opts, rx).await {
            Ok(summary) => {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
                } else if !args.quiet {
                    print_table(&summary);
                }
                0
            }
            Err(e) => fail(&e, args.json),
        }
    });
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_rates() {
        assert_eq!(parse_bytes("1M"), Ok(1048576.0));
        assert_eq!(parse_bytes("512k"), Ok(524288.0));
        assert_eq!(parse_bytes("100"), Ok(100.0));
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("fast").is_err());
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        let parse = |v: &[&str]| {
            options(&Args::parse_from(
                std::iter::once("baton-fetch").chain(v.iter().copied()),
            ))
        };
        assert_eq!(parse(&[]).err(), Some("give at least one URL or --metalink".into()));
        assert!(parse(&["gopher://x/y"])
            .err()
            .is_some_and(|e| e.contains("scheme gopher")));
        assert!(parse(&["http://x/y", "--sha256", "abcd"])
            .err()
            .is_some_and(|e| e.contains("64 hex")));
        assert!(parse(&["http://x/y", "-x", "0"])
            .err()
            .is_some_and(|e| e.contains("at least 1")));
        assert!(parse(&["http://x/y", "--slow-fraction", "2"])
            .err()
            .is_some_and(|e| e.contains("between 0 and 1")));
        let o = parse(&["http://x/y", "-x", "32", "-j", "64"]).expect("valid");
        assert_eq!((o.per_server, o.total), (32, 64));
    }
}

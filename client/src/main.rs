//! The `baton-fetch` command: one file from several servers at once.
//!
//! `baton-fetch URL [URL...]`, or `--metalink FILE|URL`. Progress bars on a terminal, a summary
//! at the end (`--json` for scripts). Exit codes: 0 done and verified (or nothing to verify),
//! 1 download failed, 2 usage or local file error, 3 verification failed, 130 interrupted (the
//! state is saved; rerun the same command to resume).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use baton_fetch::{discover::Wanted, plan::SplitRules, watch::WatchRules, Options, Summary};
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
    if urls.is_empty() && a.metalink.is_none() {
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

fn main() {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_FETCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if args.quiet || args.json { "error" } else { "warn" }));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let opts = match options(&args) {
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
        match baton_fetch::run(&opts, rx).await {
            Ok(summary) => {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
                } else if !args.quiet {
                    print_table(&summary);
                }
                0
            }
            Err(e) => {
                eprintln!("baton-fetch: {e}");
                if args.json {
                    let v = serde_json::json!({ "error": e.to_string(), "exit": e.exit_code() });
                    println!("{v}");
                }
                e.exit_code()
            }
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

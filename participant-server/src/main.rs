//! `baton-participant`: restores and serves connections handed over by baton-main.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use baton_ebpf::{ParticipantDataplane, ParticipantOptions};
use baton_io::http::{serve_listener, ServeConfig};
use baton_io::peer::Member;
use baton_participant::agent::{Agent, Identity};
use baton_participant::cache::CacheStore;
use baton_participant::guard::Guard;
use baton_shared::geo::Coord;
use baton_io::cli::{CommonArgs, FlagPath};
use baton_shared::config::ParticipantConfig;
use clap::{CommandFactory, Parser};
use tracing::info;

/// A participant server: restores connections the main hands over and serves them directly.
///
/// Every setting is in the YAML config (`--config`); each flag sets one config field for this
/// run and wins over the file.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Name under which this participant registers (its certificate must be issued to it)
    /// [config: name].
    #[arg(long)]
    name: Option<String>,
    /// This host's own address (where the main's encapsulated packets arrive, and the mirror)
    /// [config: addr].
    #[arg(long)]
    addr: Option<Ipv4Addr>,
    /// The main's address (control channel, origin store, and the only accepted encapsulator)
    /// [config: main.addr].
    #[arg(long)]
    main_addr: Option<Ipv4Addr>,
    /// [config: main.control_port]
    #[arg(long)]
    control_port: Option<u16>,
    /// [config: main.origin_port]
    #[arg(long)]
    origin_port: Option<u16>,
    /// The cluster CA's certificate [config: tls.ca].
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This participant's certificate (`batonctl cluster issue <name>`) [config: tls.cert].
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This participant's private key [config: tls.key].
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The VIP, which must be on lo [config: vip].
    #[arg(long)]
    vip: Option<Ipv4Addr>,
    /// Latitude of this participant [config: lat].
    #[arg(long, allow_hyphen_values = true)]
    lat: Option<f64>,
    /// Longitude of this participant [config: lon].
    #[arg(long, allow_hyphen_values = true)]
    lon: Option<f64>,
    /// Concurrent flows this participant accepts [config: capacity].
    #[arg(long)]
    capacity: Option<u32>,
    /// Cache directory [config: cache_dir].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Interface where encapsulated packets from the main arrive [config: iface].
    #[arg(long)]
    iface: Option<String>,
    /// bpffs directory for this participant's pinned maps [config: pin_dir].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Port of the plain HTTP mirror on --addr (0 disables it) [config: mirror_port].
    #[arg(long)]
    mirror_port: Option<u16>,
    /// Where Prometheus scrapes `/metrics` [config: metrics_addr].
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Fill the cache from other participants first (the peer cache; its other settings are in
    /// the config's `peer_cache:` section) [config: peer_cache.enabled: true].
    #[arg(long)]
    peer_cache: bool,
    #[command(flatten)]
    common: CommonArgs,
}

/// The config path each flag sets.
const FLAG_PATHS: &[FlagPath] = &[
    ("name", "name", None),
    ("addr", "addr", None),
    ("main_addr", "main.addr", None),
    ("control_port", "main.control_port", None),
    ("origin_port", "main.origin_port", None),
    ("tls_ca", "tls.ca", None),
    ("tls_cert", "tls.cert", None),
    ("tls_key", "tls.key", None),
    ("vip", "vip", None),
    ("lat", "lat", None),
    ("lon", "lon", None),
    ("capacity", "capacity", None),
    ("cache_dir", "cache_dir", None),
    ("iface", "iface", None),
    ("pin_dir", "pin_dir", None),
    ("mirror_port", "mirror_port", None),
    ("metrics_addr", "metrics_addr", None),
    ("peer_cache", "peer_cache.enabled", Some("true")),
];

/// How long a graceful stop waits for its connections to be given back.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn main() -> anyhow::Result<()> {
    let cfg = baton_io::cli::configure(Args::command(), FLAG_PATHS, baton_shared::config::parse_participant)?;
    baton_io::cli::init_tracing(cfg.log.format);
    let rt = baton_io::cli::runtime(cfg.threads).context("starting the runtime")?;
    rt.block_on(run(cfg))
}

async fn run(args: ParticipantConfig) -> anyhow::Result<()> {
    let tls = baton_io::tls::client_config(&args.tls.ca, &args.tls.cert, &args.tls.key)
        .context("the control channel's TLS credentials (batonctl cluster issue <name> makes them)")?;
    baton_ebpf::check_capabilities().context("baton-participant needs CAP_BPF and CAP_NET_ADMIN (TCP_REPAIR and its data plane)")?;
    baton_participant::checks::check_host(args.vip, &args.iface).context("this host is not ready for direct server return")?;
    let coord = Coord::new(args.lat, args.lon).context("--lat/--lon")?;
    let peer_cfg = baton_participant::peers::peer_config(&args).context("the peer cache")?;
    let dataplane = ParticipantDataplane::load(&ParticipantOptions {
        iface: args.iface.clone(),
        mode: baton_io::cli::attach_mode(&args.dataplane),
        pin_dir: args.pin_dir.clone(),
        main_addr: args.main.addr,
        encap: baton_io::cli::encap(&args.dataplane),
        require_socket: true,
    })
    .with_context(|| format!("loading the data plane on {}", args.iface))?;
    let dataplane = std::sync::Arc::new(dataplane);
    let origin = SocketAddrV4::new(args.main.addr, args.main.origin_port);
    let mut cache = CacheStore::open(&args.cache_dir, origin).context("opening the cache")?;
    if let Some(peer_cfg) = peer_cfg {
        let member = Member::start(peer_cfg).await.context("starting the peer cache")?;
        cache = cache.with_peers(member);
        // What is cached already is hashed and offered in the background, one object at a time.
        let sharing = cache.clone();
        tokio::spawn(async move { sharing.share_cached().await });
    }
    let serve = ServeConfig {
        server_name: "baton".to_owned(),
        head_timeout: Duration::from_millis(args.head_timeout_ms),
        send_timeout: Duration::from_millis(args.send_timeout_ms),
        served_by: Some(args.name.clone()),
    };

    if args.mirror_port != 0 {
        let listener = tokio::net::TcpListener::bind(SocketAddr::V4(SocketAddrV4::new(args.addr, args.mirror_port)))
            .await
            .with_context(|| format!("binding the mirror on {}:{}", args.addr, args.mirror_port))?;
        tokio::spawn(serve_listener(listener, cache.clone(), serve.clone(), "mirror"));
    }
    // Bound above (or off): the main may advertise it from the moment it hears of it.
    let identity =
        Identity { name: args.name.clone(), addr: args.addr, coord, capacity: args.capacity, mirror_port: args.mirror_port };
    let agent = Agent::new(
        identity,
        SocketAddrV4::new(args.main.addr, args.main.control_port),
        tls,
        cache,
        serve,
        Guard::new(dataplane.clone()),
    );
    info!(name = %args.name, addr = %args.addr, main = %args.main.addr, "baton-participant starting");
    tokio::spawn(agent.clone().run());
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {}", args.metrics_addr))?;
    let (for_metrics, plane_for_metrics) = (agent.clone(), dataplane.clone());
    tokio::spawn(baton_io::metrics::serve(
        metrics_listener,
        std::sync::Arc::new(move || baton_participant::metrics::render(&for_metrics, &plane_for_metrics)),
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("signal handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // A graceful stop gives every connection back to the main, which moves each to another
    // participant, instead of cutting downloads off.
    let released = agent.release_all();
    if released > 0 {
        info!(connections = released, "giving connections back before exit");
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while agent.serving() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the writer put the last reports on the wire.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    info!("shutting down");
    drop(dataplane);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_a_config_equivalent() {
        baton_io::cli::check_flag_table(&Args::command(), FLAG_PATHS, baton_shared::config::PARTICIPANT_EXAMPLE).expect("flag table");
    }
}

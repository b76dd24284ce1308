//! `baton-participant`: restores and serves connections handed over by baton-main.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use baton_ebpf::{ParticipantDataplane, ParticipantOptions};
use baton_io::http::{serve_listener, ServeConfig};
use baton_participant::agent::{Agent, Identity};
use baton_participant::cache::CacheStore;
use baton_participant::guard::Guard;
use baton_shared::geo::Coord;
use baton_io::cli::CommonArgs;
use clap::Parser;
use tracing::info;

/// A participant server: restores connections the main hands over and serves them directly.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Name under which this participant registers.
    #[arg(long)]
    name: String,
    /// This host's own address (where the main's encapsulated packets arrive, and the mirror).
    #[arg(long)]
    addr: Ipv4Addr,
    /// The main's address (control channel, origin store, and the only accepted encapsulator).
    #[arg(long)]
    main_addr: Ipv4Addr,
    #[arg(long, default_value_t = 7100)]
    control_port: u16,
    #[arg(long, default_value_t = 8081)]
    origin_port: u16,
    /// The VIP, which must be on lo.
    #[arg(long, default_value = "203.0.113.10")]
    vip: Ipv4Addr,
    /// Latitude of this participant.
    #[arg(long, allow_hyphen_values = true)]
    lat: f64,
    /// Longitude of this participant.
    #[arg(long, allow_hyphen_values = true)]
    lon: f64,
    /// Concurrent flows this participant accepts.
    #[arg(long, default_value_t = 1000)]
    capacity: u32,
    /// Cache directory.
    #[arg(long)]
    cache_dir: PathBuf,
    /// Interface where encapsulated packets from the main arrive.
    #[arg(long, default_value = "eth0")]
    iface: String,
    /// bpffs directory for this participant's pinned maps.
    #[arg(long, default_value = "/sys/fs/bpf/baton/participant")]
    pin_dir: PathBuf,
    /// Port of the plain HTTP mirror on --addr (0 disables it).
    #[arg(long, default_value_t = 80)]
    mirror_port: u16,
    /// Where Prometheus scrapes `/metrics`.
    #[arg(long, default_value = "127.0.0.1:9471")]
    metrics_addr: SocketAddr,
    #[command(flatten)]
    common: CommonArgs,
}

/// How long a graceful stop waits for its connections to be given back.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.common.init_tracing();
    let rt = args.common.runtime().context("starting the runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    baton_ebpf::check_capabilities().context("baton-participant needs CAP_BPF and CAP_NET_ADMIN (TCP_REPAIR and its data plane)")?;
    baton_participant::checks::check_host(args.vip, &args.iface).context("this host is not ready for direct server return")?;
    let coord = Coord::new(args.lat, args.lon).context("--lat/--lon")?;
    let dataplane = ParticipantDataplane::load(&ParticipantOptions {
        iface: args.iface.clone(),
        mode: args.common.mode(),
        pin_dir: args.pin_dir.clone(),
        main_addr: args.main_addr,
        encap: args.common.encap(),
        require_socket: true,
    })
    .with_context(|| format!("loading the data plane on {}", args.iface))?;
    let dataplane = std::sync::Arc::new(dataplane);
    let origin = SocketAddrV4::new(args.main_addr, args.origin_port);
    let cache = CacheStore::open(&args.cache_dir, origin).context("opening the cache")?;
    let serve = ServeConfig { server_name: "baton".to_owned(), head_timeout: Duration::from_millis(args.common.head_timeout_ms), served_by: Some(args.name.clone()) };

    if args.mirror_port != 0 {
        let listener = tokio::net::TcpListener::bind(SocketAddr::V4(SocketAddrV4::new(args.addr, args.mirror_port)))
            .await
            .with_context(|| format!("binding the mirror on {}:{}", args.addr, args.mirror_port))?;
        tokio::spawn(serve_listener(listener, cache.clone(), serve.clone(), "mirror"));
    }
    let identity = Identity { name: args.name.clone(), addr: args.addr, coord, capacity: args.capacity };
    let agent = Agent::new(
        identity,
        SocketAddrV4::new(args.main_addr, args.control_port),
        cache,
        serve,
        Guard::new(dataplane.clone()),
    );
    info!(name = %args.name, addr = %args.addr, main = %args.main_addr, "baton-participant starting");
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

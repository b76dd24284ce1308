//! `baton-main`: the VIP front of a Baton cluster.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use baton_ebpf::{MainDataplane, MainOptions};
use baton_io::http::{serve_listener, ServeConfig};
use baton_io::store::DirStore;
use baton_main::registry::Registry;
use baton_main::state::{FlowTable, GeoDb, Metrics, Shared, FLOW_IDLE_LIMIT};
use baton_main::{admin, control, metrics, moves, persist, vip};
use baton_shared::moves::{Conductor, Timeouts};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use baton_io::cli::CommonArgs;
use clap::Parser;
use tracing::{info, warn};

/// Bytes an IPv4 + TCP header takes without options.
const IPV4_TCP_HEADER_BYTES: u16 = 40;
/// How often handed-off flows are checked for expiry.
const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The main server: accepts clients on the VIP and hands their connections to participants.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The public address clients connect to (held on this host, e.g. on lo).
    #[arg(long, default_value = "203.0.113.10")]
    vip: Ipv4Addr,
    /// Port of the VIP listener.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// This host's own address: the source of encapsulated packets and where participants reach
    /// the control channel and the origin store.
    #[arg(long)]
    local_addr: Ipv4Addr,
    /// Interface on which client packets arrive (the data-plane program attaches here).
    #[arg(long, default_value = "eth0")]
    iface: String,
    /// MTU of the path to participants; the VIP listener's MSS is clamped so that encapsulated
    /// client segments fit it.
    #[arg(long, default_value_t = 1500)]
    path_mtu: u16,
    /// Directory of objects (the origin store).
    #[arg(long)]
    origin_dir: PathBuf,
    /// Port of the control channel participants connect to.
    #[arg(long, default_value_t = 7100)]
    control_port: u16,
    /// Port of the origin store's HTTP server (cache fill for participants).
    #[arg(long, default_value_t = 8081)]
    origin_port: u16,
    /// MaxMind DB (GeoIP2/GeoLite2 City schema) used to locate clients.
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// bpffs directory where the data plane's maps are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/baton/main")]
    pin_dir: PathBuf,
    /// Unix socket of the admin API.
    #[arg(long, default_value = "/run/baton/main.sock")]
    admin_socket: PathBuf,
    /// How long to wait for a participant to restore a handed-off connection, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    restore_timeout_ms: u64,
    /// Directory where the flow table is saved, so a restarted main manages the flows it
    /// handed off before (they keep flowing through the pinned data plane meanwhile).
    #[arg(long, default_value = "/var/lib/baton/main")]
    state_dir: PathBuf,
    /// A participant silent (no heartbeat, no message) for this long is dead: its flows are
    /// rebuilt on other participants.
    #[arg(long, default_value_t = 500)]
    participant_timeout_ms: u64,
    /// How long a participant may take to give a flow back for a move before the move is
    /// abandoned (it keeps the flow).
    #[arg(long, default_value_t = 5000)]
    release_timeout_ms: u64,
    /// How long the target of a move may take to cache the flow's objects (an origin fill of
    /// a large object) before the move is abandoned.
    #[arg(long, default_value_t = 60_000)]
    prepare_timeout_ms: u64,
    /// Do not ask each flow's next-best participant to cache the flow's object in advance
    /// (then a recovery after a crash may wait for an origin fill).
    #[arg(long)]
    no_standby: bool,
    /// Where Prometheus scrapes `/metrics`.
    #[arg(long, default_value = "127.0.0.1:9470")]
    metrics_addr: SocketAddr,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.common.init_tracing();
    let rt = args.common.runtime().context("starting the runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    baton_main::check_net_admin().context("baton-main needs CAP_NET_ADMIN for TCP_REPAIR")?;
    baton_ebpf::check_capabilities().context("baton-main needs CAP_BPF and CAP_NET_ADMIN for its data plane")?;
    baton_main::check_forwarding(&args.iface)?;
    let encap = args.common.encap();
    let Some(mss) = args.path_mtu.checked_sub(IPV4_TCP_HEADER_BYTES + encap.overhead()).filter(|m| *m >= 536) else {
        bail!("--path-mtu {} leaves no room for TCP segments after encapsulation", args.path_mtu);
    };
    let dataplane = MainDataplane::load(&MainOptions {
        iface: args.iface.clone(),
        mode: args.common.mode(),
        pin_dir: args.pin_dir.clone(),
        local_addr: args.local_addr,
        encap,
    })
    .with_context(|| format!("loading the data plane on {}", args.iface))?;
    let origin = DirStore::open(&args.origin_dir).context("opening the origin store")?;
    let geo = GeoDb::open(args.geoip.as_deref())?;
    let serve = ServeConfig { server_name: "baton".to_owned(), head_timeout: Duration::from_millis(args.common.head_timeout_ms), served_by: Some("main".to_owned()) };
    let shared = Arc::new(Shared {
        registry: Registry::default(),
        dataplane,
        origin: origin.clone(),
        geo,
        serve: serve.clone(),
        restore_timeout: Duration::from_millis(args.restore_timeout_ms),
        flows: FlowTable::default(),
        metrics: Metrics::default(),
        conductor: Mutex::new(Conductor::new(Timeouts {
            prepare: Duration::from_millis(args.prepare_timeout_ms),
            heartbeat: Duration::from_millis(args.participant_timeout_ms),
            release: Duration::from_millis(args.release_timeout_ms),
            restore: Duration::from_millis(args.restore_timeout_ms),
        })
        .with_standby(!args.no_standby)),
        epoch: std::time::Instant::now(),
        state_file: Some(args.state_dir.join("flows.bin")),
        dirty: AtomicBool::new(false),
    });
    let reloaded = persist::reload(&shared);
    if reloaded > 0 {
        info!(flows = reloaded, "managing the flows handed off before the restart");
    }

    let vip_listener = vip::bind_vip(SocketAddrV4::new(args.vip, args.port), mss)
        .with_context(|| format!("listening on the VIP {}:{} (is the VIP on a local interface?)", args.vip, args.port))?;
    let control_listener = tokio::net::TcpListener::bind(SocketAddr::V4(SocketAddrV4::new(args.local_addr, args.control_port)))
        .await
        .context("binding the control channel")?;
    let origin_listener = tokio::net::TcpListener::bind(SocketAddr::V4(SocketAddrV4::new(args.local_addr, args.origin_port)))
        .await
        .context("binding the origin store")?;
    let admin_listener = admin::bind(&args.admin_socket)?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {}", args.metrics_addr))?;
    info!(vip = %args.vip, port = args.port, mss, local = %args.local_addr, "baton-main serving");

    tokio::spawn(vip::run(vip_listener, shared.clone()));
    tokio::spawn(control::run(control_listener, shared.clone()));
    tokio::spawn(admin::run(admin_listener, shared.clone()));
    // The origin store, for participants' cache fill: plain HTTP with digests.
    tokio::spawn(serve_listener(origin_listener, origin, serve, "origin"));
    tokio::spawn(sweep_flows(shared.clone()));
    tokio::spawn(moves::run_clock(shared.clone()));
    let for_metrics = shared.clone();
    tokio::spawn(baton_io::metrics::serve(metrics_listener, Arc::new(move || metrics::render(&for_metrics))));
    tokio::spawn(persist::run_saver(shared.clone()));
    prewarm_digests(shared.origin.clone());

    wait_for_shutdown().await;
    info!("shutting down; handed-off flows keep flowing through the pinned data plane");
    if let Some(path) = shared.state_file.as_deref() {
        if let Err(e) = persist::save(&shared, path) {
            warn!(error = %e, "could not save the flow table");
        }
    }
    let _ = std::fs::remove_file(&args.admin_socket);
    Ok(())
}

/// Removes data-plane entries of flows that closed (after their linger) or went idle.
async fn sweep_flows(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(FLOW_SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        let mut gone = shared.flows.expired(now);
        gone.extend(shared.flows.remove_where(|rec, _| {
            match shared.dataplane.get(&rec.key) {
                Ok(Some(v)) => baton_main::idle_for(&v, rec.started) > FLOW_IDLE_LIMIT,
                Ok(None) => true,
                Err(_) => false,
            }
        }));
        if !gone.is_empty() {
            let mut c = shared.conductor.lock().unwrap_or_else(|p| p.into_inner());
            for (id, _) in &gone {
                c.remove(*id);
            }
            shared.mark_dirty();
        }
        for (_, rec) in gone {
            if let Err(e) = shared.dataplane.remove(&rec.key) {
                warn!(error = %e, client = %rec.client, "could not remove a flow from the data plane");
            }
        }
    }
}

/// Hashes the origin's objects in the background so the first request for each is not delayed.
fn prewarm_digests(origin: DirStore) {
    tokio::spawn(async move {
        for path in baton_main::list_objects(origin.root()) {
            if let Ok(p) = baton_shared::http::object_path(&format!("/{path}")) {
                let _ = origin.resolve(&p).await;
            }
        }
    });
}

async fn wait_for_shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

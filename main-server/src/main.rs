//! `baton-main`: the VIP front of a Baton cluster.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use baton_ebpf::{MainOptions, MainPlane, PlaneMode};
use baton_io::http::ServeConfig;
use baton_io::store::DirStore;
use baton_main::registry::Registry;
use baton_main::state::{FlowTable, GeoDb, Metrics, Shared, FLOW_IDLE_LIMIT};
use baton_main::{admin, control, metrics, moves, origin, persist, probe, vip};
use baton_shared::config::MainConfig;
use baton_shared::moves::{Conductor, Timeouts};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use baton_io::cli::{CommonArgs, FlagPath};
use clap::{CommandFactory, Parser};
use tracing::{info, warn};

/// Bytes an IPv4 + TCP header takes without options.
const IPV4_TCP_HEADER_BYTES: u16 = 40;
/// How often handed-off flows are checked for expiry.
const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The main server: accepts clients on the VIP and hands their connections to participants.
///
/// Every setting is in the YAML config (`--config`); each flag sets one config field for this
/// run and wins over the file. `batonctl config check <file>` checks a config file.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The public address clients connect to (held on this host, e.g. on lo) [config: vip].
    #[arg(long)]
    vip: Option<Ipv4Addr>,
    /// Port of the VIP listener [config: port].
    #[arg(long)]
    port: Option<u16>,
    /// This host's own address: the source of encapsulated packets and where participants reach
    /// the control channel and the origin store [config: local_addr].
    #[arg(long)]
    local_addr: Option<Ipv4Addr>,
    /// Interface on which client packets arrive [config: iface].
    #[arg(long)]
    iface: Option<String>,
    /// MTU of the path to participants; the VIP listener's MSS is clamped so that encapsulated
    /// client segments fit it [config: path_mtu].
    #[arg(long)]
    path_mtu: Option<u16>,
    /// Directory of objects (the origin store) [config: origin_dir].
    #[arg(long)]
    origin_dir: Option<PathBuf>,
    /// Port of the control channel participants connect to [config: control.port].
    #[arg(long)]
    control_port: Option<u16>,
    /// The cluster CA's certificate [config: control.tls.ca].
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This main's certificate (`batonctl cluster issue main --main-ip <addr>`) [config: control.tls.cert].
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This main's private key [config: control.tls.key].
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Port of the origin store's HTTP server (cache fill for participants) [config: origin_port].
    #[arg(long)]
    origin_port: Option<u16>,
    /// MaxMind DB (GeoIP2/GeoLite2 City schema) used to locate clients [config: geoip].
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// bpffs directory where the data plane's maps are pinned [config: pin_dir].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Unix socket of the admin API [config: admin.socket].
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Also serve the admin API over HTTP on this address [config: admin.listen].
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// File holding the bearer token the HTTP admin API requires [config: admin.token_file].
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// How long to wait for a participant to restore a handed-off connection, in milliseconds
    /// [config: control.restore_timeout_ms].
    #[arg(long)]
    restore_timeout_ms: Option<u64>,
    /// Directory where the flow table and the registry are saved, so a restarted main manages
    /// the flows it handed off before [config: state_dir].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// A participant silent for this long is dead: its flows are rebuilt on other participants
    /// [config: control.participant_timeout_ms].
    #[arg(long)]
    participant_timeout_ms: Option<u64>,
    /// How long a participant may take to give a flow back for a move [config: control.release_timeout_ms].
    #[arg(long)]
    release_timeout_ms: Option<u64>,
    /// How long the target of a move may take to cache the flow's objects [config: control.prepare_timeout_ms].
    #[arg(long)]
    prepare_timeout_ms: Option<u64>,
    /// Do not ask each flow's next-best participant to cache the flow's object in advance
    /// [config: control.standby: false].
    #[arg(long)]
    no_standby: bool,
    /// Time between health probes of each participant, in milliseconds [config: health.interval_ms].
    #[arg(long)]
    probe_interval_ms: Option<u64>,
    /// Object the health probes fetch through the VIP [config: health.probe_path].
    #[arg(long)]
    probe_path: Option<String>,
    /// Where Prometheus scrapes `/metrics` [config: metrics_addr].
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    common: CommonArgs,
}

/// The config path each flag sets.
const FLAG_PATHS: &[FlagPath] = &[
    ("vip", "vip", None),
    ("port", "port", None),
    ("local_addr", "local_addr", None),
    ("iface", "iface", None),
    ("path_mtu", "path_mtu", None),
    ("origin_dir", "origin_dir", None),
    ("control_port", "control.port", None),
    ("tls_ca", "control.tls.ca", None),
    ("tls_cert", "control.tls.cert", None),
    ("tls_key", "control.tls.key", None),
    ("origin_port", "origin_port", None),
    ("geoip", "geoip", None),
    ("pin_dir", "pin_dir", None),
    ("admin_socket", "admin.socket", None),
    ("admin_listen", "admin.listen", None),
    ("admin_token_file", "admin.token_file", None),
    ("restore_timeout_ms", "control.restore_timeout_ms", None),
    ("state_dir", "state_dir", None),
    ("participant_timeout_ms", "control.participant_timeout_ms", None),
    ("release_timeout_ms", "control.release_timeout_ms", None),
    ("prepare_timeout_ms", "control.prepare_timeout_ms", None),
    ("no_standby", "control.standby", Some("false")),
    ("probe_interval_ms", "health.interval_ms", None),
    ("probe_path", "health.probe_path", None),
    ("metrics_addr", "metrics_addr", None),
];

fn main() -> anyhow::Result<()> {
    let cfg = baton_io::cli::configure(Args::command(), FLAG_PATHS, baton_shared::config::parse_main)?;
    baton_io::cli::init_tracing(cfg.log.format);
    let rt = baton_io::cli::runtime(cfg.threads).context("starting the runtime")?;
    rt.block_on(run(cfg))
}

async fn run(cfg: MainConfig) -> anyhow::Result<()> {
    baton_main::check_net_admin().context("baton-main needs CAP_NET_ADMIN for TCP_REPAIR")?;
    let plane_mode = baton_io::cli::plane_mode(&cfg.dataplane, &cfg.state_dir);
    if plane_mode == PlaneMode::Bpf {
        baton_ebpf::check_capabilities()
            .context("baton-main needs CAP_BPF and CAP_NET_ADMIN for its data plane (or run it with --dataplane userspace)")?;
    }
    baton_main::check_forwarding(&cfg.iface)?;
    baton_main::ensure_syncookies()?;
    let tls = baton_io::tls::server_config(&cfg.control.tls.ca, &cfg.control.tls.cert, &cfg.control.tls.key)
        .context("the control channel's TLS credentials (batonctl cluster init / issue make them)")?;
    let admin_token = match (&cfg.admin.listen, &cfg.admin.token_file) {
        (Some(_), Some(path)) => Some(baton_main::admin::read_token(path)?),
        _ => None,
    };
    let encap = baton_io::cli::encap(&cfg.dataplane);
    let Some(mss) = cfg.path_mtu.checked_sub(IPV4_TCP_HEADER_BYTES + encap.overhead()).filter(|m| *m >= 536) else {
        bail!("path_mtu {} leaves no room for TCP segments after encapsulation", cfg.path_mtu);
    };
    let dataplane = MainPlane::load(
        &MainOptions {
            iface: cfg.iface.clone(),
            mode: baton_io::cli::attach_mode(&cfg.dataplane),
            pin_dir: cfg.pin_dir.clone(),
            local_addr: cfg.local_addr,
            encap,
        },
        &plane_mode,
    )
    .with_context(|| format!("loading the data plane on {}", cfg.iface))?;
    info!(mode = dataplane.mode_name(), iface = %cfg.iface, "data plane ready");
    // The health probes' own connections to the VIP loop back through lo.
    baton_main::prepare_probe_path(&cfg.iface)?;
    dataplane.attach_loopback().context("attaching the data plane to lo for the health probes")?;
    let origin = DirStore::open(&cfg.origin_dir).context("opening the origin store")?;
    let geo = GeoDb::open(cfg.geoip.as_deref())?;
    let serve = ServeConfig {
        server_name: "baton".to_owned(),
        head_timeout: Duration::from_millis(cfg.head_timeout_ms),
        send_timeout: Duration::from_millis(cfg.send_timeout_ms),
        served_by: Some("main".to_owned()),
    };
    let shared = Arc::new(Shared {
        registry: Registry::default(),
        dataplane,
        origin: origin.clone(),
        geo,
        serve: serve.clone(),
        restore_timeout: Duration::from_millis(cfg.control.restore_timeout_ms),
        flows: FlowTable::default(),
        metrics: Metrics::default(),
        conductor: Mutex::new(
            Conductor::new(Timeouts {
                prepare: Duration::from_millis(cfg.control.prepare_timeout_ms),
                heartbeat: Duration::from_millis(cfg.control.participant_timeout_ms),
                release: Duration::from_millis(cfg.control.release_timeout_ms),
                restore: Duration::from_millis(cfg.control.restore_timeout_ms),
            })
            .with_standby(cfg.control.standby),
        ),
        epoch: std::time::Instant::now(),
        state_file: Some(cfg.state_dir.join("flows.bin")),
        dirty: AtomicBool::new(false),
        vip: SocketAddrV4::new(cfg.vip, cfg.port),
        local_addr: cfg.local_addr,
        policy: cfg.selection,
        health: baton_main::probe::Health::new(cfg.health.clone()),
        probe_flows: Mutex::default(),
        pieces: baton_main::mirror::PieceCache::default(),
        packages: Arc::default(),
    });
    apply_settings(&shared, &cfg)?;
    let reloaded = persist::reload(&shared);
    if reloaded > 0 {
        info!(flows = reloaded, "managing the flows handed off before the restart");
    }

    let vip_listener = vip::bind_vip(SocketAddrV4::new(cfg.vip, cfg.port), mss)
        .with_context(|| format!("listening on the VIP {}:{} (is the VIP on a local interface?)", cfg.vip, cfg.port))?;
    let control_listener = tokio::net::TcpListener::bind(SocketAddr::V4(SocketAddrV4::new(cfg.local_addr, cfg.control.port)))
        .await
        .context("binding the control channel")?;
    let origin_listener = tokio::net::TcpListener::bind(SocketAddr::V4(SocketAddrV4::new(cfg.local_addr, cfg.origin_port)))
        .await
        .context("binding the origin store")?;
    let admin_listener = admin::bind(&cfg.admin.socket)?;
    let admin_http = match (cfg.admin.listen, admin_token) {
        (Some(addr), Some(token)) => Some((
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the admin API on {addr}"))?,
            token,
        )),
        _ => None,
    };
    let metrics_listener = tokio::net::TcpListener::bind(cfg.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {}", cfg.metrics_addr))?;
    info!(vip = %cfg.vip, port = cfg.port, mss, local = %cfg.local_addr, "baton-main serving");

    tokio::spawn(vip::run(vip_listener, shared.clone()));
    tokio::spawn(control::run(control_listener, tokio_rustls::TlsAcceptor::from(tls), shared.clone()));
    tokio::spawn(admin::run(admin_listener, shared.clone()));
    if let Some((listener, token)) = admin_http {
        info!(addr = %cfg.admin.listen.map(|a| a.to_string()).unwrap_or_default(), "admin API on HTTP (bearer token required)");
        tokio::spawn(admin::run_http(listener, shared.clone(), token));
    }
    // The origin store, for participants' cache fill (plain HTTP with digests), and the
    // peer cache's package list.
    let origin_http = Arc::new(origin::Origin {
        store: origin,
        packages: shared.packages.clone(),
        serve,
        sent_bytes: shared.metrics.origin_sent_bytes.clone(),
    });
    tokio::spawn(origin::run(origin_listener, origin_http));
    tokio::spawn(sweep_flows(shared.clone()));
    tokio::spawn(moves::run_clock(shared.clone()));
    tokio::spawn(probe::run(shared.clone()));
    let for_metrics = shared.clone();
    tokio::spawn(baton_io::metrics::serve(metrics_listener, Arc::new(move || metrics::render(&for_metrics))));
    tokio::spawn(persist::run_saver(shared.clone()));
    prewarm_digests(&shared);

    wait_for_shutdown().await;
    info!("shutting down; handed-off flows keep flowing through the pinned data plane");
    if let Some(path) = shared.state_file.as_deref() {
        if let Err(e) = persist::save(&shared, path) {
            warn!(error = %e, "could not save the flow table");
        }
    }
    let _ = std::fs::remove_file(&cfg.admin.socket);
    Ok(())
}

/// Puts the participants of the config file and the operators' saved settings (added
/// participants, drains) into effect.
fn apply_settings(shared: &Arc<Shared>, cfg: &MainConfig) -> anyhow::Result<()> {
    for p in &cfg.participants {
        let coord = baton_shared::geo::Coord::new(p.lat, p.lon).map_err(|e| anyhow::anyhow!("participants: {}: {e}", p.name))?;
        shared.registry.add(&p.name, p.addr, coord, p.capacity).map_err(|e| anyhow::anyhow!("participants: {e}"))?;
    }
    let saved = match persist::load_settings(shared) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "saved registry not loaded; starting from the config alone");
            return Ok(());
        }
    };
    for p in &saved.participants {
        let Ok(coord) = baton_shared::geo::Coord::new(p.lat, p.lon) else { continue };
        if let Err(e) = shared.registry.add(&p.name, p.addr, coord, p.capacity) {
            warn!(participant = %p.name, error = %e, "saved participant not restored");
        }
    }
    for name in &saved.drained {
        shared.conduct(|c, env, now| c.drain(name, now, env));
    }
    if !saved.participants.is_empty() || !saved.drained.is_empty() {
        info!(participants = saved.participants.len(), drained = saved.drained.len(), "registry restored");
    }
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
            let mut probes = shared.probe_flows.lock().unwrap_or_else(|p| p.into_inner());
            for (id, _) in &gone {
                c.remove(*id);
                probes.remove(id);
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

/// Hashes the origin's objects in the background so the first request for each is not delayed,
/// and describes each in the package list.
fn prewarm_digests(shared: &Shared) {
    let store = shared.origin.clone();
    let packages = shared.packages.clone();
    tokio::spawn(async move { origin::prewarm(&store, &packages).await });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_a_config_equivalent() {
        baton_io::cli::check_flag_table(&Args::command(), FLAG_PATHS, baton_shared::config::MAIN_EXAMPLE).expect("flag table");
    }

    #[test]
    fn flags_override_the_config_file() {
        let matches = Args::command()
            .try_get_matches_from([
                "baton-main", "--local-addr", "198.18.0.2", "--origin-dir", "/srv", "--no-standby", "--restore-timeout-ms", "250",
                "--encap", "gue", "--threads", "2",
            ])
            .expect("flags");
        let overrides = baton_io::cli::overrides(&Args::command(), &matches, FLAG_PATHS).expect("overrides");
        let cfg = baton_shared::config::parse_main("main.yaml", "control:\n  restore_timeout_ms: 900\n", &overrides).expect("config");
        assert_eq!(cfg.local_addr, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(cfg.control.restore_timeout_ms, 250);
        assert!(!cfg.control.standby);
        assert_eq!(cfg.dataplane.encap, baton_shared::config::EncapKind::Gue, "a flag of the shared group");
        assert_eq!(cfg.threads, 2);
    }
}

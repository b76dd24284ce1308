//! A Baton cluster inside a lab: the real `baton-main` and `baton-participant` binaries started in
//! the lab's namespaces, real clients (curl) and real captures (tcpdump).
//!
//! Used by the integration tests, by `cargo xtask demo` and by the benchmarks, so that there is
//! one way of bringing a cluster up. Everything a [`Cluster`] starts is stopped when it is
//! dropped, and its lab is torn down, also when a test panics.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use baton_lab::{Lab, Role, Topology};
use sha2::Digest;

pub mod bench;
pub mod ftp;
pub mod tcpflow;

/// How long a started cluster may take until every participant has registered.
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(20);
/// Control port, origin port and VIP port of the clusters this harness starts.
pub const CONTROL_PORT: u16 = 7100;
pub const ORIGIN_PORT: u16 = 8081;

/// Where the release binaries are: `$BATON_BIN_DIR`, else `target/release` of this workspace.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("BATON_BIN_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!("{} is missing: build it first (cargo xtask test does: cargo build --release)", p.display());
    }
    Ok(p)
}

/// Fails loudly under CI when the process cannot run lab tests; elsewhere returns false so the
/// caller can skip with a message.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "lab tests need root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN) under CI");
    eprintln!("SKIPPED: lab tests need root");
    false
}

/// Runs `f` on a thread in network namespace `ns` and returns what it returns.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let ns = ns.to_owned();
    let name = ns.clone();
    let handle = std::thread::spawn(move || -> anyhow::Result<T> {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
        // SAFETY: setns on this thread only, with a namespace file we hold open.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns {ns}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    });
    handle.join().map_err(|_| anyhow!("thread in {name} panicked"))?
}

/// The data-plane modes the lab tests run in: every one of [`DATAPLANES`], or the
/// comma-separated list in `BATON_TEST_DATAPLANES` (for working on one mode; a name that is not
/// a mode fails).
pub fn test_dataplanes() -> Vec<&'static str> {
    match std::env::var("BATON_TEST_DATAPLANES") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|m| {
                let m = m.trim();
                DATAPLANES.iter().copied().find(|d| *d == m).unwrap_or_else(|| panic!("BATON_TEST_DATAPLANES: {m:?} is not one of {DATAPLANES:?}"))
            })
            .collect(),
        _ => DATAPLANES.to_vec(),
    }
}

/// Runs `scenario` once per data-plane mode ([`test_dataplanes`]), one after another on the
/// same lab name and block, with `opts.dataplane` set; a failure names the mode. Skips (or,
/// under CI, fails) without root, like [`require_root`].
pub fn in_every_dataplane(name: &str, block: &str, scenario: impl Fn(ClusterOptions)) {
    in_dataplanes(&DATAPLANES, name, block, scenario);
}

/// [`in_every_dataplane`] for the modes of `modes` only.
pub fn in_dataplanes(modes: &[&str], name: &str, block: &str, scenario: impl Fn(ClusterOptions)) {
    if !require_root() {
        return;
    }
    for mode in test_dataplanes().into_iter().filter(|m| modes.contains(m)) {
        eprintln!("--- {name}: --dataplane {mode}");
        let mut opts = ClusterOptions::new(name, block);
        opts.dataplane = mode;
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(opts))) {
            eprintln!("--- {name}: failed with --dataplane {mode}");
            std::panic::resume_unwind(panic);
        }
    }
}

/// A process started in a lab node; killed on drop.
#[derive(Debug)]
pub struct Proc {
    pub node: String,
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Rate of each participant and client link in [`wan_topology`].
pub const WAN_RATE: &str = "300mbit";
/// One-way delay of each participant and client link in [`wan_topology`]: a participant and a
/// client are 40 ms apart, round trip.
pub const WAN_DELAY: &str = "10ms";

/// The lab the move tests and `bench move` use: the main in Amsterdam on a fast link,
/// participants in Frankfurt, Ashburn and Singapore and one client near Frankfurt, each on a
/// rate-limited, delayed link so megabytes are in flight. Name and block are set by
/// [`ClusterOptions`].
pub fn wan_topology() -> String {
    let node = |name: &str, role: &str, city: &str, cc: &str, lat: f64, lon: f64, link: &str| {
        format!("  - name: {name}\n    role: {role}\n    location: {{ city: {city}, country: {cc}, lat: {lat}, lon: {lon} }}\n{link}")
    };
    let slow = format!("    rate: {WAN_RATE}\n    delay: {WAN_DELAY}\n");
    let fast = "    rate: 10gbit\n".to_owned();
    [
        "name: wan\nblock: 198.18.0.0/21\nvip: 203.0.113.10\nnodes:\n".to_owned(),
        node("main", "main", "Amsterdam", "NL", 52.37, 4.90, &fast),
        node("p-fra", "participant", "Frankfurt", "DE", 50.11, 8.68, &slow),
        node("p-iad", "participant", "Ashburn", "US", 39.04, -77.49, &slow),
        node("p-sin", "participant", "Singapore", "SG", 1.29, 103.85, &slow),
        node("c-fra", "client", "Mainz", "DE", 50.00, 8.27, &slow),
    ]
    .concat()
}

/// Creates the lab's cluster CA and a certificate for the main (for its address) and for every
/// participant, in `<state>/tls`.
fn make_credentials(lab: &Lab) -> anyhow::Result<PathBuf> {
    use baton_io::tls;
    let dir = lab.state_dir().join("tls");
    std::fs::create_dir_all(&dir)?;
    tls::init_ca(&dir, "Baton lab CA", tls::DEFAULT_CA_VALIDITY_DAYS, true).context("lab CA")?;
    for n in lab.nodes_with_role(Role::Main) {
        let role = tls::Role::Main { ips: vec![std::net::IpAddr::V4(n.addr)] };
        tls::issue(&dir, "main", role, tls::DEFAULT_VALIDITY_DAYS, &dir, true).context("main certificate")?;
    }
    for n in lab.nodes_with_role(Role::Participant) {
        tls::issue(&dir, &n.name, tls::Role::Participant, tls::DEFAULT_VALIDITY_DAYS, &dir, true)
            .with_context(|| format!("{} certificate", n.name))?;
    }
    Ok(dir)
}

/// What a cluster looks like.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Lab name; unique among labs running at the same time.
    pub name: String,
    /// The lab's /21 inside 198.18.0.0/15; unique among labs running at the same time.
    pub block: String,
    /// Extra arguments for baton-main.
    pub main_args: Vec<String>,
    /// Extra arguments for every baton-participant.
    pub participant_args: Vec<String>,
    /// Start the participants (otherwise only the main runs).
    pub participants: bool,
    /// A topology in the lab's YAML format instead of the default one (name and block are
    /// replaced by the ones above).
    pub topology_yaml: Option<String>,
    /// The main's data plane (`--dataplane`): one of [`DATAPLANES`].
    pub dataplane: &'static str,
}

/// Every mode of the main's data plane; the handoff and move tests run in each.
pub const DATAPLANES: [&str; 3] = ["tc", "xdp", "userspace"];

impl ClusterOptions {
    pub fn new(name: &str, block: &str) -> Self {
        Self {
            name: name.to_owned(),
            block: block.to_owned(),
            main_args: Vec::new(),
            participant_args: Vec::new(),
            participants: true,
            topology_yaml: None,
            dataplane: "tc",
        }
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    procs: Vec<Proc>,
    pub origin_dir: PathBuf,
    pub admin: PathBuf,
    /// The cluster CA and every node's certificate (`<node>.pem`, `<node>.key`).
    pub tls_dir: PathBuf,
    main_args: Vec<String>,
    participant_args: Vec<String>,
    /// With `--dataplane xdp`: the XDP program on the router's end of the main's link.
    _xdp_peer: Option<baton_ebpf::bench::PassXdp>,
    /// The main's data plane (names the kept evidence of a failure).
    dataplane: &'static str,
    // Dropped last: processes first, then the lab.
    pub lab: Lab,
}

impl Cluster {
    /// Brings up the default topology under `opts.name` and starts the main and participants.
    pub fn start(opts: &ClusterOptions) -> anyhow::Result<Cluster> {
        let block = opts.block.parse().with_context(|| format!("block {}", opts.block))?;
        let topo = match &opts.topology_yaml {
            Some(yaml) => Topology::from_yaml(yaml).context("test topology")?,
            None => Topology::default_topology(),
        }
        .with_name(&opts.name)
        .with_block(block);
        let lab = Lab::up(&topo).with_context(|| format!("bringing up lab {}", opts.name))?;
        let origin_dir = lab.state_dir().join("origin");
        std::fs::create_dir_all(&origin_dir)?;
        let admin = lab.state_dir().join("main.sock");
        let tls_dir = make_credentials(&lab)?;
        let mut xdp_peer = None;
        if opts.dataplane == "xdp" {
            // XDP sees frames without the skb's checksum-offload state: the router must send
            // the main finished checksums (see baton_ebpf::AttachMode::Xdp); and a veth only
            // takes the frames its peer's XDP program sends back (XDP_TX) when it runs one too.
            let main = lab.nodes_with_role(Role::Main).first().map(|n| n.name.clone()).ok_or_else(|| anyhow!("no main node"))?;
            lab.plain_frames_to(&main).context("turning off checksum offload toward the main for xdp")?;
            if let Some((ns, iface)) = lab.router_end(&main)? {
                let peer = in_netns(&ns, move || baton_ebpf::bench::PassXdp::attach(&iface))?.context("an XDP program on the router's end of the main's link")?;
                xdp_peer = Some(peer);
            }
        }
        let mut main_args = vec!["--dataplane".to_owned(), opts.dataplane.to_owned()];
        main_args.extend(opts.main_args.iter().cloned());
        let mut c = Cluster {
            tls_dir, procs: Vec::new(), origin_dir, admin, main_args: main_args.clone(), participant_args: opts.participant_args.clone(), _xdp_peer: xdp_peer, dataplane: opts.dataplane, lab };
        c.start_main(&main_args)?;
        if opts.participants {
            let extra: Vec<&str> = opts.participant_args.iter().map(String::as_str).collect();
            for p in c.participant_names() {
                c.start_participant(&p, &extra)?;
            }
            c.wait_registered(c.participant_names().len())?;
        }
        Ok(c)
    }

    /// Leaves the lab and its servers running after this process exits: nothing of the
    /// cluster is dropped, so neither the processes nor the lab are stopped.
    pub fn detach(self) {
        std::mem::forget(self);
    }

    pub fn main_node(&self) -> anyhow::Result<String> {
        Ok(self.lab.nodes_with_role(Role::Main).first().ok_or_else(|| anyhow!("no main node"))?.name.clone())
    }

    pub fn participant_names(&self) -> Vec<String> {
        self.lab.nodes_with_role(Role::Participant).iter().map(|n| n.name.clone()).collect()
    }

    pub fn client_names(&self) -> Vec<String> {
        self.lab.nodes_with_role(Role::Client).iter().map(|n| n.name.clone()).collect()
    }

    pub fn addr(&self, node: &str) -> anyhow::Result<Ipv4Addr> {
        Ok(self.lab.node(node)?.addr)
    }

    fn spawn(&mut self, node: &str, binary: &str, args: &[String]) -> anyhow::Result<()> {
        let log = self.lab.state_dir().join(format!("{node}.{binary}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = self.lab.command(node, bin(binary)?)?;
        cmd.args(args).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        cmd.env("RUST_LOG", std::env::var("BATON_LOG").unwrap_or_else(|_| "info".to_owned()));
        let child = cmd.spawn().with_context(|| format!("starting {binary} in {node}"))?;
        self.procs.push(Proc { node: node.to_owned(), name: binary.to_owned(), child, log });
        Ok(())
    }

    /// Starts baton-main in the main node.
    pub fn start_main(&mut self, extra: &[String]) -> anyhow::Result<()> {
        let node = self.main_node()?;
        let n = self.lab.node(&node)?.clone();
        let mut args = vec![
            "--vip".to_owned(),
            self.lab.vip().to_string(),
            "--local-addr".to_owned(),
            n.addr.to_string(),
            "--iface".to_owned(),
            n.iface.clone(),
            "--origin-dir".to_owned(),
            self.origin_dir.display().to_string(),
            "--geoip".to_owned(),
            self.lab.geoip_path().display().to_string(),
            "--pin-dir".to_owned(),
            self.lab.pin_dir().join("main").display().to_string(),
            "--admin-socket".to_owned(),
            self.admin.display().to_string(),
            "--state-dir".to_owned(),
            self.lab.state_dir().join("main-state").display().to_string(),
        ];
        args.extend(self.tls_args("main"));
        args.extend(extra.iter().cloned());
        self.spawn(&node, "baton-main", &args)?;
        // Wait for the admin socket: the main is listening once it answers.
        let deadline = Instant::now() + REGISTRATION_TIMEOUT;
        while Instant::now() < deadline {
            if self.batonctl(&["participant", "list"]).map(|o| o.status.success()).unwrap_or(false) {
                return Ok(());
            }
            self.check_alive()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("baton-main did not come up; log:\n{}", self.log_tail(&node, "baton-main"))
    }

    /// Starts baton-participant in `node`.
    pub fn start_participant(&mut self, node: &str, extra: &[&str]) -> anyhow::Result<()> {
        let mut args = self.participant_args(node)?;
        args.extend(self.tls_args(node));
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(node, "baton-participant", &args)
    }

    /// The arguments that make baton-participant serve as `node` in this lab, without the
    /// `--tls-*` flags (see [`Cluster::tls_args`]).
    pub fn participant_args(&self, node: &str) -> anyhow::Result<Vec<String>> {
        let main = self.addr(&self.main_node()?)?;
        let n = self.lab.node(node)?.clone();
        let loc = n.location.clone().ok_or_else(|| anyhow!("{node} has no location"))?;
        Ok(vec![
            "--name".to_owned(),
            node.to_owned(),
            "--addr".to_owned(),
            n.addr.to_string(),
            "--main-addr".to_owned(),
            main.to_string(),
            "--vip".to_owned(),
            self.lab.vip().to_string(),
            "--lat".to_owned(),
            loc.lat.to_string(),
            "--lon".to_owned(),
            loc.lon.to_string(),
            "--iface".to_owned(),
            n.iface.clone(),
            "--cache-dir".to_owned(),
            self.lab.state_dir().join(format!("cache-{node}")).display().to_string(),
            "--pin-dir".to_owned(),
            self.lab.pin_dir().join(node).display().to_string(),
        ])
    }

    /// Starts `binary` in `node` with exactly `args` (killed with the cluster).
    pub fn start_process(&mut self, node: &str, binary: &str, args: &[String]) -> anyhow::Result<()> {
        self.spawn(node, binary, args)
    }

    /// The `--tls-*` flags of `node` (whose certificate is `<node>.pem` in [`Cluster::tls_dir`]).
    pub fn tls_args(&self, node: &str) -> Vec<String> {
        let f = |name: String| self.tls_dir.join(name).display().to_string();
        vec![
            "--tls-ca".to_owned(),
            f(baton_io::tls::CA_CERT_FILE.to_owned()),
            "--tls-cert".to_owned(),
            f(format!("{node}.pem")),
            "--tls-key".to_owned(),
            f(format!("{node}.key")),
        ]
    }

    /// Kills baton-main (SIGKILL) and starts it again with the same arguments.
    pub fn restart_main(&mut self, down_for: Duration) -> anyhow::Result<()> {
        let node = self.main_node()?;
        self.kill(&node, "baton-main");
        std::thread::sleep(down_for);
        let args = self.main_args.clone();
        self.start_main(&args)
    }

    /// Starts a participant again with the cluster's participant arguments.
    pub fn restart_participant(&mut self, node: &str) -> anyhow::Result<()> {
        let extra = self.participant_args.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.start_participant(node, &extra)
    }

    /// The main's flow list as JSON rows.
    pub fn flows(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.batonctl(&["--json", "flow", "list"])?;
        if !out.status.success() {
            bail!("batonctl failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        match serde_json::from_slice(&out.stdout)? {
            serde_json::Value::Array(rows) => Ok(rows),
            serde_json::Value::Null => Ok(Vec::new()),
            other => bail!("unexpected flow list {other}"),
        }
    }

    /// Sends `signal` to every process named `binary` in `node` (e.g. SIGSTOP, SIGCONT).
    pub fn signal(&self, node: &str, binary: &str, signal: libc::c_int) {
        for p in self.procs.iter().filter(|p| p.node == node && p.name == binary) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(p.child.id() as i32, signal) };
        }
    }

    /// Kills (SIGKILL) every process named `binary` in `node`.
    pub fn kill(&mut self, node: &str, binary: &str) {
        self.procs.retain_mut(|p| {
            if p.node == node && p.name == binary {
                p.kill();
                false
            } else {
                true
            }
        });
    }

    /// Stops (SIGTERM) every process named `binary` in `node`.
    pub fn stop(&mut self, node: &str, binary: &str) {
        self.procs.retain_mut(|p| {
            if p.node == node && p.name == binary {
                p.terminate();
                false
            } else {
                true
            }
        });
    }

    /// Fails if a started process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                bail!("{} in {} exited with {status}; log:\n{}", p.name, p.node, tail(&log, 40));
            }
        }
        Ok(())
    }

    pub fn log_tail(&self, node: &str, binary: &str) -> String {
        let path = self.lab.state_dir().join(format!("{node}.{binary}.log"));
        tail(&std::fs::read_to_string(path).unwrap_or_default(), 40)
    }

    /// Runs batonctl against this cluster's main.
    pub fn batonctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(bin("batonctl")?).arg("--admin").arg(&self.admin).args(args).output()?)
    }

    /// The main's participant list as JSON rows.
    pub fn participants(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.batonctl(&["--json", "participant", "list"])?;
        if !out.status.success() {
            bail!("batonctl failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        match serde_json::from_slice(&out.stdout)? {
            serde_json::Value::Array(rows) => Ok(rows),
            other => bail!("unexpected participant list {other}"),
        }
    }

    /// Waits until `n` participants are connected.
    pub fn wait_registered(&mut self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + REGISTRATION_TIMEOUT;
        loop {
            let up = self
                .participants()
                .map(|rows| rows.iter().filter(|r| r.get("connected").and_then(|v| v.as_bool()) == Some(true)).count())
                .unwrap_or(0);
            if up >= n {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("only {up} of {n} participants registered");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a deterministic pseudo-random object of `size` bytes into the origin; returns its
    /// SHA-256 in hex.
    pub fn write_object(&self, rel: &str, size: usize, seed: u64) -> anyhow::Result<String> {
        let path = self.origin_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let data = pseudo_random(size, seed);
        std::fs::write(&path, &data)?;
        Ok(hex::encode(sha2::Sha256::digest(&data)))
    }

    /// Puts an origin object into every participant's cache, as an operator pre-provisions
    /// popular content (participants verify it against the origin's digest before use).
    pub fn provision(&self, rel: &str) -> anyhow::Result<()> {
        let src = self.origin_dir.join(rel);
        for node in self.participant_names() {
            let dst = self.lab.state_dir().join(format!("cache-{node}")).join(rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let _ = std::fs::remove_file(&dst);
            std::fs::copy(&src, &dst).with_context(|| format!("provisioning {rel} on {node}"))?;
        }
        Ok(())
    }

    /// URL of an object through the VIP.
    pub fn vip_url(&self, rel: &str) -> String {
        format!("http://{}/{rel}", self.lab.vip())
    }

    /// Bytes `node`'s interface has transmitted (its kernel counter: everything it sent,
    /// headers included), for counting egress independently of what the programs report.
    pub fn tx_bytes(&self, node: &str) -> anyhow::Result<u64> {
        let iface = self.lab.node(node)?.iface.clone();
        let out = self.exec(node, &["ip", "-j", "-s", "link", "show", "dev", &iface])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j -s link output")?;
        v[0]["stats64"]["tx"]["bytes"].as_u64().ok_or_else(|| anyhow!("no tx byte counter for {iface} in {node}"))
    }

    /// Runs a command in a node and returns its output (whatever the exit status).
    pub fn exec(&self, node: &str, argv: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = self.lab.command(node, argv[0])?;
        Ok(cmd.args(&argv[1..]).stdin(Stdio::null()).output()?)
    }

    /// Runs `f` on a thread that has entered `node`'s network namespace (raw sockets from a
    /// client's point of view).
    pub fn in_node<T: Send + 'static>(&self, node: &str, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        in_netns(&self.lab.node(node)?.ns, f)
    }

    /// Starts a packet capture of TCP port 80 on a node's interface.
    pub fn capture(&self, node: &str) -> anyhow::Result<Capture> {
        self.capture_matching(node, "tcp port 80")
    }

    /// Starts a packet capture of what matches a tcpdump `filter` on a node's interface.
    pub fn capture_matching(&self, node: &str, filter: &str) -> anyhow::Result<Capture> {
        let file = self.lab.state_dir().join(format!("{node}-{}.pcap", unique()));
        let iface = self.lab.node(node)?.iface.clone();
        let mut cmd = self.lab.command(node, "tcpdump")?;
        cmd.args(["-i", &iface, "-n", "-s", "128", "-B", "65536", "-U", "-w"]).arg(&file).arg(filter);
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("starting tcpdump")?;
        let mut cap = Capture { child: Some(child), file };
        cap.wait_ready()?;
        Ok(cap)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failing test shows what the servers said: the lab and its logs go away with it.
        if std::thread::panicking() {
            for p in &self.procs {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                eprintln!("==== {} in {} (last lines) ====\n{}", p.name, p.node, tail(&log, 30));
            }
        }
        for p in &mut self.procs {
            p.kill();
        }
        if std::thread::panicking() {
            self.keep_evidence();
        }
    }
}

/// Where a failed test's logs and captures are kept (the lab's state directory goes away).
pub const FAILURE_DIR: &str = "/tmp/baton-test-failures";

impl Cluster {
    /// Copies the lab's logs and captures to `FAILURE_DIR/<lab>-<time>/` and says where.
    fn keep_evidence(&self) {
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let dest = Path::new(FAILURE_DIR).join(format!("{}-{}-{stamp}", self.lab.name(), self.dataplane));
        let copied = std::fs::create_dir_all(&dest).and_then(|()| {
            let mut n = 0;
            for entry in std::fs::read_dir(self.lab.state_dir())? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "log" || e == "pcap") {
                    if let Some(name) = path.file_name() {
                        std::fs::copy(&path, dest.join(name))?;
                        n += 1;
                    }
                }
            }
            Ok(n)
        });
        match copied {
            Ok(n) => eprintln!("==== {n} logs and captures kept in {} ====", dest.display()),
            Err(e) => eprintln!("==== could not keep the logs and captures in {}: {e} ====", dest.display()),
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Deterministic bytes (xorshift64*), so expected digests never depend on a file on disk.
pub fn pseudo_random(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A running tcpdump.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    pub rst: bool,
}

impl Capture {
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        // tcpdump announces "listening on" on stderr once the capture is armed.
        let child = self.child.as_mut().ok_or_else(|| anyhow!("capture already stopped"))?;
        let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("no tcpdump stderr"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut seen = Vec::new();
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(12).any(|w| w == b"listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).map_err(|_| anyhow!("tcpdump did not start"))
    }

    /// Stops the capture and returns its packets.
    pub fn finish(mut self) -> anyhow::Result<Vec<Packet>> {
        if let Some(mut child) = self.child.take() {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: signalling our own child; SIGINT makes tcpdump flush and exit.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
        let data = std::fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))?;
        let _ = std::fs::remove_file(&self.file);
        parse_pcap(&data)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Parses a classic pcap file into IPv4/TCP packet summaries (see [`tcpflow::parse_pcap`]).
pub fn parse_pcap(data: &[u8]) -> anyhow::Result<Vec<Packet>> {
    Ok(tcpflow::parse_pcap(data)?
        .into_iter()
        .map(|s| Packet {
            src: *s.src.ip(),
            src_port: s.src.port(),
            dst: *s.dst.ip(),
            dst_port: s.dst.port(),
            rst: s.has(tcpflow::flags::RST),
        })
        .collect())
}

/// Result of one curl download.
#[derive(Debug, Clone)]
pub struct Download {
    pub exit: i32,
    pub sha256: String,
    pub bytes: u64,
    pub seconds: f64,
    pub headers: BTreeMap<String, String>,
    pub stderr: String,
}

impl Download {
    pub fn served_by(&self) -> Option<&str> {
        self.headers.get("x-served-by").map(String::as_str)
    }
}

/// Downloads `url` with curl in `client` into a file, returning digest, size, time and headers.
pub fn curl_download(cluster: &Cluster, client: &str, url: &str, extra: &[&str]) -> anyhow::Result<Download> {
    spawn_curl(cluster, client, url, extra)?.finish()
}

/// A curl download running in the background.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    body: PathBuf,
    hdrs: PathBuf,
}

/// Starts curl in `client` fetching `url` into the lab's state directory; [`Background::finish`]
/// waits for it and checks what arrived.
pub fn spawn_curl(cluster: &Cluster, client: &str, url: &str, extra: &[&str]) -> anyhow::Result<Background> {
    let dir = cluster.lab.state_dir();
    let id = unique();
    let body = dir.join(format!("dl-{client}-{id}.bin"));
    let hdrs = dir.join(format!("dl-{client}-{id}.hdr"));
    let (b, h) = (body.display().to_string(), hdrs.display().to_string());
    let mut argv = vec!["-sS", "--max-time", "180", "-o", &b, "-D", &h, "-w", "%{size_download} %{time_total}"];
    argv.extend_from_slice(extra);
    argv.push(url);
    let child = cluster
        .lab
        .command(client, "curl")?
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting curl")?;
    Ok(Background { child: Some(child), body, hdrs })
}

impl Background {
    /// Whether curl is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Bytes of the body written so far.
    pub fn received(&self) -> u64 {
        std::fs::metadata(&self.body).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits for curl and reads what it got.
    pub fn finish(mut self) -> anyhow::Result<Download> {
        let child = self.child.take().ok_or_else(|| anyhow!("download already finished"))?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let mut it = stdout.split_whitespace();
        let bytes = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let sha256 = if self.body.exists() { sha256_file(&self.body)? } else { String::new() };
        let headers = std::fs::read_to_string(&self.hdrs)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())))
            .collect();
        let _ = std::fs::remove_file(&self.body);
        let _ = std::fs::remove_file(&self.hdrs);
        Ok(Download {
            exit: out.status.code().unwrap_or(-1),
            sha256,
            bytes,
            seconds,
            headers,
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.body);
        let _ = std::fs::remove_file(&self.hdrs);
    }
}

/// Parses Prometheus text format 0.0.4 strictly enough to catch a malformed page: every sample
/// belongs to a family declared with `# TYPE` before it, names are valid, values are numbers.
/// Returns `name{labels}` → value.
pub fn parse_metrics(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut typed = Vec::new();
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}: {line}", i + 1);
        if line.is_empty() || line.starts_with("# HELP ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split_whitespace();
            let (name, kind) = (p.next().unwrap_or(""), p.next().unwrap_or(""));
            if !valid_name(name) || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at("bad TYPE line"));
            }
            typed.push((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with('#') {
            return Err(at("unknown comment"));
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let name = series.split('{').next().unwrap_or("");
        if !valid_name(name) {
            return Err(at("bad metric name"));
        }
        // A histogram's (or summary's) samples are its name with _bucket, _sum or _count.
        let family = |t: &(String, String)| {
            t.0 == name
                || (matches!(t.1.as_str(), "histogram" | "summary")
                    && ["_bucket", "_sum", "_count"].iter().any(|suffix| name.strip_suffix(suffix) == Some(t.0.as_str())))
        };
        if !typed.iter().any(family) {
            return Err(at("sample before its TYPE"));
        }
        if series.contains('{') && !series.ends_with('}') {
            return Err(at("unterminated labels"));
        }
        let v: f64 = value.parse().map_err(|_| at("value is not a number"))?;
        out.insert(series.to_owned(), v);
    }
    Ok(out)
}

pub fn scrape_metrics(c: &Cluster, node: &str, port: u16) -> BTreeMap<String, f64> {
    let out = c.exec(node, &["curl", "-sS", "--max-time", "5", &format!("http://127.0.0.1:{port}/metrics")]).expect("curl");
    assert!(out.status.success(), "scrape {node}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    parse_metrics(&text).unwrap_or_else(|e| panic!("{node}: {e}\n{text}"))
}

/// A lab of the peer-cache tests and `bench peers`: the main (the origin) in Amsterdam on a
/// link of its own, and `peers` clients on one Ethernet segment (`lan: office`). Rates (tbf)
/// are optional: `main_rate` on the origin's link, `lan_rate` on each peer's port.
pub fn lan_topology(peers: &[&str], main_rate: Option<&str>, lan_rate: Option<&str>) -> String {
    let rate = |r: Option<&str>| r.map(|r| format!(", rate: {r}")).unwrap_or_default();
    let mut y = format!(
        "name: lan\nblock: 198.18.0.0/20\nvip: 203.0.113.10\nnodes:\n\
         - {{ name: main, role: main, location: {{ city: Amsterdam, country: NL, lat: 52.37, lon: 4.90 }}{} }}\n",
        rate(main_rate)
    );
    for p in peers {
        y.push_str(&format!("- {{ name: {p}, role: client, lan: office{} }}\n", rate(lan_rate)));
    }
    y
}

/// Link rates of the mirrors in [`fetch_topology`]: three different speeds, so the ranking and
/// the share of bytes each delivers can be checked.
pub const FETCH_MIRROR_RATES: [(&str, &str); 3] = [("p-fra", "80mbit"), ("p-par", "40mbit"), ("p-sin", "20mbit")];

/// The lab of the baton-fetch tests and `bench fetch`: the main and one client on fast links,
/// three participants (mirrors) on links of [`FETCH_MIRROR_RATES`]. The client is near p-fra.
pub fn fetch_topology() -> String {
    let node = |name: &str, role: &str, city: &str, cc: &str, lat: f64, lon: f64, rate: &str| {
        format!("  - name: {name}\n    role: {role}\n    location: {{ city: {city}, country: {cc}, lat: {lat}, lon: {lon} }}\n    rate: {rate}\n")
    };
    let [(a, ra), (b, rb), (c, rc)] = FETCH_MIRROR_RATES;
    [
        "name: fetch\nblock: 198.18.0.0/21\nvip: 203.0.113.10\nnodes:\n".to_owned(),
        node("main", "main", "Amsterdam", "NL", 52.37, 4.90, "10gbit"),
        node(a, "participant", "Frankfurt", "DE", 50.11, 8.68, ra),
        node(b, "participant", "Paris", "FR", 48.86, 2.35, rb),
        node(c, "participant", "Singapore", "SG", 1.29, 103.85, rc),
        node("c-fra", "client", "Mainz", "DE", 50.00, 8.27, "10gbit"),
    ]
    .concat()
}

/// Waits for a process started by [`spawn_fetch`], draining its pipes meanwhile, and kills it
/// when it runs past `limit` (the output then shows what it printed until then).
pub fn wait_fetch(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if Instant::now() > deadline {
                    // SAFETY: signalling a child of this process that has not been reaped.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = child.wait_with_output().expect("baton-fetch output");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watchdog.join();
    out
}

/// The JSON baton-fetch printed (`--json`: its summary, or its error object); panics with its
/// status and output when there is none.
pub fn fetch_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "baton-fetch printed no JSON ({e}); status {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Starts baton-fetch in `node` with `args`, stdout (the `--json` summary) and stderr piped.
pub fn spawn_fetch(cluster: &Cluster, node: &str, args: &[&str]) -> anyhow::Result<Child> {
    cluster
        .lab
        .command(node, bin("baton-fetch")?)?
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting baton-fetch")
}

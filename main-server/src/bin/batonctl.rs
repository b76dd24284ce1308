//! `batonctl`: the operator's command line for a Baton cluster: the running main's admin API
//! (over its unix socket, or HTTP with a bearer token), the cluster's certificates, and config
//! checks.
//!
//! Output is a human table by default and JSON with `--json`. Exit codes:
//! 0 success; 1 the main refused the request or it failed; 2 bad usage; 3 the main is
//! unreachable (or its answer unreadable); 4 the config file is invalid; 5 a local file
//! operation failed (certificates).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use baton_main::admin::{AdminRequest, AdminResponse, HTTP_PATH};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

/// How long batonctl waits for the main's answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer batonctl reads from the main.
const MAX_ANSWER_BYTES: u64 = 64 << 20;

const EXIT_REFUSED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 3;
const EXIT_BAD_CONFIG: u8 = 4;
const EXIT_LOCAL: u8 = 5;

#[derive(Debug, Parser)]
#[command(version, about = "Operate a Baton cluster: its main's admin API, its certificates, its config files")]
struct Cli {
    /// The main's admin API: a unix socket path, or http://host:port for the HTTP API.
    #[arg(long, global = true, default_value = "/run/baton/main.sock", env = "BATON_ADMIN")]
    admin: String,
    /// File holding the bearer token of the HTTP admin API.
    #[arg(long, global = true, env = "BATON_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Manage participants.
    #[command(subcommand)]
    Participant(ParticipantCmd),
    /// Handed-off connections: list, show, move them between participants.
    #[command(subcommand)]
    Flow(FlowCmd),
    /// The whole ranking of participants for a client (and object), and why the winner won.
    Explain {
        /// The client's address.
        client: Ipv4Addr,
        /// The object the client asks for (object presence counts in the ranking).
        path: Option<String>,
    },
    /// Where the main's GeoIP database puts an address.
    Geo { ip: Ipv4Addr },
    /// The main's counters.
    Stats,
    /// Config files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The cluster's certificate authority and certificates (control-channel mutual TLS).
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Debug, Subcommand)]
enum FlowCmd {
    /// Every handed-off connection, its participant and how far it got.
    List {
        /// Include the main's own health-probe connections.
        #[arg(long)]
        probes: bool,
    },
    /// One connection in detail.
    Show { flow: u64 },
    /// Move a live connection to another participant without the client noticing.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["flow", "from"])))]
    Move {
        /// The flow id (from `batonctl flow list`).
        flow: Option<u64>,
        /// Move every flow of this participant instead.
        #[arg(long, conflicts_with = "flow")]
        from: Option<String>,
        /// The participant to move to (default: each flow's next-best participant).
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ParticipantCmd {
    /// List participants with their state (healthy, unhealthy, draining, down) and load.
    List,
    /// One participant in detail: load, health and probes, flows.
    Show { name: String },
    /// Add a participant (it serves once its process connects under this name); kept across
    /// restarts of the main.
    Add {
        name: String,
        #[arg(long)]
        addr: Ipv4Addr,
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        lon: f64,
        #[arg(long, default_value_t = 1000)]
        capacity: u32,
    },
    /// Remove a participant: it gets no new flows, and its flows move elsewhere.
    Remove { name: String },
    /// Send the participant nothing new and move each of its flows to its next-best participant.
    Drain { name: String },
    /// Let a drained participant take new connections again.
    Undrain { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    Main,
    Participant,
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Check a config file: every error names the field and the line.
    Check {
        file: PathBuf,
        /// Which server the file is for (default: a file with a top-level `name` is a
        /// participant's).
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Create the cluster CA (ca.pem, ca.key) in a directory.
    Init {
        dir: PathBuf,
        /// Validity of the CA certificate, in days.
        #[arg(long, default_value_t = baton_io::tls::DEFAULT_CA_VALIDITY_DAYS)]
        days: u32,
        /// Replace an existing CA (every certificate it issued stops being accepted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate: a participant's (named as it registers), or the main's (--main).
    Issue {
        name: String,
        /// Directory of the CA (ca.pem, ca.key).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where to write <name>.pem and <name>.key (default: the CA directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Issue the main's certificate, valid for these addresses (repeat --ip).
        #[arg(long)]
        main: bool,
        #[arg(long = "ip", requires = "main")]
        ips: Vec<IpAddr>,
        #[arg(long, default_value_t = baton_io::tls::DEFAULT_VALIDITY_DAYS)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let req = match &cli.cmd {
        Cmd::Config(ConfigCmd::Check { file, role }) => return config_check(file, *role, cli.json),
        Cmd::Cluster(c) => return cluster(c, cli.json),
        Cmd::Participant(ParticipantCmd::List) => AdminRequest::ParticipantList,
        Cmd::Participant(ParticipantCmd::Show { name }) => AdminRequest::ParticipantShow { name: name.clone() },
        Cmd::Participant(ParticipantCmd::Add { name, addr, lat, lon, capacity }) => {
            AdminRequest::ParticipantAdd { name: name.clone(), addr: *addr, lat: *lat, lon: *lon, capacity: *capacity }
        }
        Cmd::Participant(ParticipantCmd::Remove { name }) => AdminRequest::ParticipantRemove { name: name.clone() },
        Cmd::Participant(ParticipantCmd::Drain { name }) => AdminRequest::ParticipantDrain { name: name.clone() },
        Cmd::Participant(ParticipantCmd::Undrain { name }) => AdminRequest::ParticipantUndrain { name: name.clone() },
        Cmd::Flow(FlowCmd::List { probes }) => AdminRequest::FlowList { probes: *probes },
        Cmd::Flow(FlowCmd::Show { flow }) => AdminRequest::FlowShow { flow: *flow },
        Cmd::Flow(FlowCmd::Move { flow, from, to }) => AdminRequest::FlowMove { flow: *flow, from: from.clone(), to: to.clone() },
        Cmd::Explain { client, path } => AdminRequest::Explain { client: *client, path: path.clone() },
        Cmd::Geo { ip } => AdminRequest::Geo { ip: *ip },
        Cmd::Stats => AdminRequest::Stats,
    };
    let resp = match call(&cli.admin, cli.token_file.as_deref(), &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("batonctl: cannot reach baton-main at {}: {e}", cli.admin);
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if !resp.ok {
        eprintln!("batonctl: {}", resp.error.as_deref().unwrap_or("request refused"));
        return ExitCode::from(EXIT_REFUSED);
    }
    let data = resp.data.unwrap_or(Value::Null);
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&data).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    print_human(&cli.cmd, &data);
    ExitCode::SUCCESS
}

/// A JSON field as display text ("-" when absent or null).
fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn print_human(cmd: &Cmd, data: &Value) {
    match cmd {
        Cmd::Participant(ParticipantCmd::List) => {
            println!(
                "{:<14} {:<16} {:>8} {:>9} {:<10} {:>6} {:>9} {:>10} {:>6}",
                "NAME", "ADDRESS", "LAT", "LON", "STATE", "FLOWS", "CAPACITY", "MBIT/S", "LOAD"
            );
            for r in data.as_array().into_iter().flatten() {
                let load = r.get("load").cloned().unwrap_or(Value::Null);
                println!(
                    "{:<14} {:<16} {:>8.2} {:>9.2} {:<10} {:>6} {:>9} {:>10.1} {:>6.2}",
                    text(r, "name"),
                    text(r, "addr"),
                    num(r, "lat"),
                    num(r, "lon"),
                    text(r, "state"),
                    text(r, "active_flows"),
                    text(r, "capacity"),
                    num(&load, "bytes_per_sec") * 8.0 / 1e6,
                    num(&load, "load_avg_milli") / 1000.0,
                );
            }
        }
        Cmd::Participant(ParticipantCmd::Show { .. }) => {
            let p = data.get("participant").cloned().unwrap_or(Value::Null);
            let load = p.get("load").cloned().unwrap_or(Value::Null);
            println!("name          {}", text(&p, "name"));
            println!("address       {}", text(&p, "addr"));
            println!("location      {:.4}, {:.4}", num(&p, "lat"), num(&p, "lon"));
            println!("state         {}", text(&p, "state"));
            println!("connected     {}", text(&p, "connected"));
            println!("added by      {}", if p.get("static_entry").and_then(Value::as_bool) == Some(true) { "operator" } else { "itself" });
            println!("flows         {} of {}", text(&p, "active_flows"), text(&p, "capacity"));
            println!("sending       {:.1} Mbit/s", num(&load, "bytes_per_sec") * 8.0 / 1e6);
            println!("load average  {:.2}", num(&load, "load_avg_milli") / 1000.0);
            println!("cache         {:.1} MiB", num(&load, "cache_bytes") / (1024.0 * 1024.0));
            println!("known objects {}", text(&p, "known_objects"));
            match data.get("health") {
                Some(h) if !h.is_null() => {
                    println!("healthy       {}", text(h, "healthy"));
                    println!("probes        {} ok / {} failed in a row", text(h, "consecutive_ok"), text(h, "consecutive_failed"));
                    println!("flap penalty  {:.0}{}", num(h, "penalty"), if h.get("suppressed").and_then(Value::as_bool) == Some(true) { " (held by damping)" } else { "" });
                    if let Some(last) = h.get("last_probe").filter(|v| !v.is_null()) {
                        let ok = last.get("ok").and_then(Value::as_bool) == Some(true);
                        println!("last probe    {} in {:.1} ms: {}", if ok { "ok" } else { "FAILED" }, num(last, "duration_ms"), text(last, "detail"));
                    }
                }
                _ => println!("healthy       - (not probed)"),
            }
            let flows: Vec<String> = data.get("flows").and_then(Value::as_array).into_iter().flatten().map(|v| v.to_string()).collect();
            println!("flow ids      {}", if flows.is_empty() { "-".to_owned() } else { flows.join(" ") });
        }
        Cmd::Flow(FlowCmd::List { .. }) => {
            println!("{:>8} {:<22} {:<14} {:<10} {:>5} {:>14} OBJECT", "FLOW", "CLIENT", "PARTICIPANT", "PHASE", "MOVES", "ACKED");
            for r in data.as_array().into_iter().flatten() {
                println!(
                    "{:>8} {:<22} {:<14} {:<10} {:>5} {:>14} {}",
                    text(r, "id"),
                    text(r, "client"),
                    text(r, "participant"),
                    text(r, "phase"),
                    text(r, "moves"),
                    text(r, "acked"),
                    text(r, "object")
                );
            }
        }
        Cmd::Flow(FlowCmd::Show { .. }) => {
            let f = data.get("flow").cloned().unwrap_or(Value::Null);
            println!("flow          {}", text(&f, "id"));
            println!("client        {}", text(data, "client"));
            println!("vip           {}", text(data, "vip"));
            println!("participant   {}", text(&f, "participant"));
            println!("phase         {}", text(&f, "phase"));
            println!("moves         {}", text(&f, "moves"));
            println!("acked         {} of {} bytes sent", text(&f, "acked"), text(data, "sent_end"));
            for r in data.get("responses").and_then(Value::as_array).into_iter().flatten() {
                println!("response      at {} object {} bytes {}+{}", text(r, "start"), text(r, "object"), text(r, "body_offset"), text(r, "body_len"));
            }
        }
        Cmd::Flow(FlowCmd::Move { .. }) => {
            for m in data.get("moving").and_then(Value::as_array).into_iter().flatten() {
                println!("flow {} moving to {}", text(m, "flow"), text(m, "to"));
            }
            for e in data.get("errors").and_then(Value::as_array).into_iter().flatten() {
                eprintln!("batonctl: {}", e.as_str().unwrap_or_default());
            }
        }
        Cmd::Participant(ParticipantCmd::Drain { name }) => println!("{name}: draining, {} flow(s) moving", text(data, "moving")),
        Cmd::Explain { .. } => print_explain(data),
        Cmd::Geo { .. } => {
            if data.get("found").and_then(Value::as_bool) == Some(true) {
                println!(
                    "{}: {:.4}, {:.4} ({}, {})",
                    text(data, "ip"),
                    num(data, "lat"),
                    num(data, "lon"),
                    text(data, "city"),
                    text(data, "country")
                );
            } else {
                println!("{}: not in the GeoIP database", text(data, "ip"));
            }
        }
        Cmd::Stats => {
            for (k, v) in data.as_object().into_iter().flatten() {
                match v {
                    Value::Object(m) => {
                        let parts: Vec<String> = m.iter().map(|(a, b)| format!("{a}={b}")).collect();
                        println!("{k:<22} {}", if parts.is_empty() { "-".to_owned() } else { parts.join(" ") });
                    }
                    other => println!("{k:<22} {other}"),
                }
            }
        }
        _ => println!("ok"),
    }
}

fn print_explain(data: &Value) {
    let client = data.get("client").cloned().unwrap_or(Value::Null);
    if client.get("found").and_then(Value::as_bool) == Some(true) {
        println!(
            "client {} at {:.2}, {:.2} ({}, {})",
            text(&client, "ip"),
            num(&client, "lat"),
            num(&client, "lon"),
            text(&client, "city"),
            text(&client, "country")
        );
    } else {
        println!("client {}: location unknown (distance does not count)", text(&client, "ip"));
    }
    if let Some(o) = data.get("object").and_then(Value::as_str) {
        println!("object {o}");
    }
    let ranking = data.get("ranking").cloned().unwrap_or(Value::Null);
    println!(
        "{:>4} {:<14} {:>9} {:>6} {:>6} {:<10} {:>6} {:>8}  EXCLUDED",
        "RANK", "PARTICIPANT", "KM", "LOAD", "FREE", "HEALTH", "OBJECT", "SCORE"
    );
    for (i, r) in ranking.get("ranked").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let km = r.get("distance_km").and_then(Value::as_f64).map_or("-".to_owned(), |d| format!("{d:.0}"));
        println!(
            "{:>4} {:<14} {:>9} {:>6.2} {:>6} {:<10} {:>6} {:>8.4}  {}",
            i + 1,
            text(r, "name"),
            km,
            num(r, "load"),
            text(r, "free_slots"),
            text(r, "health"),
            if r.get("has_object").and_then(Value::as_bool) == Some(true) { "yes" } else { "no" },
            num(r, "score"),
            text(r, "excluded"),
        );
    }
    println!("{}", text(&ranking, "reason"));
}

/// `batonctl config check`: exit 0 when valid, 4 with every problem on stderr otherwise.
fn config_check(file: &Path, role: Option<Role>, json: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("batonctl: reading {}: {e}", file.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let name = file.display().to_string();
    let role = role.unwrap_or(match baton_shared::config::detect_role(&text) {
        baton_shared::config::ConfigRole::Main => Role::Main,
        baton_shared::config::ConfigRole::Participant => Role::Participant,
    });
    let result = match role {
        Role::Main => baton_shared::config::parse_main(&name, &text, &[]).map(|c| serde_json::to_value(c).unwrap_or(Value::Null)),
        Role::Participant => baton_shared::config::parse_participant(&name, &text, &[]).map(|c| serde_json::to_value(c).unwrap_or(Value::Null)),
    };
    let role_name = match role {
        Role::Main => "main",
        Role::Participant => "participant",
    };
    match result {
        Ok(cfg) => {
            if json {
                println!("{}", serde_json::json!({ "ok": true, "role": role_name, "config": cfg }));
            } else {
                println!("{name}: valid {role_name} config");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "role": role_name, "file": e.file, "field": e.field, "line": e.line, "column": e.column, "kind": format!("{:?}", e.kind), "message": e.message })
                );
            }
            eprintln!("{e}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

fn cluster(cmd: &ClusterCmd, json: bool) -> ExitCode {
    let result = match cmd {
        ClusterCmd::Init { dir, days, force } => baton_io::tls::init_ca(dir, "Baton cluster CA", *days, *force)
            .map(|f| serde_json::json!({ "cert": f.cert, "key": f.key })),
        ClusterCmd::Issue { name, ca_dir, out, main, ips, days, force } => {
            let role = if *main { baton_io::tls::Role::Main { ips: ips.clone() } } else { baton_io::tls::Role::Participant };
            baton_io::tls::issue(ca_dir, name, role, *days, out.as_deref().unwrap_or(ca_dir), *force)
                .map(|f| serde_json::json!({ "cert": f.cert, "key": f.key }))
        }
    };
    match result {
        Ok(v) => {
            if json {
                println!("{v}");
            } else {
                println!("wrote {} and {}", text(&v, "cert"), text(&v, "key"));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("batonctl: {e}");
            ExitCode::from(EXIT_LOCAL)
        }
    }
}

/// Sends one request to the admin API at `admin` (a socket path or an http:// address).
fn call(admin: &str, token_file: Option<&Path>, req: &AdminRequest) -> std::io::Result<AdminResponse> {
    let body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    let Some(authority) = admin.strip_prefix("http://") else {
        let mut stream = UnixStream::connect(admin)?;
        stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
        let mut line = body;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut reader = BufReader::new(stream.take(MAX_ANSWER_BYTES));
        let mut resp = String::new();
        reader.read_line(&mut resp)?;
        return serde_json::from_str(&resp).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
    };
    let authority = authority.trim_end_matches('/');
    let token = match token_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| std::io::Error::new(e.kind(), format!("reading the token file {}: {e}", p.display())))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        None => String::new(),
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{authority} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&addr, ADMIN_TIMEOUT)?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    let head = format!(
        "POST {HTTP_PATH} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER_BYTES).read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP answer"))?;
    let status_line = String::from_utf8_lossy(&answer[..split]).lines().next().unwrap_or("").to_owned();
    let parsed: Result<AdminResponse, _> = serde_json::from_slice(&answer[split + 4..]);
    match parsed {
        Ok(r) => Ok(r),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected answer: {status_line}"))),
    }
}

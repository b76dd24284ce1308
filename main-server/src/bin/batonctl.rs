//! `batonctl`: the operator's command line for a running baton-main (through its admin API).
//!
//! Exit codes: 0 success, 1 the main refused the request, 2 bad usage, 3 the main is unreachable.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use baton_main::admin::{AdminRequest, AdminResponse};
use clap::{Parser, Subcommand};

/// How long batonctl waits for the main's answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(version, about = "Operate a Baton cluster through its main's admin API")]
struct Cli {
    /// The main's admin socket.
    #[arg(long, global = true, default_value = "/run/baton/main.sock", env = "BATON_ADMIN")]
    admin: PathBuf,
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
    /// Handed-off connections: list them, move them between participants.
    #[command(subcommand)]
    Flow(FlowCmd),
    /// Show the main's counters.
    Stats,
}

#[derive(Debug, Subcommand)]
enum FlowCmd {
    /// Every handed-off connection, its participant and how far it got.
    List,
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
    /// List participants.
    List,
    /// Add a participant (it serves once its process connects under this name).
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
    /// Remove a participant: it gets no new flows.
    Remove { name: String },
    /// Send the participant nothing new and move each of its flows to its next-best participant.
    Drain { name: String },
    /// Let a drained participant take new connections again.
    Undrain { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let req = match &cli.cmd {
        Cmd::Participant(ParticipantCmd::List) => AdminRequest::ParticipantList,
        Cmd::Participant(ParticipantCmd::Add { name, addr, lat, lon, capacity }) => AdminRequest::ParticipantAdd {
            name: name.clone(),
            addr: *addr,
            lat: *lat,
            lon: *lon,
            capacity: *capacity,
        },
        Cmd::Participant(ParticipantCmd::Remove { name }) => AdminRequest::ParticipantRemove { name: name.clone() },
        Cmd::Participant(ParticipantCmd::Drain { name }) => AdminRequest::ParticipantDrain { name: name.clone() },
        Cmd::Participant(ParticipantCmd::Undrain { name }) => AdminRequest::ParticipantUndrain { name: name.clone() },
        Cmd::Flow(FlowCmd::List) => AdminRequest::FlowList,
        Cmd::Flow(FlowCmd::Move { flow, from, to }) => AdminRequest::FlowMove { flow: *flow, from: from.clone(), to: to.clone() },
        Cmd::Stats => AdminRequest::Stats,
    };
    let resp = match call(&cli.admin, &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("batonctl: cannot reach baton-main at {}: {e}", cli.admin.display());
            return ExitCode::from(3);
        }
    };
    if !resp.ok {
        eprintln!("batonctl: {}", resp.error.as_deref().unwrap_or("request refused"));
        return ExitCode::from(1);
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&resp.data.unwrap_or(serde_json::Value::Null)).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    match (&cli.cmd, resp.data) {
        (Cmd::Participant(ParticipantCmd::List), Some(serde_json::Value::Array(rows))) => {
            println!("{:<16} {:<16} {:>8} {:>9} {:>9} {:>6} {:<10}", "NAME", "ADDRESS", "LAT", "LON", "CAPACITY", "FLOWS", "STATE");
            for r in rows {
                let s = |k: &str| r.get(k).map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())).unwrap_or_default();
                let state = if r.get("connected").and_then(|v| v.as_bool()) == Some(true) { "up" } else { "down" };
                println!(
                    "{:<16} {:<16} {:>8.2} {:>9.2} {:>9} {:>6} {:<10}",
                    s("name"),
                    s("addr"),
                    r.get("lat").and_then(|v| v.as_f64()).unwrap_or(0.0),
                    r.get("lon").and_then(|v| v.as_f64()).unwrap_or(0.0),
                    s("capacity"),
                    s("active_flows"),
                    state
                );
            }
        }
        (Cmd::Flow(FlowCmd::List), Some(serde_json::Value::Array(rows))) => {
            println!("{:>8} {:<22} {:<14} {:<10} {:>5} {:>14} {:<}", "FLOW", "CLIENT", "PARTICIPANT", "PHASE", "MOVES", "ACKED", "OBJECT");
            for r in rows {
                let s = |k: &str| r.get(k).map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())).unwrap_or_default();
                println!(
                    "{:>8} {:<22} {:<14} {:<10} {:>5} {:>14} {:<}",
                    s("id"),
                    s("client"),
                    s("participant"),
                    s("phase"),
                    s("moves"),
                    s("acked"),
                    r.get("object").and_then(|v| v.as_str()).unwrap_or("-")
                );
            }
        }
        (Cmd::Flow(FlowCmd::Move { .. }), Some(data)) => {
            for m in data.get("moving").and_then(|v| v.as_array()).into_iter().flatten() {
                println!("flow {} moving to {}", m.get("flow").map(ToString::to_string).unwrap_or_default(), m.get("to").and_then(|v| v.as_str()).unwrap_or("?"));
            }
            for e in data.get("errors").and_then(|v| v.as_array()).into_iter().flatten() {
                eprintln!("batonctl: {}", e.as_str().unwrap_or_default());
            }
        }
        (Cmd::Participant(ParticipantCmd::Drain { name }), Some(data)) => {
            println!("{name}: draining, {} flow(s) moving", data.get("moving").map(ToString::to_string).unwrap_or_default());
        }
        (Cmd::Stats, Some(serde_json::Value::Object(map))) => {
            for (k, v) in map {
                println!("{k:<18} {v}");
            }
        }
        _ => println!("ok"),
    }
    ExitCode::SUCCESS
}

fn call(path: &PathBuf, req: &AdminRequest) -> std::io::Result<AdminResponse> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut resp = String::new();
    reader.read_line(&mut resp)?;
    serde_json::from_str(&resp).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

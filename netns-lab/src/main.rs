//! `baton-lab`: bring a lab of network namespaces up, show it, run commands in it, take it down.
//!
//! A thin shell over the `baton_lab` library: it parses arguments, prints tables and maps
//! errors to exit codes. It never builds or removes anything the library does not.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use baton_lab::delay_line::{self, Options};
use baton_lab::{Delay, Impairment, Lab, Loss, Role, Topology};
use clap::{Parser, Subcommand};
use ipnet::Ipv4Net;
use tracing_subscriber::EnvFilter;

/// Labs of Linux network namespaces for Baton.
#[derive(Debug, Parser)]
#[command(name = "baton-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a lab (removing a previous lab of the same name first) and leave it running.
    Up {
        /// Topology file; the embedded default when omitted.
        topology: Option<PathBuf>,
        /// Lab name (namespace prefix); the topology's name when omitted.
        #[arg(long)]
        name: Option<String>,
        /// Address block for the links, inside 198.18.0.0/15; the topology's when omitted.
        #[arg(long)]
        block: Option<Ipv4Net>,
    },
    /// Remove a lab: its processes, namespaces, pinned maps and state.
    Down {
        /// Lab name; the default topology's name when omitted.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show a lab's nodes, addresses and running processes.
    Status {
        /// Lab name; the default topology's name when omitted.
        #[arg(long)]
        name: Option<String>,
    },
    /// Run a command inside a node's network namespace and exit with its exit code.
    Exec {
        /// The node (`router` for the router).
        node: String,
        /// Lab name; the default topology's name when omitted.
        #[arg(long)]
        name: Option<String>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Run the delay line of one link as a daemon. The lab starts it inside the link's
    /// delay-line namespace; it is not meant to be run by hand.
    #[command(name = "delay-line", hide = true)]
    DelayLine {
        /// Interface towards the node.
        #[arg(long)]
        node_iface: String,
        /// Interface towards the router.
        #[arg(long)]
        router_iface: String,
        /// One-way delay in each direction.
        #[arg(long)]
        delay: Delay,
        /// Upper bound of the uniform extra delay per frame.
        #[arg(long)]
        jitter: Delay,
        /// Drop probability per frame.
        #[arg(long)]
        loss: Loss,
        /// Seed of the loss and jitter draws.
        #[arg(long)]
        seed: u64,
        /// Where the daemon's pid is written.
        #[arg(long)]
        pid_file: PathBuf,
        /// Where the daemon logs.
        #[arg(long)]
        log_file: PathBuf,
    },
}

fn default_name() -> String {
    Topology::default_topology().name().to_owned()
}

fn print_table(lab: &Lab) {
    let rows: Vec<[String; 6]> = lab
        .nodes()
        .iter()
        .map(|node| {
            let processes = match lab.processes(&node.name) {
                Ok(pids) => pids.len().to_string(),
                Err(error) => {
                    tracing::warn!(node = node.name, %error, "cannot list processes");
                    "?".to_owned()
                }
            };
            let addr = if node.role == Role::Router {
                format!("{} (.1 on each link)", node.subnet)
            } else {
                format!("{}/{}", node.addr, node.subnet.prefix_len())
            };
            let city = node.location.as_ref().map_or_else(
                || "-".to_owned(),
                |location| format!("{}, {}", location.city, location.country),
            );
            [
                node.name.clone(),
                node.role.to_string(),
                node.ns.clone(),
                addr,
                city,
                processes,
            ]
        })
        .collect();
    let header = ["NODE", "ROLE", "NAMESPACE", "ADDRESS", "CITY", "PROCESSES"].map(str::to_owned);
    let mut widths = header.clone().map(|cell| cell.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    for line in lab.delay_lines() {
        let pid = line
            .pid()
            .map_or_else(|| "no pid".to_owned(), |pid| format!("pid {pid}"));
        let impairment = line.impairment;
        println!(
            "delay line on {}: delay {}, jitter {}, loss {}% ({}, namespace {}, log {})",
            line.node,
            Delay::from(impairment.delay),
            Delay::from(impairment.jitter),
            impairment.loss * 100.0,
            pid,
            line.ns,
            line.log_file.display()
        );
    }
}

fn up(topology: Option<PathBuf>, name: Option<String>, block: Option<Ipv4Net>) -> Result<()> {
    let mut topology = match &topology {
        Some(path) => Topology::load(path)?,
        None => Topology::default_topology(),
    };
    if let Some(name) = name {
        topology = topology.with_name(&name);
    }
    if let Some(block) = block {
        topology = topology.with_block(block);
    }
    let lab =
        Lab::up(&topology).with_context(|| format!("bringing up lab `{}`", topology.name()))?;
    println!(
        "lab `{}` is up: VIP {}, state in {}",
        lab.name(),
        lab.vip(),
        lab.state_dir().display()
    );
    print_table(&lab);
    println!("remove it with: baton-lab down --name {}", lab.name());
    lab.keep();
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Up {
            topology,
            name,
            block,
        } => up(topology, name, block)?,
        Cmd::Down { name } => {
            let name = name.unwrap_or_else(default_name);
            Lab::down_by_name(&name).with_context(|| format!("taking down lab `{name}`"))?;
            println!("lab `{name}` is down");
        }
        Cmd::Status { name } => {
            let name = name.unwrap_or_else(default_name);
            let lab = Lab::open(&name).with_context(|| format!("opening lab `{name}`"))?;
            println!(
                "lab `{}`: VIP {}, state in {}",
                lab.name(),
                lab.vip(),
                lab.state_dir().display()
            );
            print_table(&lab);
        }
        Cmd::DelayLine {
            node_iface,
            router_iface,
            delay,
            jitter,
            loss,
            seed,
            pid_file,
            log_file,
        } => {
            let impairment = Impairment::from_fields(Some(delay), Some(jitter), Some(loss))
                .unwrap_or(Impairment::NONE);
            delay_line::serve(&Options {
                node_iface,
                router_iface,
                impairment,
                seed,
                pid_file,
                log_file,
            })
            .context("delay line")?;
        }
        Cmd::Exec { node, name, argv } => {
            let name = name.unwrap_or_else(default_name);
            let lab = Lab::open(&name).with_context(|| format!("opening lab `{name}`"))?;
            let Some((program, args)) = argv.split_first() else {
                bail!("no command given")
            };
            let status = lab
                .command(&node, program)?
                .args(args)
                .status()
                .with_context(|| format!("running `{program}` in node `{node}`"))?;
            return Ok(exit_code(status));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code of a finished child; killed by a signal is 128 + the signal, as in a shell.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("baton_lab=info,warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

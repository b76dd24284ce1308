//! Command-line pieces both servers share: the data-plane flags, the config file, log set-up and
//! the runtime.
//!
//! Every setting lives in the server's YAML config (`baton_shared::config`); a flag is only a
//! way to set one config field for one run, and wins over the file. Each binary lists which
//! config path each of its flags sets ([`FlagPath`]), and [`overrides`] turns the flags the
//! user gave into config overrides, so a flag without a config equivalent cannot exist (the
//! binaries test that every flag is listed). What the settings mean is decided by the servers.

use std::path::{Path, PathBuf};

use baton_ebpf::{AttachMode, Encap};
use baton_shared::config::{ConfigError, DataplaneConfig, DataplaneMode, EncapKind, LogFormat, Override};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, ValueEnum};

/// Where the data-plane program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataplaneArg {
    Tc,
    Xdp,
    /// The main only: forwarding by baton-main's threads, without BPF.
    Userspace,
}

/// Encapsulation between the main and its participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncapArg {
    Ipip,
    Gue,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

/// Flags of both servers. Defaults are the config's (see the example config files).
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// YAML config file; flags given as well win over it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Data-plane attachment [config: dataplane.mode; default tc].
    #[arg(long, value_enum)]
    pub dataplane: Option<DataplaneArg>,
    /// Encapsulation of the client packets the main forwards to participants [config:
    /// dataplane.encap; default ipip].
    #[arg(long, value_enum)]
    pub encap: Option<EncapArg>,
    /// UDP port for GUE encapsulation [config: dataplane.gue_port; default 6080].
    #[arg(long)]
    pub gue_port: Option<u16>,
    /// Log format [config: log.format; default text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Deadline for a client's request head, in milliseconds [config: head_timeout_ms].
    #[arg(long)]
    pub head_timeout_ms: Option<u64>,
    /// Time a response write may make no progress (the client reads nothing) before the
    /// connection is closed, in milliseconds [config: send_timeout_ms; default 60000].
    #[arg(long)]
    pub send_timeout_ms: Option<u64>,
    /// Runtime threads [config: threads; default 1]. 1 runs everything on one thread, which
    /// keeps the handoff's task-to-task wake-ups off other cores; the bulk work (sendfile) is
    /// the kernel's.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Why the command line or the config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{flag} has no config equivalent")]
    NoConfigEquivalent { flag: String },
    #[error("reading the config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] ConfigError),
}

/// Which config field a flag sets: `(flag id, config path, fixed value)`. The fixed value is
/// for switches (`--no-standby` sets `control.standby` to `false`); other flags pass their text.
pub type FlagPath = (&'static str, &'static str, Option<&'static str>);

/// The config paths of [`CommonArgs`]' flags.
pub const COMMON_FLAG_PATHS: &[FlagPath] = &[
    ("dataplane", "dataplane.mode", None),
    ("encap", "dataplane.encap", None),
    ("gue_port", "dataplane.gue_port", None),
    ("log_format", "log.format", None),
    ("head_timeout_ms", "head_timeout_ms", None),
    ("send_timeout_ms", "send_timeout_ms", None),
    ("threads", "threads", None),
];

/// A server's settings from its command line: the config file named by `--config` (if any)
/// with every flag the user gave applied over it, read by `parse` (`parse_main` or
/// `parse_participant`). Exits with clap's usage message on a bad command line.
pub fn configure<T>(
    command: clap::Command,
    table: &[FlagPath],
    parse: impl FnOnce(&str, &str, &[Override]) -> Result<T, ConfigError>,
) -> Result<T, CliError> {
    let matches = command.clone().get_matches();
    let overrides = overrides(&command, &matches, table)?;
    let (file, text) = read_config(matches.get_one::<PathBuf>("config").map(PathBuf::as_path))?;
    Ok(parse(&file, &text, &overrides)?)
}

/// Flag ids that are not settings.
const NOT_SETTINGS: &[&str] = &["config", "help", "version"];

/// The overrides for every flag the user gave on the command line, by `table` (the binary's
/// flags followed by [`COMMON_FLAG_PATHS`]).
pub fn overrides(command: &clap::Command, matches: &ArgMatches, table: &[FlagPath]) -> Result<Vec<Override>, CliError> {
    let mut out = Vec::new();
    // The command's arguments, not `matches.ids()`: those include argument groups (a flattened
    // struct's name), which are not flags.
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if NOT_SETTINGS.contains(&id) || matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let Some((_, path, fixed)) = table.iter().chain(COMMON_FLAG_PATHS).find(|(f, _, _)| *f == id) else {
            return Err(CliError::NoConfigEquivalent { flag: format!("--{}", id.replace('_', "-")) });
        };
        let raw = match fixed {
            Some(v) => (*v).to_owned(),
            None => matches
                .get_raw(id)
                .and_then(|mut v| v.next())
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        out.push(Override { flag: format!("--{}", id.replace('_', "-")), path: (*path).to_owned(), raw });
    }
    Ok(out)
}

/// Checks that every flag of `command` is listed in `table` (or is not a setting), and that
/// every listed path exists in `example` (a config with every key, as YAML). For the binaries'
/// tests.
pub fn check_flag_table(command: &clap::Command, table: &[FlagPath], example: &str) -> Result<(), String> {
    let value: serde_yaml::Value = serde_yaml::from_str(example).map_err(|e| e.to_string())?;
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if NOT_SETTINGS.contains(&id) {
            continue;
        }
        let Some((_, path, _)) = table.iter().chain(COMMON_FLAG_PATHS).find(|(f, _, _)| *f == id) else {
            return Err(format!("--{id} has no config equivalent"));
        };
        let mut at = &value;
        for part in path.split('.') {
            at = at.get(part).ok_or_else(|| format!("--{id} sets {path}, which the example config lacks"))?;
        }
    }
    Ok(())
}

/// The config file's name and text; an empty text when there is no file (flags only).
pub fn read_config(path: Option<&Path>) -> Result<(String, String), CliError> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| CliError::Read { path: p.display().to_string(), source })?;
            Ok((p.display().to_string(), text))
        }
        None => Ok(("(no config file)".to_owned(), String::new())),
    }
}

/// The data plane's attachment for a configured mode (tc for `userspace`, which attaches no
/// program; see [`plane_mode`]).
pub fn attach_mode(d: &DataplaneConfig) -> AttachMode {
    match d.mode {
        DataplaneMode::Tc | DataplaneMode::Userspace => AttachMode::Tc,
        DataplaneMode::Xdp => AttachMode::Xdp,
    }
}

/// Whether the main's data plane is its BPF program or the userspace fallback (which saves its
/// flow table in `state_dir`).
pub fn plane_mode(d: &DataplaneConfig, state_dir: &std::path::Path) -> baton_ebpf::PlaneMode {
    match d.mode {
        DataplaneMode::Tc | DataplaneMode::Xdp => baton_ebpf::PlaneMode::Bpf,
        DataplaneMode::Userspace => baton_ebpf::PlaneMode::Userspace { state_dir: state_dir.to_owned() },
    }
}

/// The data plane's encapsulation for a configuration.
pub fn encap(d: &DataplaneConfig) -> Encap {
    match d.encap {
        EncapKind::Ipip => Encap::Ipip,
        EncapKind::Gue => Encap::Gue { port: d.gue_port },
    }
}

/// Sets up `tracing` in the chosen format, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The tokio runtime: current-thread for one thread, multi-thread otherwise.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

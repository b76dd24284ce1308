//! Command-line pieces both servers share: the data-plane flags, log set-up and the runtime.
//!
//! Only argument types and process set-up live here; what the flags mean is decided by the
//! servers and the data plane.

use baton_ebpf::{AttachMode, Encap};
use clap::{Args, ValueEnum};

/// Where the data-plane program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataplaneArg {
    Tc,
    Xdp,
}

/// Encapsulation between the main and its participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncapArg {
    Ipip,
    Gue,
}

/// Flags of both servers.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Data-plane attachment.
    #[arg(long, value_enum, default_value_t = DataplaneArg::Tc)]
    pub dataplane: DataplaneArg,
    /// Encapsulation of the client packets the main forwards to participants.
    #[arg(long, value_enum, default_value_t = EncapArg::Ipip)]
    pub encap: EncapArg,
    /// UDP port for GUE encapsulation.
    #[arg(long, default_value_t = 6080)]
    pub gue_port: u16,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
    /// Deadline for a client's request head, in milliseconds.
    #[arg(long, default_value_t = crate::http::DEFAULT_HEAD_TIMEOUT.as_millis() as u64)]
    pub head_timeout_ms: u64,
    /// Runtime threads. 1 (the default) runs everything on one thread, which keeps the
    /// handoff's task-to-task wake-ups off other cores; the bulk work (sendfile) is the kernel's.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

impl CommonArgs {
    pub fn mode(&self) -> AttachMode {
        match self.dataplane {
            DataplaneArg::Tc => AttachMode::Tc,
            DataplaneArg::Xdp => AttachMode::Xdp,
        }
    }

    pub fn encap(&self) -> Encap {
        match self.encap {
            EncapArg::Ipip => Encap::Ipip,
            EncapArg::Gue => Encap::Gue { port: self.gue_port },
        }
    }

    /// Sets up `tracing` in the chosen format, filtered by `RUST_LOG` (default `info`).
    pub fn init_tracing(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        if self.log_format == "json" {
            builder.json().init();
        } else {
            builder.init();
        }
    }

    /// The tokio runtime: current-thread for `--threads 1`, multi-thread otherwise.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.threads <= 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread().worker_threads(self.threads).enable_all().build()
        }
    }
}

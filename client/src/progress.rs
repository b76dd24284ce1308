//! Progress bars: one per server and one for the whole file (indicatif), drawn on stderr only
//! when it is a terminal and the user did not ask for quiet or JSON output.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars of one download.
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    servers: Vec<ProgressBar>,
}

impl Bars {
    /// Bars for a file of `size` bytes already `done` bytes in; hidden when `visible` is false.
    pub fn new(size: u64, done: u64, visible: bool) -> Bars {
        let target = if visible {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let total = multi.add(ProgressBar::new(size));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>24} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        total.set_position(done);
        Bars {
            multi,
            total,
            servers: Vec::new(),
        }
    }

    /// Adds a server's line.
    pub fn add_server(&mut self, label: &str) -> usize {
        let bar = self.multi.add(ProgressBar::no_length());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>24} {bytes:>10} {binary_bytes_per_sec:>12} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let short: String = label
            .chars()
            .rev()
            .take(24)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bar.set_prefix(short);
        self.servers.push(bar);
        self.servers.len() - 1
    }

    pub fn server(&self, i: usize, bytes: u64, msg: &str) {
        if let Some(b) = self.servers.get(i) {
            b.set_position(bytes);
            b.set_message(msg.to_owned());
        }
    }

    pub fn total(&self, done: u64) {
        self.total.set_position(done);
    }

    pub fn finish(&self) {
        for b in &self.servers {
            b.abandon();
        }
        self.total.abandon();
    }
}

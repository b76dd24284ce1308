//! Helpers shared by the lab tests: the root check, the cleanup guard, entering namespaces.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::thread;

use baton_lab::Lab;
use nix::sched::{setns, CloneFlags};

/// Whether the test may run; panics under `CI=true` without root.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root to build a lab, and CI=true does not allow skipping it"
    );
    // Written to stderr directly: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "!!! SKIPPED {test}: needs root to build a lab (set CI=true to make this fatal) !!!"
    );
    false
}

/// Removes lab `name` when dropped, whatever happened to the test.
pub struct Cleanup(pub &'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(error) = Lab::down_by_name(self.0) {
            eprintln!("cleanup of lab {} failed: {error}", self.0);
        }
    }
}

/// Runs `f` on a thread that has entered namespace `ns`. Sockets made there stay in `ns` when
/// they are used from the calling thread afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(Path::new("/run/netns").join(ns)).expect("namespace file opens");
    thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// The lab's namespaces whose name starts with `<name>-`.
pub fn namespaces_of(name: &str) -> BTreeSet<String> {
    let prefix = format!("{name}-");
    baton_lab::netns::list_namespaces()
        .expect("ip netns list")
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect()
}

/// The internet checksum of `bytes`.
pub fn icmp_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

//! Running programs: inside a lab namespace, and the `ip`/`tc`/`sysctl` tools that build a lab.
//!
//! Programs run inside a namespace through [`command_in`], which enters the namespace with
//! `setns(2)` in the child between `fork` and `exec`. It never uses `ip netns exec`: that also
//! unshares the mount namespace and remounts `/sys` for the namespace, which hides the bpffs at
//! `/sys/fs/bpf` where Baton's servers pin their maps. Our way, the child keeps the host's mount
//! namespace (and so bpffs); the price is that `/sys/class/net` still shows the host's
//! interfaces, so tools inside must query interfaces over netlink (`ip`), not sysfs.
//!
//! Every failure is a [`LabError`] that carries the command line and its stderr.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::lab::LabError;

/// Where `ip netns add` leaves the bind mounts that name network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The file that names network namespace `ns`.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// A [`Command`] that runs `program` inside network namespace `ns` (a name from `ip netns list`).
///
/// Only the network namespace changes; mounts (bpffs included), user, PID namespace and
/// filesystem view stay those of the caller. The namespace file is opened now, so a missing
/// namespace is reported here rather than at spawn time.
pub fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Result<Command, LabError> {
    if ns.is_empty() || ns.contains('/') || ns.starts_with('.') {
        return Err(LabError::Netns {
            ns: ns.to_owned(),
            error: io::Error::new(io::ErrorKind::InvalidInput, "not a namespace name"),
        });
    }
    let path = netns_path(ns);
    // `File::open` sets O_CLOEXEC, so the program itself does not inherit the descriptor.
    let fd: OwnedFd = File::open(&path)
        .map_err(|error| LabError::Netns {
            ns: ns.to_owned(),
            error,
        })?
        .into();
    let mut command = Command::new(program);
    // SAFETY: the closure runs in the forked child before exec. It only calls setns(2), which is
    // async-signal-safe, and builds an io::Error from errno, which does not allocate. It
    // captures only the descriptor, which the Command keeps open until it is dropped.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(command)
}

/// Runs `f` on a thread that has entered network namespace `ns`, and returns what it returns.
///
/// Sockets made by `f` belong to `ns` for their whole life, wherever they are used afterwards;
/// the calling thread's namespace never changes.
pub fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LabError> {
    let netns_error = |error: io::Error| LabError::Netns {
        ns: ns.to_owned(),
        error,
    };
    let file = File::open(netns_path(ns)).map_err(netns_error)?;
    let thread = std::thread::spawn(move || {
        // SAFETY: setns(2) on a descriptor we own; it changes only this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    });
    match thread.join() {
        Ok(result) => result.map_err(netns_error),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The command line of `command`, for errors and logs.
pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `command` to completion, capturing its output; a non-zero exit is an error that
/// carries the command line and stderr.
pub fn run(mut command: Command) -> Result<Output, LabError> {
    let line = describe(&command);
    tracing::debug!(command = %line, "run");
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| LabError::Spawn {
            command: line.clone(),
            error,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(LabError::Command {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs a host tool (`ip`, `tc`, ...) with `args`.
pub fn tool(program: &str, args: &[&str]) -> Result<Output, LabError> {
    let mut command = Command::new(program);
    command.args(args);
    run(command)
}

/// Sets `key=value` sysctls inside namespace `ns` in one `sysctl` run.
pub fn sysctl(ns: &str, settings: &[(String, &str)]) -> Result<(), LabError> {
    let mut command = command_in(ns, "sysctl")?;
    command.args(["-q", "-w"]);
    for (key, value) in settings {
        command.arg(format!("{key}={value}"));
    }
    run(command).map(drop)
}

/// The names of all network namespaces, from `ip netns list`.
pub fn list_namespaces() -> Result<Vec<String>, LabError> {
    let output = tool("ip", &["netns", "list"])?;
    // Lines look like `baton-main (id: 3)` or just `baton-main`.
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Identity of a namespace file: the nsfs device and inode it refers to.
fn namespace_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows the magic link, so for /proc/<pid>/ns/net it describes the namespace.
    std::fs::metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// The processes (thread-group leaders) whose network namespace is one of `namespaces`, with the
/// namespace each is in. This is what `ip netns pids` does, for many namespaces in one pass over
/// `/proc`. Zombies have no namespace any more and are not listed; namespaces that do not exist
/// are skipped.
pub fn processes_in(namespaces: &[String]) -> Result<Vec<(i32, String)>, LabError> {
    let wanted: Vec<((u64, u64), &String)> = namespaces
        .iter()
        .filter_map(|ns| namespace_id(&netns_path(ns)).map(|id| (id, ns)))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let proc_dir = Path::new("/proc");
    let entries = std::fs::read_dir(proc_dir).map_err(|error| LabError::Io {
        action: "list",
        path: proc_dir.to_owned(),
        error,
    })?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // The process may exit between listing and stat; then it is simply not found.
        let Some(id) = namespace_id(&entry.path().join("ns/net")) else {
            continue;
        };
        if let Some((_, ns)) = wanted.iter().find(|(wanted_id, _)| *wanted_id == id) {
            found.push((pid, (*ns).clone()));
        }
    }
    found.sort();
    Ok(found)
}

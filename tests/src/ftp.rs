//! A real vsftpd for tests: anonymous, read-only, in the foreground with a config file of its
//! own, on one address and port with its own passive port range; in the test's network
//! namespace or, through the [`Command`] the caller builds, in a lab node's.
//!
//! It never reads or changes the system's `/etc/vsftpd.conf` and never leaves a server running:
//! dropping a [`Vsftpd`] kills its process group (the listener and the session processes it
//! forked), also when a test panics, and then shows vsftpd's log.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where Debian's `vsftpd` package installs the server.
pub const VSFTPD: &str = "/usr/sbin/vsftpd";
/// How long vsftpd may take from spawn to a listening socket; it needs a few milliseconds.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between two looks at the listening sockets while vsftpd starts.
const START_POLL: Duration = Duration::from_millis(20);
/// The empty directory vsftpd chroots its unprivileged processes into (Debian's default);
/// created when missing.
const SECURE_CHROOT_DIR: &str = "/var/run/vsftpd/empty";
/// Lines of vsftpd's logs shown when a test panics.
const LOG_TAIL_LINES: usize = 40;
/// `st` of a listening socket in `/proc/<pid>/net/tcp` (`TCP_LISTEN`).
const TCP_LISTEN: &str = "0A";

/// A running vsftpd; dropping it kills the process (and its sessions) and removes its config.
#[derive(Debug)]
pub struct Vsftpd {
    child: Child,
    addr: Ipv4Addr,
    port: u16,
    /// Files written for this server and removed with it.
    config: PathBuf,
    banner: PathBuf,
    /// vsftpd's own log (protocol lines) and what it printed (startup failures: `500 OOPS`).
    log: PathBuf,
    output: PathBuf,
}

impl Vsftpd {
    /// Starts vsftpd in the foreground with a config written to `state_dir`, anonymous read-only
    /// access to `root`, listening on `addr:port`, passive ports `pasv_ports`. `command` builds
    /// the process (so lab tests can pass `lab.command(node, "/usr/sbin/vsftpd")`-style commands
    /// that enter a network namespace); waits until the port accepts connections (bounded) or
    /// fails with the log.
    ///
    /// `command` must run vsftpd itself (exec it, as `Lab::command`, `ip netns exec` and
    /// `nsenter` do, not fork it): the wait looks for the listening socket among that process's
    /// own file descriptors, in `/proc/<pid>/net/tcp`, which lists the sockets of the process's
    /// network namespace, so it works in any namespace without entering it and is never fooled
    /// by another program on the same port. The config file is appended as the last argument.
    ///
    /// `root` must be readable and searchable by everybody and writable by nobody but its owner
    /// (vsftpd runs anonymous sessions as the `ftp` user and refuses a writable root); its files
    /// must be world-readable (vsftpd serves nothing else to anonymous users).
    pub fn start(
        mut command: Command,
        state_dir: &Path,
        root: &Path,
        addr: Ipv4Addr,
        port: u16,
        pasv_ports: (u16, u16),
    ) -> anyhow::Result<Vsftpd> {
        let (pasv_min, pasv_max) = pasv_ports;
        if pasv_min == 0 || pasv_min > pasv_max {
            bail!("passive port range {pasv_min}-{pasv_max} is empty");
        }
        let root = root
            .canonicalize()
            .with_context(|| format!("ftp root {}", root.display()))?;
        let mode = std::fs::metadata(&root)?.permissions().mode();
        if mode & 0o005 != 0o005 || mode & 0o022 != 0 {
            bail!(
                "ftp root {} has mode {:o}: it must be o+rx and not group- or world-writable",
                root.display(),
                mode & 0o7777
            );
        }
        std::fs::create_dir_all(SECURE_CHROOT_DIR)
            .with_context(|| format!("creating {SECURE_CHROOT_DIR}"))?;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let state_dir = state_dir.canonicalize()?;
        let name = format!("vsftpd-{addr}-{port}");
        let config = state_dir.join(format!("{name}.conf"));
        let banner = state_dir.join(format!("{name}.banner"));
        let log = state_dir.join(format!("{name}.log"));
        let output = state_dir.join(format!("{name}.out"));

        // A two-line banner, so every session starts with a multi-line reply.
        std::fs::write(&banner, "Baton test FTP server\nanonymous, read-only\n")?;
        let text = config_text(&root, &banner, &log, addr, port, pasv_ports);
        // vsftpd refuses a config file that is not owned by the user it runs as (root); keep it
        // private as well.
        let _ = std::fs::remove_file(&config);
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", config.display()))?;

        let out = File::create(&output)?;
        command
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group, so drop can kill the sessions vsftpd forks too.
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let mut server = Vsftpd {
            child,
            addr,
            port,
            config,
            banner,
            log,
            output,
        };
        server.wait_listening()?;
        Ok(server)
    }

    /// `ftp://addr:port/rel`.
    pub fn url(&self, rel: &str) -> String {
        format!(
            "ftp://{}:{}/{}",
            self.addr,
            self.port,
            rel.trim_start_matches('/')
        )
    }

    /// vsftpd's log so far: every command and reply of every session (`log_ftp_protocol`) and
    /// each transfer's outcome, so a test can check what the server saw.
    pub fn protocol_log(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(&self.log)
            .with_context(|| format!("reading {}", self.log.display()))
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "vsftpd exited ({status}) before listening:\n{}",
                    self.logs()
                );
            }
            if listening(self.child.id(), self.addr, self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "vsftpd did not listen on {}:{} within {START_TIMEOUT:?}:\n{}",
                    self.addr,
                    self.port,
                    self.logs()
                );
            }
            std::thread::sleep(START_POLL);
        }
    }

    /// The last lines of what vsftpd printed and logged.
    fn logs(&self) -> String {
        let mut text = String::new();
        for path in [&self.output, &self.log] {
            let body = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = body.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            text.push_str(&format!("==== {} ====\n{tail}\n", path.display()));
        }
        text
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // The group's id is the child's pid (process_group(0)); it holds vsftpd and its sessions.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: signals the process group this struct created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.banner);
    }
}

/// The whole config: the options vsftpd needs to run in the foreground as an anonymous,
/// read-only server on one address, without the sandboxing that containers and namespaces trip
/// over.
fn config_text(
    root: &Path,
    banner: &Path,
    log: &Path,
    addr: Ipv4Addr,
    port: u16,
    pasv: (u16, u16),
) -> String {
    let options: &[(&str, String)] = &[
        ("listen", "YES".into()),
        ("listen_ipv6", "NO".into()),
        ("listen_address", addr.to_string()),
        ("listen_port", port.to_string()),
        ("background", "NO".into()),
        ("anonymous_enable", "YES".into()),
        ("anon_root", root.display().to_string()),
        ("no_anon_password", "YES".into()),
        ("local_enable", "NO".into()),
        ("write_enable", "NO".into()),
        ("anon_upload_enable", "NO".into()),
        ("anon_mkdir_write_enable", "NO".into()),
        ("anon_other_write_enable", "NO".into()),
        ("pasv_enable", "YES".into()),
        ("pasv_address", addr.to_string()),
        ("pasv_min_port", pasv.0.to_string()),
        ("pasv_max_port", pasv.1.to_string()),
        ("port_enable", "NO".into()),
        ("connect_from_port_20", "NO".into()),
        ("secure_chroot_dir", SECURE_CHROOT_DIR.into()),
        // The seccomp sandbox kills sessions on syscalls newer libcs make; "isolate" clones a
        // network namespace per session, which is slow to tear down and fails in containers.
        ("seccomp_sandbox", "NO".into()),
        ("isolate", "NO".into()),
        ("isolate_network", "NO".into()),
        ("banner_file", banner.display().to_string()),
        ("dirmessage_enable", "NO".into()),
        ("hide_ids", "YES".into()),
        ("use_localtime", "NO".into()),
        ("delay_failed_login", "0".into()),
        ("xferlog_enable", "YES".into()),
        ("xferlog_std_format", "NO".into()),
        ("log_ftp_protocol", "YES".into()),
        ("vsftpd_log_file", log.display().to_string()),
    ];
    options.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// Whether process `pid` holds a socket listening on `addr:port` (or on 0.0.0.0:`port`).
fn listening(pid: u32, addr: Ipv4Addr, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    let owned = socket_inodes(pid);
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
        else {
            return false;
        };
        *state == TCP_LISTEN
            && parse_proc_addr(local)
                .is_some_and(|(a, p)| p == port && (a == addr || a.is_unspecified()))
            && inode.parse::<u64>().is_ok_and(|i| owned.contains(&i))
    })
}

/// Inodes of the sockets among a process's file descriptors (`socket:[inode]` links).
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let target = std::fs::read_link(entry.ok()?.path()).ok()?;
        let target = target.to_str()?;
        target
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// `0100007F:1F90` as `/proc/net/tcp` prints it: the address as the kernel's `__be32` printed as
/// a native integer, the port in host order.
fn parse_proc_addr(text: &str) -> Option<(Ipv4Addr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let addr = u32::from_str_radix(addr, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some((Ipv4Addr::from(addr.to_ne_bytes()), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_addresses() {
        let loopback = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(
            parse_proc_addr(&format!("{loopback:08X}:1F90")),
            Some((Ipv4Addr::LOCALHOST, 8080))
        );
        assert_eq!(
            parse_proc_addr("00000000:0015"),
            Some((Ipv4Addr::UNSPECIFIED, 21))
        );
        assert_eq!(parse_proc_addr("0100007F"), None);
        assert_eq!(parse_proc_addr("zz:0015"), None);
    }

    #[test]
    fn config_names_every_setting_once() {
        let text = config_text(
            Path::new("/srv/x"),
            Path::new("/s/b"),
            Path::new("/s/l"),
            Ipv4Addr::new(198, 18, 0, 5),
            2121,
            (30000, 30009),
        );
        for line in [
            "listen=YES",
            "listen_ipv6=NO",
            "listen_address=198.18.0.5",
            "listen_port=2121",
            "background=NO",
            "anon_root=/srv/x",
            "write_enable=NO",
            "local_enable=NO",
            "pasv_address=198.18.0.5",
            "pasv_min_port=30000",
            "pasv_max_port=30009",
            "seccomp_sandbox=NO",
            "vsftpd_log_file=/s/l",
        ] {
            assert_eq!(text.lines().filter(|l| *l == line).count(), 1, "{line}");
        }
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(keys.len(), unique.len());
    }
}

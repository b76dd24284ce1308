//! Shared harness of the data-plane tests: root/bpffs checks, a fresh network
//! namespace per test (RAII), a private pin directory per test (RAII), the
//! lab addresses, frame builders, and truncation sweeps.
//!
//! Every test enters its own network namespace on its own thread, so tests
//! can run in parallel and never touch the host's interfaces. Pin directories
//! live under /sys/fs/bpf and are removed when the guard drops.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test harness: a failed setup step must panic"
)]

pub mod frames;
pub mod truncate;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// `BPF_FS_MAGIC`.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Where bpffs is (or gets) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Returns false (after a loud message) when the tests cannot run because
/// we are not root; panics instead when CI=true, so CI never skips silently.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        ensure_bpffs();
        return true;
    }
    let why = "needs root: it loads BPF programs (CAP_BPF, CAP_NET_ADMIN), mounts bpffs and creates network namespaces";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} {why}; refusing to skip because CI=true");
    }
    // Straight to the terminal: the test harness captures eprintln! of
    // passing tests, and a skip must not go unnoticed.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED {test}: {why}. Run `sudo -E cargo test -p baton-ebpf`. !!!!!!!!\n"
    );
    false
}

/// Skips (or, under CI=true, fails) the calling test when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::have_root(module_path!()) {
            return;
        }
    };
}

fn is_bpffs(path: &str) -> bool {
    let c_path = std::ffi::CString::new(path).unwrap();
    // SAFETY: statfs fills a zeroed struct we own from a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between targets"
    )]
    let f_type = st.f_type as u32;
    rc == 0 && f_type == BPF_FS_MAGIC
}

/// Mounts bpffs on /sys/fs/bpf when it is not there yet.
pub fn ensure_bpffs() {
    static MOUNT: Once = Once::new();
    MOUNT.call_once(|| {
        if is_bpffs(BPFFS) {
            return;
        }
        std::fs::create_dir_all(BPFFS).unwrap();
        let src = std::ffi::CString::new("bpf").unwrap();
        let target = std::ffi::CString::new(BPFFS).unwrap();
        // SAFETY: valid C strings, no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert!(
            rc == 0 || is_bpffs(BPFFS),
            "mount -t bpf bpf {BPFFS} failed: {}",
            std::io::Error::last_os_error()
        );
    });
}

/// The calling thread lives in a fresh network namespace until this drops.
pub struct NetNs {
    original: File,
}

impl NetNs {
    pub fn new() -> Self {
        let original = File::open("/proc/thread-self/ns/net").unwrap();
        // SAFETY: unshare only affects the calling thread's namespaces.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        NetNs { original }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // SAFETY: the fd is a network namespace we opened.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 && !std::thread::panicking() {
            panic!(
                "setns back to the original namespace: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// A private directory under /sys/fs/bpf, removed with everything pinned in it.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let path = Path::new(BPFFS).join(format!(
            "baton-ebpf-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        PinDir { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Runs `ip args...` in the calling thread's namespace; panics on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a sysctl of the calling thread's network namespace.
pub fn sysctl(path: &str, value: &str) {
    std::fs::write(Path::new("/proc/sys").join(path), value).unwrap();
}

/// The id of the XDP program attached to `iface` (current namespace), from
/// the kernel's own report (`ip -d link show`), or `None`.
pub fn xdp_prog_id(iface: &str) -> Option<u32> {
    let out = Command::new("ip")
        .args(["-d", "link", "show", "dev", iface])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("prog/xdp id ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

pub fn ifindex(name: &str) -> u32 {
    let c_name = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    assert_ne!(index, 0, "no interface {name}");
    index
}

/// The lab of the main-program tests, inside the current namespace:
///
/// ```text
/// bt0 02:..:01 198.18.0.1/24  <-veth->  bt1 02:..:02   (participant 198.18.0.2, static neighbour)
/// bt2 02:..:03 198.18.1.1/24  <-veth->  bt3 02:..:04   (participant 198.18.1.2, static neighbour)
/// bt2 has MTU 1280 (BT2_MTU)
/// 198.18.0.3: on bt0's subnet, no neighbour entry
/// 198.19.255.1: no route
/// ```
pub mod lab {
    use std::net::Ipv4Addr;

    pub const MAIN_IFACE: &str = "bt0";
    pub const OTHER_IFACE: &str = "bt2";
    pub const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const LOCAL_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    pub const PARTICIPANT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const PARTICIPANT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    pub const OTHER_LOCAL_MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];
    pub const OTHER_PARTICIPANT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    pub const OTHER_PARTICIPANT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 4];
    pub const NO_NEIGH_PARTICIPANT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
    pub const UNROUTABLE_PARTICIPANT: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
    /// MTU of bt2, toward OTHER_PARTICIPANT.
    pub const BT2_MTU: u16 = 1280;
    /// The client-side router's MAC, source of the test frames.
    pub const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];

    fn mac(m: [u8; 6]) -> String {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Builds the lab in the current (fresh) namespace.
    pub fn build() {
        use super::{ip, sysctl};
        // No IPv6 on the lab's links: the kernel's own router solicitations and MLD reports
        // would otherwise reach the attached program in the middle of a fixture and move its
        // counters.
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            sysctl("net/ipv6/conf/all/disable_ipv6", "1");
            sysctl("net/ipv6/conf/default/disable_ipv6", "1");
        }
        ip(&[
            "link",
            "add",
            "bt0",
            "address",
            &mac(LOCAL_MAC),
            "type",
            "veth",
            "peer",
            "name",
            "bt1",
            "address",
            &mac(PARTICIPANT_MAC),
        ]);
        ip(&[
            "link",
            "add",
            "bt2",
            "address",
            &mac(OTHER_LOCAL_MAC),
            "type",
            "veth",
            "peer",
            "name",
            "bt3",
            "address",
            &mac(OTHER_PARTICIPANT_MAC),
        ]);
        ip(&["addr", "add", "198.18.0.1/24", "dev", "bt0"]);
        ip(&["addr", "add", "198.18.1.1/24", "dev", "bt2"]);
        for dev in ["bt0", "bt1", "bt2", "bt3"] {
            ip(&["link", "set", dev, "up"]);
        }
        ip(&["link", "set", "bt2", "mtu", &BT2_MTU.to_string()]);
        ip(&[
            "neigh",
            "replace",
            "198.18.0.2",
            "lladdr",
            &mac(PARTICIPANT_MAC),
            "dev",
            "bt0",
            "nud",
            "permanent",
        ]);
        ip(&[
            "neigh",
            "replace",
            "198.18.1.2",
            "lladdr",
            &mac(OTHER_PARTICIPANT_MAC),
            "dev",
            "bt2",
            "nud",
            "permanent",
        ]);
        sysctl("net/ipv4/conf/all/forwarding", "1");
        sysctl("net/ipv4/conf/bt0/forwarding", "1");
        sysctl("net/ipv4/conf/bt2/forwarding", "1");
    }
}

/// A named network namespace (`ip netns add`), deleted on drop. Used when a
/// test needs more than one namespace (the thread's own stays the "main").
pub struct NamedNs {
    pub name: String,
}

impl NamedNs {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ebt{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        NamedNs { name }
    }

    /// `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on this thread inside the namespace (sockets created in `f`
    /// stay in it), then returns to the thread's namespace.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let original = File::open("/proc/thread-self/ns/net").unwrap();
        let target = File::open(Path::new("/run/netns").join(&self.name)).unwrap();
        // SAFETY: both fds are network namespaces.
        assert_eq!(
            unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let result = f();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        result
    }
}

impl Drop for NamedNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Turns off TX checksum offload on `iface` in the current namespace (what
/// `ethtool -K iface tx off` does), so the packets it sends carry complete
/// checksums. Needed when an XDP program forwards packets that a local veth
/// peer sent: XDP frames lose the skb's "checksum still to be filled in"
/// state, a real wire never has it.
pub fn disable_tx_checksum(iface: &str) {
    /// `SIOCETHTOOL`.
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    /// `ETHTOOL_STXCSUM`.
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        pad: [u8; 16],
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut value,
        pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live ethtool_value.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfReq) };
    assert_eq!(
        rc,
        0,
        "SIOCETHTOOL on {iface}: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends one raw Ethernet frame out of `iface` (current namespace).
pub fn send_frame(iface: &str, frame: &[u8]) {
    let ifindex = ifindex(iface);
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: we own fd.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: valid buffer and address of the stated sizes.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        sent,
        frame.len() as isize,
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}

/// Creates a BPF map with the given shape and pins it at `path` (raw bpf(2),
/// to fake what an older build might have left behind).
pub fn pin_raw_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) {
    #[repr(C)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        rest: [u32; 12],
    }
    #[repr(C)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        pad: u32,
    }
    let create = Create {
        map_type,
        key_size,
        value_size,
        max_entries,
        rest: [0; 12],
    };
    // SAFETY: valid attr of the given size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &create as *const Create,
            std::mem::size_of::<Create>() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just gave us this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let pin = Pin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    // SAFETY: valid attr; BPF_OBJ_PIN = 6.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            6,
            &pin as *const Pin,
            std::mem::size_of::<Pin>() as u32,
        )
    };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
}

/// Writes a raw value into the pinned `baton_guard` map of `pin_dir` (values
/// the API does not write).
pub fn guard_raw_insert(pin_dir: &Path, key: &baton_ebpf::FlowKey, raw: u32) {
    let map = aya::maps::MapData::from_pin(pin_dir.join("baton_guard")).unwrap();
    let mut guard: aya::maps::HashMap<aya::maps::MapData, baton_ebpf::FlowKey, u32> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).unwrap();
    guard.insert(key, raw, 0).unwrap();
}

//! Start-up check that the process may load and attach the programs.
//!
//! It only reads the process's own capability set and creates (and closes) a
//! one-entry array map; it must never change capabilities, limits or any
//! system setting.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use crate::error::DataplaneError;

/// Capability numbers from `linux/capability.h`.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;
/// `BPF_MAP_CREATE` command of bpf(2).
const BPF_MAP_CREATE: libc::c_long = 0;
/// `BPF_MAP_TYPE_ARRAY`.
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// Checks that this process has CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN
/// and that the kernel lets it create a BPF map.
pub fn check_capabilities() -> Result<(), DataplaneError> {
    let path = Path::new("/proc/self/status");
    let status =
        std::fs::read_to_string(path).map_err(|source| DataplaneError::ReadCapabilities {
            path: path.to_owned(),
            source,
        })?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;

    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !missing.is_empty() {
        return Err(DataplaneError::MissingCapabilities {
            missing: missing.join(", "),
        });
    }
    probe_map_create().map_err(|source| DataplaneError::BpfUnavailable { source })
}

/// Creates and closes a 1-entry array map.
fn probe_map_create() -> std::io::Result<()> {
    // The map-create part of union bpf_attr, zero-padded to the size the
    // kernel accepts for this command's fields.
    #[repr(C)]
    struct MapCreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        rest: [u32; 12],
    }
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        rest: [0; 12],
    };
    // SAFETY: bpf(2) reads size_of::<MapCreateAttr>() bytes from a valid,
    // initialised struct we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            std::mem::size_of::<MapCreateAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd =
        i32::try_from(fd).map_err(|_| std::io::Error::other("bpf(2) returned an invalid fd"))?;
    // SAFETY: the kernel just returned this fd to us; OwnedFd closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

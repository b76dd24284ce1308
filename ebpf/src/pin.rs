//! The bpffs directory where the flow map and counters are pinned, and the
//! check that maps pinned by an earlier run still fit this build.
//!
//! A pinned flow map holds live connections: this module never removes or
//! recreates it. Only maps marked disposable (counters) are replaced when
//! they no longer fit.

use std::path::{Path, PathBuf};

use aya::maps::{MapInfo, MapType};

use crate::error::DataplaneError;

/// `BPF_FS_MAGIC` from `linux/magic.h`: f_type of a bpf filesystem.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// Creates `path` if needed and checks that it is on a bpf filesystem.
pub(crate) fn prepare_pin_dir(path: &Path) -> Result<(), DataplaneError> {
    std::fs::create_dir_all(path).map_err(|source| DataplaneError::PinDir {
        path: path.to_owned(),
        source,
    })?;
    if !is_bpffs(path)? {
        return Err(DataplaneError::NotBpffs {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> Result<bool, DataplaneError> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| {
        DataplaneError::PinDir {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        }
    })?;
    // SAFETY: statfs fills the zeroed struct we own from a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(DataplaneError::PinDir {
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    // f_type's integer type differs between libc targets; the magic fits 32 bits.
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 on x86_64 but u32 or i32 on other targets"
    )]
    Ok(st.f_type as u32 == BPF_FS_MAGIC)
}

/// What a pinned map must look like to be reused.
#[derive(Debug)]
pub(crate) struct ExpectedMap {
    pub(crate) name: &'static str,
    pub(crate) map_type: MapType,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) max_entries: u32,
    /// Replace (rather than refuse) a pin that does not fit.
    pub(crate) disposable: bool,
}

/// Checks the map pinned as `dir/<name>`, if any. A disposable map that does
/// not fit is unpinned so the loader creates a fresh one; any other mismatch
/// is an error.
pub(crate) fn check_pinned(dir: &Path, expected: &ExpectedMap) -> Result<(), DataplaneError> {
    let path = dir.join(expected.name);
    if !path.exists() {
        return Ok(());
    }
    let detail = match MapInfo::from_pin(&path) {
        Err(e) => Some(format!("cannot open it as a bpf map: {e}")),
        Ok(info) => mismatch(&info, expected),
    };
    let Some(detail) = detail else {
        tracing::info!(map = expected.name, path = %path.display(), "reusing pinned map");
        return Ok(());
    };
    if !expected.disposable {
        return Err(DataplaneError::PinnedMapMismatch { path, detail });
    }
    tracing::warn!(map = expected.name, path = %path.display(), %detail, "replacing stale pinned map");
    std::fs::remove_file(&path).map_err(|source| DataplaneError::RemoveStalePin {
        path: PathBuf::from(&path),
        source,
    })
}

fn mismatch(info: &MapInfo, expected: &ExpectedMap) -> Option<String> {
    let mut diffs = Vec::new();
    match info.map_type() {
        Ok(t) if t == expected.map_type => {}
        Ok(t) => diffs.push(format!("type {t:?}, expected {:?}", expected.map_type)),
        Err(e) => diffs.push(format!("unknown type: {e}")),
    }
    if info.key_size() != expected.key_size {
        diffs.push(format!(
            "key size {}, expected {}",
            info.key_size(),
            expected.key_size
        ));
    }
    if info.value_size() != expected.value_size {
        diffs.push(format!(
            "value size {}, expected {}",
            info.value_size(),
            expected.value_size
        ));
    }
    if info.max_entries() != expected.max_entries {
        diffs.push(format!(
            "max entries {}, expected {}",
            info.max_entries(),
            expected.max_entries
        ));
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

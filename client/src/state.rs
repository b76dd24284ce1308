//! The resume state beside a partial download: `<output>.baton-fetch` says which bytes of
//! `<output>.part` are on disk and which file they belong to.
//!
//! Saved atomically (written to a temporary name, synced, renamed) and only after the part file
//! was synced, so after a crash it never claims a byte the disk does not hold. A state file for
//! another file (other length or digest) is never used.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::Ranges;

/// Format version of the state file.
const VERSION: u32 = 1;
/// A state file larger than this is not ours (a done list is a few ranges).
const MAX_STATE_BYTES: u64 = 4 << 20;

/// Why a state file could not be used or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a baton-fetch state file: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub size: u64,
    /// Hex SHA-256 of the whole file, when known.
    pub sha256: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Done byte ranges, half-open.
    pub done: Vec<(u64, u64)>,
}

impl State {
    pub fn new(
        size: u64,
        sha256: Option<String>,
        etag: Option<String>,
        last_modified: Option<String>,
        done: &Ranges,
    ) -> State {
        State {
            version: VERSION,
            size,
            sha256,
            etag,
            last_modified,
            done: done.as_slice().to_vec(),
        }
    }

    /// Whether this state describes the same file as `other` (the done list aside).
    pub fn same_file(&self, other: &State) -> bool {
        if self.size != other.size {
            return false;
        }
        match (&self.sha256, &other.sha256) {
            (Some(a), Some(b)) => return a == b,
            (None, None) => {}
            _ => return false,
        }
        self.etag == other.etag && self.last_modified == other.last_modified
    }

    /// The done ranges, checked against the size.
    pub fn ranges(&self) -> Ranges {
        Ranges::from_ranges(self.done.iter().copied().filter(|&(s, e)| s < e && e <= self.size))
    }
}

/// `<output>.part` and `<output>.baton-fetch`.
pub fn paths(output: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = output.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".part"), with(".baton-fetch"))
}

/// Reads a state file; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let invalid = |why: String| StateError::Invalid {
        path: path.to_owned(),
        why,
    };
    if meta.len() > MAX_STATE_BYTES {
        return Err(invalid(format!("larger than {MAX_STATE_BYTES} bytes")));
    }
    let text = std::fs::read(path).map_err(io)?;
    let state: State = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
    if state.version != VERSION {
        return Err(invalid(format!("version {}", state.version)));
    }
    Ok(Some(state))
}

/// Writes a state file atomically.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let bytes = serde_json::to_vec(state).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_data().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_and_only_matches_its_own_file() {
        let dir = std::env::temp_dir().join(format!("baton-fetch-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (part, st) = paths(&dir.join("f.iso"));
        assert_eq!(part, dir.join("f.iso.part"));
        assert_eq!(st, dir.join("f.iso.baton-fetch"));
        assert_eq!(load(&st).expect("no file is fine"), None);
        let s = State::new(
            1000,
            Some("ab".into()),
            None,
            None,
            &Ranges::from_ranges([(0, 10), (500, 2000)]),
        );
        save(&st, &s).expect("save");
        let back = load(&st).expect("load").expect("present");
        assert_eq!(back, s);
        assert_eq!(back.ranges().as_slice(), &[(0, 10)]);
        assert!(s.same_file(&State::new(1000, Some("ab".into()), None, None, &Ranges::new())));
        assert!(!s.same_file(&State::new(1000, Some("cd".into()), None, None, &Ranges::new())));
        assert!(!s.same_file(&State::new(999, Some("ab".into()), None, None, &Ranges::new())));
        assert!(!s.same_file(&State::new(1000, None, None, None, &Ranges::new())));
        std::fs::write(&st, b"{\"version\": 9}").expect("write");
        assert!(matches!(load(&st), Err(StateError::Invalid { .. })));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

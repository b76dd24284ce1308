//! The peer cache's group secret file, read the same way by every member (baton-participant's
//! `peer_cache.secret_file`, `baton-fetch --peer-secret-file`), so the same file gives the same
//! key everywhere: its bytes without trailing white space (`echo secret > file` and an editor's
//! final newline change nothing).
//!
//! A file is refused, with the reason, when it is not a regular file, readable or writable by
//! others (a secret others can read authenticates nothing), empty, or longer than
//! [`MAX_SECRET_BYTES`]. This module never logs the secret.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Largest secret file, in bytes (the config's limit).
pub const MAX_SECRET_BYTES: usize = baton_shared::config::MAX_PEER_SECRET_BYTES;
/// Permission bits that let others (not the owner or its group) read or write a file.
const OTHERS_ACCESS: u32 = 0o006;

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is accessible to others (mode {mode:04o}); make it private, e.g. chmod 600 {path}")]
    WorldAccessible { path: PathBuf, mode: u32 },
    #[error("{path} holds no secret (empty, or only white space)")]
    Empty { path: PathBuf },
    #[error("{path} has {len} bytes; at most {MAX_SECRET_BYTES} are allowed")]
    TooLong { path: PathBuf, len: u64 },
}

/// Reads a secret file, with the checks above; the key is its bytes without trailing white
/// space.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let read = |source| SecretError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile { path: path.to_owned() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & OTHERS_ACCESS != 0 {
        return Err(SecretError::WorldAccessible { path: path.to_owned(), mode });
    }
    let max = MAX_SECRET_BYTES as u64;
    let mut secret = Vec::new();
    // One byte more than allowed, so a file that is too long (or grew) is seen as such.
    file.take(max + 1).read_to_end(&mut secret).map_err(read)?;
    if secret.len() as u64 > max {
        return Err(SecretError::TooLong { path: path.to_owned(), len: meta.len().max(secret.len() as u64) });
    }
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(SecretError::Empty { path: path.to_owned() });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_file(tag: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = std::env::temp_dir().join(format!("baton-io-secret-{tag}-{}", std::process::id()));
        std::fs::write(&p, bytes).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn secrets_are_checked_and_trimmed() {
        let ok = secret_file("ok", b"group secret\n", 0o600);
        assert_eq!(read_secret(&ok).expect("private"), b"group secret");
        let crlf = secret_file("crlf", b"group secret\r\n\n", 0o600);
        assert_eq!(read_secret(&crlf).expect("private"), b"group secret");
        let group = secret_file("group", b" s", 0o640);
        assert_eq!(read_secret(&group).expect("group-readable is fine"), b" s");
        let longest = secret_file("longest", &[b'x'; MAX_SECRET_BYTES], 0o400);
        assert_eq!(read_secret(&longest).expect("at the limit").len(), MAX_SECRET_BYTES);

        let world = secret_file("world", b"s", 0o644);
        let e = read_secret(&world).expect_err("world-readable");
        assert!(matches!(e, SecretError::WorldAccessible { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("accessible to others (mode 0644)"), "{e}");
        let writable = secret_file("writable", b"s", 0o602);
        assert!(matches!(read_secret(&writable), Err(SecretError::WorldAccessible { .. })));
        let empty = secret_file("empty", b"", 0o600);
        assert!(matches!(read_secret(&empty), Err(SecretError::Empty { .. })));
        let blank = secret_file("blank", b" \n\t\n", 0o600);
        assert!(matches!(read_secret(&blank), Err(SecretError::Empty { .. })));
        let long = secret_file("long", &[b'x'; MAX_SECRET_BYTES + 1], 0o600);
        assert!(matches!(read_secret(&long), Err(SecretError::TooLong { len: 4097, .. })));
        assert!(matches!(read_secret(&std::env::temp_dir()), Err(SecretError::NotAFile { .. })));
        let missing = std::env::temp_dir().join(format!("baton-io-secret-missing-{}", std::process::id()));
        assert!(matches!(read_secret(&missing), Err(SecretError::Read { .. })));
        for p in [ok, crlf, group, longest, world, writable, empty, blank, long] {
            let _ = std::fs::remove_file(p);
        }
    }
}

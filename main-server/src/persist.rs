//! The flow table on disk, so a restarted main manages the flows it handed off before.
//!
//! While baton-main is down, the pinned data plane keeps forwarding every handed-off flow; what
//! a new process lacks is each flow's ledger (who serves it, what was sent). That is saved here,
//! shortly after each change (at most [`SAVE_INTERVAL`] late) and at shutdown, in one file
//! replaced atomically (write, fsync, rename).
//!
//! Layout: the magic `BATONFL2`, then per flow: `u8 owner length | owner | u32 moves |
//! u32 input_start | u32 record length | record`, where the record is a handoff record
//! (`baton_shared::handoff`) holding the origin TCP state, the unanswered input, the
//! acknowledged offset and the unfinished responses. A file that does not parse is reported and
//! ignored: the flows in it keep flowing, unmanaged, until they end.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_shared::handoff::Handoff;
use baton_shared::moves::Ledger;
use tracing::{info, warn};

use crate::moves::key_of;
use crate::state::{FlowRecord, Shared};

/// Longest a change to the flow table waits before it is saved.
pub const SAVE_INTERVAL: Duration = Duration::from_millis(200);
/// How long a participant that owned flows before the restart has to reconnect before its
/// flows are recovered elsewhere.
pub const REJOIN_GRACE: Duration = Duration::from_secs(3);

const MAGIC: &[u8; 8] = b"BATONFL2";

/// Why a saved flow table was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: not a Baton flow table (bad magic)")]
    Magic { path: String },
    #[error("{path}: truncated at byte {at}")]
    Truncated { path: String, at: usize },
    #[error("{path}: flow record: {source}")]
    Record {
        path: String,
        #[source]
        source: baton_shared::handoff::HandoffError,
    },
    #[error("{path}: owner name is not valid")]
    Owner { path: String },
}

/// One saved flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub owner: String,
    pub moves: u32,
    pub ledger: Ledger,
}

/// Encodes the flows.
pub fn encode(flows: &[Saved]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for f in flows {
        let owner = &f.owner.as_bytes()[..f.owner.len().min(usize::from(u8::MAX))];
        out.push(owner.len() as u8);
        out.extend_from_slice(owner);
        out.extend_from_slice(&f.moves.to_be_bytes());
        out.extend_from_slice(&f.ledger.input_start.to_be_bytes());
        let l = &f.ledger;
        let record = Handoff {
            flow_id: l.flow_id,
            tcp: l.origin.clone(),
            request: l.input.clone(),
            object: None,
            snd_offset: l.acked,
            in_flight: 0,
            pending: l.responses.iter().cloned().collect(),
        };
        let mut bytes = Vec::with_capacity(record.encoded_len());
        record.encode(&mut bytes);
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Decodes a saved flow table.
pub fn decode(buf: &[u8], path: &str) -> Result<Vec<Saved>, PersistError> {
    let truncated = |at| PersistError::Truncated { path: path.to_owned(), at };
    if buf.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(PersistError::Magic { path: path.to_owned() });
    }
    let mut at = MAGIC.len();
    let take = |n: usize, at: &mut usize| -> Result<&[u8], PersistError> {
        let bytes = buf.get(*at..*at + n).ok_or_else(|| truncated(*at))?;
        *at += n;
        Ok(bytes)
    };
    let mut out = Vec::new();
    while at < buf.len() {
        let owner_len = usize::from(take(1, &mut at)?[0]);
        let owner = String::from_utf8(take(owner_len, &mut at)?.to_vec()).map_err(|_| PersistError::Owner { path: path.to_owned() })?;
        baton_shared::control::validate_name(&owner).map_err(|_| PersistError::Owner { path: path.to_owned() })?;
        let u32_at = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let moves = u32_at(take(4, &mut at)?);
        let input_start = u32_at(take(4, &mut at)?);
        let len = u32_at(take(4, &mut at)?) as usize;
        let record = Handoff::decode(take(len, &mut at)?).map_err(|source| PersistError::Record { path: path.to_owned(), source })?;
        let ledger = Ledger {
            flow_id: record.flow_id,
            origin: record.tcp,
            input_start,
            input: record.request,
            responses: record.pending.into(),
            acked: record.snd_offset,
        };
        out.push(Saved { owner, moves, ledger });
    }
    Ok(out)
}

/// The flows to save: every flow a participant serves (not the ones the main serves itself).
fn collect(shared: &Shared) -> Vec<Saved> {
    let c = shared.conductor.lock().unwrap_or_else(|p| p.into_inner());
    c.flows()
        .filter(|(_, f)| !f.owner.is_empty())
        .map(|(_, f)| Saved { owner: f.owner.clone(), moves: f.moves, ledger: f.ledger.clone() })
        .collect()
}

/// Writes the flow table to `path` atomically.
pub fn save(shared: &Shared, path: &Path) -> std::io::Result<usize> {
    let flows = collect(shared);
    write_atomically(path, &encode(&flows))?;
    Ok(flows.len())
}

/// Replaces `path` with `bytes`: write a temporary file beside it, fsync, rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// The file beside the flow table that keeps what operators set: the participants they added
/// and the ones they drain.
pub const REGISTRY_FILE: &str = "registry.json";

/// What operators set through the admin API, kept across restarts of the main.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub participants: Vec<crate::registry::StaticEntry>,
    /// Participants that get no new flows until an operator undrains them.
    pub drained: Vec<String>,
}

fn registry_path(shared: &Shared) -> Option<std::path::PathBuf> {
    shared.state_file.as_deref().and_then(Path::parent).map(|d| d.join(REGISTRY_FILE))
}

/// Saves the operators' settings now (they change rarely, and an answer to the operator must
/// mean they are kept).
pub fn save_settings(shared: &Shared) -> std::io::Result<()> {
    let Some(path) = registry_path(shared) else { return Ok(()) };
    let drained = {
        let c = shared.conductor.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = shared.registry.list().into_iter().map(|p| p.name).filter(|n| c.is_draining(n)).collect();
        names.sort();
        names
    };
    let settings = Settings { participants: shared.registry.static_entries(), drained };
    let json = serde_json::to_vec_pretty(&settings).map_err(std::io::Error::other)?;
    write_atomically(&path, &json)
}

/// Loads the operators' settings saved by an earlier run; returns them for the caller to apply.
pub fn load_settings(shared: &Shared) -> Result<Settings, String> {
    let Some(path) = registry_path(shared) else { return Ok(Settings::default()) };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Saves the flow table whenever it changed, until the process ends.
pub async fn run_saver(shared: Arc<Shared>) {
    let Some(path) = shared.state_file.clone() else { return };
    let mut tick = tokio::time::interval(SAVE_INTERVAL);
    loop {
        tick.tick().await;
        if shared.dirty.swap(false, Ordering::Relaxed) {
            let s = shared.clone();
            let p = path.clone();
            match tokio::task::spawn_blocking(move || save(&s, &p)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    shared.mark_dirty();
                    warn!(path = %path.display(), error = %e, "could not save the flow table");
                }
                Err(e) => warn!(error = %e, "flow table saver failed"),
            }
        }
    }
}

/// Loads the saved flow table, keeping the flows the data plane still forwards, and waits
/// [`REJOIN_GRACE`] for their participants to reconnect. Returns how many flows came back.
pub fn reload(shared: &Shared) -> usize {
    let Some(path) = shared.state_file.as_deref() else { return 0 };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "could not read the saved flow table");
            return 0;
        }
    };
    let saved = match decode(&bytes, &path.display().to_string()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "ignoring the saved flow table");
            return 0;
        }
    };
    let now = shared.clock();
    let mut kept = 0;
    let mut c = shared.conductor.lock().unwrap_or_else(|p| p.into_inner());
    for s in saved {
        let key = key_of(&s.ledger);
        match shared.dataplane.get(&key) {
            Ok(Some(_)) => {}
            _ => continue,
        }
        let id = s.ledger.flow_id;
        crate::vip::reserve_flow_ids_through(id);
        shared.flows.insert(id, FlowRecord { key, client: s.ledger.origin.remote, started: Instant::now() });
        c.peer_expected(&s.owner, now, REJOIN_GRACE);
        c.reload(&s.owner, s.ledger, s.moves);
        kept += 1;
    }
    info!(flows = kept, path = %path.display(), "flow table reloaded");
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_shared::handoff::{RepairWindow, Response, TcpState};
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn saved() -> Saved {
        let h = Handoff {
            flow_id: 42,
            tcp: TcpState {
                local: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80),
                remote: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 40000),
                snd_seq: 7,
                rcv_seq: 100,
                mss: 1400,
                snd_wscale: 7,
                rcv_wscale: 7,
                sack: true,
                timestamps: true,
                ts_val: 5,
                window: RepairWindow { snd_wl1: 100, snd_wnd: 1000, max_window: 1000, rcv_wnd: 1000, rcv_wup: 100 },
            },
            request: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            object: None,
            snd_offset: 0,
            in_flight: 0,
            pending: Vec::new(),
        };
        let mut ledger = Ledger::new(&h);
        ledger
            .record(Response { start: 0, request_end: 100, keep_alive: true, head: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), body: None })
            .expect("record");
        ledger.acknowledge(3);
        Saved { owner: "p-fra".into(), moves: 2, ledger }
    }

    #[test]
    fn round_trip_and_damage() {
        let flows = vec![saved(), saved()];
        let bytes = encode(&flows);
        assert_eq!(decode(&bytes, "f").expect("decodes"), flows);
        assert!(matches!(decode(b"BATONFL1", "f"), Err(PersistError::Magic { .. })));
        assert_eq!(decode(MAGIC, "f").expect("empty table"), Vec::new());
        for n in MAGIC.len() + 1..bytes.len() / 2 {
            assert!(decode(&bytes[..n], "f").is_err(), "prefix {n}");
        }
    }
}

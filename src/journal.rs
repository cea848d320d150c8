//! The owed-write journal: disconnects the orchestrator accepted but the database did not
//! record. Kept on local disk so a restart does not forget them; replayed in the background
//! until each write lands or no longer applies.
//!
//! Format: JSON lines, append-only, one record per line:
//!
//! ```text
//! {"owe":{"seq":3,"id":42,"session_id":"session_1_abc","at":"2026-12-04T17:00:00.000Z"}}
//! {"done":3}
//! ```
//!
//! An `owe` line is fsync'd before the client gets its answer; a `done` line is not (losing
//! one only replays a write that is conditional and idempotent). At open the file is read,
//! corrupt or truncated lines are reported and skipped, and what is still owed is written
//! to a fresh file that replaces the old one (so the file does not grow without bound).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use tokio::sync::Notify;

/// A row the gateway still has to mark `disconnected`, if it is still `connected` with
/// this session_id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedWrite {
    pub seq: u64,
    pub id: i64,
    pub session_id: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Record {
    Owe(OwedWrite),
    Done(u64),
}

pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
    /// Woken when a new write is owed.
    pub owed: Notify,
}

struct State {
    file: File,
    next_seq: u64,
    pending: BTreeMap<u64, OwedWrite>,
}

impl Journal {
    /// Opens (creating folder and file if needed) and compacts the journal at `path`.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<Journal> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let pending = read(&path)?;
        let next_seq = pending.keys().next_back().map_or(1, |s| s + 1);
        rewrite(&path, &pending)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        crate::metrics::OWED_WRITES_PENDING.set(pending.len() as i64);
        if !pending.is_empty() {
            tracing::warn!(count = pending.len(), path = %path.display(), "owed writes to replay");
        }
        Ok(Journal {
            path,
            state: Mutex::new(State {
                file,
                next_seq,
                pending,
            }),
            owed: Notify::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an owed write durably (written and fsync'd when this returns `Ok`).
    /// Blocking file I/O: call from a blocking-tolerant context (see [`Journal::owe_async`]).
    pub fn owe(&self, id: i64, session_id: &str) -> std::io::Result<OwedWrite> {
        let mut state = self.state();
        let entry = OwedWrite {
            seq: state.next_seq,
            id,
            session_id: session_id.to_owned(),
            at: Utc::now(),
        };
        append(&mut state.file, &Record::Owe(entry.clone()))?;
        state.file.sync_data()?;
        state.next_seq += 1;
        state.pending.insert(entry.seq, entry.clone());
        crate::metrics::OWED_WRITES_PENDING.set(state.pending.len() as i64);
        drop(state);
        self.owed.notify_one();
        Ok(entry)
    }

    /// [`Journal::owe`] off the async worker threads.
    pub async fn owe_async(
        self: &std::sync::Arc<Self>,
        id: i64,
        session_id: &str,
    ) -> std::io::Result<OwedWrite> {
        let (journal, session_id) = (self.clone(), session_id.to_owned());
        tokio::task::spawn_blocking(move || journal.owe(id, &session_id))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// The write landed or no longer applies: forget it.
    pub fn done(&self, seq: u64) -> std::io::Result<()> {
        let mut state = self.state();
        if state.pending.remove(&seq).is_some() {
            crate::metrics::OWED_WRITES_PENDING.set(state.pending.len() as i64);
            append(&mut state.file, &Record::Done(seq))?;
        }
        Ok(())
    }

    /// What is still owed, oldest first.
    pub fn pending(&self) -> Vec<OwedWrite> {
        self.state().pending.values().cloned().collect()
    }
}

fn append(file: &mut File, record: &Record) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)
}

/// Reads a journal, skipping (and reporting) lines that do not parse.
fn read(path: &Path) -> std::io::Result<BTreeMap<u64, OwedWrite>> {
    let mut pending = BTreeMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pending),
        Err(e) => return Err(e),
    };
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(&line) {
            Ok(Record::Owe(entry)) => {
                pending.insert(entry.seq, entry);
            }
            Ok(Record::Done(seq)) => {
                pending.remove(&seq);
            }
            Err(e) => tracing::error!(
                path = %path.display(),
                line = n + 1,
                error = %e,
                "skipping a corrupt journal line"
            ),
        }
    }
    Ok(pending)
}

/// Replaces the file with one holding just `pending`, atomically (write, fsync, rename,
/// fsync the folder).
fn rewrite(path: &Path, pending: &BTreeMap<u64, OwedWrite>) -> std::io::Result<()> {
    let tmp = path.with_extension("compacting");
    {
        let mut file = File::create(&tmp)?;
        for entry in pending.values() {
            append(&mut file, &Record::Owe(entry.clone()))?;
        }
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_writes_survive_a_reopen_and_done_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/owed.jsonl");
        let j = Journal::open(&path).unwrap();
        let a = j.owe(1, "s-1").unwrap();
        let b = j.owe(2, "s-2").unwrap();
        j.done(a.seq).unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.pending(), vec![b.clone()]);
        let c = j.owe(3, "s-3").unwrap();
        assert!(
            c.seq > b.seq,
            "sequence numbers keep growing after a reopen"
        );
        // compaction: only `owe` lines of pending writes remain after a reopen
        drop(j);
        let j = Journal::open(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(j.pending().len(), 2);
    }

    #[test]
    fn corrupt_and_truncated_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owed.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"owe":{"seq":1,"id":5,"session_id":"a","at":"2026-01-01T00:00:00Z"}}"#,
                "\n\u{0}garbage\u{ff}\n",
                r#"{"owe":{"seq":2,"id":6,"session_id":"b","at":"2026-01-01T00:00:00Z"}}"#,
                "\n",
                r#"{"owe":{"seq":3,"id":7,"sess"#
            ),
        )
        .unwrap();
        let j = Journal::open(&path).unwrap();
        let ids: Vec<i64> = j.pending().iter().map(|e| e.id).collect();
        assert_eq!(ids, [5, 6]);
        // Appending after a truncated tail does not glue a new record onto it.
        j.owe(8, "c").unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        let ids: Vec<i64> = j.pending().iter().map(|e| e.id).collect();
        assert_eq!(ids, [5, 6, 8]);
    }
}

//! The sidecar's usage ledger: one record per request, on local disk until the control
//! plane has acknowledged it.
//!
//! Lines of JSON in append-only segment files (`seg-<n>.jsonl`): a `begin` line when a
//! request starts, an `end` line (the complete [`UsageRecord`]) when it ends. Group
//! commit, one `write` per request at most: a `begin` is written at once (before the
//! request goes upstream), carrying with it the `end` lines held since the last write;
//! `end` lines are otherwise held at most until the next [`Ledger::flush`] (the shipping
//! timer, [`Ledger::pending`], [`Ledger::sync`]) or until [`HOLD_BYTES`] of them wait.
//! What was written survives a killed process: the page cache keeps it. (A node crash
//! loses what was not yet synced: [`Ledger::sync`] runs on a timer.) At start, a
//! `begin` without its `end` is a request the process died in — or whose `end` was
//! still held — and [`Ledger::open`] returns them so the caller records them as
//! interrupted: a killed process never loses a request it forwarded.
//!
//! Shipping reads `end` lines from a cursor ([`Ledger::pending`]); once the control
//! plane has stored a batch (idempotently, by record id) the cursor moves
//! ([`Ledger::ack`]) and is written atomically. A crash between the two resends the
//! batch, which the control plane counts as duplicates: nothing is lost or doubled.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use vigie_proto::v1::UsageRecord;

/// A new segment is started beyond this size.
const SEGMENT_BYTES: u64 = 4 << 20;

/// `end` lines held for a group write at most (then written at once).
pub const HOLD_BYTES: usize = 64 << 10;

/// Held lines kept while writes fail (a full disk): beyond this they are dropped, and
/// the requests are recorded as interrupted at the next start rather than growing
/// memory without bound.
pub const HOLD_MAX_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger {path}: unreadable cursor")]
    Cursor { path: String },
    #[error("ledger lock poisoned")]
    Poisoned,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Begin(UsageRecord),
    End(UsageRecord),
}

/// [`Line`] as written: borrowed, so appending copies nothing.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum LineRef<'a> {
    Begin(&'a UsageRecord),
    End(&'a UsageRecord),
}

/// Where shipping has got to: the byte after the last acknowledged line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
}

/// Records to ship, and the cursor to acknowledge once they are stored.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<UsageRecord>,
    pub next: Cursor,
}

#[derive(Debug)]
struct Inner {
    file: File,
    segment: u64,
    size: u64,
    cursor: Cursor,
    /// Requests begun and not ended: id → segment of their `begin`.
    open: HashMap<String, u64>,
    /// `end` lines not written yet, and their ids (still open until written).
    held: Vec<u8>,
    held_ids: Vec<String>,
}

#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:020}.jsonl"))
}

fn segments(dir: &Path) -> Result<Vec<u64>, LedgerError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".jsonl"))
            .and_then(|s| s.parse().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// How a `begin` line starts as written ([`LineRef`]).
const BEGIN_PREFIX: &[u8] = b"{\"begin\":";

/// Every complete line of a segment from `offset`, with the offset after each. A last
/// line without its newline (a write cut by a node crash) is not returned. With
/// `ends_only`, `begin` lines are passed over unparsed (`None`): shipping reads only
/// ended records, and parsing the begins it skips was half of its cost.
fn read_lines(
    path: &Path,
    offset: u64,
    ends_only: bool,
) -> Result<Vec<(Option<Line>, u64)>, LedgerError> {
    let mut file = File::open(path).map_err(io(path))?;
    file.seek(SeekFrom::Start(offset)).map_err(io(path))?;
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut pos = offset;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io(path))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        pos += n as u64;
        if ends_only && buf.starts_with(BEGIN_PREFIX) {
            out.push((None, pos));
            continue;
        }
        match serde_json::from_slice::<Line>(&buf) {
            Ok(line) => out.push((Some(line), pos)),
            Err(e) => {
                tracing::warn!(path = %path.display(), offset = pos, error = %e, "skipping an unreadable ledger line")
            }
        }
    }
    Ok(out)
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`. Returns it with the requests that began
    /// and never ended (the previous process died during them), to be recorded as
    /// interrupted with [`Ledger::end`].
    pub fn open(dir: &Path) -> Result<(Ledger, Vec<UsageRecord>), LedgerError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let cursor_path = dir.join("cursor.json");
        let cursor = match fs::read(&cursor_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| LedgerError::Cursor {
                path: cursor_path.display().to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Cursor::default(),
            Err(e) => return Err(io(&cursor_path)(e)),
        };
        let existing = segments(dir)?;
        let mut begun: HashMap<String, UsageRecord> = HashMap::new();
        let mut ended = std::collections::HashSet::new();
        for &n in &existing {
            for (line, _) in read_lines(&segment_path(dir, n), 0, false)? {
                match line {
                    None => {}
                    Some(Line::Begin(r)) => {
                        begun.insert(r.id.clone(), r);
                    }
                    Some(Line::End(r)) => {
                        ended.insert(r.id);
                    }
                }
            }
        }
        let mut dangling: Vec<UsageRecord> = begun
            .into_iter()
            .filter(|(id, _)| !ended.contains(id))
            .map(|(_, r)| r)
            .collect();
        dangling.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
        // Always a fresh segment: the last one may end with a torn line.
        let segment = existing.last().map_or(cursor.segment.max(1), |n| n + 1);
        let path = segment_path(dir, segment);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let ledger = Ledger {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                segment,
                size: 0,
                cursor,
                open: HashMap::new(),
                held: Vec::new(),
                held_ids: Vec::new(),
            }),
        };
        Ok((ledger, dangling))
    }

    fn line(&self, line: &LineRef<'_>) -> Result<Vec<u8>, LedgerError> {
        let mut text = serde_json::to_vec(line).map_err(|e| LedgerError::Io {
            path: self.dir.display().to_string(),
            source: e.into(),
        })?;
        text.push(b'\n');
        Ok(text)
    }

    /// Writes the held `end` lines, then `extra` (a `begin`), in one `write`.
    fn write_held(inner: &mut Inner, dir: &Path, extra: &[u8]) -> Result<(), LedgerError> {
        if inner.held.is_empty() && extra.is_empty() {
            return Ok(());
        }
        if inner.size >= SEGMENT_BYTES {
            let next = inner.segment + 1;
            let path = segment_path(dir, next);
            inner.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            inner.segment = next;
            inner.size = 0;
        }
        let path = segment_path(dir, inner.segment);
        let written = inner.held.len() + extra.len();
        // One write for the group: a killed process never leaves half of a line behind
        // (a torn last line, from a node crash, is skipped when read).
        if inner.held.is_empty() {
            inner.file.write_all(extra).map_err(io(&path))?;
        } else {
            inner.held.extend_from_slice(extra);
            let result = inner.file.write_all(&inner.held);
            inner.held.truncate(inner.held.len() - extra.len());
            if let Err(e) = result {
                if inner.held.len() > HOLD_MAX_BYTES {
                    let dropped = inner.held_ids.len();
                    inner.held.clear();
                    inner.held_ids.clear();
                    tracing::error!(
                        records = dropped,
                        "usage ledger: writes keep failing; held end lines dropped (their requests will be recorded as interrupted)"
                    );
                }
                return Err(io(&path)(e));
            }
            inner.held.clear();
            for id in std::mem::take(&mut inner.held_ids) {
                inner.open.remove(&id);
            }
        }
        inner.size += written as u64;
        Ok(())
    }

    /// A request started (its id must be unique; the record holds what is known):
    /// written at once, with the `end` lines held so far.
    pub fn begin(&self, record: &UsageRecord) -> Result<(), LedgerError> {
        let text = self.line(&LineRef::Begin(record))?;
        let mut inner = self.inner.lock().map_err(|_| LedgerError::Poisoned)?;
        Self::write_held(&mut inner, &self.dir, &text)?;
        let segment = inner.segment;
        inner.open.insert(record.id.clone(), segment);
        Ok(())
    }

    /// A request ended: its complete record, held for the next group write — unless
    /// it has no `begin` line (refused before its body was read, or its `begin` could
    /// not be written): nothing else would account for it after a kill, so it is
    /// written at once.
    pub fn end(&self, record: &UsageRecord) -> Result<(), LedgerError> {
        let text = self.line(&LineRef::End(record))?;
        let mut inner = self.inner.lock().map_err(|_| LedgerError::Poisoned)?;
        if !inner.open.contains_key(&record.id) {
            return Self::write_held(&mut inner, &self.dir, &text);
        }
        inner.held.extend_from_slice(&text);
        inner.held_ids.push(record.id.clone());
        if inner.held.len() >= HOLD_BYTES {
            Self::write_held(&mut inner, &self.dir, &[])?;
        }
        Ok(())
    }

    /// Writes the held `end` lines.
    pub fn flush(&self) -> Result<(), LedgerError> {
        let mut inner = self.inner.lock().map_err(|_| LedgerError::Poisoned)?;
        Self::write_held(&mut inner, &self.dir, &[])
    }

    /// Writes what is held and flushes the current segment to disk (node crashes).
    pub fn sync(&self) -> Result<(), LedgerError> {
        let mut inner = self.inner.lock().map_err(|_| LedgerError::Poisoned)?;
        Self::write_held(&mut inner, &self.dir, &[])?;
        let path = segment_path(&self.dir, inner.segment);
        inner.file.sync_data().map_err(io(&path))
    }

    /// Up to `max` ended records after the cursor (held ones are written first).
    pub fn pending(&self, max: usize) -> Result<Batch, LedgerError> {
        let cursor = {
            let mut inner = self.inner.lock().map_err(|_| LedgerError::Poisoned)?;
            Self::write_held(&mut inner, &self.dir, &[])?;
            inner.cursor
        };
        let mut batch = Batch {
            records: Vec::new(),
            next: cursor,
        };
        for n in segments(&self.dir)?
            .into_iter()
            .filter(|&n| n >= cursor.segment)
        {
            let from = if n == cursor.segment {
                cursor.offset
            } else {
                0
            };
            for (line, after) in read_lines(&segment_path(&self.dir, n), from, true)? {
                if batch.records.len() >= max {
                    return Ok(batch);
                }
                if let Some(Line::End(r)) = line {
                    batch.records.push(r);
                }
                batch.next = Cursor {
                    segment: n,
                    offset: after,
                };
            }
        }
        Ok(batch)
    }

    /// The control plane stored everything before `next`: move the cursor (written
    /// atomically) and delete the segments nothing needs any more.
    pub fn ack(&self, next: Cursor) -> Result<(), LedgerError> {
        let mut inner = self.inner.lock().map_err(|_| LedgerError::Poisoned)?;
        if next <= inner.cursor {
            return Ok(());
        }
        let path = self.dir.join("cursor.json");
        let tmp = self.dir.join("cursor.json.tmp");
        let text = serde_json::to_vec(&next).map_err(|e| io(&path)(e.into()))?;
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&text).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        inner.cursor = next;
        let oldest_open = inner.open.values().min().copied().unwrap_or(u64::MAX);
        let current = inner.segment;
        drop(inner);
        for n in segments(&self.dir)? {
            // Shipped, not being written, and no request still open in it.
            if n < next.segment && n < current && n < oldest_open {
                let p = segment_path(&self.dir, n);
                fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        Ok(())
    }

    /// Segment files on disk (for tests and the status view).
    pub fn segment_count(&self) -> Result<usize, LedgerError> {
        Ok(segments(&self.dir)?.len())
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // A clean stop writes what is held (a killed process cannot: see `open`).
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_bytes(dir: &Path) -> u64 {
        segments(dir)
            .unwrap()
            .iter()
            .map(|n| fs::metadata(segment_path(dir, *n)).unwrap().len())
            .sum()
    }

    #[test]
    fn ends_ride_with_the_next_begin_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        ledger.begin(&rec("a")).unwrap();
        ledger.begin(&rec("b")).unwrap();
        let after_begins = segment_bytes(dir.path());
        ledger.end(&rec("a")).unwrap();
        ledger.end(&rec("b")).unwrap();
        assert_eq!(segment_bytes(dir.path()), after_begins, "ends are held");
        ledger.begin(&rec("c")).unwrap();
        let lines: Vec<String> = read_lines(&segment_path(dir.path(), 1), 0, false)
            .unwrap()
            .into_iter()
            .map(|(l, _)| match l {
                Some(Line::Begin(r)) => format!("begin {}", r.id),
                Some(Line::End(r)) => format!("end {}", r.id),
                None => "skipped".to_string(),
            })
            .collect();
        assert_eq!(lines, ["begin a", "begin b", "end a", "end b", "begin c"]);
        // Shipping passes over the begin lines, and knows them by how they are written.
        let kinds: Vec<bool> = read_lines(&segment_path(dir.path(), 1), 0, true)
            .unwrap()
            .into_iter()
            .map(|(l, _)| l.is_some())
            .collect();
        assert_eq!(kinds, [false, false, true, true, false]);
        // Shipping sees every ended record: held ones are written first.
        ledger.end(&rec("c")).unwrap();
        assert_eq!(ledger.pending(10).unwrap().records.len(), 3);
    }

    #[test]
    fn a_held_end_lost_with_a_killed_process_is_an_interrupted_request_never_a_lost_one() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        ledger.begin(&rec("written")).unwrap();
        ledger.begin(&rec("held")).unwrap();
        ledger.end(&rec("written")).unwrap();
        ledger.flush().unwrap();
        ledger.end(&rec("held")).unwrap();
        // kill -9: no destructor runs, the held line never reaches the file.
        std::mem::forget(ledger);
        let (_, dangling) = Ledger::open(dir.path()).unwrap();
        let ids: Vec<&str> = dangling.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["held"]);
    }

    #[test]
    fn an_end_without_a_begin_is_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        ledger.end(&rec("refused-before-its-body")).unwrap();
        std::mem::forget(ledger);
        let (ledger, dangling) = Ledger::open(dir.path()).unwrap();
        assert!(dangling.is_empty());
        assert_eq!(ledger.pending(10).unwrap().records.len(), 1);
    }

    #[test]
    fn held_ends_are_written_once_they_fill_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        let n = HOLD_BYTES / 40;
        for i in 0..n {
            ledger.begin(&rec(&format!("r{i}"))).unwrap();
        }
        let before = segment_bytes(dir.path());
        for i in 0..n {
            ledger.end(&rec(&format!("r{i}"))).unwrap();
        }
        assert!(segment_bytes(dir.path()) > before);
        assert!(ledger.inner.lock().unwrap().held.len() < HOLD_BYTES);
    }

    fn rec(id: &str) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            namespace: "team-a".into(),
            started_at_ms: 1,
            ..Default::default()
        }
    }

    #[test]
    fn ended_records_are_shipped_once_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, dangling) = Ledger::open(dir.path()).unwrap();
        assert!(dangling.is_empty());
        for id in ["a", "b", "c"] {
            ledger.begin(&rec(id)).unwrap();
            ledger.end(&rec(id)).unwrap();
        }
        let batch = ledger.pending(2).unwrap();
        assert_eq!(
            batch
                .records
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        ledger.ack(batch.next).unwrap();
        drop(ledger);

        // Restart: only "c" is left to ship, nothing dangles.
        let (ledger, dangling) = Ledger::open(dir.path()).unwrap();
        assert!(dangling.is_empty());
        let batch = ledger.pending(10).unwrap();
        assert_eq!(batch.records.len(), 1);
        assert_eq!(batch.records[0].id, "c");
        ledger.ack(batch.next).unwrap();
        assert!(ledger.pending(10).unwrap().records.is_empty());
    }

    #[test]
    fn a_request_begun_and_never_ended_is_returned_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        ledger.begin(&rec("done")).unwrap();
        ledger.begin(&rec("cut")).unwrap();
        ledger.end(&rec("done")).unwrap();
        drop(ledger);
        let (_, dangling) = Ledger::open(dir.path()).unwrap();
        assert_eq!(dangling.len(), 1);
        assert_eq!(dangling[0].id, "cut");
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        ledger.end(&rec("whole")).unwrap();
        drop(ledger);
        let seg = segment_path(dir.path(), segments(dir.path()).unwrap()[0]);
        let mut f = OpenOptions::new().append(true).open(seg).unwrap();
        f.write_all(br#"{"end":{"id":"torn""#).unwrap();
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        let batch = ledger.pending(10).unwrap();
        assert_eq!(batch.records.len(), 1);
        assert_eq!(batch.records[0].id, "whole");
    }

    #[test]
    fn acknowledged_segments_are_deleted_unless_a_request_is_open_in_them() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path()).unwrap();
        ledger.begin(&rec("long")).unwrap();
        // Force a few segments.
        ledger.inner.lock().unwrap().size = SEGMENT_BYTES;
        ledger.end(&rec("x")).unwrap();
        ledger.flush().unwrap();
        ledger.inner.lock().unwrap().size = SEGMENT_BYTES;
        ledger.end(&rec("y")).unwrap();
        ledger.flush().unwrap();
        assert_eq!(ledger.segment_count().unwrap(), 3);
        let batch = ledger.pending(10).unwrap();
        ledger.ack(batch.next).unwrap();
        // The first segment holds the open "long" request: kept.
        assert_eq!(ledger.segment_count().unwrap(), 3);
        ledger.end(&rec("long")).unwrap();
        let batch = ledger.pending(10).unwrap();
        assert_eq!(batch.records.len(), 1);
        ledger.ack(batch.next).unwrap();
        assert_eq!(ledger.segment_count().unwrap(), 1);
    }
}

//! The raft log and vote, kept in fjall and encrypted with the data key.
//!
//! Appends are acknowledged to raft only once durable: raft's core puts
//! them in the [`LogCache`] and queues them; a writer thread writes what is
//! queued to fjall's journal, fdatasyncs it, and calls back every append
//! the sync covered (group commit), so many proposals share one sync.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::crypt::DataKey;
use super::types::{
    Entry, LogId, RaftId, SnapshotMeta, StorageError, TypeConfig, Vote, entry_encoding, entry_ops,
    prepare_entry,
};

#[derive(Debug, thiserror::Error)]
pub enum RaftDbError {
    #[error("raft storage at {path}: {reason}")]
    Open { path: String, reason: String },
}

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
const SNAPSHOT_META: &[u8] = b"snapshot_meta";
const SNAPSHOT_DATA: &[u8] = b"snapshot_data";
/// Which encoding the log's entries use. postcard is not self-describing,
/// so a log in another encoding must be refused by name, not misread.
const LOG_FORMAT: &[u8] = b"log_format";
/// 2: a normal entry carries a batch of transactions (1: one transaction).
const CURRENT_LOG_FORMAT: u32 = 2;

/// The fjall database under `<data dir>/raft`: log, vote, committed index
/// and snapshots.
#[derive(Clone)]
pub struct RaftDb {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    dek: DataKey,
    flusher: Flusher,
    cache: Arc<Mutex<LogCache>>,
    /// The index of the last entry appended (readable, perhaps not yet on
    /// disk): what pipelined replication follows.
    appended: tokio::sync::watch::Sender<Option<u64>>,
    /// The last committed log id raft saved, shared with the writer.
    committed: Arc<Mutex<Committed>>,
}

/// The committed log id, and whether the writer has yet to put it in
/// fjall. It rides along with the next batch the writer makes: raft moves
/// it once per entry, and a job of its own woke the writer and wrote the
/// journal once more per entry on every manager.
#[derive(Default)]
struct Committed {
    id: Option<LogId>,
    unwritten: bool,
}

/// Entries in the cache at most.
const CACHE_ENTRIES: usize = 4_096;
/// Ops in the cached entries at most: a bound on its memory (a task op is
/// about a kilobyte, and a few hundred bytes more for the encoding a
/// normal entry carries).
const CACHE_OPS: usize = 32_768;

/// The newest entries of the log, decoded. Raft reads every entry back
/// soon after appending it: once per follower to replicate it, once to
/// apply it. Decrypting and decoding 1,000-op entries from fjall each time
/// was a third of a busy leader's work; from here a read costs a reference
/// count (transactions share their ops). It is also where appended entries
/// are readable before the writer thread has put them on disk.
///
/// The cache holds a contiguous run ending at the last entry of the log:
/// appends extend it, truncation cuts it back, purges and the bounds trim
/// its front, but only of entries already on disk.
#[derive(Default)]
struct LogCache {
    entries: VecDeque<Entry>,
    ops: usize,
    /// The last index the writer has put on disk.
    written: Option<u64>,
}

impl LogCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    /// Whether an entry at `index` extends the cache without a hole.
    fn follows(&self, index: u64) -> bool {
        self.entries
            .back()
            .is_none_or(|last| last.log_id.index + 1 == index)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.ops = 0;
    }

    fn append(&mut self, entry: Entry) {
        self.ops += entry_ops(&entry);
        self.entries.push_back(entry);
        self.trim();
    }

    /// The writer put everything up to `index` on disk.
    fn written(&mut self, index: u64) {
        self.written = Some(self.written.map_or(index, |w| w.max(index)));
        self.trim();
    }

    fn trim(&mut self) {
        while self.entries.len() > CACHE_ENTRIES || (self.ops > CACHE_OPS && self.entries.len() > 1)
        {
            let on_disk = self
                .first_index()
                .zip(self.written)
                .is_some_and(|(first, written)| first <= written);
            if !on_disk {
                break;
            }
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.ops -= entry_ops(&entry);
        }
    }

    /// Drops entries from `index` on.
    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= index) {
            if let Some(entry) = self.entries.pop_back() {
                self.ops -= entry_ops(&entry);
            }
        }
        self.written = self.written.map(|w| w.min(index.saturating_sub(1)));
    }

    /// Drops entries up to `index` included.
    fn purge(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    /// The cached part of `start..=end` (to the last entry when `end` is
    /// None): where it begins, and its entries. Everything before that
    /// index is on disk.
    fn get(&self, start: u64, end: Option<u64>) -> Option<(u64, Vec<Entry>)> {
        let first = self.first_index()?;
        let last = first + self.entries.len() as u64 - 1;
        let from = start.max(first);
        let to = end.map_or(last, |end| end.min(last));
        if from > to {
            return Some((from, Vec::new()));
        }
        let skip = usize::try_from(from - first).ok()?;
        let take = usize::try_from(to - from + 1).ok()?;
        Some((
            from,
            self.entries.iter().skip(skip).take(take).cloned().collect(),
        ))
    }
}

/// The writer thread and its queue.
///
/// Raft's core hands appends over and goes on: the entries are readable at
/// once from the [`LogCache`], and the thread writes, syncs and calls back
/// whole batches (group commit). The core must not write to fjall itself:
/// fjall holds its journal lock through a sync, so every append and every
/// commit-index write would wait out the previous sync, and raft with it.
struct Flusher {
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Job {
    /// Write these entries, sync, then tell raft.
    Append {
        entries: Vec<Entry>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Answer once everything queued before is written and synced.
    Barrier(tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl Flusher {
    fn enqueue(&self, job: Job) -> Result<(), DbError> {
        self.queue
            .as_ref()
            .and_then(|queue| queue.send(job).ok())
            .ok_or_else(|| DbError("the raft log writer has stopped".into()))
    }

    /// Waits until every job queued so far is on disk.
    async fn drain(&self) -> Result<(), DbError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(Job::Barrier(tx))?;
        rx.await
            .map_err(|_| DbError("the raft log writer has stopped".into()))?
            .map_err(DbError)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // The thread holds a handle on the database, and with it fjall's
        // directory lock: wait for it to go, so that reopening the same
        // directory right after dropping this one cannot find it locked.
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A storage failure, as text: fjall, decoding and decryption errors all
/// end here, with what was being read or written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbError(String);

fn db_error(what: &str, e: impl std::fmt::Display) -> DbError {
    DbError(format!("{what}: {e}"))
}

/// A fjall error as an operator reads it: the operating system's words
/// ("No space left on device (os error 28)") when the disk is the cause,
/// fjall's own otherwise.
fn storage_cause(e: &fjall::Error) -> String {
    match shoal_proto::transport::innermost_cause(e).downcast_ref::<std::io::Error>() {
        Some(io) => io.to_string(),
        None => e.to_string(),
    }
}

impl RaftDb {
    pub fn open(dir: &Path, dek: DataKey) -> Result<Self, RaftDbError> {
        let failed = |reason: String| RaftDbError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
        let db = Database::builder(dir)
            // Raft decides when data must be durable; fjall must not sync
            // on its own schedule in between.
            .manual_journal_persist(true)
            .worker_threads(1)
            .cache_size(16 * 1024 * 1024)
            .open()
            .map_err(|e| failed(e.to_string()))?;
        let log = db
            .keyspace("log", KeyspaceCreateOptions::default)
            .map_err(|e| failed(e.to_string()))?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(|e| failed(e.to_string()))?;
        let (flush_queue, pending) = mpsc::channel();
        let cache = Arc::new(Mutex::new(LogCache::default()));
        let committed = Arc::new(Mutex::new(Committed::default()));
        let writer = Writer {
            db: db.clone(),
            log: log.clone(),
            meta: meta.clone(),
            dek: dek.clone(),
            cache: cache.clone(),
            committed: committed.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || writer.run(pending))
            .map_err(|e| failed(format!("cannot start the log writer: {e}")))?;
        let this = RaftDb {
            inner: Arc::new(Inner {
                path: dir.to_path_buf(),
                db,
                log,
                meta,
                dek,
                flusher: Flusher {
                    queue: Some(flush_queue),
                    thread: Some(thread),
                },
                cache,
                appended: tokio::sync::watch::Sender::new(None),
                committed,
            }),
        };
        // Opening what is there proves the key opens this log, so a wrong
        // key is reported now, not as a raft failure later. Any of these
        // may be missing (a learner can hold entries before it votes, a
        // purged log only a snapshot), hence all three.
        let last = this
            .get_meta::<Vote>(VOTE)
            .and_then(|_| this.check_log_format())
            .and_then(|_| this.last_entry())
            .and_then(|last| {
                this.get_meta::<SnapshotMeta>(SNAPSHOT_META)?;
                Ok(last)
            })
            .map_err(|e| failed(e.to_string()))?;
        this.inner
            .appended
            .send_replace(last.map(|entry| entry.log_id.index));
        Ok(this)
    }

    /// Refuses a log written in another entry encoding; marks a new (or
    /// empty) one with the current encoding.
    fn check_log_format(&self) -> Result<(), DbError> {
        let format = match self.get_meta::<u32>(LOG_FORMAT)? {
            Some(format) => format,
            None if self.inner.log.first_key_value().is_some() => 1,
            None => return self.put_meta_durably(LOG_FORMAT, &CURRENT_LOG_FORMAT),
        };
        if format == CURRENT_LOG_FORMAT {
            return Ok(());
        }
        Err(DbError(format!(
            "the raft log is in format {format}, and this shoald reads format \
             {CURRENT_LOG_FORMAT}: run the shoald that wrote it, or remove this manager's data \
             directory and join it to the cluster again"
        )))
    }

    pub fn log_store(&self) -> LogStore {
        LogStore { db: self.clone() }
    }

    /// Follows appends to this log, for replication that sends entries as
    /// soon as they are in it.
    pub fn appended(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.inner.appended.subscribe()
    }

    /// The last committed log id raft saved here (None before the first).
    pub fn committed(&self) -> Option<LogId> {
        self.inner.committed.lock().id
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn seal<T: Serialize>(&self, aad: &[u8], value: &T) -> Result<Vec<u8>, DbError> {
        seal(&self.inner.dek, aad, value)
    }

    fn open_value<T: DeserializeOwned>(&self, aad: &[u8], sealed: &[u8]) -> Result<T, DbError> {
        let plain = self.inner.dek.open(aad, sealed).map_err(|e| {
            DbError(format!(
                "cannot decrypt raft data at {}: {e}; this data directory belongs to another key \
                 (wrong unlock key?) or is corrupt",
                self.inner.path.display()
            ))
        })?;
        postcard::from_bytes(&plain).map_err(|e| db_error("decoding raft data", e))
    }

    pub(crate) fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, DbError> {
        match self
            .inner
            .meta
            .get(key)
            .map_err(|e| db_error("reading", e))?
        {
            Some(sealed) => self.open_value(key, &sealed).map(Some),
            None => Ok(None),
        }
    }

    /// Writes a meta value and makes it durable before returning.
    pub(crate) fn put_meta_durably<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<(), DbError> {
        let sealed = self.seal(key, value)?;
        self.inner
            .meta
            .insert(key, sealed)
            .map_err(|e| db_error("writing", storage_cause(&e)))?;
        self.sync()
    }

    fn sync(&self) -> Result<(), DbError> {
        self.inner
            .db
            .persist(PersistMode::SyncData)
            .map_err(|e| db_error("syncing", storage_cause(&e)))
    }

    /// The persisted snapshot: its meta and data (the serialized store).
    pub(crate) fn snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, DbError> {
        let Some(meta) = self.get_meta::<SnapshotMeta>(SNAPSHOT_META)? else {
            return Ok(None);
        };
        let data: Vec<u8> = self.get_meta(SNAPSHOT_DATA)?.unwrap_or_default();
        Ok(Some((meta, data)))
    }

    /// Replaces the persisted snapshot, durably, in one batch so that meta
    /// and data always match.
    pub(crate) fn save_snapshot(&self, meta: &SnapshotMeta, data: &Vec<u8>) -> Result<(), DbError> {
        let mut batch = self.inner.db.batch();
        batch.insert(
            &self.inner.meta,
            SNAPSHOT_META,
            self.seal(SNAPSHOT_META, meta)?,
        );
        batch.insert(
            &self.inner.meta,
            SNAPSHOT_DATA,
            self.seal(SNAPSHOT_DATA, data)?,
        );
        batch
            .commit()
            .map_err(|e| db_error("writing the snapshot", storage_cause(&e)))?;
        self.sync()
    }

    fn log_aad(index: u64) -> [u8; 11] {
        let mut aad = [0u8; 11];
        aad[..3].copy_from_slice(b"log");
        aad[3..].copy_from_slice(&index.to_be_bytes());
        aad
    }

    fn entries(&self, start: u64, end_inclusive: Option<u64>) -> Result<Vec<Entry>, DbError> {
        let from = start.to_be_bytes();
        let iter = match end_inclusive {
            Some(end) => self.inner.log.range(from..=end.to_be_bytes()),
            None => self.inner.log.range(from..),
        };
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item
                .into_inner()
                .map_err(|e| db_error("reading the log", e))?;
            let index = index_of(&key)?;
            entries.push(self.open_value(&Self::log_aad(index), &value)?);
        }
        Ok(entries)
    }

    fn last_entry(&self) -> Result<Option<Entry>, DbError> {
        let Some(guard) = self.inner.log.last_key_value() else {
            return Ok(None);
        };
        let (key, value) = guard
            .into_inner()
            .map_err(|e| db_error("reading the log", e))?;
        let index = index_of(&key)?;
        self.open_value(&Self::log_aad(index), &value).map(Some)
    }

    /// Deletes log entries with index in `range`.
    fn delete_entries(&self, from: u64, to_inclusive: u64) -> Result<(), DbError> {
        let mut batch = self.inner.db.batch();
        for item in self
            .inner
            .log
            .range(from.to_be_bytes()..=to_inclusive.to_be_bytes())
        {
            let key = item.key().map_err(|e| db_error("reading the log", e))?;
            batch.remove(&self.inner.log, key);
        }
        batch
            .commit()
            .map_err(|e| db_error("deleting log entries", storage_cause(&e)))
    }
}

/// Encodes `value` and encrypts it, bound to `aad` (its key).
fn seal<T: Serialize>(dek: &DataKey, aad: &[u8], value: &T) -> Result<Vec<u8>, DbError> {
    let plain = postcard::to_allocvec(value).map_err(|e| db_error("encoding", e))?;
    Ok(dek.seal(aad, &plain))
}

fn index_of(key: &[u8]) -> Result<u64, DbError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| DbError(format!("malformed log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The writer thread's side: see [`Flusher`].
struct Writer {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    dek: DataKey,
    cache: Arc<Mutex<LogCache>>,
    committed: Arc<Mutex<Committed>>,
}

impl Writer {
    /// Group commit: takes everything queued, writes it in one batch,
    /// syncs once, then answers every job.
    fn run(self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            // Taken before the rest of the queue: raft saves a committed id
            // only after queueing the entries it covers, so every entry it
            // covers is in this batch or an earlier one, and no crash can
            // leave a committed id beyond the log on disk.
            let committed = self.take_unwritten_committed();
            let mut batch_jobs = vec![first];
            batch_jobs.extend(jobs.try_iter());
            let result = self.write(&batch_jobs, committed);
            for job in batch_jobs {
                match job {
                    Job::Append { callback, .. } => {
                        let outcome = result.as_ref().map(|_| ()).map_err(|e| {
                            std::io::Error::other(format!("writing the raft log: {e}"))
                        });
                        callback.log_io_completed(outcome);
                    }
                    Job::Barrier(done) => {
                        let _ = done.send(result.as_ref().map(|_| ()).map_err(Clone::clone));
                    }
                }
            }
        }
        // Closing: the committed id no batch carried, synced so that a
        // restart applies everything committed before the first election.
        let committed = self.take_unwritten_committed();
        if committed.is_some()
            && let Err(e) = self.write(&[], committed).and_then(|()| {
                self.db
                    .persist(PersistMode::SyncData)
                    .map_err(|e| format!("syncing: {}", storage_cause(&e)))
            })
        {
            tracing::warn!(error = %e, "saving the committed index on close failed");
        }
    }

    /// The committed id raft saved since the last batch took it, if any.
    fn take_unwritten_committed(&self) -> Option<Option<LogId>> {
        let mut committed = self.committed.lock();
        std::mem::take(&mut committed.unwritten).then_some(committed.id)
    }

    fn write(&self, jobs: &[Job], committed: Option<Option<LogId>>) -> Result<(), String> {
        let mut batch = self.db.batch();
        let mut last_appended = None;
        for job in jobs {
            match job {
                Job::Append { entries, .. } => {
                    for entry in entries {
                        let index = entry.log_id.index;
                        let plain = entry_encoding(entry)
                            .map_err(|e| format!("entry {index}: encoding: {e}"))?;
                        let sealed = self.dek.seal(&RaftDb::log_aad(index), &plain);
                        batch.insert(&self.log, index.to_be_bytes(), sealed);
                        last_appended = Some(index);
                    }
                }
                Job::Barrier(_) => {}
            }
        }
        if let Some(id) = committed {
            let sealed =
                seal(&self.dek, COMMITTED, &id).map_err(|e| format!("committed index: {e}"))?;
            batch.insert(&self.meta, COMMITTED, sealed);
        }
        if batch.is_empty() {
            return Ok(());
        }
        batch
            .commit()
            .map_err(|e| format!("appending: {}", storage_cause(&e)))?;
        // The committed index need not be durable: one lost in a crash is an
        // older, still true one (raft learns the rest from the leader), and
        // the next append's sync covers it anyway.
        if !jobs.is_empty() {
            self.db
                .persist(PersistMode::SyncData)
                .map_err(|e| format!("syncing: {}", storage_cause(&e)))?;
        }
        if let Some(index) = last_appended {
            self.cache.lock().written(index);
        }
        Ok(())
    }
}

fn io_error(kind: fn(AnyError) -> StorageIOError<RaftId>, e: DbError) -> StorageError {
    kind(AnyError::error(e.to_string())).into()
}

fn read_logs(e: DbError) -> StorageError {
    io_error(StorageIOError::read_logs, e)
}

fn write_logs(e: DbError) -> StorageError {
    io_error(StorageIOError::write_logs, e)
}

/// openraft's `RaftLogStorage` and `RaftLogReader` over [`RaftDb`].
#[derive(Clone)]
pub struct LogStore {
    db: RaftDb,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e),
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&e) => Some(e - 1),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|end| end < start) {
            return Ok(Vec::new());
        }
        let cached = self.db.inner.cache.lock().get(start, end);
        match cached {
            Some((from, cached)) if from <= start => Ok(cached),
            Some((from, cached)) => {
                // The older part is on disk, the rest in the cache.
                let mut entries = self.db.entries(start, Some(from - 1)).map_err(read_logs)?;
                entries.extend(cached);
                Ok(entries)
            }
            None => self.db.entries(start, end).map_err(read_logs),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.db.inner.flusher.drain().await.map_err(read_logs)?;
        let last_purged: Option<LogId> = self.db.get_meta(LAST_PURGED).map_err(read_logs)?;
        let last = self.db.last_entry().map_err(read_logs)?.map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.db
            .put_meta_durably(VOTE, vote)
            .map_err(|e| io_error(StorageIOError::write_vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.db
            .get_meta(VOTE)
            .map_err(|e| io_error(StorageIOError::read_vote, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written with the writer's next batch and not synced for itself:
        // raft re-learns the committed index from the leader; keeping it
        // only spares replaying on restart.
        *self.db.inner.committed.lock() = Committed {
            id: committed,
            unwritten: true,
        };
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.db.inner.flusher.drain().await.map_err(read_logs)?;
        Ok(self
            .db
            .get_meta::<Option<LogId>>(COMMITTED)
            .map_err(read_logs)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut entries: Vec<Entry> = entries.into_iter().collect();
        for entry in &mut entries {
            prepare_entry(entry).map_err(|e| {
                write_logs(db_error(&format!("encoding entry {}", entry.log_id), e))
            })?;
        }
        let follows = {
            let cache = self.db.inner.cache.lock();
            entries
                .first()
                .is_none_or(|first| cache.follows(first.log_id.index))
        };
        if !follows {
            // A hole after the cache's last entry (raft never makes one,
            // it truncates first): start the cache afresh once what it
            // holds is on disk, so that no entry is ever only in a dropped
            // cache.
            self.db.inner.flusher.drain().await.map_err(write_logs)?;
            self.db.inner.cache.lock().clear();
        }
        {
            let mut cache = self.db.inner.cache.lock();
            for entry in &entries {
                cache.append(entry.clone());
            }
        }
        if let Some(last) = entries.last() {
            self.db.inner.appended.send_replace(Some(last.log_id.index));
        }
        self.db
            .inner
            .flusher
            .enqueue(Job::Append { entries, callback })
            .map_err(write_logs)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Queued writes first, or one could bring truncated entries back.
        self.db.inner.flusher.drain().await.map_err(write_logs)?;
        self.db.inner.cache.lock().truncate(log_id.index);
        self.db
            .inner
            .appended
            .send_replace(log_id.index.checked_sub(1));
        self.db
            .delete_entries(log_id.index, u64::MAX)
            .and_then(|()| self.db.sync())
            .map_err(write_logs)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point first: a crash in between leaves entries that
        // are ignored, never a hole that looks like a log.
        self.db.inner.flusher.drain().await.map_err(write_logs)?;
        self.db.inner.cache.lock().purge(log_id.index);
        self.db
            .put_meta_durably(LAST_PURGED, &log_id)
            .and_then(|()| self.db.delete_entries(0, log_id.index))
            .map_err(write_logs)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorage;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

    use super::*;
    use crate::raft::state_machine::StateMachine;
    use crate::store::Store;

    struct FjallBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for FjallBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| write_logs(DbError(e.to_string())))?;
            let db = RaftDb::open(dir.path(), DataKey::generate())
                .map_err(|e| write_logs(DbError(e.to_string())))?;
            let sm = StateMachine::open(db.clone(), Arc::new(Store::new()))
                .map_err(|e| write_logs(DbError(e.to_string())))?;
            Ok((dir, db.log_store(), sm))
        }
    }

    #[test]
    fn the_fjall_store_passes_openraft_storage_conformance() {
        Suite::test_all(FjallBuilder).unwrap();
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// Where the cached part of a range begins, and its indexes.
    fn cached(cache: &LogCache, start: u64, end: Option<u64>) -> Option<(u64, Vec<u64>)> {
        cache
            .get(start, end)
            .map(|(from, e)| (from, e.iter().map(|e| e.log_id.index).collect()))
    }

    #[test]
    fn the_log_cache_serves_the_part_of_a_range_it_holds() {
        let mut cache = LogCache::default();
        assert!(cache.get(1, None).is_none(), "an empty cache holds nothing");
        for index in 5..=9 {
            cache.append(blank(1, index));
        }
        assert_eq!(cached(&cache, 5, Some(9)), Some((5, vec![5, 6, 7, 8, 9])));
        assert_eq!(cached(&cache, 7, None), Some((7, vec![7, 8, 9])));
        assert_eq!(cached(&cache, 8, Some(20)), Some((8, vec![8, 9])));
        assert_eq!(cached(&cache, 10, None), Some((10, vec![])));
        assert_eq!(
            cached(&cache, 2, Some(6)),
            Some((5, vec![5, 6])),
            "2 to 4 come from disk"
        );

        cache.truncate(8);
        assert_eq!(cached(&cache, 5, None), Some((5, vec![5, 6, 7])));
        assert!(cache.follows(8));
        cache.append(blank(2, 8));
        assert_eq!(
            cache.get(8, None).map(|(_, e)| e[0].log_id.leader_id.term),
            Some(2)
        );

        cache.purge(6);
        assert_eq!(cached(&cache, 5, None), Some((7, vec![7, 8])));
        assert!(!cache.follows(12), "a hole is noticed");
    }

    #[test]
    fn the_log_cache_keeps_entries_until_they_are_on_disk() {
        let mut cache = LogCache::default();
        let total = CACHE_ENTRIES as u64 + 10;
        for index in 1..=total {
            cache.append(blank(1, index));
        }
        assert_eq!(
            cache.entries.len() as u64,
            total,
            "nothing is dropped before the writer has it on disk"
        );
        cache.written(5);
        assert_eq!(cache.first_index(), Some(6));
        cache.written(total);
        assert_eq!(cache.entries.len(), CACHE_ENTRIES);
        assert_eq!(cache.first_index(), Some(11));
        assert_eq!(cache.ops, CACHE_ENTRIES);
        cache.truncate(total);
        assert_eq!(cache.written, Some(total - 1));
    }

    #[tokio::test]
    async fn the_committed_index_rides_with_the_next_batch_and_is_kept_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::generate();
        let committed = |index| Some(blank(1, index).log_id);
        {
            let db = RaftDb::open(dir.path(), key.clone()).unwrap();
            let mut store = db.log_store();
            append(&mut store, (1..=3).map(|i| blank(1, i)).collect()).await;
            store.save_committed(committed(2)).await.unwrap();
            // Reading drains the writer, which writes what it holds.
            assert_eq!(store.read_committed().await.unwrap(), committed(2));
            store.save_committed(committed(3)).await.unwrap();
            assert_eq!(db.committed(), committed(3));
        }
        let db = RaftDb::open(dir.path(), key).unwrap();
        let mut store = db.log_store();
        assert_eq!(store.read_committed().await.unwrap(), committed(3));
    }

    /// Appends and waits for the durable acknowledgement.
    async fn append(store: &mut LogStore, entries: Vec<Entry>) {
        use openraft::storage::RaftLogStorageExt;
        store.blocking_append(entries).await.unwrap();
    }

    #[tokio::test]
    async fn the_log_and_vote_survive_a_reopen_and_need_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::generate();
        {
            let db = RaftDb::open(dir.path(), key.clone()).unwrap();
            let mut store = db.log_store();
            append(&mut store, (1..=3).map(|i| blank(1, i)).collect()).await;
            store.save_vote(&Vote::new(2, 7)).await.unwrap();
        }
        let db = RaftDb::open(dir.path(), key).unwrap();
        let mut store = db.log_store();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 7)));
        let entries = store.try_get_log_entries(1..=3).await.unwrap();
        assert_eq!(
            entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        drop(store);
        drop(db);

        let err = RaftDb::open(dir.path(), DataKey::generate())
            .err()
            .expect("a wrong key is refused");
        assert!(err.to_string().contains("cannot decrypt"), "{err}");
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_even_before_any_vote() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = RaftDb::open(dir.path(), DataKey::generate()).unwrap();
            append(&mut db.log_store(), vec![blank(1, 1)]).await;
        }
        // Reopening straight away also shows the dropped store let go of
        // the directory.
        let err = RaftDb::open(dir.path(), DataKey::generate())
            .err()
            .expect("a wrong key is refused");
        assert!(err.to_string().contains("cannot decrypt"), "{err}");
    }

    #[tokio::test]
    async fn a_log_in_another_entry_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::generate();
        {
            let db = RaftDb::open(dir.path(), key.clone()).unwrap();
            append(&mut db.log_store(), vec![blank(1, 1)]).await;
            // What a shoald from before the format marker leaves behind.
            db.inner.meta.remove(LOG_FORMAT).unwrap();
            db.sync().unwrap();
        }
        let err = RaftDb::open(dir.path(), key)
            .err()
            .expect("an unmarked log is refused");
        assert!(err.to_string().contains("format 1"), "{err}");
        assert!(
            err.to_string().contains("join it to the cluster again"),
            "{err}"
        );
    }
}

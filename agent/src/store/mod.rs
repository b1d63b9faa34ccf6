//! The cluster store: every object, held in memory on each manager and
//! changed only by applying raft entries.
//!
//! - [`objects`] defines the object kinds.
//! - [`Transaction`]s are built by request handlers and control loops (ids
//!   and times made *before* proposing) and applied here in log order. Apply
//!   is deterministic and all-or-nothing: either every op of a transaction
//!   holds or none is applied and the proposer gets a [`TxError`].
//! - Optimistic concurrency: an update carries the object with the version
//!   it was read at; apply refuses it if the object changed since.
//! - Each applied transaction emits [`Changes`] to subscribers, and a bounded
//!   history of them lets a [`Watch`](Store::watch_from) resume from a
//!   version without a full copy.
//!
//! Durability is raft's: the log and snapshots live in `crate::raft`; this
//! module does no I/O.

pub mod objects;
pub mod query;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::raft::types::{LogId, StoredMembership};
pub use objects::*;

/// How many applied transactions' changes are kept for resuming watches.
const HISTORY_EVENTS: usize = 100_000;
/// Live subscribers that fall further behind than this get a reset.
const BROADCAST_CAPACITY: usize = 16_384;

// ------------------------------------------------------------ transactions

/// One write, proposed through raft as a single entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Transaction {
    /// Shared, so that raft's copies of an entry (log cache, replication,
    /// apply) cost a reference count, not a copy of 1,000 ops.
    ops: Arc<Vec<Op>>,
    /// Unix ms, stamped by the proposer; the time of the resulting events.
    pub time: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    /// Fails if an object of that kind and id exists, or (services) the name
    /// is taken.
    Create(Object),
    /// Replaces the object. Its `meta.version` must equal the stored one.
    Update(Object),
    /// Deletes the object; with a version, only if it still has it.
    Delete {
        kind: Kind,
        id: String,
        version: Option<u64>,
    },
    /// Changes one field group that has a single owner, without a version
    /// check, so that owners never conflict with each other (the worker owns
    /// a task's status, managers its desired state). A patch on a missing
    /// object, or one that would move a state backwards, is skipped.
    Patch(Patch),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Patch {
    /// Reported by the worker running the task; only moves forward.
    TaskStatus { id: String, status: TaskStatus },
    /// Set by orchestrators; only moves forward (running → shutdown → remove).
    TaskDesiredState { id: String, state: TaskState },
    /// Set by the scheduler; applies only while the task is still pending
    /// and wanted running.
    TaskAssign {
        id: String,
        node_id: String,
        status: TaskStatus,
    },
    /// Set by the dispatcher.
    NodeStatus { id: String, status: NodeStatus },
    /// Reported by the node when its session starts.
    NodeDescription {
        id: String,
        description: NodeDescription,
    },
}

impl Transaction {
    pub fn new(time: i64) -> Self {
        Transaction {
            ops: Arc::new(Vec::new()),
            time,
        }
    }

    pub fn create(mut self, object: impl StoreObject) -> Self {
        Arc::make_mut(&mut self.ops).push(Op::Create(object.into_object()));
        self
    }

    pub fn update(mut self, object: impl StoreObject) -> Self {
        Arc::make_mut(&mut self.ops).push(Op::Update(object.into_object()));
        self
    }

    pub fn delete<T: StoreObject>(mut self, object: &T) -> Self {
        Arc::make_mut(&mut self.ops).push(Op::Delete {
            kind: T::KIND,
            id: object.meta().id.clone(),
            version: Some(object.meta().version),
        });
        self
    }

    pub fn patch(mut self, patch: Patch) -> Self {
        Arc::make_mut(&mut self.ops).push(Op::Patch(patch));
        self
    }

    pub fn push(&mut self, op: Op) {
        Arc::make_mut(&mut self.ops).push(op);
    }

    /// Gives the objects this transaction creates `version`, the index of
    /// the raft entry that carries it, as applying it will. Done once when
    /// the entry is made, the objects every manager's store then keeps are
    /// the entry's own: applying no longer copies each one to stamp it.
    pub fn stamp_created(&mut self, version: u64) {
        let unstamped =
            |op: &Op| matches!(op, Op::Create(object) if object.meta().version != version);
        if !self.ops.iter().any(unstamped) {
            return;
        }
        for op in Arc::make_mut(&mut self.ops).iter_mut() {
            if let Op::Create(object) = op
                && object.meta().version != version
            {
                object.meta_mut().version = version;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// Why a transaction was not applied. These are expected outcomes that
/// every manager reaches identically, not storage faults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TxError {
    #[error(
        "{kind} {id} was changed by someone else (version {expected} is now {actual}): read it again and retry"
    )]
    Conflict {
        kind: Kind,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("{kind} {id} not found")]
    NotFound { kind: Kind, id: String },
    #[error("{kind} {id} already exists")]
    Exists { kind: Kind, id: String },
    #[error("a service named {name:?} already exists: choose another name or update it")]
    NameInUse { name: String },
}

/// What a transaction produced: the version its changes carry.
pub type TxResult = Result<u64, TxError>;

// ------------------------------------------------------------------ events

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Create,
    Update,
    Remove,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub action: Action,
    pub object: Object,
    /// For updates and removals: the object before.
    pub old: Option<Object>,
}

/// The changes of one applied entry.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub version: u64,
    pub time: i64,
    pub events: Vec<Event>,
    /// The whole store was replaced (snapshot installed): subscribers must
    /// discard what they know and read everything again.
    pub reset: bool,
}

impl Changes {
    /// Whether a follower of `kind` objects has anything to look at here
    /// (a reset replaced everything, so it touches every kind).
    fn touches(&self, kind: Kind) -> bool {
        self.reset || self.events.iter().any(|e| e.object.kind() == kind)
    }
}

/// Waits for the next change set on `changes` that touches `kind`, or for
/// missed ones (they may have); false once the store is gone. Change sets
/// about other kinds are skipped: a busy cluster makes hundreds a second.
pub async fn next_touching(changes: &mut broadcast::Receiver<Arc<Changes>>, kind: Kind) -> bool {
    loop {
        match changes.recv().await {
            Ok(change) if !change.touches(kind) => continue,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return true,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}

// ------------------------------------------------------------------ tables

/// One kind's objects, by id, in no particular order. Objects are shared
/// (`Arc`) with readers and events; a change replaces the Arc, never
/// mutates through it.
///
/// A hash map: every applied op looks its object up a few times, and in a
/// tree of 100,000 tasks each lookup was some forty string comparisons, the
/// largest cost of applying a scale-up. Ids are random and made by the
/// managers, so a fast unkeyed hash is safe here. Prefix lookups (operators
/// typing a short id) walk the table instead.
#[derive(Clone, Debug)]
pub struct Table<T> {
    items: FxHashMap<String, Arc<T>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            items: FxHashMap::default(),
        }
    }
}

impl<T: StoreObject> Table<T> {
    pub fn get(&self, id: &str) -> Option<&Arc<T>> {
        self.items.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Objects whose id starts with `prefix`, at most `limit`, by id.
    pub fn with_prefix(&self, prefix: &str, limit: usize) -> Vec<&Arc<T>> {
        let mut found: Vec<(&String, &Arc<T>)> = self
            .items
            .iter()
            .filter(|(id, _)| id.starts_with(prefix))
            .collect();
        found.sort_unstable_by_key(|(id, _)| *id);
        found.into_iter().take(limit).map(|(_, o)| o).collect()
    }
}

/// Raft's own facts carried by the state machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RaftApplied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub nodes: Table<Node>,
    pub services: Table<Service>,
    pub tasks: Table<Task>,
    pub clusters: Table<Cluster>,
    /// Tasks by service id and by node id (Fx hash, as the tables: ids are
    /// made by managers), holding the same `Arc`s as `tasks` so that walking
    /// a service's 100,000 tasks costs no lookups. A service's tasks are
    /// ordered by slot, so that one slot's history is a range rather than a
    /// walk of the service. Names are chosen by operators and keep std's
    /// keyed hash.
    tasks_by_service: FxHashMap<String, BTreeMap<(u64, String), Arc<Task>>>,
    tasks_by_node: FxHashMap<String, TaskIndex>,
    service_by_name: FxHashMap<String, String>,
    /// Raft index of the last applied entry: the store's version.
    pub version: u64,
    pub raft: RaftApplied,
}

/// Access to the table of one kind, so that store code can be generic.
pub trait HasTable<T: StoreObject> {
    fn table(&self) -> &Table<T>;
}

impl HasTable<Node> for Tables {
    fn table(&self) -> &Table<Node> {
        &self.nodes
    }
}
impl HasTable<Service> for Tables {
    fn table(&self) -> &Table<Service> {
        &self.services
    }
}
impl HasTable<Task> for Tables {
    fn table(&self) -> &Table<Task> {
        &self.tasks
    }
}
impl HasTable<Cluster> for Tables {
    fn table(&self) -> &Table<Cluster> {
        &self.clusters
    }
}

impl Tables {
    pub fn get<T: StoreObject>(&self, id: &str) -> Option<&Arc<T>>
    where
        Self: HasTable<T>,
    {
        self.table().get(id)
    }

    /// The stored object, shared with the table.
    pub fn get_object(&self, kind: Kind, id: &str) -> Option<Object> {
        match kind {
            Kind::Node => self.nodes.get(id).cloned().map(Object::Node),
            Kind::Service => self.services.get(id).cloned().map(Object::Service),
            Kind::Task => self.tasks.get(id).cloned().map(Object::Task),
            Kind::Cluster => self.clusters.get(id).cloned().map(Object::Cluster),
        }
    }

    fn object_version(&self, kind: Kind, id: &str) -> Option<u64> {
        match kind {
            Kind::Node => self.nodes.get(id).map(|o| o.meta.version),
            Kind::Service => self.services.get(id).map(|o| o.meta.version),
            Kind::Task => self.tasks.get(id).map(|o| o.meta.version),
            Kind::Cluster => self.clusters.get(id).map(|o| o.meta.version),
        }
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.clusters.get(CLUSTER_OBJECT_ID)
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.service_by_name
            .get(name)
            .and_then(|id| self.services.get(id))
    }

    /// A service's tasks, by slot (global ones, slot 0, first).
    pub fn tasks_of_service<'a>(
        &'a self,
        service_id: &str,
    ) -> impl Iterator<Item = &'a Arc<Task>> + 'a {
        self.tasks_by_service
            .get(service_id)
            .into_iter()
            .flat_map(|tasks| tasks.values())
    }

    /// The tasks of one place of a service: its slot `slot`, or for a
    /// global service (slot 0) its node `node_id`.
    pub fn tasks_in_slot<'a>(
        &'a self,
        service_id: &'a str,
        slot: u64,
        node_id: &'a str,
    ) -> Box<dyn Iterator<Item = &'a Arc<Task>> + 'a> {
        if slot == 0 {
            return Box::new(
                self.tasks_on_node(node_id)
                    .filter(move |task| task.service_id == service_id && task.slot == 0),
            );
        }
        Box::new(
            self.tasks_by_service
                .get(service_id)
                .into_iter()
                .flat_map(move |tasks| {
                    tasks
                        .range((slot, String::new())..)
                        .take_while(move |((of, _), _)| *of == slot)
                        .map(|(_, task)| task)
                }),
        )
    }

    pub fn tasks_on_node<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Arc<Task>> + 'a {
        self.tasks_by_node
            .get(node_id)
            .into_iter()
            .flat_map(|tasks| tasks.values())
    }

    pub fn count_tasks_on_node(&self, node_id: &str) -> usize {
        self.tasks_by_node.get(node_id).map_or(0, |s| s.len())
    }

    fn insert(&mut self, object: Object) {
        match object {
            Object::Node(o) => {
                self.nodes.items.insert(o.meta.id.clone(), o);
            }
            Object::Service(o) => {
                self.service_by_name
                    .insert(o.spec.name.clone(), o.meta.id.clone());
                self.services.items.insert(o.meta.id.clone(), o);
            }
            Object::Task(task) => {
                self.tasks_by_service
                    .entry(task.service_id.clone())
                    .or_default()
                    .insert((task.slot, task.meta.id.clone()), task.clone());
                if !task.node_id.is_empty() {
                    self.tasks_by_node
                        .entry(task.node_id.clone())
                        .or_default()
                        .insert(task.meta.id.clone(), task.clone());
                }
                self.tasks.items.insert(task.meta.id.clone(), task);
            }
            Object::Cluster(o) => {
                self.clusters.items.insert(o.meta.id.clone(), o);
            }
        }
    }

    /// Puts `object` in place of the stored object with its id and returns
    /// that one. A task that stays on its node and in its slot (a status
    /// report, a desired state) is swapped in place: most changes during a
    /// scale-up are of that kind, and taking it out of the table and both
    /// indexes and putting it back cost three key copies and three
    /// re-insertions more.
    fn replace(&mut self, object: Object) -> Option<Object> {
        if let Object::Task(task) = &object
            && let Some(stored) = self.tasks.items.get_mut(task.meta.id.as_str())
            && stored.node_id == task.node_id
            && stored.service_id == task.service_id
            && stored.slot == task.slot
        {
            let in_service = self
                .tasks_by_service
                .get_mut(task.service_id.as_str())
                .and_then(|tasks| tasks.get_mut(&(task.slot, task.meta.id.clone())));
            if let Some(entry) = in_service {
                *entry = task.clone();
            }
            let on_node = self
                .tasks_by_node
                .get_mut(task.node_id.as_str())
                .and_then(|tasks| tasks.get_mut(task.meta.id.as_str()));
            if let Some(entry) = on_node {
                *entry = task.clone();
            }
            return Some(Object::Task(std::mem::replace(stored, task.clone())));
        }
        let old = self.remove(object.kind(), object.id());
        self.insert(object);
        old
    }

    fn remove(&mut self, kind: Kind, id: &str) -> Option<Object> {
        match kind {
            Kind::Node => self.nodes.items.remove(id).map(Object::Node),
            Kind::Service => self.services.items.remove(id).map(|o| {
                if self.service_by_name.get(&o.spec.name).map(String::as_str) == Some(id) {
                    self.service_by_name.remove(&o.spec.name);
                }
                Object::Service(o)
            }),
            Kind::Task => self.tasks.items.remove(id).map(|o| {
                remove_index(
                    &mut self.tasks_by_service,
                    &o.service_id,
                    &(o.slot, o.meta.id.clone()),
                );
                remove_index(&mut self.tasks_by_node, &o.node_id, &o.meta.id);
                Object::Task(o)
            }),
            Kind::Cluster => self.clusters.items.remove(id).map(Object::Cluster),
        }
    }

    /// Checks `tx` against the current state and applies it at `version`,
    /// adding its events to `events`; or returns the first failing op's
    /// error with nothing changed.
    fn apply(
        &mut self,
        version: u64,
        tx: &Transaction,
        events: &mut Vec<Event>,
    ) -> Result<(), TxError> {
        self.check(tx)?;
        events.reserve(tx.ops.len());
        for op in tx.ops.iter() {
            match op {
                Op::Create(object) => {
                    let mut object = object.clone();
                    // Stamped when the entry was made, unless it came
                    // from a log written before that was done.
                    if object.meta().version != version {
                        object.meta_mut().version = version;
                    }
                    self.insert(object.clone());
                    events.push(Event {
                        action: Action::Create,
                        object,
                        old: None,
                    });
                }
                Op::Update(object) => {
                    let mut object = object.clone();
                    object.meta_mut().version = version;
                    let old = self.replace(object.clone());
                    events.push(Event {
                        action: Action::Update,
                        object,
                        old,
                    });
                }
                Op::Delete { kind, id, .. } => {
                    if let Some(old) = self.remove(*kind, id) {
                        events.push(Event {
                            action: Action::Remove,
                            object: old,
                            old: None,
                        });
                    }
                }
                Op::Patch(patch) => {
                    if let Some(event) = self.apply_patch(version, patch) {
                        events.push(event);
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_patch(&mut self, version: u64, patch: &Patch) -> Option<Event> {
        let (kind, id) = match patch {
            Patch::TaskStatus { id, .. }
            | Patch::TaskDesiredState { id, .. }
            | Patch::TaskAssign { id, .. } => (Kind::Task, id),
            Patch::NodeStatus { id, .. } | Patch::NodeDescription { id, .. } => (Kind::Node, id),
        };
        let mut new = self.get_object(kind, id)?;
        let changed = match (&mut new, patch) {
            (Object::Task(task), Patch::TaskStatus { status, .. }) => {
                // A worker may repeat a report (retries, restarts): equal
                // states refresh the details, older ones are stale.
                if status.state < task.status.state {
                    false
                } else {
                    Arc::make_mut(task).status = status.clone();
                    true
                }
            }
            (Object::Task(task), Patch::TaskDesiredState { state, .. }) => {
                if *state <= task.desired_state {
                    false
                } else {
                    Arc::make_mut(task).desired_state = *state;
                    true
                }
            }
            (
                Object::Task(task),
                Patch::TaskAssign {
                    node_id, status, ..
                },
            ) => {
                if task.status.state != TaskState::Pending
                    || task.desired_state > TaskState::Running
                {
                    false
                } else {
                    let task = Arc::make_mut(task);
                    task.node_id = node_id.clone();
                    task.status = status.clone();
                    true
                }
            }
            (Object::Node(node), Patch::NodeStatus { status, .. }) => {
                Arc::make_mut(node).status = status.clone();
                true
            }
            (Object::Node(node), Patch::NodeDescription { description, .. }) => {
                Arc::make_mut(node).description = description.clone();
                true
            }
            _ => false,
        };
        if !changed {
            return None;
        }
        new.meta_mut().version = version;
        let old = self.replace(new.clone());
        Some(Event {
            action: Action::Update,
            object: new,
            old,
        })
    }

    /// Validates every op, taking earlier ops of the same transaction into
    /// account, without changing anything.
    fn check(&self, tx: &Transaction) -> Result<(), TxError> {
        let mut staged = Staged::new(tx.ops.len());
        for op in tx.ops.iter() {
            match op {
                Op::Create(object) => {
                    let key = (object.kind(), object.id());
                    if staged.version(self, key).is_some() {
                        return Err(TxError::Exists {
                            kind: key.0,
                            id: key.1.to_string(),
                        });
                    }
                    if let Object::Service(service) = object {
                        let name = service.spec.name.as_str();
                        if staged.owner(self, name).is_some() {
                            return Err(TxError::NameInUse {
                                name: name.to_string(),
                            });
                        }
                        staged.set_owner(name, &service.meta.id);
                    }
                    staged.set_version(key, Some(u64::MAX));
                }
                Op::Update(object) => {
                    let key = (object.kind(), object.id());
                    let Some(current) = staged.version(self, key) else {
                        return Err(TxError::NotFound {
                            kind: key.0,
                            id: key.1.to_string(),
                        });
                    };
                    if current != object.meta().version {
                        return Err(TxError::Conflict {
                            kind: key.0,
                            id: key.1.to_string(),
                            expected: object.meta().version,
                            actual: current,
                        });
                    }
                    if let Object::Service(service) = object {
                        let name = service.spec.name.as_str();
                        if staged
                            .owner(self, name)
                            .is_some_and(|owner| owner != service.meta.id)
                        {
                            return Err(TxError::NameInUse {
                                name: name.to_string(),
                            });
                        }
                        staged.set_owner(name, &service.meta.id);
                    }
                    staged.set_version(key, Some(u64::MAX));
                }
                Op::Delete { kind, id, version } => {
                    let key = (*kind, id.as_str());
                    match (staged.version(self, key), version) {
                        // Deleting what is already gone is not an error:
                        // deletes are idempotent.
                        (None, _) => {}
                        (Some(actual), Some(expected)) if actual != *expected => {
                            return Err(TxError::Conflict {
                                kind: *kind,
                                id: id.clone(),
                                expected: *expected,
                                actual,
                            });
                        }
                        _ => {}
                    }
                    staged.set_version(key, None);
                }
                // Patches cannot fail: they are skipped when they do not apply.
                Op::Patch(_) => {}
            }
        }
        Ok(())
    }

    fn all_objects(&self) -> Vec<Object> {
        let mut out = Vec::with_capacity(
            self.nodes.len() + self.services.len() + self.tasks.len() + self.clusters.len(),
        );
        out.extend(self.clusters.iter().cloned().map(Object::Cluster));
        out.extend(self.nodes.iter().cloned().map(Object::Node));
        out.extend(self.services.iter().cloned().map(Object::Service));
        out.extend(self.tasks.iter().cloned().map(Object::Task));
        out
    }
}

/// What the earlier ops of one transaction did, as [`Tables::check`] sees
/// it for the ops after them: an object's version (`None` once deleted;
/// created ones carry `u64::MAX`, which no later op can name, so an object
/// created in a transaction is not updated by the same one) and a service
/// name's owner. A transaction of one op (every single write) has no later
/// op to look: it records nothing and allocates nothing.
struct Staged<'t> {
    recording: bool,
    versions: FxHashMap<(Kind, &'t str), Option<u64>>,
    owners: FxHashMap<&'t str, &'t str>,
}

impl<'t> Staged<'t> {
    fn new(ops: usize) -> Self {
        Staged {
            recording: ops > 1,
            versions: FxHashMap::default(),
            owners: FxHashMap::default(),
        }
    }

    /// The version of the object at `key`, as the transaction has left it
    /// so far.
    fn version(&self, tables: &Tables, key: (Kind, &str)) -> Option<u64> {
        match self.versions.get(&key) {
            Some(version) => *version,
            None => tables.object_version(key.0, key.1),
        }
    }

    /// The id of the service named `name`, as the transaction has left it
    /// so far.
    fn owner<'a>(&'a self, tables: &'a Tables, name: &str) -> Option<&'a str> {
        match self.owners.get(name) {
            Some(owner) => Some(owner),
            None => tables.service_by_name.get(name).map(String::as_str),
        }
    }

    fn set_version(&mut self, key: (Kind, &'t str), version: Option<u64>) {
        if self.recording {
            self.versions.insert(key, version);
        }
    }

    fn set_owner(&mut self, name: &'t str, id: &'t str) {
        if self.recording {
            self.owners.insert(name, id);
        }
    }
}

/// Tasks of one node, by id.
type TaskIndex = BTreeMap<String, Arc<Task>>;

fn remove_index<K: Ord>(
    index: &mut FxHashMap<String, BTreeMap<K, Arc<Task>>>,
    key: &str,
    entry: &K,
) {
    if let Some(set) = index.get_mut(key) {
        set.remove(entry);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

// ------------------------------------------------------------------ store

/// The serialized form of the whole store, as raft snapshots carry it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StoreSnapshot {
    pub version: u64,
    pub raft: RaftApplied,
    pub objects: Vec<Object>,
}

/// Where a watcher starts.
pub enum WatchStart {
    /// The changes since the requested version, then the receiver.
    Resume(Vec<Arc<Changes>>),
    /// The requested version is too old (or 0): a full copy at `version`.
    Full { version: u64, objects: Vec<Object> },
}

pub struct Store {
    tables: RwLock<Tables>,
    history: Mutex<History>,
    changes: broadcast::Sender<Arc<Changes>>,
    /// Callers of [`Store::wait_for`], by the version they wait for: woken
    /// only when it is reached, not on every change as a subscriber would
    /// be (64 forwarded writes waiting used to mean 64 wake-ups per entry).
    waiters: Mutex<BTreeMap<u64, Vec<tokio::sync::oneshot::Sender<()>>>>,
}

#[derive(Default)]
struct History {
    entries: VecDeque<Arc<Changes>>,
    events: usize,
    /// Changes after this version are all in `entries`.
    complete_after: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(BROADCAST_CAPACITY);
        Store {
            tables: RwLock::new(Tables::default()),
            history: Mutex::new(History::default()),
            changes,
            waiters: Mutex::new(BTreeMap::new()),
        }
    }

    /// A consistent read of the whole store. Keep the guard short: apply
    /// waits for it.
    ///
    /// Recursive: a reader that (through some helper) reads again while a
    /// writer waits must not deadlock against that writer, which a plain
    /// writer-preferring read would do.
    pub fn read(&self) -> RwLockReadGuard<'_, Tables> {
        self.tables.read_recursive()
    }

    pub fn version(&self) -> u64 {
        self.tables.read_recursive().version
    }

    /// Returns once the store has applied `version`.
    pub async fn wait_for(&self, version: u64) {
        let reached = {
            // Registered under the waiters lock, which `reached` takes only
            // after the version is visible: no wake-up is lost.
            let mut waiters = self.waiters.lock();
            if self.version() >= version {
                return;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            waiters.entry(version).or_default().push(tx);
            rx
        };
        let _ = reached.await;
    }

    /// Wakes the callers waiting for `version` or an earlier one. Called
    /// with the tables lock released.
    fn reached(&self, version: u64) {
        let mut waiters = self.waiters.lock();
        let later = match version.checked_add(1) {
            Some(next) => waiters.split_off(&next),
            None => BTreeMap::new(),
        };
        let due = std::mem::replace(&mut *waiters, later);
        drop(waiters);
        for tx in due.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Live changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Changes>> {
        self.changes.subscribe()
    }

    /// Applies the transactions of a committed raft entry, in order, at
    /// its index: each one all-or-nothing on its own, all of them at the
    /// same version and seen by readers together. Returns one result per
    /// transaction.
    pub fn apply(&self, log_id: LogId, txs: &[Transaction]) -> Vec<TxResult> {
        let version = log_id.index;
        let mut tables = self.tables.write();
        let mut events = Vec::new();
        let outcomes = txs
            .iter()
            .map(|tx| tables.apply(version, tx, &mut events).map(|()| version))
            .collect();
        tables.version = version;
        tables.raft.last_applied = Some(log_id);
        self.publish(Changes {
            version,
            // Proposed within milliseconds of each other: the latest stamp
            // stands for all.
            time: txs.iter().map(|tx| tx.time).max().unwrap_or_default(),
            events,
            reset: false,
        });
        drop(tables);
        self.reached(version);
        outcomes
    }

    /// Records a raft entry that changes no object (blank or membership).
    pub fn apply_raft(&self, log_id: LogId, membership: Option<StoredMembership>) {
        {
            let mut tables = self.tables.write();
            tables.version = log_id.index;
            tables.raft.last_applied = Some(log_id);
            if let Some(membership) = membership {
                tables.raft.membership = membership;
            }
        }
        self.reached(log_id.index);
    }

    pub fn raft_applied(&self) -> RaftApplied {
        self.tables.read_recursive().raft.clone()
    }

    fn publish(&self, changes: Changes) {
        let changes = Arc::new(changes);
        let mut history = self.history.lock();
        history.events += changes.events.len().max(1);
        history.entries.push_back(changes.clone());
        while history.events > HISTORY_EVENTS {
            let Some(oldest) = history.entries.pop_front() else {
                break;
            };
            history.events -= oldest.events.len().max(1);
            history.complete_after = oldest.version;
        }
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(changes);
    }

    /// Where a watch resuming after `since` starts, and a receiver for
    /// what follows, with no gap and no overlap between the two.
    pub fn watch_from(&self, since: u64) -> (WatchStart, broadcast::Receiver<Arc<Changes>>) {
        // Apply publishes while holding the write lock, so under the read
        // lock the history and the receiver meet exactly.
        let tables = self.tables.read_recursive();
        let receiver = self.changes.subscribe();
        let history = self.history.lock();
        if since > 0 && since >= history.complete_after && since <= tables.version {
            let changes = history
                .entries
                .iter()
                .filter(|c| c.version > since)
                .cloned()
                .collect();
            return (WatchStart::Resume(changes), receiver);
        }
        drop(history);
        (
            WatchStart::Full {
                version: tables.version,
                objects: tables.all_objects(),
            },
            receiver,
        )
    }

    /// The whole store, sharing its objects: the lock is held only while
    /// collecting references.
    pub fn snapshot(&self) -> StoreSnapshot {
        let tables = self.tables.read_recursive();
        StoreSnapshot {
            version: tables.version,
            raft: tables.raft.clone(),
            objects: tables.all_objects(),
        }
    }

    /// The store serialized as a [`StoreSnapshot`], with the raft facts it
    /// was taken at. The encoding of 100,000 objects happens after the lock
    /// (which applies wait for) is released.
    pub fn encode_snapshot(&self) -> Result<(Vec<u8>, RaftApplied), postcard::Error> {
        let snapshot = self.snapshot();
        let data = postcard::to_allocvec(&snapshot)?;
        Ok((data, snapshot.raft))
    }

    /// Replaces the whole store with a snapshot's content. Watchers get a
    /// reset.
    pub fn restore(&self, snapshot: StoreSnapshot) {
        let mut tables = Tables {
            version: snapshot.version,
            raft: snapshot.raft,
            ..Tables::default()
        };
        for object in snapshot.objects {
            tables.insert(object);
        }
        let version = tables.version;
        let mut guard = self.tables.write();
        *guard = tables;
        {
            let mut history = self.history.lock();
            history.entries.clear();
            history.events = 0;
            history.complete_after = version;
        }
        let _ = self.changes.send(Arc::new(Changes {
            version,
            time: crate::ids::now_ms(),
            events: Vec::new(),
            reset: true,
        }));
        drop(guard);
        self.reached(version);
    }
}

#[cfg(test)]
mod tests;

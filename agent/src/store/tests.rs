use super::*;

fn log_id(index: u64) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
}

impl Store {
    /// Applies `tx` alone in an entry at `log_id`.
    fn apply_one(&self, log_id: LogId, tx: &Transaction) -> TxResult {
        let mut results = self.apply(log_id, std::slice::from_ref(tx));
        assert_eq!(results.len(), 1);
        results.remove(0)
    }
}

fn service(id: &str, name: &str) -> Service {
    Service {
        meta: Meta::new(id.into(), 1),
        spec: ServiceSpec {
            name: name.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn task(id: &str, service_id: &str, node_id: &str) -> Task {
    Task {
        meta: Meta::new(id.into(), 1),
        service_id: service_id.into(),
        node_id: node_id.into(),
        slot: 1,
        ..Default::default()
    }
}

#[test]
fn applied_objects_carry_the_raft_index_as_version() {
    let store = Store::new();
    let tx = Transaction::new(5).create(service("s1", "web"));
    assert_eq!(store.apply_one(log_id(7), &tx), Ok(7));
    let tables = store.read();
    assert_eq!(tables.services.get("s1").unwrap().meta.version, 7);
    assert_eq!(tables.version, 7);
}

#[test]
fn an_object_stamped_with_its_entrys_index_is_stored_without_a_copy() {
    let store = Store::new();
    let mut tx = Transaction::new(1).create(service("s1", "web"));
    tx.stamp_created(7);
    store.apply_one(log_id(7), &tx).unwrap();
    let Some(Op::Create(Object::Service(proposed))) = tx.ops.first() else {
        panic!("the transaction creates a service");
    };
    let stored = store.read().services.get("s1").cloned().unwrap();
    assert_eq!(stored.meta.version, 7);
    assert!(Arc::ptr_eq(proposed, &stored));
    // Unstamped (a log from before stamping), it is stamped on apply.
    let unstamped = Transaction::new(1).create(service("s2", "api"));
    store.apply_one(log_id(8), &unstamped).unwrap();
    assert_eq!(store.read().services.get("s2").unwrap().meta.version, 8);
}

#[test]
fn an_update_naming_an_old_version_is_refused_and_changes_nothing() {
    let store = Store::new();
    store
        .apply_one(log_id(1), &Transaction::new(1).create(service("s1", "web")))
        .unwrap();
    let read = (**store.read().services.get("s1").unwrap()).clone();
    let mut first = read.clone();
    first.spec.replicas = 3;
    store
        .apply_one(log_id(2), &Transaction::new(2).update(first))
        .unwrap();

    let mut stale = read;
    stale.spec.replicas = 9;
    let err = store
        .apply_one(log_id(3), &Transaction::new(3).update(stale))
        .unwrap_err();
    assert!(matches!(
        err,
        TxError::Conflict {
            expected: 1,
            actual: 2,
            ..
        }
    ));
    assert_eq!(store.read().services.get("s1").unwrap().spec.replicas, 3);
}

#[test]
fn a_transaction_is_all_or_nothing() {
    let store = Store::new();
    store
        .apply_one(log_id(1), &Transaction::new(1).create(service("s1", "web")))
        .unwrap();
    // The second op fails (name taken), so the first must not land either.
    let tx = Transaction::new(2)
        .create(task("t1", "s1", "n1"))
        .create(service("s2", "web"));
    assert_eq!(
        store.apply_one(log_id(2), &tx),
        Err(TxError::NameInUse { name: "web".into() })
    );
    assert!(store.read().tasks.get("t1").is_none());
}

#[test]
fn later_ops_of_a_transaction_see_what_earlier_ones_did() {
    let store = Store::new();
    let twice_the_name = Transaction::new(1)
        .create(service("s1", "web"))
        .create(service("s2", "web"));
    assert_eq!(
        store.apply_one(log_id(1), &twice_the_name),
        Err(TxError::NameInUse { name: "web".into() })
    );
    let twice_the_id = Transaction::new(1)
        .create(service("s1", "web"))
        .create(service("s1", "api"));
    assert!(matches!(
        store.apply_one(log_id(1), &twice_the_id),
        Err(TxError::Exists { .. })
    ));
    assert!(store.read().services.get("s1").is_none());
}

#[test]
fn indexes_follow_tasks_across_updates_and_deletes() {
    let store = Store::new();
    let tx = Transaction::new(1)
        .create(service("s1", "web"))
        .create(task("t1", "s1", "n1"))
        .create(task("t2", "s1", "n2"));
    store.apply_one(log_id(1), &tx).unwrap();
    let mut moved = (**store.read().tasks.get("t1").unwrap()).clone();
    moved.node_id = "n2".into();
    store
        .apply_one(log_id(2), &Transaction::new(2).update(moved))
        .unwrap();
    {
        let tables = store.read();
        assert_eq!(tables.tasks_on_node("n1").count(), 0);
        assert_eq!(tables.tasks_on_node("n2").count(), 2);
        assert_eq!(tables.tasks_of_service("s1").count(), 2);
    }
    let t2 = (**store.read().tasks.get("t2").unwrap()).clone();
    store
        .apply_one(log_id(3), &Transaction::new(3).delete(&t2))
        .unwrap();
    assert_eq!(store.read().tasks_on_node("n2").count(), 1);
}

#[test]
fn a_watch_resumes_from_a_version_without_gaps() {
    let store = Store::new();
    for i in 1..=5u64 {
        store
            .apply_one(
                log_id(i),
                &Transaction::new(i as i64).create(service(&format!("s{i}"), &format!("svc{i}"))),
            )
            .unwrap();
    }
    let (start, mut rx) = store.watch_from(3);
    let WatchStart::Resume(changes) = start else {
        panic!("expected a resume");
    };
    assert_eq!(
        changes.iter().map(|c| c.version).collect::<Vec<_>>(),
        vec![4, 5]
    );
    store
        .apply_one(
            log_id(6),
            &Transaction::new(6).create(service("s6", "svc6")),
        )
        .unwrap();
    assert_eq!(rx.try_recv().unwrap().version, 6);
}

#[test]
fn a_watch_from_zero_gets_a_full_copy() {
    let store = Store::new();
    store
        .apply_one(log_id(1), &Transaction::new(1).create(service("s1", "web")))
        .unwrap();
    let (start, _rx) = store.watch_from(0);
    let WatchStart::Full { version, objects } = start else {
        panic!("expected a full copy");
    };
    assert_eq!(version, 1);
    assert_eq!(objects.len(), 1);
}

#[test]
fn a_snapshot_restores_the_same_store() {
    let store = Store::new();
    let tx = Transaction::new(1)
        .create(service("s1", "web"))
        .create(task("t1", "s1", "n1"));
    store.apply_one(log_id(1), &tx).unwrap();
    let bytes = postcard::to_stdvec(&store.snapshot()).unwrap();
    let (shared, applied) = store.encode_snapshot().unwrap();
    assert_eq!(
        shared, bytes,
        "both encodings of a snapshot are the same bytes"
    );
    assert_eq!(applied.last_applied, Some(log_id(1)));

    let other = Store::new();
    let mut rx = other.subscribe();
    other.restore(postcard::from_bytes(&bytes).unwrap());
    assert!(rx.try_recv().unwrap().reset);
    let tables = other.read();
    assert_eq!(tables.version, 1);
    assert_eq!(tables.service_by_name("web").unwrap().meta.id, "s1");
    assert_eq!(tables.tasks_on_node("n1").count(), 1);
}

#[test]
fn lookups_accept_ids_names_and_unique_prefixes() {
    let store = Store::new();
    let tx = Transaction::new(1)
        .create(service("abc111", "web"))
        .create(service("abc222", "db"));
    store.apply_one(log_id(1), &tx).unwrap();
    let tables = store.read();
    assert_eq!(tables.find_service("web").unwrap().meta.id, "abc111");
    assert_eq!(tables.find_service("abc2").unwrap().meta.id, "abc222");
    assert!(matches!(
        tables.find_service("abc"),
        Err(query::LookupError::Ambiguous { .. })
    ));
    assert!(matches!(
        tables.find_service("nope"),
        Err(query::LookupError::NotFound { .. })
    ));
}

#[test]
fn status_patches_only_move_forward_and_never_conflict() {
    let store = Store::new();
    let mut t = task("t1", "s1", "n1");
    t.status.state = TaskState::Assigned;
    store
        .apply_one(log_id(1), &Transaction::new(1).create(t))
        .unwrap();
    let running = TaskStatus {
        state: TaskState::Running,
        ..Default::default()
    };
    let starting = TaskStatus {
        state: TaskState::Starting,
        ..Default::default()
    };
    let tx = Transaction::new(2)
        .patch(Patch::TaskStatus {
            id: "t1".into(),
            status: running,
        })
        .patch(Patch::TaskDesiredState {
            id: "t1".into(),
            state: TaskState::Shutdown,
        })
        // A late report of an earlier state is stale and ignored.
        .patch(Patch::TaskStatus {
            id: "t1".into(),
            status: starting,
        })
        // Patching what does not exist is skipped, not an error.
        .patch(Patch::TaskDesiredState {
            id: "gone".into(),
            state: TaskState::Remove,
        });
    assert_eq!(store.apply_one(log_id(2), &tx), Ok(2));
    let tables = store.read();
    let t1 = tables.tasks.get("t1").unwrap();
    assert_eq!(t1.status.state, TaskState::Running);
    assert_eq!(t1.desired_state, TaskState::Shutdown);
    assert_eq!(t1.meta.version, 2);
    // Patched in place: the indexes hold the new task, not the old one.
    for indexed in tables
        .tasks_on_node("n1")
        .chain(tables.tasks_of_service("s1"))
    {
        assert!(Arc::ptr_eq(indexed, t1), "an index kept {indexed:?}");
    }
}

#[test]
fn the_scheduler_cannot_assign_a_task_that_is_no_longer_pending() {
    let store = Store::new();
    let mut t = task("t1", "s1", "");
    t.status.state = TaskState::Pending;
    t.desired_state = TaskState::Running;
    store
        .apply_one(log_id(1), &Transaction::new(1).create(t))
        .unwrap();
    let shut = Transaction::new(2).patch(Patch::TaskDesiredState {
        id: "t1".into(),
        state: TaskState::Shutdown,
    });
    store.apply_one(log_id(2), &shut).unwrap();
    let assign = Transaction::new(3).patch(Patch::TaskAssign {
        id: "t1".into(),
        node_id: "n1".into(),
        status: TaskStatus {
            state: TaskState::Assigned,
            ..Default::default()
        },
    });
    store.apply_one(log_id(3), &assign).unwrap();
    let tables = store.read();
    assert_eq!(tables.tasks.get("t1").unwrap().node_id, "");
    assert_eq!(tables.tasks_on_node("n1").count(), 0);
}

#[tokio::test]
async fn waiting_for_a_version_returns_once_it_is_applied() {
    let store = Arc::new(Store::new());
    store
        .apply_one(log_id(1), &Transaction::new(1).create(service("s1", "web")))
        .unwrap();
    // Reached already: no wait.
    store.wait_for(1).await;
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { store.wait_for(3).await }
    });
    store.apply_raft(log_id(2), None);
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "version 3 is not applied yet");
    store
        .apply_one(log_id(3), &Transaction::new(3).create(service("s2", "db")))
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the waiter wakes when version 3 is applied")
        .unwrap();
}

#[test]
fn transactions_of_one_entry_apply_in_order_each_on_its_own() {
    let store = Store::new();
    store
        .apply_one(log_id(1), &Transaction::new(1).create(service("s1", "web")))
        .unwrap();
    let read = store.read().services.get("s1").unwrap().as_ref().clone();
    let mut renamed = read.clone();
    renamed.spec.name = "api".into();
    let mut raced = read;
    raced.spec.name = "db".into();
    let mut watch = store.subscribe();
    let results = store.apply(
        log_id(2),
        &[
            Transaction::new(2).update(renamed),
            // Read at the same version as the first: the first changed it.
            Transaction::new(3).update(raced),
            Transaction::new(4).create(service("s2", "db")),
        ],
    );
    assert_eq!(results[0], Ok(2));
    assert!(matches!(results[1], Err(TxError::Conflict { .. })));
    assert_eq!(results[2], Ok(2));
    let tables = store.read();
    assert_eq!(tables.services.get("s1").unwrap().spec.name, "api");
    assert_eq!(tables.services.get("s2").unwrap().meta.version, 2);
    assert_eq!(tables.version, 2);
    drop(tables);
    // One entry, one change set: a watch resuming at 2 misses none of it.
    let changes = watch.try_recv().unwrap();
    assert_eq!((changes.version, changes.time), (2, 4));
    assert_eq!(changes.events.len(), 2);
    assert!(watch.try_recv().is_err());
}

#[test]
fn a_slots_tasks_are_found_without_walking_the_service() {
    let store = Store::new();
    let in_slot = |id: &str, slot: u64, node: &str| Task {
        slot,
        ..task(id, "s1", node)
    };
    let mut tx = Transaction::new(1).create(service("s1", "web"));
    for (id, slot, node) in [
        ("a", 1, "n1"),
        ("b", 2, "n1"),
        ("c", 2, "n2"),
        ("d", 3, "n2"),
        ("g1", 0, "n1"),
        ("g2", 0, "n2"),
    ] {
        tx = tx.create(in_slot(id, slot, node));
    }
    tx = tx.create(Task {
        slot: 2,
        ..task("other", "s2", "n1")
    });
    store.apply_one(log_id(1), &tx).unwrap();
    let ids = |slot: u64, node: &str| {
        let tables = store.read();
        let mut ids: Vec<String> = tables
            .tasks_in_slot("s1", slot, node)
            .map(|t| t.meta.id.clone())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(2, ""), ["b", "c"]);
    assert_eq!(ids(1, ""), ["a"]);
    assert_eq!(ids(4, ""), Vec::<String>::new());
    assert_eq!(ids(0, "n2"), ["g2"], "global tasks are found by node");
    assert_eq!(ids(u64::MAX, ""), Vec::<String>::new());

    let moved = Task {
        node_id: "n3".into(),
        ..store.read().tasks.get("c").unwrap().as_ref().clone()
    };
    store
        .apply_one(log_id(2), &Transaction::new(2).update(moved))
        .unwrap();
    let b = store.read().tasks.get("b").unwrap().as_ref().clone();
    store
        .apply_one(log_id(3), &Transaction::new(3).delete(&b))
        .unwrap();
    assert_eq!(ids(2, ""), ["c"], "updates and removals keep the index");
    assert_eq!(
        store
            .read()
            .tasks_of_service("s1")
            .map(|t| t.slot)
            .collect::<Vec<_>>(),
        [0, 0, 1, 2, 3],
        "a service's tasks come by slot"
    );
}

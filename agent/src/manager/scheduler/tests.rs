use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn node(id: &str, labels: &[(&str, &str)]) -> Arc<Node> {
    let mut node = Node {
        meta: Meta::new(id.into(), 0),
        ..Default::default()
    };
    node.description.hostname = format!("host-{id}");
    node.status.state = NodeState::Ready;
    for (k, v) in labels {
        node.spec.labels.insert((*k).into(), (*v).into());
    }
    Arc::new(node)
}

fn view(nodes: &[Arc<Node>]) -> ClusterView {
    ClusterView {
        nodes: nodes
            .iter()
            .map(|n| NodeInfo {
                node: n.clone(),
                reserved: Resources::default(),
                tasks: 0,
                tasks_by_service: HashMap::new(),
            })
            .collect(),
    }
}

fn task(id: &str, service: &str, placement: Placement) -> Arc<Task> {
    let mut task = Task {
        meta: Meta::new(id.into(), 0),
        service_id: service.into(),
        service_name: service.into(),
        slot: 1,
        desired_state: TaskState::Running,
        ..Default::default()
    };
    task.status.state = TaskState::Pending;
    task.spec.placement = placement;
    Arc::new(task)
}

fn per_node(plan: &Plan) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, node) in &plan.assignments {
        *counts.entry(node.clone()).or_default() += 1;
    }
    counts
}

#[test]
fn constraints_parse_and_explain_mistakes() {
    let c = parse_constraint("node.labels.zone == east").unwrap();
    assert_eq!(c.key, ConstraintKey::NodeLabel("zone".into()));
    assert!(c.equal);
    assert_eq!(c.value, "east");
    assert!(!parse_constraint("node.role!=manager").unwrap().equal);
    let err = parse_constraint("zone=east").unwrap_err().to_string();
    assert!(err.contains("KEY==VALUE"), "{err}");
    assert!(parse_constraint("node.colour==red").is_err());
}

#[test]
fn tasks_spread_evenly_and_respect_constraints() {
    let nodes = [
        node("a", &[("zone", "east")]),
        node("b", &[("zone", "east")]),
        node("c", &[("zone", "west")]),
    ];
    let mut v = view(&nodes);
    let pending: Vec<_> = (0..9)
        .map(|i| task(&format!("t{i}"), "s", Placement::default()))
        .collect();
    let placed = plan(&mut v, &pending);
    assert!(placed.unplaceable.is_empty());
    assert!(
        per_node(&placed).values().all(|&n| n == 3),
        "{:?}",
        per_node(&placed)
    );

    let east = Placement {
        constraints: vec!["node.labels.zone==east".into()],
        ..Default::default()
    };
    let mut v = view(&nodes);
    let pending: Vec<_> = (0..4)
        .map(|i| task(&format!("e{i}"), "e", east.clone()))
        .collect();
    let placed = plan(&mut v, &pending);
    let counts = per_node(&placed);
    assert_eq!(counts.get("c"), None);
    assert_eq!(counts.get("a"), Some(&2));
    assert_eq!(counts.get("b"), Some(&2));
}

#[test]
fn unplaceable_tasks_say_why() {
    let mut drained = (*node("a", &[])).clone();
    drained.spec.availability = Availability::Drain;
    let nodes = [Arc::new(drained), node("b", &[("zone", "west")])];
    let mut v = view(&nodes);
    let east = Placement {
        constraints: vec!["node.labels.zone==east".into()],
        ..Default::default()
    };
    let placed = plan(&mut v, &[task("t", "s", east)]);
    assert!(placed.assignments.is_empty());
    let why = &placed.unplaceable[0].1;
    assert!(
        why.contains("1 node not available") && why.contains("1 node unmet constraint"),
        "{why}"
    );
}

#[test]
fn max_replicas_per_node_caps_placement() {
    let nodes = [node("a", &[]), node("b", &[])];
    let mut v = view(&nodes);
    let capped = Placement {
        max_replicas_per_node: 1,
        ..Default::default()
    };
    let pending: Vec<_> = (0..3)
        .map(|i| task(&format!("t{i}"), "s", capped.clone()))
        .collect();
    let placed = plan(&mut v, &pending);
    assert_eq!(placed.assignments.len(), 2);
    assert!(
        placed.unplaceable[0].1.contains("max replicas"),
        "{:?}",
        placed.unplaceable
    );
}

#[test]
fn preferences_spread_over_label_values_first() {
    // Two nodes in east, one in west: a spread over zones puts half the
    // tasks in west even though it is one node.
    let nodes = [
        node("a", &[("zone", "east")]),
        node("b", &[("zone", "east")]),
        node("c", &[("zone", "west")]),
    ];
    let mut v = view(&nodes);
    let spread = Placement {
        preferences: vec!["node.labels.zone".into()],
        ..Default::default()
    };
    let pending: Vec<_> = (0..4)
        .map(|i| task(&format!("t{i}"), "s", spread.clone()))
        .collect();
    let counts = per_node(&plan(&mut v, &pending));
    assert_eq!(counts.get("c"), Some(&2), "{counts:?}");
}

#[test]
fn a_hundred_thousand_tasks_place_in_one_pass() {
    let nodes: Vec<_> = (0..1000).map(|i| node(&format!("n{i:04}"), &[])).collect();
    let mut v = view(&nodes);
    let pending: Vec<_> = (0..100_000)
        .map(|i| {
            task(
                &format!("t{i}"),
                &format!("s{}", i % 10),
                Placement::default(),
            )
        })
        .collect();
    let placed = plan(&mut v, &pending);
    assert_eq!(placed.assignments.len(), 100_000);
    assert!(per_node(&placed).values().all(|&n| n == 100));
}

#[test]
fn a_pass_proposes_each_nodes_assignments_together() {
    let nodes: Vec<_> = (0..5).map(|i| node(&format!("n{i}"), &[])).collect();
    let mut v = view(&nodes);
    let pending: Vec<_> = (0..20)
        .map(|i| task(&format!("t{i:02}"), "s", Placement::default()))
        .collect();
    let placed = plan(&mut v, &pending);
    let ops = assignment_ops(placed.assignments.clone(), 7);
    let proposed: Vec<(String, String)> = ops
        .iter()
        .map(|op| match op {
            Op::Patch(Patch::TaskAssign {
                id,
                node_id,
                status,
            }) => {
                assert_eq!(status.state, TaskState::Assigned);
                assert_eq!(status.timestamp, 7);
                (id.clone(), node_id.clone())
            }
            other => panic!("not an assignment: {other:?}"),
        })
        .collect();
    // Every assignment once, as planned.
    let mut planned = placed.assignments.clone();
    planned.sort();
    let mut sorted = proposed.clone();
    sorted.sort();
    assert_eq!(sorted, planned);
    // Spread dealt the tasks out in turn; proposed, each node's four are
    // neighbours, so they share a transaction and a session message.
    let runs = proposed.windows(2).filter(|w| w[0].1 != w[1].1).count() + 1;
    assert_eq!(runs, 5, "{proposed:?}");
}

proptest! {
    /// Whatever the cluster, the scheduler never places a task on a node
    /// that cannot take it, and places every task some node can take,
    /// keeping the service balanced within one task.
    #[test]
    fn placements_are_valid_and_balanced(
        zones in proptest::collection::vec(0u8..3, 1..12),
        drained in proptest::collection::vec(any::<bool>(), 12),
        tasks in 1usize..60,
        want_zone in proptest::option::of(0u8..3),
    ) {
        let nodes: Vec<Arc<Node>> = zones.iter().enumerate().map(|(i, z)| {
            let mut n = (*node(&format!("n{i}"), &[("zone", &z.to_string())])).clone();
            if drained[i] {
                n.spec.availability = Availability::Drain;
            }
            Arc::new(n)
        }).collect();
        let placement = Placement {
            constraints: want_zone.map(|z| format!("node.labels.zone=={z}")).into_iter().collect(),
            ..Default::default()
        };
        let eligible: Vec<&Arc<Node>> = nodes.iter().filter(|n| {
            n.spec.availability == Availability::Active
                && want_zone.is_none_or(|z| n.spec.labels.get("zone") == Some(&z.to_string()))
        }).collect();
        let mut v = view(&nodes);
        let pending: Vec<_> = (0..tasks).map(|i| task(&format!("t{i}"), "s", placement.clone())).collect();
        let placed = plan(&mut v, &pending);
        if eligible.is_empty() {
            prop_assert!(placed.assignments.is_empty());
            prop_assert_eq!(placed.unplaceable.len(), tasks);
        } else {
            prop_assert_eq!(placed.assignments.len(), tasks);
            let counts = per_node(&placed);
            for node_id in counts.keys() {
                prop_assert!(eligible.iter().any(|n| &n.meta.id == node_id));
            }
            let max = eligible.iter().map(|n| counts.get(&n.meta.id).copied().unwrap_or(0)).max().unwrap_or(0);
            let min = eligible.iter().map(|n| counts.get(&n.meta.id).copied().unwrap_or(0)).min().unwrap_or(0);
            prop_assert!(max - min <= 1, "unbalanced: {counts:?}");
        }
    }
}

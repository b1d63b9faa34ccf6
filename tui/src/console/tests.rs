//! The console as an operator sees it: whole screens at 80x24 on a
//! `TestBackend`, from a fixed model and a fixed clock.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use shoal_proto::v1 as pb;

use super::app::{Action, App, FormField, Mode, Rollout, View};
use super::state::{Level, Model};
use super::theme::Theme;
use super::view;

const NOW: i64 = 1_800_000_000_000;

fn meta(id: &str, version: u64, created: i64) -> Option<pb::Meta> {
    Some(pb::Meta {
        id: id.into(),
        version,
        created_at_ms: created,
        updated_at_ms: created,
    })
}

fn node(id: &str, host: &str, state: pb::NodeState, manager: Option<bool>) -> pb::Node {
    pb::Node {
        meta: meta(id, 3, NOW - 3_600_000),
        spec: Some(pb::NodeSpec {
            labels: [("zone".to_string(), format!("z{}", host.len() % 3))].into(),
            ..Default::default()
        }),
        description: Some(pb::NodeDescription {
            hostname: host.into(),
            agent_version: "0.1.0".into(),
            ..Default::default()
        }),
        status: Some(pb::NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        manager_status: manager.map(|leader| pb::ManagerStatus {
            leader,
            reachability: pb::Reachability::Reachable as i32,
            ..Default::default()
        }),
        role: if manager.is_some() {
            pb::NodeRole::Manager
        } else {
            pb::NodeRole::Worker
        } as i32,
    }
}

fn task_spec(image: &str) -> Option<pb::TaskSpec> {
    Some(pb::TaskSpec {
        container: Some(pb::ContainerSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn task(
    id: &str,
    slot: u64,
    node: &str,
    state: pb::TaskState,
    desired: pb::TaskState,
    age_s: i64,
    err: &str,
) -> pb::Task {
    pb::Task {
        meta: meta(id, 9, NOW - age_s * 1000),
        service_id: "svc-web".into(),
        service_name: "web".into(),
        slot,
        node_id: node.into(),
        spec: task_spec("nginx:1.27"),
        desired_state: desired as i32,
        status: Some(pb::TaskStatus {
            state: state as i32,
            timestamp_ms: NOW - age_s * 1000,
            err: err.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model() -> Model {
    let mut model = Model::default();
    for n in [
        node(
            "n1aaaaaaaaaaaaaaaaaaaaaaa",
            "manager-1",
            pb::NodeState::Ready,
            Some(true),
        ),
        node(
            "n2bbbbbbbbbbbbbbbbbbbbbbb",
            "manager-2",
            pb::NodeState::Ready,
            Some(false),
        ),
        node(
            "n3ccccccccccccccccccccccc",
            "worker-1",
            pb::NodeState::Down,
            None,
        ),
    ] {
        model
            .nodes
            .insert(n.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(), n);
    }
    model.services.insert(
        "svc-web".into(),
        pb::Service {
            meta: meta("svc-web", 12, NOW - 600_000),
            spec: Some(pb::ServiceSpec {
                name: "web".into(),
                replicas: 2,
                task: task_spec("nginx:1.27"),
                ..Default::default()
            }),
            update_status: Some(pb::UpdateStatus {
                state: pb::UpdateState::Paused as i32,
                message: "update paused due to failure".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    use pb::TaskState::*;
    for t in [
        task(
            "t1",
            1,
            "n1aaaaaaaaaaaaaaaaaaaaaaa",
            Running,
            Running,
            120,
            "",
        ),
        task(
            "t2",
            2,
            "n2bbbbbbbbbbbbbbbbbbbbbbb",
            Running,
            Running,
            60,
            "",
        ),
        task(
            "t0",
            2,
            "n3ccccccccccccccccccccccc",
            Failed,
            Shutdown,
            300,
            "task: non-zero exit (1)",
        ),
    ] {
        model.put_task(t);
    }
    model.info = Some(pb::InfoResponse {
        state: pb::LocalNodeState::Active as i32,
        node_id: "n1aaaaaaaaaaaaaaaaaaaaaaa".into(),
        hostname: "manager-1".into(),
        cluster_id: "clusterxyzclusterxyz12345".into(),
        managers: 2,
        reachable_managers: 2,
        nodes: 3,
        raft_term: 4,
        commit_index: 120,
        applied_index: 120,
        fault_tolerance: 0,
        manager_list: vec![
            pb::ManagerInfo {
                node_id: "n1aaaaaaaaaaaaaaaaaaaaaaa".into(),
                hostname: "manager-1".into(),
                addr: "10.0.0.1:4242".into(),
                leader: true,
                reachability: pb::Reachability::Reachable as i32,
                ..Default::default()
            },
            pb::ManagerInfo {
                node_id: "n2bbbbbbbbbbbbbbbbbbbbbbb".into(),
                hostname: "manager-2".into(),
                addr: "10.0.0.2:4242".into(),
                reachability: pb::Reachability::Reachable as i32,
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    model.apply(pb::WatchMessage {
        version: 13,
        ..Default::default()
    });
    model
}

fn screen(app: &App, model: &Model) -> String {
    screen_of_size(app, model, 80, 24)
}

fn screen_of_size(app: &App, model: &Model, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|frame| view::render(frame, app, model, &Theme::mono(), NOW))
        .unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut text = String::new();
    for y in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .map(|x| buffer[(x, y)].symbol().to_string())
            .collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn type_text(app: &mut App, model: &Model, text: &str) -> Option<Action> {
    let mut last = None;
    for c in text.chars() {
        last = app.on_key(key(KeyCode::Char(c)), model);
    }
    last
}

#[test]
fn the_services_view_shows_replicas_and_a_paused_update() {
    let model = model();
    let app = App::default();
    insta::assert_snapshot!(screen(&app, &model));
}

#[test]
fn the_nodes_view_marks_the_local_node_and_down_nodes() {
    let model = model();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('1')), &model);
    assert_eq!(app.view, View::Nodes);
    insta::assert_snapshot!(screen(&app, &model));
}

#[test]
fn enter_on_a_service_shows_its_tasks_with_history() {
    let model = model();
    let mut app = App::default();
    app.on_key(key(KeyCode::Enter), &model);
    assert_eq!(app.view, View::Tasks);
    insta::assert_snapshot!(screen(&app, &model));
}

#[test]
fn the_cluster_view_shows_quorum_and_managers() {
    let model = model();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('6')), &model);
    insta::assert_snapshot!(screen(&app, &model));
}

#[test]
fn a_locked_manager_shows_how_to_unlock_and_masks_the_key() {
    let mut model = model();
    if let Some(info) = model.info.as_mut() {
        info.state = pb::LocalNodeState::Locked as i32;
    }
    let mut app = App::default();
    insta::assert_snapshot!(screen(&app, &model));
    app.on_key(key(KeyCode::Char('u')), &model);
    for c in "SWMKEY-1-secret".chars() {
        app.on_key(key(KeyCode::Char(c)), &model);
    }
    let text = screen(&app, &model);
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("***************"), "{text}");
}

#[test]
fn help_lists_every_key_of_the_view_from_the_keymap() {
    let model = model();
    for view in View::ALL {
        let mut app = App {
            view,
            ..App::default()
        };
        app.on_key(key(KeyCode::Char('?')), &model);
        let mut entries = app.keymap.help(view);
        entries.extend(app.keymap.view_keys());
        let wide = screen_of_size(&app, &model, 160, 48);
        let narrow = screen(&app, &model);
        for (keys, what) in &entries {
            for (size, screen) in [("160x48", &wide), ("80x24", &narrow)] {
                // Whole: a description cut at the column's edge is a defect.
                let shown = screen.lines().any(|line| {
                    line.contains(&format!("{keys} "))
                        && (line.contains(&format!("{what} "))
                            || line.contains(&format!("{what}│")))
                });
                assert!(shown, "{keys} {what} at {size}:\n{screen}");
            }
        }
    }
}

#[test]
fn a_rebound_key_works_and_the_help_and_footer_show_it() -> Result<(), String> {
    let model = model();
    let overrides = std::collections::BTreeMap::from([(
        "drain".to_string(),
        super::keymap::KeySetting::One("X".into()),
    )]);
    let mut app = App {
        view: View::Nodes,
        keymap: super::keymap::Keymap::with(&overrides)?,
        ..App::default()
    };
    assert_eq!(app.on_key(key(KeyCode::Char('d')), &model), None);
    assert_eq!(app.mode, Mode::Normal);
    app.on_key(key(KeyCode::Char('X')), &model);
    assert!(matches!(
        app.mode,
        Mode::Confirm(Action::Availability { .. })
    ));
    app.on_key(key(KeyCode::Esc), &model);
    assert!(screen(&app, &model).contains("X drain"));
    Ok(())
}

#[test]
fn scaling_asks_for_a_number_and_sends_it() {
    let model = model();
    let mut app = App::default();
    assert_eq!(app.on_key(key(KeyCode::Char('s')), &model), None);
    // The prompt names the service and starts with the current count;
    // the key line says what Enter and Esc do now.
    let prompt = screen(&app, &model);
    assert!(prompt.contains("scale web to replicas: 2"), "{prompt}");
    assert!(prompt.contains("Enter apply  Esc cancel"), "{prompt}");
    app.on_key(key(KeyCode::Backspace), &model);
    type_text(&mut app, &model, "5");
    let action = app.on_key(key(KeyCode::Enter), &model);
    assert_eq!(
        action,
        Some(Action::Scale {
            service: "svc-web".into(),
            replicas: 5
        })
    );
    app.on_key(key(KeyCode::Char('s')), &model);
    app.on_key(key(KeyCode::Backspace), &model);
    type_text(&mut app, &model, "many");
    assert_eq!(app.on_key(key(KeyCode::Enter), &model), None);
    assert!(
        app.status
            .as_ref()
            .is_some_and(|(text, error)| *error && text.contains("not a number"))
    );
}

/// The test model's `web` service spec, to change for one test.
fn web_spec(model: &mut Model) -> Option<&mut pb::ServiceSpec> {
    model
        .services
        .get_mut("svc-web")
        .and_then(|s| s.spec.as_mut())
}

#[test]
fn a_global_service_is_not_offered_a_replica_count() {
    let mut model = model();
    if let Some(spec) = web_spec(&mut model) {
        spec.mode = pb::ServiceMode::Global as i32;
    }
    let mut app = App::default();
    assert_eq!(app.on_key(key(KeyCode::Char('s')), &model), None);
    assert_eq!(app.mode, Mode::Normal, "no prompt opens");
    let text = screen(&app, &model);
    assert!(
        text.contains("web is global (one task per node): only replicated services scale"),
        "{text}"
    );
}

#[test]
fn destructive_actions_wait_for_a_yes() {
    let model = model();
    let mut app = App::default();
    let ctrl_d = KeyEvent::new(KeyCode::Char('d'), KeyModifiers::CONTROL);
    assert_eq!(app.on_key(ctrl_d, &model), None);
    assert!(matches!(app.mode, Mode::Confirm(_)));
    assert!(screen(&app, &model).contains("Remove service web? (y/N)"));
    assert_eq!(app.on_key(key(KeyCode::Char('n')), &model), None);
    app.on_key(ctrl_d, &model);
    assert_eq!(
        app.on_key(key(KeyCode::Char('y')), &model),
        Some(Action::RemoveService {
            service: "svc-web".into()
        })
    );
}

#[test]
fn filters_and_view_commands_narrow_what_is_shown() {
    let model = model();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char(':')), &model);
    type_text(&mut app, &model, "no");
    app.on_key(key(KeyCode::Enter), &model);
    assert_eq!(app.view, View::Nodes);
    app.on_key(key(KeyCode::Char('/')), &model);
    type_text(&mut app, &model, "worker");
    assert_eq!(
        app.rows(&model),
        vec!["n3ccccccccccccccccccccccc".to_string()]
    );
    app.on_key(key(KeyCode::Esc), &model);
    assert_eq!(app.rows(&model).len(), 3);
}

#[test]
fn watch_events_update_the_model_and_log_what_matters() {
    let mut model = Model::default();
    let up = node("n9", "w9", pb::NodeState::Ready, None);
    model.apply(pb::WatchMessage {
        reset: true,
        synced: true,
        version: 5,
        events: vec![pb::WatchEvent {
            action: pb::WatchAction::Create as i32,
            object: Some(pb::watch_event::Object::Node(up.clone())),
            old: None,
        }],
        ..Default::default()
    });
    assert_eq!(model.nodes.len(), 1);
    assert!(model.events.is_empty(), "a full copy is not news");
    let down = node("n9", "w9", pb::NodeState::Down, None);
    model.apply(pb::WatchMessage {
        version: 6,
        events: vec![pb::WatchEvent {
            action: pb::WatchAction::Update as i32,
            object: Some(pb::watch_event::Object::Node(down)),
            old: Some(pb::watch_event::Old::OldNode(up)),
        }],
        time_ms: NOW,
        ..Default::default()
    });
    let event = &model.events[0];
    assert_eq!(event.level, Level::Error);
    assert_eq!(event.text, "node w9 is down");
    model.apply(pb::WatchMessage {
        version: 7,
        reset: true,
        ..Default::default()
    });
    assert!(model.nodes.is_empty(), "a reset discards the old copy");
    assert_eq!(model.version, 7);
}

#[test]
fn a_tiny_terminal_gets_a_message_not_a_panic() {
    let model = model();
    let app = App::default();
    let mut terminal = Terminal::new(TestBackend::new(20, 5)).unwrap();
    terminal
        .draw(|frame| view::render(frame, &app, &model, &Theme::mono(), NOW))
        .unwrap();
}

#[test]
fn the_problems_view_puts_what_is_broken_first() {
    let model = model();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('7')), &model);
    assert_eq!(app.view, View::Problems);
    let text = screen(&app, &model);
    assert!(text.contains("node worker-1 is down"), "{text}");
    assert!(text.contains("web: update paused"), "{text}");
    insta::assert_snapshot!(text);
    // Enter on the paused update jumps to the service's tasks.
    app.on_key(key(KeyCode::Char('j')), &model);
    app.on_key(key(KeyCode::Enter), &model);
    assert_eq!(app.view, View::Tasks);
}

#[test]
fn l_follows_a_services_logs_and_f_pauses_them() {
    let mut model = model();
    let mut app = App::default();
    assert_eq!(
        app.on_key(key(KeyCode::Char('l')), &model),
        Some(Action::FollowLogs {
            service: "svc-web".into(),
            window: super::app::LOG_WINDOWS[0],
        })
    );
    assert_eq!(app.view, View::Logs);
    model.add_logs(
        (1..=30)
            .map(|i| super::state::LogRow {
                timestamp_ns: NOW * 1_000_000 + i,
                source: "web.1@manager-1".into(),
                stderr: i == 30,
                text: format!("request {i} served"),
            })
            .collect(),
    );
    let text = screen(&app, &model);
    assert!(
        text.contains("request 30 served") && !text.contains("request 1 served\n"),
        "{text}"
    );
    insta::assert_snapshot!(text);
    app.on_key(key(KeyCode::Char('f')), &model);
    model.add_logs(vec![super::state::LogRow {
        timestamp_ns: 0,
        source: "web.1@manager-1".into(),
        stderr: false,
        text: "arrived while paused".into(),
    }]);
    assert!(!screen(&app, &model).contains("arrived while paused"));
    app.on_key(key(KeyCode::Char('f')), &model);
    assert!(screen(&app, &model).contains("arrived while paused"));
}

#[test]
fn a_large_terminal_shows_more_of_everything() {
    let model = model();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('1')), &model);
    insta::assert_snapshot!(screen_of_size(&app, &model, 160, 48));
}

fn task_event(action: pb::WatchAction, task: pb::Task) -> pb::WatchEvent {
    pb::WatchEvent {
        action: action as i32,
        object: Some(pb::watch_event::Object::Task(task)),
        old: None,
    }
}

#[test]
fn the_task_index_follows_every_change_the_watch_brings() {
    use pb::TaskState::*;
    let mut model = model();
    let web = model.services.get("svc-web").cloned().unwrap_or_default();
    assert_eq!(model.replicas(&web), (2, 2));
    assert_eq!(model.running_on("n2bbbbbbbbbbbbbbbbbbbbbbb"), 1);
    // web.2 fails on manager-2; its replacement starts on manager-1.
    model.apply(pb::WatchMessage {
        version: 14,
        events: vec![
            task_event(
                pb::WatchAction::Update,
                task(
                    "t2",
                    2,
                    "n2bbbbbbbbbbbbbbbbbbbbbbb",
                    Failed,
                    Shutdown,
                    60,
                    "boom",
                ),
            ),
            task_event(
                pb::WatchAction::Create,
                task(
                    "t3",
                    2,
                    "n1aaaaaaaaaaaaaaaaaaaaaaa",
                    Running,
                    Running,
                    1,
                    "",
                ),
            ),
        ],
        ..Default::default()
    });
    assert_eq!(model.replicas(&web), (2, 2));
    assert_eq!(model.running_on("n2bbbbbbbbbbbbbbbbbbbbbbb"), 0);
    assert_eq!(model.running_on("n1aaaaaaaaaaaaaaaaaaaaaaa"), 2);
    let order: Vec<&str> = model.task_ids_of("svc-web", 0).map(|(id, _)| id).collect();
    assert_eq!(order, ["t1", "t3", "t2", "t0"], "slot order, newest first");
    let failed: Vec<String> = model
        .failed_tasks_of("svc-web")
        .filter_map(|t| t.meta.as_ref().map(|m| m.id.clone()))
        .collect();
    assert_eq!(failed, ["t2", "t0"]);
    model.apply(pb::WatchMessage {
        version: 15,
        events: vec![task_event(
            pb::WatchAction::Remove,
            task(
                "t3",
                2,
                "n1aaaaaaaaaaaaaaaaaaaaaaa",
                Running,
                Running,
                1,
                "",
            ),
        )],
        ..Default::default()
    });
    assert_eq!(model.replicas(&web), (1, 2));
    assert_eq!(model.task_count("svc-web"), 3);
    model.apply(pb::WatchMessage {
        version: 16,
        reset: true,
        ..Default::default()
    });
    assert_eq!(model.task_count("svc-web"), 0);
    assert_eq!(model.running_on("n1aaaaaaaaaaaaaaaaaaaaaaa"), 0);
    assert_eq!(model.failed_tasks_of("svc-web").count(), 0);
}

/// `web` with `slots` slots, each running one task with one failed task
/// before it: twice as many rows as slots.
fn model_with_history(slots: u64) -> Model {
    use pb::TaskState::*;
    let mut model = model();
    for id in ["t0", "t1", "t2"] {
        model.remove_task(id);
    }
    for slot in 1..=slots {
        let node = if slot % 2 == 0 {
            "n2bbbbbbbbbbbbbbbbbbbbbbb"
        } else {
            "n1aaaaaaaaaaaaaaaaaaaaaaa"
        };
        model.put_task(task(
            &format!("run{slot:03}"),
            slot,
            node,
            Running,
            Running,
            10,
            "",
        ));
        model.put_task(task(
            &format!("old{slot:03}"),
            slot,
            "n3ccccccccccccccccccccccc",
            Failed,
            Shutdown,
            100,
            "exit 1",
        ));
    }
    model
}

#[test]
fn a_page_deep_in_the_tasks_still_marks_history_at_its_top() {
    let model = model_with_history(30);
    let mut app = App::default();
    app.on_key(key(KeyCode::Enter), &model);
    assert_eq!(app.row_count(&model), 60);
    // 19 rows fit at 80x24: selecting row 21 puts row 3 (slot 2's failed
    // task) at the top of the page, below its slot's row off screen.
    for _ in 0..21 {
        app.on_key(key(KeyCode::Char('j')), &model);
    }
    let text = screen(&app, &model);
    let first_row = text.lines().nth(3).unwrap_or_default();
    assert!(first_row.starts_with(" \\_ web.2 "), "{text}");
    app.on_key(key(KeyCode::Char('G')), &model);
    let text = screen(&app, &model);
    assert!(text.contains(" \\_ web.30 "), "{text}");
    assert!(
        text.lines()
            .nth(3)
            .is_some_and(|l| l.starts_with(" \\_ web.21 ")),
        "{text}"
    );
    // The service shrinks under the selection: the last row stays shown.
    let text = screen(&app, &model_with_history(5));
    assert!(text.contains(" \\_ web.5 "), "{text}");
}

#[test]
fn a_filter_on_the_tasks_view_matches_service_and_node() {
    let model = model_with_history(30);
    let mut app = App::default();
    app.on_key(key(KeyCode::Enter), &model);
    app.on_key(key(KeyCode::Char('/')), &model);
    type_text(&mut app, &model, "web worker");
    // Only the failed tasks ran on worker-1.
    assert_eq!(app.row_count(&model), 30);
    assert!(app.rows(&model).iter().all(|id| id.starts_with("old")));
    let text = screen(&app, &model);
    assert!(text.contains("filter: web worker"), "{text}");
    assert!(text.contains("web.1 "), "{text}");
    assert!(
        text.lines().skip(3).all(|l| !l.contains("manager-")),
        "{text}"
    );
}

/// The fixed model, with what an inspect pane has to lay out: labels,
/// an update config, a platform.
fn model_to_inspect() -> Model {
    let mut model = model();
    if let Some(node) = model.nodes.get_mut("n1aaaaaaaaaaaaaaaaaaaaaaa") {
        node.spec = Some(pb::NodeSpec {
            desired_role: pb::NodeRole::Manager as i32,
            labels: [("zone".to_string(), "eu-1".to_string())].into(),
            ..Default::default()
        });
        node.status = Some(pb::NodeStatus {
            state: pb::NodeState::Ready as i32,
            addr: "10.0.0.1".into(),
            ..Default::default()
        });
        node.description = Some(pb::NodeDescription {
            hostname: "manager-1".into(),
            platform_os: "linux".into(),
            platform_arch: "x86_64".into(),
            resources: Some(pb::Resources {
                nano_cpus: 4_000_000_000,
                memory_bytes: 8 << 30,
            }),
            agent_version: "0.1.0".into(),
            executor: "docker".into(),
            ..Default::default()
        });
    }
    if let Some(service) = model.services.get_mut("svc-web") {
        service.previous_spec = Some(pb::ServiceSpec {
            name: "web".into(),
            task: task_spec("nginx:1.26"),
            ..Default::default()
        });
        if let Some(status) = service.update_status.as_mut() {
            status.started_at_ms = NOW - 120_000;
        }
    }
    if let Some(spec) = model
        .services
        .get_mut("svc-web")
        .and_then(|s| s.spec.as_mut())
    {
        spec.labels = [
            ("team".to_string(), "web".to_string()),
            ("tier".to_string(), "front".to_string()),
        ]
        .into();
        spec.update = Some(pb::UpdateConfig {
            parallelism: 2,
            delay_ms: 10_000,
            monitor_ms: 5_000,
            order: pb::UpdateOrder::StartFirst as i32,
            ..Default::default()
        });
    }
    model
}

#[test]
fn i_inspects_a_service_and_y_switches_to_the_clis_json() {
    let model = model_to_inspect();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('i')), &model);
    assert!(matches!(app.mode, Mode::Inspect(_)));
    let text = screen(&app, &model);
    assert!(text.contains("Inspect service web — pretty"), "{text}");
    assert!(text.contains(" - team=web"), "{text}");
    insta::assert_snapshot!("inspect_service_pretty_80x24", text);
    insta::assert_snapshot!(
        "inspect_service_pretty_160x48",
        screen_of_size(&app, &model, 160, 48)
    );

    app.on_key(key(KeyCode::Char('y')), &model);
    let text = screen(&app, &model);
    assert!(text.contains("\"id\": \"svc-web\""), "{text}");
    insta::assert_snapshot!("inspect_service_json_80x24", text);
    // The pane's JSON is the CLI's shape, whole.
    let json = super::inspect::lines(
        &model,
        &super::inspect::Object::Service("svc-web".into()),
        true,
        NOW,
    )
    .join("\n");
    let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    assert_eq!(value["spec"]["update"]["order"], "start-first");
    assert_eq!(value["update_status"]["state"], "paused");
    assert_eq!(value["replicas_running"], 2);

    app.on_key(key(KeyCode::Esc), &model);
    assert_eq!(app.mode, Mode::Normal);
    assert_eq!(app.view, View::Services);
}

#[test]
fn enter_inspects_a_node_with_its_labels_and_platform() {
    let model = model_to_inspect();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('1')), &model);
    app.on_key(key(KeyCode::Enter), &model);
    let text = screen(&app, &model);
    assert!(text.contains(" - zone=eu-1"), "{text}");
    insta::assert_snapshot!("inspect_node_pretty_80x24", text);
    insta::assert_snapshot!(
        "inspect_node_json_160x48",
        screen_of_size(
            &{
                let mut app = App::default();
                app.on_key(key(KeyCode::Char('1')), &model);
                app.on_key(key(KeyCode::Char('i')), &model);
                app.on_key(key(KeyCode::Char('y')), &model);
                app
            },
            &model,
            160,
            48
        )
    );
}

#[test]
fn enter_on_a_task_inspects_it_with_its_error() {
    let model = model_to_inspect();
    let mut app = App::default();
    app.on_key(key(KeyCode::Enter), &model);
    app.on_key(key(KeyCode::Char('G')), &model);
    app.on_key(key(KeyCode::Enter), &model);
    let text = screen(&app, &model);
    assert!(text.contains("Inspect task web.2"), "{text}");
    assert!(text.contains("task: non-zero exit (1)"), "{text}");
    insta::assert_snapshot!("inspect_task_pretty_80x24", text);
    app.on_key(key(KeyCode::Char('y')), &model);
    insta::assert_snapshot!(
        "inspect_task_json_160x48",
        screen_of_size(&app, &model, 160, 48)
    );
}

#[test]
fn the_inspect_pane_scrolls_no_further_than_its_last_screenful() {
    let model = model_to_inspect();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('i')), &model);
    let lines = super::inspect::lines(
        &model,
        &super::inspect::Object::Service("svc-web".into()),
        false,
        NOW,
    );
    assert!(lines.len() > 20, "a service needs more than a screen");
    app.on_key(key(KeyCode::Char('G')), &model);
    let at_end = screen(&app, &model);
    assert!(at_end.contains(lines.last().map_or("", |l| l.trim_end())));
    app.on_key(key(KeyCode::Char('j')), &model);
    assert_eq!(screen(&app, &model), at_end, "j at the end stays");
    // One k moves one line back: no dead presses past the end.
    app.on_key(key(KeyCode::Char('k')), &model);
    assert_ne!(screen(&app, &model), at_end);
    app.on_key(key(KeyCode::Char('g')), &model);
    assert!(screen(&app, &model).contains("lines 1-20 of"));
}

#[test]
fn help_over_the_inspect_pane_lists_its_keys_and_returns_to_it() {
    let model = model_to_inspect();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('i')), &model);
    app.on_key(key(KeyCode::Char('G')), &model);
    let pane = app.mode.clone();
    assert!(screen(&app, &model).contains("? keys"));

    app.on_key(key(KeyCode::Char('?')), &model);
    let text = screen(&app, &model);
    assert!(text.contains("Keys in the inspect pane"), "{text}");
    for (keys, what) in app.keymap.inspect_help() {
        assert!(
            text.contains(&format!("{keys} ")),
            "{keys} at 80x24:\n{text}"
        );
        assert!(text.contains(&what), "{what} at 80x24:\n{text}");
    }
    assert!(
        text.contains("JSON (as the CLI prints it) or pretty"),
        "{text}"
    );
    insta::assert_snapshot!("help_over_inspect_80x24", text);

    // Any key closes the help and leaves the pane where it was.
    app.on_key(key(KeyCode::Char('x')), &model);
    assert_eq!(app.mode, pane);
}

#[test]
fn an_inspected_object_that_goes_away_says_so() {
    let mut model = model_to_inspect();
    let mut app = App::default();
    app.on_key(key(KeyCode::Enter), &model);
    app.on_key(key(KeyCode::Char('i')), &model);
    model.remove_task("t1");
    let text = screen(&app, &model);
    assert!(text.contains("This task is gone"), "{text}");
}

fn tab(app: &mut App, model: &Model) {
    app.on_key(key(KeyCode::Tab), model);
}

/// Empties the focused text field and types `text` into it.
fn retype(app: &mut App, model: &Model, text: &str) {
    for _ in 0..40 {
        app.on_key(key(KeyCode::Backspace), model);
    }
    type_text(app, model, text);
}

#[test]
fn u_opens_an_update_form_filled_from_the_service() {
    let model = model_to_inspect();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('U')), &model);
    let Mode::UpdateForm(form) = &app.mode else {
        panic!("U opens the form: {:?}", app.mode);
    };
    assert_eq!(
        (
            form.image.as_str(),
            form.parallelism.as_str(),
            form.delay.as_str()
        ),
        ("nginx:1.27", "2", "10s")
    );
    assert_eq!(form.order, pb::UpdateOrder::StartFirst);
    let text = screen(&app, &model);
    assert!(text.contains("Rolling update of web"), "{text}");
    insta::assert_snapshot!("update_form_80x24", text);
    insta::assert_snapshot!("update_form_160x48", screen_of_size(&app, &model, 160, 48));
}

#[test]
fn a_service_without_an_update_config_starts_from_swarms_defaults() {
    let mut model = model();
    if let Some(spec) = web_spec(&mut model) {
        spec.update = None;
    }
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('U')), &model);
    let Mode::UpdateForm(form) = &app.mode else {
        panic!("U opens the form: {:?}", app.mode);
    };
    assert_eq!(
        (form.parallelism.as_str(), form.delay.as_str()),
        ("1", "0s")
    );
    assert_eq!(form.failure_action, pb::FailureAction::Pause);
    assert_eq!(form.order, pb::UpdateOrder::StopFirst);
}

#[test]
fn the_update_form_sends_the_update_config_it_shows() {
    let model = model_to_inspect();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('U')), &model);
    retype(&mut app, &model, "nginx:1.28");
    tab(&mut app, &model);
    retype(&mut app, &model, "3");
    tab(&mut app, &model);
    retype(&mut app, &model, "1m30s");
    tab(&mut app, &model);
    // pause → continue → rollback
    app.on_key(key(KeyCode::Right), &model);
    app.on_key(key(KeyCode::Char(' ')), &model);
    // Shift-Tab and Up go back; Down goes forward again.
    app.on_key(key(KeyCode::BackTab), &model);
    app.on_key(key(KeyCode::Up), &model);
    app.on_key(key(KeyCode::Down), &model);
    app.on_key(key(KeyCode::Down), &model);
    app.on_key(key(KeyCode::Down), &model);
    // start-first → stop-first (wrapping)
    app.on_key(key(KeyCode::Left), &model);
    let action = app.on_key(key(KeyCode::Enter), &model);
    assert_eq!(
        action,
        Some(Action::Update {
            service: "svc-web".into(),
            rollout: Rollout {
                image: "nginx:1.28".into(),
                parallelism: 3,
                delay: std::time::Duration::from_secs(90),
                failure_action: pb::FailureAction::Rollback,
                order: pb::UpdateOrder::StopFirst,
            },
        })
    );
    assert_eq!(app.mode, Mode::Normal);
    assert_eq!(
        action.map(|a| a.describe(&model)).unwrap_or_default(),
        "update web to nginx:1.28 (3 at a time, 1m 30s apart, stop first, on failure rollback)"
    );
}

#[test]
fn the_update_form_names_the_wrong_field_and_stays_open() {
    let model = model_to_inspect();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('U')), &model);
    tab(&mut app, &model);
    retype(&mut app, &model, "two");
    tab(&mut app, &model);
    retype(&mut app, &model, "5x");
    tab(&mut app, &model);
    assert_eq!(app.on_key(key(KeyCode::Enter), &model), None);
    let Mode::UpdateForm(form) = &app.mode else {
        panic!("the form stays open: {:?}", app.mode);
    };
    assert_eq!(form.focus, FormField::Parallelism, "the cursor goes to it");
    let text = screen(&app, &model);
    assert!(
        text.contains("parallelism: \"two\" is not a whole number"),
        "{text}"
    );
    insta::assert_snapshot!("update_form_error_80x24", text);

    retype(&mut app, &model, "2");
    assert_eq!(app.on_key(key(KeyCode::Enter), &model), None);
    assert!(screen(&app, &model).contains("delay: \"5x\" is not a duration"));
    tab(&mut app, &model);
    retype(&mut app, &model, "");
    app.on_key(key(KeyCode::BackTab), &model);
    app.on_key(key(KeyCode::BackTab), &model);
    app.on_key(key(KeyCode::BackTab), &model);
    retype(&mut app, &model, " ");
    assert_eq!(app.on_key(key(KeyCode::Enter), &model), None);
    assert!(screen(&app, &model).contains("image: enter an image"));

    assert_eq!(app.on_key(key(KeyCode::Esc), &model), None);
    assert_eq!(app.mode, Mode::Normal);
    assert_eq!(app.status, Some(("update cancelled".to_string(), false)));
}

#[test]
fn the_services_view_shows_the_selected_services_update_progress() {
    use pb::TaskState::*;
    let mut model = model();
    if let Some(service) = model.services.get_mut("svc-web") {
        service.spec = Some(pb::ServiceSpec {
            name: "web".into(),
            replicas: 2,
            task: task_spec("nginx:1.28"),
            ..Default::default()
        });
        service.update_status = Some(pb::UpdateStatus {
            state: pb::UpdateState::Updating as i32,
            ..Default::default()
        });
    }
    // web.1 runs the new image; web.2 still the old one.
    let mut updated = task(
        "t4",
        1,
        "n1aaaaaaaaaaaaaaaaaaaaaaa",
        Running,
        Running,
        5,
        "",
    );
    updated.spec = task_spec("nginx:1.28");
    model.put_task(updated);
    let mut old = task(
        "t1",
        1,
        "n1aaaaaaaaaaaaaaaaaaaaaaa",
        Shutdown,
        Shutdown,
        120,
        "",
    );
    old.spec = task_spec("nginx:1.27");
    model.put_task(old);
    let app = App::default();
    let text = screen(&app, &model);
    assert!(text.contains("web: updating, 1/2 updated"), "{text}");
}

#[test]
fn the_help_fits_80x24_in_two_columns() {
    let model = model();
    let mut app = App {
        view: View::Nodes,
        ..App::default()
    };
    app.on_key(key(KeyCode::Char('?')), &model);
    insta::assert_snapshot!(screen(&app, &model));
}

#[test]
fn marked_nodes_take_one_action_together_after_one_confirmation() {
    let model = model();
    let mut app = App {
        view: View::Nodes,
        ..App::default()
    };
    // Space marks the row and moves on, so marking runs down a list.
    app.on_key(key(KeyCode::Char(' ')), &model);
    app.on_key(key(KeyCode::Char(' ')), &model);
    assert_eq!(app.marks.len(), 2);
    assert!(screen(&app, &model).contains("Nodes [2 marked]"));
    assert_eq!(app.on_key(key(KeyCode::Char('d')), &model), None);
    let text = screen(&app, &model);
    assert!(
        text.contains("Set manager-1, manager-2 to drain? (y/N)"),
        "{text}"
    );
    let drain = |node: &str| Action::Availability {
        node: node.into(),
        availability: pb::NodeAvailability::Drain,
    };
    assert_eq!(
        app.on_key(key(KeyCode::Char('y')), &model),
        Some(Action::Many(vec![
            drain("n1aaaaaaaaaaaaaaaaaaaaaaa"),
            drain("n2bbbbbbbbbbbbbbbbbbbbbbb"),
        ]))
    );
    assert!(app.marks.is_empty());
    // Without marks, the selected row alone (marking moved it down).
    assert_eq!(
        app.on_key(key(KeyCode::Char('a')), &model),
        Some(Action::Availability {
            node: "n3ccccccccccccccccccccccc".into(),
            availability: pb::NodeAvailability::Active,
        })
    );
}

#[test]
fn o_sorts_by_the_next_column_and_capital_o_reverses() {
    let model = model();
    let mut app = App {
        view: View::Nodes,
        ..App::default()
    };
    let hosts = |app: &App| -> Vec<String> {
        app.rows(&model)
            .iter()
            .map(|id| model.hostname(id))
            .collect()
    };
    assert_eq!(hosts(&app), ["manager-1", "manager-2", "worker-1"]);
    app.on_key(key(KeyCode::Char('o')), &model);
    // By status: down first, what triage wants to see.
    assert_eq!(hosts(&app), ["worker-1", "manager-1", "manager-2"]);
    app.on_key(key(KeyCode::Char('O')), &model);
    assert_eq!(hosts(&app), ["manager-2", "manager-1", "worker-1"]);
    assert!(screen(&app, &model).contains("Nodes by status ↓"));
}

#[test]
fn c_copies_the_selected_id_through_osc_52() {
    let model = model();
    let mut app = App {
        view: View::Nodes,
        ..App::default()
    };
    app.on_key(key(KeyCode::Char('c')), &model);
    assert_eq!(app.clipboard.as_deref(), Some("n1aaaaaaaaaaaaaaaaaaaaaaa"));
    assert_eq!(
        super::alerts::clipboard_sequence("abc", false),
        "\x1b]52;c;YWJj\x07"
    );
    assert_eq!(
        super::alerts::clipboard_sequence("abc", true),
        "\x1bPtmux;\x1b\x1b]52;c;YWJj\x07\x1b\\"
    );
}

#[test]
fn capital_p_pauses_a_running_update_and_resumes_a_paused_one() {
    let mut model = model();
    let mut app = App::default();
    assert_eq!(
        app.on_key(key(KeyCode::Char('P')), &model),
        Some(Action::ResumeUpdate {
            service: "svc-web".into()
        })
    );
    if let Some(status) = model
        .services
        .get_mut("svc-web")
        .and_then(|s| s.update_status.as_mut())
    {
        status.state = pb::UpdateState::Updating as i32;
    }
    assert_eq!(
        app.on_key(key(KeyCode::Char('P')), &model),
        Some(Action::PauseUpdate {
            service: "svc-web".into()
        })
    );
    if let Some(service) = model.services.get_mut("svc-web") {
        service.update_status = None;
    }
    assert_eq!(app.on_key(key(KeyCode::Char('P')), &model), None);
    let (text, error) = app.status.clone().unwrap_or_default();
    assert!(
        error && text.contains("web has no update in progress"),
        "{text}"
    );
}

#[test]
fn logs_keys_pick_a_window_wrap_and_save() {
    let model = model();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('l')), &model);
    assert_eq!(
        app.on_key(key(KeyCode::Char('s')), &model),
        Some(Action::FollowLogs {
            service: "svc-web".into(),
            window: super::app::LOG_WINDOWS[1],
        })
    );
    assert!(screen(&app, &model).contains("since 1m"));
    app.on_key(key(KeyCode::Char('w')), &model);
    assert!(app.logs_wrap);
    assert_eq!(
        app.on_key(
            KeyEvent::new(KeyCode::Char('s'), KeyModifiers::CONTROL),
            &model
        ),
        Some(Action::SaveLogs)
    );
}

#[test]
fn a_search_in_the_logs_marks_only_the_matches() {
    let plain = ratatui::style::Style::default();
    let mark = ratatui::style::Style::default().add_modifier(ratatui::style::Modifier::BOLD);
    let spans = super::view::highlighted("GET /Health 200 /health", "/health", plain, mark);
    let marked: Vec<&str> = spans
        .iter()
        .filter(|s| s.style == mark)
        .map(|s| s.content.as_ref())
        .collect();
    assert_eq!(marked, ["/Health", "/health"]);
    let all: String = spans.iter().map(|s| s.content.as_ref()).collect();
    assert_eq!(all, "GET /Health 200 /health");
}

#[test]
fn e_narrows_events_to_warnings_then_errors_and_t_fetches_join_tokens() {
    let mut model = model();
    model.events.push_front(super::state::EventLine {
        time_ms: NOW,
        level: super::state::Level::Info,
        text: "service web created".into(),
        subject: Default::default(),
    });
    model.events.push_front(super::state::EventLine {
        time_ms: NOW,
        level: super::state::Level::Error,
        text: "node worker-1 is down".into(),
        subject: Default::default(),
    });
    let mut app = App {
        view: View::Events,
        ..App::default()
    };
    let all = app.rows(&model).len();
    app.on_key(key(KeyCode::Char('e')), &model);
    app.on_key(key(KeyCode::Char('e')), &model);
    assert!(app.rows(&model).len() < all);
    assert!(screen(&app, &model).contains("Events: errors"));

    app.on_key(key(KeyCode::Char('6')), &model);
    assert_eq!(
        app.on_key(key(KeyCode::Char('T')), &model),
        Some(Action::FetchTokens)
    );
    app.tokens = Some(super::app::Tokens {
        worker: "shoal swarm join --token SWMTKN-1-w 10.0.0.1:4242".into(),
        manager: "shoal swarm join --token SWMTKN-1-m 10.0.0.1:4242".into(),
    });
    assert!(screen(&app, &model).contains("SWMTKN-1-m"));
    assert_eq!(app.on_key(key(KeyCode::Char('T')), &model), None);
    assert_eq!(app.tokens, None);
}

#[test]
fn t_on_a_node_lists_its_tasks_across_services() {
    let model = model();
    let mut app = App {
        view: View::Nodes,
        ..App::default()
    };
    // manager-2 runs web.2 now.
    app.on_key(key(KeyCode::Char('j')), &model);
    app.on_key(key(KeyCode::Char('t')), &model);
    assert_eq!(app.view, View::Tasks);
    assert_eq!(app.rows(&model), ["t2"]);
    let text = screen(&app, &model);
    assert!(text.contains("Tasks on manager-2"), "{text}");
    assert!(text.contains("web.2"), "{text}");
    // Enter on a service goes back to the service's tasks.
    app.on_key(key(KeyCode::Char('2')), &model);
    app.on_key(key(KeyCode::Enter), &model);
    assert!(screen(&app, &model).contains("Tasks of web"));
}

#[test]
fn every_view_at_80x24_and_160x48() {
    let mut model = model();
    model.events.push_front(super::state::EventLine {
        time_ms: NOW - 5_000,
        level: Level::Error,
        text: "node worker-1 is down".into(),
        subject: Default::default(),
    });
    model.add_logs(
        (1..=60)
            .map(|i| super::state::LogRow {
                timestamp_ns: NOW * 1_000_000 + i,
                source: "web.1@manager-1".into(),
                stderr: i % 10 == 0,
                text: format!("GET /health 200 request {i}"),
            })
            .collect(),
    );
    for view in View::ALL {
        let app = App {
            view,
            focus_service: Some("svc-web".into()),
            logs_service: Some("svc-web".into()),
            ..App::default()
        };
        for (width, height) in [(80, 24), (160, 48)] {
            insta::assert_snapshot!(
                format!("view_{}_{width}x{height}", view.name()),
                screen_of_size(&app, &model, width, height)
            );
        }
    }
}

#[test]
fn a_bulk_action_takes_marked_rows_in_the_order_shown() {
    let model = model();
    let mut app = App {
        view: View::Nodes,
        ..App::default()
    };
    // Reversed: worker-1, manager-2, manager-1.
    app.on_key(key(KeyCode::Char('O')), &model);
    app.on_key(key(KeyCode::Char(' ')), &model);
    app.on_key(key(KeyCode::Char(' ')), &model);
    let Some(Action::Many(actions)) = app.on_key(key(KeyCode::Char('a')), &model) else {
        panic!("no bulk action");
    };
    let nodes: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Availability { node, .. } => Some(model.hostname(node)),
            _ => None,
        })
        .collect();
    assert_eq!(nodes, ["worker-1", "manager-2"]);
}

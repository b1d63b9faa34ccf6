//! The console as an operator sees it: whole screens at 80x24 on a
//! `TestBackend`, from a fixed model and a fixed clock.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use shoal_proto::v1 as pb;

use super::app::{Action, App, Mode, View};
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
        spec: Some(pb::NodeSpec::default()),
        description: Some(pb::NodeDescription {
            hostname: host.into(),
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
        model
            .tasks
            .insert(t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(), t);
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
fn help_lists_every_key() {
    let model = model();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('?')), &model);
    let text = screen(&app, &model);
    for (keys, _, _) in super::app::KEYS {
        assert!(text.contains(keys), "{keys} missing:\n{text}");
    }
}

#[test]
fn scaling_asks_for_a_number_and_sends_it() {
    let model = model();
    let mut app = App::default();
    assert_eq!(app.on_key(key(KeyCode::Char('s')), &model), None);
    // The prompt starts with the current count.
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
            service: "svc-web".into()
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

//! The console's keys: one table of commands, each with its default keys,
//! where it applies and what it does. The key handler looks keys up here,
//! the help screen is generated from here, and `[keys]` in the console
//! settings rebinds any command:
//!
//! ```toml
//! [keys]
//! drain = "D"                 # one key
//! scale = ["s", "ctrl-s"]     # or several
//! ```
//!
//! Text being typed (filters, prompts, the update form) is never looked
//! up: there every key is text.

use std::collections::BTreeMap;
use std::fmt;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::View;

/// Something a key does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Quit,
    Help,
    Filter,
    CommandLine,
    NextView,
    PreviousView,
    Show(View),
    Down,
    Up,
    PageDown,
    PageUp,
    First,
    Last,
    Back,
    Open,
    Inspect,
    Mark,
    MarkAll,
    Sort,
    SortReverse,
    CopyId,
    Logs,
    NodeTasks,
    Scale,
    Update,
    PauseUpdate,
    Rollback,
    Remove,
    Activate,
    Pause,
    Drain,
    Promote,
    Demote,
    Unlock,
    Mute,
    FollowPause,
    Timestamps,
    Wrap,
    Since,
    SaveLogs,
    Level,
    Tokens,
}

/// Where a command applies, for the help screen and for telling apart
/// two commands that share a key in different views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Any,
    Views(&'static [View]),
}

impl Scope {
    fn includes(self, view: View) -> bool {
        match self {
            Scope::Any => true,
            Scope::Views(views) => views.contains(&view),
        }
    }

    fn overlaps(self, other: Scope) -> bool {
        match (self, other) {
            (Scope::Any, _) | (_, Scope::Any) => true,
            (Scope::Views(a), Scope::Views(b)) => a.iter().any(|v| b.contains(v)),
        }
    }
}

const NODES: Scope = Scope::Views(&[View::Nodes]);
const SERVICES: Scope = Scope::Views(&[View::Services]);
const LOGS: Scope = Scope::Views(&[View::Logs]);
const TABLES: Scope = Scope::Views(&[View::Nodes, View::Services, View::Tasks]);
const MARKABLE: Scope = Scope::Views(&[View::Nodes, View::Services]);

/// A command's name in `[keys]`, default keys, scope and help text.
pub struct Binding {
    pub command: Command,
    pub name: &'static str,
    pub keys: &'static [&'static str],
    pub scope: Scope,
    pub help: &'static str,
}

const fn bind(
    command: Command,
    name: &'static str,
    keys: &'static [&'static str],
    scope: Scope,
    help: &'static str,
) -> Binding {
    Binding {
        command,
        name,
        keys,
        scope,
        help,
    }
}

/// Every command, in the order the help screen lists them.
pub const DEFAULTS: &[Binding] = &[
    bind(
        Command::Show(View::Nodes),
        "nodes",
        &["1"],
        Scope::Any,
        "nodes view",
    ),
    bind(
        Command::Show(View::Services),
        "services",
        &["2"],
        Scope::Any,
        "services view",
    ),
    bind(
        Command::Show(View::Tasks),
        "tasks",
        &["3"],
        Scope::Any,
        "tasks view",
    ),
    bind(
        Command::Show(View::Logs),
        "logs-view",
        &["4"],
        Scope::Any,
        "logs view",
    ),
    bind(
        Command::Show(View::Events),
        "events",
        &["5"],
        Scope::Any,
        "events view",
    ),
    bind(
        Command::Show(View::Cluster),
        "cluster",
        &["6"],
        Scope::Any,
        "cluster view",
    ),
    bind(
        Command::Show(View::Problems),
        "problems",
        &["7"],
        Scope::Any,
        "problems view",
    ),
    bind(
        Command::NextView,
        "next-view",
        &["tab"],
        Scope::Any,
        "next view",
    ),
    bind(
        Command::PreviousView,
        "previous-view",
        &["backtab"],
        Scope::Any,
        "previous view",
    ),
    bind(
        Command::CommandLine,
        "command",
        &[":"],
        Scope::Any,
        "go to a view by name",
    ),
    bind(
        Command::Down,
        "down",
        &["j", "down"],
        Scope::Any,
        "move down (logs: newer)",
    ),
    bind(
        Command::Up,
        "up",
        &["k", "up"],
        Scope::Any,
        "move up (logs: older)",
    ),
    bind(
        Command::PageDown,
        "page-down",
        &["pagedown", "ctrl-f"],
        Scope::Any,
        "a screenful down",
    ),
    bind(
        Command::PageUp,
        "page-up",
        &["pageup", "ctrl-b"],
        Scope::Any,
        "a screenful up",
    ),
    bind(
        Command::First,
        "first",
        &["g", "home"],
        Scope::Any,
        "first row (logs: oldest)",
    ),
    bind(
        Command::Last,
        "last",
        &["G", "end"],
        Scope::Any,
        "last row (logs: follow)",
    ),
    bind(
        Command::Filter,
        "filter",
        &["/"],
        Scope::Any,
        "filter rows or search logs",
    ),
    bind(
        Command::Back,
        "back",
        &["esc"],
        Scope::Any,
        "clear filter and marks",
    ),
    bind(
        Command::Open,
        "open",
        &["enter"],
        Scope::Views(&[View::Nodes, View::Services, View::Tasks, View::Problems]),
        "open: tasks, inspect, jump",
    ),
    bind(
        Command::Inspect,
        "inspect",
        &["i"],
        TABLES,
        "inspect; y there for JSON",
    ),
    bind(
        Command::Mark,
        "mark",
        &["space"],
        MARKABLE,
        "mark row for bulk action",
    ),
    bind(
        Command::MarkAll,
        "mark-all",
        &["ctrl-a"],
        MARKABLE,
        "mark all rows, or none",
    ),
    bind(
        Command::Sort,
        "sort",
        &["o"],
        MARKABLE,
        "sort by the next column",
    ),
    bind(
        Command::SortReverse,
        "sort-reverse",
        &["O"],
        MARKABLE,
        "reverse the sort",
    ),
    bind(
        Command::CopyId,
        "copy-id",
        &["c"],
        TABLES,
        "copy id (OSC 52 clipboard)",
    ),
    bind(
        Command::Logs,
        "logs",
        &["l"],
        Scope::Views(&[View::Services, View::Tasks, View::Problems]),
        "follow the service's logs",
    ),
    bind(
        Command::NodeTasks,
        "node-tasks",
        &["t"],
        NODES,
        "tasks on this node",
    ),
    bind(
        Command::Scale,
        "scale",
        &["s"],
        SERVICES,
        "scale (marked: all alike)",
    ),
    bind(
        Command::Update,
        "update",
        &["U"],
        SERVICES,
        "rolling update form",
    ),
    bind(
        Command::PauseUpdate,
        "pause-update",
        &["P"],
        SERVICES,
        "pause/resume an update",
    ),
    bind(
        Command::Rollback,
        "rollback",
        &["r"],
        SERVICES,
        "roll back to previous spec",
    ),
    bind(
        Command::Remove,
        "remove",
        &["ctrl-d"],
        MARKABLE,
        "remove (asks first)",
    ),
    bind(Command::Activate, "activate", &["a"], NODES, "activate"),
    bind(
        Command::Pause,
        "pause",
        &["p"],
        NODES,
        "pause (no new tasks)",
    ),
    bind(Command::Drain, "drain", &["d"], NODES, "drain (asks first)"),
    bind(
        Command::Promote,
        "promote",
        &["+"],
        NODES,
        "promote to manager",
    ),
    bind(
        Command::Demote,
        "demote",
        &["-"],
        NODES,
        "demote (asks first)",
    ),
    bind(
        Command::FollowPause,
        "follow",
        &["f"],
        LOGS,
        "pause or follow",
    ),
    bind(
        Command::Timestamps,
        "timestamps",
        &["t"],
        LOGS,
        "show timestamps",
    ),
    bind(Command::Wrap, "wrap", &["w"], LOGS, "wrap long lines"),
    bind(
        Command::Since,
        "since",
        &["s"],
        LOGS,
        "since: tail, 1m…1h, all",
    ),
    bind(
        Command::SaveLogs,
        "save-logs",
        &["ctrl-s"],
        LOGS,
        "save shown lines to a file",
    ),
    bind(
        Command::Level,
        "level",
        &["e"],
        Scope::Views(&[View::Events]),
        "all, warnings or errors",
    ),
    bind(
        Command::Tokens,
        "tokens",
        &["T"],
        Scope::Views(&[View::Cluster]),
        "show/hide join tokens",
    ),
    bind(
        Command::Unlock,
        "unlock",
        &["u"],
        Scope::Any,
        "unlock a locked manager",
    ),
    bind(
        Command::Mute,
        "mute",
        &["M"],
        Scope::Any,
        "mute bell/desktop alerts",
    ),
    bind(Command::Help, "help", &["?"], Scope::Any, "this help"),
    bind(
        Command::Quit,
        "quit",
        &["q"],
        Scope::Any,
        "quit (Ctrl-C too)",
    ),
];

/// A key with its modifiers, as written in `[keys]`: `s`, `S`, `ctrl-d`,
/// `enter`, `space`, `pagedown`, `f5`...
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    code: KeyCodeOrd,
    ctrl: bool,
    alt: bool,
}

/// `KeyCode` without the variants a key table never holds, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum KeyCodeOrd {
    Char(char),
    F(u8),
    Enter,
    Esc,
    Tab,
    BackTab,
    Backspace,
    Up,
    Down,
    Left,
    Right,
    Home,
    End,
    PageUp,
    PageDown,
    Insert,
    Delete,
}

const NAMED: &[(&str, KeyCodeOrd)] = &[
    ("enter", KeyCodeOrd::Enter),
    ("esc", KeyCodeOrd::Esc),
    ("tab", KeyCodeOrd::Tab),
    ("backtab", KeyCodeOrd::BackTab),
    ("backspace", KeyCodeOrd::Backspace),
    ("up", KeyCodeOrd::Up),
    ("down", KeyCodeOrd::Down),
    ("left", KeyCodeOrd::Left),
    ("right", KeyCodeOrd::Right),
    ("home", KeyCodeOrd::Home),
    ("end", KeyCodeOrd::End),
    ("pageup", KeyCodeOrd::PageUp),
    ("pagedown", KeyCodeOrd::PageDown),
    ("insert", KeyCodeOrd::Insert),
    ("delete", KeyCodeOrd::Delete),
    ("space", KeyCodeOrd::Char(' ')),
];

impl Key {
    pub fn parse(text: &str) -> Result<Key, String> {
        let mut key = Key {
            code: KeyCodeOrd::Char(' '),
            ctrl: false,
            alt: false,
        };
        let mut rest = text;
        loop {
            let lower = rest.to_ascii_lowercase();
            if rest.len() > 1 && lower.starts_with("ctrl-") {
                key.ctrl = true;
                rest = &rest[5..];
            } else if rest.len() > 1 && lower.starts_with("alt-") {
                key.alt = true;
                rest = &rest[4..];
            } else {
                break;
            }
        }
        let lower = rest.to_ascii_lowercase();
        let mut chars = rest.chars();
        key.code = match (chars.next(), chars.next()) {
            (Some(c), None) if key.ctrl => KeyCodeOrd::Char(c.to_ascii_lowercase()),
            (Some(c), None) => KeyCodeOrd::Char(c),
            _ => {
                if let Some((_, code)) = NAMED.iter().find(|(name, _)| *name == lower) {
                    *code
                } else if let Some(n) = lower
                    .strip_prefix('f')
                    .and_then(|n| n.parse::<u8>().ok())
                    .filter(|n| (1..=12).contains(n))
                {
                    KeyCodeOrd::F(n)
                } else {
                    return Err(format!(
                        "{text:?} is not a key: use a character (s, S, +), ctrl-X, alt-X, \
                         f1-f12 or one of {}",
                        NAMED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        };
        Ok(key)
    }

    pub fn of(event: &KeyEvent) -> Option<Key> {
        let ctrl = event.modifiers.contains(KeyModifiers::CONTROL);
        let code = match event.code {
            KeyCode::Char(c) if ctrl => KeyCodeOrd::Char(c.to_ascii_lowercase()),
            KeyCode::Char(c) => KeyCodeOrd::Char(c),
            KeyCode::F(n) => KeyCodeOrd::F(n),
            KeyCode::Enter => KeyCodeOrd::Enter,
            KeyCode::Esc => KeyCodeOrd::Esc,
            KeyCode::Tab => KeyCodeOrd::Tab,
            KeyCode::BackTab => KeyCodeOrd::BackTab,
            KeyCode::Backspace => KeyCodeOrd::Backspace,
            KeyCode::Up => KeyCodeOrd::Up,
            KeyCode::Down => KeyCodeOrd::Down,
            KeyCode::Left => KeyCodeOrd::Left,
            KeyCode::Right => KeyCodeOrd::Right,
            KeyCode::Home => KeyCodeOrd::Home,
            KeyCode::End => KeyCodeOrd::End,
            KeyCode::PageUp => KeyCodeOrd::PageUp,
            KeyCode::PageDown => KeyCodeOrd::PageDown,
            KeyCode::Insert => KeyCodeOrd::Insert,
            KeyCode::Delete => KeyCodeOrd::Delete,
            _ => return None,
        };
        Some(Key {
            code,
            ctrl,
            alt: event.modifiers.contains(KeyModifiers::ALT),
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ctrl {
            f.write_str("Ctrl-")?;
        }
        if self.alt {
            f.write_str("Alt-")?;
        }
        match self.code {
            KeyCodeOrd::Char(' ') => f.write_str("Space"),
            KeyCodeOrd::Char(c) if self.ctrl => write!(f, "{}", c.to_ascii_uppercase()),
            KeyCodeOrd::Char(c) => write!(f, "{c}"),
            KeyCodeOrd::F(n) => write!(f, "F{n}"),
            KeyCodeOrd::Up => f.write_str("↑"),
            KeyCodeOrd::Down => f.write_str("↓"),
            KeyCodeOrd::Left => f.write_str("←"),
            KeyCodeOrd::Right => f.write_str("→"),
            KeyCodeOrd::BackTab => f.write_str("S-Tab"),
            KeyCodeOrd::PageUp => f.write_str("PgUp"),
            KeyCodeOrd::PageDown => f.write_str("PgDn"),
            other => {
                let name = NAMED
                    .iter()
                    .find(|(_, code)| *code == other)
                    .map_or("?", |(name, _)| name);
                let mut chars = name.chars();
                match chars.next() {
                    Some(first) => write!(f, "{}{}", first.to_ascii_uppercase(), chars.as_str()),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The keys in force: the defaults with the settings' `[keys]` applied.
#[derive(Clone, Debug)]
pub struct Keymap {
    /// Per command (in [`DEFAULTS`] order), its keys.
    keys: Vec<(Command, Vec<Key>)>,
}

/// `[keys]` values: one key or a list of them.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum KeySetting {
    One(String),
    Many(Vec<String>),
}

impl Default for Keymap {
    fn default() -> Self {
        Keymap {
            keys: DEFAULTS
                .iter()
                .map(|b| {
                    let keys = b.keys.iter().filter_map(|k| Key::parse(k).ok()).collect();
                    (b.command, keys)
                })
                .collect(),
        }
    }
}

fn binding(command: Command) -> Option<&'static Binding> {
    DEFAULTS.iter().find(|b| b.command == command)
}

impl Keymap {
    /// The defaults with `overrides` applied. Unknown commands, keys that
    /// do not parse and one key bound to two commands in the same view
    /// are errors that name the setting.
    pub fn with(overrides: &BTreeMap<String, KeySetting>) -> Result<Keymap, String> {
        let mut map = Keymap::default();
        for (name, setting) in overrides {
            let Some(binding) = DEFAULTS.iter().find(|b| b.name == name) else {
                return Err(format!(
                    "[keys] {name}: no such command; the commands are {}",
                    DEFAULTS
                        .iter()
                        .map(|b| b.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            let texts = match setting {
                KeySetting::One(key) => vec![key.clone()],
                KeySetting::Many(keys) => keys.clone(),
            };
            let keys = texts
                .iter()
                .map(|k| Key::parse(k).map_err(|e| format!("[keys] {name}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(entry) = map.keys.iter_mut().find(|(c, _)| *c == binding.command) {
                entry.1 = keys;
            }
        }
        map.check()?;
        Ok(map)
    }

    fn check(&self) -> Result<(), String> {
        for (i, (a, a_keys)) in self.keys.iter().enumerate() {
            for (b, b_keys) in &self.keys[i + 1..] {
                let (Some(a), Some(b)) = (binding(*a), binding(*b)) else {
                    continue;
                };
                if let Some(key) = a_keys.iter().find(|k| b_keys.contains(k))
                    && a.scope.overlaps(b.scope)
                {
                    return Err(format!(
                        "[keys]: {key} is bound to both {} and {}; give one of them another key",
                        a.name, b.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// What `event` does in `view`, if anything.
    pub fn command(&self, event: &KeyEvent, view: View) -> Option<Command> {
        let key = Key::of(event)?;
        self.keys
            .iter()
            .filter(|(_, keys)| keys.contains(&key))
            .filter_map(|(command, _)| Some((*command, binding(*command)?)))
            .find(|(_, b)| b.scope.includes(view))
            .map(|(command, _)| command)
    }

    /// The keys of `command`, as the help shows them ("j ↓").
    pub fn keys_of(&self, command: Command) -> String {
        self.keys
            .iter()
            .find(|(c, _)| *c == command)
            .map(|(_, keys)| {
                keys.iter()
                    .map(Key::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    }

    /// The help screen's first line: the keys that switch views, and the
    /// views' names, as one row.
    pub fn view_keys(&self) -> Option<(String, String)> {
        let views: Vec<(String, &str)> = DEFAULTS
            .iter()
            .filter_map(|b| match b.command {
                Command::Show(shown) => Some((self.keys_of(b.command), shown.name())),
                _ => None,
            })
            .filter(|(keys, _)| !keys.is_empty())
            .collect();
        if views.is_empty() {
            return None;
        }
        let keys: Vec<&str> = views.iter().map(|(k, _)| k.as_str()).collect();
        let names: Vec<&str> = views.iter().map(|(_, n)| *n).collect();
        Some((keys.join(" "), names.join(" ")))
    }

    /// The help screen's rows over the inspect pane: the moving commands
    /// as bound, with what they do there, and the pane's own keys.
    pub fn inspect_help(&self) -> Vec<(String, String)> {
        let bound = |commands: &[Command]| {
            commands
                .iter()
                .map(|c| self.keys_of(*c))
                .filter(|keys| !keys.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        };
        [
            (bound(&[Command::Down]), "scroll down"),
            (bound(&[Command::Up]), "scroll up"),
            (bound(&[Command::PageDown]) + " Space", "a screenful down"),
            (bound(&[Command::PageUp]), "a screenful up"),
            (bound(&[Command::First]), "top"),
            (bound(&[Command::Last]), "end"),
            ("y".to_string(), "JSON (as the CLI prints it) or pretty"),
            (bound(&[Command::Back, Command::Quit]), "close the pane"),
            (bound(&[Command::Help]), "this help"),
        ]
        .into_iter()
        .map(|(keys, what)| (keys.trim().to_string(), what.to_string()))
        .filter(|(keys, _)| !keys.is_empty())
        .collect()
    }

    /// The help screen's rows for `view`, beside [`Keymap::view_keys`]:
    /// keys, what they do. Commands left without a key are left out.
    pub fn help(&self, view: View) -> Vec<(String, String)> {
        DEFAULTS
            .iter()
            .filter(|b| b.scope.includes(view) && !matches!(b.command, Command::Show(_)))
            .map(|b| (self.keys_of(b.command), b.help.to_string()))
            .filter(|(keys, _)| !keys.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn the_defaults_have_no_conflicts_and_every_default_key_parses() -> Result<(), String> {
        for binding in DEFAULTS {
            for k in binding.keys {
                Key::parse(k)?;
            }
        }
        Keymap::default().check()
    }

    #[test]
    fn one_key_means_different_commands_in_different_views() {
        let map = Keymap::default();
        let s = key(KeyCode::Char('s'), KeyModifiers::NONE);
        assert_eq!(map.command(&s, View::Services), Some(Command::Scale));
        assert_eq!(map.command(&s, View::Logs), Some(Command::Since));
        assert_eq!(map.command(&s, View::Nodes), None);
        let ctrl_d = key(KeyCode::Char('d'), KeyModifiers::CONTROL);
        assert_eq!(map.command(&ctrl_d, View::Nodes), Some(Command::Remove));
        let d = key(KeyCode::Char('d'), KeyModifiers::NONE);
        assert_eq!(map.command(&d, View::Nodes), Some(Command::Drain));
        let shift_u = key(KeyCode::Char('U'), KeyModifiers::SHIFT);
        assert_eq!(map.command(&shift_u, View::Services), Some(Command::Update));
    }

    #[test]
    fn settings_rebind_commands_and_bad_settings_name_the_fix() -> Result<(), String> {
        let overrides: BTreeMap<String, KeySetting> =
            toml::from_str("drain = \"D\"\nscale = [\"s\", \"alt-s\"]\n")
                .map_err(|e| e.to_string())?;
        let map = Keymap::with(&overrides)?;
        let shift_d = key(KeyCode::Char('D'), KeyModifiers::SHIFT);
        assert_eq!(map.command(&shift_d, View::Nodes), Some(Command::Drain));
        let d = key(KeyCode::Char('d'), KeyModifiers::NONE);
        assert_eq!(map.command(&d, View::Nodes), None);
        assert_eq!(map.keys_of(Command::Scale), "s Alt-s");
        assert!(
            map.help(View::Nodes)
                .iter()
                .any(|(keys, what)| keys == "D" && what.contains("drain"))
        );

        let unknown = BTreeMap::from([("dran".to_string(), KeySetting::One("x".into()))]);
        let err = Keymap::with(&unknown).err().unwrap_or_default();
        assert!(err.contains("dran") && err.contains("drain"), "{err}");
        let clash = BTreeMap::from([("drain".to_string(), KeySetting::One("a".into()))]);
        let err = Keymap::with(&clash).err().unwrap_or_default();
        assert!(err.contains("drain") && err.contains("activate"), "{err}");
        let bad = BTreeMap::from([("drain".to_string(), KeySetting::One("ctrl-".into()))]);
        assert!(Keymap::with(&bad).is_err());
        let bad = BTreeMap::from([("drain".to_string(), KeySetting::One("hyper-x".into()))]);
        let err = Keymap::with(&bad).err().unwrap_or_default();
        assert!(err.contains("hyper-x") && err.contains("ctrl-X"), "{err}");
        Ok(())
    }
}

//! Alerts that reach an operator who is not looking at the console: a
//! desktop notification when a session bus answers, else the terminal's own
//! notification (OSC 9 or OSC 777, passed through tmux), else the bell.
//! The in-app banner is the caller's and always shows.
//!
//! Nothing here may block the UI: the desktop notification is sent from a
//! thread of its own, and a failure there switches to the terminal kinds.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::settings::{AlertSettings, TerminalNotification};

/// At most one alert per this long: a crash loop must not ring all night.
const QUIET: Duration = Duration::from_secs(30);

pub struct Alerter {
    settings: AlertSettings,
    terminal: Option<TerminalNotification>,
    in_tmux: bool,
    /// Cleared when a desktop notification fails (no notification service
    /// behind the bus): later alerts use the terminal.
    desktop_works: Arc<AtomicBool>,
    last: Option<Instant>,
}

/// What the terminal is known to show, from the variables terminals set.
fn detect_terminal() -> Option<TerminalNotification> {
    let program = std::env::var("TERM_PROGRAM").unwrap_or_default();
    let lc_terminal = std::env::var("LC_TERMINAL").unwrap_or_default();
    let term = std::env::var("TERM").unwrap_or_default();
    if ["iTerm.app", "WezTerm", "ghostty"].contains(&program.as_str())
        || lc_terminal == "iTerm2"
        || term.contains("kitty")
    {
        Some(TerminalNotification::Osc9)
    } else if term.starts_with("foot") || term.contains("rxvt") {
        Some(TerminalNotification::Osc777)
    } else {
        None
    }
}

fn session_bus() -> bool {
    std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|a| !a.is_empty())
}

/// Text safe inside an OSC sequence: no control characters, and no `;`
/// (OSC 777's field separator).
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() || c == ';' { ' ' } else { c })
        .collect()
}

/// The escape sequence for `kind`, wrapped for tmux when inside it (tmux
/// passes it on with `set -g allow-passthrough on`).
pub fn terminal_sequence(
    kind: TerminalNotification,
    title: &str,
    body: &str,
    in_tmux: bool,
) -> Option<String> {
    let sequence = match kind {
        TerminalNotification::Osc9 => format!("\x1b]9;{}: {}\x07", clean(title), clean(body)),
        TerminalNotification::Osc777 => {
            format!("\x1b]777;notify;{};{}\x07", clean(title), clean(body))
        }
        TerminalNotification::Auto | TerminalNotification::Off => return None,
    };
    Some(through_tmux(sequence, in_tmux))
}

/// Wraps an escape sequence so tmux hands it to the outer terminal (with
/// `set -g allow-passthrough on`).
pub fn through_tmux(sequence: String, in_tmux: bool) -> String {
    if in_tmux {
        format!("\x1bPtmux;{}\x1b\\", sequence.replace('\x1b', "\x1b\x1b"))
    } else {
        sequence
    }
}

/// OSC 52: the terminal puts `text` on the clipboard. It travels with the
/// output, so it works over SSH, where the console's host has no
/// clipboard of the operator's.
pub fn clipboard_sequence(text: &str, in_tmux: bool) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    through_tmux(format!("\x1b]52;c;{encoded}\x07"), in_tmux)
}

impl Alerter {
    pub fn new(settings: AlertSettings) -> Alerter {
        let terminal = match settings.terminal {
            TerminalNotification::Auto => detect_terminal(),
            TerminalNotification::Off => None,
            chosen => Some(chosen),
        };
        Alerter {
            desktop_works: Arc::new(AtomicBool::new(settings.desktop && session_bus())),
            settings,
            terminal,
            in_tmux: std::env::var_os("TMUX").is_some(),
            last: None,
        }
    }

    pub fn muted(&self) -> bool {
        self.settings.muted
    }

    pub fn toggle_mute(&mut self) -> bool {
        self.settings.muted = !self.settings.muted;
        self.settings.muted
    }

    /// Sends one alert, unless muted or one went out less than [`QUIET`]
    /// ago.
    pub fn alert(&mut self, title: &str, body: &str, now: Instant) {
        if self.settings.muted
            || self
                .last
                .is_some_and(|last| now.duration_since(last) < QUIET)
        {
            return;
        }
        self.last = Some(now);
        if self.desktop_works.load(Ordering::Relaxed) {
            let works = self.desktop_works.clone();
            let (title, body) = (title.to_string(), body.to_string());
            std::thread::spawn(move || {
                let shown = notify_rust::Notification::new()
                    .appname("shoal")
                    .summary(&title)
                    .body(&body)
                    .show();
                if shown.is_err() {
                    works.store(false, Ordering::Relaxed);
                }
            });
            return;
        }
        let mut out = std::io::stdout();
        if let Some(sequence) = self
            .terminal
            .and_then(|kind| terminal_sequence(kind, title, body, self.in_tmux))
        {
            let _ = out.write_all(sequence.as_bytes());
        } else if self.settings.bell {
            let _ = out.write_all(b"\x07");
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_notifications_are_clean_and_pass_through_tmux() {
        let plain = terminal_sequence(
            TerminalNotification::Osc777,
            "node down",
            "w1; gone\x07",
            false,
        );
        assert_eq!(
            plain.as_deref(),
            Some("\x1b]777;notify;node down;w1  gone \x07")
        );
        let wrapped = terminal_sequence(TerminalNotification::Osc9, "a", "b", true);
        assert_eq!(
            wrapped.as_deref(),
            Some("\x1bPtmux;\x1b\x1b]9;a: b\x07\x1b\\")
        );
        assert_eq!(
            terminal_sequence(TerminalNotification::Off, "a", "b", false),
            None
        );
    }

    #[test]
    fn muted_alerts_and_alerts_within_the_quiet_time_send_nothing() {
        let mut alerter = Alerter::new(AlertSettings {
            desktop: false,
            terminal: TerminalNotification::Off,
            bell: false,
            muted: true,
        });
        let now = Instant::now();
        alerter.alert("t", "b", now);
        assert!(alerter.last.is_none(), "a muted alert counted");
        assert!(!alerter.toggle_mute());
        alerter.alert("t", "b", now);
        assert_eq!(alerter.last, Some(now));
        alerter.alert("t", "b", now + Duration::from_secs(1));
        assert_eq!(alerter.last, Some(now), "rate limit ignored");
    }
}

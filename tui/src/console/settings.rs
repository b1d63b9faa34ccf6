//! The console's own settings: `~/.config/shoal/console.toml` (or the
//! file `SHOAL_CONSOLE_CONFIG` names), overridden by `--theme` and the
//! environment.
//!
//! ```toml
//! theme = "light"        # a built-in theme or a theme file's path
//!
//! [alerts]
//! desktop = true         # a desktop notification when a session bus answers
//! terminal = "auto"      # auto | osc9 | osc777 | off: the terminal's own notification
//! bell = true            # when neither of those can be shown
//! muted = false          # only the in-app banner (also toggled with M)
//!
//! [keys]                 # rebind any command of the help screen (?)
//! drain = "D"
//! scale = ["s", "alt-s"]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::keymap::KeySetting;
use super::theme::Theme;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub theme: Option<String>,
    #[serde(default)]
    pub alerts: AlertSettings,
    /// Rebound keys: command name → key or keys (see [`super::keymap`]).
    #[serde(default)]
    pub keys: BTreeMap<String, KeySetting>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TerminalNotification {
    /// OSC 9 or OSC 777, whichever the terminal is known to show.
    #[default]
    Auto,
    Osc9,
    Osc777,
    Off,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    pub desktop: bool,
    pub terminal: TerminalNotification,
    pub bell: bool,
    pub muted: bool,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            desktop: true,
            terminal: TerminalNotification::Auto,
            bell: true,
            muted: false,
        }
    }
}

pub fn path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SHOAL_CONSOLE_CONFIG") {
        return Some(path.into());
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(config.join("shoal").join("console.toml"))
}

impl Settings {
    /// Reads the settings file; its absence means defaults.
    pub fn load() -> Result<Settings, String> {
        let Some(path) = path() else {
            return Ok(Settings::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                format!(
                    "console settings {}: {}; fix or remove the file",
                    path.display(),
                    e.message()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The theme: `--theme` first, then `NO_COLOR` (mono), `SHOAL_THEME`,
    /// the settings file, the default.
    pub fn theme(&self, flag: Option<&str>) -> Result<Theme, String> {
        if let Some(wanted) = flag {
            return Theme::named(wanted, "--theme");
        }
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            return Ok(Theme::mono());
        }
        if let Ok(wanted) = std::env::var("SHOAL_THEME") {
            return Theme::named(&wanted, "SHOAL_THEME");
        }
        match &self.theme {
            Some(wanted) => Theme::named(wanted, "the console settings' theme"),
            None => Theme::named("default", "the default theme"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_default_on_and_settings_parse() -> Result<(), toml::de::Error> {
        let settings: Settings = toml::from_str(
            "theme = \"solarized\"\n[alerts]\nterminal = \"osc777\"\nmuted = true\n",
        )?;
        assert_eq!(settings.theme.as_deref(), Some("solarized"));
        assert_eq!(settings.alerts.terminal, TerminalNotification::Osc777);
        assert!(settings.alerts.muted && settings.alerts.desktop && settings.alerts.bell);
        assert!(toml::from_str::<Settings>("colour = \"red\"\n").is_err());
        Ok(())
    }
}

//! Colour themes, read from TOML (the files in `themes/`). They are built
//! in so the console works without the files installed; `NO_COLOR`
//! selects the mono theme, which marks selection and states with reverse
//! video and bold instead of colour.

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

const DEFAULT: &str = include_str!("../../../themes/default.toml");
const MONO: &str = include_str!("../../../themes/mono.toml");
const LIGHT: &str = include_str!("../../../themes/light.toml");
const HIGH_CONTRAST: &str = include_str!("../../../themes/high-contrast.toml");
const SOLARIZED: &str = include_str!("../../../themes/solarized.toml");

/// The built-in themes, by name.
pub const BUILTIN: [&str; 5] = ["default", "light", "high-contrast", "solarized", "mono"];

#[derive(Clone, Debug, Deserialize)]
struct ThemeFile {
    name: String,
    header_fg: String,
    header_bg: String,
    selected_fg: String,
    selected_bg: String,
    ok: String,
    warn: String,
    error: String,
    dim: String,
    border: String,
    text: String,
}

#[derive(Clone, Debug)]
pub struct Theme {
    pub header: Style,
    pub selected: Style,
    pub ok: Style,
    pub warn: Style,
    pub error: Style,
    pub dim: Style,
    pub border: Style,
    pub text: Style,
}

fn color(name: &str) -> Result<Color, String> {
    name.parse::<Color>()
        .map_err(|_| format!("unknown colour {name:?}: use a name like \"cyan\" or \"#rrggbb\""))
}

impl Theme {
    fn from_toml(text: &str) -> Result<Self, String> {
        let file: ThemeFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mono = file.name == "mono";
        let fg_bg = |fg: &str, bg: &str| -> Result<Style, String> {
            Ok(Style::default().fg(color(fg)?).bg(color(bg)?))
        };
        let fg = |c: &str| -> Result<Style, String> { Ok(Style::default().fg(color(c)?)) };
        let mut theme = Theme {
            header: fg_bg(&file.header_fg, &file.header_bg)?,
            selected: fg_bg(&file.selected_fg, &file.selected_bg)?,
            ok: fg(&file.ok)?,
            warn: fg(&file.warn)?.add_modifier(Modifier::BOLD),
            error: fg(&file.error)?.add_modifier(Modifier::BOLD),
            dim: fg(&file.dim)?,
            border: fg(&file.border)?,
            text: fg(&file.text)?,
        };
        if mono {
            theme.header = theme.header.add_modifier(Modifier::REVERSED);
            theme.selected = theme.selected.add_modifier(Modifier::REVERSED);
        }
        Ok(theme)
    }

    pub fn builtin(name: &str) -> Option<Self> {
        let text = match name {
            "default" => DEFAULT,
            "mono" => MONO,
            "light" => LIGHT,
            "high-contrast" => HIGH_CONTRAST,
            "solarized" => SOLARIZED,
            _ => return None,
        };
        Theme::from_toml(text).ok()
    }

    pub fn mono() -> Self {
        Theme::builtin("mono").unwrap_or_else(Theme::fallback)
    }

    /// Used only if a built-in file were broken.
    fn fallback() -> Self {
        Theme {
            header: Style::default().add_modifier(Modifier::REVERSED),
            selected: Style::default().add_modifier(Modifier::REVERSED),
            ok: Style::default(),
            warn: Style::default().add_modifier(Modifier::BOLD),
            error: Style::default().add_modifier(Modifier::BOLD),
            dim: Style::default(),
            border: Style::default(),
            text: Style::default(),
        }
    }

    /// A built-in theme or a theme file; `source` says where the name
    /// came from, for the error.
    pub fn named(wanted: &str, source: &str) -> Result<Self, String> {
        if let Some(theme) = Theme::builtin(wanted) {
            return Ok(theme);
        }
        let text = std::fs::read_to_string(wanted).map_err(|e| {
            format!(
                "{source} {wanted:?} is not a built-in theme ({}) nor a readable file: {e}",
                BUILTIN.join(", ")
            )
        })?;
        Theme::from_toml(&text).map_err(|e| format!("theme file {wanted}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_theme_parses() {
        for name in BUILTIN {
            assert!(Theme::builtin(name).is_some(), "{name}");
        }
        assert!(Theme::from_toml("name = 1").is_err());
    }
}

//! A real terminal for end-to-end console tests: a private tmux server
//! (its own socket, so parallel tests never meet) running one program in a
//! window of a fixed size. Keys go in with `send-keys`; what an operator
//! would see comes out with `capture-pane`. The server is killed on drop.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::harness::wait_until;

pub struct Terminal {
    socket: String,
}

impl Terminal {
    /// Runs `command` (a shell command line) in a `cols`x`rows` window.
    pub fn start(name: &str, command: &str, cols: u16, rows: u16) -> Result<Terminal> {
        let socket = format!("shoal-test-{name}-{}", std::process::id());
        let terminal = Terminal { socket };
        terminal.tmux(&[
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            command,
        ])?;
        Ok(terminal)
    }

    fn tmux(&self, args: &[&str]) -> Result<String> {
        let output = std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .context("running tmux (apt-get install tmux)")?;
        if !output.status.success() {
            bail!(
                "tmux {args:?}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).to_string())
    }

    /// The screen as text.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "main"])
            .unwrap_or_default()
    }

    /// Sends tmux key names (`Enter`, `Escape`, `BSpace`, `C-d`) or text.
    pub fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        self.tmux(&args)?;
        Ok(())
    }

    /// Sends text literally, each character a key press.
    pub fn type_text(&self, text: &str) -> Result<()> {
        self.tmux(&["send-keys", "-t", "main", "-l", text])?;
        Ok(())
    }

    /// Waits until the screen contains `text`; the error shows the screen.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> Result<()> {
        wait_until(timeout, || Ok(self.screen().contains(text)))
            .with_context(|| format!("waiting for {text:?} on screen:\n{}", self.screen()))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

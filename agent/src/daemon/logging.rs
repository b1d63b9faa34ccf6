//! The log subscriber. Under systemd, events go to journald with their
//! fields as journal fields (`journalctl -u shoald TASK=…`); elsewhere they
//! are plain lines on stderr. The filter can be swapped while running, so
//! SIGHUP changes the level without a restart.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

pub struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
    /// Where events go, for the startup line.
    pub sink: &'static str,
}

pub fn parse_filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| {
        format!("log level {level:?} is not valid ({e}): write e.g. \"info\" or \"info,shoal_agent=debug\"")
    })
}

/// Installs the global subscriber.
pub fn init(level: &str) -> Result<LogControl, String> {
    let (filter, handle) = reload::Layer::new(parse_filter(level)?);
    let journald = if stderr_is_journal() {
        tracing_journald::layer().ok()
    } else {
        None
    };
    let sink = if journald.is_some() {
        "journald"
    } else {
        "stderr"
    };
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(LogControl {
        filter: handle,
        sink,
    })
}

impl LogControl {
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = parse_filter(level)?;
        self.filter
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))
    }
}

/// systemd connects stderr to the journal and says so in `JOURNAL_STREAM`
/// (`device:inode`); a redirected stderr keeps the variable but not the
/// identity, and then the lines belong where stderr now goes.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", stderr.dev(), stderr.ino())
}

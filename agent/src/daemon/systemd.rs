//! The sd_notify protocol, spoken directly: one datagram per state change
//! to the socket systemd names in `NOTIFY_SOCKET`. No libsystemd needed.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Tells systemd how the service is doing. Without `NOTIFY_SOCKET` (not
/// under systemd, or `Type=` is not `notify`) every call does nothing.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_string_lossy();
        let addr = match path.strip_prefix('@') {
            // A leading '@' names a socket in the abstract namespace.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => SocketAddr::from_pathname(path.as_ref()),
        };
        let addr = match addr {
            Ok(addr) => addr,
            Err(e) => {
                tracing::warn!(socket = %path, error = %e, "NOTIFY_SOCKET is not a usable address");
                return None;
            }
        };
        match UnixDatagram::unbound() {
            Ok(socket) => Some(Notifier { socket, addr }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a socket to notify systemd");
                None
            }
        }
    }

    /// Sends `state`, e.g. `READY=1` or `STOPPING=1`. A lost notification
    /// is logged, never fatal: systemd's timeouts are the fallback.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(state, error = %e, "notifying systemd failed");
        }
    }
}

/// How often systemd wants `WATCHDOG=1`: half the `WatchdogSec=` it set,
/// so one late tick does not get the service killed. `None` when the
/// watchdog is off or meant for another process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy() != std::process::id().to_string()
    {
        return None;
    }
    let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (micros > 0).then(|| Duration::from_micros(micros / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_arrives_as_one_datagram() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path)?;
        let notifier = Notifier {
            socket: UnixDatagram::unbound()?,
            addr: SocketAddr::from_pathname(&path)?,
        };
        notifier.notify("READY=1\nSTATUS=serving");
        let mut buffer = [0u8; 64];
        let read = systemd.recv(&mut buffer)?;
        assert_eq!(&buffer[..read], b"READY=1\nSTATUS=serving");
        Ok(())
    }
}

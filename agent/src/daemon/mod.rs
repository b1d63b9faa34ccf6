//! Running `shoald` as a system service: the configuration file, the log
//! subscriber (journald under systemd, stderr otherwise, level reloadable
//! on SIGHUP), and the sd_notify protocol.

pub mod config;
pub mod logging;
pub mod systemd;

//! `/etc/shoal/shoald.toml`: the same settings as `shoald`'s flags, for
//! hosts where a unit file should not carry them. A flag (or its
//! environment variable) wins over the file; the file wins over the
//! built-in default.
//!
//! ```toml
//! data_dir = "/var/lib/shoal"
//! socket = "/run/shoal/shoald.sock"
//! hostname = "node-1"
//! executor = "docker"          # auto | docker | process | sim
//! log_level = "info"           # reloaded on SIGHUP
//! metrics_addr = "127.0.0.1:9323"
//! threads = 2                  # default: one per core
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::node::ExecutorChoice;

/// Read when `--config` is not given; its absence is fine.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/shoal/shoald.toml";

/// The log filter when neither flag, environment nor file sets one.
/// openraft reports every retried replication at error or warn level;
/// Shoal reports what matters of those itself.
pub const DEFAULT_LOG_LEVEL: &str =
    "info,openraft=error,openraft::replication=off,openraft::engine=off";

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub hostname: Option<String>,
    pub executor: Option<String>,
    pub sim_delay: Option<String>,
    pub log_level: Option<String>,
    pub metrics_addr: Option<String>,
    pub threads: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist: create it, or drop --config to use flags only")]
    Missing { path: PathBuf },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The file's settings and where they came from (`None`: no file).
#[derive(Debug, Default)]
pub struct Loaded {
    pub file: FileConfig,
    pub path: Option<PathBuf>,
}

impl Loaded {
    /// Reads `explicit`, or the default path if it exists.
    pub fn read(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
        let path = match explicit {
            Some(path) if !path.exists() => {
                return Err(ConfigError::Missing {
                    path: path.to_path_buf(),
                });
            }
            Some(path) => path.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => DEFAULT_CONFIG_PATH.into(),
            None => return Ok(Loaded::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file = parse(&path, &text)?;
        Ok(Loaded {
            file,
            path: Some(path),
        })
    }

    fn invalid(&self, key: &'static str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone().unwrap_or_default(),
            key,
            message,
        }
    }

    pub fn executor(&self) -> Result<Option<ExecutorChoice>, ConfigError> {
        self.file
            .executor
            .as_deref()
            .map(|text| parse_executor(text).map_err(|m| self.invalid("executor", m)))
            .transpose()
    }

    pub fn sim_delay(&self) -> Result<Option<Duration>, ConfigError> {
        self.file
            .sim_delay
            .as_deref()
            .map(|text| {
                humantime::parse_duration(text)
                    .map_err(|e| self.invalid("sim_delay", format!("{e}: write e.g. \"200ms\"")))
            })
            .transpose()
    }

    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.file
            .metrics_addr
            .as_deref()
            .map(|text| {
                text.parse().map_err(|e| {
                    self.invalid(
                        "metrics_addr",
                        format!("{e}: write e.g. \"127.0.0.1:9323\""),
                    )
                })
            })
            .transpose()
    }

    pub fn threads(&self) -> Result<Option<usize>, ConfigError> {
        match self.file.threads {
            Some(0) => Err(self.invalid(
                "threads",
                "0 threads cannot run the agent: use at least 1, or drop the key for one per core"
                    .into(),
            )),
            threads => Ok(threads),
        }
    }
}

fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })
}

/// Runtime threads when nothing sets them: those of an agent alone on its
/// machine, a thread per core it may use.
pub fn default_threads() -> usize {
    shoal_proto::threads_per_agent(1)
}

pub fn parse_threads(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!(
            "{text:?} is not a thread count: use a whole number from 1, e.g. 2"
        )),
        Ok(threads) => Ok(threads),
    }
}

pub fn parse_executor(text: &str) -> Result<ExecutorChoice, String> {
    match text {
        "auto" => Ok(ExecutorChoice::Auto),
        "docker" => Ok(ExecutorChoice::Docker),
        "process" => Ok(ExecutorChoice::Process),
        "sim" => Ok(ExecutorChoice::Sim),
        other => Err(format!(
            "unknown executor {other:?}: use auto, docker, process or sim"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_a_key() -> Result<(), ConfigError> {
        let file = parse(
            Path::new("shoald.toml"),
            r#"
            data_dir = "/srv/shoal"
            socket = "/run/shoal.sock"
            hostname = "edge-1"
            executor = "process"
            sim_delay = "50ms"
            log_level = "debug"
            metrics_addr = "127.0.0.1:9323"
            threads = 1
            "#,
        )?;
        let loaded = Loaded {
            file,
            path: Some("shoald.toml".into()),
        };
        assert_eq!(loaded.file.data_dir, Some(PathBuf::from("/srv/shoal")));
        assert_eq!(loaded.executor()?, Some(ExecutorChoice::Process));
        assert_eq!(loaded.sim_delay()?, Some(Duration::from_millis(50)));
        assert_eq!(
            loaded.metrics_addr()?,
            Some(SocketAddr::from(([127, 0, 0, 1], 9323)))
        );
        assert_eq!(loaded.threads()?, Some(1));
        Ok(())
    }

    #[test]
    fn a_misspelt_key_is_named() {
        let error = parse(Path::new("/etc/shoal/shoald.toml"), "data-dir = \"/x\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("/etc/shoal/shoald.toml"), "{error}");
        assert!(error.contains("data-dir"), "{error}");
    }

    /// `file` as read from the default path.
    fn in_default_file(file: FileConfig) -> Loaded {
        Loaded {
            file,
            path: Some(DEFAULT_CONFIG_PATH.into()),
        }
    }

    fn message<T>(result: Result<T, ConfigError>) -> String {
        result.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_bad_value_names_the_key_and_an_example() {
        let loaded = in_default_file(FileConfig {
            metrics_addr: Some("localhost".into()),
            ..Default::default()
        });
        let error = message(loaded.metrics_addr());
        assert!(error.contains("metrics_addr"), "{error}");
        assert!(error.contains("127.0.0.1:9323"), "{error}");
    }

    #[test]
    fn zero_threads_is_refused_with_the_fix() {
        let loaded = in_default_file(FileConfig {
            threads: Some(0),
            ..Default::default()
        });
        let error = message(loaded.threads());
        assert!(error.contains("threads"), "{error}");
        assert!(error.contains("at least 1"), "{error}");
        let flag = parse_threads("0").err().unwrap_or_default();
        assert!(flag.contains("from 1"), "{flag}");
        assert_eq!(parse_threads("3"), Ok(3));
        assert!(parse_threads("two").is_err());
    }

    #[test]
    fn an_explicit_file_must_exist() {
        let error = Loaded::read(Some(Path::new("/nonexistent/shoald.toml")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("/nonexistent/shoald.toml"), "{error}");
    }
}

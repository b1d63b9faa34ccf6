//! The process runtime: a task's command runs as a child process of the
//! agent, with no isolation. It is the fallback where no Docker engine
//! answers, and the demo's runtime. The image is not used: the command
//! (entrypoint followed by arguments) must name a program on the host.
//!
//! Each task gets `<data dir>/tasks/<task id>/` holding its output
//! (`output.log`, one line per record: `<unix ns> <o|e> <text>`, rotated
//! to `output.log.1` past 16 MiB) and, once
//! it exits, its exit code (`exit`), so logs and outcomes survive an agent
//! restart even though the processes do not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use super::{EngineInfo, ExecError, Executor, Existing, Exit, LogEntry, LogOptions, LogSource};
use crate::store::{Health, Task};

const OUTPUT_FILE: &str = "output.log";
/// The previous output file, after a rotation.
const ROTATED_FILE: &str = "output.log.1";
/// Output kept per task: the current file rotates past this size, so a
/// chatty task holds at most twice this on disk.
const ROTATE_AT: u64 = 16 * 1024 * 1024;
const EXIT_FILE: &str = "exit";

struct Running {
    pid: u32,
    exit: watch::Receiver<Option<Exit>>,
}

pub struct ProcessExecutor {
    node_id: String,
    dir: PathBuf,
    /// Output file size at which it rotates.
    rotate_at: u64,
    running: Mutex<HashMap<String, Arc<Running>>>,
}

impl ProcessExecutor {
    pub fn new(node_id: &str, data_dir: PathBuf) -> Self {
        ProcessExecutor {
            node_id: node_id.to_string(),
            dir: data_dir.join("tasks"),
            rotate_at: ROTATE_AT,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.dir.join(task_id)
    }

    fn argv(task: &Task) -> Result<Vec<String>, ExecError> {
        let container = &task.spec.container;
        let argv: Vec<String> = container
            .command
            .iter()
            .chain(container.args.iter())
            .cloned()
            .collect();
        if argv.is_empty() {
            return Err(ExecError::Rejected(format!(
                "task {} has no command: the process executor runs commands on the host and \
                 cannot run image {:?}; give the service a command",
                task.meta.id, container.image
            )));
        }
        Ok(argv)
    }

    fn recorded_exit(&self, task_id: &str) -> Option<Exit> {
        let text = std::fs::read_to_string(self.task_dir(task_id).join(EXIT_FILE)).ok()?;
        let code = text.trim().parse().ok()?;
        Some(Exit {
            code,
            message: None,
        })
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Signals the task's whole process group: the child leads its own group
/// (see `start`), so whatever it forked gets the signal too.
fn signal_group(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    // Already gone is fine: the goal is that it does not run.
    let _ = rustix::process::kill_process_group(pid, signal);
}

fn runtime_error(what: &str, e: impl std::fmt::Display) -> ExecError {
    ExecError::Runtime(format!("{what}: {e}"))
}

impl Executor for ProcessExecutor {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn describe(&self) -> BoxFuture<'_, EngineInfo> {
        async {
            let mut info = EngineInfo {
                os: std::env::consts::OS.into(),
                arch: std::env::consts::ARCH.into(),
                ..Default::default()
            };
            info.resources.nano_cpus = std::thread::available_parallelism()
                .map(|n| n.get() as i64 * 1_000_000_000)
                .unwrap_or(0);
            info
        }
        .boxed()
    }

    fn prepare<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<String, ExecError>> {
        async move {
            Self::argv(task)?;
            let dir = self.task_dir(&task.meta.id);
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| runtime_error(&format!("creating {}", dir.display()), e))?;
            Ok(format!("process-{}", task.meta.id))
        }
        .boxed()
    }

    fn start<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            if self.running.lock().contains_key(&task.meta.id) {
                return Ok(());
            }
            let argv = Self::argv(task)?;
            let container = &task.spec.container;
            let dir = self.task_dir(&task.meta.id);
            let mut command = tokio::process::Command::new(&argv[0]);
            command
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .env("SHOAL_TASK_ID", &task.meta.id)
                .env("SHOAL_SERVICE_NAME", &task.service_name)
                .env("SHOAL_TASK_SLOT", task.slot.to_string())
                .env("SHOAL_NODE_ID", &self.node_id);
            for pair in &container.env {
                if let Some((k, v)) = pair.split_once('=') {
                    command.env(k, v);
                }
            }
            if !container.dir.is_empty() {
                command.current_dir(&container.dir);
            }
            let mut child = command
                .spawn()
                .map_err(|e| ExecError::Rejected(format!("cannot run {:?}: {e}", argv[0])))?;
            let pid = child.id().unwrap_or(0);
            let (exit_tx, exit_rx) = watch::channel(None);
            let output = Output::open(dir.clone(), self.rotate_at)
                .await
                .map_err(|e| runtime_error("opening the task's output file", e))?;
            let output = Arc::new(tokio::sync::Mutex::new(output));
            let mut copiers = Vec::new();
            if let Some(stdout) = child.stdout.take() {
                copiers.push(tokio::spawn(copy_lines(stdout, 'o', output.clone())));
            }
            if let Some(stderr) = child.stderr.take() {
                copiers.push(tokio::spawn(copy_lines(stderr, 'e', output)));
            }
            let exit_path = dir.join(EXIT_FILE);
            tokio::spawn(async move {
                let status = child.wait().await;
                for copier in copiers {
                    let _ = copier.await;
                }
                let exit = match status {
                    Ok(status) => match (
                        status.code(),
                        std::os::unix::process::ExitStatusExt::signal(&status),
                    ) {
                        (Some(code), _) => Exit {
                            code,
                            message: None,
                        },
                        (None, Some(signal)) => Exit {
                            code: 128 + signal,
                            message: Some(format!("killed by signal {signal}")),
                        },
                        (None, None) => Exit {
                            code: -1,
                            message: None,
                        },
                    },
                    Err(e) => Exit {
                        code: -1,
                        message: Some(format!("waiting for the process failed: {e}")),
                    },
                };
                let _ = tokio::fs::write(&exit_path, exit.code.to_string()).await;
                let _ = exit_tx.send(Some(exit));
            });
            self.running.lock().insert(
                task.meta.id.clone(),
                Arc::new(Running { pid, exit: exit_rx }),
            );
            Ok(())
        }
        .boxed()
    }

    fn wait<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Exit, ExecError>> {
        async move {
            let running = self.running.lock().get(&task.meta.id).cloned();
            let Some(running) = running else {
                return self
                    .recorded_exit(&task.meta.id)
                    .ok_or_else(|| ExecError::NotFound(task.meta.id.clone()));
            };
            let mut exit = running.exit.clone();
            loop {
                if let Some(exit) = exit.borrow_and_update().clone() {
                    return Ok(exit);
                }
                if exit.changed().await.is_err() {
                    return Err(ExecError::NotFound(task.meta.id.clone()));
                }
            }
        }
        .boxed()
    }

    fn health<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Health, ExecError>> {
        async move {
            let Some(check) = task
                .spec
                .container
                .healthcheck
                .as_ref()
                .filter(|_| !task.spec.container.no_healthcheck)
            else {
                return Ok(Health::None);
            };
            let command = match check.test.first().map(String::as_str) {
                Some("CMD-SHELL") => vec!["sh".to_string(), "-c".into(), check.test[1..].join(" ")],
                Some("CMD") => check.test[1..].to_vec(),
                Some("NONE") | None => return Ok(Health::None),
                Some(_) => check.test.clone(),
            };
            let Some((program, args)) = command.split_first() else {
                return Ok(Health::None);
            };
            let timeout = Duration::from_millis(check.timeout_ms.max(1000));
            let run = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            Ok(match tokio::time::timeout(timeout, run).await {
                Ok(Ok(status)) if status.success() => Health::Healthy,
                _ => Health::Unhealthy,
            })
        }
        .boxed()
    }

    fn stop<'a>(&'a self, task: &'a Task, grace: Duration) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            let running = self.running.lock().get(&task.meta.id).cloned();
            let Some(running) = running else {
                return Ok(());
            };
            let exited = running.exit.borrow().is_some();
            if exited {
                return Ok(());
            }
            signal_group(running.pid, rustix::process::Signal::TERM);
            let mut exit = running.exit.clone();
            let in_time = tokio::time::timeout(grace, async {
                let _ = exit.wait_for(Option::is_some).await;
            })
            .await
            .is_ok();
            if !in_time {
                signal_group(running.pid, rustix::process::Signal::KILL);
                let _ = exit.wait_for(Option::is_some).await.map(|_| ());
            }
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            let running = self.running.lock().remove(task_id);
            if let Some(running) = running
                && running.exit.borrow().is_none()
            {
                signal_group(running.pid, rustix::process::Signal::KILL);
            }
            match tokio::fs::remove_dir_all(self.task_dir(task_id)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(runtime_error("removing the task directory", e)),
            }
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Existing>, ExecError>> {
        async move {
            let mut found = Vec::new();
            let mut entries = match tokio::fs::read_dir(&self.dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
                Err(e) => return Err(runtime_error("listing task directories", e)),
            };
            while let Ok(Some(entry)) = entries.next_entry().await {
                let task_id = entry.file_name().to_string_lossy().into_owned();
                let running = self.running.lock().get(&task_id).cloned();
                let exit_code = match &running {
                    Some(r) => r.exit.borrow().as_ref().map(|e| e.code),
                    // After an agent restart the process is gone with it.
                    None => Some(self.recorded_exit(&task_id).map_or(-1, |e| e.code)),
                };
                found.push(Existing {
                    container_id: format!("process-{task_id}"),
                    running: exit_code.is_none(),
                    exit_code,
                    task_id,
                });
            }
            Ok(found)
        }
        .boxed()
    }

    fn logs<'a>(
        &'a self,
        task: &'a Task,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<BoxStream<'static, LogEntry>, ExecError>> {
        async move {
            let dir = self.task_dir(&task.meta.id);
            let path = dir.join(OUTPUT_FILE);
            let read = |path: PathBuf| async move {
                match tokio::fs::read_to_string(&path).await {
                    Ok(text) => Ok(text),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                    Err(e) => Err(runtime_error("reading the task's output", e)),
                }
            };
            let rotated = read(dir.join(ROTATED_FILE)).await?;
            let current = read(path.clone()).await?;
            let offset = current.len() as u64;
            let history = rotated + &current;
            let wanted = move |entry: &LogEntry| {
                options
                    .since_ns
                    .is_none_or(|since| entry.timestamp_ns >= since)
                    && match entry.source {
                        LogSource::Stdout => options.stdout,
                        LogSource::Stderr => options.stderr,
                    }
            };
            let mut lines: Vec<LogEntry> = history
                .lines()
                .filter_map(parse_record)
                .filter(|e| wanted(e))
                .collect();
            if let Some(tail) = options.tail {
                let skip = lines.len().saturating_sub(tail as usize);
                lines.drain(..skip);
            }
            let history = futures::stream::iter(lines);
            let running = self.running.lock().get(&task.meta.id).cloned();
            match running.filter(|_| options.follow) {
                None => Ok(history.boxed()),
                Some(running) => {
                    let follow = follow_file(path, offset, running.exit.clone()).filter(move |e| {
                        let keep = wanted(e);
                        async move { keep }
                    });
                    Ok(history.chain(follow).boxed())
                }
            }
        }
        .boxed()
    }
}

/// The task's output file and how much it holds, shared by the stdout
/// and stderr copiers.
struct Output {
    dir: PathBuf,
    file: tokio::fs::File,
    size: u64,
    rotate_at: u64,
}

impl Output {
    async fn open(dir: PathBuf, rotate_at: u64) -> std::io::Result<Self> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(OUTPUT_FILE))
            .await?;
        let size = file.metadata().await?.len();
        Ok(Output {
            dir,
            file,
            size,
            rotate_at,
        })
    }

    async fn write(&mut self, record: &[u8]) -> std::io::Result<()> {
        if self.size + record.len() as u64 > self.rotate_at {
            tokio::fs::rename(self.dir.join(OUTPUT_FILE), self.dir.join(ROTATED_FILE)).await?;
            *self = Output::open(self.dir.clone(), self.rotate_at).await?;
        }
        self.file.write_all(record).await?;
        self.size += record.len() as u64;
        Ok(())
    }
}

/// Copies a pipe into the output file, one timestamped record per line.
async fn copy_lines(
    pipe: impl tokio::io::AsyncRead + Unpin,
    source: char,
    output: Arc<tokio::sync::Mutex<Output>>,
) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let record = format!("{} {source} {line}\n", now_ns());
        if output.lock().await.write(record.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn parse_record(line: &str) -> Option<LogEntry> {
    let (ts, rest) = line.split_once(' ')?;
    let (source, data) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(LogEntry {
        timestamp_ns: ts.parse().ok()?,
        source: if source == "e" {
            LogSource::Stderr
        } else {
            LogSource::Stdout
        },
        data: data.as_bytes().to_vec(),
    })
}

/// New records appended to `path` after `offset`, until the process exits
/// and everything it wrote has been read.
fn follow_file(
    path: PathBuf,
    offset: u64,
    exit: watch::Receiver<Option<Exit>>,
) -> BoxStream<'static, LogEntry> {
    let state = (path, offset, exit, Vec::<LogEntry>::new(), false);
    futures::stream::unfold(
        state,
        |(path, mut offset, exit, mut queued, mut done)| async move {
            loop {
                if let Some(entry) = queued.pop() {
                    return Some((entry, (path, offset, exit, queued, done)));
                }
                if done {
                    return None;
                }
                let exited = exit.borrow().is_some();
                let current_len = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
                let mut fresh = String::new();
                if current_len < offset {
                    // Rotated since the last read: finish the old file
                    // first, then start the new one from its beginning.
                    let rotated = path.with_file_name(ROTATED_FILE);
                    let rest = read_from(&rotated, offset).await;
                    let complete = rest.rfind('\n').map_or(0, |i| i + 1);
                    fresh.push_str(&rest[..complete]);
                    offset = 0;
                    let mut more: Vec<LogEntry> = fresh.lines().filter_map(parse_record).collect();
                    more.reverse();
                    queued = more;
                    fresh.clear();
                    if !queued.is_empty() {
                        continue;
                    }
                }
                let fresh = fresh + &read_from(&path, offset).await;
                offset += fresh.len() as u64;
                // Only whole lines; a partial one waits for the next read.
                let complete = fresh.rfind('\n').map_or(0, |i| i + 1);
                offset -= (fresh.len() - complete) as u64;
                queued = fresh[..complete].lines().filter_map(parse_record).collect();
                queued.reverse();
                if exited {
                    done = true;
                } else if queued.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        },
    )
    .boxed()
}

async fn read_from(path: &Path, offset: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return String::new();
    };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return String::new();
    }
    let mut text = String::new();
    let _ = file.read_to_string(&mut text).await;
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Meta;

    fn task(id: &str, argv: &[&str]) -> Task {
        let mut task = Task {
            meta: Meta::new(id.into(), 0),
            ..Default::default()
        };
        task.spec.container.args = argv.iter().map(|s| s.to_string()).collect();
        task
    }

    fn all_output() -> LogOptions {
        LogOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_process_runs_exits_and_leaves_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        let t = task(
            "t1",
            &["sh", "-c", "echo one; echo two >&2; echo three; exit 3"],
        );
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        assert_eq!(exec.wait(&t).await.unwrap().code, 3);
        let lines: Vec<LogEntry> = exec.logs(&t, all_output()).await.unwrap().collect().await;
        let text: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.data).into_owned())
            .collect();
        assert_eq!(text.len(), 3);
        assert!(
            lines
                .iter()
                .any(|l| l.source == LogSource::Stderr && l.data == b"two")
        );
        let tail: Vec<LogEntry> = exec
            .logs(
                &t,
                LogOptions {
                    tail: Some(1),
                    ..all_output()
                },
            )
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(tail.len(), 1);
        let listed = exec.list().await.unwrap();
        assert_eq!(listed[0].exit_code, Some(3));
        exec.remove("t1").await.unwrap();
        assert!(exec.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stop_ends_the_whole_process_group_and_follow_sees_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        // The trap ignores SIGTERM, so only SIGKILL after the grace ends it.
        let t = task(
            "t2",
            &["sh", "-c", "trap '' TERM; echo ready; sleep 30 & wait"],
        );
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        let mut follow = exec
            .logs(
                &t,
                LogOptions {
                    follow: true,
                    ..all_output()
                },
            )
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), follow.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.data, b"ready");
        let started = std::time::Instant::now();
        exec.stop(&t, Duration::from_millis(300)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let exit = exec.wait(&t).await.unwrap();
        assert_eq!(exit.code, 128 + libc::SIGKILL);
        exec.remove("t2").await.unwrap();
    }

    #[tokio::test]
    async fn output_rotates_and_history_spans_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        exec.rotate_at = 4096;
        let t = task(
            "t4",
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo line $i; done",
            ],
        );
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        assert_eq!(exec.wait(&t).await.unwrap().code, 0);
        let task_dir = dir.path().join("tasks").join("t4");
        let current = std::fs::metadata(task_dir.join(OUTPUT_FILE)).unwrap().len();
        assert!(current <= 4096, "{current}");
        assert!(task_dir.join(ROTATED_FILE).exists());
        let lines: Vec<LogEntry> = exec.logs(&t, all_output()).await.unwrap().collect().await;
        // The two files hold the newest lines, in order, ending at the last.
        assert!(lines.len() > 100, "{}", lines.len());
        assert_eq!(
            lines.last().map(|l| l.data.clone()),
            Some(b"line 400".to_vec())
        );
        let numbers: Vec<u32> = lines
            .iter()
            .filter_map(|l| {
                String::from_utf8_lossy(&l.data)
                    .strip_prefix("line ")
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "out of order: {numbers:?}"
        );
    }

    #[tokio::test]
    async fn a_task_without_a_command_is_rejected_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        let mut t = task("t3", &[]);
        t.spec.container.image = "nginx".into();
        let err = exec.prepare(&t).await.unwrap_err();
        assert!(matches!(err, ExecError::Rejected(_)));
        assert!(
            err.to_string().contains("give the service a command"),
            "{err}"
        );
    }
}

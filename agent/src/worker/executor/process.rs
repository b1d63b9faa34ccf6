//! The process runtime: a task's command runs as a child process of the
//! agent, with no isolation. It is the fallback where no Docker engine
//! answers, and the demo's runtime. The image is not used: the command
//! (entrypoint followed by arguments) must name a program on the host.
//!
//! Each task gets `<data dir>/tasks/<task id>/` holding its output
//! (`output.log`, one line per record: `<unix ns> <o|e> <bytes>`, rotated
//! to `output.log.1` past 16 MiB), while it runs its process id (`pid`),
//! and once it exits its exit code (`exit`), so logs and outcomes survive
//! an agent restart even though the processes do not: a process left
//! behind by an agent that died is killed when the next one finds it.
//!
//! Each task's process leads its own process group, like a container's
//! init: stopping it signals the whole group, and when it exits whatever
//! it left behind in the group is killed.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
/// `<pid> <start time>` while the task runs. The start time tells the
/// task's process from an unrelated one that reused its pid.
const PID_FILE: &str = "pid";
/// Longer output lines are split into records of this size, as Docker
/// splits them, so that one endless line cannot exhaust memory.
const MAX_LINE: usize = 16 * 1024;
/// How long the output copiers may go on after the task's process exits.
/// Its group is killed then, but a process that moved to a group of its
/// own can hold the pipes open forever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How often a log follower looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

// Docker's health check defaults, for the fields a spec leaves at zero.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_RETRIES: u32 = 3;

struct Running {
    pid: u32,
    exit: watch::Receiver<Option<Exit>>,
    /// The checker's verdict; None when the task has no health check.
    health: Option<watch::Receiver<Health>>,
}

pub struct ProcessExecutor {
    node_id: String,
    dir: PathBuf,
    /// Output file size at which it rotates.
    rotate_at: u64,
    running: Mutex<HashMap<String, Arc<Running>>>,
}

/// A task's health check, with Docker's defaults filled in.
#[derive(Clone)]
struct HealthCheck {
    program: String,
    args: Vec<String>,
    interval: Duration,
    timeout: Duration,
    retries: u32,
    start_period: Duration,
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

    /// The program to run and its arguments: the command (the entrypoint)
    /// followed by the args.
    fn argv(task: &Task) -> Result<(String, Vec<String>), ExecError> {
        let container = &task.spec.container;
        let mut argv = container
            .command
            .iter()
            .chain(container.args.iter())
            .cloned();
        match argv.next() {
            Some(program) => Ok((program, argv.collect())),
            None => Err(ExecError::Rejected(format!(
                "task {} has no command: the process executor runs commands on the host and \
                 cannot run image {:?}; give the service a command",
                task.meta.id, container.image
            ))),
        }
    }

    /// The task's health check, if it has one a process can run. An empty
    /// test means "the image's", and processes have no image.
    fn health_check(task: &Task) -> Result<Option<HealthCheck>, ExecError> {
        let container = &task.spec.container;
        let Some(check) = container
            .healthcheck
            .as_ref()
            .filter(|_| !container.no_healthcheck)
        else {
            return Ok(None);
        };
        let test: Vec<&str> = check.test.iter().map(String::as_str).collect();
        let (program, args) = match test.as_slice() {
            [] | ["NONE", ..] => return Ok(None),
            ["CMD", program, args @ ..] => (
                program.to_string(),
                args.iter().map(|a| a.to_string()).collect(),
            ),
            ["CMD-SHELL", command @ ..] if !command.is_empty() => {
                ("sh".to_string(), vec!["-c".to_string(), command.join(" ")])
            }
            _ => {
                return Err(ExecError::Rejected(format!(
                    "task {}: health check test {:?} is not understood; write it as \
                     [\"CMD\", program, args...] or [\"CMD-SHELL\", command]",
                    task.meta.id, check.test
                )));
            }
        };
        let or = |ms: u64, default: Duration| {
            if ms == 0 {
                default
            } else {
                Duration::from_millis(ms)
            }
        };
        Ok(Some(HealthCheck {
            program,
            args,
            interval: or(check.interval_ms, DEFAULT_HEALTH_INTERVAL),
            timeout: or(check.timeout_ms, DEFAULT_HEALTH_TIMEOUT),
            retries: if check.retries == 0 {
                DEFAULT_HEALTH_RETRIES
            } else {
                check.retries
            },
            start_period: Duration::from_millis(check.start_period_ms),
        }))
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

/// A command in the task's environment and directory, leading a process
/// group of its own; used for the task's process and its health checks.
fn task_command(
    node_id: &str,
    task: &Task,
    program: &str,
    args: &[String],
) -> tokio::process::Command {
    let container = &task.spec.container;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .env("SHOAL_TASK_ID", &task.meta.id)
        .env("SHOAL_SERVICE_NAME", &task.service_name)
        .env("SHOAL_TASK_SLOT", task.slot.to_string())
        .env("SHOAL_NODE_ID", node_id);
    for pair in &container.env {
        // A bare name unsets the variable, as in a container's env.
        match pair.split_once('=') {
            Some((k, v)) => command.env(k, v),
            None => command.env_remove(pair),
        };
    }
    if !container.dir.is_empty() {
        command.current_dir(&container.dir);
    }
    command
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
    // Pid 0 would mean the agent's own group.
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    // Already gone is fine: the goal is that it does not run.
    let _ = rustix::process::kill_process_group(pid, signal);
}

/// When a process started, in clock ticks since boot, if it still exists
/// and leads its process group; None where there is no /proc.
fn group_leader_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count fields
    // after it. Field 3 of proc(5) is the first after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let group: u32 = fields.get(5 - 3)?.parse().ok()?;
    if group != pid {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// Kills every task process an agent with this data directory left
/// running, e.g. after it was killed. For tooling that removes a node for
/// good (test clusters, the demo); a running agent kills its own orphans
/// as it meets them.
pub fn kill_left_processes(data_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(data_dir.join("tasks")) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| kill_orphan(&entry.path()))
        .count()
}

/// Kills what a task's process left running when an earlier life of the
/// agent ended without stopping it. It cannot be adopted (it is no child
/// of this agent, so it cannot be waited for) and must not run alongside
/// a replacement.
/// Returns whether it killed one.
fn kill_orphan(task_dir: &Path) -> bool {
    let pid_file = task_dir.join(PID_FILE);
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        return false;
    };
    let mut killed = false;
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    if let (Some(Ok(pid)), Some(Ok(started))) = (fields.next(), fields.next())
        && let Ok(pid) = u32::try_from(pid)
        // Only if the pid still names that process: after a reboot or
        // pid reuse it is somebody else's.
        && group_leader_start_time(pid) == Some(started)
    {
        tracing::warn!(pid, dir = %task_dir.display(), "killing a task's process left running by an earlier agent");
        signal_group(pid, rustix::process::Signal::KILL);
        killed = true;
    }
    let _ = std::fs::remove_file(pid_file);
    killed
}

fn runtime_error(what: &str, e: impl std::fmt::Display) -> ExecError {
    ExecError::Runtime(format!("{what}: {e}"))
}

fn total_memory_bytes() -> i64 {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<i64>()
                .ok()
        })
        .map_or(0, |kib| kib.saturating_mul(1024))
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => Exit {
                code,
                message: None,
            },
            // The shell's convention, which containers follow too.
            (None, Some(signal)) => Exit {
                code: 128 + signal,
                message: Some(format!("killed by signal {signal}")),
            },
            (None, None) => Exit {
                code: -1,
                message: Some(format!("ended without an exit code: {status}")),
            },
        },
        Err(e) => Exit {
            code: -1,
            message: Some(format!("waiting for the process failed: {e}")),
        },
    }
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
            info.resources.memory_bytes = total_memory_bytes();
            info
        }
        .boxed()
    }

    fn prepare<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<String, ExecError>> {
        async move {
            Self::argv(task)?;
            Self::health_check(task)?;
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
            let (program, args) = Self::argv(task)?;
            let check = Self::health_check(task)?;
            let dir = self.task_dir(&task.meta.id);
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| runtime_error(&format!("creating {}", dir.display()), e))?;
            kill_orphan(&dir);
            // Opened before the process exists, so that failing here
            // leaves nothing running.
            let output = Output::open(dir.clone(), self.rotate_at)
                .await
                .map_err(|e| runtime_error("opening the task's output file", e))?;
            let mut command = task_command(&self.node_id, task, &program, &args);
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = command.spawn().map_err(|e| {
                let place = match task.spec.container.dir.as_str() {
                    "" => String::new(),
                    dir => format!(" in {dir}"),
                };
                let message = format!(
                    "task {}: cannot run {:?}{place}: {e}",
                    task.meta.id, program
                );
                match e.kind() {
                    // The spec names what is not there: running it again
                    // will not help.
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        ExecError::Rejected(format!(
                            "{message}; the command must name a program on this host"
                        ))
                    }
                    _ => ExecError::Runtime(message),
                }
            })?;
            // Only None once reaped, and nothing has waited for it yet.
            let pid = child.id().unwrap_or(0);
            if let Some(started) = group_leader_start_time(pid) {
                let record = format!("{pid} {started}\n");
                if let Err(e) = tokio::fs::write(dir.join(PID_FILE), record).await {
                    tracing::warn!(task = %task.meta.id, error = %e, "could not record the task's pid: an agent crash would leave it running");
                }
            }
            let output = Arc::new(tokio::sync::Mutex::new(output));
            let mut copiers = Vec::new();
            if let Some(stdout) = child.stdout.take() {
                copiers.push(tokio::spawn(copy_lines(stdout, 'o', output.clone())));
            }
            if let Some(stderr) = child.stderr.take() {
                copiers.push(tokio::spawn(copy_lines(stderr, 'e', output)));
            }
            let (exit_tx, exit_rx) = watch::channel(None);
            let health = check.map(|check| {
                let (health_tx, health_rx) = watch::channel(Health::Starting);
                tokio::spawn(run_health_checks(
                    self.node_id.clone(),
                    task.clone(),
                    check,
                    exit_rx.clone(),
                    health_tx,
                ));
                health_rx
            });
            tokio::spawn(async move {
                let status = child.wait().await;
                // Like a container whose init ended: what it left behind
                // goes too, and with it the hold on the output pipes.
                signal_group(pid, rustix::process::Signal::KILL);
                let drain = futures::future::join_all(copiers.iter_mut());
                if tokio::time::timeout(DRAIN_AFTER_EXIT, drain).await.is_err() {
                    copiers.iter().for_each(|c| c.abort());
                }
                let exit = describe_exit(status);
                let _ = tokio::fs::write(dir.join(EXIT_FILE), exit.code.to_string()).await;
                let _ = tokio::fs::remove_file(dir.join(PID_FILE)).await;
                exit_tx.send_replace(Some(exit));
            });
            self.running.lock().insert(
                task.meta.id.clone(),
                Arc::new(Running {
                    pid,
                    exit: exit_rx,
                    health,
                }),
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
            match exit.wait_for(Option::is_some).await {
                Ok(exit) => Ok(exit.clone().unwrap_or(Exit {
                    code: -1,
                    message: None,
                })),
                Err(_) => Err(ExecError::NotFound(task.meta.id.clone())),
            }
        }
        .boxed()
    }

    fn health<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Health, ExecError>> {
        async move {
            let running = self.running.lock().get(&task.meta.id).cloned();
            match running {
                Some(running) => Ok(running
                    .health
                    .as_ref()
                    .map_or(Health::None, |h| *h.borrow())),
                None if self.task_dir(&task.meta.id).exists() => Ok(Health::None),
                None => Err(ExecError::NotFound(task.meta.id.clone())),
            }
        }
        .boxed()
    }

    fn stop<'a>(&'a self, task: &'a Task, grace: Duration) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            let running = self.running.lock().get(&task.meta.id).cloned();
            let Some(running) = running else {
                kill_orphan(&self.task_dir(&task.meta.id));
                return Ok(());
            };
            let exited = running.exit.borrow().is_some();
            if exited {
                return Ok(());
            }
            signal_group(running.pid, rustix::process::Signal::TERM);
            let mut exit = running.exit.clone();
            let in_time = tokio::time::timeout(grace, exit.wait_for(Option::is_some).map(|_| ()))
                .await
                .is_ok();
            if !in_time {
                signal_group(running.pid, rustix::process::Signal::KILL);
                let _ = exit.wait_for(Option::is_some).map(|_| ()).await;
            }
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            let dir = self.task_dir(task_id);
            let running = self.running.lock().remove(task_id);
            match running {
                Some(running) => {
                    let exited = running.exit.borrow().is_some();
                    if !exited {
                        signal_group(running.pid, rustix::process::Signal::KILL);
                        // Its copiers write into the directory until it has
                        // exited; they are bounded by DRAIN_AFTER_EXIT.
                        let mut exit = running.exit.clone();
                        let _ = exit.wait_for(Option::is_some).map(|_| ()).await;
                    }
                }
                None => {
                    kill_orphan(&dir);
                }
            }
            // A killed process's last output, or the exit record of the
            // agent that started it, can land while the directory goes:
            // try again briefly rather than leave the task behind.
            let mut result = tokio::fs::remove_dir_all(&dir).await;
            for _ in 0..10 {
                match &result {
                    Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        result = tokio::fs::remove_dir_all(&dir).await;
                    }
                    _ => break,
                }
            }
            match result {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(runtime_error(
                    &format!("removing the task directory {}", dir.display()),
                    e,
                )),
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
                Err(e) => {
                    return Err(runtime_error(
                        &format!("listing task directories in {}", self.dir.display()),
                        e,
                    ));
                }
            };
            while let Ok(Some(entry)) = entries.next_entry().await {
                if !entry.file_type().await.is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let task_id = entry.file_name().to_string_lossy().into_owned();
                let running = self.running.lock().get(&task_id).cloned();
                let exit_code = match &running {
                    Some(r) => r.exit.borrow().as_ref().map(|e| e.code),
                    None => {
                        // Not ours: an earlier agent started it.
                        kill_orphan(&entry.path());
                        Some(self.recorded_exit(&task_id).map_or(-1, |e| e.code))
                    }
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
            if !dir.exists() {
                return Err(ExecError::NotFound(task.meta.id.clone()));
            }
            let reading = |e| runtime_error(&format!("reading the output in {}", dir.display()), e);
            // The current file is opened first and followed through the
            // same handle, so no line falls between history and follow.
            let mut current = match tokio::fs::File::open(dir.join(OUTPUT_FILE)).await {
                Ok(file) => Some(file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(reading(e)),
            };
            let mut history = match tokio::fs::read(dir.join(ROTATED_FILE)).await {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(reading(e)),
            };
            if let Some(file) = current.as_mut() {
                file.read_to_end(&mut history).await.map_err(reading)?;
            }
            // A record being written is finished by the follower.
            let complete = history
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let partial = history.split_off(complete);
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
                .split(|&b| b == b'\n')
                .filter_map(parse_record)
                .filter(|e| wanted(e))
                .collect();
            if let Some(tail) = options.tail {
                let skip = lines
                    .len()
                    .saturating_sub(usize::try_from(tail).unwrap_or(usize::MAX));
                lines.drain(..skip);
            }
            let history = futures::stream::iter(lines);
            let running = self.running.lock().get(&task.meta.id).cloned();
            match running.filter(|_| options.follow) {
                None => Ok(history.boxed()),
                Some(running) => {
                    let follower = Follower {
                        path: dir.join(OUTPUT_FILE),
                        file: current,
                        partial,
                        exit: running.exit.clone(),
                        queued: VecDeque::new(),
                        done: false,
                    };
                    let follow = follower.into_stream().filter(move |e| {
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

/// Runs a task's health check every interval while the task runs, as the
/// Docker engine does: healthy after a success, unhealthy after `retries`
/// failures in a row, failures in the start period not counting.
async fn run_health_checks(
    node_id: String,
    task: Task,
    check: HealthCheck,
    mut exit: watch::Receiver<Option<Exit>>,
    health: watch::Sender<Health>,
) {
    let started = Instant::now();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(check.interval) => {}
            _ = exit.wait_for(Option::is_some).map(|_| ()) => return,
        }
        let command = task_command(&node_id, &task, &check.program, &check.args);
        match run_check(command, check.timeout).await {
            Ok(()) => {
                failures = 0;
                health.send_replace(Health::Healthy);
            }
            Err(reason) => {
                tracing::debug!(task = %task.meta.id, %reason, "health check failed");
                if started.elapsed() >= check.start_period {
                    failures += 1;
                    if failures >= check.retries {
                        health.send_replace(Health::Unhealthy);
                    }
                }
            }
        }
    }
}

async fn run_check(mut command: tokio::process::Command, timeout: Duration) -> Result<(), String> {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| format!("cannot run: {e}"))?;
    let pid = child.id().unwrap_or(0);
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(status.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            // The check leads its own group: its children go with it.
            signal_group(pid, rustix::process::Signal::KILL);
            let _ = child.wait().await;
            Err(format!("timed out after {timeout:?}"))
        }
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
            // Whatever is still in flight lands in the old file before a
            // follower, seeing the new one, stops reading the old.
            self.file.flush().await?;
            tokio::fs::rename(self.dir.join(OUTPUT_FILE), self.dir.join(ROTATED_FILE)).await?;
            *self = Output::open(self.dir.clone(), self.rotate_at).await?;
        }
        self.file.write_all(record).await?;
        self.size += record.len() as u64;
        Ok(())
    }
}

/// Copies a pipe into the output file, one timestamped record per line.
/// Output is bytes, not necessarily text, and is kept as it came.
async fn copy_lines(
    pipe: impl tokio::io::AsyncRead + Unpin,
    source: char,
    output: Arc<tokio::sync::Mutex<Output>>,
) {
    let mut reader = BufReader::with_capacity(MAX_LINE, pipe);
    let mut line = Vec::with_capacity(128);
    let mut writable = true;
    loop {
        let buffered = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buffered) => buffered,
        };
        let room = MAX_LINE - line.len();
        let (take, ends_line) = match buffered.iter().position(|&b| b == b'\n') {
            Some(i) if i < room => (i + 1, true),
            _ => (buffered.len().min(room), false),
        };
        line.extend_from_slice(&buffered[..take]);
        reader.consume(take);
        if ends_line || line.len() >= MAX_LINE {
            if ends_line {
                line.pop();
            }
            writable = write_record(&output, source, &line, writable).await;
            line.clear();
        }
    }
    if !line.is_empty() {
        writable = write_record(&output, source, &line, writable).await;
    }
    if writable {
        // So that everything is on disk once the task is seen to exit.
        let _ = output.lock().await.file.flush().await;
    }
}

/// Writes one record, unless writing has failed before. The pipe is read
/// on regardless: a task whose output cannot be kept must not block on it.
async fn write_record(
    output: &tokio::sync::Mutex<Output>,
    source: char,
    data: &[u8],
    writable: bool,
) -> bool {
    if !writable {
        return false;
    }
    let mut record = format!("{} {source} ", now_ns()).into_bytes();
    record.extend_from_slice(data);
    record.push(b'\n');
    let mut output = output.lock().await;
    match output.write(&record).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(dir = %output.dir.display(), error = %e, "cannot write task output: dropping it from now on");
            false
        }
    }
}

fn parse_record(line: &[u8]) -> Option<LogEntry> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let timestamp_ns = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let source = match parts.next()? {
        b"e" => LogSource::Stderr,
        _ => LogSource::Stdout,
    };
    Some(LogEntry {
        timestamp_ns,
        source,
        data: parts.next().unwrap_or_default().to_vec(),
    })
}

/// Reads records appended to the output file after the history, through
/// rotations, until the process has exited and all it wrote is read.
struct Follower {
    path: PathBuf,
    /// The file being read; None until it exists.
    file: Option<tokio::fs::File>,
    /// The start of a record still being written.
    partial: Vec<u8>,
    exit: watch::Receiver<Option<Exit>>,
    queued: VecDeque<LogEntry>,
    done: bool,
}

impl Follower {
    fn into_stream(self) -> BoxStream<'static, LogEntry> {
        futures::stream::unfold(self, |mut follower| async move {
            loop {
                if let Some(entry) = follower.queued.pop_front() {
                    return Some((entry, follower));
                }
                if follower.done {
                    return None;
                }
                // Looked at before reading: output written before the exit
                // is then certain to be read on this round.
                let exited = follower.exit.borrow().is_some();
                if follower.read_more().await {
                    continue;
                }
                if exited {
                    follower.done = true;
                } else {
                    tokio::time::sleep(FOLLOW_POLL).await;
                }
            }
        })
        .boxed()
    }

    /// Queues what was appended since the last read; false when there was
    /// nothing new.
    async fn read_more(&mut self) -> bool {
        let Some(file) = self.file.as_mut() else {
            self.file = tokio::fs::File::open(&self.path).await.ok();
            return self.file.is_some();
        };
        let mut fresh = std::mem::take(&mut self.partial);
        let before = fresh.len();
        if file.read_to_end(&mut fresh).await.is_err() {
            self.partial = fresh;
            return false;
        }
        if fresh.len() == before {
            self.partial = fresh;
            // Read to its end: if it was rotated away, the new file
            // holds what follows.
            if self.rotated().await {
                self.file = None;
                self.partial.clear();
                return true;
            }
            return false;
        }
        let complete = fresh.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.partial = fresh.split_off(complete);
        self.queued
            .extend(fresh.split(|&b| b == b'\n').filter_map(parse_record));
        true
    }

    async fn rotated(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(file) = self.file.as_ref() else {
            return false;
        };
        match (file.metadata().await, tokio::fs::metadata(&self.path).await) {
            (Ok(ours), Ok(named)) => ours.ino() != named.ino() || ours.dev() != named.dev(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{HealthConfig, Meta};
    use crate::testing::eventually;

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

    fn text(lines: &[LogEntry]) -> Vec<String> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.data).into_owned())
            .collect()
    }

    /// Whether a process still runs (a zombie does not: it only waits to
    /// be reaped by whoever inherited it).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
            })
            .unwrap_or(false)
    }

    async fn first_line(exec: &ProcessExecutor, t: &Task) -> String {
        let mut follow = exec
            .logs(
                t,
                LogOptions {
                    follow: true,
                    ..all_output()
                },
            )
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(5), follow.next())
            .await
            .unwrap()
            .unwrap();
        String::from_utf8(line.data).unwrap()
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
        assert_eq!(text(&lines).len(), 3);
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
        // Stdout and stderr are separate pipes: only the lines of each
        // keep their order, so the last line is either's.
        assert_eq!(text(&tail), text(&lines[2..]));
        let stderr_only: Vec<LogEntry> = exec
            .logs(
                &t,
                LogOptions {
                    stderr: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(text(&stderr_only), ["two"]);
        let since = lines[2].timestamp_ns;
        let recent: Vec<LogEntry> = exec
            .logs(
                &t,
                LogOptions {
                    since_ns: Some(since),
                    ..all_output()
                },
            )
            .await
            .unwrap()
            .collect()
            .await;
        assert!(recent.iter().all(|l| l.timestamp_ns >= since));
        assert!(!recent.is_empty());
        let listed = exec.list().await.unwrap();
        assert_eq!(listed[0].exit_code, Some(3));
        assert!(!listed[0].running);
        exec.remove("t1").await.unwrap();
        exec.remove("t1").await.unwrap();
        assert!(exec.list().await.unwrap().is_empty());
        assert!(matches!(
            exec.logs(&t, all_output()).await,
            Err(ExecError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn the_process_gets_the_specs_environment_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        let mut t = task(
            "t1",
            &["sh", "-c", "echo \"$GREETING $SHOAL_TASK_ID\"; pwd"],
        );
        t.spec.container.env = vec!["GREETING=hello".into()];
        t.spec.container.dir = "/".into();
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        assert_eq!(exec.wait(&t).await.unwrap().code, 0);
        let lines: Vec<LogEntry> = exec.logs(&t, all_output()).await.unwrap().collect().await;
        assert_eq!(text(&lines), ["hello t1", "/"]);
    }

    #[tokio::test]
    async fn stop_ends_the_whole_process_group_and_follow_sees_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        // The trap ignores SIGTERM, so only SIGKILL after the grace ends
        // it; the background sleep is in its group and must die with it.
        let t = task(
            "t2",
            &["sh", "-c", "trap '' TERM; sleep 30 & echo $!; wait"],
        );
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        let grandchild: u32 = first_line(&exec, &t).await.parse().unwrap();
        assert!(alive(grandchild));
        let started = std::time::Instant::now();
        exec.stop(&t, Duration::from_millis(300)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let exit = exec.wait(&t).await.unwrap();
        assert_eq!(exit.code, 128 + libc::SIGKILL);
        assert!(exit.message.is_some_and(|m| m.contains("signal 9")));
        eventually("the grandchild is gone", || !alive(grandchild)).await;
        exec.stop(&t, Duration::from_millis(300)).await.unwrap();
        exec.remove("t2").await.unwrap();
    }

    #[tokio::test]
    async fn sigterm_within_the_grace_gives_143() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Arc::new(ProcessExecutor::new("n1", dir.path().to_path_buf()));
        let t = task("t1", &["sleep", "30"]);
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        let waiter = {
            let (exec, t) = (exec.clone(), t.clone());
            tokio::spawn(async move { exec.wait(&t).await })
        };
        exec.stop(&t, Duration::from_secs(10)).await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(exit.code, 128 + libc::SIGTERM);
    }

    #[tokio::test]
    async fn what_a_process_leaves_behind_dies_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        // The sleep inherits the output pipes: without the group kill the
        // exit would not be seen until it ended.
        let t = task("t1", &["sh", "-c", "sleep 30 & echo $!; exit 4"]);
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), exec.wait(&t))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code, 4);
        let lines: Vec<LogEntry> = exec.logs(&t, all_output()).await.unwrap().collect().await;
        let straggler: u32 = text(&lines)[0].parse().unwrap();
        eventually("the straggler is gone", || !alive(straggler)).await;
    }

    #[tokio::test]
    async fn binary_output_and_endless_lines_are_kept_without_blocking_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        // 40000 bytes with no newline, then a byte that is not UTF-8.
        let t = task(
            "t1",
            &[
                "sh",
                "-c",
                "head -c 40000 /dev/zero | tr '\\0' x; echo; printf 'a\\377b\\n'; printf 'last'",
            ],
        );
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), exec.wait(&t))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code, 0);
        let lines: Vec<LogEntry> = exec.logs(&t, all_output()).await.unwrap().collect().await;
        let sizes: Vec<usize> = lines.iter().map(|l| l.data.len()).collect();
        assert_eq!(sizes[..3], [MAX_LINE, MAX_LINE, 40000 - 2 * MAX_LINE]);
        assert_eq!(lines[3].data, b"a\xffb");
        assert_eq!(lines[4].data, b"last");
    }

    #[tokio::test]
    async fn follow_streams_lines_as_they_come_and_ends_with_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        let t = task(
            "t1",
            &[
                "sh",
                "-c",
                "echo old; sleep 0.3; echo new1; sleep 0.3; echo new2",
            ],
        );
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let follow = exec
            .logs(
                &t,
                LogOptions {
                    follow: true,
                    tail: Some(1),
                    ..all_output()
                },
            )
            .await
            .unwrap();
        let lines: Vec<LogEntry> = tokio::time::timeout(Duration::from_secs(5), follow.collect())
            .await
            .unwrap();
        assert_eq!(text(&lines), ["old", "new1", "new2"]);
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
        let numbers: Vec<u32> = text(&lines)
            .iter()
            .filter_map(|l| l.strip_prefix("line ").and_then(|n| n.parse().ok()))
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "out of order: {numbers:?}"
        );
    }

    #[tokio::test]
    async fn follow_carries_on_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        // One rotation: a follower keeps up unless the output rotates twice
        // between two polls.
        exec.rotate_at = 8192;
        let t = task(
            "t1",
            &[
                "sh",
                "-c",
                "echo ready; sleep 0.3; i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo line $i; done",
            ],
        );
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        let follow = exec
            .logs(
                &t,
                LogOptions {
                    follow: true,
                    ..all_output()
                },
            )
            .await
            .unwrap();
        let lines: Vec<LogEntry> = tokio::time::timeout(Duration::from_secs(10), follow.collect())
            .await
            .unwrap();
        let lines = text(&lines);
        assert_eq!(lines.len(), 301, "{lines:?}");
        assert_eq!(lines[300], "line 300");
    }

    fn with_check(mut t: Task, test: &[&str], retries: u32) -> Task {
        t.spec.container.healthcheck = Some(HealthConfig {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval_ms: 100,
            timeout_ms: 1000,
            retries,
            start_period_ms: 0,
        });
        t
    }

    #[tokio::test]
    async fn the_health_check_runs_every_interval_and_counts_retries() {
        let dir = tempfile::tempdir().unwrap();
        let exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        let flag = dir.path().join("healthy");
        let fails = dir.path().join("fails");
        std::fs::write(&flag, "").unwrap();
        // Each failure since the last success leaves a line in `fails`.
        let check = format!(
            "if test -f {flag}; then rm -f {fails}; else echo x >> {fails}; false; fi",
            flag = flag.display(),
            fails = fails.display()
        );
        let t = with_check(task("t1", &["sleep", "30"]), &["CMD-SHELL", &check], 3);
        exec.prepare(&t).await.unwrap();
        exec.start(&t).await.unwrap();
        assert_eq!(exec.health(&t).await.unwrap(), Health::Starting);
        let mut health = Health::None;
        for _ in 0..100 {
            health = exec.health(&t).await.unwrap();
            if health == Health::Healthy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(health, Health::Healthy);
        std::fs::remove_file(&flag).unwrap();
        for _ in 0..100 {
            health = exec.health(&t).await.unwrap();
            if health == Health::Unhealthy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(health, Health::Unhealthy);
        let failures = std::fs::read_to_string(&fails).unwrap().lines().count();
        assert!(failures >= 3, "unhealthy after {failures} failures");
        exec.remove("t1").await.unwrap();
    }

    #[tokio::test]
    async fn health_is_none_without_a_check_and_bad_checks_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let exec = ProcessExecutor::new("n1", dir.path().to_path_buf());
        let plain = task("t1", &["sleep", "30"]);
        exec.prepare(&plain).await.unwrap();
        exec.start(&plain).await.unwrap();
        assert_eq!(exec.health(&plain).await.unwrap(), Health::None);
        let mut disabled = with_check(task("t2", &["sleep", "30"]), &["CMD", "false"], 1);
        disabled.spec.container.no_healthcheck = true;
        exec.prepare(&disabled).await.unwrap();
        exec.start(&disabled).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(exec.health(&disabled).await.unwrap(), Health::None);
        let bad = with_check(task("t3", &["sleep", "30"]), &["curl", "x"], 1);
        let err = exec.prepare(&bad).await.unwrap_err();
        assert!(matches!(err, ExecError::Rejected(_)), "{err}");
        assert!(err.to_string().contains("CMD-SHELL"), "{err}");
        assert!(matches!(
            exec.health(&task("t9", &["x"])).await,
            Err(ExecError::NotFound(_))
        ));
        exec.remove("t1").await.unwrap();
        exec.remove("t2").await.unwrap();
    }

    #[tokio::test]
    async fn a_process_left_by_an_earlier_agent_is_killed_not_run_twice() {
        let dir = tempfile::tempdir().unwrap();
        let earlier = ProcessExecutor::new("n1", dir.path().to_path_buf());
        let t = task("t1", &["sh", "-c", "echo $$; exec sleep 30"]);
        earlier.prepare(&t).await.unwrap();
        earlier.start(&t).await.unwrap();
        let pid: u32 = first_line(&earlier, &t).await.parse().unwrap();
        // The agent restarts: the new executor knows nothing of the child.
        let later = ProcessExecutor::new("n1", dir.path().to_path_buf());
        let listed = later.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].running);
        eventually("the orphan is gone", || !alive(pid)).await;
        later.remove("t1").await.unwrap();
        assert!(!dir.path().join("tasks").join("t1").exists());
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
        let missing = task("t4", &["/no/such/program"]);
        exec.prepare(&missing).await.unwrap();
        let err = exec.start(&missing).await.unwrap_err();
        assert!(matches!(err, ExecError::Rejected(_)), "{err}");
        assert!(err.to_string().contains("/no/such/program"), "{err}");
        assert!(matches!(
            exec.wait(&missing).await,
            Err(ExecError::NotFound(_))
        ));
    }
}

//! The Docker runtime: each task is a container on the local engine, named
//! `<service>.<slot>.<task id>` (global tasks: `<service>.<node>.<task id>`)
//! and labelled with the node, service and task ids, so several agents can
//! share one engine and each finds only its own containers.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HealthConfig, HealthStatusEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use super::{EngineInfo, ExecError, Executor, Existing, Exit, LogEntry, LogOptions, LogSource};
use crate::ids::short;
use crate::store::{Health, Task};

/// bollard's default socket (not exported by it).
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

pub const LABEL_NODE: &str = "com.shoal.node.id";
pub const LABEL_SERVICE: &str = "com.shoal.service.id";
pub const LABEL_SERVICE_NAME: &str = "com.shoal.service.name";
pub const LABEL_TASK: &str = "com.shoal.task.id";
pub const LABEL_SLOT: &str = "com.shoal.task.slot";

pub struct DockerExecutor {
    docker: Docker,
    node_id: String,
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_not_modified(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

fn engine_error(what: &str, e: DockerError) -> ExecError {
    ExecError::Runtime(format!("docker engine: {what}: {e}"))
}

impl DockerExecutor {
    /// Connects to the local engine and checks that it answers.
    pub async fn connect(node_id: &str) -> Result<Self, ExecError> {
        // Where bollard's local defaults look: DOCKER_HOST when it names a
        // unix socket, else the standard one.
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|host| host.starts_with("unix://"))
            .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
        let unreachable = |e: String| {
            ExecError::Runtime(format!(
                "the Docker engine is unreachable at {socket} ({e}); start it, or run shoald \
                 with --executor process"
            ))
        };
        let docker =
            Docker::connect_with_local_defaults().map_err(|e| unreachable(e.to_string()))?;
        match tokio::time::timeout(Duration::from_secs(3), docker.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("no answer within 3s".into())),
        }
        Ok(DockerExecutor {
            docker,
            node_id: node_id.to_string(),
        })
    }

    fn container_name(&self, task: &Task) -> String {
        let node_id = if task.node_id.is_empty() {
            &self.node_id
        } else {
            &task.node_id
        };
        let place = if task.slot > 0 {
            task.slot.to_string()
        } else {
            short(node_id).to_string()
        };
        format!("{}.{}.{}", task.service_name, place, task.meta.id)
    }

    /// The container of a task, found by label (names can be anything if
    /// a service is renamed, labels cannot).
    async fn find(&self, task_id: &str) -> Result<Option<String>, ExecError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_TASK}={task_id}"),
                format!("{LABEL_NODE}={}", self.node_id),
            ],
        )]);
        let found = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| engine_error("listing containers", e))?;
        Ok(found.into_iter().find_map(|c| c.id))
    }

    async fn container(&self, task_id: &str) -> Result<String, ExecError> {
        self.find(task_id)
            .await?
            .ok_or_else(|| ExecError::NotFound(task_id.to_string()))
    }

    async fn ensure_image(&self, image: &str) -> Result<(), ExecError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(engine_error(&format!("looking for image {image}"), e)),
        }
        let mut pull = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                tag: pull_tag(image).map(str::to_string),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(progress) = pull.next().await {
            match progress {
                Ok(_) => {}
                // The engine or the registry refused: pulling again will
                // not make the image appear.
                Err(
                    e @ (DockerError::DockerResponseServerError { .. }
                    | DockerError::DockerStreamError { .. }),
                ) => {
                    return Err(ExecError::Rejected(format!(
                        "image {image} is not on this node and could not be pulled ({e}); build \
                         or load it on the node with docker"
                    )));
                }
                Err(e) => return Err(engine_error(&format!("pulling image {image}"), e)),
            }
        }
        Ok(())
    }

    fn create_body(&self, task: &Task) -> ContainerCreateBody {
        let container = &task.spec.container;
        let mut labels: HashMap<String, String> = container
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_NODE.into(), self.node_id.clone());
        labels.insert(LABEL_SERVICE.into(), task.service_id.clone());
        labels.insert(LABEL_SERVICE_NAME.into(), task.service_name.clone());
        labels.insert(LABEL_TASK.into(), task.meta.id.clone());
        labels.insert(LABEL_SLOT.into(), task.slot.to_string());
        let ms_to_ns = |ms: u64| (ms as i64).saturating_mul(1_000_000);
        let healthcheck = if container.no_healthcheck {
            Some(HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            })
        } else {
            container.healthcheck.as_ref().map(|h| HealthConfig {
                test: Some(h.test.clone()),
                interval: Some(ms_to_ns(h.interval_ms)),
                timeout: Some(ms_to_ns(h.timeout_ms)),
                retries: Some(i64::from(h.retries)),
                start_period: Some(ms_to_ns(h.start_period_ms)),
                ..Default::default()
            })
        };
        let limits = &task.spec.limits;
        ContainerCreateBody {
            image: Some(container.image.clone()),
            entrypoint: (!container.command.is_empty()).then(|| container.command.clone()),
            cmd: (!container.args.is_empty()).then(|| container.args.clone()),
            env: Some(container.env.clone()),
            labels: Some(labels),
            working_dir: (!container.dir.is_empty()).then(|| container.dir.clone()),
            user: (!container.user.is_empty()).then(|| container.user.clone()),
            hostname: Some(format!("{}-{}", task.service_name, short(&task.meta.id))),
            healthcheck,
            stop_timeout: (container.stop_grace_period_ms > 0)
                .then(|| (container.stop_grace_period_ms / 1000).max(1) as i64),
            host_config: Some(HostConfig {
                memory: (limits.memory_bytes > 0).then_some(limits.memory_bytes),
                nano_cpus: (limits.nano_cpus > 0).then_some(limits.nano_cpus),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

impl Executor for DockerExecutor {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn describe(&self) -> BoxFuture<'_, EngineInfo> {
        async move {
            let info = match self.docker.info().await {
                Ok(info) => info,
                Err(e) => {
                    tracing::warn!(error = %e, "docker engine: reading its info failed: reporting no resources");
                    return EngineInfo::default();
                }
            };
            let mut engine = EngineInfo {
                os: info.os_type.unwrap_or_default(),
                arch: info.architecture.unwrap_or_default(),
                ..Default::default()
            };
            engine.resources.nano_cpus = info.ncpu.unwrap_or(0) * 1_000_000_000;
            engine.resources.memory_bytes = info.mem_total.unwrap_or(0);
            for label in info.labels.unwrap_or_default() {
                let (k, v) = label.split_once('=').unwrap_or((&label, ""));
                engine.engine_labels.insert(k.to_string(), v.to_string());
            }
            engine
        }
        .boxed()
    }

    fn prepare<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<String, ExecError>> {
        async move {
            if let Some(id) = self.find(&task.meta.id).await? {
                return Ok(id);
            }
            let image = &task.spec.container.image;
            if image.is_empty() {
                return Err(ExecError::Rejected(format!(
                    "task {} has no image: the docker executor needs one",
                    task.meta.id
                )));
            }
            self.ensure_image(image).await?;
            let created = self
                .docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(self.container_name(task)),
                        ..Default::default()
                    }),
                    self.create_body(task),
                )
                .await;
            match created {
                Ok(created) => Ok(created.id),
                Err(DockerError::DockerResponseServerError {
                    status_code: 400,
                    message,
                }) => Err(ExecError::Rejected(format!(
                    "the engine refused the container of task {}: {message}",
                    task.meta.id
                ))),
                // The name is taken: by this task's container when another
                // prepare got there first, else by a stranger.
                Err(DockerError::DockerResponseServerError {
                    status_code: 409,
                    message,
                }) => match self.find(&task.meta.id).await? {
                    Some(id) => Ok(id),
                    None => Err(ExecError::Rejected(format!(
                        "container name {} is taken by a container that is not this node's \
                         ({message}); remove it with docker rm",
                        self.container_name(task)
                    ))),
                },
                Err(e) => Err(engine_error("creating the container", e)),
            }
        }
        .boxed()
    }

    fn start<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            let id = self.container(&task.meta.id).await?;
            match self
                .docker
                .start_container(
                    &id,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if is_not_modified(&e) => Ok(()),
                Err(DockerError::DockerResponseServerError {
                    status_code: 400,
                    message,
                }) => Err(ExecError::Rejected(format!(
                    "the container cannot start: {message}"
                ))),
                Err(e) => Err(engine_error("starting the container", e)),
            }
        }
        .boxed()
    }

    fn wait<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Exit, ExecError>> {
        async move {
            let id = self.container(&task.meta.id).await?;
            let mut waiting = self
                .docker
                .wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>);
            // The wait reports non-zero exits as errors; the exit code and
            // its reason come from inspecting afterwards. Any other error
            // means the wait broke off, not that the container exited.
            match waiting.next().await {
                Some(Ok(_) | Err(DockerError::DockerContainerWaitError { .. })) => {}
                Some(Err(e)) if is_not_found(&e) => {
                    return Err(ExecError::NotFound(task.meta.id.clone()));
                }
                Some(Err(e)) => return Err(engine_error("waiting for the container", e)),
                None => {
                    return Err(ExecError::Runtime(format!(
                        "docker engine: waiting for the container of task {}: the engine \
                         ended the wait without an outcome",
                        task.meta.id
                    )));
                }
            }
            let inspected = self
                .docker
                .inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .map_err(|e| match e {
                    e if is_not_found(&e) => ExecError::NotFound(task.meta.id.clone()),
                    e => engine_error("inspecting the container", e),
                })?;
            let state = inspected.state.unwrap_or_default();
            let code = state.exit_code.unwrap_or(-1) as i32;
            let message = if state.oom_killed == Some(true) {
                Some("killed: out of memory".to_string())
            } else {
                state.error.filter(|e| !e.is_empty())
            };
            Ok(Exit { code, message })
        }
        .boxed()
    }

    fn health<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Health, ExecError>> {
        async move {
            let id = self.container(&task.meta.id).await?;
            let inspected = self
                .docker
                .inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .map_err(|e| engine_error("inspecting the container", e))?;
            let status = inspected
                .state
                .and_then(|s| s.health)
                .and_then(|h| h.status);
            Ok(match status {
                Some(HealthStatusEnum::STARTING) => Health::Starting,
                Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
                Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
                _ => Health::None,
            })
        }
        .boxed()
    }

    fn stop<'a>(&'a self, task: &'a Task, grace: Duration) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            let Some(id) = self.find(&task.meta.id).await? else {
                return Ok(());
            };
            let seconds = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
            let options = StopContainerOptions {
                t: Some(seconds),
                ..Default::default()
            };
            // The engine answers once the container is down, which can be
            // the whole grace: the client must not give up before.
            let docker = self
                .docker
                .clone()
                .with_timeout(grace.saturating_add(Duration::from_secs(30)));
            match docker.stop_container(&id, Some(options)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_modified(&e) || is_not_found(&e) => Ok(()),
                Err(e) => Err(engine_error("stopping the container", e)),
            }
        }
        .boxed()
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            let Some(id) = self.find(task_id).await? else {
                return Ok(());
            };
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            match self.docker.remove_container(&id, Some(options)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(engine_error("removing the container", e)),
            }
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Existing>, ExecError>> {
        async move {
            let filters = HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_NODE}={}", self.node_id)],
            )]);
            let found = self
                .docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
                .map_err(|e| engine_error("listing containers", e))?;
            let mut existing = Vec::new();
            for summary in found {
                let Some(task_id) = summary
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_TASK))
                    .cloned()
                else {
                    continue;
                };
                let container_id = summary.id.unwrap_or_default();
                let running = summary.state.map(|s| s.to_string()) == Some("running".into());
                let exit_code = if running {
                    None
                } else {
                    self.docker
                        .inspect_container(
                            &container_id,
                            None::<bollard::query_parameters::InspectContainerOptions>,
                        )
                        .await
                        .ok()
                        .and_then(|i| i.state)
                        .and_then(|s| s.exit_code)
                        .map(|c| c as i32)
                };
                existing.push(Existing {
                    task_id,
                    container_id,
                    running,
                    exit_code,
                });
            }
            Ok(existing)
        }
        .boxed()
    }

    fn logs<'a>(
        &'a self,
        task: &'a Task,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<BoxStream<'static, LogEntry>, ExecError>> {
        async move {
            let id = self.container(&task.meta.id).await?;
            let query = LogsOptions {
                follow: options.follow,
                stdout: options.stdout,
                stderr: options.stderr,
                since: options.since_ns.map_or(0, |ns| (ns / 1_000_000_000) as i32),
                timestamps: true,
                tail: options
                    .tail
                    .map_or_else(|| "all".to_string(), |n| n.to_string()),
                ..Default::default()
            };
            let since_ns = options.since_ns;
            let stream = self
                .docker
                .logs(&id, Some(query))
                .filter_map(move |item| {
                    let entry = match item {
                        Ok(LogOutput::StdOut { message }) => {
                            parse_line(LogSource::Stdout, &message)
                        }
                        Ok(LogOutput::StdErr { message }) => {
                            parse_line(LogSource::Stderr, &message)
                        }
                        Ok(LogOutput::Console { message }) => {
                            parse_line(LogSource::Stdout, &message)
                        }
                        _ => None,
                    };
                    let entry = entry.filter(|e| since_ns.is_none_or(|s| e.timestamp_ns >= s));
                    async move { entry }
                })
                .boxed();
            Ok(stream)
        }
        .boxed()
    }
}

/// The tag to pull for an image reference that names none: the engine
/// would otherwise pull every tag of the repository.
fn pull_tag(image: &str) -> Option<&'static str> {
    let name = image.rsplit('/').next().unwrap_or(image);
    let pinned = image.contains('@') || name.contains(':');
    (!pinned).then_some("latest")
}

/// A log frame as the engine sends it with timestamps: `<RFC 3339> <line>`.
fn parse_line(source: LogSource, frame: &[u8]) -> Option<LogEntry> {
    let text = std::str::from_utf8(frame).ok()?;
    let (stamp, rest) = text.split_once(' ').unwrap_or((text, ""));
    let timestamp_ns = humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(stamp))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    Some(LogEntry {
        timestamp_ns,
        source,
        data: rest.trim_end_matches(['\n', '\r']).as_bytes().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{HealthConfig, Meta};

    const IMAGE: &str = "shoal-test/busybox:1";

    /// A test's own node id on the shared engine. Removes the test's
    /// containers however the test ends.
    struct Engine {
        node_id: String,
    }

    impl Drop for Engine {
        fn drop(&mut self) {
            let out = std::process::Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label={LABEL_NODE}={}", self.node_id),
                ])
                .output();
            if let Ok(out) = out {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = std::process::Command::new("docker")
                        .args(["rm", "-f", id])
                        .output();
                }
            }
        }
    }

    /// Connects as a fresh node and builds the test images if needed; None
    /// (the test is skipped) only when no engine answers.
    async fn engine() -> Option<(Engine, DockerExecutor)> {
        let node_id = crate::ids::new_id();
        let docker = match DockerExecutor::connect(&node_id).await {
            Ok(docker) => docker,
            Err(e) => {
                eprintln!("skipping: {e}");
                return None;
            }
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/images/build.sh");
        let built = std::process::Command::new("bash").arg(script).status();
        assert!(
            built.is_ok_and(|s| s.success()),
            "building the test images with {script} failed"
        );
        Some((Engine { node_id }, docker))
    }

    fn task(image: &str, args: &[&str]) -> Task {
        let mut task = Task {
            meta: Meta::new(crate::ids::new_id(), 0),
            service_name: "svc".into(),
            service_id: "s1".into(),
            slot: 1,
            ..Default::default()
        };
        task.spec.container.image = image.into();
        task.spec.container.args = args.iter().map(|s| s.to_string()).collect();
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

    async fn health_becomes(docker: &DockerExecutor, t: &Task, wanted: Health) -> Health {
        let mut health = Health::None;
        for _ in 0..100 {
            health = docker.health(t).await.unwrap();
            if health == wanted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        health
    }

    #[tokio::test]
    async fn a_container_runs_exits_with_its_code_and_keeps_its_logs() {
        let Some((_engine, docker)) = engine().await else {
            return;
        };
        let t = task(IMAGE, &["sh", "-c", "echo one; echo two >&2; exit 7"]);
        let id = docker.prepare(&t).await.unwrap();
        assert_eq!(
            docker.prepare(&t).await.unwrap(),
            id,
            "prepare is idempotent"
        );
        docker.start(&t).await.unwrap();
        assert_eq!(docker.wait(&t).await.unwrap().code, 7);
        let lines: Vec<LogEntry> = docker.logs(&t, all_output()).await.unwrap().collect().await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.timestamp_ns > 0));
        assert!(
            lines
                .iter()
                .any(|l| l.source == LogSource::Stderr && l.data == b"two")
        );
        let tail: Vec<LogEntry> = docker
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
        let stdout_only: Vec<LogEntry> = docker
            .logs(
                &t,
                LogOptions {
                    stdout: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(text(&stdout_only), ["one"]);
        let listed = docker.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].task_id, t.meta.id);
        assert_eq!(listed[0].container_id, id);
        assert_eq!(listed[0].exit_code, Some(7));
        assert!(!listed[0].running);
        docker.remove(&t.meta.id).await.unwrap();
        docker.remove(&t.meta.id).await.unwrap();
        assert!(docker.list().await.unwrap().is_empty());
        assert!(matches!(docker.wait(&t).await, Err(ExecError::NotFound(_))));
        assert!(matches!(
            docker.logs(&t, all_output()).await,
            Err(ExecError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn containers_are_named_and_labelled_for_their_task_and_node() {
        let Some((engine, docker)) = engine().await else {
            return;
        };
        let mut replicated = task(IMAGE, &["true"]);
        replicated
            .spec
            .container
            .labels
            .insert("team".into(), "blue".into());
        let mut global = task(IMAGE, &["true"]);
        global.slot = 0;
        global.node_id = engine.node_id.clone();
        docker.prepare(&replicated).await.unwrap();
        docker.prepare(&global).await.unwrap();
        let inspect = |t: &Task| {
            let id = t.meta.id.clone();
            let docker = &docker;
            async move {
                let found = docker.find(&id).await.unwrap().unwrap();
                docker
                    .docker
                    .inspect_container(
                        &found,
                        None::<bollard::query_parameters::InspectContainerOptions>,
                    )
                    .await
                    .unwrap()
            }
        };
        let inspected = inspect(&replicated).await;
        assert_eq!(
            inspected.name.as_deref(),
            Some(format!("/svc.1.{}", replicated.meta.id).as_str())
        );
        let labels = inspected.config.unwrap().labels.unwrap();
        for (key, value) in [
            (LABEL_NODE, engine.node_id.as_str()),
            (LABEL_SERVICE, "s1"),
            (LABEL_SERVICE_NAME, "svc"),
            (LABEL_TASK, replicated.meta.id.as_str()),
            (LABEL_SLOT, "1"),
            ("team", "blue"),
        ] {
            assert_eq!(labels.get(key).map(String::as_str), Some(value), "{key}");
        }
        assert_eq!(
            inspect(&global).await.name.as_deref(),
            Some(format!("/svc.{}.{}", short(&engine.node_id), global.meta.id).as_str())
        );
        // Another node sharing the engine sees none of them.
        let other = DockerExecutor::connect(&crate::ids::new_id())
            .await
            .unwrap();
        assert!(other.list().await.unwrap().is_empty());
        assert_eq!(docker.list().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn stop_ends_a_running_container_within_its_grace() {
        let Some((_engine, docker)) = engine().await else {
            return;
        };
        // The image's `sleep infinity` is the container's init and
        // ignores SIGTERM: only the SIGKILL after the grace ends it.
        let t = task(IMAGE, &[]);
        docker.prepare(&t).await.unwrap();
        docker.start(&t).await.unwrap();
        docker.start(&t).await.unwrap();
        assert!(docker.list().await.unwrap()[0].running);
        let started = std::time::Instant::now();
        docker.stop(&t, Duration::from_secs(1)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(docker.wait(&t).await.unwrap().code, 137);
        docker.stop(&t, Duration::from_secs(1)).await.unwrap();
        let listed = docker.list().await.unwrap();
        assert!(!listed[0].running);
        assert_eq!(listed[0].exit_code, Some(137));
    }

    #[tokio::test]
    async fn follow_streams_new_lines_until_the_container_exits() {
        let Some((_engine, docker)) = engine().await else {
            return;
        };
        let t = task(
            IMAGE,
            // One stream: the engine does not order stdout against stderr.
            &["sh", "-c", "echo old; sleep 1; echo new1; echo new2"],
        );
        docker.prepare(&t).await.unwrap();
        docker.start(&t).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let follow = docker
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
        assert_eq!(text(&lines), ["old", "new1", "new2"]);
        let since = lines[1].timestamp_ns;
        let recent: Vec<LogEntry> = docker
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
        assert_eq!(text(&recent), ["new1", "new2"]);
    }

    #[tokio::test]
    async fn the_images_health_check_decides_health() {
        let Some((_engine, docker)) = engine().await else {
            return;
        };
        let t = task("shoal-test/busybox:unhealthy", &[]);
        docker.prepare(&t).await.unwrap();
        docker.start(&t).await.unwrap();
        assert_eq!(
            health_becomes(&docker, &t, Health::Unhealthy).await,
            Health::Unhealthy
        );
    }

    #[tokio::test]
    async fn the_specs_health_check_overrides_the_images() {
        let Some((_engine, docker)) = engine().await else {
            return;
        };
        let mut passing = task("shoal-test/busybox:unhealthy", &[]);
        passing.spec.container.healthcheck = Some(HealthConfig {
            test: vec!["CMD".into(), "true".into()],
            interval_ms: 200,
            timeout_ms: 1000,
            retries: 1,
            start_period_ms: 0,
        });
        let mut unchecked = task("shoal-test/busybox:unhealthy", &[]);
        unchecked.spec.container.no_healthcheck = true;
        for t in [&passing, &unchecked] {
            docker.prepare(t).await.unwrap();
            docker.start(t).await.unwrap();
        }
        assert_eq!(
            health_becomes(&docker, &passing, Health::Healthy).await,
            Health::Healthy
        );
        assert_eq!(docker.health(&unchecked).await.unwrap(), Health::None);
    }

    #[tokio::test]
    async fn a_missing_image_is_rejected_with_what_to_do() {
        let Some((_engine, docker)) = engine().await else {
            return;
        };
        let t = task("shoal-test/does-not-exist:1", &[]);
        let err = docker.prepare(&t).await.unwrap_err();
        assert!(matches!(err, ExecError::Rejected(_)), "{err}");
        assert!(err.to_string().contains("build or load it"), "{err}");
        assert!(
            err.to_string().contains("shoal-test/does-not-exist:1"),
            "{err}"
        );
        assert!(docker.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_command_the_image_lacks_fails_to_start_as_rejected() {
        let Some((_engine, docker)) = engine().await else {
            return;
        };
        let t = task(IMAGE, &["/no/such/program"]);
        docker.prepare(&t).await.unwrap();
        let err = docker.start(&t).await.unwrap_err();
        assert!(matches!(err, ExecError::Rejected(_)), "{err}");
        assert!(err.to_string().contains("/no/such/program"), "{err}");
    }

    #[test]
    fn the_create_body_carries_the_spec() {
        let docker = DockerExecutor {
            docker: match Docker::connect_with_local_defaults() {
                Ok(docker) => docker,
                Err(e) => {
                    eprintln!("skipping: no docker client: {e}");
                    return;
                }
            },
            node_id: "node1".into(),
        };
        let mut t = task(IMAGE, &["-c", "echo hi"]);
        t.spec.container.command = vec!["sh".into()];
        t.spec.container.env = vec!["A=1".into()];
        t.spec.container.dir = "/tmp".into();
        t.spec.container.user = "nobody".into();
        t.spec.container.stop_grace_period_ms = 2500;
        t.spec.container.healthcheck = Some(HealthConfig {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval_ms: 1500,
            timeout_ms: 2,
            retries: 4,
            start_period_ms: 0,
        });
        t.spec.limits.memory_bytes = 64 << 20;
        t.spec.limits.nano_cpus = 500_000_000;
        let body = docker.create_body(&t);
        assert_eq!(body.entrypoint, Some(vec!["sh".to_string()]));
        assert_eq!(
            body.cmd,
            Some(vec!["-c".to_string(), "echo hi".to_string()])
        );
        assert_eq!(body.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(body.user.as_deref(), Some("nobody"));
        assert_eq!(body.stop_timeout, Some(2));
        let health = body.healthcheck.unwrap();
        assert_eq!(health.interval, Some(1_500_000_000));
        assert_eq!(health.timeout, Some(2_000_000));
        assert_eq!(health.retries, Some(4));
        let host = body.host_config.unwrap();
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));

        t.spec.container.no_healthcheck = true;
        t.spec.container.command.clear();
        t.spec.limits = Default::default();
        let body = docker.create_body(&t);
        assert_eq!(body.healthcheck.unwrap().test, Some(vec!["NONE".into()]));
        assert_eq!(body.entrypoint, None, "the image's entrypoint stays");
        let host = body.host_config.unwrap();
        assert_eq!((host.memory, host.nano_cpus), (None, None));
    }

    #[test]
    fn untagged_images_pull_latest_not_every_tag() {
        assert_eq!(pull_tag("nginx"), Some("latest"));
        assert_eq!(pull_tag("registry:5000/team/app"), Some("latest"));
        assert_eq!(pull_tag("registry:5000/team/app:2"), None);
        assert_eq!(pull_tag("nginx:1.27"), None);
        assert_eq!(pull_tag("nginx@sha256:abcd"), None);
    }

    #[test]
    fn log_frames_give_their_timestamp_and_line() {
        let entry = parse_line(
            LogSource::Stderr,
            b"2024-05-01T10:00:00.123456789Z hello world\n",
        )
        .unwrap();
        assert_eq!(entry.timestamp_ns, 1_714_557_600_123_456_789);
        assert_eq!(entry.data, b"hello world");
        assert_eq!(entry.source, LogSource::Stderr);
        let empty = parse_line(LogSource::Stdout, b"2024-05-01T10:00:00Z \n").unwrap();
        assert_eq!(empty.data, b"");
    }
}

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
        let unreachable = |e: String| {
            ExecError::Runtime(format!(
                "the Docker engine is unreachable at the local socket ({e}); start it, or run \
                 shoald with --executor process"
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
        let place = if task.slot > 0 {
            task.slot.to_string()
        } else {
            short(&task.node_id).to_string()
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
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let mut pull = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(progress) = pull.next().await {
            if let Err(e) = progress {
                return Err(ExecError::Rejected(format!(
                    "image {image} is not on this node and could not be pulled ({e}); build or \
                     load it on the node with docker"
                )));
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
            let Ok(info) = self.docker.info().await else {
                return EngineInfo::default();
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
                .await
                .map_err(|e| match e {
                    DockerError::DockerResponseServerError {
                        status_code: 400,
                        message,
                    } => {
                        ExecError::Rejected(format!("the engine refused the container: {message}"))
                    }
                    e => engine_error("creating the container", e),
                })?;
            Ok(created.id)
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
            // The wait itself reports non-zero exits as errors; the exit
            // code and its reason come from inspecting afterwards.
            let _ = waiting.next().await;
            let inspected = self
                .docker
                .inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .map_err(|e| engine_error("inspecting the container", e))?;
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
            let options = StopContainerOptions {
                t: Some(grace.as_secs().max(1) as i32),
                ..Default::default()
            };
            match self.docker.stop_container(&id, Some(options)).await {
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
    use crate::store::Meta;

    const IMAGE: &str = "shoal-test/busybox:1";

    /// Builds the test images if needed and removes this test's containers
    /// however the test ends.
    struct Engine {
        node_id: String,
    }

    impl Engine {
        fn new() -> Self {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/images/build.sh");
            let built = std::process::Command::new("bash").arg(script).status();
            assert!(
                built.is_ok_and(|s| s.success()),
                "building test images failed"
            );
            Engine {
                node_id: crate::ids::new_id(),
            }
        }
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

    #[tokio::test]
    async fn a_container_runs_exits_with_its_code_and_keeps_its_logs() {
        let engine = Engine::new();
        let docker = DockerExecutor::connect(&engine.node_id).await.unwrap();
        let t = task(IMAGE, &["sh", "-c", "echo one; echo two >&2; exit 7"]);
        let id = docker.prepare(&t).await.unwrap();
        assert_eq!(
            docker.prepare(&t).await.unwrap(),
            id,
            "prepare is idempotent"
        );
        docker.start(&t).await.unwrap();
        assert_eq!(docker.wait(&t).await.unwrap().code, 7);
        let options = LogOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let lines: Vec<LogEntry> = docker
            .logs(&t, options.clone())
            .await
            .unwrap()
            .collect()
            .await;
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
                    ..options
                },
            )
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(tail.len(), 1);
        let listed = docker.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].exit_code, Some(7));
        docker.remove(&t.meta.id).await.unwrap();
        docker.remove(&t.meta.id).await.unwrap();
        assert!(docker.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stop_ends_a_running_container_within_its_grace() {
        let engine = Engine::new();
        let docker = DockerExecutor::connect(&engine.node_id).await.unwrap();
        let t = task(IMAGE, &[]);
        docker.prepare(&t).await.unwrap();
        docker.start(&t).await.unwrap();
        assert!(docker.list().await.unwrap()[0].running);
        let started = std::time::Instant::now();
        docker.stop(&t, Duration::from_secs(1)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_ne!(docker.wait(&t).await.unwrap().code, 0);
        docker.stop(&t, Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn the_images_health_check_decides_health() {
        let engine = Engine::new();
        let docker = DockerExecutor::connect(&engine.node_id).await.unwrap();
        let t = task("shoal-test/busybox:unhealthy", &[]);
        docker.prepare(&t).await.unwrap();
        docker.start(&t).await.unwrap();
        let mut health = Health::None;
        for _ in 0..100 {
            health = docker.health(&t).await.unwrap();
            if health == Health::Unhealthy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(health, Health::Unhealthy);
    }

    #[tokio::test]
    async fn a_missing_image_is_rejected_with_what_to_do() {
        let engine = Engine::new();
        let docker = DockerExecutor::connect(&engine.node_id).await.unwrap();
        let t = task("shoal-test/does-not-exist:1", &[]);
        let err = docker.prepare(&t).await.unwrap_err();
        assert!(matches!(err, ExecError::Rejected(_)), "{err}");
        assert!(err.to_string().contains("build or load it"), "{err}");
    }
}

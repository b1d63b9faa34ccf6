//! The simulated runtime: no workload at all, only state transitions, so
//! that one process can host thousands of nodes in scale benchmarks.
//! Prepare and start take the configured delay; a started task runs until
//! it is stopped, and its health check, if it has one, always passes.
//! A task costs a map entry and a watch channel, so one process holds
//! thousands.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{EngineInfo, ExecError, Executor, Existing, Exit, LogEntry, LogOptions};
use crate::store::{Health, Task};

/// Exit code of a workload stopped by SIGTERM, as a container's.
const STOPPED_EXIT_CODE: i32 = 143;

struct SimTask {
    started: AtomicBool,
    /// Set once the workload has "exited".
    exit: watch::Sender<Option<Exit>>,
}

pub struct SimExecutor {
    delay: Duration,
    tasks: Mutex<HashMap<String, Arc<SimTask>>>,
}

impl SimExecutor {
    pub fn new(delay: Duration) -> Self {
        SimExecutor {
            delay,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, task_id: &str) -> Result<Arc<SimTask>, ExecError> {
        self.tasks
            .lock()
            .get(task_id)
            .cloned()
            .ok_or_else(|| ExecError::NotFound(task_id.to_string()))
    }

    async fn pause(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }
}

impl Executor for SimExecutor {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn describe(&self) -> BoxFuture<'_, EngineInfo> {
        async {
            EngineInfo {
                os: std::env::consts::OS.into(),
                arch: std::env::consts::ARCH.into(),
                ..Default::default()
            }
        }
        .boxed()
    }

    fn prepare<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<String, ExecError>> {
        async move {
            self.pause().await;
            let id = task.meta.id.clone();
            self.tasks.lock().entry(id.clone()).or_insert_with(|| {
                Arc::new(SimTask {
                    started: AtomicBool::new(false),
                    exit: watch::channel(None).0,
                })
            });
            Ok(format!("sim-{id}"))
        }
        .boxed()
    }

    fn start<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            self.pause().await;
            self.get(&task.meta.id)?
                .started
                .store(true, Ordering::Relaxed);
            Ok(())
        }
        .boxed()
    }

    fn wait<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Exit, ExecError>> {
        async move {
            let mut exit = self.get(&task.meta.id)?.exit.subscribe();
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
            self.get(&task.meta.id)?;
            // As a container whose check passes; without a check there is
            // no health to report, as with a real runtime.
            let container = &task.spec.container;
            let checked = !container.no_healthcheck
                && container
                    .healthcheck
                    .as_ref()
                    .is_some_and(|h| h.test.first().is_some_and(|t| t != "NONE"));
            Ok(if checked {
                Health::Healthy
            } else {
                Health::None
            })
        }
        .boxed()
    }

    fn stop<'a>(
        &'a self,
        task: &'a Task,
        _grace: Duration,
    ) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            if let Ok(sim) = self.get(&task.meta.id) {
                sim.exit.send_if_modified(|exit| {
                    if exit.is_some() {
                        return false;
                    }
                    *exit = Some(Exit {
                        code: STOPPED_EXIT_CODE,
                        message: None,
                    });
                    true
                });
            }
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        async move {
            if let Some(sim) = self.tasks.lock().remove(task_id) {
                sim.exit.send_if_modified(|exit| {
                    let changed = exit.is_none();
                    exit.get_or_insert(Exit {
                        code: STOPPED_EXIT_CODE,
                        message: Some("removed".into()),
                    });
                    changed
                });
            }
            Ok(())
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Existing>, ExecError>> {
        async move {
            Ok(self
                .tasks
                .lock()
                .iter()
                .map(|(id, sim)| {
                    let exit = sim.exit.borrow().clone();
                    Existing {
                        task_id: id.clone(),
                        container_id: format!("sim-{id}"),
                        running: sim.started.load(Ordering::Relaxed) && exit.is_none(),
                        exit_code: exit.map(|e| e.code),
                    }
                })
                .collect())
        }
        .boxed()
    }

    fn logs<'a>(
        &'a self,
        task: &'a Task,
        _options: LogOptions,
    ) -> BoxFuture<'a, Result<BoxStream<'static, LogEntry>, ExecError>> {
        async move {
            self.get(&task.meta.id)?;
            Ok(futures::stream::empty().boxed())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{HealthConfig, Meta};

    fn task(id: &str) -> Task {
        Task {
            meta: Meta::new(id.into(), 0),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_sim_task_runs_until_stopped() {
        let sim = Arc::new(SimExecutor::new(Duration::ZERO));
        let t = task("t1");
        assert!(matches!(sim.start(&t).await, Err(ExecError::NotFound(_))));
        sim.prepare(&t).await.unwrap();
        assert_eq!(
            sim.prepare(&t).await.unwrap(),
            "sim-t1",
            "prepare is idempotent"
        );
        assert!(!sim.list().await.unwrap()[0].running);
        sim.start(&t).await.unwrap();
        sim.start(&t).await.unwrap();
        let listed = sim.list().await.unwrap();
        assert!(listed[0].running);
        assert_eq!(listed[0].exit_code, None);
        let waiter = {
            let (sim, t) = (sim.clone(), t.clone());
            tokio::spawn(async move { sim.wait(&t).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "a running task does not exit");
        sim.stop(&t, Duration::ZERO).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap().code, STOPPED_EXIT_CODE);
        // Already exited: at once, and a second stop changes nothing.
        sim.stop(&t, Duration::ZERO).await.unwrap();
        assert_eq!(sim.wait(&t).await.unwrap().code, STOPPED_EXIT_CODE);
        assert_eq!(
            sim.list().await.unwrap()[0].exit_code,
            Some(STOPPED_EXIT_CODE)
        );
        sim.remove("t1").await.unwrap();
        sim.remove("t1").await.unwrap();
        assert!(sim.list().await.unwrap().is_empty());
        assert!(matches!(sim.start(&t).await, Err(ExecError::NotFound(_))));
        assert!(matches!(sim.wait(&t).await, Err(ExecError::NotFound(_))));
    }

    #[tokio::test]
    async fn removing_a_running_task_ends_its_wait() {
        let sim = Arc::new(SimExecutor::new(Duration::ZERO));
        let t = task("t1");
        sim.prepare(&t).await.unwrap();
        sim.start(&t).await.unwrap();
        let waiter = {
            let (sim, t) = (sim.clone(), t.clone());
            tokio::spawn(async move { sim.wait(&t).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        sim.remove("t1").await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(exit.message.as_deref(), Some("removed"));
    }

    #[tokio::test]
    async fn health_is_healthy_only_with_a_check_and_logs_are_empty() {
        let sim = SimExecutor::new(Duration::ZERO);
        let plain = task("t1");
        let mut checked = task("t2");
        checked.spec.container.healthcheck = Some(HealthConfig {
            test: vec!["CMD".into(), "true".into()],
            ..Default::default()
        });
        for t in [&plain, &checked] {
            sim.prepare(t).await.unwrap();
            sim.start(t).await.unwrap();
        }
        assert_eq!(sim.health(&plain).await.unwrap(), Health::None);
        assert_eq!(sim.health(&checked).await.unwrap(), Health::Healthy);
        let options = LogOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let lines: Vec<LogEntry> = sim.logs(&plain, options).await.unwrap().collect().await;
        assert!(lines.is_empty());
    }

    #[tokio::test]
    async fn prepare_and_start_take_the_delay() {
        let sim = SimExecutor::new(Duration::from_millis(100));
        let t = task("t1");
        let before = std::time::Instant::now();
        sim.prepare(&t).await.unwrap();
        sim.start(&t).await.unwrap();
        assert!(before.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn ten_thousand_tasks_are_cheap() {
        let sim = SimExecutor::new(Duration::ZERO);
        let before = std::time::Instant::now();
        for i in 0..10_000 {
            let t = task(&format!("t{i}"));
            sim.prepare(&t).await.unwrap();
            sim.start(&t).await.unwrap();
        }
        let listed = sim.list().await.unwrap();
        assert_eq!(listed.len(), 10_000);
        assert!(listed.iter().all(|e| e.running));
        assert!(
            before.elapsed() < Duration::from_secs(5),
            "{:?}",
            before.elapsed()
        );
    }
}

//! The simulated runtime: no workload at all, only state transitions, so
//! that one process can host thousands of nodes in scale benchmarks.
//! Prepare and start take the configured delay; a started task runs until
//! it is stopped.

use std::collections::HashMap;
use std::sync::Arc;
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
    started: bool,
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
                    started: false,
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
            let mut tasks = self.tasks.lock();
            let current = tasks
                .get(&task.meta.id)
                .ok_or_else(|| ExecError::NotFound(task.meta.id.clone()))?;
            if !current.started {
                let started = Arc::new(SimTask {
                    started: true,
                    exit: current.exit.clone(),
                });
                tasks.insert(task.meta.id.clone(), started);
            }
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
            Ok(Health::None)
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
                        running: sim.started && exit.is_none(),
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
    use crate::store::Meta;

    fn task(id: &str) -> Task {
        Task {
            meta: Meta::new(id.into(), 0),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_sim_task_runs_until_stopped() {
        let sim = SimExecutor::new(Duration::ZERO);
        let t = task("t1");
        sim.prepare(&t).await.unwrap();
        sim.prepare(&t).await.unwrap();
        sim.start(&t).await.unwrap();
        let listed = sim.list().await.unwrap();
        assert!(listed[0].running);
        let waiter = sim.wait(&t);
        sim.stop(&t, Duration::ZERO).await.unwrap();
        assert_eq!(waiter.await.unwrap().code, STOPPED_EXIT_CODE);
        sim.remove("t1").await.unwrap();
        assert!(sim.list().await.unwrap().is_empty());
        assert!(matches!(sim.start(&t).await, Err(ExecError::NotFound(_))));
    }
}

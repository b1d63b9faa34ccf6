//! An operator pauses a rolling update in progress and resumes it, on real
//! `shoald` processes with host-process tasks (the runtime is not the
//! subject, the update supervisor is).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_proto::v1 as pb;
use shoal_proto::v1::control_client::ControlClient;
use shoal_tests::{Cluster, Executor};
use tonic::Code;
use tonic::transport::Channel;

type Client = ControlClient<Channel>;

const SERVICE: &str = "rollout";
const REPLICAS: usize = 4;
/// What the update changes: a task carrying it runs the new spec.
const NEW_ENV: &str = "ROLLOUT=2";
/// Longer than a batch takes to follow the previous one (monitor period
/// plus delay), so an update that was not paused would be seen moving.
const HOLD: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(100);

/// Gives up on a wait with a message saying what never happened.
struct Deadline {
    what: &'static str,
    at: Instant,
}

impl Deadline {
    fn new(what: &'static str, within: Duration) -> Deadline {
        Deadline {
            what,
            at: Instant::now() + within,
        }
    }

    async fn tick(&self) -> Result<()> {
        if Instant::now() > self.at {
            bail!("timed out waiting until {}", self.what);
        }
        tokio::time::sleep(POLL).await;
        Ok(())
    }
}

async fn service(client: &mut Client) -> Result<pb::Service> {
    client
        .list_services(pb::ListServicesRequest {
            names: vec![SERVICE.into()],
        })
        .await?
        .into_inner()
        .services
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|spec| spec.name == SERVICE))
        .context("the service is not listed")
}

fn update_status(service: &pb::Service) -> (pb::UpdateState, String) {
    service.update_status.as_ref().map_or_else(
        || (pb::UpdateState::Unknown, String::new()),
        |s| (s.state(), s.message.clone()),
    )
}

/// Tasks meant to run, by spec: (new spec, new spec and running, old spec
/// and running).
async fn task_counts(client: &mut Client) -> Result<(usize, usize, usize)> {
    let tasks = client
        .list_tasks(pb::ListTasksRequest {
            services: vec![SERVICE.into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .tasks;
    let (mut new, mut new_running, mut old_running) = (0, 0, 0);
    for task in tasks
        .iter()
        .filter(|t| t.desired_state() == pb::TaskState::Running)
    {
        let is_new = task
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .is_some_and(|c| c.env.iter().any(|e| e == NEW_ENV));
        let running = task
            .status
            .as_ref()
            .is_some_and(|s| s.state() == pb::TaskState::Running);
        if is_new {
            new += 1;
            new_running += usize::from(running);
        } else {
            old_running += usize::from(running);
        }
    }
    Ok((new, new_running, old_running))
}

fn pause_request(spec: Option<pb::ServiceSpec>) -> pb::UpdateServiceRequest {
    pb::UpdateServiceRequest {
        service: SERVICE.into(),
        version: 0,
        spec,
        rollback: false,
        pause: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_a_rolling_update_and_resumes_it_by_updating_again() -> Result<()> {
    let cluster = tokio::task::block_in_place(|| -> Result<Cluster> {
        let cluster = Cluster::start(1, 0, Executor::Process)?;
        cluster.agent("m1").shoal_ok(&[
            "service",
            "create",
            "--detach",
            "--name",
            SERVICE,
            "--replicas",
            "4",
            "--update-parallelism",
            "1",
            "--update-delay",
            "2s",
            "--update-monitor",
            "500ms",
            "--stop-grace-period",
            "1s",
            "host",
            "sleep",
            "600",
        ])?;
        Ok(cluster)
    })?;
    let mut client = cluster.agent("m1").control().await?;
    let wait = Deadline::new("every replica runs", Duration::from_secs(20));
    while task_counts(&mut client).await?.2 < REPLICAS {
        wait.tick().await?;
    }

    // Roll out a new spec one task at a time.
    let current = service(&mut client).await?;
    let mut spec = current.spec.clone().context("the service has no spec")?;
    spec.task
        .as_mut()
        .and_then(|t| t.container.as_mut())
        .context("the service has no container spec")?
        .env
        .push(NEW_ENV.into());
    client
        .update_service(pb::UpdateServiceRequest {
            service: SERVICE.into(),
            version: current.meta.as_ref().map_or(0, |m| m.version),
            spec: Some(spec.clone()),
            rollback: false,
            pause: false,
        })
        .await?;
    let wait = Deadline::new("the update replaces a first task", Duration::from_secs(10));
    loop {
        let state = update_status(&service(&mut client).await?).0;
        if state == pb::UpdateState::Updating && task_counts(&mut client).await?.0 > 0 {
            break;
        }
        wait.tick().await?;
    }

    let paused = client
        .update_service(pause_request(None))
        .await?
        .into_inner()
        .service
        .context("the pause answered no service")?;
    assert_eq!(
        update_status(&paused),
        (pb::UpdateState::Paused, "paused by the operator".into())
    );
    let again = client
        .update_service(pause_request(None))
        .await
        .expect_err("a paused update cannot be paused again");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("already paused"), "{again:?}");
    let with_spec = client
        .update_service(pause_request(Some(spec.clone())))
        .await
        .expect_err("a pause carrying a spec is refused");
    assert_eq!(with_spec.code(), Code::InvalidArgument, "{with_spec:?}");

    // A replacement the supervisor created before the pause may still be
    // starting: once it runs, nothing moves until the operator resumes.
    let wait = Deadline::new("the last replacement runs", Duration::from_secs(10));
    let replaced = loop {
        let (new, new_running, _) = task_counts(&mut client).await?;
        if new == new_running {
            break new;
        }
        wait.tick().await?;
    };
    assert!(replaced < REPLICAS, "the update finished before the pause");
    let held_since = Instant::now();
    while held_since.elapsed() < HOLD {
        let (new, new_running, old_running) = task_counts(&mut client).await?;
        assert_eq!(
            (new, new_running, old_running),
            (replaced, replaced, REPLICAS - replaced),
            "tasks were replaced while the update was paused"
        );
        let status = update_status(&service(&mut client).await?);
        assert_eq!(status.0, pb::UpdateState::Paused, "{status:?}");
        tokio::time::sleep(POLL).await;
    }

    // Sending the spec again resumes with what is still outdated.
    let current = service(&mut client).await?;
    client
        .update_service(pb::UpdateServiceRequest {
            service: SERVICE.into(),
            version: current.meta.as_ref().map_or(0, |m| m.version),
            spec: current.spec.clone(),
            rollback: false,
            pause: false,
        })
        .await?;
    let wait = Deadline::new("the update completes", Duration::from_secs(30));
    while update_status(&service(&mut client).await?).0 != pb::UpdateState::Completed {
        wait.tick().await?;
    }
    assert_eq!(task_counts(&mut client).await?, (REPLICAS, REPLICAS, 0));

    let idle = client
        .update_service(pause_request(None))
        .await
        .expect_err("there is no update left to pause");
    assert_eq!(idle.code(), Code::FailedPrecondition, "{idle:?}");
    assert_eq!(
        idle.message(),
        format!("service {SERVICE} has no update in progress to pause")
    );
    Ok(())
}

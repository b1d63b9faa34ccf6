//! `shoal service ...`: create, inspect, scale, update, roll back and
//! remove services, and follow them until they converge.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use shoal_proto::v1 as pb;
use shoal_proto::v1::control_client::ControlClient;
use tonic::transport::Channel;

use super::output::{
    Filters, Format, Table, ago, has_label, health_name, key_value, parse_duration, print_json,
    short, slot_key, task_state_name, update_state_name, warn_if_stale,
};
use super::{Target, rpc_error, written_error};
use crate::fresh::write_fresh;

type Client = ControlClient<Channel>;

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Only ids.
        #[arg(long, short)]
        quiet: bool,
        /// table for reading, json for scripts.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// id=PREFIX, name=PREFIX, label=KEY[=VALUE],
        /// mode=replicated|global; repeatable.
        #[arg(long = "filter", short = 'f')]
        filters: Vec<String>,
    },
    /// List a service's tasks, with their history.
    Ps {
        /// table for reading, json for scripts.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Do not truncate ids and errors.
        #[arg(long)]
        no_trunc: bool,
        /// desired-state=running|shutdown, or node=NAME; repeatable.
        #[arg(long = "filter", short = 'f')]
        filters: Vec<String>,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Show services in detail (JSON).
    Inspect {
        /// Human-readable instead of JSON.
        #[arg(long)]
        pretty: bool,
        /// json (the default) or table (same as --pretty).
        #[arg(long, value_enum)]
        format: Option<Format>,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Change a service; tasks are replaced as its update settings say.
    Update(Box<UpdateArgs>),
    /// Set the number of replicas: NAME=N ...
    Scale {
        /// Return at once instead of following the tasks until they converge.
        #[arg(long, short)]
        detach: bool,
        #[arg(required = true)]
        scales: Vec<String>,
    },
    /// Return a service to its previous spec.
    Rollback {
        /// Return at once instead of following the tasks until they converge.
        #[arg(long, short)]
        detach: bool,
        service: String,
    },
    /// Show the output of a service's tasks (or one task), from every node.
    Logs(LogsArgs),
    /// Remove services and their tasks.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// Options shared by `create` and `update`; on update only those given
/// change.
#[derive(Args, Default)]
pub struct SpecArgs {
    /// Number of tasks (replicated mode).
    #[arg(long)]
    replicas: Option<u64>,
    /// Set an environment variable (KEY=VALUE); repeatable.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Service label (KEY=VALUE); repeatable.
    #[arg(long = "label", short = 'l')]
    labels: Vec<String>,
    /// Container label (KEY=VALUE); repeatable.
    #[arg(long = "container-label")]
    container_labels: Vec<String>,
    /// Placement constraint such as node.labels.zone==east; repeatable.
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// Spread over a node label: spread=node.labels.zone; repeatable.
    #[arg(long = "placement-pref")]
    placement_prefs: Vec<String>,
    /// Tasks of this service one node may run at most (0 = no limit).
    #[arg(long)]
    replicas_max_per_node: Option<u64>,
    /// Override the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Working directory inside the task.
    #[arg(long)]
    workdir: Option<String>,
    /// User (name or uid[:gid]) the task runs as.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// How long a stopping task has before it is killed (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    stop_grace_period: Option<Duration>,
    /// CPUs reserved per task (e.g. 0.5).
    #[arg(long)]
    reserve_cpu: Option<f64>,
    /// Memory reserved per task (e.g. 64M).
    #[arg(long, value_parser = parse_bytes)]
    reserve_memory: Option<i64>,
    /// CPUs a task may use at most (e.g. 1.5).
    #[arg(long)]
    limit_cpu: Option<f64>,
    /// Memory a task may use at most (e.g. 256M).
    #[arg(long, value_parser = parse_bytes)]
    limit_memory: Option<i64>,
    /// When to restart tasks: any, on-failure, none.
    #[arg(long, value_parser = ["any", "on-failure", "none"])]
    restart_condition: Option<String>,
    /// Wait between a task's end and its restart (default 5s).
    #[arg(long, value_parser = parse_duration)]
    restart_delay: Option<Duration>,
    /// Restarts allowed within the window before giving up (0 = no limit).
    #[arg(long)]
    restart_max_attempts: Option<u64>,
    /// Window over which restart attempts are counted (0 = forever).
    #[arg(long, value_parser = parse_duration)]
    restart_window: Option<Duration>,
    /// Tasks updated at once (0 = all).
    #[arg(long)]
    update_parallelism: Option<u64>,
    /// Wait between update batches.
    #[arg(long, value_parser = parse_duration)]
    update_delay: Option<Duration>,
    /// What a failed update does (default pause).
    #[arg(long, value_parser = ["pause", "continue", "rollback"])]
    update_failure_action: Option<String>,
    /// How long a replaced task must keep running to count as updated (default 5s).
    #[arg(long, value_parser = parse_duration)]
    update_monitor: Option<Duration>,
    /// Share of tasks that may fail before the failure action applies (0 to 1).
    #[arg(long)]
    update_max_failure_ratio: Option<f32>,
    /// Stop the old task before starting its replacement, or the reverse.
    #[arg(long, value_parser = ["stop-first", "start-first"])]
    update_order: Option<String>,
    /// Tasks rolled back at once (0 = all).
    #[arg(long)]
    rollback_parallelism: Option<u64>,
    /// Wait between rollback batches.
    #[arg(long, value_parser = parse_duration)]
    rollback_delay: Option<Duration>,
    /// What a failed rollback does (default pause).
    #[arg(long, value_parser = ["pause", "continue"])]
    rollback_failure_action: Option<String>,
    /// How long a rolled-back task must keep running to count (default 5s).
    #[arg(long, value_parser = parse_duration)]
    rollback_monitor: Option<Duration>,
    /// Share of tasks that may fail during a rollback (0 to 1).
    #[arg(long)]
    rollback_max_failure_ratio: Option<f32>,
    /// Order of stop and start during a rollback.
    #[arg(long, value_parser = ["stop-first", "start-first"])]
    rollback_order: Option<String>,
    /// Health check command, run with sh -c.
    #[arg(long)]
    health_cmd: Option<String>,
    /// Time between health checks (default 30s).
    #[arg(long, value_parser = parse_duration)]
    health_interval: Option<Duration>,
    /// How long one check may take (default 30s).
    #[arg(long, value_parser = parse_duration)]
    health_timeout: Option<Duration>,
    /// Failed checks in a row that make a task unhealthy (default 3).
    #[arg(long)]
    health_retries: Option<u32>,
    /// Grace period after start during which failed checks do not count.
    #[arg(long, value_parser = parse_duration)]
    health_start_period: Option<Duration>,
    /// Ignore the image's HEALTHCHECK.
    #[arg(long)]
    no_healthcheck: bool,
    /// Return at once instead of following the tasks until they converge.
    #[arg(long, short)]
    detach: bool,
    /// Print only the service id.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
pub struct CreateArgs {
    /// The service's name (default: a generated one).
    #[arg(long)]
    name: Option<String>,
    /// replicated or global.
    #[arg(long, value_parser = ["replicated", "global"], default_value = "replicated")]
    mode: String,
    #[command(flatten)]
    spec: SpecArgs,
    image: String,
    /// Command and arguments run in the task.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

impl CreateArgs {
    /// The spec `service create` sends for these flags.
    pub fn to_spec(&self) -> anyhow::Result<pb::ServiceSpec> {
        let global = self.mode == "global";
        if global && self.spec.replicas.is_some() {
            anyhow::bail!(
                "a global service runs one task per node: --replicas does not apply (leave it \
                 out, or use --mode replicated)"
            );
        }
        let mut spec = pb::ServiceSpec {
            name: self.name.clone().unwrap_or_default(),
            mode: if global {
                pb::ServiceMode::Global as i32
            } else {
                pb::ServiceMode::Replicated as i32
            },
            replicas: if global { 0 } else { 1 },
            update: Some(shoal_proto::defaults::update_config()),
            rollback: Some(shoal_proto::defaults::update_config()),
            task: Some(pb::TaskSpec {
                restart: Some(shoal_proto::defaults::restart_policy()),
                ..Default::default()
            }),
            ..Default::default()
        };
        {
            let task = spec.task.get_or_insert_with(Default::default);
            let container = task.container.get_or_insert_with(Default::default);
            container.image = self.image.clone();
            container.args = self.command.clone();
        }
        self.spec.apply(&mut spec)?;
        Ok(spec)
    }
}

#[derive(Args)]
pub struct UpdateArgs {
    /// Run tasks from this image.
    #[arg(long)]
    image: Option<String>,
    /// Replace the arguments (space separated).
    #[arg(long)]
    args: Option<String>,
    /// Add or change an environment variable (KEY=VALUE); repeatable.
    #[arg(long = "env-add")]
    env_add: Vec<String>,
    /// Remove an environment variable (KEY); repeatable.
    #[arg(long = "env-rm")]
    env_rm: Vec<String>,
    /// Add a placement constraint; repeatable.
    #[arg(long = "constraint-add")]
    constraint_add: Vec<String>,
    /// Remove a placement constraint (as written when added); repeatable.
    #[arg(long = "constraint-rm")]
    constraint_rm: Vec<String>,
    /// Remove a service label (KEY); repeatable.
    #[arg(long = "label-rm")]
    label_rm: Vec<String>,
    /// Replace tasks even if nothing changed.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    spec: SpecArgs,
    service: String,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing new lines, also from tasks that start later.
    #[arg(long, short)]
    follow: bool,
    /// Lines from the end of each task's output (default: all).
    #[arg(long, short = 'n')]
    tail: Option<u64>,
    /// Only lines since this time: a duration ago (10m) or RFC 3339.
    #[arg(long)]
    since: Option<String>,
    /// Prefix lines with their time.
    #[arg(long, short)]
    timestamps: bool,
    /// Leave task ids out of the prefix.
    #[arg(long)]
    no_task_ids: bool,
    /// Full task ids in the prefix.
    #[arg(long)]
    no_trunc: bool,
    /// Only the lines, no prefix.
    #[arg(long)]
    raw: bool,
    /// A service or task (id, prefix or name).
    target: String,
}

fn parse_since(text: &str) -> anyhow::Result<i64> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        let ms = time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        return Ok(ms);
    }
    let ago = parse_duration(text)
        .map_err(|e| anyhow::anyhow!("{e}; or give a time like 2026-11-22T10:00:00Z"))?;
    Ok(super::output::now_ms() - ago.as_millis() as i64)
}

async fn logs(client: &mut Client, target: &Target, args: LogsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let since_ms = args
        .since
        .as_deref()
        .map(parse_since)
        .transpose()?
        .unwrap_or(0);
    let options = pb::LogsOptions {
        follow: args.follow,
        tail: args.tail.map_or(-1, |n| n as i64),
        since_ms,
        stdout: true,
        stderr: true,
    };
    // A task id or name is tried as a task when it is not a service.
    let is_service = find(client, target, &args.target).await.is_ok();
    let request = pb::LogsRequest {
        services: if is_service {
            vec![args.target.clone()]
        } else {
            Vec::new()
        },
        tasks: if is_service {
            Vec::new()
        } else {
            vec![args.target.clone()]
        },
        options: Some(options),
    };
    let mut stream = match client.logs(request).await {
        Ok(stream) => stream.into_inner(),
        // Neither a service nor a task: say both were looked for.
        Err(status) if !is_service && status.code() == tonic::Code::NotFound => {
            anyhow::bail!(
                "no service or task named {:?}: 'shoal service ls' lists the services, 'shoal \
                 service ps SERVICE' a service's tasks",
                args.target
            )
        }
        Err(status) => return Err(rpc_error(target, status)),
    };
    let mut task_names: std::collections::HashMap<String, String> = Default::default();
    let mut node_names: std::collections::HashMap<String, String> = Default::default();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let message = tokio::select! {
            message = stream.message() => message.map_err(|s| rpc_error(target, s))?,
            _ = &mut interrupted => return Ok(()),
        };
        let Some(message) = message else {
            return Ok(());
        };
        task_names.extend(message.task_names);
        node_names.extend(message.node_names);
        for line in &message.lines {
            let context = line.context.clone().unwrap_or_default();
            let mut prefix = String::new();
            if args.timestamps {
                let time = std::time::UNIX_EPOCH
                    + std::time::Duration::from_nanos(line.timestamp_ns.max(0) as u64);
                prefix.push_str(&humantime::format_rfc3339_nanos(time).to_string());
                prefix.push(' ');
            }
            if !args.raw {
                let full = task_names
                    .get(&context.task_id)
                    .cloned()
                    .unwrap_or_else(|| context.task_id.clone());
                let name = if args.no_task_ids {
                    full.rsplit_once('.')
                        .map_or(full.as_str(), |(base, _)| base)
                        .to_string()
                } else if args.no_trunc {
                    full
                } else {
                    match full.rsplit_once('.') {
                        Some((base, id)) => format!("{base}.{}", short(id)),
                        None => full,
                    }
                };
                let node = node_names
                    .get(&context.node_id)
                    .cloned()
                    .unwrap_or_else(|| short(&context.node_id).to_string());
                prefix.push_str(&format!("{name}@{node}    | "));
            }
            let text = String::from_utf8_lossy(&line.data);
            if line.stream == pb::LogStream::Stderr as i32 {
                let _ = writeln!(stderr.lock(), "{prefix}{text}");
            } else {
                let _ = writeln!(stdout.lock(), "{prefix}{text}");
            }
        }
        for gap in &message.gaps {
            let task = gap
                .context
                .as_ref()
                .and_then(|c| task_names.get(&c.task_id))
                .cloned()
                .unwrap_or_default();
            let _ = writeln!(
                stderr.lock(),
                "… {} lines of {task} dropped: this reader fell behind",
                gap.dropped
            );
        }
    }
}

fn parse_bytes(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((t, ""), |i| t.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: use forms like 64M, 1G or 512k"))?;
    let scale = match unit.to_ascii_lowercase().trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("invalid size unit in {text:?}: use k, M or G")),
    };
    Ok((value * scale) as i64)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn failure_action(name: &str) -> i32 {
    match name {
        "continue" => pb::FailureAction::Continue as i32,
        "rollback" => pb::FailureAction::Rollback as i32,
        _ => pb::FailureAction::Pause as i32,
    }
}

fn update_order(name: &str) -> i32 {
    match name {
        "start-first" => pb::UpdateOrder::StartFirst as i32,
        _ => pb::UpdateOrder::StopFirst as i32,
    }
}

fn set_labels(
    map: &mut std::collections::HashMap<String, String>,
    items: &[String],
) -> anyhow::Result<()> {
    for item in items {
        let (k, v) = key_value(item);
        if k.is_empty() {
            anyhow::bail!("invalid label {item:?}: use KEY=VALUE");
        }
        map.insert(k, v);
    }
    Ok(())
}

impl SpecArgs {
    /// Writes the options that were given into `spec`.
    fn apply(&self, spec: &mut pb::ServiceSpec) -> anyhow::Result<()> {
        if let Some(replicas) = self.replicas {
            spec.replicas = replicas;
        }
        set_labels(&mut spec.labels, &self.labels)?;
        let task = spec.task.get_or_insert_with(Default::default);
        let container = task.container.get_or_insert_with(Default::default);
        for env in &self.env {
            let (k, _) = key_value(env);
            container.env.retain(|e| key_value(e).0 != k);
            container.env.push(env.clone());
        }
        set_labels(&mut container.labels, &self.container_labels)?;
        if let Some(entrypoint) = &self.entrypoint {
            container.command = entrypoint.split_whitespace().map(String::from).collect();
        }
        if let Some(dir) = &self.workdir {
            container.dir = dir.clone();
        }
        if let Some(user) = &self.user {
            container.user = user.clone();
        }
        if let Some(grace) = self.stop_grace_period {
            container.stop_grace_period_ms = ms(grace);
        }
        if self.no_healthcheck {
            container.no_healthcheck = true;
            container.healthcheck = None;
        }
        if self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some()
        {
            let health = container.healthcheck.get_or_insert_with(Default::default);
            if let Some(cmd) = &self.health_cmd {
                health.test = vec!["CMD-SHELL".into(), cmd.clone()];
            }
            if let Some(d) = self.health_interval {
                health.interval_ms = ms(d);
            }
            if let Some(d) = self.health_timeout {
                health.timeout_ms = ms(d);
            }
            if let Some(n) = self.health_retries {
                health.retries = n;
            }
            if let Some(d) = self.health_start_period {
                health.start_period_ms = ms(d);
            }
            container.no_healthcheck = false;
        }
        let reservations = task.reservations.get_or_insert_with(Default::default);
        if let Some(cpu) = self.reserve_cpu {
            reservations.nano_cpus = (cpu * 1e9) as i64;
        }
        if let Some(mem) = self.reserve_memory {
            reservations.memory_bytes = mem;
        }
        let limits = task.limits.get_or_insert_with(Default::default);
        if let Some(cpu) = self.limit_cpu {
            limits.nano_cpus = (cpu * 1e9) as i64;
        }
        if let Some(mem) = self.limit_memory {
            limits.memory_bytes = mem;
        }
        let restart = task.restart.get_or_insert_with(Default::default);
        if let Some(condition) = &self.restart_condition {
            restart.condition = match condition.as_str() {
                "none" => pb::RestartCondition::None,
                "on-failure" => pb::RestartCondition::OnFailure,
                _ => pb::RestartCondition::Any,
            } as i32;
        }
        if let Some(d) = self.restart_delay {
            restart.delay_ms = ms(d);
        }
        if let Some(n) = self.restart_max_attempts {
            restart.max_attempts = n;
        }
        if let Some(d) = self.restart_window {
            restart.window_ms = ms(d);
        }
        let placement = task.placement.get_or_insert_with(Default::default);
        placement
            .constraints
            .extend(self.constraints.iter().cloned());
        for pref in &self.placement_prefs {
            let spread = pref.strip_prefix("spread=").ok_or_else(|| {
                anyhow::anyhow!(
                    "invalid placement preference {pref:?}: use spread=node.labels.NAME"
                )
            })?;
            placement.preferences.push(pb::PlacementPreference {
                spread: spread.to_string(),
            });
        }
        if let Some(n) = self.replicas_max_per_node {
            placement.max_replicas_per_node = n;
        }
        let update = spec.update.get_or_insert_with(Default::default);
        if let Some(n) = self.update_parallelism {
            update.parallelism = n;
        }
        if let Some(d) = self.update_delay {
            update.delay_ms = ms(d);
        }
        if let Some(a) = &self.update_failure_action {
            update.failure_action = failure_action(a);
        }
        if let Some(d) = self.update_monitor {
            update.monitor_ms = ms(d);
        }
        if let Some(r) = self.update_max_failure_ratio {
            update.max_failure_ratio = r;
        }
        if let Some(o) = &self.update_order {
            update.order = update_order(o);
        }
        let rollback = spec.rollback.get_or_insert_with(Default::default);
        if let Some(n) = self.rollback_parallelism {
            rollback.parallelism = n;
        }
        if let Some(d) = self.rollback_delay {
            rollback.delay_ms = ms(d);
        }
        if let Some(a) = &self.rollback_failure_action {
            rollback.failure_action = failure_action(a);
        }
        if let Some(d) = self.rollback_monitor {
            rollback.monitor_ms = ms(d);
        }
        if let Some(r) = self.rollback_max_failure_ratio {
            rollback.max_failure_ratio = r;
        }
        if let Some(o) = &self.rollback_order {
            rollback.order = update_order(o);
        }
        Ok(())
    }
}

pub async fn run(target: &Target, command: ServiceCommand) -> anyhow::Result<()> {
    let mut client = target.connect().await?;
    let rpc = |s| rpc_error(target, s);
    match command {
        ServiceCommand::Create(args) => {
            let spec = args.to_spec()?;
            let service = client
                .create_service(pb::CreateServiceRequest { spec: Some(spec) })
                .await
                .map_err(rpc)?
                .into_inner()
                .service
                .ok_or_else(|| anyhow::anyhow!("the manager returned no service"))?;
            let id = service_id(&service).to_string();
            println!("{id}");
            if !args.spec.detach && !args.spec.quiet {
                converge(&mut client, target, &id, false).await?;
            }
        }
        ServiceCommand::Ls {
            quiet,
            format,
            filters,
        } => {
            let filters = Filters::parse(&filters, &["id", "name", "label", "mode"])?;
            let mut response = client
                .list_services(pb::ListServicesRequest::default())
                .await
                .map_err(rpc)?
                .into_inner();
            warn_if_stale(response.read.as_ref());
            response.services.retain(|service| {
                let spec = service.spec.clone().unwrap_or_default();
                filters.allow("id", |prefix| service_id(service).starts_with(prefix))
                    && filters.allow("name", |prefix| spec.name.starts_with(prefix))
                    && filters.allow("label", |label| has_label(&spec.labels, label))
                    && filters.allow("mode", |mode| mode_name(&spec) == mode)
            });
            if quiet {
                for s in &response.services {
                    println!("{}", service_id(s));
                }
                return Ok(());
            }
            match format {
                Format::Json => print_json(&Value::Array(
                    response.services.iter().map(service_summary).collect(),
                ))?,
                Format::Table => {
                    let mut table =
                        Table::new(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "UPDATE"]);
                    for s in &response.services {
                        let spec = s.spec.clone().unwrap_or_default();
                        table.row(vec![
                            short(service_id(s)).to_string(),
                            spec.name.clone(),
                            mode_name(&spec).into(),
                            format!("{}/{}", s.replicas_running, s.replicas_desired),
                            image_of(&spec),
                            s.update_status
                                .as_ref()
                                .map(|u| update_state_name(u.state).to_string())
                                .unwrap_or_default(),
                        ]);
                    }
                    table.print();
                }
            }
        }
        ServiceCommand::Ps {
            format,
            no_trunc,
            filters,
            services,
        } => {
            let query = pb::ListTasksRequest {
                services,
                ..task_query(&filters, &["desired-state", "node"])?
            };
            let response = client.list_tasks(query).await.map_err(rpc)?.into_inner();
            warn_if_stale(response.read.as_ref());
            print_tasks(response.tasks, format, no_trunc)?;
        }
        ServiceCommand::Inspect {
            services,
            format,
            pretty,
        } => {
            let response = client
                .list_services(pb::ListServicesRequest { names: services })
                .await
                .map_err(rpc)?
                .into_inner();
            warn_if_stale(response.read.as_ref());
            if pretty || format == Some(Format::Table) {
                for service in &response.services {
                    print_pretty(&service_detail(service));
                }
            } else {
                print_json(&Value::Array(
                    response.services.iter().map(service_detail).collect(),
                ))?;
            }
        }
        ServiceCommand::Update(args) => {
            let updated = change_service(&mut client, target, &args.service, |spec| {
                let task = spec.task.get_or_insert_with(Default::default);
                let container = task.container.get_or_insert_with(Default::default);
                if let Some(image) = &args.image {
                    container.image = image.clone();
                }
                if let Some(a) = &args.args {
                    container.args = a.split_whitespace().map(String::from).collect();
                }
                container
                    .env
                    .retain(|e| !args.env_rm.contains(&key_value(e).0));
                for env in &args.env_add {
                    let (k, _) = key_value(env);
                    container.env.retain(|e| key_value(e).0 != k);
                    container.env.push(env.clone());
                }
                let placement = task.placement.get_or_insert_with(Default::default);
                placement
                    .constraints
                    .retain(|c| !args.constraint_rm.contains(c));
                placement
                    .constraints
                    .extend(args.constraint_add.iter().cloned());
                if args.force {
                    task.force_update += 1;
                }
                for key in &args.label_rm {
                    spec.labels.remove(key);
                }
                args.spec.apply(spec)
            })
            .await?;
            println!("{}", spec_name(&updated));
            if !args.spec.detach && !args.spec.quiet {
                converge(&mut client, target, service_id(&updated), false).await?;
            }
        }
        ServiceCommand::Scale { detach, scales } => {
            let mut failed = Vec::new();
            for item in &scales {
                let Some((name, n)) = item.split_once('=') else {
                    anyhow::bail!("invalid scale {item:?}: use SERVICE=REPLICAS, e.g. web=5");
                };
                let replicas: u64 = n.parse().map_err(|_| {
                    anyhow::anyhow!("invalid replica count {n:?} for {name}: use a whole number")
                })?;
                let result = change_service(&mut client, target, name, |spec| {
                    if spec.mode == pb::ServiceMode::Global as i32 {
                        anyhow::bail!(
                            "service {name} is global: it runs one task per node, so it cannot \
                             be scaled"
                        );
                    }
                    spec.replicas = replicas;
                    Ok(())
                })
                .await;
                match result {
                    Ok(service) => {
                        println!("{name} scaled to {replicas}");
                        if !detach {
                            converge(&mut client, target, service_id(&service), false).await?;
                        }
                    }
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("\n"));
            }
        }
        ServiceCommand::Rollback { detach, service } => {
            let current = find(&mut client, target, &service).await?;
            let updated = client
                .update_service(pb::UpdateServiceRequest {
                    service: service_id(&current).to_string(),
                    // What runs now is rolled back, as `docker service
                    // rollback` does: the update supervisor writes the
                    // service as it goes, and a version read a moment ago
                    // would make the rollback fail for that alone.
                    version: 0,
                    spec: None,
                    rollback: true,
                    pause: false,
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .service
                .ok_or_else(|| anyhow::anyhow!("the manager returned no service"))?;
            println!("{}", spec_name(&updated));
            println!("rollback: manually requested rollback");
            if !detach {
                converge(&mut client, target, service_id(&updated), true).await?;
            }
        }
        ServiceCommand::Logs(args) => logs(&mut client, target, args).await?,
        ServiceCommand::Rm { services } => {
            let mut failed = Vec::new();
            for name in services {
                match client
                    .remove_service(pb::RemoveServiceRequest {
                        service: name.clone(),
                    })
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(status) => failed.push(status.message().to_string()),
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("\n"));
            }
        }
    }
    Ok(())
}

/// Reads a service, changes its spec and writes it back naming the
/// version read (made again from a fresh read if the cluster changed the
/// service meanwhile, see [`crate::fresh`]). Answers the service written.
async fn change_service(
    client: &mut Client,
    target: &Target,
    name: &str,
    change: impl Fn(&mut pb::ServiceSpec) -> anyhow::Result<()>,
) -> anyhow::Result<pb::Service> {
    let service = find(client, target, name).await?;
    let written = write_fresh(
        service,
        |service| {
            let mut client = client.clone();
            let mut spec = service.spec.clone().unwrap_or_default();
            let changed = change(&mut spec);
            let request = pb::UpdateServiceRequest {
                service: service_id(service).to_string(),
                version: service.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
                rollback: false,
                pause: false,
            };
            async move {
                changed?;
                client
                    .update_service(request)
                    .await?
                    .into_inner()
                    .service
                    .ok_or_else(|| anyhow::anyhow!("the manager returned no service"))
            }
        },
        || {
            let mut client = client.clone();
            async move { find(&mut client, target, name).await }
        },
    )
    .await;
    written.map_err(|e| written_error(target, e))
}

async fn find(client: &mut Client, target: &Target, name: &str) -> anyhow::Result<pb::Service> {
    client
        .list_services(pb::ListServicesRequest {
            names: vec![name.to_string()],
        })
        .await
        .map_err(|s| rpc_error(target, s))?
        .into_inner()
        .services
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no such service: {name}"))
}

fn service_id(service: &pb::Service) -> &str {
    service.meta.as_ref().map(|m| m.id.as_str()).unwrap_or("")
}

fn spec_name(service: &pb::Service) -> String {
    service
        .spec
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

/// The task query `ps --filter` asks for: `desired-state=running|shutdown`
/// and `node=NODE`, as far as `keys` allows them.
pub fn task_query(filters: &[String], keys: &[&str]) -> anyhow::Result<pb::ListTasksRequest> {
    let filters = Filters::parse(filters, keys)?;
    let mut query = pb::ListTasksRequest {
        nodes: filters.values("node").to_vec(),
        ..Default::default()
    };
    for state in filters.values("desired-state") {
        match state.as_str() {
            "running" => query.desired_states.push(pb::TaskState::Running as i32),
            "shutdown" => query
                .desired_states
                .extend([pb::TaskState::Shutdown as i32, pb::TaskState::Remove as i32]),
            other => anyhow::bail!("invalid desired-state {other:?}: use running or shutdown"),
        }
    }
    Ok(query)
}

fn mode_name(spec: &pb::ServiceSpec) -> &'static str {
    if spec.mode == pb::ServiceMode::Global as i32 {
        "global"
    } else {
        "replicated"
    }
}

fn image_of(spec: &pb::ServiceSpec) -> String {
    spec.task
        .as_ref()
        .and_then(|t| t.container.as_ref())
        .map(|c| c.image.clone())
        .unwrap_or_default()
}

/// The shape of `service ls --format json`.
fn service_summary(service: &pb::Service) -> Value {
    let spec = service.spec.clone().unwrap_or_default();
    json!({
        "id": service_id(service),
        "name": spec.name,
        "mode": mode_name(&spec),
        "replicas_running": service.replicas_running,
        "replicas_desired": service.replicas_desired,
        "image": image_of(&spec),
        "update_state": service.update_status.as_ref().map(|u| update_state_name(u.state)),
    })
}

/// The shape of `service inspect` (the console's inspect pane too).
pub(crate) fn service_detail(service: &pb::Service) -> Value {
    let meta = service.meta.clone().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let container = task.container.clone().unwrap_or_default();
    let restart = task.restart.unwrap_or_default();
    let placement = task.placement.clone().unwrap_or_default();
    let update = spec.update.unwrap_or_default();
    let config = |u: &pb::UpdateConfig| {
        json!({
            "parallelism": u.parallelism,
            "delay_ms": u.delay_ms,
            "failure_action": match pb::FailureAction::try_from(u.failure_action) {
                Ok(pb::FailureAction::Continue) => "continue",
                Ok(pb::FailureAction::Rollback) => "rollback",
                _ => "pause",
            },
            "monitor_ms": u.monitor_ms,
            "max_failure_ratio": u.max_failure_ratio,
            "order": if u.order == pb::UpdateOrder::StartFirst as i32 { "start-first" } else { "stop-first" },
        })
    };
    json!({
        "id": meta.id,
        "version": meta.version,
        "created_at_ms": meta.created_at_ms,
        "updated_at_ms": meta.updated_at_ms,
        "spec": {
            "name": spec.name,
            "labels": spec.labels,
            "mode": mode_name(&spec),
            "replicas": spec.replicas,
            "container": {
                "image": container.image,
                "command": container.command,
                "args": container.args,
                "env": container.env,
                "labels": container.labels,
                "dir": container.dir,
                "user": container.user,
                "stop_grace_period_ms": container.stop_grace_period_ms,
                "healthcheck": container.healthcheck.as_ref().map(|h| json!({
                    "test": h.test,
                    "interval_ms": h.interval_ms,
                    "timeout_ms": h.timeout_ms,
                    "retries": h.retries,
                    "start_period_ms": h.start_period_ms,
                })),
                "no_healthcheck": container.no_healthcheck,
            },
            "restart": {
                "condition": match pb::RestartCondition::try_from(restart.condition) {
                    Ok(pb::RestartCondition::None) => "none",
                    Ok(pb::RestartCondition::OnFailure) => "on-failure",
                    _ => "any",
                },
                "delay_ms": restart.delay_ms,
                "max_attempts": restart.max_attempts,
                "window_ms": restart.window_ms,
            },
            "placement": {
                "constraints": placement.constraints,
                "preferences": placement.preferences.iter().map(|p| &p.spread).collect::<Vec<_>>(),
                "max_replicas_per_node": placement.max_replicas_per_node,
            },
            "update": config(&update),
            "rollback": config(&spec.rollback.unwrap_or_default()),
        },
        "previous_image": service.previous_spec.as_ref().map(image_of),
        "update_status": service.update_status.as_ref().map(|u| json!({
            "state": update_state_name(u.state),
            "started_at_ms": u.started_at_ms,
            "completed_at_ms": u.completed_at_ms,
            "message": u.message,
        })),
        "replicas_running": service.replicas_running,
        "replicas_desired": service.replicas_desired,
    })
}

/// `service inspect --pretty`: the JSON detail laid out for reading.
fn print_pretty(detail: &Value) {
    let spec = &detail["spec"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    // Settings, not ages: 0 is "0s", as docker prints them.
    let ms = |v: &Value| {
        v.as_u64()
            .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string())
            .unwrap_or_default()
    };
    println!("ID:\t\t{}", text(&detail["id"]));
    println!("Name:\t\t{}", text(&spec["name"]));
    println!("Mode:\t\t{}", text(&spec["mode"]));
    if spec["mode"] == "replicated" {
        println!(" Replicas:\t{}", text(&spec["replicas"]));
    }
    println!(
        "Running:\t{}/{}",
        text(&detail["replicas_running"]),
        text(&detail["replicas_desired"])
    );
    if let Some(status) = detail["update_status"].as_object() {
        println!("UpdateStatus:");
        println!(" State:\t\t{}", text(&status["state"]));
        println!(" Message:\t{}", text(&status["message"]));
    }
    for (title, key) in [("UpdateConfig", "update"), ("RollbackConfig", "rollback")] {
        let config = &spec[key];
        println!("{title}:");
        println!(" Parallelism:\t{}", text(&config["parallelism"]));
        println!(" Delay:\t\t{}", ms(&config["delay_ms"]));
        println!(" On failure:\t{}", text(&config["failure_action"]));
        println!(" Monitoring Period: {}", ms(&config["monitor_ms"]));
        println!(" Max failure ratio: {}", text(&config["max_failure_ratio"]));
        println!(" Update order:\t{}", text(&config["order"]));
    }
    let container = &spec["container"];
    println!("ContainerSpec:");
    println!(" Image:\t\t{}", text(&container["image"]));
    if let Some(args) = container["args"].as_array().filter(|a| !a.is_empty()) {
        println!(
            " Args:\t\t{}",
            args.iter().map(text).collect::<Vec<_>>().join(" ")
        );
    }
    if let Some(env) = container["env"].as_array().filter(|e| !e.is_empty()) {
        println!(
            " Env:\t\t{}",
            env.iter().map(text).collect::<Vec<_>>().join(" ")
        );
    }
    if let Some(constraints) = spec["placement"]["constraints"]
        .as_array()
        .filter(|c| !c.is_empty())
    {
        println!("Placement:");
        for c in constraints {
            println!(" Constraint:\t{}", text(c));
        }
    }
    println!();
}

fn task_name(task: &pb::Task) -> String {
    if task.slot > 0 {
        format!("{}.{}", task.service_name, task.slot)
    } else {
        format!("{}.{}", task.service_name, short(&task.node_id))
    }
}

fn task_id(task: &pb::Task) -> &str {
    task.meta.as_ref().map(|m| m.id.as_str()).unwrap_or("")
}

/// One row of `service ps --format json` (the console's task inspect too).
pub(crate) fn task_row(t: &pb::Task) -> Value {
    let status = t.status.clone().unwrap_or_default();
    json!({
        "id": task_id(t),
        "service": t.service_name,
        "service_id": t.service_id,
        "slot": t.slot,
        "name": task_name(t),
        "node": t.node_hostname,
        "node_id": t.node_id,
        "image": t.spec.as_ref().and_then(|s| s.container.as_ref()).map(|c| c.image.clone()),
        "desired_state": task_state_name(t.desired_state),
        "current_state": task_state_name(status.state),
        "since_ms": status.timestamp_ms,
        "message": status.message,
        "error": status.err,
        "exit_code": status.has_exit_code.then_some(status.exit_code),
        "health": health_name(status.health),
    })
}

/// The slot a task fills, across services.
fn slot_of(task: &pb::Task) -> (&str, (u64, &str)) {
    (task.service_name.as_str(), slot_key(task))
}

/// As `docker service ps`: by slot, each slot's newest task first and its
/// history under it, wherever each task ran.
fn sort_by_slot(tasks: &mut [pb::Task]) {
    let created = |t: &pb::Task| t.meta.as_ref().map_or(0, |m| m.created_at_ms);
    tasks.sort_by(|a, b| {
        slot_of(a)
            .cmp(&slot_of(b))
            .then(created(b).cmp(&created(a)))
    });
}

/// Tasks as `docker service ps` lists them: per slot, the newest first and
/// its history below it marked with `\_`.
pub fn print_tasks(mut tasks: Vec<pb::Task>, format: Format, no_trunc: bool) -> anyhow::Result<()> {
    sort_by_slot(&mut tasks);
    if format == Format::Json {
        let rows: Vec<Value> = tasks.iter().map(task_row).collect();
        return print_json(&Value::Array(rows));
    }
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
    ]);
    let mut previous_slot = None;
    for t in &tasks {
        let status = t.status.clone().unwrap_or_default();
        let slot = slot_of(t);
        let name = if previous_slot == Some(slot) {
            format!(" \\_ {}", task_name(t))
        } else {
            task_name(t)
        };
        previous_slot = Some(slot);
        let mut error = status.err.clone();
        let failed = matches!(
            pb::TaskState::try_from(status.state),
            Ok(pb::TaskState::Failed | pb::TaskState::Rejected)
        );
        if failed && status.has_exit_code && status.exit_code != 0 && !error.contains("exit") {
            error = format!("{} (exit code {})", error, status.exit_code)
                .trim()
                .to_string();
        }
        if !no_trunc && error.chars().count() > 40 {
            error = format!("\"{}…\"", error.chars().take(38).collect::<String>());
        }
        let id = task_id(t);
        table.row(vec![
            if no_trunc {
                id.to_string()
            } else {
                short(id).to_string()
            },
            name,
            t.spec
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .map(|c| c.image.clone())
                .unwrap_or_default(),
            t.node_hostname.clone(),
            super::output::capitalize(task_state_name(t.desired_state)),
            format!(
                "{} {}{}",
                super::output::capitalize(task_state_name(status.state)),
                ago(status.timestamp_ms),
                health_name(status.health).map_or(String::new(), |h| format!(" ({h})"))
            ),
            error,
        ]);
    }
    table.print();
    Ok(())
}

/// How long tasks must stay running before a service counts as converged.
const VERIFY: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(250);

/// Follows a service until its tasks run the current spec, as `docker
/// service create` does, drawing a line per slot. Ctrl-C stops following,
/// not the operation.
async fn converge(
    client: &mut Client,
    target: &Target,
    id: &str,
    rollback: bool,
) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal();
    let mut drawn_lines = 0usize;
    let mut last_text = String::new();
    let mut stable_since: Option<Instant> = None;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let service = find(client, target, id).await?;
        let spec = service.spec.clone().unwrap_or_default();
        let tasks = client
            .list_tasks(pb::ListTasksRequest {
                services: vec![id.to_string()],
                ..Default::default()
            })
            .await
            .map_err(|s| rpc_error(target, s))?
            .into_inner()
            .tasks;
        let progress = Progress::of(&spec, &tasks, service.replicas_desired);
        let text = progress.render(tty);
        if tty {
            // Redraw in place.
            for _ in 0..drawn_lines {
                print!("\x1b[1A\x1b[2K");
            }
            print!("{text}");
            drawn_lines = text.lines().count();
        } else if text != last_text {
            print!("{text}");
        }
        last_text = text;
        let update = service.update_status.clone().unwrap_or_default();
        match pb::UpdateState::try_from(update.state) {
            Ok(pb::UpdateState::Paused | pb::UpdateState::RollbackPaused) => {
                anyhow::bail!(
                    "{}: {}; fix the cause, then 'shoal service update' again or 'shoal service \
                     rollback {}'",
                    update_state_name(update.state).replace('_', " "),
                    update.message,
                    spec.name
                );
            }
            Ok(pb::UpdateState::RollbackStarted) if !rollback => {
                println!("rollback: {}", update.message);
            }
            _ => {}
        }
        let updating = matches!(
            pb::UpdateState::try_from(update.state),
            Ok(pb::UpdateState::Updating | pb::UpdateState::RollbackStarted)
        );
        if progress.converged() && !updating {
            let since = *stable_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= VERIFY {
                println!("verify: Service {} converged", spec.name);
                return Ok(());
            }
        } else {
            stable_since = None;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = &mut interrupted => {
                println!(
                    "\nOperation continuing in background.\nUse `shoal service ps {}` to check progress.",
                    spec.name
                );
                return Ok(());
            }
        }
    }
}

/// Per slot, the newest task with the current spec.
struct Progress {
    slots: BTreeMap<String, (String, String)>,
    running: usize,
    desired: usize,
}

impl Progress {
    fn of(spec: &pb::ServiceSpec, tasks: &[pb::Task], desired: u64) -> Self {
        let mut newest: BTreeMap<String, &pb::Task> = BTreeMap::new();
        for task in tasks {
            if task.desired_state > pb::TaskState::Running as i32 || task.spec != spec.task {
                continue;
            }
            let key = if task.slot > 0 {
                format!("{:>3}", task.slot)
            } else {
                task.node_hostname.clone()
            };
            let created = |t: &pb::Task| t.meta.as_ref().map(|m| m.created_at_ms).unwrap_or(0);
            if newest.get(&key).is_none_or(|t| created(t) < created(task)) {
                newest.insert(key, task);
            }
        }
        let mut running = 0;
        let slots = newest
            .into_iter()
            .map(|(key, task)| {
                let status = task.status.clone().unwrap_or_default();
                if status.state == pb::TaskState::Running as i32 {
                    running += 1;
                }
                let detail = if status.err.is_empty() {
                    String::new()
                } else {
                    status.err.clone()
                };
                (key, (task_state_name(status.state).to_string(), detail))
            })
            .collect();
        Progress {
            slots,
            running,
            desired: desired as usize,
        }
    }

    fn converged(&self) -> bool {
        self.running == self.desired
    }

    fn render(&self, tty: bool) -> String {
        let mut out = format!(
            "overall progress: {} out of {} tasks\n",
            self.running, self.desired
        );
        if !tty && self.slots.len() > 20 {
            return out;
        }
        for (slot, (state, detail)) in self.slots.iter().take(20) {
            let bar = if state == "running" {
                "[==================================================>]".to_string()
            } else {
                let step = [
                    "new",
                    "pending",
                    "assigned",
                    "accepted",
                    "preparing",
                    "starting",
                ]
                .iter()
                .position(|s| s == state)
                .unwrap_or(0);
                let filled = step * 50 / 6;
                format!("[{}>{}]", "=".repeat(filled), " ".repeat(50 - filled))
            };
            let name = slot.trim();
            let label = if name.chars().all(|c| c.is_ascii_digit()) {
                format!("{name}/{}", self.desired)
            } else {
                name.to_string()
            };
            out.push_str(&format!("{label}: {state:<9} {bar} {detail}\n").replace("  \n", "\n"));
        }
        if self.slots.len() > 20 {
            out.push_str(&format!("… and {} more\n", self.slots.len() - 20));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, slot: u64, node: &str, created_at_ms: i64) -> pb::Task {
        pb::Task {
            meta: Some(pb::Meta {
                id: id.to_string(),
                created_at_ms,
                ..Default::default()
            }),
            service_name: "web".to_string(),
            slot,
            node_id: node.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn a_slots_newest_task_leads_its_history_whatever_node_it_ran_on() {
        // web.1 ran on n2, then moved to n1 when n2 was drained; web.2
        // stayed on n1. A global service's tasks are slots by node.
        let mut tasks = vec![
            task("old-on-n2", 1, "n2", 10),
            task("global-n2", 0, "n2", 5),
            task("other-slot", 2, "n1", 1),
            task("new-on-n1", 1, "n1", 30),
            task("global-n1", 0, "n1", 6),
            task("newer-on-n2", 1, "n2", 20),
        ];
        sort_by_slot(&mut tasks);
        let order: Vec<&str> = tasks
            .iter()
            .map(|t| t.meta.as_ref().map_or("", |m| m.id.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                "global-n1",
                "global-n2",
                "new-on-n1",
                "newer-on-n2",
                "old-on-n2",
                "other-slot"
            ]
        );
    }
}

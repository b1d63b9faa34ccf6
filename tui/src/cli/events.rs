//! `shoal events`: what happens in the cluster, as it happens — nodes
//! going down and coming back, tasks failing, updates pausing, the leader
//! moving. Built on `Watch`, with the same wording as the console's event
//! view (one place decides what is news: `console::state`).

use futures::StreamExt;
use serde_json::json;
use shoal_proto::v1 as pb;

use super::output::{Format, now_ms, parse_duration};
use super::{Target, rpc_error};
use crate::console::state::{EventLine, Level, Model};

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Also show what happened in this past span (e.g. 10m), as far as
    /// the manager's change history reaches.
    #[arg(long, value_parser = parse_duration)]
    since: Option<std::time::Duration>,
    /// type=node|service|task|cluster, or service=NAME; repeatable.
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// table for reading, json for scripts.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

struct Filters {
    kinds: Vec<String>,
    services: Vec<String>,
}

impl Filters {
    fn parse(items: &[String]) -> anyhow::Result<Self> {
        let mut filters = Filters {
            kinds: Vec::new(),
            services: Vec::new(),
        };
        for item in items {
            match item.split_once('=') {
                Some(("type", kind)) if ["node", "service", "task", "cluster"].contains(&kind) => {
                    filters.kinds.push(kind.to_string())
                }
                Some(("service", name)) => filters.services.push(name.to_string()),
                _ => anyhow::bail!(
                    "invalid filter {item:?}: use type=node|service|task|cluster or service=NAME"
                ),
            }
        }
        Ok(filters)
    }

    fn keep(&self, event: &EventLine) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == event.subject.kind))
            && (self.services.is_empty() || self.services.contains(&event.subject.service))
    }
}

fn print(event: &EventLine, format: Format) {
    let time =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(event.time_ms.max(0) as u64);
    let time = humantime::format_rfc3339_seconds(time).to_string();
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "time": time,
                "type": event.subject.kind,
                "action": event.subject.action,
                "id": event.subject.id,
                "name": event.subject.name,
                "service": event.subject.service,
                "level": match event.level { Level::Info => "info", Level::Warn => "warn", Level::Error => "error" },
                "message": event.text,
            })
        ),
        Format::Table => println!("{time} {}", event.text),
    }
}

pub async fn run(target: &Target, args: EventsArgs) -> anyhow::Result<()> {
    let filters = Filters::parse(&args.filters)?;
    let mut client = target.connect().await?;
    let since_ms = args.since.map(|d| now_ms() - d.as_millis() as i64);
    // Version 1 asks for the change history the manager still has; without
    // --since only what happens from now on is shown.
    let request = pb::WatchRequest {
        kinds: Vec::new(),
        since_version: if since_ms.is_some() { 1 } else { 0 },
    };
    let mut stream = client
        .watch(request)
        .await
        .map_err(|s| rpc_error(target, s))?
        .into_inner();
    let mut model = Model::default();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = &mut interrupted => return Ok(()),
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(status)) => return Err(rpc_error(target, status)),
            None => anyhow::bail!("the manager closed the event stream"),
        };
        model.apply(message);
        // Oldest first; the model keeps its log newest first.
        let fresh: Vec<EventLine> = model.events.drain(..).rev().collect();
        for event in &fresh {
            if since_ms.is_none_or(|since| event.time_ms >= since) && filters.keep(event) {
                print(event, args.format);
            }
        }
    }
}

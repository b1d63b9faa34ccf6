//! `shoal events`: what happens in the cluster, as it happens — nodes
//! going down and coming back, tasks failing, updates pausing, the leader
//! moving. Built on `Watch`, with the same wording as the console's event
//! view (one place decides what is news: `console::state`).

use futures::StreamExt;
use serde_json::json;
use shoal_proto::v1 as pb;

use super::output::{Filters, Format, now_ms, parse_duration};
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

/// Event kinds `type=` can name.
const KINDS: [&str; 4] = ["node", "service", "task", "cluster"];

/// `--filter type=KIND` and `service=NAME`, read as every `ls` reads its
/// filters.
fn parse_filters(items: &[String]) -> anyhow::Result<Filters> {
    let filters = Filters::parse(items, &["type", "service"])?;
    if let Some(kind) = filters
        .values("type")
        .iter()
        .find(|kind| !KINDS.contains(&kind.as_str()))
    {
        anyhow::bail!(
            "invalid filter \"type={kind}\": use type={} or service=NAME",
            KINDS.join("|")
        );
    }
    Ok(filters)
}

fn keep(filters: &Filters, event: &EventLine) -> bool {
    filters.allow("type", |kind| kind == event.subject.kind)
        && filters.allow("service", |name| name == event.subject.service)
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
    let filters = parse_filters(&args.filters)?;
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
            if since_ms.is_none_or(|since| event.time_ms >= since) && keep(&filters, event) {
                print(event, args.format);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::state::Subject;

    fn event(kind: &'static str, service: &str) -> EventLine {
        EventLine {
            time_ms: 0,
            level: Level::Info,
            subject: Subject {
                kind,
                action: "failed".into(),
                id: "t1".into(),
                name: "web.1".into(),
                service: service.into(),
            },
            text: String::new(),
        }
    }

    #[test]
    fn filters_keep_events_of_the_named_types_and_services() -> anyhow::Result<()> {
        let items = ["type=task", "type=service", "service=web"].map(String::from);
        let filters = parse_filters(&items)?;
        assert!(keep(&filters, &event("task", "web")));
        assert!(keep(&filters, &event("service", "web")));
        assert!(!keep(&filters, &event("task", "db")));
        assert!(!keep(&filters, &event("node", "")));
        assert!(keep(&parse_filters(&[])?, &event("node", "")));
        let wrong = parse_filters(&["type=pod".to_string()]).map(drop);
        assert!(wrong.is_err_and(|e| e.to_string().contains("type=node|service|task|cluster")));
        Ok(())
    }
}

//! Checks on what operators ask for, before anything is proposed. Every
//! message names the field and says what would be valid.

use rand::seq::SliceRandom;

use crate::store::*;

/// Docker's service name rule: what DNS labels allow.
pub fn service_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if name.is_empty()
        || name.len() > 63
        || !valid_chars
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "invalid service name {name:?}: use up to 63 letters, digits, '-', '_' or '.', \
             starting with a letter or digit"
        ));
    }
    Ok(())
}

pub fn labels(what: &str, labels: &Labels) -> Result<(), String> {
    for key in labels.keys() {
        if key.trim().is_empty() {
            return Err(format!("a {what} has an empty key: use KEY=VALUE"));
        }
        if key.len() > 128 {
            return Err(format!("{what} key {key:?} is longer than 128 characters"));
        }
    }
    Ok(())
}

pub fn operator_name(name: &str) -> Result<(), String> {
    if name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "invalid operator name {name:?}: use up to 64 letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}

pub fn cluster_spec(spec: &ClusterSpec) -> Result<(), String> {
    if spec.heartbeat_period_ms < 100 {
        return Err("the heartbeat period must be at least 100ms".into());
    }
    // Lifetimes under an hour are for exercising renewal; operators use
    // days (the default is 90).
    if spec.node_cert_expiry_s < 60 {
        return Err("certificates must be valid for at least 1 minute (--cert-expiry 1m)".into());
    }
    if spec.task_history_retention > 1_000 {
        return Err("the task history limit is at most 1000 per slot".into());
    }
    Ok(())
}

fn update_config(what: &str, config: &UpdateConfig) -> Result<(), String> {
    if !(0.0..=1.0).contains(&config.max_failure_ratio) || config.max_failure_ratio.is_nan() {
        return Err(format!(
            "{what} max failure ratio {} must be between 0 and 1",
            config.max_failure_ratio
        ));
    }
    Ok(())
}

pub fn service_spec(spec: &ServiceSpec) -> Result<(), String> {
    service_name(&spec.name)?;
    labels("service label", &spec.labels)?;
    let container = &spec.task.container;
    if container.image.trim().is_empty() {
        return Err(format!("service {} needs an image", spec.name));
    }
    if container.image.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid image {:?}: an image reference has no spaces",
            container.image
        ));
    }
    labels("container label", &container.labels)?;
    for entry in &container.env {
        match entry.split_once('=') {
            Some((key, _)) if !key.is_empty() => {}
            _ => {
                return Err(format!(
                    "invalid environment entry {entry:?}: use KEY=VALUE"
                ));
            }
        }
    }
    if spec.mode == ServiceMode::Global && spec.replicas != 0 {
        return Err(format!(
            "service {} is global: it runs one task per node, so it takes no replica count",
            spec.name
        ));
    }
    if spec.replicas > 1_000_000 {
        return Err(format!(
            "{} replicas is more than Shoal supports (1000000)",
            spec.replicas
        ));
    }
    for constraint in &spec.task.placement.constraints {
        super::scheduler::parse_constraint(constraint).map_err(|e| e.to_string())?;
    }
    for preference in &spec.task.placement.preferences {
        let valid = preference
            .strip_prefix("node.labels.")
            .is_some_and(|key| !key.is_empty());
        if !valid {
            return Err(format!(
                "invalid placement preference {preference:?}: use spread=node.labels.KEY"
            ));
        }
    }
    let resources = [
        ("reserved CPU", spec.task.reservations.nano_cpus),
        ("reserved memory", spec.task.reservations.memory_bytes),
        ("CPU limit", spec.task.limits.nano_cpus),
        ("memory limit", spec.task.limits.memory_bytes),
    ];
    for (what, value) in resources {
        if value < 0 {
            return Err(format!("the {what} cannot be negative"));
        }
    }
    if spec.task.limits.memory_bytes != 0 && spec.task.limits.memory_bytes < 6 * 1024 * 1024 {
        return Err("the memory limit must be at least 6MiB (Docker's minimum)".into());
    }
    if let Some(health) = &container.healthcheck {
        match health.test.first().map(String::as_str) {
            None | Some("NONE") | Some("CMD") | Some("CMD-SHELL") => {}
            Some(other) => {
                return Err(format!(
                    "invalid health check {other:?}: use CMD, CMD-SHELL or NONE"
                ));
            }
        }
    }
    update_config("update", &spec.update)?;
    update_config("rollback", &spec.rollback)?;
    if spec.rollback.failure_action == FailureAction::Rollback {
        return Err(
            "a rollback cannot itself fail over to a rollback: use pause or continue".into(),
        );
    }
    Ok(())
}

/// A name for a service created without one, in Docker's style.
pub fn random_service_name() -> String {
    const ADJECTIVES: &[&str] = &[
        "brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nimble", "proud", "quiet", "swift", "tender", "vivid", "witty", "zealous",
    ];
    const NAMES: &[&str] = &[
        "albatross",
        "barracuda",
        "cod",
        "dolphin",
        "eel",
        "flounder",
        "grouper",
        "herring",
        "marlin",
        "narwhal",
        "orca",
        "perch",
        "salmon",
        "sardine",
        "tuna",
        "wrasse",
    ];
    let mut rng = rand::thread_rng();
    format!(
        "{}_{}",
        ADJECTIVES.choose(&mut rng).unwrap_or(&"brave"),
        NAMES.choose(&mut rng).unwrap_or(&"cod")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            replicas: 1,
            task: TaskSpec {
                container: ContainerSpec {
                    image: "busybox".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert_eq!(service_spec(&spec()), Ok(()));
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let mut s = spec();
        s.name = "-bad".into();
        assert!(service_spec(&s).unwrap_err().contains("service name"));
        let mut s = spec();
        s.task.container.image = String::new();
        assert!(service_spec(&s).unwrap_err().contains("needs an image"));
        let mut s = spec();
        s.task.container.env = vec!["NOVALUE".into()];
        assert!(service_spec(&s).unwrap_err().contains("KEY=VALUE"));
        let mut s = spec();
        s.task.placement.preferences = vec!["zone".into()];
        assert!(service_spec(&s).unwrap_err().contains("spread=node.labels"));
    }

    proptest::proptest! {
        /// Any name, image, constraint or label: a verdict, never a panic;
        /// refusals say which field is wrong.
        #[test]
        fn any_spec_gets_a_verdict(
            name in ".{0,70}",
            image in ".{0,40}",
            constraint in ".{0,40}",
            label in ".{0,20}",
        ) {
            let mut spec = ServiceSpec {
                name: name.clone(),
                ..Default::default()
            };
            spec.task.container.image = image;
            spec.task.placement.constraints.push(constraint);
            spec.labels.insert(label, "v".into());
            if let Err(message) = service_spec(&spec) {
                proptest::prop_assert!(!message.is_empty());
            }
        }
    }
}

//! The interactive console.

use crate::cli::Target;

pub async fn run(target: &Target) -> anyhow::Result<()> {
    let _ = target.connect().await?;
    anyhow::bail!("the console is not available in this build; use the subcommands (shoal --help)")
}

//! (stub: being written)

/// Command-line arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

/// Runs the command.
pub fn main(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

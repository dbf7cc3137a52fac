//! The data commands of the `engine` binary (`inspect`, `prepare`, `synth`).
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DataCommand {}

impl DataCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {}
    }
}

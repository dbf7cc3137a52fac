use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "engine",
    version,
    about = "Train and run the mammography dense-prediction network on any GPU wgpu reaches"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Data(engine::data::cli::DataCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Data(c) => c.run(),
    }
}

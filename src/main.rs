use clap::Parser;
use engine::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    engine::data::read::set_max_pixels(cli.max_pixels);
    match cli.command {
        Command::Devices => engine::cli::devices(),
        Command::Bench(args) => engine::cli::bench(args),
        Command::Tune(args) => engine::cli::tune(args),
        Command::Train(args) => {
            let code = engine::cli::train(args)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Infer(args) => match engine::cli::infer(args) {
            Ok(0) => Ok(()),
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("Error: {e:#}");
                std::process::exit(engine::eval::exit_code(&e));
            }
        },
        Command::Eval(args) => {
            if let Err(e) = engine::eval::run(args) {
                eprintln!("Error: {e:#}");
                std::process::exit(engine::eval::exit_code(&e));
            }
            Ok(())
        }
        Command::Data(c) => c.run(),
    }
}

use clap::Parser;

/// One exit policy for every command (`engine::error::exit_code`): 0
/// success, 2 bad input or usage (clap's own usage errors are 2 too), 1 an
/// internal error; `engine train` exits 130 after Ctrl-C.
fn main() {
    let cli = engine::cli::Cli::parse();
    let code = match engine::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            engine::error::exit_code(&e)
        }
    };
    engine::prewarm::finish();
    std::process::exit(code);
}

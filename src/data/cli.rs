//! The data commands of the `engine` binary (`inspect`, `prepare`, `synth`).
use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Print what the readers see in each file (format, size, bit depth,
    /// photometric interpretation, transfer syntax, rescale, window, 8-bit
    /// intensity range), or the reason it cannot be read.
    Inspect {
        /// Image files: DICOM, PNG, PGM/PNM, JPEG.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

impl DataCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            DataCommand::Inspect { files } => inspect(&files),
        }
    }
}

fn inspect(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut failed = 0;
    for f in files {
        match super::read::read_with_info(f) {
            Ok((_, info)) => println!("{}: {info}", f.display()),
            Err(e) => {
                failed += 1;
                println!("{}: ERROR {e}", f.display());
            }
        }
    }
    if failed > 0 {
        // Each failure was already reported with its reason: exit non-zero
        // without a second, redundant error report.
        eprintln!("{failed} of {} files could not be read", files.len());
        std::process::exit(1);
    }
    Ok(())
}

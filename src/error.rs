//! The one exit-code policy of the `engine` binary, over the core's errors
//! (`engine_core::error`, re-exported here).
//!
//! - [`EngineError`]: the engine core (GPU, shapes). Every message names the
//!   op and the shapes involved.
//! - [`DataError`]: files (reading, decoding, writing). Every message names
//!   the file once, then the reason.
//! - [`BadInput`]: anything else the user can fix by changing an argument or
//!   an input (a bad flag value, a missing checkpoint, an unusable folder).
//!
//! [`exit_code`] maps any error to the process exit status: 2 for bad input
//! or usage (a [`BadInput`], a [`DataError`] other than a failed write, an
//! adapter that `--adapter` names but does not exist), 1 for anything else
//! (an internal error: GPU, inference, writing outputs). clap's own usage
//! errors exit 2 too; 0 is success and 130 a training run stopped by Ctrl-C.
pub use engine_core::error::*;
use std::path::Path;

/// `err` classified as bad input, its message unchanged (the whole chain,
/// as `{:#}` prints it, becomes the message).
pub fn bad_input(err: anyhow::Error) -> anyhow::Error {
    if exit_code(&err) == 2 {
        err
    } else {
        bad(format!("{err:#}"))
    }
}

/// The process exit status for an error: 2 for bad input or usage, else 1
/// (see the module documentation).
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for e in err.chain() {
        if e.is::<BadInput>() {
            return 2;
        }
        if let Some(d) = e.downcast_ref::<DataError>() {
            return if matches!(d, DataError::Write { .. }) {
                1
            } else {
                2
            };
        }
        if let Some(EngineError::AdapterNotFound(_)) = e.downcast_ref::<EngineError>() {
            return 2;
        }
    }
    1
}

/// A message for a line that already names `path`: the error without a
/// leading "PATH: " (as data errors and most others begin).
pub fn without_path(err: &anyhow::Error, path: &Path) -> String {
    let full = format!("{err:#}");
    let prefix = format!("{}: ", path.display());
    match full.strip_prefix(&prefix) {
        Some(rest) => rest.to_string(),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_policy() {
        assert_eq!(exit_code(&anyhow::anyhow!("GPU lost")), 1);
        assert_eq!(exit_code(&bad("--threshold 2 is not in [0, 1]")), 2);
        let read = DataError::io(
            Path::new("a.png"),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(exit_code(&anyhow::Error::new(read).context("loading")), 2);
        let write = DataError::write(Path::new("out/a.png"), "disk full");
        assert_eq!(exit_code(&write.into()), 1);
        let adapter = EngineError::AdapterNotFound("nope".into());
        assert_eq!(exit_code(&adapter.into()), 2);
        assert_eq!(exit_code(&EngineError::Gpu("lost".into()).into()), 1);
    }

    #[test]
    fn a_read_error_names_the_file_and_the_reason_once() {
        let e = DataError::io(
            Path::new("missing.png"),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(e.reason(), "cannot read file: entity not found");
        let e = anyhow::Error::new(e);
        let text = format!("{e:#}");
        assert_eq!(text.matches("missing.png").count(), 1, "{text}");
        assert_eq!(text.matches("not found").count(), 1, "{text}");
        assert_eq!(
            without_path(&e, Path::new("missing.png")),
            "cannot read file: entity not found"
        );
        assert_eq!(format!("{:#}", bad_input(e)), text);
    }
}

//! The exit-code and message policy of every command (README, "Exit codes
//! and errors"): 0 success, 2 bad input or usage, 1 internal error. Each
//! bad-input case is checked for its code and for a one-line message that
//! names the input once and says what was wrong (and the fix, where there
//! is one). Everything here is cheap: one 64-pixel training run of one
//! epoch, shared by the tests that need a checkpoint.
mod support;
use engine::data::Gray8;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use support::engine;

fn temp(name: &str) -> PathBuf {
    support::temp_dir("errors", name)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The whole of stderr, which must be one line.
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    lines[0]
}

/// A bad-input error: exit 2, and stderr is one `Error: ...` line holding
/// every part of `wanted`, naming `name` once.
fn assert_bad_input(out: (i32, String, String), name: &str, wanted: &[&str]) {
    let (code, stdout, stderr) = out;
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = one_line(&stderr);
    assert!(line.starts_with("Error: "), "{line}");
    assert_eq!(line.matches(name).count(), 1, "names {name} once: {line}");
    for w in wanted {
        assert!(line.contains(w), "{line:?} lacks {w:?}");
    }
}

/// A usage error clap reports (exit 2): its first line names the flag and
/// the value and says what is wrong.
fn assert_usage(out: (i32, String, String), wanted: &[&str]) {
    let (code, _, stderr) = out;
    assert_eq!(code, 2, "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: invalid value"), "{stderr}");
    for w in wanted {
        assert!(first.contains(w), "{first:?} lacks {w:?}");
    }
}

/// The settings of the shared training run (and of a resume of it).
const TRAIN: &[&str] = &[
    "train",
    "--synthetic",
    "4",
    "--synthetic-size",
    "64",
    "--sizes",
    "64:1",
    "--batch",
    "2",
    "--micro-batch",
    "2",
    "--width",
    "0.125",
    "--threads",
    "1",
];

/// A run folder with a width-0.125 checkpoint, trained once per test binary
/// by `engine train` (which must exit 0).
fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = temp("run").join("run");
        let mut args: Vec<String> = TRAIN.iter().map(|a| a.to_string()).collect();
        args.extend(["--out".into(), s(&run)]);
        let (code, stdout, stderr) = engine(&args);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        assert!(stdout.contains("done in"), "{stdout}");
        run
    })
}

fn checkpoint() -> PathBuf {
    trained_run().join("checkpoint.safetensors")
}

fn write_png(path: &Path, g: &Gray8) {
    engine::data::read::write_gray_png(path, g).unwrap();
}

#[test]
fn success_exits_0() {
    let dir = temp("ok");
    let png = dir.join("scan.png");
    write_png(&png, &Gray8::new(40, 30));
    let (code, stdout, stderr) = engine(&["inspect", &s(&png)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("PNG 40x30"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
    let (code, stdout, stderr) = engine(&[
        "infer",
        "--checkpoint",
        &s(&checkpoint()),
        "--out",
        &s(&dir.join("out")),
        &s(&png),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 inputs: 1 ok"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_input_file_is_bad_input_named_once() {
    let dir = temp("missing");
    let missing = dir.join("missing.png");
    let (code, stdout, stderr) = engine(&[
        "infer",
        "--checkpoint",
        &s(&checkpoint()),
        "--out",
        &s(&dir.join("out")),
        &s(&missing),
    ]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let line = one_line(&stderr);
    assert_eq!(
        line,
        format!("{}: bad input: no such file or folder", missing.display())
    );
    assert!(stdout.contains("1 failed"), "{stdout}");
    // inspect: the reader's reason, the file named once, the OS error once.
    let out = engine(&["inspect", &s(&missing)]);
    assert!(
        out.1.contains("missing.png: ERROR cannot read file"),
        "{}",
        out.1
    );
    let line = one_line(&out.2).to_string();
    assert_eq!(line.matches("(os error 2)").count(), 1, "{line}");
    assert_bad_input(out, "missing.png", &["cannot read file"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_image_or_dicom_is_bad_input() {
    let dir = temp("corrupt");
    let png = dir.join("broken.png");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let dcm = dir.join("truncated.dcm");
    engine::data::synth::write_dicom(&dcm, &Gray8::new(64, 64), false, "1.2.3", "cut").unwrap();
    let bytes = std::fs::read(&dcm).unwrap();
    std::fs::write(&dcm, &bytes[..bytes.len() - 2000]).unwrap();
    // infer: the input's row and its stderr line say why; exit 2.
    let (code, stdout, stderr) = engine(&[
        "infer",
        "--checkpoint",
        &s(&checkpoint()),
        "--out",
        &s(&dir.join("out")),
        &s(&png),
    ]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.starts_with(&format!("{}: bad input: ", png.display())),
        "{line}"
    );
    assert!(line.contains("cannot decode PNG"), "{line}");
    assert_eq!(line.matches("broken.png").count(), 1, "{line}");
    // inspect, one file at a time and together.
    assert_bad_input(
        engine(&["inspect", &s(&png)]),
        "broken.png",
        &["cannot decode PNG"],
    );
    let (code, stdout, stderr) = engine(&["inspect", &s(&dcm)]);
    assert!(stdout.contains("truncated.dcm: ERROR"), "{stdout}");
    assert_bad_input(
        (code, stdout, stderr),
        "truncated.dcm",
        &["element (7FE0,0010) declares 4096 bytes"],
    );
    let (code, _, stderr) = engine(&["inspect", &s(&png), &s(&dcm)]);
    assert_eq!(code, 2);
    assert!(
        one_line(&stderr).contains("2 of 2 files could not be read"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unprepared_data_folder_says_how_to_prepare_one() {
    let dir = temp("unprepared");
    let data = dir.join("scans");
    std::fs::create_dir_all(&data).unwrap();
    let fix = "run `engine prepare mias|coco|cbis` or `engine synth` first";
    let want = format!("{}: no manifest.json: {fix}", data.display());
    let out = engine(&["train", "--data", &s(&data), "--out", &s(&dir.join("run"))]);
    assert_bad_input(out.clone(), "scans", &[&want]);
    // eval: any existing --checkpoint file (the data is checked first).
    let ckpt = dir.join("x.safetensors");
    std::fs::write(&ckpt, "x").unwrap();
    let out = engine(&[
        "eval",
        "--checkpoint",
        &s(&ckpt),
        "--data",
        &s(&data),
        "--out",
        &s(&dir.join("eval")),
    ]);
    assert_bad_input(out, "scans", &[&want]);
    let out = engine(&["bench-loader", "--input", &s(&data)]);
    assert_bad_input(out, "scans", &[&want]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_or_invalid_checkpoint_is_bad_input() {
    let dir = temp("ckpt");
    let missing = dir.join("nothing.safetensors");
    let png = dir.join("a.png");
    write_png(&png, &Gray8::new(32, 32));
    let want = format!("checkpoint {} does not exist", missing.display());
    let out = engine(&[
        "infer",
        "--checkpoint",
        &s(&missing),
        "--out",
        &s(&dir.join("out")),
        &s(&png),
    ]);
    assert_bad_input(out, "nothing.safetensors", &[&want]);
    let out = engine(&["eval", "--checkpoint", &s(&missing), "--data", &s(&dir)]);
    assert_bad_input(out, "nothing.safetensors", &[&want]);
    // Not a checkpoint at all.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, "not a checkpoint").unwrap();
    let out = engine(&[
        "infer",
        "--checkpoint",
        &s(&junk),
        "--out",
        &s(&dir.join("out")),
        &s(&png),
    ]);
    assert_bad_input(out, "junk.safetensors", &["not a safetensors file"]);
    // --resume in a folder without a checkpoint.
    let run = dir.join("empty-run");
    let mut args: Vec<String> = TRAIN.iter().map(|a| a.to_string()).collect();
    args.extend(["--out".into(), s(&run), "--resume".into()]);
    assert_bad_input(
        engine(&args),
        "empty-run",
        &["--resume", "does not exist: nothing to resume"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resuming_with_another_width_names_both_widths() {
    let dir = temp("width");
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    for f in ["checkpoint.safetensors", "metrics.jsonl", "config.json"] {
        std::fs::copy(trained_run().join(f), run.join(f)).unwrap();
    }
    let mut args: Vec<String> = TRAIN.iter().map(|a| a.to_string()).collect();
    let w = args.iter().position(|a| a == "--width").unwrap();
    args[w + 1] = "1.0".into();
    args.extend(["--out".into(), s(&run), "--resume".into()]);
    let config = std::fs::read(run.join("config.json")).unwrap();
    assert_bad_input(
        engine(&args),
        "checkpoint.safetensors",
        &["checkpoint is width 0.125, this run asks for 1.0 (--width)"],
    );
    // Refused before anything was written into the run folder.
    assert_eq!(std::fs::read(run.join("config.json")).unwrap(), config);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn out_of_range_flag_values_are_usage_errors_in_every_command() {
    let dir = temp("flags");
    let png = dir.join("a.png");
    write_png(&png, &Gray8::new(32, 32));
    let (p, d) = (s(&png), s(&dir));
    // --threshold: one parser for infer and eval.
    for args in [
        vec!["infer", "--checkpoint", &p, "--threshold", "1.5", &p],
        vec![
            "eval",
            "--checkpoint",
            &p,
            "--data",
            &d,
            "--threshold",
            "1.5",
        ],
    ] {
        assert_usage(
            engine(&args),
            &["'1.5'", "--threshold", "1.5 is not in [0, 1]"],
        );
    }
    // --pixel-spacing: one parser for infer, eval, train and prepare.
    for args in [
        vec!["infer", "--checkpoint", &p, "--pixel-spacing", "abc", &p],
        vec![
            "eval",
            "--checkpoint",
            &p,
            "--data",
            &d,
            "--pixel-spacing",
            "abc",
        ],
        vec!["train", "--pixel-spacing", "abc"],
        vec![
            "prepare",
            "mias",
            "--input",
            &d,
            "--out",
            &d,
            "--pixel-spacing",
            "abc",
        ],
    ] {
        assert_usage(
            engine(&args),
            &["'abc'", "--pixel-spacing", "is not a number of millimetres"],
        );
    }
    // --fold K/N: K in 0..N, and not together with --val.
    let prepare = ["prepare", "mias", "--input", &d, "--out", &d];
    assert_usage(
        engine(&[&prepare[..], &["--fold", "5/5"]].concat()),
        &["'5/5'", "--fold", "needs 0 <= I < N"],
    );
    let (code, _, stderr) = engine(&[&prepare[..], &["--fold", "1/5", "--val", "0.2"]].concat());
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("'--fold <FOLD>' cannot be used with '--val <VAL>'"),
        "{stderr}"
    );
    assert_usage(
        engine(&["infer", "--checkpoint", &p, "--pixel-spacing", "50", &p]),
        &["--pixel-spacing", "50 mm is not a pixel spacing"],
    );
    // Checks of our own: bad input, one line, the flag and the value.
    let out = engine(&["train", "--width", "0", "--out", &s(&dir.join("run"))]);
    assert_bad_input(out, "--width", &["--width 0 is not in (0, 16]"]);
    let run = s(&dir.join("run"));
    let out = engine(&["train", "--sizes", "64:3", "--swa", "4", "--out", &run]);
    assert_bad_input(out, "--swa", &["--swa 4 averages more epochs", "(3)"]);
    let out = engine(&["bench", "--channels", "0"]);
    assert_bad_input(out, "--channels", &["--channels 0 is less than 1"]);
    let out = engine(&["bench", "--rounds", "0"]);
    assert_bad_input(out, "--rounds", &["--rounds 0 is less than 1"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_out_folder_that_cannot_be_written_is_bad_input_not_a_read_error() {
    let dir = temp("out");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = file.join("set");
    let (code, stdout, stderr) = engine(&["synth", "--out", &s(&out), "-n", "2"]);
    assert!(!stderr.contains("cannot read"), "{stderr}");
    assert_bad_input(
        (code, stdout, stderr),
        "a-file/set",
        &[&format!("--out {} cannot be written", out.display())],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

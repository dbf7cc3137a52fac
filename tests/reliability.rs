//! What happens when things go wrong (issue 11): hostile and damaged
//! checkpoints and images, NaN, Ctrl-C, two runs into one folder, failed
//! writes. Each test reproduces one failure the issue lists.
mod support;
use engine::data::Gray8;
use engine::model::{Checkpoint, Load, Meta, Model, ModelConfig};
use engine::ops::resize::Mode;
use engine::train::{RunDir, RunLock};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::gpu;

/// A fresh temp folder for this suite.
fn temp_dir(name: &str) -> PathBuf {
    support::temp_dir("rel", name)
}

const CFG: ModelConfig = ModelConfig {
    width: 0.125,
    resize: Mode::Bilinear,
};

/// A small model's checkpoint (with Adam state) as bytes.
fn checkpoint_bytes(dir: &Path) -> Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES
        .get_or_init(|| {
            let model = Model::new(gpu(), CFG, 4).unwrap();
            let path = dir.join("base.safetensors");
            let meta = Meta {
                pos_weight: 15.0,
                step: 7,
                epoch: 1,
                ..Default::default()
            };
            model.save(gpu(), &path, &meta, true).unwrap();
            std::fs::read(&path).unwrap()
        })
        .clone()
}

/// Rewrites a checkpoint with `edit` applied to its (name, shape, values).
fn edited(bytes: &[u8], edit: impl Fn(&str, &mut Vec<usize>, &mut Vec<f32>)) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut host: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.shape().to_vec(),
                bytemuck::pod_collect_to_vec(t.data()),
            )
        })
        .collect();
    for (n, s, v) in &mut host {
        edit(n, s, v);
    }
    let views: Vec<_> = host
        .iter()
        .map(|(n, s, v)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    s.clone(),
                    bytemuck::cast_slice(v),
                )
                .unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, header.metadata().clone()).unwrap()
}

fn engine() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
    c.stdin(Stdio::null());
    c
}

/// Runs a command and returns (exit status, stdout + stderr). With
/// `max_memory`, the child runs under that address-space limit
/// (RLIMIT_AS): an allocation beyond it fails instead of growing.
fn run_bounded(mut cmd: Command, max_memory: Option<u64>) -> (Option<i32>, String) {
    if let Some(bytes) = max_memory {
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let o = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.code(), text)
}

/// The address space `engine inspect` gets in the bomb tests (the readers
/// before issue 11 took 4.2 GB for the DICOM and 0.4 GB for the PNG).
const INSPECT_MEMORY: u64 = 256 << 20;

// ---- 1. NaN is caught, not hidden -------------------------------------

#[test]
fn nan_or_negative_variance_checkpoints_are_refused_naming_the_tensor() {
    let dir = temp_dir("nanckpt");
    let base = checkpoint_bytes(&dir);
    let path = dir.join("x.safetensors");
    assert!(Checkpoint::parse(&base, &path, Load::WithAdam).is_ok());
    type Edit = Box<dyn Fn(&str, &mut Vec<usize>, &mut Vec<f32>)>;
    let cases: [(&str, Edit); 4] = [
        (
            "'conv0_1.weight' holds 36 non-finite",
            Box::new(|n, _, v| {
                if n == "conv0_1.weight" {
                    v.fill(f32::NAN)
                }
            }),
        ),
        (
            "'conv5_1.weight' holds 1 non-finite",
            Box::new(|n, _, v| {
                if n == "conv5_1.weight" {
                    v[17] = f32::NAN
                }
            }),
        ),
        (
            "'conv2_2.bn.running_var' holds a negative value at index 3",
            Box::new(|n, _, v| {
                if n == "conv2_2.bn.running_var" {
                    v[3] = -0.5
                }
            }),
        ),
        (
            "'fc_1.bias' holds 1 non-finite value(s) (first at index 0: inf)",
            Box::new(|n, _, v| {
                if n == "fc_1.bias" {
                    v[0] = f32::INFINITY
                }
            }),
        ),
    ];
    for (want, edit) in cases {
        let bytes = edited(&base, edit);
        for load in [Load::Weights, Load::WithAdam] {
            let e = Checkpoint::parse(&bytes, &path, load)
                .err()
                .map(|e| e.to_string());
            let e = e.unwrap_or_else(|| panic!("accepted a checkpoint with {want}"));
            assert!(e.contains(want) && e.contains("x.safetensors"), "{e}");
        }
    }
    // engine infer on the all-NaN checkpoint: a clear error, exit 2 (bad
    // input), no output.
    std::fs::write(
        &path,
        edited(&base, |n, _, v| {
            if n == "conv0_1.weight" {
                v.fill(f32::NAN)
            }
        }),
    )
    .unwrap();
    let img = dir.join("scan.png");
    engine::data::read::write_gray_png(&img, &Gray8::new(64, 64)).unwrap();
    let out = dir.join("out");
    let (code, text) = run_bounded(
        {
            let mut c = engine();
            c.arg("infer")
                .arg("--checkpoint")
                .arg(&path)
                .arg("--out")
                .arg(&out)
                .arg(&img);
            c
        },
        None,
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("'conv0_1.weight' holds 36 non-finite"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing written"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn one_nan_weight_reaches_every_output_instead_of_being_zeroed() {
    // The case: one NaN in conv5_1.weight gave a finite, plausible
    // map, because relu(NaN) was 0 on lavapipe. Now the NaN reaches the
    // output (and so the loss and the training guard).
    let gpu = gpu();
    let model = Model::new(gpu, CFG, 2).unwrap();
    let w = &model.get("conv5_1.weight").unwrap().value;
    let mut v = gpu.read(w).unwrap();
    v[4] = f32::NAN; // output channel 0, input channel 0, the centre tap
    gpu.write(w, &v);
    let x = vec![0.1f32; 64 * 64];
    let p = engine::infer::predict(gpu, &model, &x, 1, 64, 64).unwrap();
    let nan = p.iter().filter(|v| v.is_nan()).count();
    assert!(
        nan > 64 * 64 / 2,
        "only {nan} of {} outputs are NaN",
        p.len()
    );
}

// ---- 2. No panic on any checkpoint ----------------------------------------

#[test]
fn wrong_adam_shape_is_an_error_for_resume_and_ignored_by_infer() {
    let dir = temp_dir("adam");
    let bytes = edited(&checkpoint_bytes(&dir), |n, s, v| {
        if n == "conv1_1.weight.adam_m" {
            s.clear();
            s.push(v.len() / 2);
            v.truncate(v.len() / 2);
        }
    });
    let path = dir.join("ckpt.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    // Inference does not need Adam state: it loads.
    let (model, meta) = Model::load(gpu(), &path).unwrap();
    assert_eq!(meta.step, 7);
    assert_eq!(
        model.get("conv1_1.weight").unwrap().value.shape(),
        [6, 6, 3, 3]
    );
    // Resuming needs it: a clear error, no panic.
    let e = Model::load_for_training(gpu(), &path)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("ckpt.safetensors")
            && e.contains("'conv1_1.weight.adam_m' is F32 [162], expected F32 [6, 6, 3, 3]"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fuzzed_checkpoints_never_panic_and_never_load_non_finite_values() {
    let dir = temp_dir("fuzz");
    let base = checkpoint_bytes(&dir);
    let path = dir.join("f.safetensors");
    let (mut ok, mut err) = (0, 0);
    let mut check = |bytes: &[u8], load: Load| match Checkpoint::parse(bytes, &path, load) {
        Ok(c) => {
            ok += 1;
            for (name, _, v) in &c.tensors {
                assert!(v.iter().all(|x| x.is_finite()), "{name} loaded non-finite");
            }
        }
        Err(e) => {
            err += 1;
            assert!(e.to_string().contains("f.safetensors"), "{e}");
        }
    };
    // Truncated anywhere: always an error.
    let mut truncated_ok = 0;
    for i in 0..300 {
        let len = base.len() * i / 300;
        if Checkpoint::parse(&base[..len], &path, Load::Weights).is_ok() {
            truncated_ok += 1;
        }
        check(&base[..len], Load::WithAdam);
    }
    assert_eq!(truncated_ok, 0);
    // Random byte flips, in the header and in the data.
    let header_len = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize + 8;
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for k in 0..600 {
        let mut b = base.clone();
        let at = if k % 2 == 0 {
            (next() as usize) % header_len
        } else {
            header_len + (next() as usize) % (b.len() - header_len)
        };
        b[at] ^= 1 << (next() % 8);
        check(
            &b,
            if k % 3 == 0 {
                Load::Weights
            } else {
                Load::WithAdam
            },
        );
    }
    // A data byte set to 0xFF in a float's exponent: NaN or infinity, refused.
    let mut b = base.clone();
    b[header_len + 3] = 0x7F;
    b[header_len + 2] = 0xFF;
    assert!(Checkpoint::parse(&b, &path, Load::Weights).is_err());
    // Re-shaped tensors (same byte count, other shape; the header keeps
    // its length): refused, naming the expected shape.
    let text = String::from_utf8_lossy(&base[8..header_len]).into_owned();
    for (from, to) in [("[4,1,3,3]", "[1,4,3,3]"), ("[4,1,3,3]", "[36]     ")] {
        assert!(text.contains(from), "{text}");
        let mut b = base.clone();
        b[8..header_len].copy_from_slice(text.replacen(from, to, 1).as_bytes());
        let e = Checkpoint::parse(&b, &path, Load::WithAdam)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("'conv0_1.weight") && e.contains("expected F32 [4, 1, 3, 3]"),
            "{e}"
        );
    }
    eprintln!("fuzz: {ok} loaded, {err} refused");
    assert!(err >= 300, "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_metadata_names_the_file_and_key() {
    let dir = temp_dir("meta");
    let base = checkpoint_bytes(&dir);
    let header_len = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize + 8;
    let text = String::from_utf8_lossy(&base[8..header_len]).into_owned();
    let h = text.replacen("\"pos_weight\":\"15\"", "\"pos_weight\":\"1x\"", 1);
    assert_ne!(h, text, "{text}");
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(&base[header_len..]);
    let e = Checkpoint::parse(&b, Path::new("m.safetensors"), Load::Weights)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "m.safetensors: metadata 'pos_weight' is '1x': invalid float literal"
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ---- 3. Allocation bombs ---------------------------------------------------

/// A 4 KB DICOM whose pixel data length field says 0xFFFFFFF0.
fn dicom_bomb(dir: &Path) -> PathBuf {
    let path = dir.join("bomb.dcm");
    engine::data::synth::write_dicom(&path, &Gray8::new(64, 64), false, "1.2.3", "bomb").unwrap();
    let mut b = std::fs::read(&path).unwrap();
    // Explicit VR little endian: (7FE0,0010) "OB" 00 00 <u32 length>.
    let at = b
        .windows(6)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00, b'O', b'B'])
        .expect("pixel data element");
    b[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    b.resize(4096, 0);
    std::fs::write(&path, &b).unwrap();
    path
}

#[test]
fn a_dicom_length_bomb_is_refused_before_allocating() {
    let dir = temp_dir("dcmbomb");
    let path = dicom_bomb(&dir);
    let e = engine::data::read::read_gray8(&path)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("bomb.dcm")
            && e.contains("declares 4294967280 bytes but the whole file has 4096"),
        "{e}"
    );
    let (code, text) = run_bounded(
        {
            let mut c = engine();
            c.arg("inspect").arg(&path);
            c
        },
        Some(INSPECT_MEMORY),
    );
    // A corrupt file is bad input: exit 2.
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("declares 4294967280 bytes"), "{text}");
    // A DICOM over the pixel budget is refused from its header.
    let big = dir.join("big.dcm");
    engine::data::synth::write_dicom(&big, &Gray8::new(300, 200), false, "1.2.4", "big").unwrap();
    let e = engine::data::read::read_with_budget(&big, 50_000)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("300x200 is 60000 pixels, over the budget of 50000"),
        "{e}"
    );
    assert!(engine::data::read::read_with_budget(&big, 60_000).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_20000_square_png_is_refused_from_its_header_under_a_memory_bound() {
    let dir = temp_dir("pngbomb");
    let path = dir.join("huge.png");
    {
        let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut enc = png::Encoder::new(f, 20000, 20000);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header().unwrap().into_stream_writer().unwrap();
        let row = vec![0u8; 20000];
        for _ in 0..20000 {
            std::io::Write::write_all(&mut w, &row).unwrap();
        }
        w.finish().unwrap();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    eprintln!("20000x20000 PNG: {size} bytes");
    let e = engine::data::read::read_gray8(&path)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("huge.png")
            && e.contains("20000x20000 = 400000000 pixels, over the budget of 50000000"),
        "{e}"
    );
    let (code, text) = run_bounded(
        {
            let mut c = engine();
            c.arg("inspect").arg(&path);
            c
        },
        Some(INSPECT_MEMORY),
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("over the budget of 50000000"), "{text}");
    // --max-pixels raises the budget: then the decoder's own limit (8 bytes
    // per budgeted pixel) still bounds what it may allocate.
    let (code, text) = run_bounded(
        {
            let mut c = engine();
            c.arg("inspect").arg("--max-pixels").arg("1000").arg(&path);
            c
        },
        None,
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("over the budget of 1000"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

// ---- 4, 5. Ctrl-C, and one run per folder ---------------------------------

fn train_cmd(out: &Path) -> Command {
    let mut c = engine();
    c.args([
        "train",
        "--synthetic",
        "8",
        "--synthetic-size",
        "64",
        "--sizes",
        "64:200",
        "--batch",
        "2",
        "--micro-batch",
        "2",
        "--width",
        "0.125",
        "--threads",
        "1",
        "--out",
    ])
    .arg(out);
    c
}

fn step_count(run: &RunDir) -> usize {
    std::fs::read_to_string(run.metrics())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .count()
}

fn wait_for(what: &str, secs: u64, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_saves_says_so_and_exits_130_and_a_second_run_is_locked_out() {
    let dir = temp_dir("sigint");
    let run = RunDir(dir.join("run"));
    let err = dir.join("stderr");
    let mut a = train_cmd(&run.0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    wait_for("the first steps", 300, || step_count(&run) >= 2);
    // A second run into the same folder is refused, naming the holder.
    let b = train_cmd(&run.0).output().unwrap();
    let b_err = String::from_utf8_lossy(&b.stderr);
    assert_eq!(b.status.code(), Some(2), "{b_err}");
    assert!(
        b_err.contains(&format!("is in use by another run (pid {},", a.id())),
        "{b_err}"
    );
    unsafe { libc::kill(a.id() as i32, libc::SIGINT) };
    let status = a.wait().unwrap();
    let text = std::fs::read_to_string(&err).unwrap();
    assert_eq!(status.code(), Some(130), "{text}");
    let meta = Checkpoint::read(&run.checkpoint(), Load::WithAdam)
        .unwrap()
        .meta;
    let steps = step_count(&run);
    assert_eq!(
        meta.step as usize, steps,
        "the checkpoint holds the last logged step"
    );
    assert!(
        text.contains(&format!(
            "interrupted at epoch {} step {steps}; resume with --resume",
            meta.epoch + 1
        )),
        "{text}"
    );
    // The lock is free again (and empty): a resume runs; a second Ctrl-C
    // while it runs exits at once, leaving the last checkpoint intact.
    assert_eq!(std::fs::read_to_string(run.lock()).unwrap(), "");
    let before = std::fs::read(run.checkpoint()).unwrap();
    let mut c = train_cmd(&run.0)
        .arg("--resume")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    wait_for("a resumed step", 300, || step_count(&run) > steps);
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(20));
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = c.wait().unwrap();
    let text = std::fs::read_to_string(&err).unwrap();
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let after = std::fs::read(run.checkpoint()).unwrap();
    let meta = Checkpoint::parse(&after, &run.checkpoint(), Load::WithAdam)
        .unwrap()
        .meta;
    // Intact: it parses, and it is the one before or a later one (the
    // resumed run may have finished the interrupted epoch, saving at the
    // same step, before the Ctrl-C).
    assert!(
        after == before || meta.step as usize >= steps,
        "an intact checkpoint (step {} after {steps})",
        meta.step
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_run_lock_refuses_a_holder_and_takes_over_a_stale_pid() {
    let dir = temp_dir("lock");
    let (held, warning) = RunLock::acquire(&dir).unwrap();
    assert!(warning.is_none());
    assert_eq!(
        std::fs::read_to_string(dir.join("train.lock")).unwrap(),
        std::process::id().to_string()
    );
    let e = RunLock::acquire(&dir).err().unwrap().to_string();
    assert!(
        e.contains(&format!(
            "in use by another run (pid {},",
            std::process::id()
        )),
        "{e}"
    );
    drop(held);
    // A killed run leaves its pid and no lock: taken over with a warning.
    std::fs::write(dir.join("train.lock"), "4194000").unwrap();
    let (_held, warning) = RunLock::acquire(&dir).unwrap();
    let w = warning.expect("a warning");
    assert!(
        w.contains("left by pid 4194000, which is no longer running"),
        "{w}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ---- 7, 8. Atomic outputs and early checks ---------------------------------

#[test]
fn a_failed_save_names_the_path_and_leaves_no_temporary_file() {
    let dir = temp_dir("failsave");
    // The checkpoint's name is taken by a non-empty folder: the rename fails.
    let path = dir.join("checkpoint.safetensors");
    std::fs::create_dir_all(path.join("x")).unwrap();
    let model = Model::new(gpu(), CFG, 1).unwrap();
    let e = model
        .save(gpu(), &path, &Meta::default(), true)
        .err()
        .unwrap();
    let e = format!("{e:#}");
    assert!(e.contains(&format!("writing {}", path.display())), "{e}");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["checkpoint.safetensors"], "no temporary file left");
    // Infer: an output name taken by a folder fails that input and leaves
    // no partial or temporary file.
    let img = dir.join("scan.png");
    engine::data::read::write_gray_png(&img, &Gray8::new(40, 40)).unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(out.join("scan_mask.png").join("x")).unwrap();
    let e = engine::infer::infer_file(
        gpu(),
        &model,
        &img,
        &out,
        0.5,
        None,
        &Default::default(),
        false,
    )
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("scan_mask.png"), "{e:#}");
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["scan_mask.png", "scan_prob.png"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_unusable_out_folder_fails_before_any_gpu_work() {
    let dir = temp_dir("early");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let bad = file.join("run");
    let t = Instant::now();
    let (code, text) = run_bounded(train_cmd(&bad), None);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!("--out {} cannot be written", bad.display())),
        "{text}"
    );
    assert!(!text.contains("adapter:"), "no GPU was set up: {text}");
    let (code, text) = run_bounded(
        {
            let mut c = engine();
            c.arg("infer")
                .arg("--checkpoint")
                .arg(&file)
                .arg("--out")
                .arg(&bad)
                .arg(&file);
            c
        },
        None,
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!("--out {} cannot be written", bad.display())),
        "{text}"
    );
    eprintln!("both refused in {:.2} s", t.elapsed().as_secs_f64());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eval_checks_each_image_against_the_manifest() {
    let dir = temp_dir("evalsize");
    let set = dir.join("set");
    let opt = engine::data::synth::SynthOptions::square(96);
    engine::data::synth::write_combined_set(&set, 6, &opt, 1).unwrap();
    let prepared = engine::data::prepared::PreparedSet::open(&set).unwrap();
    let mut samples = prepared.split("train");
    samples.extend(prepared.split("val"));
    samples.extend(prepared.split("test"));
    let victim = samples[0].id.clone();
    // Replace one image by a smaller one.
    engine::data::prepared::write_combined(
        &set.join(&victim),
        &Gray8::new(80, 64),
        &Gray8::new(80, 64),
    )
    .unwrap();
    let predictor =
        engine::predictor::Predictor::single(Model::new(gpu(), CFG, 1).unwrap(), None, "c");
    let e = engine::eval::evaluate(
        gpu(),
        &predictor,
        &samples,
        &engine::eval::EvalOptions {
            panels: false,
            ..Default::default()
        },
        Default::default(),
        &dir.join("out"),
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(&victim) && e.contains("the image is 80x64 but the manifest says 96x96"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

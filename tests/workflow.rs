//! The radiology workflow: `engine infer` over folders (mirrored output
//! names, results.csv, exit codes, --skip-existing, --glob, --shard),
//! DICOM Segmentation and Parametric Map results read back, `engine eval
//! --shard` merged equal to one run, and self-describing run folders.
mod support;
use dicom_core::value::{C, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use engine::batch::{Row, read_rows};
use engine::data::Gray8;
use engine::data::prepared::Sample;
use engine::dicom_out::{DicomKinds, DicomOptions, DicomResults, tags};
use engine::eval::metrics::{self, ImageScore};
use engine::eval::{EvalOptions, evaluate};
use engine::infer::{TileOptions, probability_map, read_scan};
use engine::model::{Meta, Model, ModelConfig};
use engine::ops::resize::Mode;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::gpu;

/// A fresh temp folder for this suite.
fn temp(name: &str) -> PathBuf {
    support::temp_dir("wf", name)
}

fn tiny_model() -> Model {
    Model::new(
        gpu(),
        ModelConfig {
            width: 0.125,
            resize: Mode::Bilinear,
        },
        3,
    )
    .unwrap()
}

fn save_model(model: &Model, path: &Path) {
    model
        .save(
            gpu(),
            path,
            &Meta {
                pos_weight: 15.0,
                ..Default::default()
            },
            false,
        )
        .unwrap();
}

/// A textured scan with a bright square (so maps differ between images).
fn scan(w: usize, h: usize, seed: usize) -> Gray8 {
    let mut g = Gray8::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let v = (x * 7 + y * 3 + seed * 31) % 150;
            let bright = (10..22).contains(&x) && (8..20).contains(&y);
            g.set(x, y, if bright { 240 } else { v as u8 });
        }
    }
    g
}

fn write_png(path: &Path, g: &Gray8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    engine::data::read::write_gray_png(path, g).unwrap();
}

fn engine(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    run_engine(args, &[])
}

/// The command with an adapter that does not exist: any GPU work fails, so
/// an answer about something else shows it came before the GPU.
fn engine_without_gpu(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    run_engine(args, &[("ENGINE_ADAPTER", "no-such-adapter-for-this-test")])
}

fn run_engine(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_engine"))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new($a)),*] };
}

/// Source identity of the synthetic DICOM.
const PATIENT_ID: &str = "TEST-0042";
const STUDY_UID: &str = "1.2.826.0.1.3680043.8.498.1001";
const SERIES_UID: &str = "1.2.826.0.1.3680043.8.498.1002";
const SOP_UID: &str = "1.2.826.0.1.3680043.8.498.1003";
const FOR_UID: &str = "1.2.826.0.1.3680043.8.498.1004";

/// Writes an 8-bit MONOCHROME2 digital mammogram with patient and study
/// identity and, with `geometry`, image laterality and a frame of reference with plane position,
/// orientation and slice thickness.
fn write_source_dicom(path: &Path, g: &Gray8, geometry: bool) {
    let s = |t: Tag, vr: VR, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    let us = |t: Tag, v: u16| DataElement::new(t, VR::US, PrimitiveValue::U16(C::from_elem(v, 1)));
    let mut obj = InMemDicomObject::from_element_iter([
        s(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.1.2"),
        s(tags::SOP_INSTANCE_UID, VR::UI, SOP_UID),
        s(tags::STUDY_DATE, VR::DA, "20240102"),
        s(tags::MODALITY, VR::CS, "MG"),
        s(tags::PATIENT_NAME, VR::PN, "Test^Patient"),
        s(tags::PATIENT_ID, VR::LO, PATIENT_ID),
        s(tags::STUDY_INSTANCE_UID, VR::UI, STUDY_UID),
        s(tags::SERIES_INSTANCE_UID, VR::UI, SERIES_UID),
        s(tags::PIXEL_SPACING, VR::DS, "0.1\\0.1"),
        us(tags::SAMPLES_PER_PIXEL, 1),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, g.height as u16),
        us(tags::COLUMNS, g.width as u16),
        us(tags::BITS_ALLOCATED, 8),
        us(tags::BITS_STORED, 8),
        us(tags::HIGH_BIT, 7),
        us(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::U8(C::from_vec({
                let mut p = g.pixels.clone();
                if p.len() % 2 == 1 {
                    p.push(0);
                }
                p
            })),
        ),
    ]);
    if geometry {
        obj.put(s(tags::IMAGE_LATERALITY, VR::CS, "L"));
        obj.put(s(tags::FRAME_OF_REFERENCE_UID, VR::UI, FOR_UID));
        obj.put(s(tags::IMAGE_POSITION_PATIENT, VR::DS, "-10\\20\\5"));
        obj.put(s(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            "1\\0\\0\\0\\1\\0",
        ));
        obj.put(s(tags::SLICE_THICKNESS, VR::DS, "2"));
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .unwrap()
        .write_to_file(path)
        .unwrap();
}

fn text(o: &InMemDicomObject, t: Tag) -> String {
    o.get(t)
        .unwrap_or_else(|| panic!("{t:?} missing"))
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn item(o: &InMemDicomObject, t: Tag) -> &InMemDicomObject {
    &o.get(t)
        .unwrap_or_else(|| panic!("{t:?} missing"))
        .items()
        .unwrap()[0]
}

/// Checks a Segmentation and a Parametric Map written for `source` against
/// its identity, each other and the probability map.
fn check_dicom_results(
    source: &Path,
    r: &DicomResults,
    prob: &[f32],
    threshold: f32,
    w: usize,
    h: usize,
) {
    let src = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(source)
        .unwrap();
    let seg = dicom_object::open_file(r.segmentation.as_ref().unwrap()).unwrap();
    let pm = dicom_object::open_file(r.parametric_map.as_ref().unwrap()).unwrap();
    assert_eq!(
        text(&seg, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.66.4"
    );
    assert_eq!(text(&pm, tags::SOP_CLASS_UID), "1.2.840.10008.5.1.4.1.1.30");
    assert_eq!(text(&seg, tags::MODALITY), "SEG");
    for o in [&seg, &pm] {
        for t in [
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::STUDY_INSTANCE_UID,
            tags::STUDY_DATE,
        ] {
            assert_eq!(text(o, t), text(&src, t), "{t:?}");
        }
        // The source's frame of reference when it has one with plane
        // geometry; else the Parametric Map (which needs one) gets a new one
        // and the Segmentation none.
        let geometry = src.get(tags::FRAME_OF_REFERENCE_UID).is_some()
            && src.get(tags::IMAGE_POSITION_PATIENT).is_some()
            && src.get(tags::IMAGE_ORIENTATION_PATIENT).is_some();
        let is_seg = std::ptr::eq(o, &seg);
        match (geometry, is_seg) {
            (true, _) => assert_eq!(
                text(o, tags::FRAME_OF_REFERENCE_UID),
                text(&src, tags::FRAME_OF_REFERENCE_UID)
            ),
            (false, true) => assert!(o.get(tags::FRAME_OF_REFERENCE_UID).is_none()),
            (false, false) => {
                assert!(text(o, tags::FRAME_OF_REFERENCE_UID).starts_with("2.25."))
            }
        }
        // New series and instance, referencing the source image.
        for t in [tags::SERIES_INSTANCE_UID, tags::SOP_INSTANCE_UID] {
            assert_ne!(text(o, t), text(&src, t), "{t:?} must be new");
            assert!(text(o, t).starts_with("2.25."));
        }
        assert_eq!(
            o.meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0'),
            text(o, tags::SOP_INSTANCE_UID)
        );
        let series = item(o, tags::REFERENCED_SERIES_SEQUENCE);
        assert_eq!(
            text(series, tags::SERIES_INSTANCE_UID),
            text(&src, tags::SERIES_INSTANCE_UID)
        );
        let inst = item(series, tags::REFERENCED_INSTANCE_SEQUENCE);
        assert_eq!(
            text(inst, tags::REFERENCED_SOP_INSTANCE_UID),
            text(&src, tags::SOP_INSTANCE_UID)
        );
        let desc = text(o, tags::SERIES_DESCRIPTION);
        assert!(desc.contains("research use"), "{desc}");
        assert_eq!(o.get(tags::ROWS).unwrap().to_int::<usize>().unwrap(), h);
        assert_eq!(o.get(tags::COLUMNS).unwrap().to_int::<usize>().unwrap(), w);
    }
    assert_ne!(
        text(&seg, tags::SERIES_INSTANCE_UID),
        text(&pm, tags::SERIES_INSTANCE_UID)
    );
    // The threshold and the model are named.
    let seg_desc = text(&seg, tags::SERIES_DESCRIPTION);
    assert!(seg_desc.contains(&format!("p > {threshold}")), "{seg_desc}");
    assert!(seg_desc.contains("engine"), "{seg_desc}");
    let segment = item(&seg, tags::SEGMENT_SEQUENCE);
    assert_eq!(text(segment, tags::SEGMENT_ALGORITHM_TYPE), "AUTOMATIC");
    // Segmentation pixels: 1 bit per pixel, LSB first, p > threshold.
    let bits = seg.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(bits.len(), (w * h).div_ceil(8).next_multiple_of(2));
    let mut marked = 0;
    for (i, &p) in prob.iter().enumerate() {
        let bit = bits[i / 8] >> (i % 8) & 1 == 1;
        assert_eq!(bit, p > threshold, "pixel {i}: p {p}");
        marked += bit as usize;
    }
    assert_eq!(marked, prob.iter().filter(|&&p| p > threshold).count());
    // Parametric map: the probabilities themselves, as 32-bit floats.
    let floats = pm
        .get(tags::FLOAT_PIXEL_DATA)
        .unwrap()
        .to_multi_float32()
        .unwrap();
    assert_eq!(floats.len(), prob.len());
    assert!(
        floats
            .iter()
            .zip(prob)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    assert_eq!(
        pm.get(tags::BITS_ALLOCATED)
            .unwrap()
            .to_int::<u16>()
            .unwrap(),
        32
    );
}

/// The Secondary Capture of the overlay: the source's identity, new UIDs,
/// RGB pixels equal to the PNG overlay's.
fn check_overlay(source: &Path, r: &DicomResults, scan: &Gray8, prob: &[f32]) {
    let src = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(source)
        .unwrap();
    let sc = dicom_object::open_file(r.overlay.as_ref().unwrap()).unwrap();
    assert_eq!(text(&sc, tags::SOP_CLASS_UID), "1.2.840.10008.5.1.4.1.1.7");
    for t in [tags::PATIENT_ID, tags::STUDY_INSTANCE_UID] {
        assert_eq!(text(&sc, t), text(&src, t), "{t:?}");
    }
    for t in [tags::SERIES_INSTANCE_UID, tags::SOP_INSTANCE_UID] {
        assert_ne!(text(&sc, t), text(&src, t), "{t:?} must be new");
    }
    assert!(text(&sc, tags::SERIES_DESCRIPTION).contains("research use"));
    assert_eq!(text(&sc, tags::PHOTOMETRIC_INTERPRETATION), "RGB");
    assert_eq!(
        sc.get(tags::SAMPLES_PER_PIXEL)
            .unwrap()
            .to_int::<u16>()
            .unwrap(),
        3
    );
    let px = sc.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let rgb = engine::infer::overlay_rgb(scan, prob);
    assert_eq!(&px[..rgb.len()], &rgb[..]);
}

#[test]
fn dicom_results_carry_the_source_identity_and_the_maps() {
    let dir = temp("dicom");
    let (w, h) = (50, 37); // 1850 pixels: the bit packing ends mid-byte
    let src = dir.join("in/mammo.dcm");
    write_source_dicom(&src, &scan(w, h, 0), true);
    // A map with values on both sides of and exactly at the threshold.
    let prob: Vec<f32> = (0..w * h).map(|i| (i % 101) as f32 / 100.0).collect();
    let opts = DicomOptions {
        kinds: DicomKinds::ALL,
        threshold: 0.5,
        model_name: "engine test model".into(),
    };
    let stem = dir.join("out/mammo");
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let r = engine::dicom_out::write_results(&src, &stem, &scan(w, h, 0), &prob, &opts).unwrap();
    assert_eq!(r.segmentation, Some(dir.join("out/mammo_seg.dcm")));
    check_dicom_results(&src, &r, &prob, 0.5, w, h);
    check_overlay(&src, &r, &scan(w, h, 0), &prob);
    let seg = dicom_object::open_file(r.segmentation.as_ref().unwrap()).unwrap();
    assert_eq!(text(&seg, tags::PATIENT_ID), PATIENT_ID);
    assert_eq!(text(&seg, tags::FRAME_OF_REFERENCE_UID), FOR_UID);
    assert!(r.frame_of_reference_from_source);
    // Pixel spacing, thickness and the plane geometry travel into the
    // functional groups.
    let shared = item(&seg, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let measures = item(shared, tags::PIXEL_MEASURES_SEQUENCE);
    assert_eq!(text(measures, tags::PIXEL_SPACING), "0.1\\0.1");
    assert_eq!(text(measures, tags::SLICE_THICKNESS), "2");
    let frame = item(&seg, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let position = item(frame, tags::PLANE_POSITION_SEQUENCE);
    assert_eq!(text(position, tags::IMAGE_POSITION_PATIENT), "-10\\20\\5");

    // Without geometry (a projection image): a new frame of reference for
    // the Parametric Map, none for the Segmentation.
    let src2 = dir.join("in/projection.dcm");
    write_source_dicom(&src2, &scan(w, h, 1), false);
    let r2 = engine::dicom_out::write_results(
        &src2,
        &dir.join("out/projection"),
        &scan(w, h, 1),
        &prob,
        &opts,
    )
    .unwrap();
    assert!(!r2.frame_of_reference_from_source);
    check_dicom_results(&src2, &r2, &prob, 0.5, w, h);
    let pm = dicom_object::open_file(r2.parametric_map.as_ref().unwrap()).unwrap();
    assert_eq!(
        text(&pm, tags::FRAME_OF_REFERENCE_UID),
        r2.frame_of_reference
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(
    not(mammo_data),
    ignore = "needs real data: set MAMMO_DATA when building the tests (see data/README.md)"
)]
fn dicom_results_for_a_real_cbis_ddsm_scan() {
    let root = PathBuf::from(std::env::var_os("MAMMO_DATA").expect("MAMMO_DATA"));
    let src = root.join("cbis-ddsm/1-131.dcm");
    let img = read_scan(&src).unwrap();
    let (w, h) = (img.width, img.height);
    // A map derived from the scan (no network: a 15-megapixel scan takes
    // minutes on a software GPU); the writing path is the same.
    let prob: Vec<f32> = img.pixels.iter().map(|&v| v as f32 / 255.0).collect();
    let dir = temp("dicom-real");
    let opts = DicomOptions {
        kinds: DicomKinds::ALL,
        threshold: 0.6,
        model_name: "engine test model".into(),
    };
    let r = engine::dicom_out::write_results(&src, &dir.join("1-131"), &img, &prob, &opts).unwrap();
    check_dicom_results(&src, &r, &prob, 0.6, w, h);
    check_overlay(&src, &r, &img, &prob);
    let seg = dicom_object::open_file(r.segmentation.as_ref().unwrap()).unwrap();
    assert_eq!(text(&seg, tags::PATIENT_ID), "Mass-Test_P_00173_LEFT_MLO");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The DICOM results pass dicom3tools' IOD validator (no "Error" line),
/// with and without source geometry.
#[test]
#[cfg_attr(
    not(dciodvfy),
    ignore = "needs dciodvfy (apt-get install dicom3tools) when the tests are built"
)]
fn dicom_results_pass_dciodvfy() {
    let dir = temp("dciodvfy");
    let (w, h) = (40, 30);
    let prob: Vec<f32> = (0..w * h).map(|i| (i % 7) as f32 / 6.0).collect();
    let opts = DicomOptions {
        kinds: DicomKinds::ALL,
        threshold: 0.5,
        model_name: "engine test model".into(),
    };
    for geometry in [true, false] {
        let src = dir.join(format!("src-{geometry}.dcm"));
        write_source_dicom(&src, &scan(w, h, 2), geometry);
        let r = engine::dicom_out::write_results(
            &src,
            &dir.join(format!("out-{geometry}")),
            &scan(w, h, 2),
            &prob,
            &opts,
        )
        .unwrap();
        for (file, iod) in [
            (r.segmentation.as_ref().unwrap(), "Segmentation"),
            (r.parametric_map.as_ref().unwrap(), "ParametricMap"),
            (r.overlay.as_ref().unwrap(), "SCImage"),
        ] {
            let o = Command::new("dciodvfy").arg(file).output().unwrap();
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(report.lines().any(|l| l == iod), "{report}");
            let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn ok_rows(rows: &[Row]) -> Vec<&Row> {
    rows.iter().filter(|r| r.status == "ok").collect()
}

#[test]
fn batch_inference_over_folders() {
    let dir = temp("batch");
    let model = tiny_model();
    let ckpt = dir.join("model.safetensors");
    save_model(&model, &ckpt);
    // CBIS-DDSM names every file 1-1.dcm: four inputs share that name.
    let input = dir.join("in");
    let scans = [
        ("in/a/1-1.png", scan(64, 48, 1)),
        ("in/b/1-1.png", scan(40, 56, 2)),
        ("in/b/c/1-1.png", scan(72, 40, 3)),
        ("x/1-1.png", scan(33, 35, 4)),
        ("y/1-1.png", scan(48, 48, 5)),
    ];
    for (p, g) in &scans {
        write_png(&dir.join(p), g);
    }
    write_source_dicom(&dir.join("in/d/1-1.dcm"), &scan(45, 38, 6), false);
    std::fs::write(dir.join("in/notes.txt"), "not an image").unwrap();
    // A link back up the tree is followed once, not forever.
    #[cfg(unix)]
    std::os::unix::fs::symlink(&input, dir.join("in/b/c/loop")).unwrap();
    std::fs::write(dir.join("in/b/broken.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let out = dir.join("out");
    let (code, stdout, stderr) = engine(args![
        "infer",
        "--checkpoint",
        &ckpt,
        "--out",
        &out,
        "--json",
        &input,
        &dir.join("x/1-1.png"),
        &dir.join("y/1-1.png"),
    ]);
    // One bad input: exit code 2, the others done.
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stderr.contains("broken.png"), "{stderr}");
    let rows = read_rows(&out.join("results.csv")).unwrap();
    assert_eq!(rows.len(), 7, "{rows:?}");
    let outputs: Vec<&str> = rows.iter().map(|r| r.output.as_str()).collect();
    assert_eq!(
        outputs,
        [
            "a/1-1", "b/1-1", "b/broken", "b/c/1-1", "d/1-1", "1-1", "1-1-2"
        ]
    );
    assert_eq!(rows[2].status, "bad input");
    assert!(!rows[2].error.is_empty());
    assert_eq!(ok_rows(&rows).len(), 6);
    for r in ok_rows(&rows) {
        for suffix in ["prob.png", "mask.png", "overlay.png"] {
            let p = out.join(format!("{}_{suffix}", r.output));
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    // The DICOM input also has its Segmentation and Parametric Map.
    assert!(out.join("d/1-1_seg.dcm").is_file());
    assert!(out.join("d/1-1_pmap.dcm").is_file());
    assert!(!out.join("a/1-1_seg.dcm").exists());
    // The overlay Secondary Capture only when asked for (--dicom).
    assert!(!out.join("d/1-1_overlay.dcm").exists());
    // Each row's numbers are those of the map, by eval's definitions.
    for (r, (_, g)) in ok_rows(&rows)
        .iter()
        .filter(|r| !r.file.ends_with(".dcm"))
        .zip(&scans)
    {
        let prob = probability_map(gpu(), &model, g, &TileOptions::default()).unwrap();
        assert_eq!((r.width, r.height), (Some(g.width), Some(g.height)));
        assert_eq!(
            r.max_probability,
            Some(prob.iter().copied().fold(0.0, f32::max))
        );
        assert_eq!(
            r.pixels_above_threshold,
            Some(prob.iter().filter(|&&p| p > 0.5).count() as u64)
        );
        assert_eq!(r.image_score, Some(ImageScore::Area.score(&prob)));
        assert_eq!(
            r.image_predicted,
            Some(metrics::image_predicted(&prob, 0.5) as u8)
        );
        assert!(r.seconds > 0.0);
    }
    let dcm_row = rows.iter().find(|r| r.output == "d/1-1").unwrap();
    let dcm_prob = probability_map(
        gpu(),
        &model,
        &read_scan(&dir.join("in/d/1-1.dcm")).unwrap(),
        &TileOptions::default(),
    )
    .unwrap();
    check_dicom_results(
        &dir.join("in/d/1-1.dcm"),
        &DicomResults {
            segmentation: Some(out.join("d/1-1_seg.dcm")),
            parametric_map: Some(out.join("d/1-1_pmap.dcm")),
            overlay: None,
            frame_of_reference: String::new(),
            frame_of_reference_from_source: false,
        },
        &dcm_prob,
        0.5,
        45,
        38,
    );
    assert_eq!(
        dcm_row.max_probability,
        Some(dcm_prob.iter().copied().fold(0.0, f32::max))
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 7);
    assert_eq!(
        (json["ok"].as_u64(), json["failed"].as_u64()),
        (Some(6), Some(1))
    );

    // --skip-existing: only the input whose outputs went missing runs again.
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let kept = out.join("a/1-1_prob.png");
    let before = mtime(&kept);
    std::fs::remove_file(out.join("b/c/1-1_mask.png")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, stdout, stderr) = engine(args![
        "infer",
        "--checkpoint",
        &ckpt,
        "--out",
        &out,
        "--skip-existing",
        &input,
        &dir.join("x/1-1.png"),
        &dir.join("y/1-1.png"),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stdout.contains("6 ok (5 skipped as already done), 1 failed"),
        "{stdout}"
    );
    assert!(out.join("b/c/1-1_mask.png").is_file());
    assert_eq!(mtime(&kept), before, "a finished input was redone");
    let again = read_rows(&out.join("results.csv")).unwrap();
    assert_eq!(again.len(), 7);
    assert_eq!(again[0], rows[0], "a skipped row keeps its numbers");

    // An interrupted batch: results.csv holds only the rows written before
    // the stop (header and two rows); the rest runs again, those two do not.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let first3: Vec<&str> = csv.lines().take(3).collect();
    std::fs::write(out.join("results.csv"), first3.join("\n") + "\n").unwrap();
    // y/1-1.png, the last input, was after the stop.
    let later_out = out.join("1-1-2_prob.png");
    let later_before = mtime(&later_out);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, stdout, stderr) = engine(args![
        "infer",
        "--checkpoint",
        &ckpt,
        "--out",
        &out,
        "--skip-existing",
        &input,
        &dir.join("x/1-1.png"),
        &dir.join("y/1-1.png"),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stdout.contains("6 ok (2 skipped as already done), 1 failed"),
        "{stdout}"
    );
    assert_eq!(mtime(&kept), before, "a finished input was redone");
    assert_ne!(
        mtime(&later_out),
        later_before,
        "an unfinished input was not run"
    );
    let resumed = read_rows(&out.join("results.csv")).unwrap();
    assert_eq!(resumed.len(), 7);
    assert_eq!(resumed[6].max_probability, rows[6].max_probability);

    // A failure inside the engine (here: an output folder that cannot be
    // made, a file is in its way) is an error row and exit code 1; the
    // other inputs still run.
    let out_err = dir.join("out-err");
    std::fs::create_dir_all(&out_err).unwrap();
    std::fs::write(out_err.join("a"), "in the way").unwrap();
    let (code, _, stderr) = engine(args![
        "infer",
        "--checkpoint",
        &ckpt,
        "--out",
        &out_err,
        &input,
    ]);
    assert_eq!(code, 1, "{stderr}");
    let e = read_rows(&out_err.join("results.csv")).unwrap();
    assert_eq!(e[0].output, "a/1-1");
    assert_eq!(e[0].status, "error");
    assert!(e[0].error.contains("creating"), "{}", e[0].error);
    assert_eq!(e.iter().filter(|r| r.status == "ok").count(), 3);

    // --glob filters the files found in folders.
    let out_glob = dir.join("out-glob");
    let (code, _, stderr) = engine(args![
        "infer",
        "--checkpoint",
        &ckpt,
        "--out",
        &out_glob,
        "--glob",
        "**/c/*.png",
        &input,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let g = read_rows(&out_glob.join("results.csv")).unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].output, "b/c/1-1");

    // Shards: disjoint, together the whole batch with the same rows.
    let out_sh = dir.join("out-shards");
    let mut merged = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        let (code, _, stderr) = engine(args![
            "infer",
            "--checkpoint",
            &ckpt,
            "--out",
            &out_sh,
            "--shard",
            &shard,
            &input,
            &dir.join("x/1-1.png"),
            &dir.join("y/1-1.png"),
        ]);
        assert!(code == 0 || code == 2, "{stderr}");
        merged.extend(read_rows(&out_sh.join(format!("results-shard-{i}-of-3.csv"))).unwrap());
    }
    // Every input in exactly one shard.
    assert_eq!(merged.len(), rows.len());
    // `engine infer --merge` puts them back in the unsharded run's order:
    // the same rows (apart from the timings) as the unsharded run.
    let (code, stdout, stderr) = engine(args!["infer", "--merge", "--out", &out_sh]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("7 inputs: 6 ok, 1 failed"), "{stdout}");
    let strip = |rows: &[Row]| -> Vec<Row> {
        rows.iter()
            .map(|r| Row {
                seconds: 0.0,
                ..r.clone()
            })
            .collect()
    };
    let merged = read_rows(&out_sh.join("results.csv")).unwrap();
    assert_eq!(strip(&merged), strip(&rows));
    assert_eq!(
        merged.iter().map(|r| r.index).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    // A missing shard is refused.
    std::fs::remove_file(out_sh.join("results-shard-1-of-3.csv")).unwrap();
    let (code, _, stderr) = engine(args!["infer", "--merge", "--out", &out_sh]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("missing shards: 1/3"), "{stderr}");
    // An argument that does not exist is one bad-input row (shard 0's).
    let out_m = dir.join("out-missing");
    for shard in ["0/2", "1/2"] {
        engine(args![
            "infer",
            "--checkpoint",
            &ckpt,
            "--out",
            &out_m,
            "--shard",
            shard,
            &dir.join("no/such/file.png"),
            &dir.join("x/1-1.png"),
        ]);
    }
    let (code, _, stderr) = engine(args!["infer", "--merge", "--out", &out_m]);
    assert_eq!(code, 0, "{stderr}");
    let m = read_rows(&out_m.join("results.csv")).unwrap();
    let st: Vec<(&str, &str)> = m
        .iter()
        .map(|r| (r.status.as_str(), r.output.as_str()))
        .collect();
    assert_eq!(st, [("bad input", ""), ("ok", "1-1")]);

    // An adapter that does not exist (a bad --adapter or ENGINE_ADAPTER:
    // exit 2) is found once the command needs the GPU...
    let (code, _, stderr) = engine_without_gpu(args![
        "infer",
        "--checkpoint",
        &ckpt,
        "--out",
        &dir.join("o3"),
        &input,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no-such-adapter-for-this-test"), "{stderr}");
    // ...but an --out that cannot be created is found first.
    let (code, _, stderr) = engine_without_gpu(args![
        "infer",
        "--checkpoint",
        &ckpt,
        "--out",
        &dir.join("x/1-1.png/out"),
        &input,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be written"), "{stderr}");
    // No inputs at all.
    let (code, _, stderr) = engine(args![
        "infer",
        "--checkpoint",
        &ckpt,
        "--out",
        &dir.join("o2"),
        "--glob",
        "*.nothing",
        &input,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no inputs"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn glob_patterns() {
    use engine::batch::glob_match;
    assert!(glob_match("*.dcm", "a/b/1-1.dcm"));
    assert!(!glob_match("*.dcm", "a/b/1-1.png"));
    assert!(glob_match("a/*/1-?.dcm", "a/b/1-1.dcm"));
    assert!(!glob_match("a/*.dcm", "a/b/1-1.dcm"));
    assert!(glob_match("**/FULL*/*.dcm", "P1/x/FULL mammo/1-1.dcm"));
    assert!(glob_match("**/1-1.dcm", "1-1.dcm"));
    assert!(!glob_match("**/FULL*/*.dcm", "P1/ROI/1-1.dcm"));
}

#[test]
fn merged_eval_shards_equal_one_run() {
    let dir = temp("eval-shards");
    let model = tiny_model();
    let predictor = engine::predictor::Predictor::single(model, None, "c");
    let mut samples = Vec::new();
    for i in 0..5 {
        let g = scan(48 + 8 * i, 40, i);
        let mut mask = Gray8::new(g.width, g.height);
        if i % 2 == 0 {
            for y in 8..20 {
                for x in 10..22 {
                    mask.set(x, y, 1);
                }
            }
        }
        samples.push(Sample::in_memory(format!("case {i}.png"), g, mask));
    }
    let opts = EvalOptions {
        panel_size: 32,
        bins: 100,
        ..EvalOptions::default()
    };
    let source = engine::eval::report::Source {
        checkpoint: "c".into(),
        data: "d".into(),
        split: "test".into(),
        tta: "none".into(),
    };
    let one = dir.join("one");
    let s = evaluate(
        gpu(),
        &predictor,
        &samples,
        &opts,
        source.clone(),
        &one,
        false,
    )
    .unwrap();
    assert_eq!(s.images, 5);
    let mut shard_dirs = Vec::new();
    for i in 0..3 {
        let d = dir.join(format!("shard{i}"));
        let p = engine::eval::shard::evaluate_shard(
            gpu(),
            &predictor,
            &samples,
            engine::shard::Shard { index: i, count: 3 },
            &opts,
            source.clone(),
            &d,
            false,
        )
        .unwrap();
        assert_eq!(
            p.records.iter().map(|r| r.0).collect::<Vec<_>>(),
            (i..5).step_by(3).collect::<Vec<_>>()
        );
        shard_dirs.push(d);
    }
    // Merge through the command line, shards given out of order.
    let merged = dir.join("merged");
    let (code, _, stderr) = engine(args![
        "eval",
        "--merge",
        &shard_dirs[2],
        &shard_dirs[0],
        &shard_dirs[1],
        "--out",
        &merged,
    ]);
    assert_eq!(code, 0, "{stderr}");
    for f in ["summary.json", "images.csv", "sweep.csv"] {
        let a = std::fs::read_to_string(one.join(f)).unwrap();
        let b = std::fs::read_to_string(merged.join(f)).unwrap();
        assert!(a == b, "{f} differs between one run and merged shards");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["images"], 5);
    assert_eq!(summary["positive_images"], 3);
    for r in summary["per_image"].as_array().unwrap() {
        assert!(merged.join(r["panel"].as_str().unwrap()).is_file());
    }
    // The same through the command line, on a prepared folder: two shards
    // merged equal one run.
    let ckpt = dir.join("model.safetensors");
    save_model(&predictor.members()[0].model, &ckpt);
    let data = dir.join("data");
    support::write_test_split(&data, &samples);
    let eval = |extra: &[&std::ffi::OsStr], out: &Path| {
        let mut a: Vec<&std::ffi::OsStr> = args![
            "eval",
            "--no-panels",
            "--checkpoint",
            &ckpt,
            "--data",
            &data,
            "--out",
            out
        ]
        .to_vec();
        a.extend_from_slice(extra);
        let (code, _, stderr) = engine(&a);
        assert_eq!(code, 0, "{stderr}");
    };
    eval(&[], &dir.join("cli-one"));
    eval(args!["--shard", "0/2"], &dir.join("cli-0"));
    eval(args!["--shard", "1/2"], &dir.join("cli-1"));
    assert!(
        !dir.join("cli-0/summary.json").exists(),
        "a shard is partial"
    );
    let (code, _, stderr) = engine(args![
        "eval",
        "--merge",
        &dir.join("cli-0"),
        &dir.join("cli-1"),
        "--out",
        &dir.join("cli-merged"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    for f in ["summary.json", "images.csv", "sweep.csv"] {
        let a = std::fs::read_to_string(dir.join("cli-one").join(f)).unwrap();
        let b = std::fs::read_to_string(dir.join("cli-merged").join(f)).unwrap();
        assert!(a == b, "{f}: merged CLI shards differ from one CLI run");
    }

    // A missing shard is bad input.
    let (code, _, stderr) = engine(args![
        "eval",
        "--merge",
        &shard_dirs[0],
        &shard_dirs[1],
        "--out",
        &dir.join("bad"),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("missing shards: 2/3"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_folder_is_self_describing_and_not_overwritten() {
    let dir = temp("run");
    let run = dir.join("run");
    let train = |extra: &[&str]| {
        let mut a: Vec<&std::ffi::OsStr> = args![
            "train",
            "--synthetic",
            "6",
            "--synthetic-size",
            "64",
            "--sizes",
            "64:2",
            "--batch",
            "2",
            "--micro-batch",
            "2",
            "--width",
            "0.125",
            "--threads",
            "1",
            "--out",
            &run,
        ]
        .to_vec();
        a.extend(extra.iter().map(std::ffi::OsStr::new));
        engine(&a)
    };
    let (code, _, stderr) = train(&[]);
    assert_eq!(code, 0, "{stderr}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["arguments"]["width"], 0.125);
    assert_eq!(config["arguments"]["lr"], 0.001);
    assert_eq!(config["arguments"]["sizes"], "64:2");
    assert_eq!(config["arguments"]["synthetic"], 6);
    assert_eq!(config["engine_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(config["adapter"]["name"], gpu().info.name.as_str());
    assert!(config["data"].is_null());
    // metrics.csv: the baseline and two epochs, the numbers of metrics.jsonl.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("epoch,size,train_loss,val_pixel_ap,val_image_auc"));
    let jsonl = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epoch2: serde_json::Value = jsonl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "epoch" && v["epoch"] == 2)
        .unwrap();
    let cells: Vec<&str> = lines[3].split(',').collect();
    assert_eq!(cells[0], "2");
    assert_eq!(
        cells[2].parse::<f64>().unwrap(),
        epoch2["train_loss"].as_f64().unwrap()
    );
    assert_eq!(
        cells[6].parse::<f64>().unwrap(),
        epoch2["val_iou"].as_f64().unwrap()
    );
    let (cw, ch) = image::image_dimensions(run.join("curves.png")).unwrap();
    assert_eq!((cw, ch), engine::run_folder::CURVES_SIZE);
    // A second run into the same folder is refused and changes nothing.
    let ckpt = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let (code, _, stderr) = train(&[]);
    assert_ne!(code, 0);
    // Refused before the GPU is touched.
    let mut again: Vec<&std::ffi::OsStr> =
        args!["train", "--synthetic", "6", "--out", &run].to_vec();
    again.push(std::ffi::OsStr::new("--sizes"));
    again.push(std::ffi::OsStr::new("64:2"));
    let (code2, _, stderr2) = engine_without_gpu(&again);
    assert_ne!(code2, 0);
    assert!(stderr2.contains("not empty"), "{stderr2}");
    assert!(
        stderr.contains("not empty") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(run.join("checkpoint.safetensors")).unwrap(),
        ckpt
    );
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(),
        jsonl
    );
    // --overwrite starts again: one baseline line, not two.
    let (code, _, stderr) = train(&["--overwrite"]);
    assert_eq!(code, 0, "{stderr}");
    let jsonl = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(jsonl.matches("\"baseline\"").count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_records_the_data_manifest_hash() {
    let dir = temp("config");
    engine::run_folder::write_config(
        &dir,
        &serde_json::json!({"lr": 0.001}),
        gpu(),
        &[PathBuf::from("data/sample")],
        false,
    )
    .unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let hash = config["data"]["manifest_sha256"].as_str().unwrap();
    // Against coreutils' sha256sum where present.
    if let Ok(o) = Command::new("sha256sum")
        .arg("data/sample/manifest.json")
        .output()
    {
        let expected = String::from_utf8_lossy(&o.stdout);
        assert_eq!(hash, expected.split_whitespace().next().unwrap());
    }
    assert_eq!(hash.len(), 64);
    // A resumed run appends itself to `resumes`.
    engine::run_folder::write_config(&dir, &serde_json::json!({"lr": 0.002}), gpu(), &[], true)
        .unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["arguments"]["lr"], 0.001);
    assert_eq!(config["resumes"][0]["arguments"]["lr"], 0.002);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_model_json_reports_times_and_shares() {
    let (code, out, err) = engine(args![
        "bench",
        "--model",
        "--json",
        "--width",
        "0.25",
        "--train-size",
        "64",
        "--batch",
        "1",
        "--infer-size",
        "64",
        "--iters",
        "1"
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    for key in [
        "train_step_ms",
        "infer_ms",
        "peak_mib",
        "dispatches_per_step",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
    // Each pass's family shares and kernel shares split the same GPU time.
    for key in [
        "shares",
        "kernel_shares",
        "infer_shares",
        "infer_kernel_shares",
    ] {
        let total: f64 = v[key]
            .as_object()
            .unwrap_or_else(|| panic!("{key} in {v}"))
            .values()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "{key} sums to {total}");
    }
    for kernel in ["pad_input", "conv2d_backward_weight", "adam_step_sq"] {
        assert!(
            v["kernel_shares"].get(kernel).is_some(),
            "{kernel} in {}",
            v["kernel_shares"]
        );
    }
}

/// `--all-variants` times every candidate and, in a long run on an
/// adapter that reads beyond storage, each tile's storage reader (the
/// long run's rivals); `--rounds` is reported and each variant timed.
#[test]
fn bench_all_variants_times_the_long_run_rivals_in_rounds() {
    let v = small_bench_json(&[
        "--long-run",
        "--all-variants",
        "--filter",
        "conv1x1",
        "--rounds",
        "2",
    ]);
    assert_eq!(v["rounds"], 2, "{v}");
    let names: Vec<&str> = v["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert!(k["ms"].as_f64().is_some_and(|ms| ms > 0.0), "{k}");
            k["variant"].as_str().unwrap()
        })
        .collect();
    let g = gpu();
    let want: Vec<String> = engine::ops::conv::ConvVariant::with_rivals(g, 1)
        .iter()
        .map(|v| v.name())
        .collect();
    let storage = g.texel_operands() || g.uniform_operands();
    assert_eq!(want.iter().any(|n| n.contains("-storage")), storage);
    assert_eq!(names, want);
}

/// Several filters separated by commas pick several cases, timed in the
/// same rounds; each convolution reports its share of the 3x3 forward's
/// rate (the reference's own share is 1 in every round), other cases none.
#[test]
fn bench_rounds_report_each_convolutions_share_of_the_3x3_forward() {
    let v = small_bench_json(&["--filter", "conv3x3 fwd,conv1x1,add_relu", "--rounds", "3"]);
    let kernels = v["kernels"].as_array().unwrap();
    let share = |prefix: &str| {
        let k = kernels
            .iter()
            .find(|k| k["kernel"].as_str().unwrap().starts_with(prefix));
        k.unwrap_or_else(|| panic!("no {prefix} in {v}"))["share_of_3x3_fwd"].as_f64()
    };
    assert_eq!(kernels.len(), 3, "{v}");
    assert_eq!(share("conv3x3 fwd"), Some(1.0), "{v}");
    assert!(
        share("conv1x1 fwd").is_some_and(|s| s > 0.0 && s.is_finite()),
        "{v}"
    );
    assert_eq!(share("add_relu"), None, "{v}");
}

/// `engine bench --json --no-cpu` at a small shape (1 x 8 channels x 8 x 8,
/// one run each) with `extra` arguments; it must succeed.
fn small_bench_json(extra: &[&str]) -> serde_json::Value {
    let small = ["bench", "--json", "--no-cpu", "--n", "1", "--channels", "8"];
    let small = small.into_iter().chain(["--size", "8", "--iters", "1"]);
    let args: Vec<&std::ffi::OsStr> = small
        .chain(extra.iter().copied())
        .map(std::ffi::OsStr::new)
        .collect();
    let (code, out, err) = engine(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(out.trim()).expect("one JSON object")
}

/// `ENGINE_TRACE_PIPELINES` names each pipeline once, at its first
/// dispatch, with the two times; without it nothing is printed.
#[test]
fn pipeline_trace_names_each_new_kernel_once() {
    let dir = temp("trace");
    let ckpt = dir.join("m.safetensors");
    save_model(&tiny_model(), &ckpt);
    let img = dir.join("a.png");
    write_png(&img, &scan(48, 40, 1));
    let run = |env: &[(&str, &str)], out: &str| {
        let (out_dir, img) = (dir.join(out), img.as_os_str());
        let a = args![
            "infer",
            "--checkpoint",
            &ckpt,
            "--pixel-spacing",
            "0.2",
            "--out",
            &out_dir,
            img
        ];
        let (code, _, stderr) = run_engine(a, env);
        assert_eq!(code, 0, "{stderr}");
        stderr
    };
    let traced = run(&[("ENGINE_TRACE_PIPELINES", "1")], "traced");
    let lines: Vec<&str> = traced
        .lines()
        .filter(|l| l.starts_with("pipeline "))
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("pipeline direct k3x3")),
        "{traced}"
    );
    let mut keys = std::collections::HashSet::new();
    for l in &lines {
        let (key, times) = l.split_once(": created in ").expect(l);
        assert!(
            times.contains(" ms, first dispatch ") && times.ends_with(" ms"),
            "{l}"
        );
        assert!(keys.insert(key), "{key} traced twice");
    }
    assert!(!run(&[], "plain").contains("pipeline "));
}

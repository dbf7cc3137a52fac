//! Data pipeline tests that need no real data: synthetic CBIS-like tree ->
//! `prepare cbis` -> prepared set -> loader; augmentation geometry; bad input.
use std::path::{Path, PathBuf};

use engine::data::Gray8;
use engine::data::augment::{AugmentParams, CROP_SCALE, apply, flip_rotate, sample_params};
use engine::data::cbis::{CbisOptions, prepare as prepare_cbis, read_csv};
use engine::data::loader::{Loader, LoaderConfig};
use engine::data::prepared::{PreparedSet, Sample, load_combined};
use engine::data::read::read_gray8;
use engine::data::synth::{SynthOptions, generate, write_cbis_tree, write_dicom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("engine-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cbis_tree(dir: &Path) -> usize {
    let opt = SynthOptions {
        width: 384,
        height: 512,
        ..SynthOptions::square(384)
    };
    let (scans, rows) = write_cbis_tree(dir, 10, &opt, 5).unwrap();
    assert_eq!(scans, 10);
    rows
}

#[test]
fn cbis_csvs_parse_with_their_column_variants_and_multiline_cells() {
    let dir = tmp("cbis-csv");
    let rows = cbis_tree(&dir);
    let mut n = 0;
    for f in [
        "mass_case_description_train_set.csv",
        "calc_case_description_train_set.csv",
        "mass_case_description_test_set.csv",
        "calc_case_description_test_set.csv",
    ] {
        let r = read_csv(&dir.join(f)).unwrap();
        for row in &r {
            // The quoted cell ended in a newline; the parser trimmed it.
            assert!(row.mask_path.ends_with("000000.dcm"), "{:?}", row.mask_path);
            assert_eq!(row.train, f.contains("train"));
            assert!(row.patient.starts_with("P_"));
        }
        n += r.len();
    }
    assert_eq!(n, rows);
    // The raw file really has a newline inside a quoted cell.
    let raw = std::fs::read_to_string(dir.join("mass_case_description_train_set.csv")).unwrap();
    assert!(raw.contains(".dcm\n\""));
    // A CSV missing a needed column is a clear error naming the file.
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "patient_id,foo\nP_1,2\n").unwrap();
    let e = read_csv(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.csv") && e.contains("left or right breast"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prepare_cbis_on_synthetic_tree_and_train_loader_consumes_it() {
    let dir = tmp("cbis-prep");
    let input = dir.join("in");
    let out = dir.join("out");
    cbis_tree(&input);
    // Corrupt one case: replace one ROI mask with a mask of the wrong size.
    let csv = read_csv(&input.join("mass_case_description_train_set.csv")).unwrap();
    let victim = &csv[0];
    write_dicom(
        &input.join("CBIS-DDSM").join(&victim.mask_path),
        &Gray8::new(100, 80),
        false,
        "1.2.3",
        "ROI mask images",
    )
    .unwrap();
    let opt = CbisOptions {
        csv: vec![],
        dicom_root: None,
        val: engine::data::prepared::Holdout::Fraction(0.2),
        seed: 1,
        // 200 pixels at DDSM's nominal 0.05 mm (the phantoms' DICOMs carry no spacing).
        crop_mm: 10.0,
        spacing_mm: None,
    };
    let w = prepare_cbis(&input, &out, &opt).unwrap();
    let m = &w.manifest;
    let full: Vec<_> = m.images.iter().filter(|e| !e.crop).collect();
    assert_eq!(full.len(), 10, "one combined image per scan");
    assert!(m.images.iter().all(|e| e.pixel_spacing_mm == Some(0.05)));
    // The bad mask is reported (not resized) and its scan is kept for image-level use only.
    assert_eq!(m.skipped.len(), 1, "{:?}", m.skipped);
    assert!(
        m.skipped[0]
            .reason
            .contains("does not match its scan's size"),
        "{:?}",
        m.skipped[0]
    );
    let scan_name = format!("{}_{}_{}", victim.patient, victim.side, victim.view);
    let e = m
        .images
        .iter()
        .find(|e| e.file.contains(&scan_name) && !e.crop)
        .unwrap();
    assert!(!e.mask_complete);
    // Splits are by patient; CBIS test patients stay in test.
    for e in &m.images {
        let same: Vec<_> = m.images.iter().filter(|o| o.patient == e.patient).collect();
        assert!(
            same.iter().all(|o| o.split == e.split),
            "patient {} in two splits",
            e.patient
        );
    }
    assert!(m.images.iter().any(|e| e.split == "test"));
    assert!(m.images.iter().any(|e| e.crop));
    // Combined PNGs: R = scan, G = mask, B = 0; the mask union matches the manifest.
    for e in &m.images {
        let (scan, mask) = load_combined(&out.join(&e.file)).unwrap();
        assert_eq!((scan.width, scan.height), (e.width, e.height));
        assert_eq!(mask.count_nonzero(), e.positive_pixels, "{}", e.file);
        if e.mask_complete {
            assert!(e.positive_pixels > 0, "{}", e.file);
        }
        let img = image::open(out.join(&e.file)).unwrap().to_rgb8();
        assert!(
            img.pixels()
                .all(|p| p[2] == 0 && (p[1] == 0 || p[1] == 255))
        );
    }
    // The loader consumes it.
    let set = PreparedSet::open(&out).unwrap();
    let train = set.training();
    assert!(!train.is_empty());
    let cfg = LoaderConfig {
        size: 64,
        batch: 4,
        seed: 2,
        epoch: 0,
        augment: true,
        threads: 2,
        prefetch: 2,
        ..LoaderConfig::default()
    };
    let mut loader = Loader::new(train, cfg);
    let nb = loader.batches_per_epoch();
    let batches: Vec<_> = loader.by_ref().map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), nb);
    for b in &batches {
        assert_eq!(b.images.len(), b.n * 64 * 64);
        assert!(b.masks.iter().all(|&v| v == 0.0 || v == 1.0));
        assert!(
            b.images
                .iter()
                .all(|&v| (-127.0 / 255.0..=128.0 / 255.0).contains(&v))
        );
    }
    assert!(loader.positive_fraction() > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Map every output pixel back to its source pixel centre (before flips/rotations).
fn source_coords(p: &AugmentParams, size: usize) -> Vec<(f64, f64)> {
    let idx: Vec<u32> = (0..(size * size) as u32).collect();
    let moved = flip_rotate(&idx, size, p);
    let s = p.side / size as f64;
    moved
        .iter()
        .map(|&i| {
            let (u, v) = ((i as usize % size) as f64, (i as usize / size) as f64);
            (p.x0 + (u + 0.5) * s, p.y0 + (v + 0.5) * s)
        })
        .collect()
}

#[test]
fn augmentation_keeps_lesions_within_a_pixel_and_moves_mask_with_image() {
    // A 300x200 image: a bright disc (radius 20 at (180.5, 90.5) in continuous
    // coordinates, i.e. pixel centres within 20 of it) on a dark background, and
    // the same disc as mask.
    let (w, h, cx, cy, r) = (300usize, 200usize, 180.5f64, 90.5f64, 20.0f64);
    let mut scan = Gray8::new(w, h);
    let mut mask = Gray8::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
            scan.set(x, y, if d <= r { 250 } else { 10 });
            mask.set(x, y, (d <= r) as u8);
        }
    }
    let size = 64;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut checked = 0;
    for _ in 0..40 {
        let p = sample_params(&mut rng, w, h, size, CROP_SCALE);
        let (img, m) = apply(&scan, &mask, &p, size);
        let src = source_coords(&p, size);
        let px = p.side / size as f64; // one output pixel in source units
        for (k, &(sx, sy)) in src.iter().enumerate() {
            let d = ((sx - cx).powi(2) + (sy - cy).powi(2)).sqrt();
            if m[k] == 1 {
                // No positive pixel lands more than one output pixel outside the lesion.
                assert!(
                    d <= r + px * std::f64::consts::SQRT_2,
                    "positive at distance {d} (r {r}, px {px})"
                );
                checked += 1;
            }
            if d <= r - px {
                assert_eq!(m[k], 1, "lesion pixel lost at distance {d}");
                // The image moved with the mask: inside the lesion it is bright.
                assert!(img[k] > 200.0, "image {} at lesion pixel", img[k]);
            }
            if d > r + 2.0 * px
                && sx >= 1.0
                && sy >= 1.0
                && sx < w as f64 - 1.0
                && sy < h as f64 - 1.0
            {
                assert!(img[k] < 20.0, "image {} outside lesion", img[k]);
            }
        }
    }
    assert!(
        checked > 1000,
        "the lesion must be in view often enough ({checked})"
    );
}

#[test]
fn loader_is_deterministic_whatever_the_thread_count() {
    let samples: Vec<Sample> = generate(10, 96, 4)
        .into_iter()
        .enumerate()
        .map(|(i, p)| Sample::in_memory(format!("p{i}"), p.image, p.mask))
        .collect();
    let run = |threads: usize, epoch: u64| -> Vec<_> {
        let cfg = LoaderConfig {
            size: 48,
            batch: 3,
            seed: 11,
            epoch,
            augment: true,
            threads,
            prefetch: 1,
            ..LoaderConfig::default()
        };
        Loader::new(samples.clone(), cfg)
            .map(|b| b.unwrap())
            .collect()
    };
    let a = run(1, 0);
    let b = run(3, 0);
    let c = run(2, 1);
    assert_eq!(a.len(), 4); // 10 samples, batches of 3
    assert_eq!(a[3].n, 1);
    assert_eq!(a, b);
    assert_ne!(a, c, "another epoch gives other crops");
    // Evaluation mode: the centred crop, samples in order.
    let cfg = LoaderConfig {
        size: 48,
        batch: 4,
        augment: false,
        threads: 2,
        ..LoaderConfig::default()
    };
    let e: Vec<_> = Loader::new(samples.clone(), cfg)
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(e[0].ids, vec!["p0", "p1", "p2", "p3"]);
    let cfg2 = LoaderConfig {
        size: 48,
        batch: 4,
        augment: false,
        threads: 1,
        seed: 99,
        ..LoaderConfig::default()
    };
    let e2: Vec<_> = Loader::new(samples, cfg2).map(|b| b.unwrap()).collect();
    assert_eq!(e, e2, "evaluation ignores the seed");
}

#[test]
fn loader_mixes_crops_towards_the_target_fraction() {
    // 20 full images with 1% positives, 10 crops with 20%: k = 20 * (0.06 - 0.01) / (0.2 - 0.06) = 7.14 -> 7.
    let mk = |crop: bool, frac: f64, i: usize| {
        let mut s = Sample::in_memory(format!("{crop}{i}"), Gray8::new(8, 8), Gray8::new(8, 8));
        s.crop = crop;
        s.positive_fraction = frac;
        s
    };
    let mut samples: Vec<Sample> = (0..20).map(|i| mk(false, 0.01, i)).collect();
    samples.extend((0..10).map(|i| mk(true, 0.2, i)));
    let cfg = LoaderConfig {
        size: 8,
        batch: 4,
        threads: 1,
        ..LoaderConfig::default()
    };
    let plan = engine::data::loader::plan_epoch(&samples, &cfg);
    assert_eq!(plan.len(), 27);
    assert_eq!(plan.iter().filter(|&&i| i >= 20).count(), 7);
}

#[test]
fn bad_files_are_clear_errors_not_panics() {
    let dir = tmp("bad");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.png", vec![], "empty"),
        (
            "garbage.bin",
            b"hello world, not an image".to_vec(),
            "unknown file format",
        ),
        (
            "trunc.png",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0".to_vec(),
            "cannot decode PNG",
        ),
        (
            "trunc.pgm",
            b"P5\n1024 1024\n255\n\x01\x02".to_vec(),
            "cannot decode PGM",
        ),
        (
            "trunc.jpg",
            vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 16],
            "cannot decode JPEG",
        ),
        (
            "fake.dcm",
            {
                let mut v = vec![0u8; 128];
                v.extend_from_slice(b"DICM\x02\x00");
                v
            },
            "not a readable DICOM file",
        ),
        (
            "nopreamble.dcm",
            b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100".to_vec(),
            "without the preamble",
        ),
    ];
    for (name, bytes, phrase) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = read_gray8(&p).expect_err(name).to_string();
        assert!(e.contains(name), "error names the file: {e}");
        assert!(e.contains(phrase), "{name}: {e:?} lacks {phrase:?}");
    }
    let e = read_gray8(&dir.join("missing.png"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing.png") && e.contains("cannot read file"),
        "{e}"
    );
    // A DICOM without pixel data.
    let p = dir.join("nopixels.dcm");
    {
        use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
        let obj = dicom_object::InMemDicomObject::from_element_iter([
            DataElement::new(
                Tag(0x0008, 0x0016),
                VR::UI,
                PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.7"),
            ),
            DataElement::new(Tag(0x0008, 0x0018), VR::UI, PrimitiveValue::from("1.2.3.4")),
        ]);
        obj.with_meta(
            dicom_object::FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"),
        )
        .unwrap()
        .write_to_file(&p)
        .unwrap();
    }
    let e = read_gray8(&p).unwrap_err().to_string();
    assert!(
        e.contains("nopixels.dcm") && e.contains("no pixel data"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn png_16bit_and_colour_read_as_gray8() {
    let dir = tmp("png16");
    let p = dir.join("a16.png");
    let v: Vec<u16> = vec![0, 257, 65535, 32896];
    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 2, v)
        .unwrap()
        .save(&p)
        .unwrap();
    let g = read_gray8(&p).unwrap();
    assert_eq!(g.pixels, vec![0, 1, 255, 128]);
    let p = dir.join("rgb.png");
    image::RgbImage::from_raw(1, 1, vec![255, 255, 255])
        .unwrap()
        .save(&p)
        .unwrap();
    assert_eq!(read_gray8(&p).unwrap().pixels, vec![255]);
    let p = dir.join("g.pgm");
    std::fs::write(&p, b"P5\n2 1\n255\n\x05\xfa").unwrap();
    assert_eq!(read_gray8(&p).unwrap().pixels, vec![5, 250]);
    let _ = std::fs::remove_dir_all(&dir);
}

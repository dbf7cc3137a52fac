//! Real-data tests: every file in `$MAMMO_DATA/dicom`, `$MAMMO_DATA/cbis-ddsm` and
//! the mini-MIAS set. Run with
//! `MAMMO_DATA=DEST cargo test` (build.rs turns the ignore off when MAMMO_DATA is set at build time)
//! after laying out the real-data folder (layout in data/README.md).
use std::path::PathBuf;

use engine::data::mias::parse_info;
use engine::data::read::{read_gray8, read_with_info};

fn data_dir() -> PathBuf {
    match std::env::var_os("MAMMO_DATA") {
        Some(d) => PathBuf::from(d),
        None => panic!(
            "MAMMO_DATA is not set: run `../shared/data/unpack.sh DEST` and set MAMMO_DATA=DEST \
             (see data/README.md); these tests never pass without the data"
        ),
    }
}

/// Expected decodings. The numbers come from an independent reading with
/// pydicom 3.0.2 + numpy 2 (`pydicom.dcmread(f).pixel_array`, then the rule of
/// data/README.md written in numpy: rescale, the DICOM linear window when present
/// else min-max, floor(y + 0.5), 255 - y for MONOCHROME1). pydicom cannot decode
/// JPEG 2000 without extra plugins, so the lossless JPEG 2000 file is checked
/// against the uncompressed MR_small it was made from.
/// (file, width, height, min, max, sum of all 8-bit values, pixel (0,0), pixel (w/2, h/2))
type Expected = (&'static str, usize, usize, u8, u8, u64, u8, u8);
const DECODES: &[Expected] = &[
    ("dicom/CR_mono1_6154.dcm", 16, 16, 80, 131, 25_020, 131, 98),
    ("dicom/CT_small.dcm", 128, 128, 0, 255, 1_573_473, 6, 222),
    ("dicom/MR_small.dcm", 64, 64, 52, 255, 463_120, 176, 61),
    ("dicom/MR_small_RLE.dcm", 64, 64, 52, 255, 463_120, 176, 61),
    (
        "dicom/MR_small_bigendian.dcm",
        64,
        64,
        52,
        255,
        463_120,
        176,
        61,
    ),
    (
        "dicom/MR_small_implicit.dcm",
        64,
        64,
        52,
        255,
        463_120,
        176,
        61,
    ),
    (
        "dicom/MR_small_jp2klossless.dcm",
        64,
        64,
        52,
        255,
        463_120,
        176,
        61,
    ),
    ("dicom/image_dfl.dcm", 512, 512, 0, 255, 33_322_688, 213, 65),
    (
        "cbis-ddsm/1-130.dcm",
        2864,
        4432,
        0,
        255,
        289_993_738,
        237,
        5,
    ),
    (
        "cbis-ddsm/1-131.dcm",
        2848,
        4464,
        0,
        255,
        508_537_864,
        255,
        0,
    ),
];

/// Files that must fail, and a phrase their error must contain (besides the file name).
const FAILS: &[(&str, &str)] = &[
    ("dicom/JPGExtended.dcm", "SamplePrecision(12)"),
    ("dicom/MR_small_jpeg_ls_lossless.dcm", "JPEG-LS"),
    ("dicom/MR_truncated.dcm", "failed to fill whole buffer"),
    (
        "dicom/no_meta.dcm",
        "without the preamble and file meta header",
    ),
];

#[test]
#[cfg_attr(
    not(mammo_data),
    ignore = "needs real data: set MAMMO_DATA when building the tests (see data/README.md)"
)]
fn every_real_dicom_decodes_or_fails_clearly() {
    let root = data_dir();
    let mut listed: Vec<&str> = DECODES
        .iter()
        .map(|d| d.0)
        .chain(FAILS.iter().map(|f| f.0))
        .collect();
    listed.sort();
    // Every .dcm in the two folders is covered by one of the tables.
    let mut present = Vec::new();
    for dir in ["dicom", "cbis-ddsm"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".dcm") {
                present.push(format!("{dir}/{name}"));
            }
        }
    }
    present.sort();
    assert_eq!(present, listed, "files in MAMMO_DATA vs the test tables");

    for &(f, w, h, min, max, sum, p00, pmid) in DECODES {
        let path = root.join(f);
        let (g, info) = read_with_info(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!((g.width, g.height), (w, h), "{f}");
        assert_eq!((info.min, info.max), (min, max), "{f}");
        let s: u64 = g.pixels.iter().map(|&v| v as u64).sum();
        assert_eq!(s, sum, "{f}: sum of 8-bit values");
        assert_eq!(g.get(0, 0), p00, "{f}: pixel (0,0)");
        assert_eq!(g.get(w / 2, h / 2), pmid, "{f}: centre pixel");
    }
    for &(f, phrase) in FAILS {
        let path = root.join(f);
        let e = read_gray8(&path).expect_err(f).to_string();
        assert!(
            e.contains(&path.display().to_string()),
            "{f}: error must name the file: {e}"
        );
        assert!(e.contains(phrase), "{f}: error {e:?} lacks {phrase:?}");
    }
}

#[test]
#[cfg_attr(
    not(mammo_data),
    ignore = "needs real data: set MAMMO_DATA when building the tests (see data/README.md)"
)]
fn dicom_details_seen_by_inspect() {
    let root = data_dir();
    let (_, i) = read_with_info(&root.join("dicom/CR_mono1_6154.dcm")).unwrap();
    let d = i.dicom.unwrap();
    assert_eq!(d.photometric, "MONOCHROME1");
    assert_eq!((d.rescale_slope, d.rescale_intercept), (0.684, 200.0));
    assert_eq!(
        d.window.as_ref().map(|w| (w.0, w.1)),
        Some((1600.0, 2800.0))
    );
    assert_eq!((d.bits_allocated, d.bits_stored), (16, 12));
    let (_, i) = read_with_info(&root.join("dicom/CT_small.dcm")).unwrap();
    let d = i.dicom.unwrap();
    assert_eq!((d.rescale_slope, d.rescale_intercept), (1.0, -1024.0));
    assert!(d.signed);
    assert_eq!((d.value_min, d.value_max), (-896.0, 1167.0));
    let (_, i) = read_with_info(&root.join("cbis-ddsm/1-130.dcm")).unwrap();
    let d = i.dicom.unwrap();
    assert!(
        d.transfer_syntax.starts_with("RLE Lossless"),
        "{}",
        d.transfer_syntax
    );
    assert_eq!((d.value_min, d.value_max), (0.0, 55879.0));
    assert!(d.window.is_none());
}

#[test]
#[cfg_attr(
    not(mammo_data),
    ignore = "needs real data: set MAMMO_DATA when building the tests (see data/README.md)"
)]
fn mias_info_txt_counts() {
    let root = data_dir();
    let text = std::fs::read_to_string(root.join("mias/Info.txt")).unwrap();
    let rows = parse_info(&text).unwrap();
    // Counted by hand from the file (grep '^mdb' Info.txt and awk on the fields):
    // 220 rows for 216 images; mdb223 and mdb249 have 2 rows, mdb226 has 3.
    assert_eq!(rows.len(), 220);
    let mut refs: Vec<&str> = rows.iter().map(|r| r.reference.as_str()).collect();
    refs.dedup();
    assert_eq!(refs.len(), 216);
    let count = |c: &str| rows.iter().filter(|r| r.class == c).count();
    assert_eq!(
        [
            count("NORM"),
            count("CALC"),
            count("CIRC"),
            count("SPIC"),
            count("MISC"),
            count("ARCH"),
            count("ASYM")
        ],
        [138, 20, 16, 14, 10, 13, 9]
    );
    // Rows without coordinates: the 138 NORM rows; this subset has no CALC row
    // without coordinates and no *NOTE* row (the unit tests cover those forms).
    assert_eq!(rows.iter().filter(|r| r.circle.is_none()).count(), 138);
    assert_eq!(rows.iter().filter(|r| r.note.is_some()).count(), 0);
    assert_eq!(rows.iter().filter(|r| r.severity == Some('M')).count(), 35);
    assert_eq!(rows.iter().filter(|r| r.severity == Some('B')).count(), 47);
    assert_eq!(rows[0].circle, Some((535, 425, 197)));
    let multi: Vec<&str> = ["mdb223", "mdb226", "mdb249"].to_vec();
    for m in multi {
        assert!(rows.iter().filter(|r| r.reference == m).count() >= 2, "{m}");
    }
    // Every listed image exists and reads as 1024x1024 8-bit.
    for r in refs {
        let g = read_gray8(&root.join(format!("mias/{r}.pgm"))).unwrap();
        assert_eq!((g.width, g.height), (1024, 1024), "{r}");
    }
}

#[test]
#[cfg_attr(
    not(mammo_data),
    ignore = "needs real data: set MAMMO_DATA when building the tests (see data/README.md)"
)]
fn prepare_mias_on_real_data() {
    use engine::data::mias::{MiasOptions, prepare};
    use engine::data::prepared::{PreparedSet, load_combined};
    let root = data_dir();
    let out = std::env::temp_dir().join(format!("engine-test-mias-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opt = MiasOptions {
        val: engine::data::prepared::Holdout::Fraction(0.1),
        test: 0.1,
        seed: 0,
        keep_uncoordinated: false,
        crop_mm: engine::data::prepared::CROP_MM,
        spacing_mm: None,
    };
    let w = prepare(&root.join("mias"), &out, &opt).unwrap();
    let m = &w.manifest;
    let films: Vec<_> = m.images.iter().filter(|e| !e.crop).collect();
    assert_eq!(films.len(), 216);
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);
    assert_eq!(films.iter().filter(|e| e.abnormal).count(), 78); // 216 - 138 normal
    // 108 patients (film pairs), 11 + 11 held out (round(0.1 * 108)).
    let set = PreparedSet::open(&out).unwrap();
    assert_eq!(set.split("val").len(), 22);
    assert_eq!(set.split("test").len(), 22);
    assert_eq!(set.split("train").len(), 172);
    // Every image records MIAS's 0.2 mm; crops are sized in millimetres, so the
    // 1024-pixel films get them (100 mm = 500 pixels, or the film's width).
    assert!(m.images.iter().all(|e| e.pixel_spacing_mm == Some(0.2)));
    let crops = set.split("train_crops");
    let coordinated_train = m
        .images
        .iter()
        .filter(|e| e.split == "train" && !e.crop && e.positive_pixels > 0)
        .count();
    assert!(
        crops.len() >= coordinated_train / 2 && coordinated_train > 20,
        "{} crops for {coordinated_train} training films with lesions",
        crops.len()
    );
    for e in m.images.iter().filter(|e| e.crop) {
        assert!(e.positive_pixels > 0, "{}", e.file);
        let film = e.file.replace("train_crops/", "train/");
        let film = film
            .rsplit_once("_roi")
            .map(|(f, _)| format!("{f}.png"))
            .unwrap();
        let parent = m.images.iter().find(|p| p.file == film).unwrap();
        assert!(
            e.width >= 500.min(parent.width) && e.height >= 500.min(parent.height),
            "{}: {}x{} in a {}x{} film",
            e.file,
            e.width,
            e.height,
            parent.width,
            parent.height
        );
    }
    // No patient in two splits.
    let mut seen = std::collections::BTreeMap::new();
    for e in &m.images {
        assert_eq!(
            seen.entry(e.patient.clone()).or_insert(e.split.clone()),
            &e.split,
            "{}",
            e.patient
        );
    }
    // mdb001: one circle of radius 197 -> the disc has the lattice count of r=197 unless clipped.
    let e = m.images.iter().find(|e| e.source == "mdb001.pgm").unwrap();
    let (scan, mask) = load_combined(&out.join(&e.file)).unwrap();
    assert_eq!(mask.count_nonzero(), e.positive_pixels);
    let disc = (-197i64..=197)
        .map(|dy| {
            (-197i64..=197)
                .filter(|dx| dx * dx + dy * dy <= 197 * 197)
                .count()
        })
        .sum::<usize>();
    assert_eq!(e.positive_pixels, disc);
    assert_eq!((scan.width, scan.height), (e.width, e.height));
    let _ = std::fs::remove_dir_all(&out);
}

/// The whole CBIS-DDSM Mass-Training export (COCO boxes, 800 x 800 JPEGs)
/// through `engine prepare coco` as docs/STUDY.md prepares it: every film
/// and box is read, patients stay whole, and the masses come out round at
/// square 0.3 mm pixels.
#[test]
#[cfg_attr(
    not(mammo_data),
    ignore = "needs real data: set MAMMO_DATA when building the tests (see data/README.md)"
)]
fn the_cbis_ddsm_coco_export_prepares_whole() {
    use engine::data::coco::{BoxMask, CocoOptions, prepare};
    use engine::data::prepared::Holdout;
    let out = std::env::temp_dir().join(format!("engine-test-coco-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opt = CocoOptions {
        annotations: None,
        val: Holdout::Fraction(0.1),
        test: 0.2,
        seed: 0,
        crop_mm: engine::data::prepared::CROP_MM,
        spacing_mm: (0.3, 0.1875),
        box_mask: BoxMask::Ellipse,
        patient_regex: engine::data::coco::PATIENT_REGEX.into(),
    };
    let w = prepare(&data_dir().join("cbis-ddsm-masses/train"), &out, &opt).unwrap();
    let m = &w.manifest;
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);
    let films: Vec<_> = m.images.iter().filter(|e| !e.crop).collect();
    assert_eq!(films.len(), 1231);
    let boxes: usize = films
        .iter()
        .map(|e| e.lesion_boxes.as_ref().unwrap().len())
        .sum();
    assert_eq!(boxes, 1318);
    let mut split_of = std::collections::BTreeMap::new();
    for e in &films {
        // 500 x 800 at 0.3 mm, less any black border trimmed.
        assert!(
            e.width <= 500 && e.height <= 800 && e.width > 300,
            "{}",
            e.file
        );
        assert!(e.abnormal && e.positive_pixels > 0, "{}", e.file);
        let s = split_of.entry(e.patient.clone()).or_insert(e.split.clone());
        assert_eq!(*s, e.split, "patient {} split apart", e.patient);
    }
    assert_eq!(split_of.len(), 691);
    let count = |s: &str| films.iter().filter(|e| e.split == s).count();
    assert_eq!(
        (count("train"), count("val"), count("test")),
        (860, 118, 253)
    );
    // Stretched 1.6x wide as exported (median box 80 x 47 pixels), masses
    // are about round at square pixels: the median width / height of the
    // boxes is near 1.
    let mut ratios: Vec<f64> = films
        .iter()
        .flat_map(|e| e.lesion_boxes.clone().unwrap())
        .map(|b| (b[2] - b[0]) / (b[3] - b[1]))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    assert!((0.85..1.2).contains(&median), "median aspect {median}");
    std::fs::remove_dir_all(&out).ok();
}

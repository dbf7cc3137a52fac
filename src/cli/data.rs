//! The data commands of the `engine` binary: `inspect`, `prepare mias|coco|cbis`,
//! `synth` and `bench-loader`.
use super::{check_at_least, check_fraction, parse_spacing, parse_spacing_pair, writable_out};
use crate::data::loader::{ImageCache, Loader, LoaderConfig};
use crate::data::prepared::{CROP_MM, Holdout, PreparedSet};
use crate::data::synth::SynthOptions;
use crate::error::bad;
use crate::shard::Shard;
use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    /// Convert a data set to the combined training format (see data/README.md).
    Prepare {
        #[command(subcommand)]
        what: PrepareCommand,
    },
    /// Write synthetic phantom mammograms with exact masks.
    Synth {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Number of phantoms.
        #[arg(short, long, default_value_t = 32)]
        n: usize,
        /// Width in pixels.
        #[arg(long, default_value_t = 288)]
        width: usize,
        /// Height in pixels (default: the width).
        #[arg(long)]
        height: Option<usize>,
        /// `combined`: the prepared format, ready for `engine train`;
        /// `cbis`: a CBIS-DDSM-like DICOM tree with case-description CSVs.
        #[arg(long, value_enum, default_value_t = Layout::Combined)]
        layout: Layout,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Time the training loader on a prepared set (batches of augmented crops).
    BenchLoader {
        /// A prepared directory (with manifest.json).
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 640)]
        size: usize,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Batches to time.
        #[arg(long, default_value_t = 8)]
        batches: usize,
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    Combined,
    Cbis,
}

/// How `prepare mias|coco` split patients into train, val and test.
#[derive(Debug, Clone, clap::Args)]
pub struct SplitArgs {
    /// Fraction of patients for validation.
    #[arg(long, default_value_t = 0.1)]
    val: f64,
    /// Fraction of patients for test (1 with --val 0: a set kept only for
    /// evaluation).
    #[arg(long, default_value_t = 0.1)]
    test: f64,
    /// Validation is part K (0-based) of N equal parts of the non-test
    /// patients, instead of --val: the N preparations K = 0..N-1 share one
    /// test split and hold out every other patient once (cross-validation
    /// folds).
    #[arg(long, conflicts_with = "val")]
    fold: Option<Shard>,
    /// Seed of the patient split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SplitArgs {
    /// The validation holdout, after checking the fractions.
    fn holdout(&self) -> anyhow::Result<Holdout> {
        check_split(self.val, self.test, self.fold)?;
        Ok(holdout(self.val, self.fold))
    }
}

#[derive(Debug, Subcommand)]
pub enum PrepareCommand {
    /// mini-MIAS: PGM files and Info.txt.
    Mias {
        /// Directory with Info.txt and mdbNNN.pgm.
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        split: SplitArgs,
        /// Keep images with an abnormality that has no coordinates, as image-level
        /// positives for evaluation (never used for training).
        #[arg(long)]
        keep_uncoordinated: bool,
        /// Minimum side of ROI crops in millimetres (crops covering nearly the
        /// whole image are not written).
        #[arg(long, default_value_t = CROP_MM)]
        crop_mm: f64,
        /// Pixel spacing in mm (default: mini-MIAS's 0.2).
        #[arg(long, value_parser = parse_spacing)]
        pixel_spacing: Option<f64>,
    },
    /// A COCO detection export: the JSON (`images`, `annotations` with
    /// `bbox` = [x, y, width, height], `categories`) and its images folder,
    /// as annotation tools write it. Boxes become lesion masks; images
    /// without boxes are normal films.
    Coco {
        /// Folder with the images (and, unless --annotations is given, the
        /// JSON: `_annotations.coco.json` or the folder's only .json file).
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The COCO JSON, if not in --input.
        #[arg(long)]
        annotations: Option<PathBuf>,
        /// Pixel spacing in mm as ROW,COL (or one value for square pixels).
        /// Images are resampled to square pixels at the coarser of the two.
        /// CBIS-DDSM's 800x800 export (scans of about 240 x 150 mm stretched
        /// to a square): 0.3,0.1875.
        #[arg(long, value_parser = parse_spacing_pair)]
        pixel_spacing: (f64, f64),
        /// Target mask of a box: the inscribed ellipse, or the whole box.
        #[arg(long, value_enum, default_value_t = crate::data::coco::BoxMask::Ellipse)]
        box_mask: crate::data::coco::BoxMask,
        /// Regex on the file name whose first group (or whole match) is the
        /// patient; splits keep patients together. The default fits
        /// CBIS-DDSM's `PPPPP_SIDE_VIEW.jpg`.
        #[arg(long, default_value = crate::data::coco::PATIENT_REGEX)]
        patient_regex: String,
        #[command(flatten)]
        split: SplitArgs,
        /// Minimum side of ROI crops in millimetres.
        #[arg(long, default_value_t = CROP_MM)]
        crop_mm: f64,
    },
    /// CBIS-DDSM: the official case-description CSVs and the DICOM tree.
    Cbis {
        /// Directory with the *case_description*.csv files and the DICOM tree
        /// (in INPUT/CBIS-DDSM if that exists, else INPUT).
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// CSV files to use instead of INPUT/*case_description*.csv.
        #[arg(long)]
        csv: Vec<PathBuf>,
        /// Root of the DICOM tree, if not INPUT/CBIS-DDSM or INPUT.
        #[arg(long)]
        dicom_root: Option<PathBuf>,
        /// Fraction of the training patients held out for validation (the test
        /// split is CBIS-DDSM's own).
        #[arg(long, default_value_t = 0.1)]
        val: f64,
        /// Validation is part K (0-based) of N equal parts of the training
        /// patients, instead of --val (cross-validation folds).
        #[arg(long, conflicts_with = "val")]
        fold: Option<Shard>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Minimum side of ROI crops in millimetres.
        #[arg(long, default_value_t = CROP_MM)]
        crop_mm: f64,
        /// Pixel spacing in mm of scans whose DICOM header has none (default:
        /// DDSM's nominal 0.05).
        #[arg(long, value_parser = parse_spacing)]
        pixel_spacing: Option<f64>,
    },
}

/// Runs a data command.
pub fn run(c: DataCommand) -> anyhow::Result<()> {
    match c {
        DataCommand::Inspect { files } => inspect(&files),
        DataCommand::Prepare { what } => prepare(what),
        DataCommand::Synth {
            out,
            n,
            width,
            height,
            layout,
            seed,
        } => {
            check_at_least("--width", width, 1)?;
            check_at_least("--height", height.unwrap_or(width), 1)?;
            let opt = SynthOptions {
                height: height.unwrap_or(width),
                ..SynthOptions::square(width)
            };
            synth(&out, n, &opt, layout, seed)
        }
        DataCommand::BenchLoader {
            input,
            size,
            batch,
            batches,
            threads,
        } => bench_loader(&input, size, batch, batches, threads),
    }
}

/// The validation patients of `--val` or, when given, `--fold K/N`.
fn holdout(val: f64, fold: Option<Shard>) -> Holdout {
    match fold {
        Some(f) => Holdout::Fold {
            index: f.index,
            count: f.count,
        },
        None => Holdout::Fraction(val),
    }
}

/// `--val` and `--test` as fractions of the patients: each in [0, 1] and
/// together at most 1 (`--test 1 --val 0`: everyone in test, a set for
/// evaluation only). With `--fold` there must be patients left to fold.
fn check_split(val: f64, test: f64, fold: Option<Shard>) -> anyhow::Result<()> {
    let unit = |flag: &str, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(bad(format!("{flag} {v} is not in [0, 1]")))
        }
    };
    unit("--test", test)?;
    if fold.is_some() {
        return if test < 1.0 {
            Ok(())
        } else {
            Err(bad("--fold with --test 1: no patients are left to fold"))
        };
    }
    unit("--val", val)?;
    if val + test > 1.0 + 1e-9 {
        return Err(bad(format!(
            "--val {val} plus --test {test} is more than 1"
        )));
    }
    Ok(())
}

/// `engine prepare mias|coco|cbis`.
fn prepare(what: PrepareCommand) -> anyhow::Result<()> {
    let (w, out) = match what {
        PrepareCommand::Mias {
            input,
            out,
            split,
            keep_uncoordinated,
            crop_mm,
            pixel_spacing,
        } => {
            let val = split.holdout()?;
            writable_out(&out)?;
            let opt = crate::data::mias::MiasOptions {
                val,
                test: split.test,
                seed: split.seed,
                keep_uncoordinated,
                crop_mm,
                spacing_mm: pixel_spacing,
            };
            (crate::data::mias::prepare(&input, &out, &opt)?, out)
        }
        PrepareCommand::Coco {
            input,
            out,
            annotations,
            pixel_spacing,
            box_mask,
            patient_regex,
            split,
            crop_mm,
        } => {
            let val = split.holdout()?;
            writable_out(&out)?;
            let opt = crate::data::coco::CocoOptions {
                annotations,
                val,
                test: split.test,
                seed: split.seed,
                crop_mm,
                spacing_mm: pixel_spacing,
                box_mask,
                patient_regex,
            };
            (crate::data::coco::prepare(&input, &out, &opt)?, out)
        }
        PrepareCommand::Cbis {
            input,
            out,
            csv,
            dicom_root,
            val,
            fold,
            seed,
            crop_mm,
            pixel_spacing,
        } => {
            check_fraction("--val", val)?;
            writable_out(&out)?;
            let opt = crate::data::cbis::CbisOptions {
                csv,
                dicom_root,
                val: holdout(val, fold),
                seed,
                crop_mm,
                spacing_mm: pixel_spacing,
            };
            (crate::data::cbis::prepare(&input, &out, &opt)?, out)
        }
    };
    print!("{}", w.summary());
    println!("wrote {}", out.display());
    Ok(())
}

/// `engine synth`.
fn synth(
    out: &Path,
    n: usize,
    opt: &SynthOptions,
    layout: Layout,
    seed: u64,
) -> anyhow::Result<()> {
    writable_out(out)?;
    match layout {
        Layout::Combined => {
            let w = crate::data::synth::write_combined_set(out, n, opt, seed)?;
            print!("{}", w.summary());
        }
        Layout::Cbis => {
            let (scans, rows) = crate::data::synth::write_cbis_tree(out, n, opt, seed)?;
            println!("{scans} scans, {rows} abnormality rows (CBIS-DDSM-like layout)");
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// `engine inspect`: one line (or block) per file on stdout, a file that
/// cannot be read as `FILE: ERROR reason`; then, if any failed, an error
/// naming them (bad input).
fn inspect(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for f in files {
        match crate::data::read::read_with_info(f) {
            Ok((_, info)) => println!("{}: {info}", f.display()),
            Err(e) => {
                println!("{}: ERROR {}", f.display(), e.reason());
                failed.push(e);
            }
        }
    }
    match (failed.len(), files.len()) {
        (0, _) => Ok(()),
        (1, 1) => Err(failed.remove(0).into()),
        (n, total) => Err(bad(format!(
            "{n} of {total} files could not be read: {}",
            failed
                .iter()
                .map(|e| e.path().display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn bench_loader(
    input: &Path,
    size: usize,
    batch: usize,
    batches: usize,
    threads: Option<usize>,
) -> anyhow::Result<()> {
    check_at_least("--size", size, 1)?;
    check_at_least("--batch", batch, 1)?;
    let set = PreparedSet::open(input)?;
    let samples = set.training();
    if samples.is_empty() {
        return Err(bad(format!(
            "--input {}: no training samples",
            input.display()
        )));
    }
    let mut cfg = LoaderConfig {
        size,
        batch,
        ..LoaderConfig::default()
    };
    if let Some(t) = threads {
        cfg.threads = t;
    }
    println!(
        "{} training samples, {} threads, batch {batch} at {size}",
        samples.len(),
        cfg.threads
    );
    // Epoch 0 decodes (cold cache); epoch 1 reuses the decoded images (warm).
    let cache = std::sync::Arc::new(ImageCache::default());
    for epoch in 0..2 {
        let mut loader = Loader::with_cache(
            samples.clone(),
            LoaderConfig {
                epoch,
                ..cfg.clone()
            },
            cache.clone(),
        );
        let t0 = Instant::now();
        let mut got = 0;
        for b in loader.by_ref().take(batches) {
            b?;
            got += 1;
        }
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "epoch {epoch} ({}): {got} batches in {dt:.2} s = {:.3} s per batch; positive pixels {:.3}%",
            if epoch == 0 {
                "cold cache"
            } else {
                "warm cache"
            },
            dt / got.max(1) as f64,
            100.0 * loader.positive_fraction()
        );
    }
    Ok(())
}

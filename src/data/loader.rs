//! The online pipeline that feeds `engine train`: decoding and augmentation on
//! CPU worker threads, ahead of the GPU, through a bounded queue.
//!
//! Determinism: the epoch's plan (which samples, in which order) comes from
//! `(seed, epoch)`, and each planned item's augmentation RNG from
//! `(seed, epoch, position in the plan)`, so batches are identical whatever the
//! number of threads. Batches come out in plan order.
//!
//! Mixing: with augmentation on, an epoch holds every full image once plus enough
//! ROI crops (drawn with repetition) that the expected fraction of positive pixels
//! is about `target_positive` (6% in the paper). The expected fraction of a sample
//! is its whole-image fraction from the manifest; the fraction actually seen after
//! cropping is counted and reported by [`Loader::positive_fraction`].
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::augment::{CROP_SCALE, apply, eval_params, sample_params};
use super::prepared::Sample;
use super::synth::mix_seed;
use super::{DataError, Gray8};

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Output side (images are `size x size`).
    pub size: usize,
    pub batch: usize,
    pub seed: u64,
    pub epoch: u64,
    /// Random crops, flips and rotations, and the crop mixing; off: the centred
    /// evaluation crop, samples in the given order.
    pub augment: bool,
    /// The model's pixel spacing: each sample is resampled from its own
    /// spacing to this one. None (or a sample of unknown spacing): the
    /// paper's fixed scale, `size / 0.66` source pixels per crop.
    pub target_spacing_mm: Option<f64>,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Batches that may wait in the queue.
    pub prefetch: usize,
    /// Target fraction of positive pixels when mixing crops in (augment only).
    pub target_positive: f64,
    /// Drop a last, incomplete batch.
    pub drop_last: bool,
    /// Decoded images are kept in memory up to this many bytes (0: no cache).
    pub cache_bytes: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            size: 640,
            batch: 16,
            seed: 0,
            epoch: 0,
            augment: true,
            target_spacing_mm: None,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            prefetch: 4,
            target_positive: 0.06,
            drop_last: false,
            cache_bytes: 4 << 30,
        }
    }
}

/// A batch: `n` images and masks of `size x size`, NCHW with C = 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub n: usize,
    pub size: usize,
    /// `n * size * size`, already scaled `(x - 127) / 255`.
    pub images: Vec<f32>,
    /// `n * size * size`, 0.0 or 1.0.
    pub masks: Vec<f32>,
    /// Plan positions of the samples (for logs).
    pub ids: Vec<String>,
}

/// Decoded images shared between workers (and epochs, if the caller keeps it).
#[derive(Default)]
pub struct ImageCache {
    map: Mutex<HashMap<String, Arc<(Gray8, Gray8)>>>,
    bytes: AtomicUsize,
}

impl ImageCache {
    fn get_or_load(&self, s: &Sample, limit: usize) -> Result<Arc<(Gray8, Gray8)>, DataError> {
        if let Some(v) = self.map.lock().ok().and_then(|m| m.get(&s.id).cloned()) {
            return Ok(v);
        }
        let v = Arc::new(s.load()?);
        let size = v.0.pixels.len() * 2;
        if self.bytes.load(Ordering::Relaxed) + size <= limit
            && let Ok(mut m) = self.map.lock()
            && m.insert(s.id.clone(), v.clone()).is_none()
        {
            self.bytes.fetch_add(size, Ordering::Relaxed);
        }
        Ok(v)
    }
}

/// Choose an epoch's items: indices into `samples`.
pub fn plan_epoch(samples: &[Sample], cfg: &LoaderConfig) -> Vec<usize> {
    if !cfg.augment {
        return (0..samples.len()).collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(
        cfg.seed,
        cfg.epoch.wrapping_mul(2).wrapping_add(1),
    ));
    // Training never uses images whose mask is incomplete.
    let full: Vec<usize> = (0..samples.len())
        .filter(|&i| !samples[i].crop && samples[i].mask_complete)
        .collect();
    let crops: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].crop && samples[i].mask_complete)
        .collect();
    let mut plan = full.clone();
    if !crops.is_empty() {
        let f_full = if full.is_empty() {
            0.0
        } else {
            full.iter()
                .map(|&i| samples[i].positive_fraction)
                .sum::<f64>()
                / full.len() as f64
        };
        let f_crop = crops
            .iter()
            .map(|&i| samples[i].positive_fraction)
            .sum::<f64>()
            / crops.len() as f64;
        let t = cfg.target_positive;
        // (n_full * f_full + k * f_crop) / (n_full + k) = t  =>  k = n_full (t - f_full) / (f_crop - t).
        let k = if f_full >= t {
            0
        } else if f_crop <= t {
            // Crops cannot reach the target: use each once, the most they can help without
            // repeating the same few crops over and over.
            crops.len()
        } else {
            ((full.len() as f64 * (t - f_full) / (f_crop - t)).round() as usize).max(1)
        };
        let k = if full.is_empty() {
            crops.len()
        } else {
            k.min(crops.len() * 4)
        };
        for j in 0..k {
            // Every crop once before any repeats, then random ones.
            plan.push(if j < crops.len() {
                crops[j]
            } else {
                crops[rng.random_range(0..crops.len())]
            });
        }
    }
    plan.shuffle(&mut rng);
    plan
}

struct Shared {
    samples: Vec<Sample>,
    plan: Vec<usize>,
    cfg: LoaderConfig,
    next: AtomicUsize,
    stop: AtomicBool,
    cache: Arc<ImageCache>,
}

/// Iterates the batches of one epoch. Dropping it stops the workers.
pub struct Loader {
    shared: Arc<Shared>,
    rx: Receiver<(usize, Result<Batch, DataError>)>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, Result<Batch, DataError>>,
    next_out: usize,
    n_batches: usize,
    positive: u64,
    total: u64,
}

impl Loader {
    pub fn new(samples: Vec<Sample>, cfg: LoaderConfig) -> Loader {
        Loader::with_cache(samples, cfg, Arc::new(ImageCache::default()))
    }

    /// Like [`Loader::new`], reusing a cache of decoded images across epochs.
    pub fn with_cache(samples: Vec<Sample>, cfg: LoaderConfig, cache: Arc<ImageCache>) -> Loader {
        let cfg = LoaderConfig {
            batch: cfg.batch.max(1),
            threads: cfg.threads.max(1),
            ..cfg
        };
        let plan = plan_epoch(&samples, &cfg);
        let n_batches = if cfg.drop_last {
            plan.len() / cfg.batch
        } else {
            plan.len().div_ceil(cfg.batch)
        };
        let shared = Arc::new(Shared {
            samples,
            plan,
            cfg: cfg.clone(),
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            cache,
        });
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let workers = (0..cfg.threads)
            .map(|_| {
                let shared = shared.clone();
                let tx: SyncSender<_> = tx.clone();
                std::thread::spawn(move || worker(&shared, n_batches, tx))
            })
            .collect();
        Loader {
            shared,
            rx,
            workers,
            pending: BTreeMap::new(),
            next_out: 0,
            n_batches,
            positive: 0,
            total: 0,
        }
    }

    /// Batches in this epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.n_batches
    }

    /// Samples in this epoch's plan (full images plus mixed-in crops).
    pub fn samples_per_epoch(&self) -> usize {
        if self.shared.cfg.drop_last {
            self.n_batches * self.shared.cfg.batch
        } else {
            self.shared.plan.len()
        }
    }

    /// Fraction of positive mask pixels in the batches delivered so far.
    pub fn positive_fraction(&self) -> f64 {
        self.positive as f64 / self.total.max(1) as f64
    }

    /// The epoch's plan: indices into the samples given to `new`.
    pub fn plan(&self) -> &[usize] {
        &self.shared.plan
    }
}

fn worker(sh: &Shared, n_batches: usize, tx: SyncSender<(usize, Result<Batch, DataError>)>) {
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        let b = sh.next.fetch_add(1, Ordering::Relaxed);
        if b >= n_batches {
            return;
        }
        let batch = make_batch(sh, b);
        if tx.send((b, batch)).is_err() {
            return; // the loader was dropped
        }
    }
}

fn make_batch(sh: &Shared, b: usize) -> Result<Batch, DataError> {
    let cfg = &sh.cfg;
    let size = cfg.size;
    let start = b * cfg.batch;
    let end = (start + cfg.batch).min(sh.plan.len());
    let n = end - start;
    let mut images = Vec::with_capacity(n * size * size);
    let mut masks = Vec::with_capacity(n * size * size);
    let mut ids = Vec::with_capacity(n);
    for pos in start..end {
        let s = &sh.samples[sh.plan[pos]];
        let pair = sh.cache.get_or_load(s, cfg.cache_bytes)?;
        let (scan, mask) = (&pair.0, &pair.1);
        let scale = match (cfg.target_spacing_mm, s.spacing_mm) {
            (Some(target), Some(own)) => target / own,
            _ => CROP_SCALE,
        };
        let p = if cfg.augment {
            let mut rng =
                ChaCha8Rng::seed_from_u64(mix_seed(mix_seed(cfg.seed, cfg.epoch), pos as u64));
            sample_params(&mut rng, scan.width, scan.height, size, scale)
        } else {
            eval_params(scan.width, scan.height, size, scale)
        };
        let (img, m) = apply(scan, mask, &p, size);
        images.extend(img.iter().map(|&v| (v - 127.0) / 255.0));
        masks.extend(m.iter().map(|&v| v as f32));
        ids.push(s.id.clone());
    }
    Ok(Batch {
        n,
        size,
        images,
        masks,
        ids,
    })
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_out >= self.n_batches {
            return None;
        }
        // Batches may arrive out of order; hold early ones until their turn.
        while !self.pending.contains_key(&self.next_out) {
            match self.rx.recv() {
                Ok((i, b)) => {
                    self.pending.insert(i, b);
                }
                Err(_) => return None, // all workers ended (cannot happen before the last batch)
            }
        }
        let out = self.pending.remove(&self.next_out)?;
        self.next_out += 1;
        if let Ok(b) = &out {
            self.positive += b.masks.iter().filter(|&&v| v > 0.5).count() as u64;
            self.total += b.masks.len() as u64;
        }
        Some(out)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Drain so that workers blocked on a full queue can see the stop flag.
        while self.rx.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            while !w.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = w.join();
        }
    }
}

//! What `engine infer` and `engine eval` run: one trained model, or an
//! ensemble of several whose probability maps are averaged.
//!
//! Runs of one recipe that differ only in their seed reach very different
//! test numbers on a small data set (docs/STUDY.md); the mean of their maps
//! varies far less than any one of them, which is why nnU-Net-style tools
//! ship an ensemble of folds. Each member runs at its own pixel spacing and
//! its map is brought back to the input's pixels before averaging, so
//! members trained at different spacings mix correctly. With test-time
//! augmentation (`crate::tta`) every member also runs on each flipped or
//! rotated view of the scan, and all the maps, turned back, are averaged.
use crate::gpu::{Gpu, KernelSource};
use crate::image::Gray8;
use crate::infer::{self, TileOptions, probability_map_at};
use crate::model::Model;
use crate::spacing::{ModelSpacing, Origin};
use crate::tta::Tta;

/// One model of a [`Predictor`].
pub struct Member {
    pub model: Model,
    /// The checkpoint's spacings (None: it runs at the input's own pixels).
    pub spacing: Option<ModelSpacing>,
    /// Where it came from (the checkpoint's path), for reports.
    pub name: String,
}

/// One model or the mean of several, on one view of a scan or several.
pub struct Predictor {
    members: Vec<Member>,
    tta: Tta,
}

/// The spacing one input is run at, as reported in results.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputSpacing {
    pub input_mm: f64,
    pub origin: Origin,
}

impl Predictor {
    /// A predictor of `members` (at least one).
    pub fn new(members: Vec<Member>) -> anyhow::Result<Predictor> {
        anyhow::ensure!(!members.is_empty(), "a predictor needs at least one model");
        Ok(Predictor {
            members,
            tta: Tta::None,
        })
    }

    /// The same predictor, averaging over the views of `tta`.
    pub fn with_tta(self, tta: Tta) -> Predictor {
        Predictor { tta, ..self }
    }

    pub fn tta(&self) -> Tta {
        self.tta
    }

    /// A predictor of one model.
    pub fn single(model: Model, spacing: Option<ModelSpacing>, name: &str) -> Predictor {
        Predictor {
            members: vec![Member {
                model,
                spacing,
                name: name.to_string(),
            }],
            tta: Tta::None,
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Network runs per scan: one per member and view (unless tiled).
    pub fn runs_per_scan(&self) -> usize {
        self.members.len() * self.tta.views().len()
    }

    /// The spacing of the first member that records one (for warnings).
    pub fn spacing(&self) -> Option<ModelSpacing> {
        self.members.iter().find_map(|m| m.spacing)
    }

    /// The checkpoints' names joined with ", ".
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        names.join(", ")
    }

    /// The input spacing the members run an input at: its file's, else
    /// `flag`, else the training data's (None: no member records spacing).
    pub fn input_spacing(&self, file: Option<f64>, flag: Option<f64>) -> Option<InputSpacing> {
        self.spacing().map(|m| {
            let (s, origin) = m.for_input(file, flag);
            InputSpacing {
                input_mm: s.input_mm,
                origin,
            }
        })
    }

    /// The probability map of `scan` on its own pixels: the mean of the
    /// members' maps over the views. `file_mm` is the spacing the scan's
    /// file declares, `flag_mm` the `--pixel-spacing` for files that declare
    /// none.
    pub async fn probability_map(
        &self,
        gpu: &Gpu,
        scan: &Gray8,
        file_mm: Option<f64>,
        flag_mm: Option<f64>,
        tiles: &TileOptions,
    ) -> anyhow::Result<Vec<f32>> {
        self.probability_map_with_progress(gpu, scan, (file_mm, flag_mm), tiles, &mut |_, _| {})
            .await
    }

    /// The kernels that [`Self::probability_map`] of a scan of `size`
    /// (width, height) would create on `gpu` and has not yet: every
    /// member's network inputs over the views, found by a dry run.
    pub fn kernels_for(
        &self,
        gpu: &Gpu,
        size: (usize, usize),
        (file_mm, flag_mm): (Option<f64>, Option<f64>),
        tiles: &TileOptions,
    ) -> anyhow::Result<Vec<KernelSource>> {
        let mut kernels = Vec::new();
        for view in self.tta.views() {
            for m in &self.members {
                let spacings = m.spacing.map(|s| s.for_input(file_mm, flag_mm).0);
                let at_model = infer::size_at_model(view.size(size), spacings);
                let sizes = infer::network_inputs(at_model, tiles);
                kernels.extend(infer::kernels_for(gpu, &m.model, &sizes)?);
            }
        }
        Ok(kernels)
    }

    /// [`Self::probability_map`], calling `progress(done, total)` after each
    /// of the network's passes (one per member and view): the page's
    /// progress bar.
    pub async fn probability_map_with_progress(
        &self,
        gpu: &Gpu,
        scan: &Gray8,
        (file_mm, flag_mm): (Option<f64>, Option<f64>),
        tiles: &TileOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<Vec<f32>> {
        let total = self.tta.views().len() * self.members.len();
        let size = (scan.width, scan.height);
        let mut sum = vec![0.0f32; scan.pixels.len()];
        let mut runs = 0usize;
        for view in self.tta.views() {
            let (width, height) = view.size(size);
            let seen = Gray8 {
                width,
                height,
                pixels: view.apply(&scan.pixels, size),
            };
            for m in &self.members {
                let spacings = m.spacing.map(|s| s.for_input(file_mm, flag_mm).0);
                let p = probability_map_at(gpu, &m.model, &seen, spacings, tiles).await?;
                let p = view.undo(&p, size);
                sum.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
                runs += 1;
                progress(runs, total);
            }
        }
        if runs > 1 {
            let n = runs as f32;
            sum.iter_mut().for_each(|v| *v /= n);
        }
        Ok(sum)
    }
}

//! `model`: the 28-layer dense-prediction network of MODEL.md, its
//! parameters (He-normal init, seeded), and checkpoints in safetensors with
//! MODEL.md's names, layouts and metadata (PyTorch-compatible).
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::graph::{BnRef, Graph, ParamRef, Var};
use crate::ops::batchnorm::BnParams;
use crate::ops::resize::{self, Mode};
use crate::ops::{conv, elementwise, fold, pool};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FORMAT: &str = "mammo-dense-v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// conv -> bn -> relu (k, stride, dilation)
    Cbr(usize, usize, usize),
    /// conv -> bn, then the residual join relu(. + skip)
    CbSkip(usize, usize, usize),
    /// tconv 4x4 -> relu, no bn (stride)
    TconvRelu(usize),
    /// 1x1 conv, no bn, no relu
    Logits,
}

/// MODEL.md's layer table: name, kind, input and output channels at width 1.
const LAYERS: [(&str, Kind, usize, usize); 28] = [
    ("conv0_1", Kind::Cbr(3, 2, 1), 1, 32),
    ("conv0_2", Kind::Cbr(3, 1, 1), 32, 32),
    ("conv0_3", Kind::CbSkip(3, 1, 1), 32, 32),
    ("pool0_1", Kind::Cbr(3, 2, 1), 32, 48),
    ("conv1_1", Kind::Cbr(3, 1, 1), 48, 48),
    ("conv1_2", Kind::Cbr(3, 1, 1), 48, 48),
    ("conv1_3", Kind::CbSkip(3, 1, 1), 48, 48),
    ("conv2_1", Kind::Cbr(3, 1, 1), 48, 64),
    ("conv2_2", Kind::Cbr(3, 1, 1), 64, 64),
    ("conv2_3", Kind::CbSkip(3, 1, 1), 64, 64),
    ("conv3_1", Kind::Cbr(3, 1, 1), 64, 128),
    ("conv3_2", Kind::Cbr(3, 1, 1), 128, 128),
    ("conv3_3", Kind::CbSkip(3, 1, 1), 128, 128),
    ("conv4_0", Kind::Cbr(3, 1, 1), 128, 256),
    ("conv4_1", Kind::Cbr(3, 1, 1), 256, 256),
    ("conv4_2", Kind::Cbr(3, 1, 1), 256, 256),
    ("conv4_3", Kind::CbSkip(3, 1, 1), 256, 256),
    ("conv5_0", Kind::Cbr(3, 1, 2), 256, 512),
    ("conv5_1", Kind::Cbr(3, 1, 2), 512, 512),
    ("conv5_2", Kind::Cbr(3, 1, 2), 512, 512),
    ("conv5_3", Kind::CbSkip(3, 1, 2), 512, 512),
    ("fc_1", Kind::Cbr(1, 1, 1), 512, 256),
    ("up_conv2", Kind::Cbr(3, 1, 1), 256, 128),
    ("up_conv6", Kind::Cbr(3, 1, 1), 128, 64),
    ("upsample_4", Kind::TconvRelu(2), 64, 64),
    ("upsample_5", Kind::TconvRelu(1), 64, 32),
    ("up_conv9", Kind::Cbr(3, 1, 1), 32, 16),
    ("logits", Kind::Logits, 16, 1),
];

/// The first conv of each residual block: its post-bn value is the skip
/// that the block's last conv adds ("+skip(A)" in MODEL.md).
const SKIP_FROM: [&str; 6] = [
    "conv0_1", "conv1_1", "conv2_1", "conv3_1", "conv4_0", "conv5_0",
];

/// A pool or resize between two layers (MODEL.md's table rows "-").
enum Between {
    /// Max pool k x k, stride 2.
    Pool(usize),
    /// Resize to (h, w).
    Resize(usize, usize),
}

/// What follows layer `name` for an H x W input.
fn between(name: &str, h: usize, w: usize) -> Option<Between> {
    match name {
        "conv1_3" => Some(Between::Pool(3)),
        "conv2_3" | "conv3_3" => Some(Between::Pool(2)),
        "fc_1" => Some(Between::Resize(h.div_ceil(8), w.div_ceil(8))),
        "up_conv2" => Some(Between::Resize(h.div_ceil(4), w.div_ceil(4))),
        "logits" => Some(Between::Resize(h, w)),
        _ => None,
    }
}

/// Weights with MODEL.md's L2 term (0.0025 * sum(w^2) / 2).
pub const L2_WEIGHTS: [&str; 2] = ["fc_1.weight", "logits.weight"];
pub const L2: f32 = 0.0025;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    pub width: f32,
    pub resize: Mode,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            width: 1.0,
            resize: Mode::Bilinear,
        }
    }
}

impl ModelConfig {
    /// MODEL.md's width rule: `max(4, floor(c * w + 0.5))`, except the
    /// network's input and output (1 channel).
    pub fn channels(&self, c: usize) -> usize {
        if c == 1 {
            1
        } else {
            ((c as f32 * self.width + 0.5).floor() as usize).max(4)
        }
    }
}

/// A named tensor of the model: a trainable parameter (with gradient and
/// Adam state) or a batch-norm running statistic.
pub struct Param {
    pub name: String,
    pub value: Tensor,
    /// Gradient and Adam moments: present for trainable parameters.
    pub train: Option<TrainState>,
}

pub struct TrainState {
    pub grad: Tensor,
    pub m: Tensor,
    pub v: Tensor,
}

pub struct Model {
    pub cfg: ModelConfig,
    pub params: Vec<Param>,
    index: HashMap<String, usize>,
}

/// Checkpoint metadata (MODEL.md: string values).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    pub pos_weight: f32,
    /// Adam's step count.
    pub step: u64,
    pub epoch: u64,
    /// Extra keys (e.g. the training run's settings for resuming).
    pub extra: BTreeMap<String, String>,
}

impl Model {
    /// The names, shapes and fan-ins of every tensor, in table order.
    fn specs(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, Option<f32>)> {
        let mut out = Vec::new();
        for (name, kind, cin, cout) in LAYERS {
            let (i, o) = (cfg.channels(cin), cfg.channels(cout));
            match kind {
                Kind::Cbr(..) | Kind::CbSkip(..) | Kind::Logits => {
                    let k = match kind {
                        Kind::Cbr(k, ..) | Kind::CbSkip(k, ..) => k,
                        _ => 1,
                    };
                    out.push((
                        format!("{name}.weight"),
                        vec![o, i, k, k],
                        Some((i * k * k) as f32),
                    ));
                    out.push((format!("{name}.bias"), vec![o], None));
                    if kind != Kind::Logits {
                        for suffix in BN_TENSORS {
                            out.push((format!("{name}.bn.{suffix}"), vec![o], None));
                        }
                    }
                }
                Kind::TconvRelu(s) => {
                    out.push((
                        format!("{name}.weight"),
                        vec![i, o, 4, 4],
                        Some((i * 16) as f32 / (s * s) as f32),
                    ));
                    out.push((format!("{name}.bias"), vec![o], None));
                }
            }
        }
        out
    }

    /// A freshly initialised model: He-normal kernels (std sqrt(2 / fan_in)),
    /// zero biases, bn weight 1 / bias 0, running mean 0 / var 1.
    pub fn new(gpu: &Gpu, cfg: ModelConfig, seed: u64) -> Result<Model> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut host = Vec::new();
        for (name, shape, fan_in) in Self::specs(&cfg) {
            let n: usize = shape.iter().product();
            let data = match fan_in {
                Some(f) => {
                    let normal = Normal::new(0.0f32, (2.0 / f).sqrt()).expect("positive std");
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                }
                None if name.ends_with("bn.weight") || name.ends_with("running_var") => {
                    vec![1.0; n]
                }
                None => vec![0.0; n],
            };
            host.push((name, shape, data));
        }
        Self::from_host(gpu, cfg, host)
    }

    fn from_host(
        gpu: &Gpu,
        cfg: ModelConfig,
        host: Vec<(String, Vec<usize>, Vec<f32>)>,
    ) -> Result<Model> {
        let mut params = Vec::new();
        let mut index = HashMap::new();
        for (name, shape, data) in host {
            let trainable = !name.ends_with("running_mean") && !name.ends_with("running_var");
            let train = if trainable {
                Some(TrainState {
                    grad: gpu.zeros(&shape)?,
                    m: gpu.zeros(&shape)?,
                    v: gpu.zeros(&shape)?,
                })
            } else {
                None
            };
            index.insert(name.clone(), params.len());
            params.push(Param {
                name,
                value: gpu.upload(&shape, &data)?,
                train,
            });
        }
        Ok(Model { cfg, params, index })
    }

    pub fn param(&self, name: &str) -> &Param {
        &self.params[self.index[name]]
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.train.is_some())
            .map(|p| p.value.numel())
            .sum()
    }

    fn pref(&self, name: &str) -> ParamRef<'_> {
        let p = self.param(name);
        let t = p.train.as_ref().expect("trainable");
        ParamRef {
            value: &p.value,
            grad: &t.grad,
        }
    }

    fn bnref(&self, layer: &str) -> BnRef<'_> {
        BnRef {
            gamma: self.pref(&format!("{layer}.bn.weight")),
            beta: self.pref(&format!("{layer}.bn.bias")),
            running_mean: &self.param(&format!("{layer}.bn.running_mean")).value,
            running_var: &self.param(&format!("{layer}.bn.running_var")).value,
        }
    }

    /// conv -> bn of one layer; returns the post-bn value.
    fn conv_bn(&self, g: &mut Graph, layer: &str, x: Var, s: usize, d: usize) -> Result<Var> {
        let c = g.conv(
            x,
            &self.pref(&format!("{layer}.weight")),
            &self.pref(&format!("{layer}.bias")),
            s,
            d,
        )?;
        let b = g.bn(c, &self.bnref(layer))?;
        g.done(c);
        Ok(b)
    }

    /// The whole network on x [N, 1, H, W] (input already scaled); returns
    /// the full-resolution logits [N, 1, H, W] (before the sigmoid).
    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let (h, w) = {
            let t = g.value(x);
            (t.shape()[2], t.shape()[3])
        };
        let mut cur = x;
        // The post-bn, pre-relu value of each block's first conv (the skip).
        let mut skip: Option<Var> = None;
        for (name, kind, ..) in LAYERS.iter() {
            let prev = cur;
            cur = match *kind {
                Kind::Cbr(_, s, d) => {
                    let b = self.conv_bn(g, name, prev, s, d)?;
                    let r = g.relu(b)?;
                    if SKIP_FROM.contains(name) {
                        skip = Some(b);
                    } else {
                        g.done(b);
                    }
                    r
                }
                Kind::CbSkip(_, s, d) => {
                    let b = self.conv_bn(g, name, prev, s, d)?;
                    let a = skip
                        .take()
                        .expect("a block's first conv precedes its skip join");
                    let r = g.add_relu(b, a)?;
                    g.done(b);
                    g.done(a);
                    r
                }
                Kind::TconvRelu(s) => {
                    let t = g.tconv(
                        prev,
                        &self.pref(&format!("{name}.weight")),
                        &self.pref(&format!("{name}.bias")),
                        s,
                    )?;
                    let r = g.relu(t)?;
                    g.done(t);
                    r
                }
                Kind::Logits => g.conv(
                    prev,
                    &self.pref("logits.weight"),
                    &self.pref("logits.bias"),
                    1,
                    1,
                )?,
            };
            if prev != x {
                g.done(prev);
            }
            if let Some(b) = between(name, h, w) {
                let next = match b {
                    Between::Pool(k) => g.maxpool(cur, k, 2)?,
                    Between::Resize(rh, rw) => g.resize(cur, rh, rw, self.cfg.resize)?,
                };
                g.done(cur);
                cur = next;
            }
        }
        Ok(cur)
    }

    /// Inference without the tape: batch norm folded into each conv
    /// (running statistics), ReLU and the residual add in the conv's store.
    /// x [N, 1, H, W] (scaled) -> logits [N, 1, H, W]. Agrees with
    /// `forward` in eval mode up to f32 rounding.
    pub fn forward_folded(&self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let (h, w) = (x.shape()[2], x.shape()[3]);
        let mut cur = x;
        let mut skip: Option<Tensor> = None;
        for (name, kind, ..) in LAYERS.iter() {
            let wt = &self.param(&format!("{name}.weight")).value;
            let b = &self.param(&format!("{name}.bias")).value;
            cur = match *kind {
                Kind::Cbr(_, s, d) if SKIP_FROM.contains(name) => {
                    let (wf, bf) = fold::fold_bn(gpu, wt, b, &self.bn_params(name))?;
                    let pre = conv::conv2d_with(gpu, &cur, &wf, Some(&bf), s, d, false, None)?;
                    let r = elementwise::relu(gpu, &pre)?;
                    skip = Some(pre);
                    r
                }
                Kind::Cbr(_, s, d) => {
                    let (wf, bf) = fold::fold_bn(gpu, wt, b, &self.bn_params(name))?;
                    conv::conv2d_with(gpu, &cur, &wf, Some(&bf), s, d, true, None)?
                }
                Kind::CbSkip(_, s, d) => {
                    let (wf, bf) = fold::fold_bn(gpu, wt, b, &self.bn_params(name))?;
                    let a = skip
                        .take()
                        .expect("a block's first conv precedes its skip join");
                    conv::conv2d_add_relu(gpu, &cur, &wf, &bf, a, s, d)?
                }
                Kind::TconvRelu(s) => conv::tconv2d_with(gpu, &cur, wt, Some(b), s, true, None)?,
                Kind::Logits => conv::conv2d_with(gpu, &cur, wt, Some(b), 1, 1, false, None)?,
            };
            if let Some(bt) = between(name, h, w) {
                cur = match bt {
                    Between::Pool(k) => pool::maxpool2d(gpu, &cur, k, 2)?,
                    Between::Resize(rh, rw) => resize::resize(gpu, &cur, rh, rw, self.cfg.resize)?,
                };
            }
        }
        Ok(cur)
    }

    fn bn_params(&self, layer: &str) -> BnParams<'_> {
        let v = |suffix: &str| &self.param(&format!("{layer}.bn.{suffix}")).value;
        BnParams {
            gamma: v("weight"),
            beta: v("bias"),
            running_mean: v("running_mean"),
            running_var: v("running_var"),
        }
    }

    /// Zeroes every gradient (before a step's first micro-batch).
    pub fn zero_grads(&self, gpu: &Gpu) {
        for p in &self.params {
            if let Some(t) = &p.train {
                gpu.clear(&t.grad);
            }
        }
    }

    /// Writes the checkpoint atomically (temporary file, then rename), with
    /// the Adam moments when `with_adam`.
    pub fn save(&self, gpu: &Gpu, path: &Path, meta: &Meta, with_adam: bool) -> anyhow::Result<()> {
        let mut host: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for p in &self.params {
            let shape = p.value.shape().to_vec();
            host.push((
                p.name.clone(),
                shape.clone(),
                bytemuck::cast_slice(&gpu.read(&p.value)?).to_vec(),
            ));
            if let (true, Some(t)) = (with_adam, &p.train) {
                host.push((
                    format!("{}.adam_m", p.name),
                    shape.clone(),
                    bytemuck::cast_slice(&gpu.read(&t.m)?).to_vec(),
                ));
                host.push((
                    format!("{}.adam_v", p.name),
                    shape,
                    bytemuck::cast_slice(&gpu.read(&t.v)?).to_vec(),
                ));
            }
        }
        let mut info: HashMap<String, String> = meta.extra.clone().into_iter().collect();
        info.insert("format".into(), FORMAT.into());
        // MODEL.md writes the width like "0.25" or "1.0" (Debug keeps the ".0").
        info.insert("width".into(), format!("{:?}", self.cfg.width));
        info.insert("resize".into(), self.cfg.resize.name().into());
        info.insert("pos_weight".into(), format!("{}", meta.pos_weight));
        info.insert("step".into(), meta.step.to_string());
        info.insert("epoch".into(), meta.epoch.to_string());
        let views = host
            .iter()
            .map(|(n, s, d)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)?,
                ))
            })
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let bytes = safetensors::tensor::serialize(views, Some(info))?;
        let tmp = path.with_extension("safetensors.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)
                .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(())
    }

    /// Loads a checkpoint written by `save` (or any file with MODEL.md's
    /// names and layouts); Adam moments are restored when present.
    pub fn load(gpu: &Gpu, path: &Path) -> anyhow::Result<(Model, Meta)> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let info = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            info.get(k)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{}: metadata has no '{k}'", path.display()))
        };
        if get("format")? != FORMAT {
            anyhow::bail!(
                "{}: format is '{}', expected '{FORMAT}'",
                path.display(),
                get("format")?
            );
        }
        let width: f32 = get("width")?.parse()?;
        let resize = match get("resize")?.as_str() {
            "bilinear" => Mode::Bilinear,
            "nearest" => Mode::Nearest,
            other => anyhow::bail!("{}: unknown resize '{other}'", path.display()),
        };
        let cfg = ModelConfig { width, resize };
        let mut host = Vec::new();
        for (name, shape, _) in Self::specs(&cfg) {
            let t = st
                .tensor(&name)
                .map_err(|_| anyhow::anyhow!("{}: tensor '{name}' is missing", path.display()))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape.as_slice() {
                anyhow::bail!(
                    "{}: tensor '{name}' is {:?} {:?}, expected F32 {shape:?}",
                    path.display(),
                    t.dtype(),
                    t.shape()
                );
            }
            host.push((
                name,
                shape,
                bytemuck::pod_collect_to_vec::<u8, f32>(t.data()),
            ));
        }
        let model = Self::from_host(gpu, cfg, host)?;
        for p in &model.params {
            if let Some(t) = &p.train {
                for (suffix, dst) in [("adam_m", &t.m), ("adam_v", &t.v)] {
                    if let Ok(view) = st.tensor(&format!("{}.{suffix}", p.name)) {
                        gpu.write(dst, &bytemuck::pod_collect_to_vec::<u8, f32>(view.data()));
                    }
                }
            }
        }
        let extra = info
            .iter()
            .filter(|(k, _)| {
                !["format", "width", "resize", "pos_weight", "step", "epoch"].contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let meta = Meta {
            pos_weight: get("pos_weight")?.parse()?,
            step: get("step")?.parse()?,
            epoch: get("epoch")?.parse()?,
            extra,
        };
        Ok((model, meta))
    }
}

/// The batch-norm tensors of a layer, `NAME.bn.SUFFIX` (MODEL.md).
const BN_TENSORS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

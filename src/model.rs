//! `model`: the 28-layer dense-prediction network of docs/MODEL.md, its
//! parameters (He-normal init, seeded), and checkpoints in safetensors with
//! docs/MODEL.md's names, layouts and metadata (PyTorch-compatible).
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

/// docs/MODEL.md's layer table: name, kind, input and output channels at width 1.
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
/// that the block's last conv adds ("+skip(A)" in docs/MODEL.md).
const SKIP_FROM: [&str; 6] = [
    "conv0_1", "conv1_1", "conv2_1", "conv3_1", "conv4_0", "conv5_0",
];

/// A pool or resize between two layers (docs/MODEL.md's table rows "-").
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

/// Weights with docs/MODEL.md's L2 term (0.0025 * sum(w^2) / 2).
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
    /// docs/MODEL.md's width rule: `max(4, floor(c * w + 0.5))`, except the
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

/// Checkpoint metadata (docs/MODEL.md: string values).
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

    /// Writes the checkpoint atomically (a temporary file unique to this
    /// process, then rename), with the Adam moments when `with_adam`. Every
    /// tensor is checked finite first: a model with a NaN or infinity is
    /// never written (the error names the tensor), so the last checkpoint
    /// on disk stays good.
    pub fn save(&self, gpu: &Gpu, path: &Path, meta: &Meta, with_adam: bool) -> anyhow::Result<()> {
        let mut host: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        for p in &self.params {
            let shape = p.value.shape().to_vec();
            host.push((p.name.clone(), shape.clone(), gpu.read(&p.value)?));
            if let (true, Some(t)) = (with_adam, &p.train) {
                let mv = gpu.read_many(&[&t.m, &t.v])?;
                let [m, v]: [Vec<f32>; 2] = mv.try_into().expect("two tensors read");
                host.push((format!("{}.adam_m", p.name), shape.clone(), m));
                host.push((format!("{}.adam_v", p.name), shape, v));
            }
        }
        for (name, _, data) in &host {
            check_values(name, data)
                .map_err(|e| anyhow::anyhow!("{}: not saved: {e}", path.display()))?;
        }
        let mut info: HashMap<String, String> = meta.extra.clone().into_iter().collect();
        info.insert("format".into(), FORMAT.into());
        // docs/MODEL.md writes the width like "0.25" or "1.0" (Debug keeps the ".0").
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
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        s.clone(),
                        bytemuck::cast_slice(d),
                    )?,
                ))
            })
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let bytes = safetensors::tensor::serialize(views, Some(info))?;
        crate::fsio::write_atomic(path, &bytes, true)
    }

    /// Loads the weights of a checkpoint written by `save` (or any file with
    /// docs/MODEL.md's names and layouts) for inference: Adam moments are not
    /// read. Everything is validated before anything is uploaded.
    pub fn load(gpu: &Gpu, path: &Path) -> anyhow::Result<(Model, Meta)> {
        Self::from_checkpoint(gpu, Checkpoint::read(path, Load::Weights)?)
    }

    /// Loads a checkpoint to continue training: the weights and, when the
    /// file has them, the Adam moments (validated like the weights).
    pub fn load_for_training(gpu: &Gpu, path: &Path) -> anyhow::Result<(Model, Meta)> {
        Self::from_checkpoint(gpu, Checkpoint::read(path, Load::WithAdam)?)
    }

    /// Uploads a checkpoint read (and validated) by `Checkpoint::read`.
    pub fn from_checkpoint(gpu: &Gpu, c: Checkpoint) -> anyhow::Result<(Model, Meta)> {
        let Checkpoint {
            cfg,
            tensors,
            mut adam,
            meta,
        } = c;
        let model = Self::from_host(gpu, cfg, tensors)?;
        for p in &model.params {
            if let (Some(t), Some((m, v))) = (&p.train, adam.remove(&p.name)) {
                gpu.write(&t.m, &m);
                gpu.write(&t.v, &v);
            }
        }
        Ok((model, meta))
    }
}

/// What a command reads from a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// The weights and running statistics (inference, evaluation).
    Weights,
    /// Also the Adam moments (resuming a run).
    WithAdam,
}

/// A checkpoint read and validated on the host; nothing is on the GPU yet.
pub struct Checkpoint {
    pub cfg: ModelConfig,
    /// (name, shape, values) of every model tensor, in table order.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// (m, v) by parameter name (only with `Load::WithAdam`).
    pub adam: HashMap<String, (Vec<f32>, Vec<f32>)>,
    pub meta: Meta,
}

/// Values that cannot be in a usable model: NaN or infinity anywhere, a
/// negative batch-norm running variance or Adam second moment.
fn check_values(name: &str, data: &[f32]) -> std::result::Result<(), String> {
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        let bad = data.iter().filter(|v| !v.is_finite()).count();
        return Err(format!(
            "tensor '{name}' holds {bad} non-finite value(s) (first at index {i}: {})",
            data[i]
        ));
    }
    if (name.ends_with("running_var") || name.ends_with(".adam_v"))
        && let Some(i) = data.iter().position(|&v| v < 0.0)
    {
        return Err(format!(
            "tensor '{name}' holds a negative value at index {i} ({}): a variance cannot be negative",
            data[i]
        ));
    }
    Ok(())
}

impl Checkpoint {
    /// Reads and validates `path` (see `parse`).
    pub fn read(path: &Path, load: Load) -> anyhow::Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::parse(&bytes, path, load)
    }

    /// Validates a checkpoint's bytes: the metadata (each bad key named),
    /// every tensor's name, dtype and shape against the model its metadata
    /// describes, and every value read (finite; running variances >= 0).
    /// Errors name `path`; nothing here panics on any input.
    pub fn parse(bytes: &[u8], path: &Path, load: Load) -> anyhow::Result<Checkpoint> {
        let at = path.display();
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow::anyhow!("{at}: not a safetensors file: {e}"))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("{at}: not a safetensors file: {e}"))?;
        let info = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            info.get(k)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{at}: metadata has no '{k}'"))
        };
        fn parsed<T: std::str::FromStr>(
            at: &impl std::fmt::Display,
            k: &str,
            v: &str,
        ) -> anyhow::Result<T>
        where
            T::Err: std::fmt::Display,
        {
            v.parse()
                .map_err(|e| anyhow::anyhow!("{at}: metadata '{k}' is '{v}': {e}"))
        }
        if get("format")? != FORMAT {
            anyhow::bail!("{at}: format is '{}', expected '{FORMAT}'", get("format")?);
        }
        let width: f32 = parsed(&at, "width", &get("width")?)?;
        if !(width.is_finite() && width > 0.0 && width <= 16.0) {
            anyhow::bail!("{at}: metadata 'width' is {width}, expected a multiplier in (0, 16]");
        }
        let resize = match get("resize")?.as_str() {
            "bilinear" => Mode::Bilinear,
            "nearest" => Mode::Nearest,
            other => anyhow::bail!("{at}: unknown resize '{other}'"),
        };
        let pos_weight: f32 = parsed(&at, "pos_weight", &get("pos_weight")?)?;
        if !pos_weight.is_finite() {
            anyhow::bail!("{at}: metadata 'pos_weight' is {pos_weight}");
        }
        let step: u64 = parsed(&at, "step", &get("step")?)?;
        let epoch: u64 = parsed(&at, "epoch", &get("epoch")?)?;
        let cfg = ModelConfig { width, resize };
        let specs = Model::specs(&cfg);
        // Every tensor of the file is a model tensor or an Adam moment of a
        // trainable one, with the model's dtype and shape.
        let mut expected: HashMap<String, Vec<usize>> = HashMap::new();
        for (name, shape, _) in &specs {
            if !name.ends_with("running_mean") && !name.ends_with("running_var") {
                expected.insert(format!("{name}.adam_m"), shape.clone());
                expected.insert(format!("{name}.adam_v"), shape.clone());
            }
            expected.insert(name.clone(), shape.clone());
        }
        let mut names = st.names();
        names.sort();
        for name in names {
            // Adam moments are not read for inference: their shape is not
            // its concern (only that they belong to this model).
            if load == Load::Weights
                && (name.ends_with(".adam_m") || name.ends_with(".adam_v"))
                && expected.contains_key(name)
            {
                continue;
            }
            let Some(shape) = expected.get(name) else {
                anyhow::bail!(
                    "{at}: unexpected tensor '{name}' (not part of a width-{width} model)"
                );
            };
            let t = st
                .tensor(name)
                .map_err(|e| anyhow::anyhow!("{at}: tensor '{name}': {e}"))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape.as_slice() {
                anyhow::bail!(
                    "{at}: tensor '{name}' is {:?} {:?}, expected F32 {shape:?}",
                    t.dtype(),
                    t.shape()
                );
            }
        }
        let values = |name: &str| -> anyhow::Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| anyhow::anyhow!("{at}: tensor '{name}' is missing"))?;
            let v = bytemuck::pod_collect_to_vec::<u8, f32>(t.data());
            check_values(name, &v).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
            Ok(v)
        };
        let mut tensors = Vec::with_capacity(specs.len());
        let mut adam = HashMap::new();
        for (name, shape, _) in specs {
            let v = values(&name)?;
            if load == Load::WithAdam
                && !name.ends_with("running_mean")
                && !name.ends_with("running_var")
            {
                let (m, vv) = (format!("{name}.adam_m"), format!("{name}.adam_v"));
                match (st.tensor(&m).is_ok(), st.tensor(&vv).is_ok()) {
                    (true, true) => {
                        adam.insert(name.clone(), (values(&m)?, values(&vv)?));
                    }
                    (false, false) => {}
                    _ => anyhow::bail!("{at}: '{name}' has only one of its two Adam moments"),
                }
            }
            tensors.push((name, shape, v));
        }
        let extra = info
            .iter()
            .filter(|(k, _)| {
                !["format", "width", "resize", "pos_weight", "step", "epoch"].contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Checkpoint {
            cfg,
            tensors,
            adam,
            meta: Meta {
                pos_weight,
                step,
                epoch,
                extra,
            },
        })
    }
}

/// The batch-norm tensors of a layer, `NAME.bn.SUFFIX` (docs/MODEL.md).
const BN_TENSORS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

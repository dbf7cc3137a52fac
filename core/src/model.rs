//! `model`: the 28-layer dense-prediction network of docs/MODEL.md, its
//! parameters (He-normal init, seeded), and checkpoints in safetensors with
//! docs/MODEL.md's names, layouts and metadata (PyTorch-compatible).
//!
//! `NETWORK` is the one description of the network: docs/MODEL.md's table
//! row by row, pools and resizes included. The tensors (`Model::specs`, so
//! the checkpoint names and shapes), the training forward on the tape
//! (`Model::forward`) and the fused inference (`Model::forward_folded`) are
//! all walks over it.
use crate::error::{EngineError, Result};
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

/// A convolution of the table: its name (the checkpoint prefix), kernel
/// size, stride, dilation, and input and output channels at width 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv {
    pub name: &'static str,
    pub k: usize,
    pub stride: usize,
    pub dil: usize,
    pub cin: usize,
    pub cout: usize,
}

/// One row of docs/MODEL.md's network table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// CBR: conv -> bn -> relu.
    Cbr(Conv),
    /// CBR whose post-bn, pre-relu value is also kept: the skip of its
    /// residual block (the block's first conv).
    CbrSkip(Conv),
    /// CB + skip, R: conv -> bn, then the residual join relu(. + skip),
    /// which uses up the skip of the block's `CbrSkip`.
    CbJoin(Conv),
    /// Max pool k x k, stride 2 (SAME); no tensors.
    Pool { name: &'static str, k: usize },
    /// Resize to (ceil(H / div), ceil(W / div)) of the network input's
    /// H x W; no tensors.
    Resize { name: &'static str, div: usize },
    /// Transpose conv 4 x 4 (`k` is 4), then relu; no bn.
    TconvRelu(Conv),
    /// The 1 x 1 conv to the logits: no bn, no relu.
    Logits(Conv),
}

const fn conv(name: &'static str, k: usize, s: usize, d: usize, cin: usize, cout: usize) -> Conv {
    Conv {
        name,
        k,
        stride: s,
        dil: d,
        cin,
        cout,
    }
}
const fn cbr(name: &'static str, k: usize, s: usize, d: usize, cin: usize, cout: usize) -> Step {
    Step::Cbr(conv(name, k, s, d, cin, cout))
}
const fn skip_from(
    name: &'static str,
    k: usize,
    s: usize,
    d: usize,
    cin: usize,
    cout: usize,
) -> Step {
    Step::CbrSkip(conv(name, k, s, d, cin, cout))
}
const fn join(name: &'static str, k: usize, s: usize, d: usize, cin: usize, cout: usize) -> Step {
    Step::CbJoin(conv(name, k, s, d, cin, cout))
}
const fn tconv(name: &'static str, s: usize, cin: usize, cout: usize) -> Step {
    Step::TconvRelu(conv(name, 4, s, 1, cin, cout))
}
const fn maxpool(name: &'static str, k: usize) -> Step {
    Step::Pool { name, k }
}
const fn resize_to(name: &'static str, div: usize) -> Step {
    Step::Resize { name, div }
}

/// docs/MODEL.md's table, in order: name, k, stride, dilation, channels at
/// width 1 (layers); k (pools); the divisor of the input size (resizes).
pub const NETWORK: [Step; 34] = [
    skip_from("conv0_1", 3, 2, 1, 1, 32),
    cbr("conv0_2", 3, 1, 1, 32, 32),
    join("conv0_3", 3, 1, 1, 32, 32),
    cbr("pool0_1", 3, 2, 1, 32, 48),
    skip_from("conv1_1", 3, 1, 1, 48, 48),
    cbr("conv1_2", 3, 1, 1, 48, 48),
    join("conv1_3", 3, 1, 1, 48, 48),
    maxpool("pool1", 3),
    skip_from("conv2_1", 3, 1, 1, 48, 64),
    cbr("conv2_2", 3, 1, 1, 64, 64),
    join("conv2_3", 3, 1, 1, 64, 64),
    maxpool("pool2", 2),
    skip_from("conv3_1", 3, 1, 1, 64, 128),
    cbr("conv3_2", 3, 1, 1, 128, 128),
    join("conv3_3", 3, 1, 1, 128, 128),
    maxpool("pool3", 2),
    skip_from("conv4_0", 3, 1, 1, 128, 256),
    cbr("conv4_1", 3, 1, 1, 256, 256),
    cbr("conv4_2", 3, 1, 1, 256, 256),
    join("conv4_3", 3, 1, 1, 256, 256),
    skip_from("conv5_0", 3, 1, 2, 256, 512),
    cbr("conv5_1", 3, 1, 2, 512, 512),
    cbr("conv5_2", 3, 1, 2, 512, 512),
    join("conv5_3", 3, 1, 2, 512, 512),
    cbr("fc_1", 1, 1, 1, 512, 256),
    resize_to("resize_1", 8),
    cbr("up_conv2", 3, 1, 1, 256, 128),
    resize_to("resize_2", 4),
    cbr("up_conv6", 3, 1, 1, 128, 64),
    tconv("upsample_4", 2, 64, 64),
    tconv("upsample_5", 1, 64, 32),
    cbr("up_conv9", 3, 1, 1, 32, 16),
    Step::Logits(conv("logits", 1, 1, 1, 16, 1)),
    resize_to("resize_3", 1),
];

/// Checked when the crate compiles: channels chain from 1 to 1 (pools and
/// resizes keep them), and every join follows exactly one open skip.
const _: () = check_network();

const fn check_network() {
    let (mut channels, mut open_skip, mut i) = (1, false, 0);
    while i < NETWORK.len() {
        if let Some(c) = NETWORK[i].conv() {
            assert!(
                c.cin == channels,
                "a layer's input channels differ from the previous output"
            );
            channels = c.cout;
        }
        match NETWORK[i] {
            Step::CbrSkip(_) => {
                assert!(!open_skip, "a skip source inside an open residual block");
                open_skip = true;
            }
            Step::CbJoin(_) => {
                assert!(open_skip, "a residual join without a skip source");
                open_skip = false;
            }
            _ => {}
        }
        i += 1;
    }
    assert!(
        channels == 1 && !open_skip,
        "the network ends with 1 channel, all skips joined"
    );
}

/// What a model tensor is: how it starts and whether Adam trains it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Role {
    /// A conv or tconv kernel, He-normal with this fan-in.
    Kernel { fan_in: f32 },
    /// A conv or tconv bias (starts at 0).
    Bias,
    /// bn.weight (starts at 1).
    BnGamma,
    /// bn.bias (starts at 0).
    BnBeta,
    /// bn.running_mean (starts at 0; not trained).
    RunningMean,
    /// bn.running_var (starts at 1; not trained).
    RunningVar,
}

impl Role {
    pub fn trainable(self) -> bool {
        !matches!(self, Role::RunningMean | Role::RunningVar)
    }
}

/// A model tensor: its checkpoint name, shape and role.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

/// The batch-norm tensors of a layer, `NAME.bn.SUFFIX` (docs/MODEL.md).
const BN_TENSORS: [(&str, Role); 4] = [
    ("weight", Role::BnGamma),
    ("bias", Role::BnBeta),
    ("running_mean", Role::RunningMean),
    ("running_var", Role::RunningVar),
];

impl Step {
    /// The row's name in docs/MODEL.md (for layers, the checkpoint prefix).
    pub fn name(&self) -> &'static str {
        match *self {
            Step::Pool { name, .. } | Step::Resize { name, .. } => name,
            Step::Cbr(c) | Step::CbrSkip(c) | Step::CbJoin(c) => c.name,
            Step::TconvRelu(c) | Step::Logits(c) => c.name,
        }
    }

    /// The convolution of a layer; None for pools and resizes.
    pub const fn conv(&self) -> Option<Conv> {
        match *self {
            Step::Cbr(c) | Step::CbrSkip(c) | Step::CbJoin(c) => Some(c),
            Step::TconvRelu(c) | Step::Logits(c) => Some(c),
            Step::Pool { .. } | Step::Resize { .. } => None,
        }
    }

    /// Whether the layer has batch norm.
    fn has_bn(&self) -> bool {
        matches!(self, Step::Cbr(_) | Step::CbrSkip(_) | Step::CbJoin(_))
    }

    /// The step's tensors at `cfg`'s width, in checkpoint order: `weight`,
    /// `bias`, then `bn.*` for layers with bn; none for pools and resizes.
    pub fn tensors(&self, cfg: &ModelConfig) -> Vec<Spec> {
        let Some(c) = self.conv() else {
            return Vec::new();
        };
        let (i, o, k) = (cfg.channels(c.cin), cfg.channels(c.cout), c.k);
        let spec = |suffix: &str, shape: Vec<usize>, role| Spec {
            name: format!("{}.{suffix}", c.name),
            shape,
            role,
        };
        let weight = match self {
            // PyTorch's ConvTranspose2d layout [in, out, k, k]; the fan-in
            // counts the terms an output actually sums.
            Step::TconvRelu(_) => spec(
                "weight",
                vec![i, o, k, k],
                Role::Kernel {
                    fan_in: (i * k * k) as f32 / (c.stride * c.stride) as f32,
                },
            ),
            _ => spec(
                "weight",
                vec![o, i, k, k],
                Role::Kernel {
                    fan_in: (i * k * k) as f32,
                },
            ),
        };
        let mut out = vec![weight, spec("bias", vec![o], Role::Bias)];
        if self.has_bn() {
            for (suffix, role) in BN_TENSORS {
                out.push(spec(&format!("bn.{suffix}"), vec![o], role));
            }
        }
        out
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
    /// Per layer, the conv weight and bias with batch norm folded in, made
    /// once by `freeze` (empty until then: every inference folds anew).
    folded: Vec<Option<(Tensor, Tensor)>>,
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

/// One step of the network with its tensors, in `Step::tensors` order
/// (`Model::layers`).
struct Layer<'a> {
    step: Step,
    tensors: &'a [Param],
}

impl<'a> Layer<'a> {
    fn missing(&self, what: &str) -> EngineError {
        EngineError::Model(format!("layer '{}' has no {what}", self.step.name()))
    }

    fn weight(&self) -> Result<&'a Param> {
        self.tensors.first().ok_or_else(|| self.missing("weight"))
    }

    fn bias(&self) -> Result<&'a Param> {
        self.tensors.get(1).ok_or_else(|| self.missing("bias"))
    }

    /// The weight and bias as trainable tensors of the tape.
    fn conv_refs(&self) -> Result<(ParamRef<'a>, ParamRef<'a>)> {
        Ok((trained(self.weight()?)?, trained(self.bias()?)?))
    }

    /// gamma, beta, running mean and running variance.
    fn bn(&self) -> Result<[&'a Param; 4]> {
        match self.tensors {
            [_, _, gamma, beta, mean, var] => Ok([gamma, beta, mean, var]),
            _ => Err(self.missing("batch norm")),
        }
    }

    fn bn_params(&self) -> Result<BnParams<'a>> {
        let [gamma, beta, mean, var] = self.bn()?;
        Ok(BnParams {
            gamma: &gamma.value,
            beta: &beta.value,
            running_mean: &mean.value,
            running_var: &var.value,
        })
    }

    fn bn_ref(&self) -> Result<BnRef<'a>> {
        let [gamma, beta, mean, var] = self.bn()?;
        Ok(BnRef {
            gamma: trained(gamma)?,
            beta: trained(beta)?,
            running_mean: &mean.value,
            running_var: &var.value,
        })
    }

    /// The conv's weight and bias with the batch norm folded in (inference).
    fn folded(&self, gpu: &Gpu) -> Result<(Tensor, Tensor)> {
        fold::fold_bn(
            gpu,
            &self.weight()?.value,
            &self.bias()?.value,
            &self.bn_params()?,
        )
    }
}

/// A trainable tensor and its gradient, for the tape.
fn trained(p: &Param) -> Result<ParamRef<'_>> {
    match &p.train {
        Some(t) => Ok(ParamRef {
            value: &p.value,
            grad: &t.grad,
        }),
        None => Err(EngineError::Model(format!(
            "tensor '{}' is not trainable",
            p.name
        ))),
    }
}

/// The (H, W) of a network input [N, 1, H, W].
fn input_hw(x: &Tensor) -> Result<(usize, usize)> {
    match *x.shape() {
        [_, 1, h, w] => Ok((h, w)),
        _ => Err(EngineError::Shape {
            op: "model",
            detail: format!("the input must be [N, 1, H, W], got {:?}", x.shape()),
        }),
    }
}

/// The skip a residual join uses up.
fn take_skip<T>(skip: &mut Option<T>, c: &Conv) -> Result<T> {
    skip.take()
        .ok_or_else(|| EngineError::Model(format!("'{}' joins a skip that no layer made", c.name)))
}

impl Model {
    /// Every tensor of the network at `cfg`'s width, in table order.
    pub fn specs(cfg: &ModelConfig) -> Vec<Spec> {
        NETWORK.iter().flat_map(|s| s.tensors(cfg)).collect()
    }

    /// A freshly initialised model: He-normal kernels (std sqrt(2 / fan_in)),
    /// zero biases, bn weight 1 / bias 0, running mean 0 / var 1.
    pub fn new(gpu: &Gpu, cfg: ModelConfig, seed: u64) -> Result<Model> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut host = Vec::new();
        for Spec { name, shape, role } in Self::specs(&cfg) {
            let n: usize = shape.iter().product();
            let data = match role {
                Role::Kernel { fan_in } => {
                    let normal = Normal::new(0.0f32, (2.0 / fan_in).sqrt())
                        .map_err(|e| EngineError::Model(format!("{name}: {e}")))?;
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                }
                Role::BnGamma | Role::RunningVar => vec![1.0; n],
                Role::Bias | Role::BnBeta | Role::RunningMean => vec![0.0; n],
            };
            host.push((name, shape, data));
        }
        Self::from_host(gpu, cfg, host)
    }

    /// Uploads the tensors of `Model::specs(&cfg)`, in that order (checked:
    /// `layers` relies on it).
    fn from_host(
        gpu: &Gpu,
        cfg: ModelConfig,
        host: Vec<(String, Vec<usize>, Vec<f32>)>,
    ) -> Result<Model> {
        let specs = Self::specs(&cfg);
        if host.len() != specs.len() {
            return Err(EngineError::Model(format!(
                "{} tensors given, the network has {}",
                host.len(),
                specs.len()
            )));
        }
        let mut params = Vec::new();
        let mut index = HashMap::new();
        for ((name, shape, data), spec) in host.into_iter().zip(specs) {
            if name != spec.name || shape != spec.shape {
                return Err(EngineError::Model(format!(
                    "tensor '{name}' {shape:?} where the table has '{}' {:?}",
                    spec.name, spec.shape
                )));
            }
            let train = if spec.role.trainable() {
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
        Ok(Model {
            cfg,
            params,
            index,
            folded: Vec::new(),
        })
    }

    /// The tensor called `name`; the error names it.
    pub fn get(&self, name: &str) -> Result<&Param> {
        self.index
            .get(name)
            .and_then(|&i| self.params.get(i))
            .ok_or_else(|| {
                EngineError::Model(format!(
                    "no tensor named '{name}' (docs/MODEL.md, section 7)"
                ))
            })
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.train.is_some())
            .map(|p| p.value.numel())
            .sum()
    }

    /// Each step of `NETWORK` with its tensors (`from_host` laid them out
    /// in this order).
    fn layers(&self) -> Result<Vec<Layer<'_>>> {
        let mut rest = self.params.as_slice();
        let mut out = Vec::with_capacity(NETWORK.len());
        for step in NETWORK {
            let n = step.tensors(&self.cfg).len();
            let (tensors, tail) = rest.split_at_checked(n).ok_or_else(|| {
                EngineError::Model(format!("the model ends before layer '{}'", step.name()))
            })?;
            rest = tail;
            out.push(Layer { step, tensors });
        }
        Ok(out)
    }

    /// The whole network on x [N, 1, H, W] (input already scaled); returns
    /// the full-resolution logits [N, 1, H, W] (before the sigmoid). Each
    /// value is freed by the graph after its last use.
    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        if g.training() && !self.folded.is_empty() {
            return Err(EngineError::Model(
                "this model was frozen for inference (batch norm folded): it cannot be trained"
                    .into(),
            ));
        }
        let hw = input_hw(g.try_value(x)?)?;
        let mut cur = x;
        // The post-bn, pre-relu value of the open block's first conv.
        let mut skip: Option<Var> = None;
        for layer in self.layers()? {
            cur = self.tape_step(g, &layer, cur, &mut skip, hw)?;
        }
        Ok(cur)
    }

    /// One step of `forward`.
    fn tape_step(
        &self,
        g: &mut Graph,
        l: &Layer,
        x: Var,
        skip: &mut Option<Var>,
        (h, w): (usize, usize),
    ) -> Result<Var> {
        let conv = |g: &mut Graph, c: &Conv| -> Result<Var> {
            let (wt, b) = l.conv_refs()?;
            g.conv(x, &wt, &b, c.stride, c.dil)
        };
        // Batch norm, the ReLU and the residual add run as one pass.
        match l.step {
            Step::Cbr(c) => {
                let y = conv(g, &c)?;
                g.bn_relu(y, &l.bn_ref()?)
            }
            Step::CbrSkip(c) => {
                let y = conv(g, &c)?;
                let (pre, out) = g.bn_relu_keep(y, &l.bn_ref()?)?;
                *skip = Some(pre);
                Ok(out)
            }
            Step::CbJoin(c) => {
                let y = conv(g, &c)?;
                let a = take_skip(skip, &c)?;
                g.bn_add_relu(y, a, &l.bn_ref()?)
            }
            Step::Pool { k, .. } => g.maxpool(x, k, 2),
            Step::Resize { div, .. } => {
                g.resize(x, h.div_ceil(div), w.div_ceil(div), self.cfg.resize)
            }
            Step::TconvRelu(c) => {
                let (wt, b) = l.conv_refs()?;
                g.tconv_relu(x, &wt, &b, c.stride)
            }
            Step::Logits(c) => {
                let (wt, b) = l.conv_refs()?;
                g.conv(x, &wt, &b, c.stride, c.dil)
            }
        }
    }

    /// Inference without the tape: batch norm folded into each conv
    /// (running statistics), ReLU and the residual add in the conv's store.
    /// x [N, 1, H, W] (scaled) -> logits [N, 1, H, W]. Agrees with
    /// `forward` in eval mode up to f32 rounding.
    pub fn forward_folded(&self, gpu: &Gpu, x: Tensor) -> Result<Tensor> {
        let hw = input_hw(&x)?;
        let mut cur = x;
        let mut skip: Option<Tensor> = None;
        for (i, layer) in self.layers()?.iter().enumerate() {
            cur = self.folded_step(gpu, i, layer, &cur, &mut skip, hw)?;
        }
        Ok(cur)
    }

    /// Folds every batch norm into its conv once, for a model that will
    /// only run inference (a loaded checkpoint): `forward_folded` then
    /// reuses the folded tensors instead of folding per call, and the
    /// convolutions keep their re-laid weights (`Tensor::frozen`). A
    /// frozen model refuses training (its folded copies would go stale).
    pub fn freeze(&mut self, gpu: &Gpu) -> Result<()> {
        let folded = self
            .layers()?
            .iter()
            .map(|l| match l.step {
                Step::Cbr(_) | Step::CbrSkip(_) | Step::CbJoin(_) => {
                    l.folded(gpu).map(|(w, b)| Some((w.frozen(), b)))
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        self.folded = folded;
        // The transposed convolutions' and the logits' weights are used as
        // they are: frozen too, so their re-laid copies are kept.
        for p in &mut self.params {
            p.value = p.value.frozen();
        }
        Ok(())
    }

    /// Layer `i`'s folded weight and bias: the frozen copy, else folded now.
    fn folded_of(&self, gpu: &Gpu, i: usize, l: &Layer) -> Result<(Tensor, Tensor)> {
        match self.folded.get(i) {
            Some(Some(wb)) => Ok(wb.clone()),
            _ => l.folded(gpu),
        }
    }

    /// One step of `forward_folded`.
    fn folded_step(
        &self,
        gpu: &Gpu,
        i: usize,
        l: &Layer,
        x: &Tensor,
        skip: &mut Option<Tensor>,
        (h, w): (usize, usize),
    ) -> Result<Tensor> {
        match l.step {
            Step::Cbr(c) => {
                let (wf, bf) = self.folded_of(gpu, i, l)?;
                conv::conv2d_with(gpu, x, &wf, Some(&bf), c.stride, c.dil, true, None)
            }
            Step::CbrSkip(c) => {
                let (wf, bf) = self.folded_of(gpu, i, l)?;
                let pre = conv::conv2d_with(gpu, x, &wf, Some(&bf), c.stride, c.dil, false, None)?;
                let r = elementwise::relu(gpu, &pre)?;
                *skip = Some(pre);
                Ok(r)
            }
            Step::CbJoin(c) => {
                let (wf, bf) = self.folded_of(gpu, i, l)?;
                let a = take_skip(skip, &c)?;
                conv::conv2d_add_relu(gpu, x, &wf, &bf, a, c.stride, c.dil)
            }
            Step::Pool { k, .. } => pool::maxpool2d(gpu, x, k, 2),
            Step::Resize { div, .. } => {
                resize::resize(gpu, x, h.div_ceil(div), w.div_ceil(div), self.cfg.resize)
            }
            Step::TconvRelu(c) => {
                let (wt, b) = (&l.weight()?.value, &l.bias()?.value);
                conv::tconv2d_with(gpu, x, wt, Some(b), c.stride, true, None)
            }
            Step::Logits(c) => {
                let (wt, b) = (&l.weight()?.value, &l.bias()?.value);
                conv::conv2d_with(gpu, x, wt, Some(b), c.stride, c.dil, false, None)
            }
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
    /// on disk stays good. Native only (training writes checkpoints).
    #[cfg(not(target_arch = "wasm32"))]
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
        let (cfg, meta) = Self::parse_meta(&info, &at)?;
        let specs = Model::specs(&cfg);
        Self::check_names(&st, &specs, load, &at, cfg.width)?;
        let (tensors, adam) = Self::read_values(&st, specs, load, &at)?;
        Ok(Checkpoint {
            cfg,
            tensors,
            adam,
            meta,
        })
    }

    /// The model configuration and `Meta` of the metadata, each bad key named.
    fn parse_meta(
        info: &HashMap<String, String>,
        at: &impl std::fmt::Display,
    ) -> anyhow::Result<(ModelConfig, Meta)> {
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
        let width: f32 = parsed(at, "width", &get("width")?)?;
        if !(width.is_finite() && width > 0.0 && width <= 16.0) {
            anyhow::bail!("{at}: metadata 'width' is {width}, expected a multiplier in (0, 16]");
        }
        let resize = match get("resize")?.as_str() {
            "bilinear" => Mode::Bilinear,
            "nearest" => Mode::Nearest,
            other => anyhow::bail!("{at}: unknown resize '{other}'"),
        };
        let pos_weight: f32 = parsed(at, "pos_weight", &get("pos_weight")?)?;
        if !pos_weight.is_finite() {
            anyhow::bail!("{at}: metadata 'pos_weight' is {pos_weight}");
        }
        let step: u64 = parsed(at, "step", &get("step")?)?;
        let epoch: u64 = parsed(at, "epoch", &get("epoch")?)?;
        let extra = info
            .iter()
            .filter(|(k, _)| {
                !["format", "width", "resize", "pos_weight", "step", "epoch"].contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let meta = Meta {
            pos_weight,
            step,
            epoch,
            extra,
        };
        Ok((ModelConfig { width, resize }, meta))
    }

    /// Every tensor of the file is a model tensor or an Adam moment of a
    /// trainable one, with the model's dtype and shape.
    fn check_names(
        st: &safetensors::SafeTensors,
        specs: &[Spec],
        load: Load,
        at: &impl std::fmt::Display,
        width: f32,
    ) -> anyhow::Result<()> {
        let mut expected: HashMap<String, &[usize]> = HashMap::new();
        for Spec { name, shape, role } in specs {
            if role.trainable() {
                expected.insert(format!("{name}.adam_m"), shape);
                expected.insert(format!("{name}.adam_v"), shape);
            }
            expected.insert(name.clone(), shape);
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
            let Some(&shape) = expected.get(name) else {
                anyhow::bail!(
                    "{at}: unexpected tensor '{name}' (not part of a width-{width} model)"
                );
            };
            let t = st
                .tensor(name)
                .map_err(|e| anyhow::anyhow!("{at}: tensor '{name}': {e}"))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape {
                anyhow::bail!(
                    "{at}: tensor '{name}' is {:?} {:?}, expected F32 {shape:?}",
                    t.dtype(),
                    t.shape()
                );
            }
        }
        Ok(())
    }

    /// The values of every model tensor in table order, each checked, and
    /// with `Load::WithAdam` the Adam moments that the file has.
    #[allow(clippy::type_complexity)]
    fn read_values(
        st: &safetensors::SafeTensors,
        specs: Vec<Spec>,
        load: Load,
        at: &impl std::fmt::Display,
    ) -> anyhow::Result<(
        Vec<(String, Vec<usize>, Vec<f32>)>,
        HashMap<String, (Vec<f32>, Vec<f32>)>,
    )> {
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
        for Spec { name, shape, role } in specs {
            let v = values(&name)?;
            if load == Load::WithAdam && role.trainable() {
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
        Ok((tensors, adam))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(cfg: &ModelConfig, trainable: bool) -> usize {
        Model::specs(cfg)
            .iter()
            .filter(|s| s.role.trainable() == trainable)
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
    }

    #[test]
    fn the_table_gives_docs_model_md_sizes() {
        // docs/MODEL.md, section 2: 11,502,625 trainable values and 8,800
        // running statistics at width 1; 721,465 trainable at width 0.25.
        let w1 = ModelConfig::default();
        assert_eq!(count(&w1, true), 11_502_625);
        assert_eq!(count(&w1, false), 8_800);
        let quarter = ModelConfig { width: 0.25, ..w1 };
        assert_eq!(count(&quarter, true), 721_465);
        // 28 layers: 6 tensors for each of the 25 with bn, 2 for the two
        // tconvs and the logits.
        assert_eq!(Model::specs(&w1).len(), 25 * 6 + 3 * 2);
    }

    #[test]
    fn checkpoint_names_and_layouts_follow_section_7() {
        let specs = Model::specs(&ModelConfig::default());
        let shape = |n: &str| {
            specs
                .iter()
                .find(|s| s.name == n)
                .map(|s| s.shape.clone())
                .unwrap_or_else(|| panic!("no {n}"))
        };
        assert_eq!(shape("conv0_1.weight"), [32, 1, 3, 3]);
        assert_eq!(shape("conv5_3.bn.running_var"), [512]);
        assert_eq!(shape("fc_1.weight"), [256, 512, 1, 1]);
        // ConvTranspose2d layout: [in, out, 4, 4].
        assert_eq!(shape("upsample_5.weight"), [64, 32, 4, 4]);
        assert_eq!(shape("logits.weight"), [1, 16, 1, 1]);
        assert!(!specs.iter().any(|s| s.name.starts_with("logits.bn")));
        assert!(!specs.iter().any(|s| s.name.starts_with("upsample_4.bn")));
        let first: Vec<&str> = specs.iter().take(7).map(|s| s.name.as_str()).collect();
        assert_eq!(
            first,
            [
                "conv0_1.weight",
                "conv0_1.bias",
                "conv0_1.bn.weight",
                "conv0_1.bn.bias",
                "conv0_1.bn.running_mean",
                "conv0_1.bn.running_var",
                "conv0_2.weight"
            ]
        );
        let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), specs.len(), "names are unique");
        for n in L2_WEIGHTS {
            assert!(specs.iter().any(|s| s.name == n), "{n}");
        }
    }

    #[test]
    fn fan_ins_follow_section_5() {
        let specs = Model::specs(&ModelConfig::default());
        let fan_in = |n: &str| match specs.iter().find(|s| s.name == n).map(|s| s.role) {
            Some(Role::Kernel { fan_in }) => fan_in,
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(fan_in("conv1_1.weight"), 48.0 * 9.0);
        assert_eq!(fan_in("fc_1.weight"), 512.0);
        assert_eq!(fan_in("upsample_4.weight"), 64.0 * 16.0 / 4.0);
        assert_eq!(fan_in("upsample_5.weight"), 64.0 * 16.0);
    }

    #[test]
    fn the_table_has_every_row_of_docs_model_md() {
        let names: Vec<&str> = NETWORK.iter().map(Step::name).collect();
        let docs = include_str!("../../docs/MODEL.md");
        for n in &names {
            assert!(
                docs.contains(&format!("| {n} |")),
                "{n} is not a row of docs/MODEL.md"
            );
        }
        let layers = NETWORK.iter().filter(|s| s.conv().is_some()).count();
        assert_eq!((NETWORK.len(), layers), (34, 28));
    }
}

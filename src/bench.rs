//! `engine bench`: times each kernel at a given shape and prints time,
//! GFLOP/s (compute-bound ops) or GB/s (memory-bound ops), and the adapter.
//! Timestamp queries time the GPU work where the adapter has them; else the
//! wall clock of submit-and-wait is used (and the output says which).
use crate::data::loader::Batch;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::infer::predict;
use crate::model::{L2_WEIGHTS, Model, ModelConfig};
use crate::ops::batchnorm::{self, BnParams};
use crate::ops::{conv, elementwise, loss, optim, pool, resize};
use crate::train::train_step;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Instant;

/// The shape the conv-family cases use: batch, in/out channels, spatial size.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

pub struct Measurement {
    pub name: String,
    /// The variant that ran ("" for ops with one kernel).
    pub variant: String,
    pub ms: f64,
    /// (amount, unit): GFLOP/s or GB/s.
    pub rate: f64,
    pub unit: &'static str,
    /// The same case with the first (gather/rows) kernels, for the
    /// convolution family: (ms, rate).
    pub baseline: Option<(f64, f64)>,
    /// The same convolution on the CPU (im2col + multithreaded SGEMM):
    /// (ms, rate).
    pub cpu: Option<(f64, f64)>,
    /// The median over rounds of this rate as a share of the 3x3
    /// forward's (its fastest choice) in the same round, for the
    /// compute-bound cases when the 3x3 forward was timed.
    pub share_of_3x3_fwd: Option<f64>,
}

/// Which kernel a convolution case runs.
#[derive(Clone, Copy, Debug)]
pub enum Choice {
    /// What the engine picks for this shape (tuning file or rules).
    Chosen,
    Conv(conv::ConvVariant),
    Wgrad(conv::WgradVariant),
}

/// The variant family of a case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Produce,
    Wgrad,
    Single,
}

type Op<'a> = Box<dyn Fn(Choice) -> Result<()> + 'a>;

struct Case<'a> {
    name: String,
    /// FLOPs (2 per multiply-add) or bytes moved, per run.
    work: f64,
    flops: bool,
    family: Family,
    /// (M, K, N) of the GEMM a CPU framework would run for this case.
    gemm: Option<(usize, usize, usize)>,
    /// The convolution's kernel taps (k x k), which bound the weight
    /// gradient's candidates on GPUs.
    taps: usize,
    run: Op<'a>,
}

impl Case<'_> {
    /// The choices to time: the chosen one, then the baseline (and every
    /// variant when asked).
    fn choices(&self, gpu: &Gpu, all: bool) -> Vec<Choice> {
        match self.family {
            Family::Single => vec![Choice::Chosen],
            Family::Produce if all => conv::ConvVariant::with_rivals(gpu, self.taps)
                .into_iter()
                .map(Choice::Conv)
                .collect(),
            Family::Wgrad if all => conv::WgradVariant::candidates(gpu, self.taps)
                .into_iter()
                .map(Choice::Wgrad)
                .collect(),
            Family::Produce => vec![Choice::Chosen, Choice::Conv(conv::ConvVariant::Gather)],
            Family::Wgrad => vec![Choice::Chosen, Choice::Wgrad(conv::WgradVariant::Rows)],
        }
    }
}

fn random(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    gpu.upload(shape, &v)
}

/// The tensors the cases read and write, made once per run.
struct Inputs {
    x: Tensor,
    dy: Tensor,
    dy2: Tensor,
    dy_half: Tensor,
    target: Tensor,
    w3: Tensor,
    w1: Tensor,
    wt: Tensor,
    b: Tensor,
    ones: Tensor,
    zeros: Tensor,
    dw3: Tensor,
    dwt: Tensor,
    dgamma: Tensor,
    dbeta: Tensor,
    m: Tensor,
    v: Tensor,
}

impl Inputs {
    fn new(gpu: &Gpu, Shape { n, c, h, w }: Shape) -> Result<Self> {
        Ok(Inputs {
            x: random(gpu, &[n, c, h, w], 1)?,
            w3: random(gpu, &[c, c, 3, 3], 2)?,
            w1: random(gpu, &[c, c, 1, 1], 3)?,
            wt: random(gpu, &[c, c, 4, 4], 4)?,
            b: random(gpu, &[c], 5)?,
            dy: random(gpu, &[n, c, h, w], 6)?,
            dy2: random(gpu, &[n, c, h * 2, w * 2], 7)?,
            dy_half: random(gpu, &[n, c, h.div_ceil(2), w.div_ceil(2)], 8)?,
            target: random(gpu, &[n, c, h, w], 9)?,
            ones: gpu.upload(&[c], &vec![1.0; c])?,
            zeros: gpu.zeros(&[c])?,
            dw3: gpu.empty(&[c, c, 3, 3])?,
            dwt: gpu.empty(&[c, c, 4, 4])?,
            dgamma: gpu.empty(&[c])?,
            dbeta: gpu.empty(&[c])?,
            m: gpu.zeros(&[c, c, 3, 3])?,
            v: gpu.zeros(&[c, c, 3, 3])?,
        })
    }

    fn bn(&self) -> BnParams<'_> {
        BnParams {
            gamma: &self.ones,
            beta: &self.zeros,
            running_mean: &self.zeros,
            running_var: &self.ones,
        }
    }
}

fn case<'a>(
    name: impl Into<String>,
    work: f64,
    flops: bool,
    run: impl Fn() -> Result<()> + 'a,
) -> Case<'a> {
    Case {
        name: name.into(),
        work,
        flops,
        family: Family::Single,
        gemm: None,
        taps: 0,
        run: Box::new(move |_| run()),
    }
}

/// The work of a convolution case: FLOPs and the equivalent GEMM.
struct ConvWork {
    flops: f64,
    gemm: (usize, usize, usize),
    taps: usize,
}

fn conv_case<'a>(
    name: impl Into<String>,
    work: ConvWork,
    run: impl Fn(Option<conv::ConvVariant>) -> Result<()> + 'a,
) -> Case<'a> {
    Case {
        name: name.into(),
        work: work.flops,
        flops: true,
        family: Family::Produce,
        gemm: Some(work.gemm),
        taps: work.taps,
        run: Box::new(move |c| match c {
            Choice::Conv(v) => run(Some(v)),
            _ => run(None),
        }),
    }
}

fn wgrad_case<'a>(
    name: impl Into<String>,
    work: ConvWork,
    run: impl Fn(Option<conv::WgradVariant>) -> Result<()> + 'a,
) -> Case<'a> {
    Case {
        name: name.into(),
        work: work.flops,
        flops: true,
        family: Family::Wgrad,
        gemm: Some(work.gemm),
        taps: work.taps,
        run: Box::new(move |c| match c {
            Choice::Wgrad(v) => run(Some(v)),
            _ => run(None),
        }),
    }
}

fn cases<'a>(gpu: &'a Gpu, s: Shape, t: &'a Inputs, filter: &str) -> Vec<Case<'a>> {
    let Shape { n, c, h, w } = s;
    let act = (n * c * h * w) as f64;
    // FLOPs and the (M, K, N) of the equivalent GEMM for `out` outputs
    // (or inputs, for the transposed passes) of a k x k kernel.
    let conv_work = |k: usize, out: f64| ConvWork {
        flops: 2.0 * out * (c * k * k) as f64,
        gemm: (c, c * k * k, out as usize / c),
        taps: k * k,
    };
    let half = (n * c * h.div_ceil(2) * w.div_ceil(2)) as f64;
    let bytes = |tensors: f64| tensors * act * 4.0;
    let gb = false;
    let all = vec![
        conv_case(
            format!("conv3x3 fwd {n}x{c}x{h}x{w} -> {c}"),
            conv_work(3, act),
            |v| conv::conv2d_with(gpu, &t.x, &t.w3, Some(&t.b), 1, 1, false, v).map(drop),
        ),
        conv_case("conv3x3 bwd input", conv_work(3, act), move |v| {
            conv::conv2d_backward_input_with(gpu, &t.dy, &t.w3, (h, w), 1, 1, v).map(drop)
        }),
        wgrad_case("conv3x3 bwd weight", conv_work(3, act), move |v| {
            conv::conv2d_backward_weight_with(gpu, &t.dy, &t.x, &t.dw3, 1, 1, false, v)
        }),
        conv_case("conv3x3 dil2 fwd", conv_work(3, act), move |v| {
            conv::conv2d_with(gpu, &t.x, &t.w3, Some(&t.b), 1, 2, false, v).map(drop)
        }),
        conv_case("conv3x3 s2 fwd", conv_work(3, half), move |v| {
            conv::conv2d_with(gpu, &t.x, &t.w3, Some(&t.b), 2, 1, false, v).map(drop)
        }),
        conv_case("conv3x3 s2 bwd input", conv_work(3, half), move |v| {
            conv::conv2d_backward_input_with(gpu, &t.dy_half, &t.w3, (h, w), 2, 1, v).map(drop)
        }),
        conv_case("conv1x1 fwd", conv_work(1, act), move |v| {
            conv::conv2d_with(gpu, &t.x, &t.w1, Some(&t.b), 1, 1, false, v).map(drop)
        }),
        conv_case("tconv4x4 s2 fwd", conv_work(4, act), move |v| {
            conv::tconv2d_with(gpu, &t.x, &t.wt, Some(&t.b), 2, false, v).map(drop)
        }),
        conv_case("tconv4x4 s2 bwd input", conv_work(4, act), move |v| {
            conv::tconv2d_backward_input_with(gpu, &t.dy2, &t.wt, 2, v).map(drop)
        }),
        wgrad_case("tconv4x4 s2 bwd weight", conv_work(4, act), move |v| {
            conv::tconv2d_backward_weight_with(gpu, &t.dy2, &t.x, &t.dwt, 2, false, v)
        }),
        conv_case("tconv4x4 s1 fwd", conv_work(4, act), move |v| {
            conv::tconv2d_with(gpu, &t.x, &t.wt, Some(&t.b), 1, false, v).map(drop)
        }),
        case("maxpool3x3 s2 fwd", bytes(1.25), gb, move || {
            pool::maxpool2d(gpu, &t.x, 3, 2).map(drop)
        }),
        case("maxpool3x3 s2 bwd", bytes(2.25), gb, move || {
            pool::maxpool2d_backward(gpu, &t.x, &t.dy_half, 3, 2).map(drop)
        }),
        case("resize bilinear x2 fwd", bytes(5.0), gb, move || {
            resize::resize(gpu, &t.x, 2 * h, 2 * w, resize::Mode::Bilinear).map(drop)
        }),
        case("resize bilinear x2 bwd", bytes(5.0), gb, move || {
            resize::resize_backward(gpu, &t.dy2, h, w, resize::Mode::Bilinear).map(drop)
        }),
        case("batchnorm train fwd", bytes(4.0), gb, move || {
            batchnorm::batchnorm_train(gpu, &t.x, &t.bn(), None).map(drop)
        }),
        case("batchnorm bwd", bytes(7.0), gb, move || {
            let (_, stats) = batchnorm::batchnorm_train(gpu, &t.x, &t.bn(), None)?;
            batchnorm::batchnorm_backward(
                gpu, &t.x, &t.dy, None, &t.ones, &stats, &t.dgamma, &t.dbeta, false,
            )
            .map(drop)
        }),
        case("batchnorm+relu train fwd", bytes(4.0), gb, move || {
            let then = batchnorm::Then::Relu;
            batchnorm::batchnorm_train_then(gpu, &t.x, &t.bn(), None, then).map(drop)
        }),
        // Its forward (4 tensors), the sums (dy, y, x), then dx from x, dy, y.
        case("batchnorm+relu bwd", bytes(11.0), gb, move || {
            let then = batchnorm::Then::Relu;
            let out = batchnorm::batchnorm_train_then(gpu, &t.x, &t.bn(), None, then)?;
            batchnorm::batchnorm_backward(
                gpu,
                &t.x,
                &t.dy,
                Some(&out.y),
                &t.ones,
                &out.stats,
                &t.dgamma,
                &t.dbeta,
                false,
            )
            .map(drop)
        }),
        case("relu", bytes(2.0), gb, move || {
            elementwise::relu(gpu, &t.x).map(drop)
        }),
        case("add_relu", bytes(3.0), gb, move || {
            elementwise::add_relu(gpu, &t.x, &t.dy).map(drop)
        }),
        case("bce loss fwd (mean)", bytes(3.0), gb, move || {
            loss::bce_with_logits(gpu, &t.x, &t.target, 15.0).map(drop)
        }),
        case(
            format!("adam step ({} params)", c * c * 9),
            (c * c * 9 * 4 * 7) as f64,
            gb,
            || {
                optim::adam_step(
                    gpu,
                    &optim::Adam::default(),
                    1,
                    &t.w3,
                    &t.dw3,
                    &t.m,
                    &t.v,
                    0.0,
                    1.0,
                )
            },
        ),
    ];
    all.into_iter()
        .filter(|c| filter.split(',').any(|f| c.name.contains(f)))
        .collect()
}

/// What a kernel run times: the cases whose name contains `filter` (or
/// one of its comma-separated texts), each
/// choice `iters` runs after one warm-up run (which also compiles its
/// pipelines), in `rounds` rounds that each time every choice of every
/// case once; every variant of the convolution cases with `all` (else the
/// chosen one and the baseline); the CPU reference with `with_cpu`.
pub struct Plan<'a> {
    pub iters: usize,
    pub rounds: usize,
    pub filter: &'a str,
    pub all: bool,
    pub with_cpu: bool,
}

/// The case whose rate the issue-style shares compare against.
const REFERENCE_CASE: &str = "conv3x3 fwd ";

/// One case's choice and the seconds of each of its rounds.
struct Timed {
    case: usize,
    choice: Choice,
    variant: String,
    /// Whether the output shows it (every choice, or the chosen one).
    shown: bool,
    rounds: Vec<f64>,
}

/// Times the cases of `plan`. Each choice's time is its median round:
/// on a shared machine a kernel's time moves from second to second, and
/// rounds that go through every case and choice spread that over all of
/// them, so that rates within one run compare.
pub fn run(gpu: &Gpu, shape: Shape, plan: &Plan) -> Result<Vec<Measurement>> {
    let inputs = Inputs::new(gpu, shape)?;
    let cases = cases(gpu, shape, &inputs, plan.filter);
    let mut timed = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for (k, choice) in case.choices(gpu, plan.all).into_iter().enumerate() {
            (case.run)(choice)?;
            timed.push(Timed {
                case: i,
                choice,
                variant: variant_name(gpu, case, choice),
                shown: plan.all || k == 0,
                rounds: Vec::new(),
            });
        }
    }
    for _ in 0..plan.rounds.max(1) {
        for t in &mut timed {
            let case = &cases[t.case];
            t.rounds
                .push(gpu.time(plan.iters, &|| (case.run)(t.choice))?);
        }
    }
    let reference = reference_rounds(&cases, &timed);
    let mut out = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mine: Vec<&Timed> = timed.iter().filter(|t| t.case == i).collect();
        out.extend(measure(case, &mine, reference.as_ref(), plan));
    }
    Ok(out)
}

/// The 3x3 forward's work and the rounds of its fastest shown choice (the
/// engine's own without `all`), if it was timed.
struct Reference<'t> {
    work: f64,
    rounds: &'t [f64],
}

fn reference_rounds<'t>(cases: &[Case], timed: &'t [Timed]) -> Option<Reference<'t>> {
    timed
        .iter()
        .filter(|t| t.shown && cases[t.case].name.starts_with(REFERENCE_CASE))
        .min_by(|a, b| median(a.rounds.clone()).total_cmp(&median(b.rounds.clone())))
        .map(|t| Reference {
            work: cases[t.case].work,
            rounds: &t.rounds,
        })
}

/// A case's measurements from its choices' rounds.
fn measure(
    case: &Case,
    timed: &[&Timed],
    reference: Option<&Reference>,
    plan: &Plan,
) -> Vec<Measurement> {
    let rate = |secs: f64| case.work / secs * 1e-9;
    let unit = if case.flops { "GFLOP/s" } else { "GB/s" };
    let secs: Vec<f64> = timed.iter().map(|t| median(t.rounds.clone())).collect();
    let baseline = (!plan.all && secs.len() > 1).then(|| (secs[1] * 1e3, rate(secs[1])));
    let cpu = case.gemm.filter(|_| plan.with_cpu).map(|(m, k, n)| {
        let secs = cpu_reference_secs(m, k, n, plan.iters);
        (secs * 1e3, rate(secs))
    });
    timed
        .iter()
        .zip(&secs)
        .filter(|(t, _)| t.shown)
        .map(|(t, &secs)| Measurement {
            name: case.name.clone(),
            variant: t.variant.clone(),
            ms: secs * 1e3,
            rate: rate(secs),
            unit,
            baseline,
            cpu,
            share_of_3x3_fwd: reference
                .filter(|_| case.flops)
                .map(|r| share_of_reference(case, &t.rounds, r)),
        })
        .collect()
}

/// The median over rounds of this choice's rate as a share of the 3x3
/// forward's rate in the same round.
fn share_of_reference(case: &Case, rounds: &[f64], reference: &Reference) -> f64 {
    let shares = rounds
        .iter()
        .zip(reference.rounds)
        .map(|(&secs, &reference_secs)| (case.work / secs) / (reference.work / reference_secs))
        .collect();
    median(shares)
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    match v.len() % 2 {
        0 => (v[m - 1] + v[m]) / 2.0,
        _ => v[m],
    }
}

fn variant_name(gpu: &Gpu, case: &Case, choice: Choice) -> String {
    match (choice, case.family) {
        (Choice::Conv(v), _) => v.name(),
        (Choice::Wgrad(v), _) => v.name(),
        (Choice::Chosen, Family::Single) => String::new(),
        (Choice::Chosen, _) => gpu.variants().last_used(),
    }
}

/// What `engine bench --model` measures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelBench {
    pub adapter: String,
    pub width: f32,
    pub batch: usize,
    pub train_size: usize,
    pub infer_size: usize,
    /// Wall time of one training step (forward, loss, backward, Adam, the
    /// step's one readback), mean over the timed steps.
    pub train_step_ms: f64,
    /// Wall time of one inference (upload, forward with folded batch norm,
    /// sigmoid, readback), mean over the timed runs.
    pub infer_ms: f64,
    /// GPU time of one training step: the sum of its dispatches'
    /// timestamps in a profiled step (0 without timestamp queries). The
    /// rest of the wall time is recording, submission and waiting.
    pub train_gpu_ms: f64,
    /// The same for one inference.
    pub infer_gpu_ms: f64,
    /// Peak live tensor memory during the training steps (the pool's
    /// count; inference needs less).
    pub peak_mib: f64,
    pub dispatches_per_step: f64,
    pub submits_per_step: f64,
    pub dispatches_per_infer: f64,
    /// Share of the training step's GPU time per kernel family (empty
    /// without timestamp queries).
    pub shares: BTreeMap<String, f64>,
    /// The same for one inference.
    pub infer_shares: BTreeMap<String, f64>,
    /// Share of the training step's GPU time per kernel (entry point, or
    /// the op's name for generated kernels): where the families' time goes.
    pub kernel_shares: BTreeMap<String, f64>,
    /// The same for one inference.
    pub infer_kernel_shares: BTreeMap<String, f64>,
}

/// The kernel family a profile label belongs to.
fn family(label: &str) -> &'static str {
    match label {
        "conv2d" => "conv fwd",
        "conv2d_backward_input" => "conv bwd-data",
        "conv2d_backward_weight" | "tconv2d_backward_weight" => "wgrad",
        "tconv2d" | "tconv2d_backward_input" => "tconv",
        "batchnorm" | "fold" => "batch norm",
        "pool" => "pool",
        "resize" => "resize",
        "elementwise" | "loss" => "elementwise",
        _ => "other",
    }
}

/// Shares of the total GPU time per kernel family and per kernel, from
/// the profile's "op|kernel" labels.
type Shares = (BTreeMap<String, f64>, BTreeMap<String, f64>, f64);

/// Shares per family and per kernel, and the total GPU milliseconds.
fn shares(times: BTreeMap<String, f64>) -> Shares {
    let total: f64 = times.values().sum::<f64>().max(1e-12);
    let (mut fams, mut kernels) = (BTreeMap::new(), BTreeMap::new());
    for (label, t) in times {
        let (op, kernel) = label.split_once('|').unwrap_or((&label, &label));
        *fams.entry(family(op).to_owned()).or_insert(0.0) += t / total;
        *kernels.entry(kernel.to_owned()).or_insert(0.0) += t / total;
    }
    (fams, kernels, total * 1e3)
}

/// A synthetic batch: noise with a bright disk as the lesion in each image.
fn synthetic_batch(n: usize, size: usize) -> Batch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut images = Vec::with_capacity(n * size * size);
    let mut masks = Vec::with_capacity(n * size * size);
    let r2 = (size as f32 / 8.0).powi(2);
    for _ in 0..n {
        let (cy, cx) = (
            rng.random_range(0.3..0.7) * size as f32,
            rng.random_range(0.3..0.7) * size as f32,
        );
        for i in 0..size * size {
            let (y, x) = ((i / size) as f32, (i % size) as f32);
            let lesion = (y - cy).powi(2) + (x - cx).powi(2) < r2;
            images.push(rng.random_range(-0.5..0.2) + if lesion { 0.3 } else { 0.0 });
            masks.push(lesion as u8 as f32);
        }
    }
    Batch {
        n,
        size,
        images,
        masks,
        ids: Vec::new(),
    }
}

/// Times whole-network training steps and inferences on synthetic data.
pub fn model(
    gpu: &Gpu,
    width: f32,
    batch: usize,
    train_size: usize,
    infer_size: usize,
    iters: usize,
) -> anyhow::Result<ModelBench> {
    let cfg = ModelConfig {
        width,
        ..ModelConfig::default()
    };
    let model = Model::new(gpu, cfg, 0)?;
    let adam = optim::Adam::default();
    let l2 = L2_WEIGHTS
        .iter()
        .map(|n| Ok(model.get(n)?.value.clone()))
        .collect::<crate::Result<Vec<Tensor>>>()?;
    let b = synthetic_batch(batch, train_size);
    let mut step = 0;
    // As `engine train` runs: the rules' long-run kernels.
    let long_run = gpu.variants().long_run();
    gpu.variants().set_long_run(true);
    // 15: engine train's default --pos-weight.
    let mut train_once = || train_step(gpu, &model, 15.0, &adam, 1e-3, &mut step, &b, 1, &l2);
    train_once()?; // compiles every pipeline
    gpu.pool().reset_peak();
    let (d0, s0) = gpu.counters();
    let start = Instant::now();
    for _ in 0..iters {
        train_once()?;
    }
    let train_step_ms = start.elapsed().as_secs_f64() * 1e3 / iters as f64;
    let (d1, s1) = gpu.counters();
    let peak_mib = gpu.pool().stats().2 as f64 / (1 << 20) as f64;
    let profiled = gpu.timestamps;
    let mut train_shares: Shares = Default::default();
    if profiled {
        gpu.profile_start()?;
        train_once()?;
        train_shares = shares(gpu.profile_finish()?);
    }
    // Inference as `engine infer` runs it: batch norm folded at load time,
    // the rules' first-run kernels.
    gpu.variants().set_long_run(long_run);
    let mut model = model;
    model.freeze(gpu)?;
    let img = synthetic_batch(1, infer_size).images;
    predict(gpu, &model, &img, 1, infer_size, infer_size)?;
    let (d2, _) = gpu.counters();
    let start = Instant::now();
    for _ in 0..iters {
        predict(gpu, &model, &img, 1, infer_size, infer_size)?;
    }
    let infer_ms = start.elapsed().as_secs_f64() * 1e3 / iters as f64;
    let (d3, _) = gpu.counters();
    let mut infer_shares: Shares = Default::default();
    if profiled {
        gpu.profile_start()?;
        predict(gpu, &model, &img, 1, infer_size, infer_size)?;
        infer_shares = shares(gpu.profile_finish()?);
    }
    Ok(ModelBench {
        adapter: gpu.info.name.clone(),
        width,
        batch,
        train_size,
        infer_size,
        train_step_ms,
        infer_ms,
        train_gpu_ms: train_shares.2,
        infer_gpu_ms: infer_shares.2,
        peak_mib,
        dispatches_per_step: (d1 - d0) as f64 / iters as f64,
        submits_per_step: (s1 - s0) as f64 / iters as f64,
        dispatches_per_infer: (d3 - d2) as f64 / iters as f64,
        shares: train_shares.0,
        infer_shares: infer_shares.0,
        kernel_shares: train_shares.1,
        infer_kernel_shares: infer_shares.1,
    })
}

/// Seconds per run of the same convolution on this machine's CPU: im2col
/// (or its adjoint) and one multithreaded SGEMM (`matrixmultiply`, the
/// GEMM behind ndarray), the way CPU frameworks lower a convolution. For a
/// case of M x K x N multiply-adds; `cols` elements of patch matrix are
/// gathered or scattered.
pub fn cpu_reference_secs(m: usize, k: usize, n: usize, iters: usize) -> f64 {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let src: Vec<f32> = (0..k * n / 9 + 1)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut cols = vec![0f32; k * n];
    let mut c = vec![0f32; m * n];
    let run = |cols: &mut [f32], c: &mut [f32]| {
        // im2col: every patch element copied from the (smaller) source.
        let len = src.len();
        for (i, v) in cols.iter_mut().enumerate() {
            *v = src[(i * 7) % len];
        }
        // SAFETY: the slices hold m*k, k*n and m*n elements, row-major.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                cols.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    };
    run(&mut cols, &mut c);
    let start = Instant::now();
    for _ in 0..iters {
        run(&mut cols, &mut c);
    }
    start.elapsed().as_secs_f64() / iters as f64
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_takes_the_middle_round() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
    }
}

//! `engine bench`: times each kernel at a given shape and prints time,
//! GFLOP/s (compute-bound ops) or GB/s (memory-bound ops), and the adapter.
//! Timestamp queries time the GPU work where the adapter has them; else the
//! wall clock of submit-and-wait is used (and the output says which).
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops::batchnorm::{self, BnParams};
use crate::ops::{conv, elementwise, loss, optim, pool, resize};
use rand::{Rng, SeedableRng};
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
    pub ms: f64,
    /// (amount, unit): GFLOP/s or GB/s.
    pub rate: f64,
    pub unit: &'static str,
}

type Op<'a> = Box<dyn Fn() -> Result<()> + 'a>;

struct Case<'a> {
    name: String,
    /// FLOPs (2 per multiply-add) or bytes moved, per run.
    work: f64,
    flops: bool,
    run: Op<'a>,
}

fn random(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    gpu.upload(shape, &v)
}

fn cases<'a>(gpu: &'a Gpu, s: Shape, filter: &str) -> Result<Vec<Case<'a>>> {
    let Shape { n, c, h, w } = s;
    let x = random(gpu, &[n, c, h, w], 1)?;
    let w3 = random(gpu, &[c, c, 3, 3], 2)?;
    let w1 = random(gpu, &[c, c, 1, 1], 3)?;
    let wt = random(gpu, &[c, c, 4, 4], 4)?;
    let b = random(gpu, &[c], 5)?;
    let dy = random(gpu, &[n, c, h, w], 6)?;
    let dy2 = random(gpu, &[n, c, h * 2, w * 2], 7)?;
    let (hs, ws) = (h.div_ceil(2), w.div_ceil(2));
    let dy_half = random(gpu, &[n, c, hs, ws], 8)?;
    let ones = gpu.upload(&[c], &vec![1.0; c])?;
    let zeros = gpu.zeros(&[c])?;
    let dw3 = gpu.empty(&[c, c, 3, 3])?;
    let dwt = gpu.empty(&[c, c, 4, 4])?;
    let dg = gpu.empty(&[c])?;
    let db = gpu.empty(&[c])?;
    let t = random(gpu, &[n, c, h, w], 9)?;
    let (m, v) = (gpu.zeros(&[c, c, 3, 3])?, gpu.zeros(&[c, c, 3, 3])?);
    let act = (n * c * h * w) as f64;
    let conv_flops = |k: usize, out: f64| 2.0 * out * (c * k * k) as f64;
    let bytes = |tensors: f64| tensors * act * 4.0;
    let all: Vec<Case<'a>> = vec![
        Case {
            name: format!("conv3x3 fwd {n}x{c}x{h}x{w} -> {c}"),
            work: conv_flops(3, act),
            flops: true,
            run: Box::new({
                let (x, w3, b) = (x.clone(), w3.clone(), b.clone());
                move || conv::conv2d(gpu, &x, &w3, &b, 1, 1).map(drop)
            }),
        },
        Case {
            name: "conv3x3 bwd input".into(),
            work: conv_flops(3, act),
            flops: true,
            run: Box::new({
                let (dy, w3) = (dy.clone(), w3.clone());
                move || conv::conv2d_backward_input(gpu, &dy, &w3, (h, w), 1, 1).map(drop)
            }),
        },
        Case {
            name: "conv3x3 bwd weight".into(),
            work: conv_flops(3, act),
            flops: true,
            run: Box::new({
                let (dy, x, dw3) = (dy.clone(), x.clone(), dw3.clone());
                move || conv::conv2d_backward_weight(gpu, &dy, &x, &dw3, 1, 1, false)
            }),
        },
        Case {
            name: "conv3x3 dil2 fwd".into(),
            work: conv_flops(3, act),
            flops: true,
            run: Box::new({
                let (x, w3, b) = (x.clone(), w3.clone(), b.clone());
                move || conv::conv2d(gpu, &x, &w3, &b, 1, 2).map(drop)
            }),
        },
        Case {
            name: "conv3x3 s2 fwd".into(),
            work: conv_flops(3, (n * c * hs * ws) as f64),
            flops: true,
            run: Box::new({
                let (x, w3, b) = (x.clone(), w3.clone(), b.clone());
                move || conv::conv2d(gpu, &x, &w3, &b, 2, 1).map(drop)
            }),
        },
        Case {
            name: "conv1x1 fwd".into(),
            work: conv_flops(1, act),
            flops: true,
            run: Box::new({
                let (x, w1, b) = (x.clone(), w1.clone(), b.clone());
                move || conv::conv2d(gpu, &x, &w1, &b, 1, 1).map(drop)
            }),
        },
        Case {
            name: "tconv4x4 s2 fwd".into(),
            work: 2.0 * act * (c * 16) as f64,
            flops: true,
            run: Box::new({
                let (x, wt, b) = (x.clone(), wt.clone(), b.clone());
                move || conv::tconv2d(gpu, &x, &wt, &b, 2).map(drop)
            }),
        },
        Case {
            name: "tconv4x4 s2 bwd input".into(),
            work: 2.0 * act * (c * 16) as f64,
            flops: true,
            run: Box::new({
                let (dy2, wt) = (dy2.clone(), wt.clone());
                move || conv::tconv2d_backward_input(gpu, &dy2, &wt, 2).map(drop)
            }),
        },
        Case {
            name: "tconv4x4 s2 bwd weight".into(),
            work: 2.0 * act * (c * 16) as f64,
            flops: true,
            run: Box::new({
                let (dy2, x, dwt) = (dy2.clone(), x.clone(), dwt.clone());
                move || conv::tconv2d_backward_weight(gpu, &dy2, &x, &dwt, 2, false)
            }),
        },
        Case {
            name: "maxpool3x3 s2 fwd".into(),
            work: bytes(1.25),
            flops: false,
            run: Box::new({
                let x = x.clone();
                move || pool::maxpool2d(gpu, &x, 3, 2).map(drop)
            }),
        },
        Case {
            name: "maxpool3x3 s2 bwd".into(),
            work: bytes(2.25),
            flops: false,
            run: Box::new({
                let (x, dy_half) = (x.clone(), dy_half.clone());
                move || pool::maxpool2d_backward(gpu, &x, &dy_half, 3, 2).map(drop)
            }),
        },
        Case {
            name: "resize bilinear x2 fwd".into(),
            work: bytes(5.0),
            flops: false,
            run: Box::new({
                let x = x.clone();
                move || resize::resize(gpu, &x, 2 * h, 2 * w, resize::Mode::Bilinear).map(drop)
            }),
        },
        Case {
            name: "resize bilinear x2 bwd".into(),
            work: bytes(5.0),
            flops: false,
            run: Box::new({
                let dy2 = dy2.clone();
                move || resize::resize_backward(gpu, &dy2, h, w, resize::Mode::Bilinear).map(drop)
            }),
        },
        Case {
            name: "batchnorm train fwd".into(),
            work: bytes(4.0),
            flops: false,
            run: Box::new({
                let (x, ones, zeros) = (x.clone(), ones.clone(), zeros.clone());
                move || {
                    let p = BnParams {
                        gamma: &ones,
                        beta: &zeros,
                        running_mean: &zeros,
                        running_var: &ones,
                    };
                    batchnorm::batchnorm_train(gpu, &x, &p, false).map(drop)
                }
            }),
        },
        Case {
            name: "batchnorm bwd".into(),
            work: bytes(7.0),
            flops: false,
            run: Box::new({
                let (x, dy, ones, zeros, dg, db) = (
                    x.clone(),
                    dy.clone(),
                    ones.clone(),
                    zeros.clone(),
                    dg.clone(),
                    db.clone(),
                );
                move || {
                    let p = BnParams {
                        gamma: &ones,
                        beta: &zeros,
                        running_mean: &zeros,
                        running_var: &ones,
                    };
                    let (_, stats) = batchnorm::batchnorm_train(gpu, &x, &p, false)?;
                    batchnorm::batchnorm_backward(gpu, &x, &dy, &ones, &stats, &dg, &db, false)
                        .map(drop)
                }
            }),
        },
        Case {
            name: "relu".into(),
            work: bytes(2.0),
            flops: false,
            run: Box::new({
                let x = x.clone();
                move || elementwise::relu(gpu, &x).map(drop)
            }),
        },
        Case {
            name: "add_relu".into(),
            work: bytes(3.0),
            flops: false,
            run: Box::new({
                let (x, dy) = (x.clone(), dy.clone());
                move || elementwise::add_relu(gpu, &x, &dy).map(drop)
            }),
        },
        Case {
            name: "bce loss fwd (mean)".into(),
            work: bytes(3.0),
            flops: false,
            run: Box::new({
                let (x, t) = (x.clone(), t.clone());
                move || loss::bce_with_logits(gpu, &x, &t, 15.0).map(drop)
            }),
        },
        Case {
            name: format!("adam step ({} params)", c * c * 9),
            work: (c * c * 9 * 4 * 7) as f64,
            flops: false,
            run: Box::new({
                let (w3, dw3, m, v) = (w3.clone(), dw3.clone(), m.clone(), v.clone());
                move || {
                    optim::adam_step(gpu, &optim::Adam::default(), 1, &w3, &dw3, &m, &v, 0.0, 1.0)
                }
            }),
        },
    ];
    Ok(all
        .into_iter()
        .filter(|c| c.name.contains(filter))
        .collect())
}

/// Times every case whose name contains `filter`, `iters` runs each after
/// one warm-up run (which also compiles the pipelines).
pub fn run(gpu: &Gpu, shape: Shape, iters: usize, filter: &str) -> Result<Vec<Measurement>> {
    let timer = gpu.timestamps.then(|| {
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench resolve"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        (set, resolve)
    });
    let mut out = Vec::new();
    for case in cases(gpu, shape, filter)? {
        (case.run)()?;
        gpu.flush();
        gpu.wait()?;
        let start = Instant::now();
        if let Some((set, _)) = &timer {
            gpu.timestamp(set, 0, true);
        }
        for _ in 0..iters {
            (case.run)()?;
        }
        let secs = if let Some((set, resolve)) = &timer {
            gpu.timestamp(set, 1, false);
            gpu.resolve_timestamps(set, 2, resolve);
            let raw = gpu.read_raw(resolve, 16)?;
            let ticks: &[u64] = bytemuck::cast_slice(&raw);
            ticks[1].saturating_sub(ticks[0]) as f64
                * gpu.queue.get_timestamp_period() as f64
                * 1e-9
        } else {
            gpu.flush();
            gpu.wait()?;
            start.elapsed().as_secs_f64()
        };
        let per = secs / iters as f64;
        out.push(Measurement {
            name: case.name,
            ms: per * 1e3,
            rate: case.work / per * 1e-9,
            unit: if case.flops { "GFLOP/s" } else { "GB/s" },
        });
    }
    Ok(out)
}

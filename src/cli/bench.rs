//! `engine devices`, `engine bench` and `engine tune`.
use super::{AdapterArg, check_at_least, check_width};
use crate::gpu::{Gpu, list_adapters};
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    /// Batch size.
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    /// Channels (in and out) of the conv-family cases.
    #[arg(long, default_value_t = 64)]
    pub channels: usize,
    /// Spatial size (height = width).
    #[arg(long, default_value_t = 80)]
    pub size: usize,
    /// Timed runs per kernel, after one warm-up run.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Rounds of `--iters` runs, each going through every case and variant
    /// once; each one's median round is shown, and each convolution's
    /// median share of the 3x3 forward's rate in the same rounds (for
    /// noisy machines).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Only the cases whose name contains this text, or one of several
    /// separated by commas ("conv3x3 fwd,conv1x1": a kernel and the 3x3
    /// forward its share is measured against).
    #[arg(long, default_value = "")]
    pub filter: String,
    /// Time every variant of the convolution cases (not only the chosen
    /// one and the first-generation baseline).
    #[arg(long)]
    pub all_variants: bool,
    /// Leave out the CPU reference column (im2col + multithreaded SGEMM).
    #[arg(long)]
    pub no_cpu: bool,
    /// Time the variants the rules pick for training (`engine train`),
    /// which may compile longer than those for a first scan.
    #[arg(long)]
    pub long_run: bool,
    /// Time the whole network instead: training steps (forward, loss,
    /// backward, Adam) and inferences, with per-family GPU time shares.
    #[arg(long)]
    pub model: bool,
    #[command(flatten)]
    pub net: NetShape,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// With --model: first time the same network with the first-generation
    /// kernels and no fusion, for a before/after in one run.
    #[arg(long)]
    pub baseline: bool,
}

/// The network and sizes `bench --model` and `tune` run.
#[derive(Debug, Args, Clone)]
pub struct NetShape {
    /// Width multiplier of the network.
    #[arg(long, default_value_t = 0.25)]
    pub width: f32,
    /// Training crop size (square).
    #[arg(long = "train-size", default_value_t = 320)]
    pub train_size: usize,
    /// Training batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Inference image size (square).
    #[arg(long = "infer-size", default_value_t = 640)]
    pub infer_size: usize,
}

impl NetShape {
    /// The checks every command taking these flags makes (bad input).
    fn check(&self) -> anyhow::Result<()> {
        check_width(self.width)?;
        check_at_least("--train-size", self.train_size, 32)?;
        check_at_least("--infer-size", self.infer_size, 32)?;
        check_at_least("--batch", self.batch, 1)
    }
}

#[derive(Debug, Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub adapter: AdapterArg,
    #[command(flatten)]
    pub net: NetShape,
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Print a JSON array (one object per adapter) instead of the list.
    #[arg(long)]
    pub json: bool,
}

/// `engine devices`.
pub fn devices(args: DevicesArgs) -> anyhow::Result<()> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        anyhow::bail!(crate::EngineError::NoAdapter {
            hint: String::new()
        });
    }
    if args.json {
        let all: Vec<_> = adapters.iter().map(adapter_json).collect();
        println!("{}", serde_json::Value::Array(all));
        return Ok(());
    }
    for a in adapters {
        let l = &a.limits;
        println!(
            "[{}] {} ({:?}, {:?}, driver {} {})",
            a.index,
            a.info.name,
            a.info.device_type,
            a.info.backend,
            a.info.driver,
            a.info.driver_info
        );
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, workgroup storage {} KiB, invocations/workgroup {}, timestamps {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            if a.timestamps { "yes" } else { "no" }
        );
    }
    Ok(())
}

/// One adapter of `engine devices --json`.
fn adapter_json(a: &crate::gpu::AdapterSummary) -> serde_json::Value {
    let l = &a.limits;
    serde_json::json!({
        "index": a.index,
        "name": a.info.name,
        "device_type": format!("{:?}", a.info.device_type),
        "backend": format!("{:?}", a.info.backend),
        "driver": a.info.driver,
        "driver_info": a.info.driver_info,
        "vendor": a.info.vendor,
        "device": a.info.device,
        "max_storage_binding_bytes": l.max_storage_buffer_binding_size,
        "max_buffer_bytes": l.max_buffer_size,
        "workgroup_storage_bytes": l.max_compute_workgroup_storage_size,
        "invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
        "timestamps": a.timestamps,
    })
}

/// One kernel case of `engine bench --json`; `baseline` and `cpu` are the
/// same case with the first-generation kernel and on the CPU.
fn measurement_json(m: &crate::bench::Measurement) -> serde_json::Value {
    let pair =
        |p: Option<(f64, f64)>| p.map(|(ms, rate)| serde_json::json!({"ms": ms, "rate": rate}));
    serde_json::json!({
        "kernel": m.name,
        "variant": m.variant,
        "ms": m.ms,
        "rate": m.rate,
        "unit": m.unit,
        "baseline": pair(m.baseline),
        "cpu": pair(m.cpu),
        "share_of_3x3_fwd": m.share_of_3x3_fwd,
    })
}

/// `engine bench`.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.model {
        args.net.check()?;
    } else {
        check_at_least("--n", args.n, 1)?;
        check_at_least("--channels", args.channels, 1)?;
        check_at_least("--size", args.size, 1)?;
        check_at_least("--rounds", args.rounds, 1)?;
    }
    let gpu = Gpu::new(args.adapter.adapter.as_deref())?;
    if args.model {
        return bench_model(&gpu, &args.net, args.iters.max(1), args.json, args.baseline);
    }
    gpu.variants().set_long_run(args.long_run);
    let shape = crate::bench::Shape {
        n: args.n,
        c: args.channels,
        h: args.size,
        w: args.size,
    };
    let plan = crate::bench::Plan {
        iters: args.iters.max(1),
        rounds: args.rounds,
        filter: &args.filter,
        all: args.all_variants,
        with_cpu: !args.no_cpu,
    };
    let run = || crate::bench::run(&gpu, shape, &plan);
    if args.json {
        let v = serde_json::json!({
            "adapter": gpu.info.name,
            "backend": format!("{:?}", gpu.info.backend),
            "timestamps": gpu.timestamps,
            "long_run": args.long_run,
            "shape": {"n": shape.n, "c": shape.c, "h": shape.h, "w": shape.w},
            "iters": args.iters.max(1),
            "rounds": args.rounds,
            "kernels": run()?.iter().map(measurement_json).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "adapter: {} ({:?}); timing: {}; shape n={} c={} {}x{}; {} runs each{}",
        gpu.info.name,
        gpu.info.backend,
        if gpu.timestamps {
            "GPU timestamps"
        } else {
            "wall clock"
        },
        shape.n,
        shape.c,
        shape.h,
        shape.w,
        args.iters,
        match args.rounds {
            1 => String::new(),
            r => format!(", median of {r} rounds through every case"),
        }
    );
    println!(
        "{:<34} {:<24} {:>10} {:>16} {:>10} {:>18} {:>18}",
        "kernel", "variant", "ms", "rate", "of 3x3 fwd", "baseline (gather)", "CPU im2col+SGEMM"
    );
    for m in run()? {
        let base = m
            .baseline
            .map(|(_, r)| format!("{r:>8.2} {}", m.unit))
            .unwrap_or_default();
        let cpu = m
            .cpu
            .map(|(_, r)| format!("{r:>8.2} {}", m.unit))
            .unwrap_or_default();
        let share = m
            .share_of_3x3_fwd
            .map(|s| format!("{:.0}%", s * 100.0))
            .unwrap_or_default();
        println!(
            "{:<34} {:<24} {:>10.3} {:>8.2} {:<7} {:>10} {:>18} {:>18}",
            m.name, m.variant, m.ms, m.rate, m.unit, share, base, cpu
        );
    }
    Ok(())
}

fn bench_model(
    gpu: &Gpu,
    net: &NetShape,
    iters: usize,
    json: bool,
    baseline: bool,
) -> anyhow::Result<()> {
    let run = |base: bool| {
        gpu.variants().set_baseline(base);
        let m = crate::bench::model(
            gpu,
            net.width,
            net.batch,
            net.train_size,
            net.infer_size,
            iters,
        );
        gpu.variants().set_baseline(false);
        m
    };
    let before = if baseline { Some(run(true)?) } else { None };
    let m = run(false)?;
    if json {
        let mut v = serde_json::to_value(&m)?;
        if let Some(b) = &before {
            v["baseline"] = serde_json::to_value(b)?;
        }
        println!("{v}");
        return Ok(());
    }
    println!(
        "adapter: {}; width {}; {} runs each after one warm-up",
        m.adapter, m.width, iters
    );
    let rows = [("now", &m)].into_iter().chain(
        before
            .as_ref()
            .map(|b| ("first-generation kernels, unfused", b)),
    );
    for (what, r) in rows {
        println!("{what}:");
        println!(
            "  training step, batch {} at {}x{}: {:.1} ms{} ({:.0} dispatches, {:.0} submits); peak tensors {:.1} MiB",
            r.batch,
            r.train_size,
            r.train_size,
            r.train_step_ms,
            gpu_busy(r.train_gpu_ms),
            r.dispatches_per_step,
            r.submits_per_step,
            r.peak_mib
        );
        println!(
            "  inference, {}x{}: {:.1} ms{} ({:.0} dispatches)",
            r.infer_size,
            r.infer_size,
            r.infer_ms,
            gpu_busy(r.infer_gpu_ms),
            r.dispatches_per_infer
        );
    }
    if let Some(b) = &before {
        println!(
            "speed-up: training step x{:.2}, inference x{:.2}",
            b.train_step_ms / m.train_step_ms,
            b.infer_ms / m.infer_ms
        );
    }
    if !m.shares.is_empty() {
        println!("{:<16} {:>10} {:>10}", "GPU time share", "train", "infer");
        for (family, share) in &m.shares {
            let inf = m.infer_shares.get(family).copied().unwrap_or(0.0);
            println!("{family:<16} {:>9.1}% {:>9.1}%", share * 100.0, inf * 100.0);
        }
        print_kernel_shares(&m);
    }
    Ok(())
}

/// The kernels behind the families, largest training share first (those
/// above 0.5% of either pass).
/// ", GPU busy X ms" from a profiled run's dispatch times (nothing
/// without timestamp queries).
fn gpu_busy(ms: f64) -> String {
    if ms > 0.0 {
        format!(", GPU busy {ms:.1} ms")
    } else {
        String::new()
    }
}

fn print_kernel_shares(m: &crate::bench::ModelBench) {
    let mut rows: Vec<(&String, f64, f64)> = m
        .kernel_shares
        .keys()
        .chain(m.infer_kernel_shares.keys())
        .map(|k| {
            let t = m.kernel_shares.get(k).copied().unwrap_or(0.0);
            (k, t, m.infer_kernel_shares.get(k).copied().unwrap_or(0.0))
        })
        .filter(|r| r.1.max(r.2) >= 0.005)
        .collect();
    rows.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then(b.2.total_cmp(&a.2))
            .then(a.0.cmp(b.0))
    });
    rows.dedup_by(|a, b| a.0 == b.0);
    println!("{:<26} {:>10} {:>10}", "by kernel", "train", "infer");
    for (k, t, i) in rows {
        println!("{k:<26} {:>9.1}% {:>9.1}%", t * 100.0, i * 100.0);
    }
}

/// `engine tune`.
pub fn tune(args: TuneArgs) -> anyhow::Result<()> {
    args.net.check()?;
    let gpu = Gpu::new(args.adapter.adapter.as_deref())?;
    gpu.variants().set_mode(crate::gpu::TuneMode::On);
    let n = &args.net;
    eprintln!(
        "tuning width {} (training batch {} at {}, inference at {}) on {}",
        n.width, n.batch, n.train_size, n.infer_size, gpu.info.name
    );
    crate::bench::model(&gpu, n.width, n.batch, n.train_size, n.infer_size, 1)?;
    for (key, winner) in gpu.variants().table() {
        println!("{key:<60} {winner}");
    }
    match gpu.variants().path() {
        Some(p) => println!("saved in {}", p.display()),
        None => println!("no cache folder (HOME unset): the choices were not saved"),
    }
    Ok(())
}

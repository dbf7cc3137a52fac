//! The `engine` command line: `devices`, `bench`, and the data commands.
use crate::gpu::{Gpu, list_adapters};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "engine",
    version,
    about = "Train and run the mammography dense-prediction network on any GPU wgpu reaches"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct AdapterArg {
    /// Adapter to use: part of its name or its index in `engine devices`
    /// (default: the best one; also settable with ENGINE_ADAPTER).
    #[arg(long, global = true)]
    pub adapter: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the GPU adapters wgpu reaches and their limits.
    Devices,
    /// Time each kernel at one shape (GFLOP/s or GB/s).
    Bench(BenchArgs),
    #[command(flatten)]
    Data(crate::data::cli::DataCommand),
}

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
    /// Only the cases whose name contains this text.
    #[arg(long, default_value = "")]
    pub filter: String,
}

pub fn devices() -> anyhow::Result<()> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        anyhow::bail!(crate::EngineError::NoAdapter {
            hint: String::new()
        });
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

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let gpu = Gpu::new(args.adapter.adapter.as_deref())?;
    let shape = crate::bench::Shape {
        n: args.n,
        c: args.channels,
        h: args.size,
        w: args.size,
    };
    println!(
        "adapter: {} ({:?}); timing: {}; shape n={} c={} {}x{}; {} runs each",
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
        args.iters
    );
    println!("{:<40} {:>10} {:>12}", "kernel", "ms", "rate");
    for m in crate::bench::run(&gpu, shape, args.iters.max(1), &args.filter)? {
        println!("{:<40} {:>10.3} {:>8.2} {}", m.name, m.ms, m.rate, m.unit);
    }
    Ok(())
}

//! `cargo bench`: the same kernel timings as `engine bench` at the
//! network-sized default shape (n=4, 64 channels, 80x80), on the best adapter
//! (or ENGINE_ADAPTER).
fn main() -> anyhow::Result<()> {
    let gpu = engine::Gpu::new(None)?;
    let shape = engine::bench::Shape {
        n: 4,
        c: 64,
        h: 80,
        w: 80,
    };
    let plan = engine::bench::Plan {
        iters: 5,
        rounds: 1,
        filter: "",
        all: false,
        with_cpu: true,
    };
    println!("adapter: {} ({:?})", gpu.info.name, gpu.info.backend);
    for m in engine::bench::run(&gpu, shape, &plan)? {
        let cpu = m
            .cpu
            .map(|(_, r)| format!("(CPU SGEMM {r:.2})"))
            .unwrap_or_default();
        println!(
            "{:<34} {:<24} {:>10.3} ms {:>8.2} {} {cpu}",
            m.name, m.variant, m.ms, m.rate, m.unit
        );
    }
    Ok(())
}

// Batch norm over (N, H, W) per channel (docs/MODEL.md: eps 1e-5, momentum 0.01,
// running_var takes the unbiased batch variance). The reductions run in
// reduce.wgsl (plane_sums + combine_channels); this file holds the
// per-channel finalisation and the elementwise passes.
//
// stats is [2, C]: mean, then rstd = 1 / sqrt(var + eps).
//
// x, y and dy hold V: f32 here, vec4<f32> in the vec4 form the engine
// builds from this file for planes whose length is a multiple of 4 (one
// channel per vec4; see elementwise.wgsl for why).

alias V = f32;

struct Params {
    n: u32,            // items (f32 or vec4) per plane (apply/backward); channels (finalize)
    c_total: u32,
    c_first: u32,      // channel of the first plane of the window
    base: u32,         // of every elementwise binding (all windowed at one offset of same-sized tensors)
    count: f32,        // M = N*H*W
    eps: f32,
    momentum: f32,
    flags: u32,        // finalize: bit 0 update running statistics; bn_apply_relu: bit 1 add aux
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<V>;
@group(0) @binding(6) var<storage, read> dy: array<V>;
@group(0) @binding(7) var<storage, read> sums: array<f32>;   // [dgamma(C), dbeta(C)] of this batch
@group(0) @binding(8) var<storage, read_write> stats_rw: array<f32>;
@group(0) @binding(9) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(10) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(11) var<storage, read> infer_mean: array<f32>;
@group(0) @binding(12) var<storage, read> infer_var: array<f32>;
@group(0) @binding(13) var<storage, read> aux: array<V>;     // the residual skip (apply), the ReLU output (backward)
@group(0) @binding(14) var<storage, read_write> pre: array<V>;

const WG: u32 = 64u;

// The elementwise passes run on a grid of planes (Gpu::dispatch_planes):
// workgroups along x and z cover one plane's items, wid.y is the plane. So
// an item's channel comes without dividing its index by the plane length,
// which lavapipe does lane by lane (a training step's batch-norm passes
// 31.7 -> 27.9 ms at width 0.25).
struct Item {
    e: u32,     // the element (item) in the window
    c: u32,     // its channel
    live: bool, // within its plane
}

fn item(wid: vec3<u32>, lid: u32, nwg: vec3<u32>) -> Item {
    let v = (wid.x + wid.z * nwg.x) * WG + lid;
    return Item(wid.y * P.n + v, (P.c_first + wid.y) % P.c_total, v < P.n);
}

// On entry stats_rw = [mean, biased var]; on exit [mean, rstd].
@compute @workgroup_size(WG)
fn bn_finalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.c_total) {
        return;
    }
    let mean = stats_rw[c];
    let var_b = stats_rw[P.c_total + c];
    stats_rw[P.c_total + c] = 1.0 / sqrt(var_b + P.eps);
    if ((P.flags & 1u) != 0u) {
        let unbiased = var_b * P.count / max(P.count - 1.0, 1.0);
        running_mean[c] = (1.0 - P.momentum) * running_mean[c] + P.momentum * mean;
        running_var[c] = (1.0 - P.momentum) * running_var[c] + P.momentum * unbiased;
    }
}

fn normalised(e: u32, c: u32) -> V {
    return (x[P.base + e] - stats[c]) * stats[P.c_total + c] * gamma[c] + beta[c];
}

// As relu in elementwise.wgsl: NaN passes.
fn relu(v: V) -> V {
    return select(v, V(0.0), v < V(0.0));
}

// y = (x - mean) * rstd * gamma + beta with the batch statistics.
@compute @workgroup_size(WG)
fn bn_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let it = item(wid, lid, nwg);
    let e = it.e;
    if (it.live) {
        y[P.base + e] = normalised(e, it.c);
    }
}

// y = relu(bn(x)), or with flags bit 1 relu(bn(x) + aux) (the residual
// join), in one pass instead of two or three.
@compute @workgroup_size(WG)
fn bn_apply_relu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let it = item(wid, lid, nwg);
    let e = it.e;
    if (!it.live) {
        return;
    }
    var v = normalised(e, it.c);
    if ((P.flags & 2u) != 0u) {
        v += aux[P.base + e];
    }
    y[P.base + e] = relu(v);
}

// pre = bn(x) (kept for a residual skip) and y = relu(pre) in one pass.
@compute @workgroup_size(WG)
fn bn_apply_keep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let it = item(wid, lid, nwg);
    let e = it.e;
    if (!it.live) {
        return;
    }
    let v = normalised(e, it.c);
    pre[P.base + e] = v;
    y[P.base + e] = relu(v);
}

// Inference: the same with the running statistics.
@compute @workgroup_size(WG)
fn bn_infer(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let it = item(wid, lid, nwg);
    let e = it.e;
    if (!it.live) {
        return;
    }
    let c = it.c;
    let rstd = 1.0 / sqrt(infer_var[c] + P.eps);
    y[P.base + e] = (x[P.base + e] - infer_mean[c]) * rstd * gamma[c] + beta[c];
}

fn input_grad(e: u32, c: u32, d: V) -> V {
    let rstd = stats[P.c_total + c];
    let xhat = (x[P.base + e] - stats[c]) * rstd;
    let dgamma = sums[c];
    let dbeta = sums[P.c_total + c];
    return gamma[c] * rstd * (d - (dbeta + xhat * dgamma) / P.count);
}

// dx = gamma * rstd * (dy - dbeta / M - xhat * dgamma / M), xhat = (x - mean) * rstd.
@compute @workgroup_size(WG)
fn bn_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let it = item(wid, lid, nwg);
    let e = it.e;
    if (it.live) {
        y[P.base + e] = input_grad(e, it.c, dy[P.base + e]);
    }
}

// The same through the ReLU that followed: dy counts where the ReLU output
// aux is positive or NaN (relu_backward's rule), with dgamma and dbeta
// summed the same way (reduce.wgsl's bn_grad_sums).
@compute @workgroup_size(WG)
fn bn_relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let it = item(wid, lid, nwg);
    let e = it.e;
    if (it.live) {
        y[P.base + e] = input_grad(e, it.c, select(dy[P.base + e], V(0.0), aux[P.base + e] <= V(0.0)));
    }
}

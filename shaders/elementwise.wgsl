// Elementwise ops: relu and its backward, residual add, sigmoid, axpy (used
// to accumulate gradients). One invocation per element of type V: f32 here,
// vec4<f32> in the vec4 form the engine builds from this file
// (Gpu::dispatch_vec4), used when the lengths and offsets are multiples of 4
// (on lavapipe each storage access costs about the same for a vec4 as for a
// scalar).
//
// NaN propagates as in PyTorch: relu(NaN) = NaN and NaN passes relu's
// backward. WGSL's max(x, 0.0) may return 0 for a NaN x (it does on
// lavapipe), so the relus compare instead: `x < 0.0` is false for NaN.

alias V = f32;

struct Params {
    n: u32,
    a_base: u32,
    b_base: u32,
    y_base: u32,
    alpha: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> a: array<V>;
@group(0) @binding(2) var<storage, read> b: array<V>;
@group(0) @binding(3) var<storage, read_write> y: array<V>;

const WG: u32 = 64u;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn relu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(gid, nwg);
    if (e < P.n) {
        let x = a[P.a_base + e];
        y[P.y_base + e] = select(x, V(0.0), x < V(0.0));
    }
}

// a = relu output, b = dy: dx = dy except where the output is <= 0 (so a
// NaN output passes dy on, as PyTorch's threshold_backward does).
@compute @workgroup_size(WG)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(gid, nwg);
    if (e < P.n) {
        y[P.y_base + e] = select(b[P.b_base + e], V(0.0), a[P.a_base + e] <= V(0.0));
    }
}

// y += dy where the relu's output a is positive (or NaN): relu_backward
// and axpy in one pass, for a value whose gradient is already partly summed.
@compute @workgroup_size(WG)
fn relu_backward_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(gid, nwg);
    if (e < P.n) {
        y[P.y_base + e] += select(b[P.b_base + e], V(0.0), a[P.a_base + e] <= V(0.0));
    }
}

@compute @workgroup_size(WG)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(gid, nwg);
    if (e < P.n) {
        y[P.y_base + e] = a[P.a_base + e] + b[P.b_base + e];
    }
}

// relu(a + b): the residual join of docs/MODEL.md ("+skip(A)").
@compute @workgroup_size(WG)
fn add_relu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(gid, nwg);
    if (e < P.n) {
        let x = a[P.a_base + e] + b[P.b_base + e];
        y[P.y_base + e] = select(x, V(0.0), x < V(0.0));
    }
}

// Numerically stable logistic function.
@compute @workgroup_size(WG)
fn sigmoid(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(gid, nwg);
    if (e < P.n) {
        let z = a[P.a_base + e];
        let t = exp(-abs(z));
        y[P.y_base + e] = select(t / (1.0 + t), 1.0 / (1.0 + t), z >= V(0.0));
    }
}

// y += alpha * a.
@compute @workgroup_size(WG)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = index(gid, nwg);
    if (e < P.n) {
        y[P.y_base + e] += P.alpha * a[P.a_base + e];
    }
}

// Max-pool with TensorFlow SAME padding (pads are -inf, never selected).
// A NaN in a window is its maximum (as in PyTorch): the first NaN wins.
// Backward sends each output's gradient to the first maximal input of its
// window in row-major order, as a gather over the inputs (no atomics, so it
// is deterministic), after one pass has written each output's argmax: a
// window's argmax then costs its k*k loads once instead of once per input
// it covers.

struct Params {
    planes: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    k: u32,
    stride: u32,
    pad_t: u32,
    pad_l: u32,
    x_base: u32,
    dy_base: u32,
    y_base: u32,
    // maxpool_scatter: the class of outputs (i % period, j % period) added.
    class_i: u32,
    class_j: u32,
    period: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> arg_in: array<u32>;      // per output, as dy
@group(0) @binding(5) var<storage, read_write> arg_out: array<u32>;

const WG: u32 = 64u;

// NaN test on the bits: float comparisons (v != v) may be ordered, and
// then false for NaN too (they are on lavapipe).
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Row-major index (in the plane) of the first maximum of output (i, j)'s
// window, or of its first NaN.
fn argmax(plane: u32, i: u32, j: u32) -> u32 {
    // -FLT_MAX by its bits: Tint rejects the decimal literal, which rounds
    // past the largest f32.
    var best = bitcast<f32>(0xff7fffffu);
    var best_idx = 0xffffffffu;
    for (var p = 0u; p < P.k; p++) {
        let h = i32(i * P.stride + p) - i32(P.pad_t);
        if (h < 0 || h >= i32(P.in_h)) {
            continue;
        }
        for (var q = 0u; q < P.k; q++) {
            let w = i32(j * P.stride + q) - i32(P.pad_l);
            if (w < 0 || w >= i32(P.in_w)) {
                continue;
            }
            let at = u32(h) * P.in_w + u32(w);
            let v = x[plane + at];
            // Once best is NaN, nothing replaces it.
            if (best_idx == 0xffffffffu || ((v > best || is_nan(v)) && !is_nan(best))) {
                best = v;
                best_idx = at;
            }
        }
    }
    return best_idx;
}

// (start of the plane in x, argmax within the plane) of output e.
fn output_argmax(e: u32) -> vec2<u32> {
    let ohw = P.out_h * P.out_w;
    let plane = P.x_base + (e / ohw) * P.in_h * P.in_w;
    return vec2<u32>(plane, argmax(plane, (e % ohw) / P.out_w, e % P.out_w));
}

@compute @workgroup_size(WG)
fn maxpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e < P.planes * P.out_h * P.out_w) {
        let a = output_argmax(e);
        y[P.y_base + e] = x[a.x + a.y];
    }
}

// maxpool_forward that also writes each output's argmax (training, whose
// backward needs it), with y and arg_out at one base: one pass over x
// instead of a second one in the backward pass.
@compute @workgroup_size(WG)
fn maxpool_forward_argmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e < P.planes * P.out_h * P.out_w) {
        let a = output_argmax(e);
        y[P.y_base + e] = x[a.x + a.y];
        arg_out[P.y_base + e] = a.y;
    }
}

// arg_out[y_base + e] = the plane index of output e's argmax.
@compute @workgroup_size(WG)
fn maxpool_argmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e < P.planes * P.out_h * P.out_w) {
        arg_out[P.y_base + e] = output_argmax(e).y;
    }
}

@compute @workgroup_size(WG)
fn maxpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    let hw = P.in_h * P.in_w;
    if (e >= P.planes * hw) {
        return;
    }
    let pl = e / hw;
    let at = e % hw;
    let h = at / P.in_w;
    let w = at % P.in_w;
    // Outputs whose window covers (h, w): i*stride - pad_t <= h <= i*stride - pad_t + k - 1.
    let i_lo = max(i32(h + P.pad_t) - i32(P.k) + 1, 0);
    let i_hi = min(i32(h + P.pad_t) / i32(P.stride), i32(P.out_h) - 1);
    let j_lo = max(i32(w + P.pad_l) - i32(P.k) + 1, 0);
    let j_hi = min(i32(w + P.pad_l) / i32(P.stride), i32(P.out_w) - 1);
    var g = 0.0;
    for (var i = (i_lo + i32(P.stride) - 1) / i32(P.stride); i <= i_hi; i++) {
        for (var j = (j_lo + i32(P.stride) - 1) / i32(P.stride); j <= j_hi; j++) {
            let o = P.dy_base + pl * P.out_h * P.out_w + u32(i) * P.out_w + u32(j);
            if (arg_in[o] == at) {
                g += dy[o];
            }
        }
    }
    y[P.y_base + e] = g;
}

// Backward where windows overlap (k > stride), in passes over the classes
// of outputs (i % period, j % period), period * stride >= k: windows of one
// class share no input, so each output of the class adds its gradient at
// its argmax with no other invocation touching that input; dx starts at
// zero and the classes run in a fixed order (deterministic). An output
// costs two loads and a load-add-store, where the gather cost each input
// up to four iterations of two loads (lavapipe loads lane by lane).
@compute @workgroup_size(WG)
fn maxpool_scatter(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    let rows = (P.out_h - P.class_i + P.period - 1u) / P.period;
    let cols = (P.out_w - P.class_j + P.period - 1u) / P.period;
    if (e >= P.planes * rows * cols) {
        return;
    }
    let pl = e / (rows * cols);
    let r = e % (rows * cols);
    let i = (r / cols) * P.period + P.class_i;
    let j = (r % cols) * P.period + P.class_j;
    let o = P.dy_base + pl * P.out_h * P.out_w + i * P.out_w + j;
    let at = arg_in[o];
    // Every SAME window holds an input; a window without one has none.
    if (at < P.in_h * P.in_w) {
        let d = P.y_base + pl * P.in_h * P.in_w + at;
        y[d] = y[d] + dy[o];
    }
}

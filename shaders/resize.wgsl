// Resize to an absolute size: bilinear with half-pixel centres (PyTorch
// align_corners=False, no antialiasing) or nearest (PyTorch `nearest`).
// The source coordinate is computed in f32 exactly as PyTorch does; the
// backward pass is a gather over the outputs that read each input, found by
// re-running the forward index rule, so it is exact and deterministic (one
// axis at a time: see resize_backward_cols).

struct Params {
    planes: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    scale_h: f32,      // in_h / out_h in f32
    scale_w: f32,
    mode: u32,         // 0 bilinear, 1 nearest
    a_base: u32,
    y_base: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;

// The two source indices and weights of output index `d` along one axis.
struct Taps {
    i0: u32,
    i1: u32,
    w0: f32,
    w1: f32,
}

fn taps(d: u32, scale: f32, n_in: u32) -> Taps {
    var t: Taps;
    if (P.mode == 1u) {
        let s = min(u32(floor(f32(d) * scale)), n_in - 1u);
        t.i0 = s;
        t.i1 = s;
        t.w0 = 1.0;
        t.w1 = 0.0;
        return t;
    }
    let src = max((f32(d) + 0.5) * scale - 0.5, 0.0);
    let i0 = min(u32(src), n_in - 1u);
    let i1 = select(i0, i0 + 1u, i0 < n_in - 1u);
    let l1 = src - f32(i0);
    t.i0 = i0;
    t.i1 = i1;
    t.w0 = 1.0 - l1;
    t.w1 = l1;
    return t;
}

fn weight(t: Taps, i: u32) -> f32 {
    return select(0.0, t.w0, t.i0 == i) + select(0.0, t.w1, t.i1 == i);
}

@compute @workgroup_size(WG)
fn resize_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    let ohw = P.out_h * P.out_w;
    if (e >= P.planes * ohw) {
        return;
    }
    let pl = e / ohw;
    let th = taps((e % ohw) / P.out_w, P.scale_h, P.in_h);
    let tw = taps(e % P.out_w, P.scale_w, P.in_w);
    let base = P.a_base + pl * P.in_h * P.in_w;
    let r0 = base + th.i0 * P.in_w;
    let r1 = base + th.i1 * P.in_w;
    y[P.y_base + e] = th.w0 * (tw.w0 * a[r0 + tw.i0] + tw.w1 * a[r0 + tw.i1])
        + th.w1 * (tw.w0 * a[r1 + tw.i0] + tw.w1 * a[r1 + tw.i1]);
}

// First and last output index along one axis whose taps may include input i
// (a safe superset; `weight` decides).
fn out_range(i: u32, scale: f32, n_out: u32) -> vec2<i32> {
    let lo = i32(floor((f32(i) - 1.0) / scale)) - 2;
    let hi = i32(ceil((f32(i) + 2.0) / scale)) + 2;
    return vec2<i32>(max(lo, 0), min(hi, i32(n_out) - 1));
}

// (plane, row, column) of element `e` of planes of `rows` x `cols`.
fn cell(e: u32, rows: u32, cols: u32) -> vec3<u32> {
    let plane = rows * cols;
    return vec3<u32>(e / plane, (e % plane) / cols, e % cols);
}

// The backward pass in two separable halves (the same sums, in the same
// order, as one gather over both axes, which recomputed every row sum for
// each input row that reads it).
//
// The sum over the outputs `o` that read input `i` along one axis of
// weight(o, i) * a[base + o * stride] (terms of weight 0 skipped).
fn axis_sum(i: u32, scale: f32, n_in: u32, n_out: u32, base: u32, stride: u32) -> f32 {
    let r = out_range(i, scale, n_out);
    var sum = 0.0;
    for (var o = r.x; o <= r.y; o++) {
        let wt = weight(taps(u32(o), scale, n_in), i);
        if (wt == 0.0) {
            continue;
        }
        sum += wt * a[base + u32(o) * stride];
    }
    return sum;
}

// Columns: a = dy [planes, out_h, out_w], y = t [planes, out_h, in_w],
// t[pl, oh, w] = sum over ow of ww(ow, w) * dy[pl, oh, ow].
@compute @workgroup_size(WG)
fn resize_backward_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= P.planes * P.out_h * P.in_w) {
        return;
    }
    let at = cell(e, P.out_h, P.in_w);
    let base = P.a_base + (at.x * P.out_h + at.y) * P.out_w;
    y[P.y_base + e] = axis_sum(at.z, P.scale_w, P.in_w, P.out_w, base, 1u);
}

// Rows: a = t [planes, out_h, in_w], y = dx [planes, in_h, in_w],
// dx[pl, h, w] = sum over oh of wh(oh, h) * t[pl, oh, w].
@compute @workgroup_size(WG)
fn resize_backward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= P.planes * P.in_h * P.in_w) {
        return;
    }
    let at = cell(e, P.in_h, P.in_w);
    let base = P.a_base + at.x * P.out_h * P.in_w + at.z;
    y[P.y_base + e] = axis_sum(at.y, P.scale_h, P.in_h, P.out_h, base, P.in_w);
}

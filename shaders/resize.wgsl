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
    // An upscale by this power of two along the axis (bilinear, out = up *
    // in), else 0: the backward sums run over exactly the 2 * up outputs
    // that can read an input, and resize_forward_quads may run.
    up_h: u32,
    up_w: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> a4: array<vec4<f32>>;

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

// The column upscale factor of resize_forward_quads and
// resize_backward_cols_quads: the engine compiles them once per factor (2
// and 4 in the network), so their loops unroll, their indices into loaded
// values are constants and their taps take a few integer operations.
const UP: u32 = 2u;
// Outputs loaded before the first one a quad's columns read (lo % 4), and
// the vec4s loaded per quad.
const SKIP: u32 = (4u - (UP / 2u) % 4u) % 4u;
const LOADS: u32 = (SKIP + 5u * UP + 3u) / 4u;

// taps(j, 1 / UP, n_in) of output j along an axis upscaled by UP, in
// closed form: with j = UP * m + r the source coordinate is
// m + (r + 0.5) / UP - 0.5, exact in f32, so the indices and weights are
// the same values. Outputs left of input 0's centre are clamped to it.
fn up_taps(j: u32, n_in: u32) -> Taps {
    let m = j / UP;
    let r = j % UP;
    let f = (f32(r) + 0.5) / f32(UP);
    // The coordinate lies before input m's centre.
    let before = r < UP / 2u;
    let clamped = m == 0u && before;
    var t: Taps;
    t.i0 = select(m - select(0u, 1u, before), 0u, clamped);
    t.i1 = min(t.i0 + 1u, n_in - 1u);
    let l1 = select(select(f - 0.5, f + 0.5, before), 0.0, clamped);
    t.w0 = 1.0 - l1;
    t.w1 = l1;
    return t;
}

// Bilinear upscale of the rows by UP (a power of two, compiled per factor;
// out_w a multiple of 4): one invocation writes 4 neighbouring outputs,
// whose taps lie in 4 neighbouring inputs of each source row (at most 3.5
// inputs apart at scale 1/2), so 8 loads instead of 16; the same taps,
// weights and sums as resize_forward, so the same bits.
@compute @workgroup_size(WG)
fn resize_forward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    let quads = P.out_w / 4u;
    if (e >= P.planes * P.out_h * quads) {
        return;
    }
    let pl = e / (P.out_h * quads);
    let th = taps((e / quads) % P.out_h, P.scale_h, P.in_h);
    let j0 = (e % quads) * 4u;
    let base = P.a_base + pl * P.in_h * P.in_w;
    let r0 = base + th.i0 * P.in_w;
    let r1 = base + th.i1 * P.in_w;
    let lo = up_taps(j0, P.in_w).i0;
    let last = P.in_w - 1u;
    let c = vec4<u32>(lo, min(lo + 1u, last), min(lo + 2u, last), min(lo + 3u, last));
    let v0 = vec4<f32>(a[r0 + c.x], a[r0 + c.y], a[r0 + c.z], a[r0 + c.w]);
    let v1 = vec4<f32>(a[r1 + c.x], a[r1 + c.y], a[r1 + c.z], a[r1 + c.w]);
    var out = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let tw = up_taps(j0 + k, P.in_w);
        let i0 = tw.i0 - lo;
        let i1 = tw.i1 - lo;
        out[k] = th.w0 * (tw.w0 * v0[i0] + tw.w1 * v0[i1])
            + th.w1 * (tw.w0 * v1[i0] + tw.w1 * v1[i1]);
    }
    y4[P.y_base / 4u + e] = out;
}

// First and last output index along one axis whose taps may include input i
// (a superset; `weight` decides). For an upscale by a power of two `up`
// (scale 1/up, exact in f32) these are exactly the 2 * up outputs from
// up * i - up / 2 on (those whose first tap is i - 1 or i), in the same
// ascending order, so the sums are the same; else a safe general bound.
fn out_range(i: u32, scale: f32, n_out: u32, up: u32) -> vec2<i32> {
    let lo_up = i32(i * up) - i32(up / 2u);
    let lo = select(i32(floor((f32(i) - 1.0) / scale)) - 2, lo_up, up > 0u);
    let hi = select(i32(ceil((f32(i) + 2.0) / scale)) + 2, lo_up + 2 * i32(up) - 1, up > 0u);
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
fn axis_sum(i: u32, scale: f32, n_in: u32, n_out: u32, up: u32, base: u32, stride: u32) -> f32 {
    let r = out_range(i, scale, n_out, up);
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
    y[P.y_base + e] = axis_sum(at.z, P.scale_w, P.in_w, P.out_w, P.up_w, base, 1u);
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
    y[P.y_base + e] = axis_sum(at.y, P.scale_h, P.in_h, P.out_h, P.up_h, base, P.in_w);
}


// weight(taps(o), i) of output o = UP * i - UP / 2 + t (t < 2 * UP) along
// the columns, in closed form: the source coordinate (o + 0.5) / UP - 0.5
// and its fraction are exact in f32, so these are the same values. Inside,
// o reads i as its second tap when t < UP, else as its first. Clamped at
// the ends: the outputs left of column 0's centre read column 0 alone
// (weight 1), and so do those right of the last column's.
fn up_weight(i: u32, t: u32) -> f32 {
    let f = (f32(t) + 0.5) / f32(UP);
    let clamped = (i == 0u && t >= UP / 2u && t < UP) || (i == P.in_w - 1u && t >= UP);
    return select(select(2.0 - f, f, t < UP), 1.0, clamped);
}

// The column pass in quads (P.up_w = UP, in_w a multiple of 4): one
// invocation sums 4 neighbouring input columns of one row over the 5 * UP
// outputs that can read them, loaded as vec4s (x2: 4 loads instead of 16).
// Each column takes the same terms in the same ascending order as
// resize_backward_cols; a term of weight 0 adds +0, which changes no sum
// (a sum from +0 is never -0), so the bits are the same.
@compute @workgroup_size(WG)
fn resize_backward_cols_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    let quads = P.in_w / 4u;
    if (e >= P.planes * P.out_h * quads) {
        return;
    }
    let i0 = (e % quads) * 4u;
    // The first output that reads column i0, and the vec4 it lies in.
    let lo = i32(i0 * UP) - i32(UP / 2u);
    let first = (lo - i32(SKIP)) / 4;
    let row_quads = i32(P.out_w / 4u);
    let base = i32(P.a_base / 4u) + i32(e / quads) * row_quads;
    var v: array<vec4<f32>, LOADS>;
    for (var j = 0u; j < LOADS; j++) {
        v[j] = a4[u32(base + clamp(first + i32(j), 0, row_quads - 1))];
    }
    var sum = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        for (var t = 0u; t < 2u * UP; t++) {
            let u = SKIP + UP * k + t;
            let o = lo + i32(UP * k + t);
            let inside = o >= 0 && o < i32(P.out_w);
            let wt = select(0.0, up_weight(i0 + k, t), inside);
            sum[k] += select(0.0, wt * v[u / 4u][u % 4u], wt != 0.0);
        }
    }
    y4[P.y_base / 4u + e] = sum;
}

// The row pass in quads (in_w a multiple of 4): 4 neighbouring columns of
// one input row at once, the same terms in the same order per column as
// resize_backward_rows, loaded and stored as vec4s.
@compute @workgroup_size(WG)
fn resize_backward_rows_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    let quads = P.in_w / 4u;
    if (e >= P.planes * P.in_h * quads) {
        return;
    }
    let at = cell(e, P.in_h, quads);
    let r = out_range(at.y, P.scale_h, P.out_h, P.up_h);
    let base = P.a_base / 4u + at.x * P.out_h * quads + at.z;
    var sum = vec4<f32>(0.0);
    for (var o = r.x; o <= r.y; o++) {
        let wt = weight(taps(u32(o), P.scale_h, P.in_h), at.y);
        if (wt == 0.0) {
            continue;
        }
        sum += wt * a4[base + u32(o) * quads];
    }
    y4[P.y_base / 4u + e] = sum;
}

// Convolutions: forward, transpose (gather form) and weight gradient.
//
// Three entry points give all six passes of conv and tconv:
//   conv2d_forward    conv forward; tconv backward-data
//   conv2d_transpose  conv backward-data; tconv forward
//   conv2d_wgrad      weight gradient of both (partial sums per row chunk,
//                     summed in a fixed order by reduce.wgsl: deterministic)
//
// Index rule (docs/MODEL.md): y[n,o,i,j] = b[o] + sum w[o,c,p,q] *
//   x[n,c, i*stride + p*dil - pad_t, j*stride + q*dil - pad_l], 0 outside.
// Tensors are NCHW f32. Every tensor is reached through a binding window
// whose element offset is given by a *_base field, so a tensor larger than
// one storage binding is processed in pieces (by image or channel group).
//
// Register tiling: each invocation computes TP output columns of one row
// for TO output channels (32 accumulators), which keeps loads per FMA low on
// both discrete GPUs and lavapipe (no shared memory: barriers are costly on
// lavapipe and the win on GPUs comes later, per shape).

struct Params {
    n_count: u32,      // images in this dispatch
    a_nstride: u32,    // elements between images in src0
    y_nstride: u32,    // elements between images in dst (forward/transpose)
    c_in: u32,         // summed channels (forward/transpose); input channels (wgrad)
    c_out: u32,        // produced channels (forward/transpose); grad-out channels (wgrad)
    w_ostride: u32,    // weight stride: per produced ch (forward), per summed ch (transpose), per grad-out ch (wgrad)
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    k: u32,
    stride: u32,
    dil: u32,
    pad_t: u32,
    pad_l: u32,
    a_base: u32,
    w_base: u32,
    b_base: u32,
    y_base: u32,
    flags: u32,        // bit 0: accumulate into dst, bit 1: add bias
    col_groups: u32,
    och_groups: u32,
    rows_per_chunk: u32,
    chunks: u32,
    x_nstride: u32,    // wgrad: elements between images in src1
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src0: array<f32>;
@group(0) @binding(2) var<storage, read> src1: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

const WG: u32 = 64u;
const TP: u32 = 4u;
const TO: u32 = 8u;

fn store_tile(acc: ptr<function, array<vec4<f32>, 8>>, n: u32, o0: u32, i: u32, j0: u32) {
    let ohw = P.out_h * P.out_w;
    for (var u = 0u; u < TO; u++) {
        let o = o0 + u;
        if (o >= P.c_out) {
            break;
        }
        var b = 0.0;
        if ((P.flags & 2u) != 0u) {
            b = bias[P.b_base + o];
        }
        let ybase = P.y_base + n * P.y_nstride + o * ohw + i * P.out_w + j0;
        let v = (*acc)[u];
        for (var t = 0u; t < TP; t++) {
            if (j0 + t < P.out_w) {
                var r = v[t] + b;
                if ((P.flags & 1u) != 0u) {
                    r += dst[ybase + t];
                }
                dst[ybase + t] = r;
            }
        }
    }
}

// src0 = x [n, c_in, in_h, in_w], src1 = w (row o at w_base + o*w_ostride,
// tap c*k*k + p*k + q), bias = b, dst = y [n, c_out, out_h, out_w].
@compute @workgroup_size(WG)
fn conv2d_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    let cg = idx % P.col_groups;
    var r = idx / P.col_groups;
    let i = r % P.out_h;
    r = r / P.out_h;
    let og = r % P.och_groups;
    let n = r / P.och_groups;
    if (n >= P.n_count) {
        return;
    }
    let j0 = cg * TP;
    let o0 = og * TO;
    let kk = P.k * P.k;
    let hw = P.in_h * P.in_w;
    var acc: array<vec4<f32>, 8>;
    var wrow: array<u32, 8>;
    for (var u = 0u; u < TO; u++) {
        acc[u] = vec4<f32>(0.0);
        wrow[u] = P.w_base + min(o0 + u, P.c_out - 1u) * P.w_ostride;
    }
    for (var c = 0u; c < P.c_in; c++) {
        let xplane = P.a_base + n * P.a_nstride + c * hw;
        for (var p = 0u; p < P.k; p++) {
            let ih = i32(i * P.stride + p * P.dil) - i32(P.pad_t);
            if (ih < 0 || ih >= i32(P.in_h)) {
                continue;
            }
            let xrow = xplane + u32(ih) * P.in_w;
            for (var q = 0u; q < P.k; q++) {
                let col0 = i32(j0 * P.stride + q * P.dil) - i32(P.pad_l);
                var xv = vec4<f32>(0.0);
                for (var t = 0u; t < TP; t++) {
                    let col = col0 + i32(t * P.stride);
                    if (col >= 0 && col < i32(P.in_w)) {
                        xv[t] = src0[xrow + u32(col)];
                    }
                }
                let tap = c * kk + p * P.k + q;
                for (var u = 0u; u < TO; u++) {
                    acc[u] += src1[wrow[u] + tap] * xv;
                }
            }
        }
    }
    store_tile(&acc, n, o0, i, j0);
}

// The adjoint of conv2d_forward as a gather: dst[n,o,h,w] = bias[o] +
// sum_{c,p,q} src0[n,c,i,j] * src1[c*w_ostride + o*k*k + p*k + q] over the
// (i, j) with i*stride + p*dil - pad_t = h (same for columns).
// src0 = [n, c_in, in_h, in_w] (dy of a conv, or x of a tconv).
@compute @workgroup_size(WG)
fn conv2d_transpose(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    let cg = idx % P.col_groups;
    var r = idx / P.col_groups;
    let h = r % P.out_h;
    r = r / P.out_h;
    let og = r % P.och_groups;
    let n = r / P.och_groups;
    if (n >= P.n_count) {
        return;
    }
    let j0 = cg * TP;
    let o0 = og * TO;
    let kk = P.k * P.k;
    let hw = P.in_h * P.in_w;
    var acc: array<vec4<f32>, 8>;
    var wcol: array<u32, 8>;
    for (var u = 0u; u < TO; u++) {
        acc[u] = vec4<f32>(0.0);
        wcol[u] = min(o0 + u, P.c_out - 1u) * kk;
    }
    let s = i32(P.stride);
    for (var c = 0u; c < P.c_in; c++) {
        let aplane = P.a_base + n * P.a_nstride + c * hw;
        let wrow = P.w_base + c * P.w_ostride;
        for (var p = 0u; p < P.k; p++) {
            let num = i32(h + P.pad_t) - i32(p * P.dil);
            if (num < 0 || num % s != 0) {
                continue;
            }
            let ih = u32(num / s);
            if (ih >= P.in_h) {
                continue;
            }
            let arow = aplane + ih * P.in_w;
            for (var q = 0u; q < P.k; q++) {
                var av = vec4<f32>(0.0);
                for (var t = 0u; t < TP; t++) {
                    let cn = i32(j0 + t + P.pad_l) - i32(q * P.dil);
                    if (cn >= 0 && cn % s == 0) {
                        let iw = u32(cn / s);
                        if (iw < P.in_w) {
                            av[t] = src0[arow + iw];
                        }
                    }
                }
                let tap = wrow + p * P.k + q;
                for (var u = 0u; u < TO; u++) {
                    acc[u] += src1[tap + wcol[u]] * av;
                }
            }
        }
    }
    store_tile(&acc, n, o0, h, j0);
}

// Partial weight gradients: for chunk r of the rows (n, i) of the grad-out
// src0 [n, c_out, out_h, out_w] and the input src1 [n, c_in, in_h, in_w],
// dst[y_base + r*(c_out*c_in*k*k) + (o*c_in + c)*k*k + p*k + q] =
//   sum over rows of the chunk and j of src0[n,o,i,j] * src1[n,c, i*s+p*d-pt, j*s+q*d-pl].
@compute @workgroup_size(WG)
fn conv2d_wgrad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    let c = idx % P.c_in;
    let o = (idx / P.c_in) % P.c_out;
    let r = idx / (P.c_in * P.c_out);
    if (r >= P.chunks) {
        return;
    }
    let kk = P.k * P.k;
    var acc: array<f32, 16>;
    for (var t = 0u; t < 16u; t++) {
        acc[t] = 0.0;
    }
    let total_rows = P.n_count * P.out_h;
    let row_end = min((r + 1u) * P.rows_per_chunk, total_rows);
    for (var gr = r * P.rows_per_chunk; gr < row_end; gr++) {
        let n = gr / P.out_h;
        let i = gr % P.out_h;
        let grow = P.a_base + n * P.a_nstride + (o * P.out_h + i) * P.out_w;
        let xplane = P.w_base + n * P.x_nstride + c * P.in_h * P.in_w;
        for (var p = 0u; p < P.k; p++) {
            let ih = i32(i * P.stride + p * P.dil) - i32(P.pad_t);
            if (ih < 0 || ih >= i32(P.in_h)) {
                continue;
            }
            let xrow = xplane + u32(ih) * P.in_w;
            for (var j = 0u; j < P.out_w; j++) {
                let g = src0[grow + j];
                let col0 = i32(j * P.stride) - i32(P.pad_l);
                for (var q = 0u; q < P.k; q++) {
                    let col = col0 + i32(q * P.dil);
                    if (col >= 0 && col < i32(P.in_w)) {
                        acc[p * P.k + q] += g * src1[xrow + u32(col)];
                    }
                }
            }
        }
    }
    let out = P.y_base + r * (P.c_out * P.c_in * kk) + (o * P.c_in + c) * kk;
    for (var t = 0u; t < kk; t++) {
        dst[out + t] = acc[t];
    }
}

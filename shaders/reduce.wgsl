// Deterministic reductions, no float atomics: every sum is taken in a fixed
// order, first per (plane, chunk) by one invocation each, then combined per
// channel (or per element of a partial-sum stack) by one invocation each.
// The same inputs give bit-identical results on one adapter. Loop lengths
// stay under the engine's LOOP_BUDGET (lavapipe stops loops at 65535).

struct Params {
    planes: u32,       // planes in this dispatch (plane_sums) / images (combine)
    plane_len: u32,
    chunks: u32,
    chunk_len: u32,
    mode: u32,
    c_total: u32,      // channels of the tensor
    c_first: u32,      // channel of the first plane in the window
    a_base: u32,
    b_base: u32,
    stat_base: u32,
    out_base: u32,
    flags: u32,        // bit 0: accumulate into dst
    scale: f32,
    len: u32,          // sum_partials: elements per partial
    inner: u32,        // sum_partials: elements per output row
    out_ostride: u32,  // sum_partials: output stride between rows
    valid: u32,        // plane_sums: elements that exist from the window start (the last plane may be short)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src0: array<f32>;
@group(0) @binding(2) var<storage, read> src1: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

const WG: u32 = 64u;

// Modes: 0 sum a; 1 sum (a - mean)^2; 2 sum a*b; 3 sum a*(b - mean)*rstd;
// 4 sum a*a. mean = stats[c], rstd = stats[c_total + c].
// dst[out_base + p*chunks + r] = partial sum of chunk r of plane p.
@compute @workgroup_size(WG)
fn plane_sums(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    let r = idx % P.chunks;
    let p = idx / P.chunks;
    if (p >= P.planes) {
        return;
    }
    let c = (P.c_first + p) % P.c_total;
    let start = r * P.chunk_len;
    let end = min(min(start + P.chunk_len, P.plane_len), max(P.valid, p * P.plane_len) - p * P.plane_len);
    let a0 = P.a_base + p * P.plane_len;
    let b0 = P.b_base + p * P.plane_len;
    var s = 0.0;
    switch (P.mode) {
        case 0u: {
            for (var e = start; e < end; e++) {
                s += src0[a0 + e];
            }
        }
        case 1u: {
            let m = stats[P.stat_base + c];
            for (var e = start; e < end; e++) {
                let d = src0[a0 + e] - m;
                s += d * d;
            }
        }
        case 2u: {
            for (var e = start; e < end; e++) {
                s += src0[a0 + e] * src1[b0 + e];
            }
        }
        case 3u: {
            let m = stats[P.stat_base + c];
            for (var e = start; e < end; e++) {
                s += src0[a0 + e] * (src1[b0 + e] - m);
            }
            s *= stats[P.stat_base + P.c_total + c];
        }
        default: {
            for (var e = start; e < end; e++) {
                let v = src0[a0 + e];
                s += v * v;
            }
        }
    }
    dst[P.out_base + p * P.chunks + r] = s;
}

// dst[out_base + c] = (dst if accumulate) + scale * sum_{n, r}
//   src0[a_base + (n*c_total + c)*chunks + r], n over `planes` images.
@compute @workgroup_size(WG)
fn combine_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * WG;
    if (c >= P.c_total) {
        return;
    }
    var s = 0.0;
    for (var n = 0u; n < P.planes; n++) {
        let base = P.a_base + (n * P.c_total + c) * P.chunks;
        for (var r = 0u; r < P.chunks; r++) {
            s += src0[base + r];
        }
    }
    var v = s * P.scale;
    if ((P.flags & 1u) != 0u) {
        v += dst[P.out_base + c];
    }
    dst[P.out_base + c] = v;
}

// Sums a stack of `chunks` partials of `len` elements each:
// dst[out_base + (e / inner)*out_ostride + e % inner] (+)= sum_r src0[a_base + r*len + e].
@compute @workgroup_size(WG)
fn sum_partials(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= P.len) {
        return;
    }
    var s = 0.0;
    for (var r = 0u; r < P.chunks; r++) {
        s += src0[P.a_base + r * P.len + e];
    }
    let o = P.out_base + (e / P.inner) * P.out_ostride + e % P.inner;
    if ((P.flags & 1u) != 0u) {
        s += dst[o];
    }
    dst[o] = s;
}

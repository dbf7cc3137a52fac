// Deterministic reductions, no float atomics: every sum is taken in a fixed
// order, first per (plane, chunk) by one invocation each, then combined per
// channel (or per element of a partial-sum stack) by one invocation each.
// The same inputs give bit-identical results on one adapter. Loop lengths
// stay under the engine's LOOP_BUDGET (lavapipe stops loops at 65535).
//
// The plane sums read va, vb, vc of type V: f32 here, vec4<f32> in the vec4
// form the engine builds from this file for planes whose length is a
// multiple of 4 (lengths and bases then count vec4s; on lavapipe a vec4
// load costs about what one scalar load does), and so does sum_partials.
// The other entry points read src0 and are only run in the scalar form.

alias V = f32;
const LANES: u32 = 1u;

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
    c_base: u32,       // plane_sums: base of vc
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src0: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@group(0) @binding(5) var<storage, read> va: array<V>;
@group(0) @binding(6) var<storage, read> vb: array<V>;
@group(0) @binding(7) var<storage, read> vc: array<V>;
@group(0) @binding(8) var<storage, read_write> dst2: array<f32>;
@group(0) @binding(2) var<storage, read> src1: array<f32>;
@group(0) @binding(9) var<storage, read_write> dst3: array<f32>;
@group(0) @binding(10) var<storage, read_write> vdst: array<V>;

// The sum of a V's elements.
fn total(v: V) -> f32 {
    return dot(vec4<f32>(v), select(vec4<f32>(1.0, 0.0, 0.0, 0.0), vec4<f32>(1.0), LANES == 4u));
}

// a where the ReLU output b is positive (or NaN), else 0: relu_backward's rule.
fn masked(a: V, b: V) -> V {
    return select(a, V(0.0), b <= V(0.0));
}

const WG: u32 = 64u;

// One invocation's chunk: chunk `index` of plane `plane` (of channel
// `channel`), its elements [start, end) counted from `offset`, the plane's
// start (the window's last plane may be cut short at `valid`).
struct Chunk {
    plane: u32,
    channel: u32,
    index: u32,
    offset: u32,
    start: u32,
    end: u32,
}

fn chunk_of(idx: u32) -> Chunk {
    let p = idx / P.chunks;
    let r = idx % P.chunks;
    let start = r * P.chunk_len;
    let end = min(min(start + P.chunk_len, P.plane_len), max(P.valid, p * P.plane_len) - p * P.plane_len);
    return Chunk(p, (P.c_first + p) % P.c_total, r, p * P.plane_len, start, end);
}

// Modes: 0 sum a; 1 sum (a - mean)^2 (mean = stats[c]); 2 sum a*a.
// dst[out_base + p*chunks + r] = partial sum of chunk r of plane p.
@compute @workgroup_size(WG)
fn plane_sums(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = chunk_of(gid.x + gid.y * nwg.x * WG);
    if (k.plane >= P.planes) {
        return;
    }
    let a0 = P.a_base + k.offset;
    var s = V(0.0);
    switch (P.mode) {
        case 0u: {
            for (var e = k.start; e < k.end; e++) {
                s += va[a0 + e];
            }
        }
        case 1u: {
            let m = V(stats[P.stat_base + k.channel]);
            for (var e = k.start; e < k.end; e++) {
                let d = va[a0 + e] - m;
                s += d * d;
            }
        }
        default: {
            for (var e = k.start; e < k.end; e++) {
                let v = va[a0 + e];
                s += v * v;
            }
        }
    }
    dst[P.out_base + k.plane * P.chunks + k.index] = total(s);
}

// Batch norm's backward sums in one pass, as plane_sums lays them out:
// dst gets the sums of d, dst2 those of d * (c - mean) * rstd, where d = a
// (the gradient), or with flags bit 1 masked(a, b) (b the ReLU output that
// followed the batch norm: the ReLU's backward fused in).
@compute @workgroup_size(WG)
fn bn_grad_sums(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = chunk_of(gid.x + gid.y * nwg.x * WG);
    if (k.plane >= P.planes) {
        return;
    }
    let a0 = P.a_base + k.offset;
    let b0 = P.b_base + k.offset;
    let c0 = P.c_base + k.offset;
    let m = V(stats[P.stat_base + k.channel]);
    var sd = V(0.0);
    var sx = V(0.0);
    if ((P.flags & 2u) != 0u) {
        for (var e = k.start; e < k.end; e++) {
            let d = masked(va[a0 + e], vb[b0 + e]);
            sd += d;
            sx += d * (vc[c0 + e] - m);
        }
    } else {
        for (var e = k.start; e < k.end; e++) {
            let d = va[a0 + e];
            sd += d;
            sx += d * (vc[c0 + e] - m);
        }
    }
    let o = P.out_base + k.plane * P.chunks + k.index;
    dst[o] = total(sd);
    dst2[o] = total(sx) * stats[P.stat_base + P.c_total + k.channel];
}

// Batch norm's statistics in one pass over x, as plane_sums lays partials
// out: dst gets each chunk's sum, dst2 the sum of its squared deviations
// from its own mean (the chunk read twice, the second time from cache);
// bn_merge_stats merges them per channel. Instead of a pass for the mean
// and a second pass over x for the squared deviations from it.
@compute @workgroup_size(WG)
fn bn_stat_sums(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = chunk_of(gid.x + gid.y * nwg.x * WG);
    if (k.plane >= P.planes) {
        return;
    }
    let a0 = P.a_base + k.offset;
    var s = V(0.0);
    for (var e = k.start; e < k.end; e++) {
        s += va[a0 + e];
    }
    let sum = total(s);
    let m = V(sum / f32(max(k.end, k.start + 1u) - k.start) / f32(LANES));
    var q = V(0.0);
    for (var e = k.start; e < k.end; e++) {
        let d = va[a0 + e] - m;
        q += d * d;
    }
    let o = P.out_base + k.plane * P.chunks + k.index;
    dst[o] = sum;
    dst2[o] = total(q);
}

// Channel c's mean and biased variance from bn_stat_sums' partials: the
// sums (src0) and squared deviations (src1) of `planes` images' `chunks`
// chunks each (chunk r holds min(chunk_len, plane_len - r * chunk_len)
// items of `inner` elements), merged pairwise in a fixed order (Chan,
// Golub and LeVeque's update: the squared deviations stay about each
// part's own mean, so no large sums cancel). dst[c] = mean,
// dst[c_total + c] = variance.
@compute @workgroup_size(WG)
fn bn_merge_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * WG;
    if (c >= P.c_total) {
        return;
    }
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var i = 0u; i < P.planes; i++) {
        for (var r = 0u; r < P.chunks; r++) {
            let items = min(P.chunk_len, P.plane_len - min(r * P.chunk_len, P.plane_len));
            let nb = f32(items * P.inner);
            if (nb == 0.0) {
                continue;
            }
            let at = partial_at(i, c, r);
            let delta = src0[at] / nb - mean;
            let nt = n + nb;
            mean += delta * (nb / nt);
            m2 += src1[at] + delta * delta * (n * nb / nt);
            n = nt;
        }
    }
    dst[P.out_base + c] = mean;
    dst[P.out_base + P.c_total + c] = m2 / max(n, 1.0);
}

// Where partial r of channel c of image n lies in a [image][channel][chunk]
// stack of partials.
fn partial_at(n: u32, c: u32, r: u32) -> u32 {
    return P.a_base + (n * P.c_total + c) * P.chunks + r;
}

// Channel c's sum over `planes` images of its `chunks` partials in src0
// (src1), in a fixed order. Two functions: a binding a function touches is
// part of every entry point that calls it.
fn src0_total(c: u32) -> f32 {
    var s = 0.0;
    for (var n = 0u; n < P.planes; n++) {
        for (var r = 0u; r < P.chunks; r++) {
            s += src0[partial_at(n, c, r)];
        }
    }
    return s;
}

fn src1_total(c: u32) -> f32 {
    var s = 0.0;
    for (var n = 0u; n < P.planes; n++) {
        for (var r = 0u; r < P.chunks; r++) {
            s += src1[partial_at(n, c, r)];
        }
    }
    return s;
}

// dst[out_base + c] = (dst if accumulate) + scale * sum_{n, r}
//   src0[a_base + (n*c_total + c)*chunks + r], n over `planes` images.
@compute @workgroup_size(WG)
fn combine_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * WG;
    if (c >= P.c_total) {
        return;
    }
    var v = src0_total(c) * P.scale;
    if ((P.flags & 1u) != 0u) {
        v += dst[P.out_base + c];
    }
    dst[P.out_base + c] = v;
}

// A batch norm's backward sums in one pass instead of four combines: from
// the partials of sum d * xhat (src0) and of sum d (src1), dst[c] and
// dst[c_total + c] get the two sums, dst2[c] and dst3[c] (dgamma, dbeta)
// get them added (flags bit 0) or written. The same sums in the same order
// as combine_channels with scale 1.
@compute @workgroup_size(WG)
fn combine_bn_grads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * WG;
    if (c >= P.c_total) {
        return;
    }
    let sg = src0_total(c);
    let sb = src1_total(c);
    dst[c] = sg;
    dst[P.c_total + c] = sb;
    let acc = (P.flags & 1u) != 0u;
    dst2[c] = select(sg, sg + dst2[c], acc);
    dst3[c] = select(sb, sb + dst3[c], acc);
}

// Sums a stack of `chunks` partials of `len` items of type V each:
// vdst[out_base + (e / inner)*out_ostride + e % inner] (+)= sum_r va[a_base + r*len + e].
// In the vec4 form every length, stride and base counts vec4s: the same
// sums, in the same order, per component.
@compute @workgroup_size(WG)
fn sum_partials(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= P.len) {
        return;
    }
    var s = V(0.0);
    for (var r = 0u; r < P.chunks; r++) {
        s += va[P.a_base + r * P.len + e];
    }
    let o = P.out_base + (e / P.inner) * P.out_ostride + e % P.inner;
    if ((P.flags & 1u) != 0u) {
        s += vdst[o];
    }
    vdst[o] = s;
}

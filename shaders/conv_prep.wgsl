// Operand preparation for the generated convolution kernels (ops/conv):
//
//   pad_input     a zero-padded (or cropped) copy of a group of input planes,
//                 so the hot loop of a convolution reads without border
//                 branches: dst[n, c, r, q] = src[n, c, r + r0, q + c0], 0
//                 outside the source.
//   prep_weights  weights re-laid as [summed ch][tap][produced ch], produced
//                 channels padded with zeros to a multiple of the tile, so the
//                 kernel reads one vec4 of produced channels per tap (the same
//                 address in every lane). A tap map (first tap and step per
//                 axis, steps may be negative) selects flipped kernels and the
//                 sub-kernels of the transposed passes.
//
// Both are one invocation per destination element, no loops. pad_input is
// the fallback for rows that are not whole vec4s: on lavapipe it took a
// quarter of a training step, so ops/conv/prep.rs generates a row copy that
// moves vec4s instead wherever the widths allow.

struct Params {
    total: u32,        // destination elements in this dispatch
    a: u32,            // pad: padded rows;        prep: produced channels padded (row length)
    b: u32,            // pad: padded columns;     prep: taps (kh * kw)
    c: u32,            // pad: planes per image;   prep: taps per row (kw)
    src_base: u32,
    src_nstride: u32,  // pad: elements between images; prep: stride per produced channel
    src_cstride: u32,  // pad: elements between planes; prep: stride per summed channel
    src_h: u32,        // pad: source rows;        prep: produced channels present
    src_w: u32,        // pad: source columns;     prep: source kernel width k
    r0: i32,           // pad: source row of padded row 0;    prep: first tap row
    c0: i32,           // pad: source col of padded col 0;    prep: first tap column
    rstep: i32,        // prep: tap row step
    cstep: i32,        // prep: tap column step
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn pad_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= P.total) {
        return;
    }
    let col = e % P.b;
    let row = (e / P.b) % P.a;
    let plane = e / (P.a * P.b);
    let ch = plane % P.c;
    let n = plane / P.c;
    let sr = i32(row) + P.r0;
    let sc = i32(col) + P.c0;
    var v = 0.0;
    if (sr >= 0 && sr < i32(P.src_h) && sc >= 0 && sc < i32(P.src_w)) {
        v = src[P.src_base + n * P.src_nstride + ch * P.src_cstride + u32(sr) * P.src_w + u32(sc)];
    }
    dst[e] = v;
}

@compute @workgroup_size(WG)
fn prep_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= P.total) {
        return;
    }
    let o = e % P.a;
    let tap = (e / P.a) % P.b;
    let s = e / (P.a * P.b);
    var v = 0.0;
    if (o < P.src_h) {
        let p = P.r0 + i32(tap / P.c) * P.rstep;
        let q = P.c0 + i32(tap % P.c) * P.cstep;
        v = src[P.src_base + o * P.src_nstride + s * P.src_cstride + u32(p) * P.src_w + u32(q)];
    }
    dst[e] = v;
}

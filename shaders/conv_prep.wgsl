// Operand preparation for the generated convolution kernels (ops/conv):
//
//   pad_input     a zero-padded (or cropped) copy of a group of input planes,
//                 so the hot loop of a convolution reads without border
//                 branches: dst[n, c, r, q] = src[n, c, r + r0, q + c0], 0
//                 outside the source.
//
// One invocation per destination element, no loops. This is the fallback
// for rows that are not whole vec4s: on lavapipe it took a quarter of a
// training step, so ops/conv/prep.rs generates a row copy that moves vec4s
// instead wherever the widths allow (and generates the weights' re-laying
// kernel).

struct Params {
    total: u32,        // destination elements in this dispatch
    a: u32,            // padded rows
    b: u32,            // padded columns
    c: u32,            // planes per image
    src_base: u32,
    src_nstride: u32,  // elements between images
    src_cstride: u32,  // elements between planes
    src_h: u32,        // source rows
    src_w: u32,        // source columns
    r0: i32,           // source row of padded row 0
    c0: i32,           // source col of padded col 0
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

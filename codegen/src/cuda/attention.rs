//! Scaled dot-product attention, tiled with an online softmax, accumulated in f32.
//!
//! A block of [`THREADS`] threads (4 warps) owns [`ATTENTION_TILE`] queries of one (batch × head)
//! slice: grid.x counts query tiles and grid.y slices (both looped over with the grid's stride, so
//! a clamped grid still covers everything). Warp `w` owns query rows `w, w + 4, …` (8 each) and,
//! for each row, the running max `m`, the running sum `l` and 8 accumulators: value columns
//! `lane + 32·c`. Keys go by tiles of 32, one per lane:
//!
//! 1. scores: `q·k` over the head dim, in chunks of [`CHUNK`] dims staged (as f32) in shared
//!    memory, the block's queries staying in shared memory throughout;
//! 2. the online softmax per row (warp shuffles): `m' = max(m, max_j s_j)`, weights
//!    `p_j = exp(s_j - m')` (0 for masked keys), `l = l·exp(m - m') + Σ p_j`, accumulators scaled
//!    by `exp(m - m')`; the weights are rounded to the storage dtype before they meet v, as the
//!    reference does (`tpc_runtime::ops::linalg::sdpa`), and the sum takes them unrounded;
//! 3. `acc += p·v` over the value dims in chunks of [`CHUNK`] staged in shared memory.
//!
//! At the end `out = acc / l`, rounded to the dtype: a row whose keys are all masked gives 0/0 =
//! NaN, as the reference. With `causal`, key `j` is masked for query `i` when `j > qpos[i]`, and
//! key tiles past every query's position are skipped.
//!
//! Head dims `d` and `dv` are arguments, up to [`ATTENTION_MAX_HEAD_DIM`]; a launch with a larger
//! one writes NaN everywhere (the host checks the limit first). Shared memory is static (about
//! 44.5 KiB), so `Kernel::launch` asks for no dynamic shared memory.

use super::{load, round, storage, store, Code};
use crate::kir::{Attention, Kernel, ATTENTION_TILE};

/// The largest `d` and `dv` the attention kernel takes.
pub const ATTENTION_MAX_HEAD_DIM: usize = 256;

/// Threads per block (`Kernel::launch` gives 128): 4 warps.
const THREADS: usize = 128;
/// Head dims per chunk of keys (or values) staged in shared memory.
const CHUNK: usize = 64;
/// Floats per staged key (value) row: the chunk and 4 of padding, so that lanes reading
/// different keys' float4s hit different banks.
const KV_STRIDE: usize = CHUNK + 4;

// A key per lane.
const _: () = assert!(ATTENTION_TILE == 32);

pub(super) fn source(k: &Kernel, at: &Attention) -> String {
    let tile = ATTENTION_TILE as usize;
    let warps = THREADS / 32;
    let rows = tile / warps; // query rows per thread
    let cols = ATTENTION_MAX_HEAD_DIM / 32; // value columns per lane
    let chunks = ATTENTION_MAX_HEAD_DIM / CHUNK; // value chunks
    let per_chunk = CHUNK / 32; // value columns per lane per chunk
    let max = ATTENTION_MAX_HEAD_DIM;
    let dt = at.dtype;
    let ty = storage(dt);
    let neg_inf = super::float_literal(f32::NEG_INFINITY);

    let mut c = Code::default();
    c.line(format!(
        "// {}: attention of {dt}{}{}, {tile} queries per block of {THREADS} threads, keys in tiles of {tile}, online softmax, f32 accumulation; d, dv <= {max}",
        at.name,
        if at.causal { ", causal" } else { "" },
        if at.lse { ", writing each query's log-sum-exp" } else { "" }
    ));
    c.open(super::signature(k));
    c.line(format!(
        "__shared__ __align__(16) float tpc_q[{tile} * {max}]; // the block's queries, rows of {max}"
    ));
    c.line(format!(
        "__shared__ __align__(16) float tpc_kv[{tile} * {KV_STRIDE}]; // {CHUNK} dims of {tile} keys or values"
    ));
    c.line(format!(
        "__shared__ __align__(16) float tpc_p[{tile} * {tile}]; // the rounded weights, a row per query"
    ));
    c.line("const int lane = threadIdx.x & 31;");
    c.line("const int warp = threadIdx.x >> 5;");
    c.line(format!(
        "const bool fits = d >= 0 && d <= {max} && dv >= 0 && dv <= {max};"
    ));
    c.line("const long long dpad = (d + 3) & ~3LL; // q and k rows are zero past d");
    c.open("for (long long bt = blockIdx.y; bt < batch; bt += gridDim.y)");
    c.open(format!(
        "for (long long q0 = (long long)blockIdx.x * {tile}; q0 < sq; q0 += (long long)gridDim.x * {tile})"
    ));
    c.line(format!(
        "const int nq = (int)(sq - q0 < {tile} ? sq - q0 : {tile});"
    ));
    if at.lse {
        c.line("float* ob = out + bt * sq + q0;");
        c.open("if (!fits)");
        c.line("for (long long x = threadIdx.x; x < nq; x += blockDim.x) ob[x] = tpc_nan();");
    } else {
        c.line(format!("{ty}* ob = out + (bt * sq + q0) * dv;"));
        c.open("if (!fits)");
        c.line(format!(
            "for (long long x = threadIdx.x; x < nq * dv; x += blockDim.x) ob[x] = {};",
            store(dt, "tpc_nan()")
        ));
    }
    c.line("continue;");
    c.close();
    c.line(format!("const {ty}* qb = q + (bt * sq + q0) * d;"));
    c.line(format!("const {ty}* kb = k + bt * sk * d;"));
    c.line(format!("const {ty}* vb = v + bt * sk * dv;"));

    c.line("__syncthreads(); // the previous tile is done with tpc_q");
    c.open(format!(
        "for (long long x = threadIdx.x; x < {tile} * dpad; x += blockDim.x)"
    ));
    c.line("const int row = (int)(x / dpad);");
    c.line("const int col = (int)(x - row * dpad);");
    c.line(format!(
        "tpc_q[row * {max} + col] = (row < nq && col < d) ? {} : 0.0f;",
        load(dt, "qb[row * d + col]")
    ));
    c.close();

    c.line(format!(
        "// Rows warp + {warps}·i of the tile: position, running max and sum, accumulators (value column lane + 32·c)."
    ));
    if at.causal {
        c.line(format!("long long pos[{rows}];"));
    }
    c.line(format!("float m[{rows}], l[{rows}], acc[{rows}][{cols}];"));
    c.pragma("unroll");
    c.open(format!("for (int i = 0; i < {rows}; ++i)"));
    let row_i = format!("(warp + {warps} * i)");
    if at.causal {
        c.line(format!("pos[i] = {row_i} < nq ? qpos[q0 + {row_i}] : -1;"));
    }
    c.line(format!("m[i] = {neg_inf};"));
    c.line("l[i] = 0.0f;");
    c.pragma("unroll");
    c.line(format!(
        "for (int cc = 0; cc < {cols}; ++cc) acc[i][cc] = 0.0f;"
    ));
    c.close();

    c.line("long long kend = sk;");
    if at.causal {
        c.line("// Keys past every query's position are masked for the whole tile.");
        c.line("long long last = lane < nq ? qpos[q0 + lane] : -1;");
        c.pragma("unroll");
        c.open("for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1)");
        c.line("const long long other = __shfl_xor_sync(0xffffffffu, last, lane_mask);");
        c.line("last = other > last ? other : last;");
        c.close();
        c.line("if (last + 1 < kend) kend = last + 1 < 0 ? 0 : last + 1;");
    }

    c.open(format!("for (long long k0 = 0; k0 < kend; k0 += {tile})"));
    // 1. Scores.
    c.line(format!("float s[{rows}];"));
    c.pragma("unroll");
    c.line(format!("for (int i = 0; i < {rows}; ++i) s[i] = 0.0f;"));
    c.open(format!("for (long long c0 = 0; c0 < dpad; c0 += {CHUNK})"));
    c.line("__syncthreads();");
    stage(&mut c, "kb", "d", "c0", dt);
    c.line("__syncthreads();");
    c.line(format!(
        "const int cend = (int)(dpad - c0 < {CHUNK} ? dpad - c0 : {CHUNK});"
    ));
    c.open("for (int col = 0; col < cend; col += 4)");
    c.line(format!(
        "const float4 kx = *(const float4*)&tpc_kv[lane * {KV_STRIDE} + col];"
    ));
    c.pragma("unroll");
    c.open(format!("for (int i = 0; i < {rows}; ++i)"));
    c.line(format!(
        "const float4 qx = *(const float4*)&tpc_q[{row_i} * {max} + c0 + col];"
    ));
    c.line("s[i] += qx.x * kx.x + qx.y * kx.y + qx.z * kx.z + qx.w * kx.w;");
    c.close();
    c.close();
    c.close();

    // 2. Online softmax.
    c.line("const long long key = k0 + lane;");
    c.pragma("unroll");
    c.open(format!("for (int i = 0; i < {rows}; ++i)"));
    if at.causal {
        c.line("const bool masked = key >= sk || key > pos[i];");
    } else {
        c.line("const bool masked = key >= sk;");
    }
    c.line(format!(
        "const float x = masked ? {neg_inf} : s[i] * scale;"
    ));
    c.line("const float mnew = tpc_max(m[i], tpc_warp_reduce(1, x));");
    c.line(format!(
        "const float alpha = mnew == {neg_inf} ? 1.0f : expf(m[i] - mnew);"
    ));
    c.line(format!(
        "const float p = (masked || mnew == {neg_inf}) ? 0.0f : expf(x - mnew);"
    ));
    c.line("l[i] = l[i] * alpha + tpc_warp_reduce(0, p);");
    c.line("m[i] = mnew;");
    c.line(format!(
        "tpc_p[{row_i} * {tile} + lane] = {};",
        round(dt, "p")
    ));
    c.pragma("unroll");
    c.line(format!(
        "for (int cc = 0; cc < {cols}; ++cc) acc[i][cc] *= alpha;"
    ));
    c.close();
    c.line("__syncwarp(); // a warp reads only its own rows of tpc_p");

    // 3. acc += p·v, chunk by chunk of value dims.
    c.pragma("unroll");
    c.open(format!("for (int ch = 0; ch < {chunks}; ++ch)"));
    c.line(format!(
        "if (ch * {CHUNK} >= dv) break; // the same for the whole block"
    ));
    c.line("__syncthreads();");
    stage(&mut c, "vb", "dv", &format!("ch * {CHUNK}"), dt);
    c.line("__syncthreads();");
    c.open(format!("for (int j = 0; j < {tile}; j += 4)"));
    c.line(format!("float vx[4][{per_chunk}];"));
    c.pragma("unroll");
    c.open("for (int jj = 0; jj < 4; ++jj)");
    c.pragma("unroll");
    c.line(format!(
        "for (int cc = 0; cc < {per_chunk}; ++cc) vx[jj][cc] = tpc_kv[(j + jj) * {KV_STRIDE} + lane + 32 * cc];"
    ));
    c.close();
    c.pragma("unroll");
    c.open(format!("for (int i = 0; i < {rows}; ++i)"));
    c.line("tpc_f32x4 pw;");
    c.line(format!(
        "pw.v = *(const float4*)&tpc_p[{row_i} * {tile} + j];"
    ));
    c.pragma("unroll");
    c.open("for (int jj = 0; jj < 4; ++jj)");
    c.pragma("unroll");
    c.line(format!(
        "for (int cc = 0; cc < {per_chunk}; ++cc) acc[i][ch * {per_chunk} + cc] += pw.e[jj] * vx[jj][cc];"
    ));
    c.close();
    c.close();
    c.close();
    c.close();
    c.close(); // key tiles

    if at.lse {
        c.line("// lse = m + log(l): -inf for a row whose keys are all masked.");
        c.pragma("unroll");
        c.open(format!("for (int i = 0; i < {rows}; ++i)"));
        c.line(format!("const int row = {row_i};"));
        c.line("if (row < nq && lane == 0) ob[row] = m[i] + logf(l[i]);");
        c.close();
    } else {
        c.line("// out = acc / l: NaN (0/0) for a row whose keys are all masked.");
        c.pragma("unroll");
        c.open(format!("for (int i = 0; i < {rows}; ++i)"));
        c.line(format!("const int row = {row_i};"));
        c.line("if (row >= nq) continue;");
        c.pragma("unroll");
        c.open(format!("for (int cc = 0; cc < {cols}; ++cc)"));
        c.line("const int col = lane + 32 * cc;");
        c.line(format!(
            "if (col < dv) ob[row * dv + col] = {};",
            store(dt, "acc[i][cc] / l[i]")
        ));
        c.close();
        c.close();
    }
    c.close(); // query tiles
    c.close(); // slices
    c.close();
    c.finish()
}

/// Stages `CHUNK` dims (from `c0`) of the tile's keys (values) from `base` (rows of `width`) in
/// `tpc_kv` as f32, zero past the keys and past `width`.
fn stage(c: &mut Code, base: &str, width: &str, c0: &str, dt: tpc_ir::DType) {
    let tile = ATTENTION_TILE as usize;
    c.open(format!(
        "for (int x = threadIdx.x; x < {tile} * {CHUNK}; x += blockDim.x)"
    ));
    c.line(format!("const int kj = x / {CHUNK};"));
    c.line(format!("const int col = x % {CHUNK};"));
    c.line(format!(
        "tpc_kv[kj * {KV_STRIDE} + col] = (k0 + kj < sk && {c0} + col < {width}) ? {} : 0.0f;",
        load(dt, &format!("{base}[(k0 + kj) * {width} + {c0} + col]"))
    ));
    c.close();
}

//! matmul, linear and sdpa on matrixmultiply's sgemm: f32 accumulation, one rounding at the end.

use crate::tensor::{round_to, Tensor};
use crate::Result;

thread_local! {
    /// Threads a GEMM on this thread may use (0: the machine's cores, at most 4).
    static GEMM_THREADS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Sets how many threads GEMMs on this thread use: the CPU executor's rank threads share the
/// machine's cores (8 ranks on 2 cores use one each) instead of each spawning its own.
pub fn set_gemm_threads(n: usize) {
    GEMM_THREADS.with(|t| t.set(n));
}

/// The threads this thread's GEMMs use.
pub fn gemm_threads() -> usize {
    match GEMM_THREADS.with(|t| t.get()) {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4),
        n => n,
    }
}

/// C[m×n] = A[m×k] · B[k×n] with arbitrary strides (row stride, column stride). Large products
/// are cut into blocks of rows, one per thread ([`gemm_threads`]); each element is the same
/// sum in the same order whatever the cut, so the result does not depend on the threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].iter_mut().for_each(|x| *x = 0.0);
        return;
    }
    // Threads only for products large enough to repay starting them (each block's bounds are
    // checked where it runs).
    let threads = gemm_threads().min(m / 64).max(1);
    if threads == 1 || (m * n * k) < (1 << 22) {
        gemm_rows(m, k, n, a, rsa, csa, b, rsb, csb, c);
        return;
    }
    let per = m.div_ceil(threads);
    std::thread::scope(|scope| {
        for (i, rows) in c[..m * n].chunks_mut(per * n).enumerate() {
            let r0 = i * per;
            let mi = rows.len() / n;
            let a = &a[r0 * rsa..];
            scope.spawn(move || gemm_rows(mi, k, n, a, rsa, csa, b, rsb, csb, rows));
        }
    });
}

/// [`gemm`] of `m` rows on this thread.
#[allow(clippy::too_many_arguments)]
fn gemm_rows(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    c: &mut [f32],
) {
    // The furthest element each operand's strides reach lies inside its slice.
    assert!(
        m >= 1
            && (m - 1) * rsa + (k - 1) * csa < a.len()
            && (k - 1) * rsb + (n - 1) * csb < b.len()
            && m * n <= c.len()
    );
    // SAFETY: the assertion above bounds every access sgemm makes through these strides.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

pub fn matmul(a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
    let (sa, sb) = (a.shape(), b.shape());
    let (ra, rb) = (sa.len(), sb.len());
    let (m, k, n) = (sa[ra - 2], sa[ra - 1], sb[rb - 1]);
    let (av, bv) = (a.floats()?, b.floats()?);
    let mut out = vec![0f32; out_shape.iter().product()];
    if rb == 2 {
        // [..., m, k] x [k, n]: one GEMM over all leading dims.
        let rows: usize = sa[..ra - 1].iter().product();
        gemm(rows, k, n, av, k, 1, bv, n, 1, &mut out);
    } else {
        let batch: usize = out_shape[..out_shape.len() - 2].iter().product();
        let a_step = if ra == 2 { 0 } else { m * k };
        for i in 0..batch {
            let a_part = &av[i * a_step..i * a_step + m * k];
            let b_part = &bv[i * k * n..(i + 1) * k * n];
            gemm(
                m,
                k,
                n,
                a_part,
                k,
                1,
                b_part,
                n,
                1,
                &mut out[i * m * n..(i + 1) * m * n],
            );
        }
    }
    let dt = a.dtype();
    out.iter_mut().for_each(|x| *x = round_to(dt, *x));
    Ok(Tensor::float(dt, out_shape.to_vec(), out))
}

/// `x @ w^T + b`, the bias added in f32 before the single rounding.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    out_shape: &[usize],
) -> Result<Tensor> {
    let (out_f, in_f) = (w.shape()[0], w.shape()[1]);
    // The output's leading dims, not numel / in, so that in = 0 needs no special case.
    let rows: usize = out_shape[..out_shape.len() - 1].iter().product();
    let mut out = vec![0f32; rows * out_f];
    // w^T as a [in, out] view of w: row stride 1, column stride `in`.
    gemm(
        rows,
        in_f,
        out_f,
        x.floats()?,
        in_f,
        1,
        w.floats()?,
        1,
        in_f,
        &mut out,
    );
    if let Some(b) = bias {
        let bv = b.floats()?;
        for row in out.chunks_mut(out_f.max(1)) {
            row.iter_mut().zip(bv).for_each(|(y, &c)| *y += c);
        }
    }
    let dt = x.dtype();
    out.iter_mut().for_each(|v| *v = round_to(dt, *v));
    Ok(Tensor::float(dt, out_shape.to_vec(), out))
}

/// softmax(q kᵀ · scale, causal mask) v per batch, all in f32, rounded once at the end; or, for
/// result 1 of `sdpa_stats`, each query's log-sum-exp (f32).
pub fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    op: &tpc_ir::ops::Sdpa,
    result: usize,
    query_positions: Option<&[usize]>,
    out_shape: &[usize],
) -> Result<Tensor> {
    let r = q.shape().len();
    let (l, e) = (q.shape()[r - 2], q.shape()[r - 1]);
    let s = k.shape()[r - 2];
    let ev = v.shape()[r - 1];
    let batch: usize = q.shape()[..r - 2].iter().product();
    let (causal, scale) = (op.causal, op.scale_at(e) as f32);
    let dt = q.dtype();
    let dims = SdpaDims { batch, l, s, e, ev };
    let position = |i: usize| query_positions.map_or(i, |p| p[i]) as i64;
    let causal = causal.then_some(&position as &dyn Fn(usize) -> i64);
    let inputs = (q.floats()?, k.floats()?, v.floats()?);
    if result == 1 {
        let mut lse = vec![0f32; batch * l];
        sdpa_into(dims, inputs, scale, causal, dt, &mut [], Some(&mut lse));
        return Ok(Tensor::float(tpc_ir::DType::F32, out_shape.to_vec(), lse));
    }
    let mut out = vec![0f32; batch * l * ev];
    sdpa_into(dims, inputs, scale, causal, dt, &mut out, None);
    Ok(Tensor::float(dt, out_shape.to_vec(), out))
}

/// The extents of an attention: `batch` slices of `l` queries and `s` keys, `e` elements per
/// query and key, `ev` per value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SdpaDims {
    pub batch: usize,
    pub l: usize,
    pub s: usize,
    pub e: usize,
    pub ev: usize,
}

/// `sdpa` on flat slices (q `[batch, l, e]`, k `[batch, s, e]`, v `[batch, s, ev]`) into `out`
/// (`[batch, l, ev]`); with `causal`, key `j` is masked out for query `i` when `j > causal(i)`.
/// The caller checks the slices' lengths.
/// With `lse`, writes each query's log-sum-exp of its scaled, masked scores there (`[batch, l]`,
/// `m + ln Σ exp(s - m)`) instead of the output (`out` is then not written).
pub(crate) fn sdpa_into(
    dims: SdpaDims,
    (qv, kv, vv): (&[f32], &[f32], &[f32]),
    scale: f32,
    causal: Option<&dyn Fn(usize) -> i64>,
    dt: tpc_ir::DType,
    out: &mut [f32],
    mut lse: Option<&mut [f32]>,
) {
    let SdpaDims { batch, l, s, e, ev } = dims;
    let mut scores = vec![0f32; l * s];
    let mut sums = vec![0f32; l];
    for b in 0..batch {
        let qb = &qv[b * l * e..(b + 1) * l * e];
        let kb = &kv[b * s * e..(b + 1) * s * e];
        let vb = &vv[b * s * ev..(b + 1) * s * ev];
        // kᵀ as a view: row stride 1, column stride e.
        gemm(l, e, s, qb, e, 1, kb, 1, e, &mut scores);
        for (i, row) in scores.chunks_mut(s.max(1)).enumerate().take(l) {
            let position = causal.map(|p| p(i));
            let mut m = f32::NEG_INFINITY;
            for (j, x) in row.iter_mut().enumerate() {
                *x = if position.is_some_and(|p| j as i64 > p) {
                    f32::NEG_INFINITY
                } else {
                    *x * scale
                };
                m = m.max(*x);
            }
            let mut sum = 0f32;
            for x in row.iter_mut() {
                *x = if *x == f32::NEG_INFINITY {
                    0.0
                } else {
                    (*x - m).exp()
                };
                sum += *x;
            }
            sums[i] = sum;
            if let Some(lse) = lse.as_deref_mut() {
                lse[b * l + i] = m + sum.ln();
            }
            // The unnormalized weights meet v in the storage dtype and the row sum divides
            // after, in f32: PyTorch's CPU attention kernel does this for bf16/f16.
            row.iter_mut().for_each(|x| *x = round_to(dt, *x));
        }
        if lse.is_some() {
            continue;
        }
        let ob = &mut out[b * l * ev..(b + 1) * l * ev];
        gemm(l, s, ev, &scores, s, 1, vb, ev, 1, ob);
        for (orow, sum) in ob.chunks_mut(ev.max(1)).zip(&sums) {
            orow.iter_mut().for_each(|x| *x = round_to(dt, *x / sum));
        }
    }
}

#[cfg(test)]
mod gemm_tests {
    use super::*;

    #[test]
    fn a_gemm_cut_into_row_blocks_gives_the_same_bits_as_one_thread() {
        let (m, k, n) = (300, 70, 250);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 3.0)
            .collect();
        let run = |threads: usize| {
            set_gemm_threads(threads);
            let mut c = vec![0f32; m * n];
            gemm(m, k, n, &a, k, 1, &b, n, 1, &mut c);
            c
        };
        let one = run(1);
        for t in [2, 3, 4] {
            let many = run(t);
            assert!(
                one.iter()
                    .zip(&many)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{t} threads"
            );
        }
        // And it is the product.
        let want: f32 = (0..k).map(|j| a[5 * k + j] * b[j * n + 7]).sum();
        assert!((one[5 * n + 7] - want).abs() <= 1e-3 * want.abs().max(1.0));
        set_gemm_threads(0);
    }
}

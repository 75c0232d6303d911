//! Elementwise ops: unary, gelu, binary, where, cast. Floats compute in f32 from the rounded
//! operands and round the result once, as PyTorch's CPU kernels do for bf16/f16.

use tpc_ir::ops::{BinaryOp, GeluApprox, UnaryOp};
use tpc_ir::DType;

use crate::tensor::{round_to, Data, Tensor};
use crate::{Error, Result};

fn erf(x: f32) -> f32 {
    libm::erff(x)
}

/// tanh of an f32, computed in f64 and rounded once: within 1 ulp of the true value (almost
/// always the correctly rounded one; see the tests), for every f32 including subnormals, ±0
/// (sign kept), ±inf (±1) and NaN (itself). Branch-free IEEE arithmetic only (no FMA, no libm),
/// so a loop of it vectorizes and gives the same bits on every CPU and at every vector width:
/// the reference and the interpreter share it (through [`gelu`] and [`gelu_tanh_slice`]).
///
/// tanh|x| = e / (e + 2) with e = expm1(2|x|) = 2^k·p(r) + (2^k − 1), 2|x| = k·ln2 + r,
/// |r| ≤ ln2/2, p(r) = expm1(r) by its Taylor series to r^12 (relative error < 1e-15); |x| is
/// clamped to 10, past which tanh rounds to 1 in f32.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2: f64 = std::f64::consts::LN_2;
    // Adding then subtracting 1.5·2^52 rounds to an integer, left in the low bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    let a = (x as f64).abs().min(10.0);
    let t = a + a;
    let kf_shifted = t * LOG2E + SHIFT;
    let kf = kf_shifted - SHIFT; // 0 <= kf <= 29
    let k = kf_shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    let r = t - kf * LN2;
    // expm1(r) = r + r^2/2! + ... + r^12/12!, Horner's rule from the top.
    let mut p = 1.0 / 479_001_600.0;
    p = p * r + 1.0 / 39_916_800.0;
    p = p * r + 1.0 / 3_628_800.0;
    p = p * r + 1.0 / 362_880.0;
    p = p * r + 1.0 / 40_320.0;
    p = p * r + 1.0 / 5_040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p *= r;
    let s = f64::from_bits(k.wrapping_add(1023) << 52); // 2^k
    let e = s * p + (s - 1.0);
    let y = (e / (e + 2.0)) as f32;
    let y = f32::from_bits(y.to_bits() | (x.to_bits() & 0x8000_0000));
    if x.is_nan() {
        x
    } else {
        y
    }
}

pub fn gelu(x: f32, approximate: GeluApprox) -> f32 {
    match approximate {
        GeluApprox::None => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        GeluApprox::Tanh => gelu_tanh(x),
    }
}

/// `gelu(x, GeluApprox::Tanh)`.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    let k = (2.0f32 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + tanh_f32(k * (x + 0.044715 * x * x * x)))
}

/// `v = round_to(dtype, gelu(v, Tanh))` for every `v`, vectorized (AVX-512 or AVX2 where the CPU
/// has it; the same bits either way).
pub fn gelu_tanh_slice(dtype: DType, v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, all `gelu_tanh_avx512` is compiled for.
            unsafe { gelu_tanh_avx512(dtype, v) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            unsafe { gelu_tanh_avx2(dtype, v) };
            return;
        }
    }
    gelu_tanh_portable(dtype, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_tanh_avx512(dtype: DType, v: &mut [f32]) {
    gelu_tanh_portable(dtype, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_tanh_avx2(dtype: DType, v: &mut [f32]) {
    gelu_tanh_portable(dtype, v)
}

#[inline(always)]
fn gelu_tanh_portable(dtype: DType, v: &mut [f32]) {
    if dtype == DType::F32 {
        v.iter_mut().for_each(|x| *x = gelu_tanh(*x));
    } else {
        v.iter_mut()
            .for_each(|x| *x = round_to(dtype, gelu_tanh(*x)));
    }
}

fn map_float(x: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor> {
    let dt = x.dtype();
    let out = x.floats()?.iter().map(|&v| round_to(dt, f(v))).collect();
    Ok(Tensor::float(dt, x.shape().to_vec(), out))
}

pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    match (op, x.data()) {
        (UnaryOp::Not, Data::Bool(v)) => {
            Tensor::from_bool(x.shape().to_vec(), v.iter().map(|b| !b).collect())
        }
        (UnaryOp::Neg, Data::I64(v)) => Tensor::from_i64(
            x.shape().to_vec(),
            v.iter().map(|a| a.wrapping_neg()).collect(),
        ),
        (UnaryOp::Abs, Data::I64(v)) => Tensor::from_i64(
            x.shape().to_vec(),
            v.iter().map(|a| a.wrapping_abs()).collect(),
        ),
        (_, Data::Float(_)) => map_float(x, |v| op.eval_f32(v)),
        _ => Err(Error::Internal(format!("{op:?} on {}", x.dtype()))),
    }
}

pub fn gelu_op(x: &Tensor, approximate: GeluApprox) -> Result<Tensor> {
    if approximate == GeluApprox::Tanh {
        let dt = x.dtype();
        let mut out = x.floats()?.to_vec();
        gelu_tanh_slice(dt, &mut out);
        return Ok(Tensor::float(dt, x.shape().to_vec(), out));
    }
    map_float(x, |v| gelu(v, approximate))
}

/// An arithmetic binary op on two f32 (before rounding to the storage dtype).
pub fn float_binary(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        // torch.maximum/minimum propagate NaN.
        BinaryOp::Maximum => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        }
        BinaryOp::Minimum => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.min(b)
            }
        }
        BinaryOp::Pow => a.powf(b),
        _ => f32::NAN,
    }
}

pub(crate) fn compare<T: PartialOrd>(op: BinaryOp, a: T, b: T) -> bool {
    match op {
        BinaryOp::Eq => a == b,
        BinaryOp::Ne => a != b,
        BinaryOp::Lt => a < b,
        BinaryOp::Le => a <= b,
        BinaryOp::Gt => a > b,
        BinaryOp::Ge => a >= b,
        _ => false,
    }
}

/// Integer arithmetic: exact, wrapping on overflow as torch's int64 does; `div` truncates toward
/// zero and division by zero is an error (torch would change the dtype to float instead).
fn int_binary(op: BinaryOp, a: i64, b: i64) -> Result<i64> {
    Ok(match op {
        BinaryOp::Add => a.wrapping_add(b),
        BinaryOp::Sub => a.wrapping_sub(b),
        BinaryOp::Mul => a.wrapping_mul(b),
        BinaryOp::Div => {
            if b == 0 {
                return Err(Error::Value("integer division by zero".into()));
            }
            a.wrapping_div(b)
        }
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
        _ => return Err(Error::Internal(format!("{op:?} on i64"))),
    })
}

pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let shape = a.shape().to_vec();
    if op.is_comparison() {
        let out: Vec<bool> = match (a.data(), b.data()) {
            (Data::Float(x), Data::Float(y)) => {
                x.iter().zip(y).map(|(&p, &q)| compare(op, p, q)).collect()
            }
            (Data::I64(x), Data::I64(y)) => {
                x.iter().zip(y).map(|(&p, &q)| compare(op, p, q)).collect()
            }
            (Data::Bool(x), Data::Bool(y)) => {
                x.iter().zip(y).map(|(&p, &q)| compare(op, p, q)).collect()
            }
            _ => return Err(Error::Internal("comparison of mixed dtypes".into())),
        };
        return Tensor::from_bool(shape, out);
    }
    match (a.data(), b.data()) {
        (Data::Float(x), Data::Float(y)) => {
            let dt = a.dtype();
            let out = x
                .iter()
                .zip(y)
                .map(|(&p, &q)| round_to(dt, float_binary(op, p, q)))
                .collect();
            Ok(Tensor::float(dt, shape, out))
        }
        (Data::I64(x), Data::I64(y)) => {
            let out = x
                .iter()
                .zip(y)
                .map(|(&p, &q)| int_binary(op, p, q))
                .collect::<Result<Vec<_>>>()?;
            Tensor::from_i64(shape, out)
        }
        (Data::Bool(x), Data::Bool(y)) => {
            let out = x
                .iter()
                .zip(y)
                .map(|(&p, &q)| match op {
                    BinaryOp::And => Ok(p && q),
                    BinaryOp::Or => Ok(p || q),
                    _ => Err(Error::Internal(format!("{op:?} on bool"))),
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::from_bool(shape, out)
        }
        _ => Err(Error::Internal("binary op on mixed dtypes".into())),
    }
}

pub fn where_op(c: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let cond = c.bools()?;
    let shape = a.shape().to_vec();
    match (a.data(), b.data()) {
        (Data::Float(x), Data::Float(y)) => Ok(Tensor::float(
            a.dtype(),
            shape,
            cond.iter()
                .zip(x.iter().zip(y))
                .map(|(&k, (&p, &q))| if k { p } else { q })
                .collect(),
        )),
        (Data::I64(x), Data::I64(y)) => Tensor::from_i64(
            shape,
            cond.iter()
                .zip(x.iter().zip(y))
                .map(|(&k, (&p, &q))| if k { p } else { q })
                .collect(),
        ),
        (Data::Bool(x), Data::Bool(y)) => Tensor::from_bool(
            shape,
            cond.iter()
                .zip(x.iter().zip(y))
                .map(|(&k, (&p, &q))| if k { p } else { q })
                .collect(),
        ),
        _ => Err(Error::Internal("where on mixed dtypes".into())),
    }
}

/// torch's casts: float→int truncates toward zero (NaN or out-of-range is an error here, where
/// torch's result is undefined), float→bool is `x != 0`, bool→number is 0/1.
pub fn cast(x: &Tensor, to: DType, name: &str) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    match (x.data(), to) {
        (Data::Float(v), t) if t.is_float() => Ok(Tensor::float(
            t,
            shape,
            v.iter().map(|&a| round_to(t, a)).collect(),
        )),
        (Data::Float(v), DType::I64) => {
            let out = v
                .iter()
                .map(|&a| {
                    if a.is_finite() && a.abs() < 9.2e18 {
                        Ok(a.trunc() as i64)
                    } else {
                        Err(Error::Value(format!(
                            "casting %{name} to i64: {a} has no i64 value"
                        )))
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::from_i64(shape, out)
        }
        (Data::Float(v), _) => Tensor::from_bool(shape, v.iter().map(|&a| a != 0.0).collect()),
        (Data::I64(v), t) if t.is_float() => Ok(Tensor::float(
            t,
            shape,
            v.iter().map(|&a| round_to(t, a as f32)).collect(),
        )),
        (Data::I64(v), DType::I64) => Tensor::from_i64(shape, v.clone()),
        (Data::I64(v), _) => Tensor::from_bool(shape, v.iter().map(|&a| a != 0).collect()),
        (Data::Bool(v), t) if t.is_float() => Ok(Tensor::float(
            t,
            shape,
            v.iter().map(|&a| a as u8 as f32).collect(),
        )),
        (Data::Bool(v), DType::I64) => {
            Tensor::from_i64(shape, v.iter().map(|&a| a as i64).collect())
        }
        (Data::Bool(v), _) => Tensor::from_bool(shape, v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tanh_f32 is f64's tanh rounded to f32 (the correctly rounded value, but for double
    /// rounding) on a spread of every sign and exponent, and the special values. An exhaustive
    /// run over all 2^32 inputs found no difference at all.
    #[test]
    fn tanh_f32_is_f64_tanh_rounded() {
        let specials = [
            0.0f32,
            -0.0,
            f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            1e-20,
            0.5,
            0.549_306_1,
            1.0,
            8.7,
            9.0,
            10.0,
            10.5,
            88.7,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let spread = (0..u32::MAX / 997).map(|i| f32::from_bits(i.wrapping_mul(997)));
        for x in specials.into_iter().chain(spread) {
            let got = tanh_f32(x);
            if x.is_nan() {
                assert!(got.is_nan());
                continue;
            }
            let want = (x as f64).tanh() as f32;
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "tanh({x:e}) = {got:e}, want {want:e}"
            );
        }
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    /// The slice form (on every vector width this CPU has) is the scalar `gelu`, bit for bit.
    #[test]
    fn gelu_tanh_slice_is_scalar_gelu() {
        let xs: Vec<f32> = (0..200_003u32)
            .map(|i| f32::from_bits(i.wrapping_mul(21_467)))
            .chain((-2000..2000).map(|i| i as f32 / 100.0))
            .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0])
            .collect();
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let want: Vec<u32> = xs
                .iter()
                .map(|&x| round_to(dt, gelu(x, GeluApprox::Tanh)).to_bits())
                .collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let mut v = xs.clone();
            gelu_tanh_slice(dt, &mut v);
            assert_eq!(bits(&v), want, "{dt}");
            let mut v = xs.clone();
            gelu_tanh_portable(dt, &mut v);
            assert_eq!(bits(&v), want, "{dt} portable");
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    let mut v = xs.clone();
                    // SAFETY: the CPU has AVX2.
                    unsafe { gelu_tanh_avx2(dt, &mut v) };
                    assert_eq!(bits(&v), want, "{dt} avx2");
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let mut v = xs.clone();
                    // SAFETY: the CPU has AVX-512F.
                    unsafe { gelu_tanh_avx512(dt, &mut v) };
                    assert_eq!(bits(&v), want, "{dt} avx512");
                }
            }
        }
    }
}

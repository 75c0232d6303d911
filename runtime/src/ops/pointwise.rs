//! Elementwise ops: unary, gelu, binary, where, cast. Floats compute in f32 from the rounded
//! operands and round the result once, as PyTorch's CPU kernels do for bf16/f16.

use tpc_ir::op::{BinaryOp, GeluApprox, UnaryOp};
use tpc_ir::DType;

use crate::tensor::{round_to, Data, Tensor};
use crate::{Error, Result};

fn erf(x: f32) -> f32 {
    libm::erff(x)
}

pub fn gelu(x: f32, approximate: GeluApprox) -> f32 {
    match approximate {
        GeluApprox::None => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        GeluApprox::Tanh => {
            let k = (2.0f32 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
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
        (_, Data::Float(_)) => map_float(x, |v| float_unary(op, v)),
        _ => Err(Error::Internal(format!("{op:?} on {}", x.dtype()))),
    }
}

/// A unary op on one f32 (before rounding to the storage dtype).
pub fn float_unary(op: UnaryOp, v: f32) -> f32 {
    match op {
        UnaryOp::Neg => -v,
        UnaryOp::Abs => v.abs(),
        UnaryOp::Exp => v.exp(),
        UnaryOp::Log => v.ln(),
        UnaryOp::Sqrt => v.sqrt(),
        UnaryOp::Rsqrt => 1.0 / v.sqrt(),
        UnaryOp::Tanh => v.tanh(),
        UnaryOp::Sigmoid => sigmoid(v),
        UnaryOp::Relu => {
            if v > 0.0 || v.is_nan() {
                v
            } else {
                0.0
            }
        }
        UnaryOp::Silu => v * sigmoid(v),
        UnaryOp::Reciprocal => 1.0 / v,
        UnaryOp::Not => f32::NAN,
    }
}

pub fn gelu_op(x: &Tensor, approximate: GeluApprox) -> Result<Tensor> {
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

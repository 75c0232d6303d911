//! Tables of the costly unary functions (exp, log, tanh, sigmoid, silu) at every bf16 or
//! f16 value, for operands known to hold values of that dtype (a load of a bf16 buffer, a value
//! rounded to bf16): a lookup instead of a libm call. A table holds the very results the scalar
//! function gives (it is built by calling it), and every lookup first checks that the operand is
//! exactly the dtype value it indexes (falling back to the function otherwise), so results are
//! bit for bit those of the function.

use std::sync::OnceLock;

use tpc_codegen::kir::Expr;
use tpc_ir::ops::UnaryOp;
use tpc_ir::DType;

/// A function with tables: one of [`UNARY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Func(UnaryOp);

const UNARY: [UnaryOp; 5] = [
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Silu,
];

impl Func {
    /// The function an expression applies, if it has a table.
    pub(super) fn of(e: &Expr) -> Option<Func> {
        match e {
            Expr::Unary(op, _) if UNARY.contains(op) => Some(Func(*op)),
            _ => None,
        }
    }

    pub(super) fn eval(self, x: f32) -> f32 {
        self.0.eval_f32(x)
    }

    fn index(self) -> usize {
        UNARY.iter().position(|&u| u == self.0).unwrap_or(0)
    }
}

const FUNCS: usize = UNARY.len();

static TABLES: [[OnceLock<Box<[f32]>>; FUNCS]; 2] =
    [const { [const { OnceLock::new() }; FUNCS] }; 2];

fn slot(f: Func, dtype: DType) -> Option<&'static OnceLock<Box<[f32]>>> {
    let d = match dtype {
        DType::BF16 => 0,
        DType::F16 => 1,
        _ => return None,
    };
    Some(&TABLES[d][f.index()])
}

/// The f32 value of 16-bit pattern `i` of `dtype` (bf16 or f16).
fn value(dtype: DType, i: u16) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_bits(i).to_f32(),
        _ => half::f16::from_bits(i).to_f32(),
    }
}

/// The table of `f` over `dtype` (bf16 or f16), built on first use (65536 calls of `f`), if
/// it is built or `build`.
pub(super) fn table(f: Func, dtype: DType, build: bool) -> Option<&'static [f32]> {
    let slot = slot(f, dtype)?;
    if !build {
        return slot.get().map(|t| &t[..]);
    }
    Some(slot.get_or_init(|| (0..=u16::MAX).map(|i| f.eval(value(dtype, i))).collect()))
}

/// `f(x)` from the bf16 table `t` when `x` is a bf16 value.
#[inline(always)]
pub(super) fn bf16(t: &[f32], f: Func, x: f32) -> f32 {
    let b = x.to_bits();
    if b & 0xFFFF == 0 {
        t[(b >> 16) as usize]
    } else {
        f.eval(x)
    }
}

/// `f(x)` from the f16 table `t` when `x` is an f16 value.
#[inline(always)]
pub(super) fn f16(t: &[f32], f: Func, x: f32) -> f32 {
    let h = half::f16::from_f32(x);
    if h.to_f32().to_bits() == x.to_bits() {
        t[h.to_bits() as usize]
    } else {
        f.eval(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_equal_the_functions() {
        for dtype in [DType::BF16, DType::F16] {
            for f in [
                Func(UnaryOp::Exp),
                Func(UnaryOp::Tanh),
                Func(UnaryOp::Sigmoid),
                Func(UnaryOp::Silu),
            ] {
                let t = table(f, dtype, true).unwrap();
                for i in (0..=u16::MAX).step_by(7) {
                    let x = value(dtype, i);
                    let got = match dtype {
                        DType::BF16 => bf16(t, f, x),
                        _ => f16(t, f, x),
                    };
                    assert_eq!(got.to_bits(), f.eval(x).to_bits(), "{f:?} {dtype} {x}");
                }
                // Not a value of the dtype: the function itself.
                let x = 1.000_000_1f32;
                let got = match dtype {
                    DType::BF16 => bf16(t, f, x),
                    _ => f16(t, f, x),
                };
                assert_eq!(got.to_bits(), f.eval(x).to_bits());
            }
        }
    }
}

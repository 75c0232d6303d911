//! The CPU interpreter of the kernel IR (tpc-codegen's `kir`): runs a generated kernel on host
//! tensors with the reference executor's scalar functions, so a fused kernel can be checked,
//! bit for bit, against the ops it replaces. Registers hold f32; bools as 0 and 1.

use tpc_codegen::kir::{Expr, Fused as Kernel, Scalar};
use tpc_ir::op::{BinaryOp, UnaryOp};
use tpc_ir::DType;

use crate::ops::pointwise::{compare, float_binary, float_unary, gelu};
use crate::tensor::{round_to, Tensor};
use crate::{Error, Result};

/// Runs pointwise kernel `k` on `inputs` (in the kernel's input order) into its outputs, all
/// of `shape`; each input's shape must be `shape` with its broadcast dims of extent 1 (or
/// missing on the left).
pub fn run_pointwise(k: &Kernel, inputs: &[&Tensor], shape: &[usize]) -> Result<Vec<Tensor>> {
    if inputs.len() != k.inputs.len() || shape.len() != k.rank {
        return Err(Error::Internal(format!(
            "kernel {} takes {} inputs of rank {}, got {} for rank {}",
            k.name,
            k.inputs.len(),
            k.rank,
            inputs.len(),
            shape.len()
        )));
    }
    // Each input's stride per output dim (0 where it broadcasts).
    let mut strides: Vec<Vec<usize>> = Vec::new();
    let mut data: Vec<Vec<f32>> = Vec::new();
    for (x, spec) in inputs.iter().zip(&k.inputs) {
        let mut s = vec![0usize; k.rank];
        let mut step = 1usize;
        for d in (0..k.rank).rev() {
            if !spec.broadcast[d] {
                s[d] = step;
                step *= shape[d];
            }
        }
        if step != x.numel() {
            return Err(Error::Internal(format!(
                "kernel {}: input %{} has {} elements, not {step}",
                k.name,
                spec.name,
                x.numel()
            )));
        }
        strides.push(s);
        data.push(x.to_f32_vec());
    }
    let total: usize = shape.iter().product();
    let mut outs: Vec<Vec<f32>> = vec![Vec::with_capacity(total); k.outputs.len()];
    let mut regs = vec![0f32; k.body.len()];
    let mut index = vec![0usize; k.rank];
    for _ in 0..total {
        for (v, (ty, e)) in k.body.iter().enumerate() {
            let r = |x: &tpc_codegen::kir::Value| regs[x.0];
            let b = |x: bool| if x { 1.0 } else { 0.0 };
            regs[v] = match e {
                Expr::Load(j) => {
                    let at: usize = index.iter().zip(&strides[*j]).map(|(i, s)| i * s).sum();
                    data[*j][at]
                }
                Expr::Const(c) => *c,
                Expr::Unary(UnaryOp::Not, a) => b(r(a) == 0.0),
                Expr::Unary(op, a) => float_unary(*op, r(a)),
                Expr::Gelu(approx, a) => gelu(r(a), *approx),
                Expr::Binary(BinaryOp::And, a, c) => b(r(a) != 0.0 && r(c) != 0.0),
                Expr::Binary(BinaryOp::Or, a, c) => b(r(a) != 0.0 || r(c) != 0.0),
                Expr::Binary(op, a, c) if op.is_comparison() => b(compare(*op, r(a), r(c))),
                Expr::Binary(op, a, c) => float_binary(*op, r(a), r(c)),
                Expr::Select(c, a, d) => {
                    if r(c) != 0.0 {
                        r(a)
                    } else {
                        r(d)
                    }
                }
                Expr::Round(dt, a) => round_to(*dt, r(a)),
                Expr::Arg(_) | Expr::Rand(_) | Expr::RowReduce(..) => {
                    return Err(Error::Internal(format!(
                        "kernel {}: not interpreted yet",
                        k.name
                    )))
                }
            };
            debug_assert!(*ty == Scalar::F32 || regs[v] == 0.0 || regs[v] == 1.0);
        }
        for (o, spec) in outs.iter_mut().zip(&k.outputs) {
            o.push(regs[spec.value.0]);
        }
        // Next output index, row-major.
        for d in (0..k.rank).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    outs.into_iter()
        .zip(&k.outputs)
        .map(|(out, spec)| match spec.dtype {
            DType::Bool => {
                Tensor::from_bool(shape.to_vec(), out.iter().map(|&x| x != 0.0).collect())
            }
            DType::I64 => Err(Error::Internal(format!(
                "kernel {} stores i64, which pointwise kernels do not",
                k.name
            ))),
            dt => Tensor::from_f32(dt, shape.to_vec(), out),
        })
        .collect()
}

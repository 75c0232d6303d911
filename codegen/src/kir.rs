//! The kernel IR: what a generated kernel computes, small and typed, printable, written to CUDA C
//! by `cuda.rs` and interpreted on the CPU by the runtime, so both executors run one meaning.
//!
//! A pointwise kernel computes one element of each of its outputs per thread. The outputs share
//! `rank` dims whose extents are kernel arguments (`n0`, `n1`, …), so one compile serves every
//! batch and sequence length. Each input is read at the output's index, except along the dims it broadcasts (its
//! extent there is 1). The body is a list of SSA values, each computed in f32 (or as a bool for
//! comparisons) and rounded to the dtype its op stores, so a fused chain rounds exactly as the
//! unfused ops do.

use std::fmt;

use tpc_ir::op::{BinaryOp, GeluApprox, UnaryOp};
use tpc_ir::DType;

/// A tensor the kernel reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// The graph value it holds (for diagnostics and the host program).
    pub name: String,
    pub dtype: DType,
    /// Per output dim: whether the input has extent 1 there (broadcast) instead of the
    /// output's extent. Inputs of lower rank are aligned to the right and broadcast the rest.
    pub broadcast: Vec<bool>,
}

/// A value computed by the kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Input `i` at the current element.
    Load(usize),
    Const(f32),
    Unary(UnaryOp, Value),
    Gelu(GeluApprox, Value),
    Binary(BinaryOp, Value, Value),
    /// `where(c, a, b)`.
    Select(Value, Value, Value),
    /// The f32 value rounded to a storage dtype (bf16, f16) and back; identity for f32.
    Round(DType, Value),
}

/// An SSA value of the body, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Value(pub usize);

/// The register type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    F32,
    Bool,
}

/// A tensor the kernel writes: a graph value (for diagnostics and the host program), its
/// dtype, and the body value stored to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub dtype: DType,
    pub value: Value,
}

/// A pointwise kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub inputs: Vec<Input>,
    /// Every value of the fused group that is used outside it, in program order: all of the
    /// same shape.
    pub outputs: Vec<Output>,
    /// The outputs' rank: the kernel takes that many extents.
    pub rank: usize,
    pub body: Vec<(Scalar, Expr)>,
}

impl Kernel {
    /// The register type of `v`.
    pub fn scalar(&self, v: Value) -> Scalar {
        self.body[v.0].0
    }
}

fn dtype_name(d: DType) -> String {
    d.to_string()
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extents: Vec<String> = (0..self.rank).map(|d| format!("n{d}")).collect();
        writeln!(f, "kernel @{}[{}] {{", self.name, extents.join(", "))?;
        for (i, input) in self.inputs.iter().enumerate() {
            let dims: Vec<String> = input
                .broadcast
                .iter()
                .enumerate()
                .map(|(d, &b)| if b { "1".to_string() } else { format!("n{d}") })
                .collect();
            writeln!(
                f,
                "  in{i} %{}: {}[{}]",
                input.name,
                dtype_name(input.dtype),
                dims.join(", ")
            )?;
        }
        for (i, (ty, e)) in self.body.iter().enumerate() {
            let ty = match ty {
                Scalar::F32 => "f32",
                Scalar::Bool => "bool",
            };
            let rhs = match e {
                Expr::Load(k) => format!("load in{k}"),
                Expr::Const(c) => format!("const {c:?}"),
                Expr::Unary(op, a) => format!("{} {a}", format!("{op:?}").to_lowercase()),
                Expr::Gelu(GeluApprox::None, a) => format!("gelu {a}"),
                Expr::Gelu(GeluApprox::Tanh, a) => format!("gelu.tanh {a}"),
                Expr::Binary(op, a, b) => format!("{} {a}, {b}", format!("{op:?}").to_lowercase()),
                Expr::Select(c, a, b) => format!("select {c}, {a}, {b}"),
                Expr::Round(d, a) => format!("round.{} {a}", dtype_name(*d)),
            };
            writeln!(f, "  v{i}: {ty} = {rhs}")?;
        }
        for o in &self.outputs {
            writeln!(
                f,
                "  store %{}: {}[{}] = {}",
                o.name,
                dtype_name(o.dtype),
                extents.join(", "),
                o.value
            )?;
        }
        write!(f, "}}")
    }
}

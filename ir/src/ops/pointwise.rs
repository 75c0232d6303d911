//! Elementwise ops: unary and binary math, `gelu`, `where`, `cast`. Their rule is the identity
//! on every dim (each rank computes its own part); their scalar meaning is here too, so that the
//! executors share it.

use super::{one, AttrValue, Op, OpDef, OpSpec, ResultType};
use crate::decompose::Expander;
use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::ValueId;
use crate::infer::{arity, need_float, same_dtype, same_shapes, InferError};
use crate::rule::{FactorKind, FactorRule, PartialFlow};
use crate::syntax::attrs::{AttrError, AttrReader};
use crate::types::TensorType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Relu,
    Silu,
    Reciprocal,
    Sin,
    Cos,
    Erf,
    /// Logical not, on bool tensors.
    Not,
}

pub const UNARY_OPS: [(UnaryOp, &str); 15] = [
    (UnaryOp::Neg, "neg"),
    (UnaryOp::Abs, "abs"),
    (UnaryOp::Exp, "exp"),
    (UnaryOp::Log, "log"),
    (UnaryOp::Sqrt, "sqrt"),
    (UnaryOp::Rsqrt, "rsqrt"),
    (UnaryOp::Tanh, "tanh"),
    (UnaryOp::Sigmoid, "sigmoid"),
    (UnaryOp::Relu, "relu"),
    (UnaryOp::Silu, "silu"),
    (UnaryOp::Reciprocal, "reciprocal"),
    (UnaryOp::Sin, "sin"),
    (UnaryOp::Cos, "cos"),
    (UnaryOp::Erf, "erf"),
    (UnaryOp::Not, "not"),
];

impl UnaryOp {
    /// The op's value at `x`, in f32 (as the executors compute it); `not` is not a float op.
    pub fn eval_f32(self, x: f32) -> f32 {
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            // NaN stays NaN, as torch.relu.
            UnaryOp::Relu => {
                if x > 0.0 || x.is_nan() {
                    x
                } else {
                    0.0
                }
            }
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Reciprocal => 1.0 / x,
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Erf => libm::erff(x),
            UnaryOp::Not => f32::NAN,
        }
    }
}

/// Every dim passes through: operands and result share each factor.
pub(crate) fn elementwise_rule(n_operands: usize, out: &[Dim]) -> FactorRule {
    let mut r = FactorRule::default();
    r.result = out
        .iter()
        .map(|d| r.dim_factor(d, FactorKind::Pass))
        .collect();
    r.operands = vec![r.result.clone(); n_operands];
    r
}

impl OpDef for UnaryOp {
    fn name(&self) -> &'static str {
        UNARY_OPS
            .iter()
            .find(|(x, _)| x == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        let name = self.name();
        arity(name, xs, 1, 1)?;
        let x = xs[0];
        match self {
            UnaryOp::Not => {
                if x.dtype != DType::Bool {
                    return Err(InferError::new(format!(
                        "`not` needs a bool operand, but this one is {}",
                        x.dtype
                    ))
                    .at(0));
                }
            }
            UnaryOp::Neg | UnaryOp::Abs => {
                if x.dtype == DType::Bool {
                    return Err(InferError::new(format!("`{name}` is not defined on bool")).at(0));
                }
            }
            _ => need_float(name, x, 0)?,
        }
        one(x.dtype, x.shape.clone())
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        elementwise_rule(xs.len(), out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

pub const BINARY_OPS: [(BinaryOp, &str); 15] = [
    (BinaryOp::Add, "add"),
    (BinaryOp::Sub, "sub"),
    (BinaryOp::Mul, "mul"),
    (BinaryOp::Div, "div"),
    (BinaryOp::Maximum, "maximum"),
    (BinaryOp::Minimum, "minimum"),
    (BinaryOp::Pow, "pow"),
    (BinaryOp::Eq, "eq"),
    (BinaryOp::Ne, "ne"),
    (BinaryOp::Lt, "lt"),
    (BinaryOp::Le, "le"),
    (BinaryOp::Gt, "gt"),
    (BinaryOp::Ge, "ge"),
    (BinaryOp::And, "and"),
    (BinaryOp::Or, "or"),
];

impl BinaryOp {
    /// Comparisons give bool results.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }
}

impl OpDef for BinaryOp {
    fn name(&self) -> &'static str {
        BINARY_OPS
            .iter()
            .find(|(x, _)| x == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
    fn broadcasts_operands(&self) -> bool {
        true
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        let name = self.name();
        arity(name, xs, 2, 2)?;
        let dt = same_dtype(name, xs, &[0, 1])?;
        same_shapes(name, xs)?;
        if self.is_logical() {
            if dt != DType::Bool {
                return Err(InferError::new(format!(
                    "`{name}` needs bool operands, but got {dt}"
                )));
            }
        } else if dt == DType::Bool && !matches!(self, BinaryOp::Eq | BinaryOp::Ne) {
            return Err(InferError::new(format!("`{name}` is not defined on bool"))
                .hint("use `and`/`or` for logic, or cast to a number"));
        }
        if *self == BinaryOp::Pow {
            need_float(name, xs[0], 0)?;
        }
        let out = if self.is_comparison() {
            DType::Bool
        } else {
            dt
        };
        one(out, xs[0].shape.clone())
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        let mut r = elementwise_rule(xs.len(), out);
        // `a * c` and `a / c` are linear in `a`: a pending sum of `a` stays pending.
        if matches!(self, BinaryOp::Mul | BinaryOp::Div) {
            r.carries_partial = PartialFlow::Linear;
        }
        r
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GeluApprox {
    None,
    Tanh,
}

/// `gelu(x) {approximate = none|tanh}`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gelu {
    pub approximate: GeluApprox,
}

impl OpDef for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        let a = match self.approximate {
            GeluApprox::None => "none",
            GeluApprox::Tanh => "tanh",
        };
        vec![("approximate", AttrValue::Ident(a.into()))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("gelu", xs, 1, 1)?;
        need_float("gelu", xs[0], 0)?;
        one(xs[0].dtype, xs[0].shape.clone())
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        elementwise_rule(xs.len(), out)
    }
    /// In f32, in the order of the reference's scalar formula: `0.5 * x * (1 + erf(x / √2))`,
    /// or with tanh, `0.5 * x * (1 + tanh(√(2/π) * (x + 0.044715 * x * x * x)))`; each op
    /// after the first reads one made before it, so that a kernel computes the whole chain.
    fn decompose(&self, e: &mut Expander<'_>) -> Result<Option<Vec<ValueId>>, InferError> {
        let Some(x) = e.operand(0) else {
            return Ok(None);
        };
        let xf = e.cast(x, DType::F32)?;
        let c = |e: &mut Expander<'_>, v: f32| e.constant(v as f64, DType::F32, xf);
        let inner = match self.approximate {
            GeluApprox::None => {
                let k = c(e, std::f32::consts::FRAC_1_SQRT_2)?;
                let scaled = e.binary(BinaryOp::Mul, xf, k)?;
                e.unary(UnaryOp::Erf, scaled)?
            }
            GeluApprox::Tanh => {
                let a = c(e, 0.044715)?;
                let mut cube = e.binary(BinaryOp::Mul, a, xf)?;
                cube = e.binary(BinaryOp::Mul, cube, xf)?;
                cube = e.binary(BinaryOp::Mul, cube, xf)?;
                let sum = e.binary(BinaryOp::Add, xf, cube)?;
                let k = c(e, (2.0f32 / std::f32::consts::PI).sqrt())?;
                let scaled = e.binary(BinaryOp::Mul, k, sum)?;
                e.unary(UnaryOp::Tanh, scaled)?
            }
        };
        let one = c(e, 1.0)?;
        let sum = e.binary(BinaryOp::Add, one, inner)?;
        // `(x * s) * 0.5` is `(0.5 * x) * s` exactly (halving is exact), and reads as one chain
        // from the sum.
        let y = e.binary(BinaryOp::Mul, xf, sum)?;
        let half = c(e, 0.5)?;
        let y = e.binary(BinaryOp::Mul, y, half)?;
        Ok(Some(vec![e.cast(y, e.dtype(x))?]))
    }
}

/// `where(cond, a, b)`: `cond ? a : b`, elementwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Where;

impl OpDef for Where {
    fn name(&self) -> &'static str {
        "where"
    }
    fn broadcasts_operands(&self) -> bool {
        true
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("where", xs, 3, 3)?;
        if xs[0].dtype != DType::Bool {
            return Err(InferError::new(format!(
                "`where` needs a bool condition, but got {}",
                xs[0].dtype
            ))
            .at(0));
        }
        let dt = same_dtype("where", xs, &[1, 2])?;
        same_shapes("where", xs)?;
        one(dt, xs[1].shape.clone())
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        elementwise_rule(xs.len(), out)
    }
}

/// `cast(x) {dtype = f32}`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cast {
    pub to: DType,
}

impl OpDef for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![("dtype", AttrValue::Ident(self.to.name().into()))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("cast", xs, 1, 1)?;
        one(self.to, xs[0].shape.clone())
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        let mut r = elementwise_rule(xs.len(), out);
        // A float-to-float cast rounds each element monotonically: a pending sum, max or min
        // stays one (of rounded summands, as a partial value stored in that dtype is).
        if xs.first().is_some_and(|x| x.dtype.is_float()) && self.to.is_float() {
            r.carries_partial = PartialFlow::Moves;
        }
        r
    }
}

fn parse_unary(r: &mut AttrReader<'_>, _: &[&TensorType]) -> Result<Op, AttrError> {
    UNARY_OPS
        .iter()
        .find(|(_, n)| *n == r.op())
        .map(|(u, _)| Op::Unary(*u))
        .ok_or_else(|| r.unknown())
}

fn parse_binary(r: &mut AttrReader<'_>, _: &[&TensorType]) -> Result<Op, AttrError> {
    BINARY_OPS
        .iter()
        .find(|(_, n)| *n == r.op())
        .map(|(b, _)| Op::Binary(*b))
        .ok_or_else(|| r.unknown())
}

pub(super) fn specs() -> Vec<OpSpec> {
    let simple = |name, parse| OpSpec {
        name,
        defaults: super::no_defaults,
        parse,
    };
    let mut out: Vec<OpSpec> = UNARY_OPS
        .iter()
        .map(|&(_, n)| simple(n, parse_unary))
        .chain(BINARY_OPS.iter().map(|&(_, n)| simple(n, parse_binary)))
        .collect();
    out.push(OpSpec {
        name: "gelu",
        defaults: |_| vec![("approximate", AttrValue::Ident("none".into()))],
        parse: |r, _| {
            let a = r.defaulted("approximate")?;
            let approximate = match &a.value {
                AttrValue::Ident(s) if s == "none" => GeluApprox::None,
                AttrValue::Ident(s) if s == "tanh" => GeluApprox::Tanh,
                _ => return Err(r.kind_err(a, "`none` or `tanh`")),
            };
            Ok(Op::Gelu(Gelu { approximate }))
        },
    });
    out.push(simple("where", |_, _| Ok(Op::Where(Where))));
    out.push(simple("cast", |r, _| {
        let a = r.required("dtype", "dtype = f32")?;
        Ok(Op::Cast(Cast { to: r.dtype(a)? }))
    }));
    out
}

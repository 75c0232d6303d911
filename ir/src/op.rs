//! The ops of the IR, their attributes, and their text names.
//!
//! Every op has one result. Dims named in attributes (`dim = -1`) are stored normalized
//! (non-negative); the printer writes them that way.

use crate::dim::Dim;
use crate::dtype::DType;

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
    /// Logical not, on bool tensors.
    Not,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GeluApprox {
    None,
    Tanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
}

/// An op. Operand counts and meanings are documented on each variant and in `docs/ir.md`.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A function parameter (no operands).
    Param { index: usize },
    /// `neg(x)`, `exp(x)`, …
    Unary(UnaryOp),
    /// `gelu(x) {approximate = none|tanh}`
    Gelu { approximate: GeluApprox },
    /// `add(a, b)`, … with equal shapes in the graph (the text form may broadcast).
    Binary(BinaryOp),
    /// `where(cond, a, b)`: `cond ? a : b`, elementwise.
    Where,
    /// `cast(x) {dtype = f32}`
    Cast { to: DType },
    /// `broadcast(x) {shape = [...]}`: numpy rules, aligned from the right. `implicit` marks the
    /// ones the parser made for a broadcasting operand; the source printer folds them back.
    Broadcast { shape: Vec<Dim>, implicit: bool },
    /// `sum(x) {dims = [..], keepdim = false}`, also `mean`, `max`, `min`.
    Reduce {
        kind: ReduceKind,
        dims: Vec<usize>,
        keepdim: bool,
    },
    /// `softmax(x) {dim = d}`
    Softmax { dim: usize },
    /// `layer_norm(x[, weight[, bias]]) {eps, normalized}`: over the last `normalized` dims.
    LayerNorm { eps: f64, normalized: usize },
    /// `rms_norm(x[, weight]) {eps, normalized}`; `eps = None` is the dtype's machine epsilon.
    RmsNorm { eps: Option<f64>, normalized: usize },
    /// `matmul(a, b)`: `[..., m, k] x [..., k, n]`, or `[..., m, k] x [k, n]`.
    Matmul,
    /// `linear(x, w[, b])`: `x @ w^T + b`, `w: [out, in]`.
    Linear,
    /// `reshape(x) {shape = [...]}`: row-major, same element count.
    Reshape { shape: Vec<Dim> },
    /// `permute(x) {dims = [...]}`: result dim `i` is operand dim `dims[i]`.
    Permute { perm: Vec<usize> },
    /// `slice(x) {dim, start, end, step}`: elements `start, start+step, … < end` of `dim`.
    Slice {
        dim: usize,
        start: Dim,
        end: Dim,
        step: i64,
    },
    /// `concat(a, b, …) {dim}`
    Concat { dim: usize },
    /// `embedding(ids, weight)`: `weight[ids]`, `ids: i64[...]`, `weight: [V, D]`.
    Embedding,
    /// `sdpa(q, k, v) {causal, scale}`: softmax(q k^T * scale [+ causal mask]) v.
    Sdpa { causal: bool, scale: Option<f64> },
    /// `rand_like(x) {seed}`: uniform in [0, 1), x's shape and dtype, Philox keyed by seed and
    /// global element index.
    RandLike { seed: u64 },
    /// `dropout(x) {p, seed}`: keeps each element with probability `1 - p`, scaled by `1/(1-p)`.
    Dropout { p: f64, seed: u64 },
    /// `full() {shape, value, dtype}`
    Full {
        shape: Vec<Dim>,
        value: f64,
        dtype: DType,
    },
    /// `cross_entropy(logits, target) {ignore_index}`: mean over non-ignored targets; classes on
    /// dim 1 (dim 0 for rank-1 logits), as torch.nn.functional.cross_entropy.
    CrossEntropy { ignore_index: i64 },
    /// A collective that the sharding passes insert: the same global value before and after,
    /// laid out differently over mesh axis `axis` (see `Collective`).
    Collective { kind: Collective, axis: String },
}

/// The communication ops. Each is the identity on the global value; what changes is how the
/// value lies over one mesh axis (the operand's and the result's types say exactly how).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collective {
    /// partial -> whole on every rank.
    AllReduce(crate::types::ReduceOp),
    /// partial -> split: each rank keeps its piece of the reduction.
    ReduceScatter(crate::types::ReduceOp),
    /// split -> whole on every rank.
    AllGather,
    /// split on one dim -> split on another.
    AllToAll,
    /// whole -> split: each rank keeps its piece; no traffic.
    Shard,
}

impl Collective {
    pub fn name(self) -> &'static str {
        match self {
            Collective::AllReduce(_) => "allreduce",
            Collective::ReduceScatter(_) => "reduce_scatter",
            Collective::AllGather => "allgather",
            Collective::AllToAll => "all_to_all",
            Collective::Shard => "shard",
        }
    }
}

pub const UNARY_OPS: [(UnaryOp, &str); 12] = [
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
    (UnaryOp::Not, "not"),
];

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

pub const REDUCE_OPS: [(ReduceKind, &str); 4] = [
    (ReduceKind::Sum, "sum"),
    (ReduceKind::Mean, "mean"),
    (ReduceKind::Max, "max"),
    (ReduceKind::Min, "min"),
];

/// Names of the ops that take no unary/binary/reduce table entry.
pub const OTHER_OPS: [&str; 24] = [
    "gelu",
    "where",
    "cast",
    "broadcast",
    "softmax",
    "layer_norm",
    "rms_norm",
    "matmul",
    "linear",
    "reshape",
    "permute",
    "slice",
    "concat",
    "embedding",
    "sdpa",
    "rand_like",
    "dropout",
    "full",
    "cross_entropy",
    "allreduce",
    "reduce_scatter",
    "allgather",
    "all_to_all",
    "shard",
];

/// Every op name the text form accepts, sorted, for "did you mean" hints and docs.
pub fn all_op_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = UNARY_OPS.iter().map(|(_, n)| *n).collect();
    names.extend(BINARY_OPS.iter().map(|(_, n)| *n));
    names.extend(REDUCE_OPS.iter().map(|(_, n)| *n));
    names.extend(OTHER_OPS);
    names.sort();
    names
}

impl Op {
    /// The op's name in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Param { .. } => "param",
            Op::Unary(u) => UNARY_OPS
                .iter()
                .find(|(x, _)| x == u)
                .map(|(_, n)| *n)
                .unwrap_or("?"),
            Op::Binary(b) => BINARY_OPS
                .iter()
                .find(|(x, _)| x == b)
                .map(|(_, n)| *n)
                .unwrap_or("?"),
            Op::Reduce { kind, .. } => REDUCE_OPS
                .iter()
                .find(|(x, _)| x == kind)
                .map(|(_, n)| *n)
                .unwrap_or("?"),
            Op::Gelu { .. } => "gelu",
            Op::Where => "where",
            Op::Cast { .. } => "cast",
            Op::Broadcast { .. } => "broadcast",
            Op::Softmax { .. } => "softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Matmul => "matmul",
            Op::Linear => "linear",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Embedding => "embedding",
            Op::Sdpa { .. } => "sdpa",
            Op::RandLike { .. } => "rand_like",
            Op::Dropout { .. } => "dropout",
            Op::Full { .. } => "full",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::Collective { kind, .. } => kind.name(),
        }
    }

    /// Whether the text form broadcasts this op's operands numpy-style (the graph then holds
    /// explicit `broadcast` nodes and the op sees equal shapes).
    pub fn broadcasts_operands(&self) -> bool {
        matches!(self, Op::Binary(_) | Op::Where)
    }

    /// The op's attributes as the text form writes them, in canonical order.
    pub fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        use AttrValue as A;
        let dims = |v: &[usize]| A::List(v.iter().map(|d| A::Int(*d as i64)).collect());
        let shape = |v: &[Dim]| A::List(v.iter().map(|d| A::Dim(d.clone())).collect());
        match self {
            Op::Param { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Matmul
            | Op::Linear
            | Op::Embedding => vec![],
            Op::Gelu { approximate } => vec![(
                "approximate",
                A::Ident(match approximate {
                    GeluApprox::None => "none".into(),
                    GeluApprox::Tanh => "tanh".into(),
                }),
            )],
            Op::Cast { to } => vec![("dtype", A::Ident(to.name().into()))],
            Op::Broadcast { shape: s, .. } => vec![("shape", shape(s))],
            Op::Reduce {
                dims: d, keepdim, ..
            } => {
                let mut v = vec![("dims", dims(d))];
                if *keepdim {
                    v.push(("keepdim", A::Bool(true)));
                }
                v
            }
            Op::Softmax { dim } => vec![("dim", A::Int(*dim as i64))],
            Op::LayerNorm { eps, normalized } => {
                vec![
                    ("eps", A::Float(*eps)),
                    ("normalized", A::Int(*normalized as i64)),
                ]
            }
            Op::RmsNorm { eps, normalized } => {
                let mut v = Vec::new();
                if let Some(e) = eps {
                    v.push(("eps", A::Float(*e)));
                }
                v.push(("normalized", A::Int(*normalized as i64)));
                v
            }
            Op::Reshape { shape: s } => vec![("shape", shape(s))],
            Op::Permute { perm } => vec![("dims", dims(perm))],
            Op::Slice {
                dim,
                start,
                end,
                step,
            } => vec![
                ("dim", A::Int(*dim as i64)),
                ("start", A::Dim(start.clone())),
                ("end", A::Dim(end.clone())),
                ("step", A::Int(*step)),
            ],
            Op::Concat { dim } => vec![("dim", A::Int(*dim as i64))],
            Op::Sdpa { causal, scale } => {
                let mut v = vec![("causal", A::Bool(*causal))];
                if let Some(s) = scale {
                    v.push(("scale", A::Float(*s)));
                }
                v
            }
            Op::RandLike { seed } => vec![("seed", A::Int(*seed as i64))],
            Op::Dropout { p, seed } => vec![("p", A::Float(*p)), ("seed", A::Int(*seed as i64))],
            Op::Full {
                shape: s,
                value,
                dtype,
            } => vec![
                ("shape", shape(s)),
                ("value", A::Float(*value)),
                ("dtype", A::Ident(dtype.name().into())),
            ],
            Op::CrossEntropy { ignore_index } => vec![("ignore_index", A::Int(*ignore_index))],
            Op::Collective { kind, axis } => {
                let mut v = vec![("axis", A::Ident(axis.clone()))];
                if let Collective::AllReduce(op) | Collective::ReduceScatter(op) = kind {
                    v.push(("op", A::Ident(op.name().into())));
                }
                v
            }
        }
    }
}

/// An attribute value as written in the text form.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Ident(String),
    /// A dim expression with symbols (`S/8`); plain integers are `Int`.
    Dim(Dim),
    List(Vec<AttrValue>),
}

impl std::fmt::Display for AttrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Float(x) => write!(f, "{}", format_float(*x)),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Ident(s) => f.write_str(s),
            AttrValue::Dim(d) => write!(f, "{d}"),
            AttrValue::List(items) => {
                f.write_str("[")?;
                for (i, it) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{it}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Shortest text that parses back to the same f64, always with a `.` or exponent so that it
/// reads as a float: `0.1`, `1e-5`, `2.0`, `inf`, `-inf`, `nan`.
pub fn format_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let plain = format!("{x}");
    let sci = format!("{x:e}");
    let best = if sci.len() < plain.len() { sci } else { plain };
    if best.contains('.') || best.contains('e') {
        best
    } else {
        format!("{best}.0")
    }
}

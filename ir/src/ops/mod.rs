//! The ops of the IR, each defined once.
//!
//! Every op is a payload type (its attributes) implementing [`OpDef`], in the file of its family
//! (`pointwise`, `reduce`, `norm`, `linalg`, `shape`, `random`, `loss`, `collective`, `source`).
//! The definition states everything the compiler needs to know about the op: its name, its
//! attributes with their defaults (parsed and printed from one schema), its result types, its
//! factor rule (which also says whether a pending reduction passes through it), what global
//! context a rank needs to compute its piece, how the op is cut for one rank, and the slot for
//! its vector-Jacobian product. Passes, code generation and the executors ask the op through
//! [`Op::def`] instead of matching on its kind; what remains a `match` is the one place each
//! backend says how to compute an op (a kernel lowering, a reference implementation).
//!
//! An op may have several results (`split`, the `*_stats` variants of the norms). The graph
//! holds one node per result an op keeps, each with the op, its result index and its own type
//! and sharding (see `Graph`).

mod collective;
mod linalg;
mod loss;
mod norm;
mod pointwise;
mod random;
mod reduce;
mod shape;
mod source;

pub use collective::{Collective, CollectiveOp};
pub use linalg::{Linear, Matmul, Sdpa, SdpaScale};
pub use loss::{CrossEntropy, Kept, Pick};
pub use norm::{LayerNorm, RmsNorm};
pub use pointwise::{BinaryOp, Cast, Gelu, GeluApprox, UnaryOp, Where, BINARY_OPS, UNARY_OPS};
pub use random::{Dropout, RandLike};
pub use reduce::{Reduce, ReduceKind, Softmax, REDUCE_OPS};
pub use shape::{Broadcast, Concat, Embedding, Permute, Reshape, Slice, Split};
pub use source::{Full, InvCount, Param};

use crate::decompose::Expander;
use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::ValueId;
use crate::infer::InferError;
use crate::rule::FactorRule;
use crate::syntax::attrs::{AttrError, AttrReader};
use crate::types::TensorType;

/// One result's dtype and shape.
pub type ResultType = (DType, Vec<Dim>);

/// What a rank needs to know beyond its own pieces to compute its piece of an op's result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GlobalContext {
    /// The global (row-major) index of every element it computes: random draws are keyed by it,
    /// so that any split draws the same numbers as one device.
    pub element_index: bool,
    /// `(operand, dim)`: the global positions along that dim of that operand (causal attention
    /// masks by the queries' global positions, dim 2 from the end of `q`; an embedding looks up
    /// the table rows it holds).
    pub positions: Option<(usize, DimOf)>,
    /// The global element count of the reduced dims (a mean divides by it, not by the piece's).
    pub reduced_count: bool,
}

/// A dim of a tensor, counted from either end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DimOf {
    FromStart(usize),
    FromEnd(usize),
}

impl DimOf {
    /// The dim in a tensor of rank `rank`, if it has it.
    pub fn of_rank(self, rank: usize) -> Option<usize> {
        match self {
            DimOf::FromStart(d) => (d < rank).then_some(d),
            DimOf::FromEnd(k) => rank.checked_sub(k),
        }
    }
}

/// The vector-Jacobian product of an op: filled in by the gradients work (issue 15). Until then
/// every op answers `None`, and asking for a gradient is an error naming the op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vjp;

/// Everything about one op, stated once. Object safe: [`Op::def`] hands out `&dyn OpDef`.
pub trait OpDef: std::fmt::Debug {
    /// The op's name in the text form.
    fn name(&self) -> &'static str;

    /// The attributes as the text form writes them, in canonical order (the printer leaves out
    /// those equal to their default, see [`OpSpec::defaults`]).
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        Vec::new()
    }

    /// How many results the op has.
    fn num_results(&self) -> usize {
        1
    }

    /// The names of the results, for messages (`mean`, `rstd`); empty when there is one.
    fn result_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// The dtype and shape of every result, given the operands' types.
    fn infer(&self, operands: &[&TensorType]) -> Result<Vec<ResultType>, InferError>;

    /// The factor rule seen from result `result` (of shape `out`): how the operands' dims relate
    /// to that result's dims. The op must have passed inference with these operands.
    fn rule(&self, operands: &[&TensorType], out: &[Dim], result: usize) -> FactorRule;

    /// Whether the text form broadcasts the operands numpy-style (the graph then holds explicit
    /// `broadcast` nodes and the op sees equal shapes).
    fn broadcasts_operands(&self) -> bool {
        false
    }

    /// What a rank needs besides its pieces (result `result`'s).
    fn global_context(&self, _result: usize) -> GlobalContext {
        GlobalContext::default()
    }

    /// The op as one rank computes it, when its attributes name the result's shape (reshape,
    /// broadcast, full): `local` is the rank's piece of the result. `None`: the same on every
    /// rank.
    fn for_rank(&self, _local: &[Dim]) -> Option<Op> {
        None
    }

    /// The op written as primitive ops, for a composite (softmax, the norms, mean, dropout,
    /// gelu): one value per result, in result order, added through `e` before the op. The
    /// `decompose` pass puts them in the op's place. `Ok(None)`: the op is primitive.
    fn decompose(&self, _e: &mut Expander<'_>) -> Result<Option<Vec<ValueId>>, InferError> {
        Ok(None)
    }

    /// Whether the compile pipeline writes the op as its decomposition before sharding
    /// (`decompose-before-sharding`), so that its stages shard on their own: a loss whose
    /// classes may be split (cross-entropy's partial max and sums).
    fn decompose_before_sharding(&self) -> bool {
        false
    }

    /// The vector-Jacobian product, for reverse-mode gradients (not yet: issue 15).
    fn vjp(&self) -> Option<Vjp> {
        None
    }
}

/// How the parser meets an op: its name, the defaults of the attributes it may leave out, and
/// the constructor from attributes. One entry per name; `registry()` lists them all.
pub struct OpSpec {
    pub name: &'static str,
    /// The attributes the text may leave out, with their values (which may depend on the
    /// operands: a norm's `normalized` is its weight's rank). The parser fills them in and the
    /// printer leaves out attributes equal to them.
    pub defaults: fn(&[&TensorType]) -> Vec<(&'static str, AttrValue)>,
    pub parse: fn(&mut AttrReader<'_>, &[&TensorType]) -> Result<Op, AttrError>,
}

pub(crate) fn no_defaults(_: &[&TensorType]) -> Vec<(&'static str, AttrValue)> {
    Vec::new()
}

/// Every op the text form accepts, by name (sorted).
pub fn registry() -> &'static [OpSpec] {
    static REGISTRY: std::sync::OnceLock<Vec<OpSpec>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut all = Vec::new();
        all.extend(pointwise::specs());
        all.extend(reduce::specs());
        all.extend(norm::specs());
        all.extend(linalg::specs());
        all.extend(shape::specs());
        all.extend(random::specs());
        all.extend(loss::specs());
        all.extend(collective::specs());
        all.extend(source::specs());
        all.sort_by_key(|s| s.name);
        all
    })
}

/// The parser's entry for `name`.
pub fn spec(name: &str) -> Option<&'static OpSpec> {
    let r = registry();
    r.binary_search_by_key(&name, |s| s.name)
        .ok()
        .map(|i| &r[i])
}

/// Every op name the text form accepts, sorted, for "did you mean" hints and docs.
pub fn all_op_names() -> Vec<&'static str> {
    registry().iter().map(|s| s.name).collect()
}

/// An op. A closed set: each variant's payload is the op's definition ([`OpDef`]); the rest of
/// the compiler asks [`Op::def`]. `Eq`, `Ord` and `Hash` (floats by their bit pattern), so ops
/// can be memo keys and e-graph nodes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// A function parameter (no operands).
    Param(Param),
    /// `neg(x)`, `exp(x)`, `sin(x)`, …
    Unary(UnaryOp),
    /// `gelu(x) {approximate = none|tanh}`
    Gelu(Gelu),
    /// `add(a, b)`, … with equal shapes in the graph (the text form may broadcast).
    Binary(BinaryOp),
    /// `where(cond, a, b)`
    Where(Where),
    /// `cast(x) {dtype = f32}`
    Cast(Cast),
    /// `broadcast(x) {shape = [...]}`
    Broadcast(Broadcast),
    /// `sum(x) {dims, keepdim}`, also `mean`, `max`, `min`.
    Reduce(Reduce),
    /// `softmax(x) {dim}`
    Softmax(Softmax),
    /// `layer_norm(x[, weight[, bias]]) {eps, normalized}` and `layer_norm_stats`.
    LayerNorm(LayerNorm),
    /// `rms_norm(x[, weight]) {eps, normalized}` and `rms_norm_stats`.
    RmsNorm(RmsNorm),
    /// `matmul(a, b)`
    Matmul(Matmul),
    /// `linear(x, w[, b])`: `x @ w^T + b`.
    Linear(Linear),
    /// `reshape(x) {shape}`
    Reshape(Reshape),
    /// `permute(x) {dims}`
    Permute(Permute),
    /// `slice(x) {dim, start, end, step}`
    Slice(Slice),
    /// `concat(a, b, …) {dim}`
    Concat(Concat),
    /// `%a, %b = split(x) {dim, sizes}`
    Split(Split),
    /// `embedding(ids, weight)`
    Embedding(Embedding),
    /// `sdpa(q, k, v) {causal, scale}`
    Sdpa(Sdpa),
    /// `rand_like(x) {seed}`
    RandLike(RandLike),
    /// `dropout(x) {p, seed}`
    Dropout(Dropout),
    /// `full() {shape, value, dtype}`
    Full(Full),
    /// `inv_count() {count}`: `1 / count`, a scalar.
    InvCount(InvCount),
    /// `cross_entropy(logits, target) {ignore_index}`
    CrossEntropy(CrossEntropy),
    /// `pick(x, target) {dim, ignore_index}`: the target's entry along `dim`.
    Pick(Pick),
    /// `kept(target) {ignore_index}`: 1 where the target is not ignored.
    Kept(Kept),
    /// A collective that the sharding passes insert.
    Collective(CollectiveOp),
}

impl Op {
    /// The op's definition: the one place that lists the kinds.
    pub fn def(&self) -> &dyn OpDef {
        match self {
            Op::Param(x) => x,
            Op::Unary(x) => x,
            Op::Gelu(x) => x,
            Op::Binary(x) => x,
            Op::Where(x) => x,
            Op::Cast(x) => x,
            Op::Broadcast(x) => x,
            Op::Reduce(x) => x,
            Op::Softmax(x) => x,
            Op::LayerNorm(x) => x,
            Op::RmsNorm(x) => x,
            Op::Matmul(x) => x,
            Op::Linear(x) => x,
            Op::Reshape(x) => x,
            Op::Permute(x) => x,
            Op::Slice(x) => x,
            Op::Concat(x) => x,
            Op::Split(x) => x,
            Op::Embedding(x) => x,
            Op::Sdpa(x) => x,
            Op::RandLike(x) => x,
            Op::Dropout(x) => x,
            Op::Full(x) => x,
            Op::InvCount(x) => x,
            Op::CrossEntropy(x) => x,
            Op::Pick(x) => x,
            Op::Kept(x) => x,
            Op::Collective(x) => x,
        }
    }

    /// The op's name in the text form.
    pub fn name(&self) -> &'static str {
        self.def().name()
    }

    /// See [`OpDef::broadcasts_operands`].
    pub fn broadcasts_operands(&self) -> bool {
        self.def().broadcasts_operands()
    }

    /// The attributes as the text form writes them, in canonical order.
    pub fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        self.def().attrs()
    }

    /// How many results the op has.
    pub fn num_results(&self) -> usize {
        self.def().num_results()
    }

    /// The attribute defaults of this op for these operands (see [`OpSpec::defaults`]).
    pub fn defaults(&self, operands: &[&TensorType]) -> Vec<(&'static str, AttrValue)> {
        spec(self.name())
            .map(|s| (s.defaults)(operands))
            .unwrap_or_default()
    }
}

/// An f64 attribute compared, ordered and hashed by its bit pattern (so `nan` equals itself and
/// `0.0` differs from `-0.0`): what makes ops usable as keys.
pub(crate) fn float_key(x: f64) -> u64 {
    x.to_bits()
}

/// Implements `PartialEq`, `Eq`, `PartialOrd`, `Ord` and `Hash` for a payload from a key of
/// hashable parts (floats through [`float_key`]).
macro_rules! keyed {
    ($ty:ty, |$s:ident| $key:expr) => {
        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                let key = |$s: &$ty| $key;
                key(self) == key(other)
            }
        }
        impl Eq for $ty {}
        impl PartialOrd for $ty {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $ty {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                let key = |$s: &$ty| $key;
                key(self).cmp(&key(other))
            }
        }
        impl std::hash::Hash for $ty {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                let key = |$s: &$ty| $key;
                key(self).hash(state)
            }
        }
    };
}
pub(crate) use keyed;

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

impl AttrValue {
    pub(crate) fn dims(v: &[usize]) -> AttrValue {
        AttrValue::List(v.iter().map(|d| AttrValue::Int(*d as i64)).collect())
    }
    pub(crate) fn shape(v: &[Dim]) -> AttrValue {
        AttrValue::List(v.iter().map(|d| AttrValue::Dim(d.clone())).collect())
    }
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

/// The single result of a one-result op's inference.
pub(crate) fn one(dtype: DType, shape: Vec<Dim>) -> Result<Vec<ResultType>, InferError> {
    Ok(vec![(dtype, shape)])
}

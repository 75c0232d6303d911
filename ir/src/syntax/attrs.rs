//! Building an `Op` from its text name, attributes and operand types: defaults, negative dims,
//! and errors for unknown, missing or ill-typed attributes.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::op::{AttrValue, Collective, GeluApprox, Op, BINARY_OPS, REDUCE_OPS, UNARY_OPS};
use crate::span::Span;
use crate::types::{ReduceOp, TensorType};

/// An attribute as written: `name = value`.
#[derive(Clone, Debug)]
pub struct Attr {
    pub name: String,
    pub name_span: Span,
    pub value: AttrValue,
    pub value_span: Span,
}

/// Why an op could not be built; the span is the offending attribute (or the op name).
#[derive(Clone, Debug)]
pub struct AttrError {
    pub message: String,
    pub span: Span,
    pub label: String,
    pub help: Option<String>,
}

struct Reader<'a> {
    op: &'a str,
    attrs: &'a [Attr],
    op_span: Span,
    allowed: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    fn err(&self, span: Span, message: String, label: &str, help: Option<String>) -> AttrError {
        AttrError {
            message,
            span,
            label: label.into(),
            help,
        }
    }

    fn get(&mut self, name: &'static str) -> Option<&'a Attr> {
        self.allowed.push(name);
        self.attrs.iter().find(|a| a.name == name)
    }

    /// An attribute that `default_attrs` gives a default, so it is always present.
    fn defaulted(&mut self, name: &'static str) -> Result<&'a Attr, AttrError> {
        self.get(name).ok_or_else(|| {
            self.err(
                self.op_span,
                format!("internal: `{name}` of `{}` has no default", self.op),
                "here",
                None,
            )
        })
    }

    fn required(&mut self, name: &'static str, example: &str) -> Result<&'a Attr, AttrError> {
        self.get(name).ok_or_else(|| {
            self.err(
                self.op_span,
                format!("`{}` needs the attribute `{name}`", self.op),
                "attribute missing",
                Some(format!("for example `{}(…) {{{example}}}`", self.op)),
            )
        })
    }

    fn kind_err(&self, a: &Attr, want: &str) -> AttrError {
        self.err(
            a.value_span,
            format!("`{}` must be {want}, not `{}`", a.name, a.value),
            &format!("expected {want}"),
            None,
        )
    }

    fn int(&self, a: &Attr) -> Result<i64, AttrError> {
        match &a.value {
            AttrValue::Int(i) => Ok(*i),
            _ => Err(self.kind_err(a, "an integer")),
        }
    }

    fn float(&self, a: &Attr) -> Result<f64, AttrError> {
        match &a.value {
            AttrValue::Int(i) => Ok(*i as f64),
            AttrValue::Float(x) => Ok(*x),
            AttrValue::Ident(s) if s == "inf" => Ok(f64::INFINITY),
            AttrValue::Ident(s) if s == "nan" => Ok(f64::NAN),
            _ => Err(self.kind_err(a, "a number")),
        }
    }

    fn bool(&self, a: &Attr) -> Result<bool, AttrError> {
        match &a.value {
            AttrValue::Bool(b) => Ok(*b),
            _ => Err(self.kind_err(a, "`true` or `false`")),
        }
    }

    fn seed(&self, a: &Attr) -> Result<u64, AttrError> {
        let i = self.int(a)?;
        u64::try_from(i).map_err(|_| self.kind_err(a, "a non-negative integer"))
    }

    fn dim_value(&self, a: &Attr, v: &AttrValue) -> Result<Dim, AttrError> {
        match v {
            AttrValue::Int(i) => Ok(Dim::constant(*i)),
            AttrValue::Dim(d) => Ok(d.clone()),
            AttrValue::Ident(s) if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Ok(Dim::symbol(s))
            }
            _ => Err(self.kind_err(a, "a dim (a number or an expression over symbols)")),
        }
    }

    fn shape(&self, a: &Attr) -> Result<Vec<Dim>, AttrError> {
        match &a.value {
            AttrValue::List(items) => items.iter().map(|v| self.dim_value(a, v)).collect(),
            _ => Err(self.kind_err(a, "a list of dims like `[B, S, 768]`")),
        }
    }

    fn dtype(&self, a: &Attr) -> Result<DType, AttrError> {
        match &a.value {
            AttrValue::Ident(s) => DType::from_name(s).ok_or_else(|| {
                self.err(
                    a.value_span,
                    format!("unknown dtype `{s}`"),
                    "not a dtype",
                    Some("the dtypes are f32, bf16, f16, i64, bool".into()),
                )
            }),
            _ => Err(self.kind_err(a, "a dtype")),
        }
    }

    /// A dim index, possibly negative, normalized against `rank`.
    fn axis(&self, a: &Attr, v: &AttrValue, rank: usize) -> Result<usize, AttrError> {
        let i = match v {
            AttrValue::Int(i) => *i,
            _ => return Err(self.kind_err(a, "a dim index")),
        };
        let r = rank as i64;
        if i < -r || i >= r {
            return Err(self.err(
                a.value_span,
                format!("dim {i} is out of range for an operand of rank {rank}"),
                "no such dim",
                Some(format!(
                    "dims of a rank-{rank} tensor are 0..{r} (or -{r}..-1 from the end)"
                )),
            ));
        }
        Ok(if i < 0 { (i + r) as usize } else { i as usize })
    }

    fn axes(&self, a: &Attr, rank: usize) -> Result<Vec<usize>, AttrError> {
        match &a.value {
            AttrValue::List(items) => items.iter().map(|v| self.axis(a, v, rank)).collect(),
            AttrValue::Int(_) => Ok(vec![self.axis(a, &a.value, rank)?]),
            _ => Err(self.kind_err(a, "a list of dim indices like `[0, 2]`")),
        }
    }

    /// Rejects attributes the op does not take, naming the ones it does.
    fn finish(&self) -> Result<(), AttrError> {
        for a in self.attrs {
            if !self.allowed.contains(&a.name.as_str()) {
                let help = if self.allowed.is_empty() {
                    format!("`{}` takes no attributes", self.op)
                } else {
                    let names: Vec<String> =
                        self.allowed.iter().map(|n| format!("`{n}`")).collect();
                    format!("`{}` takes {}", self.op, names.join(", "))
                };
                return Err(self.err(
                    a.name_span,
                    format!("`{}` has no attribute `{}`", self.op, a.name),
                    "unknown attribute",
                    Some(help),
                ));
            }
        }
        for (i, a) in self.attrs.iter().enumerate() {
            if let Some(b) = self.attrs[..i].iter().find(|b| b.name == a.name) {
                let _ = b;
                return Err(self.err(
                    a.name_span,
                    format!("attribute `{}` is given twice", a.name),
                    "given again here",
                    None,
                ));
            }
        }
        Ok(())
    }
}

/// The op named `name`, or `None` when no op has that name.
pub fn build_op(
    name: &str,
    op_span: Span,
    attrs: &[Attr],
    operands: &[&TensorType],
) -> Option<Result<Op, AttrError>> {
    // The text's attributes, then the defaults of those it leaves out (one table for the decoder
    // and the printer).
    let mut merged: Vec<Attr> = attrs.to_vec();
    for (n, value) in default_attrs(name, operands) {
        if !attrs.iter().any(|a| a.name == n) {
            merged.push(Attr {
                name: n.to_string(),
                name_span: op_span,
                value,
                value_span: op_span,
            });
        }
    }
    let mut r = Reader {
        op: name,
        attrs: &merged,
        op_span,
        allowed: Vec::new(),
    };
    let rank = operands.first().map(|t| t.rank()).unwrap_or(0);
    let result = (|| -> Result<Op, AttrError> {
        let op = if let Some((u, _)) = UNARY_OPS.iter().find(|(_, n)| *n == name) {
            Op::Unary(*u)
        } else if let Some((b, _)) = BINARY_OPS.iter().find(|(_, n)| *n == name) {
            Op::Binary(*b)
        } else if let Some((kind, _)) = REDUCE_OPS.iter().find(|(_, n)| *n == name) {
            let dims = r.required("dims", "dims = [-1]")?;
            let dims = r.axes(dims, rank)?;
            let keepdim = {
                let a = r.defaulted("keepdim")?;
                r.bool(a)?
            };
            Op::Reduce {
                kind: *kind,
                dims,
                keepdim,
            }
        } else {
            match name {
                "gelu" => {
                    let a = r.defaulted("approximate")?;
                    let approximate = match &a.value {
                        AttrValue::Ident(s) if s == "none" => GeluApprox::None,
                        AttrValue::Ident(s) if s == "tanh" => GeluApprox::Tanh,
                        _ => return Err(r.kind_err(a, "`none` or `tanh`")),
                    };
                    Op::Gelu { approximate }
                }
                "where" => Op::Where,
                "matmul" => Op::Matmul,
                "linear" => Op::Linear,
                "embedding" => Op::Embedding,
                "cast" => {
                    let a = r.required("dtype", "dtype = f32")?;
                    Op::Cast { to: r.dtype(a)? }
                }
                "broadcast" => {
                    let a = r.required("shape", "shape = [B, S, 768]")?;
                    Op::Broadcast {
                        shape: r.shape(a)?,
                        implicit: false,
                    }
                }
                "reshape" => {
                    let a = r.required("shape", "shape = [B, S, 16, 48]")?;
                    Op::Reshape { shape: r.shape(a)? }
                }
                "full" => {
                    let a = r.required("shape", "shape = [B, S], value = 0.0")?;
                    let shape = r.shape(a)?;
                    let a = r.required("value", "shape = [B, S], value = 0.0")?;
                    let value = r.float(a)?;
                    let dtype = {
                        let a = r.defaulted("dtype")?;
                        r.dtype(a)?
                    };
                    Op::Full {
                        shape,
                        value,
                        dtype,
                    }
                }
                "softmax" => {
                    let a = r.required("dim", "dim = -1")?;
                    Op::Softmax {
                        dim: r.axis(a, &a.value, rank)?,
                    }
                }
                "layer_norm" | "rms_norm" => {
                    let eps = match r.get("eps") {
                        Some(a) => Some(r.float(a)?),
                        None => None,
                    };
                    let normalized = {
                        let a = r.defaulted("normalized")?;
                        {
                            let n = r.int(a)?;
                            usize::try_from(n)
                                .map_err(|_| r.kind_err(a, "a positive count of trailing dims"))?
                        }
                    };
                    if name == "layer_norm" {
                        Op::LayerNorm {
                            eps: eps.unwrap_or(1e-5),
                            normalized,
                        }
                    } else {
                        Op::RmsNorm { eps, normalized }
                    }
                }
                "permute" => {
                    let a = r.required("dims", "dims = [0, 2, 1, 3]")?;
                    Op::Permute {
                        perm: r.axes(a, rank)?,
                    }
                }
                "slice" => {
                    let dim_attr = r.required("dim", "dim = 2, start = 0, end = 1")?;
                    let dim = r.axis(dim_attr, &dim_attr.value, rank)?;
                    let extent = operands
                        .first()
                        .and_then(|t| t.shape.get(dim).cloned())
                        .unwrap_or_default();
                    let start = {
                        let a = r.defaulted("start")?;
                        r.dim_value(a, &a.value)?
                    };
                    let end = match r.get("end") {
                        Some(a) => r.dim_value(a, &a.value)?,
                        None => extent,
                    };
                    let step = {
                        let a = r.defaulted("step")?;
                        r.int(a)?
                    };
                    Op::Slice {
                        dim,
                        start,
                        end,
                        step,
                    }
                }
                "concat" => {
                    let a = r.required("dim", "dim = 0")?;
                    Op::Concat {
                        dim: r.axis(a, &a.value, rank)?,
                    }
                }
                "sdpa" => {
                    let causal = {
                        let a = r.defaulted("causal")?;
                        r.bool(a)?
                    };
                    let scale = match r.get("scale") {
                        Some(a) => Some(r.float(a)?),
                        None => None,
                    };
                    Op::Sdpa { causal, scale }
                }
                "rand_like" => Op::RandLike {
                    seed: {
                        let a = r.defaulted("seed")?;
                        r.seed(a)?
                    },
                },
                "dropout" => {
                    let p = {
                        let a = r.defaulted("p")?;
                        {
                            let p = r.float(a)?;
                            if !(0.0..=1.0).contains(&p) {
                                return Err(r.err(
                                    a.value_span,
                                    format!("dropout probability {p} is not in [0, 1]"),
                                    "out of range",
                                    None,
                                ));
                            }
                            p
                        }
                    };
                    let seed = {
                        let a = r.defaulted("seed")?;
                        r.seed(a)?
                    };
                    Op::Dropout { p, seed }
                }
                "allreduce" | "reduce_scatter" | "allgather" | "all_to_all" | "shard" => {
                    let a = r.required("axis", "axis = tp")?;
                    let AttrValue::Ident(axis) = &a.value else {
                        return Err(r.kind_err(a, "a mesh axis name"));
                    };
                    let reduce = if matches!(name, "allreduce" | "reduce_scatter") {
                        let o = r.defaulted("op")?;
                        match &o.value {
                            AttrValue::Ident(s) if s == "sum" => ReduceOp::Sum,
                            AttrValue::Ident(s) if s == "max" => ReduceOp::Max,
                            AttrValue::Ident(s) if s == "min" => ReduceOp::Min,
                            _ => return Err(r.kind_err(o, "`sum`, `max` or `min`")),
                        }
                    } else {
                        ReduceOp::Sum
                    };
                    let kind = match name {
                        "allreduce" => Collective::AllReduce(reduce),
                        "reduce_scatter" => Collective::ReduceScatter(reduce),
                        "allgather" => Collective::AllGather,
                        "all_to_all" => Collective::AllToAll,
                        _ => Collective::Shard,
                    };
                    Op::Collective {
                        kind,
                        axis: axis.clone(),
                    }
                }
                "cross_entropy" => Op::CrossEntropy {
                    ignore_index: {
                        let a = r.defaulted("ignore_index")?;
                        r.int(a)?
                    },
                },
                _ => return Err(r.err(op_span, String::new(), "", None)),
            }
        };
        r.finish()?;
        Ok(op)
    })();
    match result {
        Err(e) if e.message.is_empty() => None,
        other => Some(other),
    }
}

/// The attributes an op takes by default, as `Op::attrs` would write them: the decoder fills
/// these in when the text leaves them out, and the printer leaves out the ones that match.
pub fn default_attrs(op: &str, operands: &[&TensorType]) -> Vec<(&'static str, AttrValue)> {
    let normalized = || AttrValue::Int(operands.get(1).map(|w| w.rank()).unwrap_or(1) as i64);
    match op {
        "gelu" => vec![("approximate", AttrValue::Ident("none".into()))],
        "sum" | "mean" | "max" | "min" => vec![("keepdim", AttrValue::Bool(false))],
        "layer_norm" => vec![
            ("eps", AttrValue::Float(1e-5)),
            ("normalized", normalized()),
        ],
        "rms_norm" => vec![("normalized", normalized())],
        // `end` is always written: a slice reads better with both bounds in sight.
        "slice" => vec![
            ("start", AttrValue::Dim(Dim::constant(0))),
            ("step", AttrValue::Int(1)),
        ],
        "sdpa" => vec![("causal", AttrValue::Bool(false))],
        "rand_like" => vec![("seed", AttrValue::Int(0))],
        "dropout" => vec![("p", AttrValue::Float(0.5)), ("seed", AttrValue::Int(0))],
        "full" => vec![("dtype", AttrValue::Ident("f32".into()))],
        "cross_entropy" => vec![("ignore_index", AttrValue::Int(-100))],
        "allreduce" | "reduce_scatter" => vec![("op", AttrValue::Ident("sum".into()))],
        _ => Vec::new(),
    }
}

//! The communication ops that the sharding passes insert. Each is the identity on the global
//! value; what changes is how the value lies over one mesh axis (the operand's and the
//! result's types say exactly how).

use super::{one, AttrValue, Op, OpDef, OpSpec, ResultType};
use crate::dim::Dim;
use crate::infer::{arity, InferError};
use crate::rule::FactorRule;
use crate::syntax::attrs::{AttrError, AttrReader};
use crate::types::{ReduceOp, TensorType};

use super::pointwise::elementwise_rule;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collective {
    /// partial -> whole on every rank.
    AllReduce(ReduceOp),
    /// partial -> split: each rank keeps its piece of the reduction.
    ReduceScatter(ReduceOp),
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

    /// Whether the collective moves data between ranks: all but `shard`, which keeps each
    /// rank's piece of a value it already holds whole.
    pub fn moves_data(self) -> bool {
        self != Collective::Shard
    }
}

/// A collective over mesh axis `axis`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectiveOp {
    pub kind: Collective,
    pub axis: String,
}

impl OpDef for CollectiveOp {
    fn name(&self) -> &'static str {
        self.kind.name()
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        let mut v = vec![("axis", AttrValue::Ident(self.axis.clone()))];
        if let Collective::AllReduce(op) | Collective::ReduceScatter(op) = self.kind {
            v.push(("op", AttrValue::Ident(op.name().into())));
        }
        v
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity(self.name(), xs, 1, 1)?;
        one(xs[0].dtype, xs[0].shape.clone())
    }
    /// The identity on the global value: every dim passes.
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        elementwise_rule(xs.len(), out)
    }
}

fn parse_collective(r: &mut AttrReader<'_>, _: &[&TensorType]) -> Result<Op, AttrError> {
    let a = r.required("axis", "axis = tp")?;
    let AttrValue::Ident(axis) = &a.value else {
        return Err(r.kind_err(a, "a mesh axis name"));
    };
    let name = r.op();
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
    Ok(Op::Collective(CollectiveOp {
        kind,
        axis: axis.clone(),
    }))
}

pub(super) fn specs() -> Vec<OpSpec> {
    let reducing = |name| OpSpec {
        name,
        defaults: |_| vec![("op", AttrValue::Ident("sum".into()))],
        parse: parse_collective,
    };
    let moving = |name| OpSpec {
        name,
        defaults: super::no_defaults,
        parse: parse_collective,
    };
    vec![
        reducing("allreduce"),
        reducing("reduce_scatter"),
        moving("allgather"),
        moving("all_to_all"),
        moving("shard"),
    ]
}

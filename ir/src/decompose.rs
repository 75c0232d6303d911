//! Decompositions: a composite op (softmax, the norms, mean, dropout, gelu) written as
//! primitive ops, stated once beside the op ([`crate::ops::OpDef::decompose`]) and applied by the
//! `decompose` pass after sharding, so that code generation lowers only primitives.
//!
//! A decomposition adds its ops through an [`Expander`], which puts them before the composite
//! (in one splice, when it finishes), infers their types and gives each the layout the decomposition names (the
//! composite's operand's, its result's, or replicated): the decomposed program is still in the
//! resharded phase, every new op computing locally from its operands' layouts.

use std::collections::BTreeSet;

use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::{Graph, Node, ValueId};
use crate::infer::{infer_results, InferError};
use crate::ops::{
    BinaryOp, Broadcast, Cast, Full, InvCount, Op, Reduce, ReduceKind, Reshape, UnaryOp,
};
use crate::types::{DimSharding, Sharding, TensorType};

/// The layout a decomposition gives a value it adds.
#[derive(Clone, Debug)]
pub enum Layout {
    /// `like`'s sharding, dim by dim from the first where the extents agree (dims whose extent
    /// differs, such as a kept reduced dim of 1, are whole), without its partial reductions.
    Like(TensorType),
    /// Exactly this sharding, partial reductions included (a composite's result's).
    Exactly(Sharding),
    /// Whole on every axis.
    Replicated,
}

impl Layout {
    fn sharding(&self, shape: &[Dim]) -> Sharding {
        match self {
            Layout::Like(t) => {
                let dims = shape
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match (t.shape.get(i), t.sharding.dims.get(i)) {
                        (Some(e), Some(s)) if e == d => s.clone(),
                        _ => DimSharding::default(),
                    })
                    .collect();
                Sharding {
                    dims,
                    partial: Vec::new(),
                }
            }
            Layout::Exactly(s) => s.clone(),
            Layout::Replicated => Sharding::replicated(shape.len()),
        }
    }
}

/// What a decomposition writes with: the composite's operands and result types, and methods
/// that add primitive ops before it.
pub struct Expander<'g> {
    graph: &'g mut Graph,
    /// Every name in the graph, so that new names are fresh.
    names: &'g mut BTreeSet<String>,
    before: ValueId,
    /// The composite's nodes (its kept results), looked at only when asked: constructing an
    /// expander for a primitive costs nothing.
    nodes: &'g [ValueId],
    added: Vec<ValueId>,
    /// Before sharding: every value added is left unannotated, for propagation to lay out.
    unannotated: bool,
}

impl<'g> Expander<'g> {
    /// An expander for the statement of `nodes` (the kept results of one op, in result order),
    /// inserting before the first of them.
    pub fn new(
        graph: &'g mut Graph,
        names: &'g mut BTreeSet<String>,
        nodes: &'g [ValueId],
    ) -> Expander<'g> {
        Expander {
            before: nodes[0],
            graph,
            names,
            nodes,
            added: Vec::new(),
            unannotated: false,
        }
    }

    /// An expander for a program before sharding: the layouts decompositions name are ignored
    /// and every value added is unannotated.
    pub fn before_sharding(mut self) -> Expander<'g> {
        self.unannotated = true;
        self
    }

    /// Operand `i` of the composite, if it has one.
    pub fn operand(&self, i: usize) -> Option<ValueId> {
        self.graph.operand_slice(self.before).get(i).copied()
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }

    pub fn dtype(&self, v: ValueId) -> DType {
        self.graph.ty(v).dtype
    }

    /// The layout of the composite's result `k`: its own where a node keeps it, else `like`'s.
    pub fn result_layout(&self, k: usize, like: ValueId) -> Layout {
        let kept = self.nodes.iter().find(|&&v| self.graph.node(v).result == k);
        match kept {
            Some(&v) => Layout::Exactly(self.graph.ty(v).sharding.clone()),
            None => self.like(like),
        }
    }

    /// The layout of `v` (see [`Layout::Like`]).
    pub fn like(&self, v: ValueId) -> Layout {
        Layout::Like(self.graph.ty(v).clone())
    }

    /// Adds `op` on `operands` (of equal shapes where the op is elementwise), with `layout`,
    /// named after the composite and the op (`%y.exp`).
    pub fn add(
        &mut self,
        op: Op,
        operands: &[ValueId],
        layout: Layout,
    ) -> Result<ValueId, InferError> {
        let tys: Vec<&TensorType> = operands.iter().map(|&o| self.graph.ty(o)).collect();
        let mut results = infer_results(&op, &tys)?;
        if results.len() != 1 {
            return Err(InferError::new(format!(
                "a decomposition adds one-result ops, not `{}`",
                op.name()
            )));
        }
        let (dtype, shape) = results.remove(0);
        let mut ty = TensorType::new(dtype, shape);
        ty.sharding = if self.unannotated {
            Sharding::replicated(ty.rank())
        } else {
            layout.sharding(&ty.shape)
        };
        let name = self.fresh(op.name());
        let node = Node {
            name,
            op,
            result: 0,
            ty,
            span: self.graph.node(self.before).span,
            explicit_type: false,
        };
        let v = self.graph.add_detached(node, operands);
        self.added.push(v);
        Ok(v)
    }

    /// Puts the values added, in order, before the composite in program order (one splice);
    /// returns them.
    pub fn finish(self) -> Vec<ValueId> {
        self.graph.place_before(self.before, &self.added);
        self.added
    }

    fn fresh(&mut self, what: &str) -> String {
        let base = self.graph.name(self.before);
        let mut name = format!("{base}.{what}");
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}.{what}{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// `x` as `dtype` (`x` itself when it already is).
    pub fn cast(&mut self, x: ValueId, dtype: DType) -> Result<ValueId, InferError> {
        if self.dtype(x) == dtype {
            return Ok(x);
        }
        let layout = Layout::Exactly(self.ty(x).sharding.clone());
        self.add(Op::Cast(Cast { to: dtype }), &[x], layout)
    }

    pub fn unary(&mut self, op: UnaryOp, x: ValueId) -> Result<ValueId, InferError> {
        let layout = self.like(x);
        self.add(Op::Unary(op), &[x], layout)
    }

    /// `op(a, b)` on equal shapes, laid out as `a`.
    pub fn binary(&mut self, op: BinaryOp, a: ValueId, b: ValueId) -> Result<ValueId, InferError> {
        let layout = self.like(a);
        self.add(Op::Binary(op), &[a, b], layout)
    }

    /// The reduction of `x` over `dims`, keeping them as 1, laid out as `x` (the reduced dims
    /// whole: a decomposition reduces only dims its composite needs whole).
    pub fn reduce_keep(
        &mut self,
        kind: ReduceKind,
        x: ValueId,
        dims: &[usize],
    ) -> Result<ValueId, InferError> {
        let layout = self.like(x);
        let op = Op::Reduce(Reduce {
            kind,
            dims: dims.to_vec(),
            keepdim: true,
        });
        self.add(op, &[x], layout)
    }

    /// The reduction of `x` over `dims`, dropping them, laid out as `x` on the dims it keeps.
    pub fn reduce(
        &mut self,
        kind: ReduceKind,
        x: ValueId,
        dims: &[usize],
    ) -> Result<ValueId, InferError> {
        let t = self.ty(x);
        let kept: Vec<usize> = (0..t.rank()).filter(|d| !dims.contains(d)).collect();
        let like = TensorType {
            dtype: t.dtype,
            shape: kept.iter().map(|&d| t.shape[d].clone()).collect(),
            sharding: Sharding {
                dims: kept.iter().map(|&d| t.sharding.dims[d].clone()).collect(),
                partial: Vec::new(),
            },
        };
        let op = Op::Reduce(Reduce {
            kind,
            dims: dims.to_vec(),
            keepdim: false,
        });
        self.add(op, &[x], Layout::Like(like))
    }

    /// `x` broadcast to `to`'s shape, laid out as `to`.
    pub fn broadcast(&mut self, x: ValueId, to: ValueId) -> Result<ValueId, InferError> {
        let shape = self.ty(to).shape.clone();
        if self.ty(x).shape == shape {
            return Ok(x);
        }
        let layout = self.like(to);
        let op = Op::Broadcast(Broadcast {
            shape,
            implicit: false,
        });
        self.add(op, &[x], layout)
    }

    /// `value` as a `dtype` scalar broadcast to `to`'s shape.
    pub fn constant(
        &mut self,
        value: f64,
        dtype: DType,
        to: ValueId,
    ) -> Result<ValueId, InferError> {
        let op = Op::Full(Full {
            shape: Vec::new(),
            value,
            dtype,
        });
        let c = self.add(op, &[], Layout::Replicated)?;
        self.broadcast(c, to)
    }

    /// `1 / count` (an f32 scalar, `count` the global element count) broadcast to `to`'s shape.
    pub fn inverse_count(&mut self, count: Dim, to: ValueId) -> Result<ValueId, InferError> {
        let c = self.add(Op::InvCount(InvCount { count }), &[], Layout::Replicated)?;
        self.broadcast(c, to)
    }

    /// `x` reshaped to `shape`, with `layout`.
    pub fn reshape(
        &mut self,
        x: ValueId,
        shape: Vec<Dim>,
        layout: Layout,
    ) -> Result<ValueId, InferError> {
        self.add(Op::Reshape(Reshape { shape }), &[x], layout)
    }
}

/// The element count of `dims` of `shape`, as a dim.
pub fn count_of(shape: &[Dim], dims: &[usize]) -> Result<Dim, InferError> {
    let mut n = Dim::constant(1);
    for &d in dims {
        n = n
            .mul(&shape[d])
            .map_err(|e| InferError::new(e.to_string()))?;
    }
    Ok(n)
}

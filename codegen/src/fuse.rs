//! Segmentation of a program into kernels: maximal groups of pointwise ops (unary, gelu, binary,
//! where, cast) of one shape become one fused kernel each, with the broadcasts that feed them read
//! in place and every member used outside the group stored.
//! Everything else is its own segment for now (collectives, GEMMs, reductions, attention: later
//! steps of codegen).

use std::collections::BTreeMap;

use tpc_ir::op::BinaryOp;
use tpc_ir::{DType, Graph, Op, ValueId};

use crate::kir::{Expr, Fused, Input, Output, Scalar, Value};

/// A piece of the program that runs as one unit.
#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    /// A fused pointwise kernel computing `members` (in order); the last one is stored.
    Pointwise {
        kernel: Fused,
        members: Vec<ValueId>,
    },
    /// An op not fused into a kernel by this step.
    Op(ValueId),
}

fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::BF16 | DType::F16)
}

/// Whether `v` is a pointwise op this step fuses: float or bool values only (no i64).
fn fusable(g: &Graph, v: ValueId) -> bool {
    let pointwise = matches!(
        g.op(v),
        Op::Unary(_) | Op::Gelu { .. } | Op::Binary(_) | Op::Where | Op::Cast { .. }
    );
    let scalar_ok = |d: DType| is_float(d) || d == DType::Bool;
    pointwise
        && scalar_ok(g.ty(v).dtype)
        && g.operands(v).iter().all(|&o| scalar_ok(g.ty(o).dtype))
        && g.ty(v).sharding.partial.is_empty()
}

/// A broadcast read in place by the kernels that use it: every user is a fused op.
fn absorbed(g: &Graph, v: ValueId) -> bool {
    matches!(g.op(v), Op::Broadcast { .. })
        && !g.outputs().contains(&v)
        && g.users(v).iter().all(|&u| fusable(g, u))
}

/// The program's segments, in program order (parameters are not segments).
///
/// Fusion is greedy in program order: a pointwise op joins the group of one of its operands
/// when it has that group's shape and every other operand was computed before the group began
/// (so nothing outside the group can depend on the group and feed it back: no cycles). A group
/// may fan out and in; every member used outside it is an output of its kernel.
pub fn segment(g: &Graph) -> Vec<Segment> {
    let position: BTreeMap<ValueId, usize> = g
        .values()
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, i))
        .collect();
    // (members, position of the first member)
    let mut groups: Vec<(Vec<ValueId>, usize)> = Vec::new();
    let mut group_of: BTreeMap<ValueId, usize> = BTreeMap::new();
    let mut order: Vec<Result<usize, ValueId>> = Vec::new();
    for &v in g.values() {
        if matches!(g.op(v), Op::Param { .. }) || absorbed(g, v) {
            continue;
        }
        if !fusable(g, v) {
            order.push(Err(v));
            continue;
        }
        let operands = g.operands(v);
        let join = operands.iter().find_map(|u| {
            let gi = *group_of.get(u)?;
            let (members, first) = &groups[gi];
            let same_shape = g.ty(members[0]).shape == g.ty(v).shape;
            // An absorbed broadcast is read from its operand.
            let source = |o: ValueId| {
                if absorbed(g, o) {
                    g.operands(o)[0]
                } else {
                    o
                }
            };
            let before = operands
                .iter()
                .all(|&o| group_of.get(&o) == Some(&gi) || position[&source(o)] < *first);
            (same_shape && before).then_some(gi)
        });
        match join {
            Some(gi) => {
                groups[gi].0.push(v);
                group_of.insert(v, gi);
            }
            None => {
                group_of.insert(v, groups.len());
                order.push(Ok(groups.len()));
                groups.push((vec![v], position[&v]));
            }
        }
    }
    order
        .into_iter()
        .enumerate()
        .map(|(i, o)| match o {
            Err(v) => Segment::Op(v),
            Ok(gi) => {
                let members = groups[gi].0.clone();
                Segment::Pointwise {
                    kernel: build(g, &members, i),
                    members,
                }
            }
        })
        .collect()
}

/// A kernel name C accepts: `k<index>_<value name with other characters as _>`.
fn kernel_name(g: &Graph, v: ValueId, index: usize) -> String {
    let clean: String = g
        .name(v)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("k{index}_{clean}")
}

/// Per output dim, whether a tensor of shape `from` is broadcast along it (right-aligned).
fn broadcast_mask(from: &[tpc_ir::Dim], to: &[tpc_ir::Dim]) -> Vec<bool> {
    let offset = to.len().saturating_sub(from.len());
    let one = tpc_ir::Dim::constant(1);
    (0..to.len())
        .map(|d| d < offset || (from[d - offset] == one && to[d] != one))
        .collect()
}

struct Builder<'g> {
    g: &'g Graph,
    out_shape: Vec<tpc_ir::Dim>,
    inputs: Vec<Input>,
    input_of: BTreeMap<ValueId, usize>,
    body: Vec<(Scalar, Expr)>,
    value_of: BTreeMap<ValueId, Value>,
}

impl Builder<'_> {
    fn push(&mut self, ty: Scalar, e: Expr) -> Value {
        self.body.push((ty, e));
        Value(self.body.len() - 1)
    }

    fn scalar_of(d: DType) -> Scalar {
        if d == DType::Bool {
            Scalar::Bool
        } else {
            Scalar::F32
        }
    }

    /// The value of operand `o` of a member: computed in the kernel, or loaded (through an
    /// absorbed broadcast, from the broadcast's operand).
    fn operand(&mut self, o: ValueId) -> Value {
        if let Some(&v) = self.value_of.get(&o) {
            return v;
        }
        let source = if absorbed(self.g, o) {
            self.g.operands(o)[0]
        } else {
            o
        };
        let k = match self.input_of.get(&source) {
            Some(&k) => k,
            None => {
                let ty = self.g.ty(source);
                self.inputs.push(Input {
                    name: self.g.name(source).to_string(),
                    dtype: ty.dtype,
                    broadcast: broadcast_mask(&ty.shape, &self.out_shape),
                });
                self.input_of.insert(source, self.inputs.len() - 1);
                self.inputs.len() - 1
            }
        };
        let v = self.push(Self::scalar_of(self.g.ty(source).dtype), Expr::Load(k));
        self.value_of.insert(o, v);
        v
    }

    /// `x` (computed in f32) rounded to what `dtype` stores.
    fn round(&mut self, dtype: DType, x: Value) -> Value {
        match dtype {
            DType::BF16 | DType::F16 => self.push(Scalar::F32, Expr::Round(dtype, x)),
            _ => x,
        }
    }

    fn member(&mut self, v: ValueId) {
        let g = self.g;
        let ops: Vec<Value> = g.operands(v).into_iter().map(|o| self.operand(o)).collect();
        let dtype = g.ty(v).dtype;
        let out = match g.op(v) {
            Op::Unary(op) if dtype == DType::Bool => {
                self.push(Scalar::Bool, Expr::Unary(*op, ops[0]))
            }
            Op::Unary(op) => {
                let x = self.push(Scalar::F32, Expr::Unary(*op, ops[0]));
                self.round(dtype, x)
            }
            Op::Gelu { approximate } => {
                let x = self.push(Scalar::F32, Expr::Gelu(*approximate, ops[0]));
                self.round(dtype, x)
            }
            Op::Binary(op) if op.is_comparison() || op.is_logical() => {
                self.push(Scalar::Bool, Expr::Binary(*op, ops[0], ops[1]))
            }
            Op::Binary(op) => {
                let x = self.push(Scalar::F32, Expr::Binary(*op, ops[0], ops[1]));
                self.round(dtype, x)
            }
            Op::Where => self.push(Self::scalar_of(dtype), Expr::Select(ops[0], ops[1], ops[2])),
            Op::Cast { to } => {
                let from = g.ty(g.operands(v)[0]).dtype;
                match (from == DType::Bool, *to == DType::Bool) {
                    (false, true) => {
                        let zero = self.push(Scalar::F32, Expr::Const(0.0));
                        self.push(Scalar::Bool, Expr::Binary(BinaryOp::Ne, ops[0], zero))
                    }
                    (true, false) => {
                        let one = self.push(Scalar::F32, Expr::Const(1.0));
                        let zero = self.push(Scalar::F32, Expr::Const(0.0));
                        self.push(Scalar::F32, Expr::Select(ops[0], one, zero))
                    }
                    (true, true) => ops[0],
                    (false, false) => self.round(*to, ops[0]),
                }
            }
            other => unreachable!("{} is not fused", other.name()),
        };
        self.value_of.insert(v, out);
    }
}

/// The kernel computing `members` (a fused group, in program order); it stores every member
/// used outside the group or returned.
fn build(g: &Graph, members: &[ValueId], index: usize) -> Fused {
    let first = members[0];
    let mut b = Builder {
        g,
        out_shape: g.ty(first).shape.clone(),
        inputs: Vec::new(),
        input_of: BTreeMap::new(),
        body: Vec::new(),
        value_of: BTreeMap::new(),
    };
    for &m in members {
        b.member(m);
    }
    let outputs: Vec<Output> = members
        .iter()
        .filter(|&&m| g.outputs().contains(&m) || g.users(m).iter().any(|u| !members.contains(u)))
        .map(|&m| Output {
            name: g.name(m).to_string(),
            dtype: g.ty(m).dtype,
            value: b.value_of[&m],
            per_row: false,
        })
        .collect();
    let named = outputs
        .last()
        .map_or(first, |o| g.find(&o.name).unwrap_or(first));
    Fused {
        name: kernel_name(g, named, index),
        inputs: b.inputs,
        outputs,
        rank: b.out_shape.len(),
        row: None,
        global_index: false,
        args: Vec::new(),
        body: b.body,
    }
}

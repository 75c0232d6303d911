//! Runs a sharded graph on N rank threads, each holding only its own pieces, with real
//! collectives between them; the global results are assembled from the ranks' pieces so that they
//! can be compared with the reference executor's.
//!
//! Every value's local piece is given by its type and the rank's mesh coordinates (the index maps
//! of `tpc_ir::layout`), so local shapes, uneven splits and factor splits need no special cases:
//! ops run on local pieces; random ops draw by global index; a mean over a split dim divides by
//! the global count; collectives exchange pieces within the rank's group on their axis and place
//! what they receive by global index.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tpc_ir::layout::{bound_shape, flat_offsets, piece_indices, rank_coords, MeshCoords};
use tpc_ir::ops::CollectiveOp;
use tpc_ir::{Collective, Graph, Op, ReduceOp, TensorType, ValueId};

use tpc_passes::lower_to_local::{axis_group, lower_to_local};

use crate::collective::{run_ranks, Comm};
use crate::exec::{eval, Globals};
use crate::layout::{assemble, cut};
use crate::tensor::{round_to, Data, Tensor};
use crate::{Bindings, Error, Result};

/// The mesh: axis names and sizes, first axis major in the rank numbering.
#[derive(Clone, Debug)]
pub struct MeshSizes(pub Vec<(String, usize)>);

impl MeshSizes {
    pub fn world(&self) -> usize {
        self.0.iter().map(|(_, n)| n).product()
    }

    pub fn coords(&self, rank: usize) -> MeshCoords {
        rank_coords(&self.0, rank)
    }
}

fn global_shape(ty: &TensorType, b: &Bindings) -> Result<Vec<usize>> {
    bound_shape(ty, b).map_err(|e| Error::Shape(e.to_string()))
}

/// The global shape, and the global indices per dim of the piece held at `coords`.
fn indices(
    ty: &TensorType,
    b: &Bindings,
    coords: &MeshCoords,
) -> Result<(Vec<usize>, Vec<Vec<usize>>)> {
    piece_indices(ty, b, coords).map_err(|e| Error::Shape(e.to_string()))
}

/// Runs `g` on every rank of `mesh` and returns its results assembled into global tensors.
pub fn run_sharded(
    g: &Graph,
    mesh: &MeshSizes,
    inputs: &BTreeMap<String, Tensor>,
    bindings: &Bindings,
    timeout: Duration,
) -> Result<Vec<Tensor>> {
    let per_rank = run_ranks(mesh.world(), timeout, |comm| {
        Rank { g, mesh, bindings }.run(comm, inputs)
    })?;
    let mut out = Vec::new();
    for (i, &o) in g.outputs().iter().enumerate() {
        let ty = g.ty(o);
        let pieces: Vec<(MeshCoords, Tensor)> = per_rank
            .iter()
            .enumerate()
            .map(|(r, outs)| (mesh.coords(r), outs[i].clone()))
            .collect();
        out.push(assemble(
            &global_shape(ty, bindings)?,
            ty,
            bindings,
            &pieces,
        )?);
    }
    Ok(out)
}

struct Rank<'a> {
    g: &'a Graph,
    mesh: &'a MeshSizes,
    bindings: &'a Bindings,
}

impl Rank<'_> {
    fn run(&self, comm: &mut Comm, inputs: &BTreeMap<String, Tensor>) -> Result<Vec<Tensor>> {
        let g = self.g;
        let me = self.mesh.coords(comm.rank());
        let program = lower_to_local(g, &self.mesh.0, self.bindings, comm.rank())
            .map_err(|e| Error::Internal(e.to_string()))?;
        let last_use = g.last_uses();
        let mut env: tpc_ir::ValueMap<Tensor> = tpc_ir::ValueMap::new();
        for (pos, &v) in g.values().iter().enumerate() {
            let ty = g.ty(v);
            let piece = &program.values[&v];
            let (shape, idx) = (&piece.global_shape, &piece.indices);
            let local = piece.shape.clone();
            let operands = g.operands(v);
            let args: Vec<&Tensor> = operands.iter().map(|o| &env[o]).collect();
            let t = match g.op(v) {
                Op::Param { .. } => {
                    let name = g.name(v);
                    let global = inputs
                        .get(name)
                        .ok_or_else(|| Error::MissingInput(name.to_string()))?;
                    cut(global, ty, self.bindings, &me)?
                }
                Op::Collective(CollectiveOp { kind, axis }) => {
                    let from = g.ty(operands[0]);
                    self.collective(comm, &me, args[0], from, ty, *kind, axis)?
                }
                // Everything else computes on the local pieces, told what global context its
                // op asks for (global element indices, query positions, reduced counts).
                op => {
                    let need = op.def().global_context(g.node(v).result);
                    let offsets = need.element_index.then(|| flat_offsets(shape, idx));
                    let positions = need.positions.and_then(|(operand, dim)| {
                        let piece = &program.values[operands.get(operand)?];
                        let dim = dim.of_rank(piece.indices.len())?;
                        Some((piece.indices[dim].as_slice(), piece.global_shape[dim]))
                    });
                    let reduced_count = if need.reduced_count {
                        Some(reduced_count(g, v, self.bindings)?)
                    } else {
                        None
                    };
                    let globals = Globals {
                        offsets: offsets.as_deref(),
                        positions,
                        reduced_count,
                    };
                    eval(g, v, &args, &local, self.bindings, &globals)?
                }
            };
            if t.shape() != local.as_slice() {
                return Err(Error::Internal(format!(
                    "%{} is {:?} on a rank, expected {local:?}",
                    g.name(v),
                    t.shape()
                )));
            }
            env.insert(v, t);
            for o in operands {
                if last_use.get(&o) == Some(&pos) && !g.outputs().contains(&o) {
                    env.remove(&o);
                }
            }
        }
        g.outputs()
            .iter()
            .map(|o| {
                env.get(o)
                    .cloned()
                    .ok_or_else(|| Error::Internal("an output was freed".into()))
            })
            .collect()
    }

    /// The ranks that share every coordinate with `me` but `axis`'s, by their index on `axis`.
    fn group(&self, me: &MeshCoords, axis: &str) -> Vec<usize> {
        axis_group(&self.mesh.0, me, axis)
    }

    #[allow(clippy::too_many_arguments)]
    fn collective(
        &self,
        comm: &mut Comm,
        me: &MeshCoords,
        x: &Tensor,
        from: &TensorType,
        to: &TensorType,
        kind: Collective,
        axis: &str,
    ) -> Result<Tensor> {
        let all = comm.allgather(x.data().clone())?;
        let group = self.group(me, axis);
        match kind {
            Collective::AllReduce(op) => self.reduce_group(&all, &group, op, x),
            Collective::ReduceScatter(op) => {
                let whole = self.reduce_group(&all, &group, op, x)?;
                let mut mid = from.clone();
                mid.sharding.partial.retain(|p| p.axis != axis);
                self.place(
                    &[(Arc::new(whole.data().clone()), me.clone())],
                    &mid,
                    to,
                    me,
                    x,
                )
            }
            Collective::AllGather | Collective::AllToAll => {
                let sources: Vec<(Arc<Data>, MeshCoords)> = group
                    .iter()
                    .map(|&r| (Arc::clone(&all[r]), self.mesh.coords(r)))
                    .collect();
                self.place(&sources, from, to, me, x)
            }
            Collective::Shard => {
                self.place(&[(Arc::new(x.data().clone()), me.clone())], from, to, me, x)
            }
        }
    }

    /// The elementwise reduction, in axis order, of the group's pieces, rounded once.
    fn reduce_group(
        &self,
        all: &[Arc<Data>],
        group: &[usize],
        op: ReduceOp,
        x: &Tensor,
    ) -> Result<Tensor> {
        let n = x.numel();
        let mut acc = vec![0f64; n];
        for (k, &r) in group.iter().enumerate() {
            let Data::Float(v) = &*all[r] else {
                return Err(Error::Internal("a reduction of non-floats".into()));
            };
            if v.len() != n {
                return Err(Error::Internal(
                    "ranks disagree on a partial value's shape".into(),
                ));
            }
            for (a, &b) in acc.iter_mut().zip(v) {
                let b = b as f64;
                *a = if k == 0 {
                    b
                } else {
                    match op {
                        ReduceOp::Sum => *a + b,
                        ReduceOp::Max => a.max(b),
                        ReduceOp::Min => a.min(b),
                    }
                };
            }
        }
        let dt = x.dtype();
        Ok(Tensor::float(
            dt,
            x.shape().to_vec(),
            acc.into_iter().map(|a| round_to(dt, a as f32)).collect(),
        ))
    }

    /// Builds this rank's piece of a value of type `to` from pieces of type `from` held at the
    /// given coordinates, placing every element by its global index.
    fn place(
        &self,
        sources: &[(Arc<Data>, MeshCoords)],
        from: &TensorType,
        to: &TensorType,
        me: &MeshCoords,
        x: &Tensor,
    ) -> Result<Tensor> {
        let (shape, want) = indices(to, self.bindings, me)?;
        let local: Vec<usize> = want.iter().map(Vec::len).collect();
        // Position of each global index within this rank's piece, per dim.
        let pos: Vec<Vec<usize>> = want
            .iter()
            .zip(&shape)
            .map(|(idx, &n)| {
                let mut p = vec![usize::MAX; n];
                for (k, &i) in idx.iter().enumerate() {
                    p[i] = k;
                }
                p
            })
            .collect();
        let strides = crate::tensor::strides(&local);
        let total: usize = local.iter().product();
        let mut slot: Vec<Option<usize>> = vec![None; total];
        let mut values: Vec<(usize, usize, usize)> = Vec::new(); // (dest, source, element)
        for (s, (_, coords)) in sources.iter().enumerate() {
            let (_, have) = indices(from, self.bindings, coords)?;
            let have_shape: Vec<usize> = have.iter().map(Vec::len).collect();
            let n: usize = have_shape.iter().product();
            let mut multi = vec![0usize; have_shape.len()];
            for e in 0..n {
                let mut dest = 0usize;
                let mut inside = true;
                for d in 0..multi.len() {
                    let p = pos[d][have[d][multi[d]]];
                    if p == usize::MAX {
                        inside = false;
                        break;
                    }
                    dest += p * strides[d];
                }
                if inside && slot[dest].is_none() {
                    slot[dest] = Some(values.len());
                    values.push((dest, s, e));
                }
                for d in (0..multi.len()).rev() {
                    multi[d] += 1;
                    if multi[d] < have_shape[d] {
                        break;
                    }
                    multi[d] = 0;
                }
            }
        }
        if slot.iter().any(Option::is_none) {
            return Err(Error::Internal(
                "a collective left part of its result unfilled".into(),
            ));
        }
        let mut order = values;
        order.sort_unstable();
        let data = match x.data() {
            Data::Float(_) => Data::Float(
                order
                    .iter()
                    .map(|&(_, s, e)| match &*sources[s].0 {
                        Data::Float(v) => v[e],
                        _ => 0.0,
                    })
                    .collect(),
            ),
            Data::I64(_) => Data::I64(
                order
                    .iter()
                    .map(|&(_, s, e)| match &*sources[s].0 {
                        Data::I64(v) => v[e],
                        _ => 0,
                    })
                    .collect(),
            ),
            Data::Bool(_) => Data::Bool(
                order
                    .iter()
                    .map(|&(_, s, e)| match &*sources[s].0 {
                        Data::Bool(v) => v[e],
                        _ => false,
                    })
                    .collect(),
            ),
        };
        Ok(Tensor {
            dtype: x.dtype(),
            shape: local,
            data,
        })
    }
}

/// The global number of elements that `v`'s op reduces over: the product of its rule's
/// reduction factors (a mean divides by it, not by the piece's count).
fn reduced_count(g: &Graph, v: ValueId, bindings: &Bindings) -> Result<usize> {
    let rule = tpc_ir::rule_of(g, v);
    let mut count = 1usize;
    for f in &rule.factors {
        if matches!(f.kind, tpc_ir::FactorKind::Reduction(_)) {
            let n = f.extent.eval(bindings).map_err(|e| Error::Dim {
                value: g.name(v).to_string(),
                source: e,
            })?;
            count = count.saturating_mul(n as usize);
        }
    }
    Ok(count)
}

//! `lower-to-local`: the program as one rank runs it. Every value gets the shape of the piece
//! the rank holds and the index map from that piece into the global value (factor and uneven
//! splits included); ops whose attributes name shapes get local ones; every collective gets the
//! ranks of its group. The executors cut inputs, draw random numbers, mask causal attention and
//! count means from these maps, and codegen sizes buffers from them.
//!
//! Unlike the other passes this one does not rewrite the graph in place: with uneven splits the
//! ranks run programs of different shapes, so it yields one [`LocalProgram`] per rank, checked
//! op by op (each op's shape rule applied to the local operands must give the local result).

use std::collections::BTreeMap;
use std::sync::Arc;
use tpc_ir::ops::CollectiveOp;

use tpc_ir::infer::infer;
use tpc_ir::layout::{local_shape, piece_indices, rank_coords, MeshCoords};
use tpc_ir::{Dim, Graph, Op, TensorType, ValueId};

use crate::{Error, Result};

/// For each dim of a piece, the global index of each local index.
pub type IndexMaps = Arc<Vec<Vec<usize>>>;

/// One value on one rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalValue {
    /// The shape of the piece this rank holds.
    pub shape: Vec<usize>,
    /// The whole value's shape.
    pub global_shape: Vec<usize>,
    /// For each dim, the global index of each local index (shared between values of one type).
    pub indices: IndexMaps,
    /// Mesh axes over which this rank's piece is a partial sum (or max, min) still to reduce.
    pub partial: Vec<String>,
}

/// The program as rank `rank` runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalProgram {
    pub rank: usize,
    /// The rank's coordinate and the axis size, per mesh axis.
    pub coords: MeshCoords,
    pub values: BTreeMap<ValueId, LocalValue>,
    /// Ops with local shapes in their attributes (reshape, broadcast, full); the rest as in the
    /// graph.
    pub ops: BTreeMap<ValueId, Op>,
    /// For each collective, the ranks of its group in order of their coordinate on its axis.
    pub groups: BTreeMap<ValueId, Vec<usize>>,
}

/// The ranks sharing every coordinate with `me` except the one on `axis`, ordered by that one.
pub fn axis_group(sizes: &[(String, usize)], me: &MeshCoords, axis: &str) -> Vec<usize> {
    let world: usize = sizes.iter().map(|(_, n)| (*n).max(1)).product();
    let mut out: Vec<(usize, usize)> = (0..world)
        .filter_map(|r| {
            let c = rank_coords(sizes, r);
            let same = c.iter().all(|(a, x)| a == axis || me.get(a) == Some(x));
            same.then(|| (c.get(axis).map(|x| x.0).unwrap_or(0), r))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, r)| r).collect()
}

/// `g` (sharded, every symbol bound by `bindings`) as rank `rank` of a mesh with `sizes` runs it:
/// [`lower_shapes`] specialized to `bindings` (which checks every op on the local pieces), with
/// each piece's index maps.
pub fn lower_to_local(
    g: &Graph,
    sizes: &[(String, usize)],
    bindings: &BTreeMap<String, i64>,
    rank: usize,
) -> Result<LocalProgram> {
    let shapes = lower_shapes(g, sizes, rank, Some(bindings))?;
    let coords = shapes.coords;
    let mut values: BTreeMap<ValueId, LocalValue> = BTreeMap::new();
    let mut ops = BTreeMap::new();
    let mut groups = BTreeMap::new();
    // Most values share one of a few types: cut each type once.
    let mut pieces: Vec<(&TensorType, Vec<usize>, IndexMaps)> = Vec::new();
    for &v in g.values() {
        let node = g.node(v);
        let (global_shape, indices) = match pieces.iter().find(|(t, ..)| **t == node.ty) {
            Some((_, s, i)) => (s.clone(), Arc::clone(i)),
            None => {
                let (s, i) = piece_indices(&node.ty, bindings, &coords)
                    .map_err(|e| Error::Lowering(format!("%{}: {e}", node.name)))?;
                let i = Arc::new(i);
                pieces.push((&node.ty, s.clone(), Arc::clone(&i)));
                (s, i)
            }
        };
        let shape: Vec<usize> = indices.iter().map(Vec::len).collect();
        let local_dims: Vec<Dim> = shape.iter().map(|&n| Dim::constant(n as i64)).collect();
        let op = local_op(&node.op, &local_dims).unwrap_or_else(|| node.op.clone());
        if let Op::Collective(CollectiveOp { axis, .. }) = &op {
            groups.insert(v, axis_group(sizes, &coords, axis));
        }
        let partial = node
            .ty
            .sharding
            .partial
            .iter()
            .map(|p| p.axis.clone())
            .collect();
        values.insert(
            v,
            LocalValue {
                shape,
                global_shape,
                indices,
                partial,
            },
        );
        ops.insert(v, op);
    }
    Ok(LocalProgram {
        rank,
        coords,
        values,
        ops,
        groups,
    })
}

/// The program's shapes as one rank holds them, as dim expressions over the program's symbols
/// (see [`local_shape`]): what code generation sizes a host program with, so that one compile
/// serves every binding.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalShapes {
    /// The rank whose pieces these are (every rank of its class holds pieces of these shapes).
    pub rank: usize,
    pub coords: MeshCoords,
    pub shapes: BTreeMap<ValueId, Vec<Dim>>,
}

impl LocalShapes {
    pub fn shape(&self, v: ValueId) -> &[Dim] {
        self.shapes.get(&v).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The op as the rank computes it: the op's own answer ([`tpc_ir::OpDef::for_rank`]) for ops
/// whose attributes name the result's shape (reshape, broadcast, full), `None` for the others,
/// which are the same on every rank.
fn local_op(op: &Op, shape: &[Dim]) -> Option<Op> {
    op.def().for_rank(shape)
}

/// The distinct types of `g`'s values, in first-use order.
fn distinct_types(g: &Graph) -> Vec<&TensorType> {
    let mut out: Vec<&TensorType> = Vec::new();
    for &v in g.values() {
        let t = g.ty(v);
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// The ranks of a mesh with `sizes` grouped by the shapes of the pieces they hold of every
/// value of `g`: ranks of one class run the same host program (they differ only in their
/// coordinates). Even splits give one class; uneven ones give more. Classes are in order of
/// their first rank, ranks in each in order.
pub fn rank_classes(
    g: &Graph,
    sizes: &[(String, usize)],
    specialize: Option<&BTreeMap<String, i64>>,
) -> Result<Vec<Vec<usize>>> {
    let world: usize = sizes.iter().map(|(_, n)| (*n).max(1)).product();
    let types = distinct_types(g);
    let mut classes: Vec<(Vec<Vec<Dim>>, Vec<usize>)> = Vec::new();
    for r in 0..world {
        let coords = rank_coords(sizes, r);
        let signature = types
            .iter()
            .map(|t| local_shape(t, &coords, specialize))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Lowering(e.to_string()))?;
        match classes.iter_mut().find(|(s, _)| *s == signature) {
            Some((_, ranks)) => ranks.push(r),
            None => classes.push((signature, vec![r])),
        }
    }
    Ok(classes.into_iter().map(|(_, r)| r).collect())
}

/// `g` (sharded) as rank `rank` of a mesh with `sizes` holds it, with symbolic shapes (bound
/// first with `specialize`), checked op by op as [`lower_to_local`] checks the bound program.
pub fn lower_shapes(
    g: &Graph,
    sizes: &[(String, usize)],
    rank: usize,
    specialize: Option<&BTreeMap<String, i64>>,
) -> Result<LocalShapes> {
    let world: usize = sizes.iter().map(|(_, n)| (*n).max(1)).product();
    if rank >= world {
        return Err(Error::Lowering(format!(
            "rank {rank} is not one of the {world} ranks"
        )));
    }
    let coords = rank_coords(sizes, rank);
    let mut shapes: BTreeMap<ValueId, Vec<Dim>> = BTreeMap::new();
    let mut cut: Vec<(&TensorType, Vec<Dim>)> = Vec::new();
    for &v in g.values() {
        let node = g.node(v);
        let shape = match cut.iter().find(|(t, _)| **t == node.ty) {
            Some((_, s)) => s.clone(),
            None => {
                let s = local_shape(&node.ty, &coords, specialize)
                    .map_err(|e| Error::Lowering(format!("%{}: {e}", node.name)))?;
                cut.push((&node.ty, s.clone()));
                s
            }
        };
        let op = local_op(&node.op, &shape);
        let op = op.as_ref().unwrap_or(&node.op);
        if !matches!(op, Op::Param { .. } | Op::Collective { .. }) {
            let operand_types: Vec<TensorType> = g
                .operands(v)
                .iter()
                .map(|o| TensorType::new(g.ty(*o).dtype, shapes[o].clone()))
                .collect();
            let refs: Vec<&TensorType> = operand_types.iter().collect();
            let (_, mut inferred) = infer(op, &refs, node.result).map_err(|e| {
                Error::Lowering(format!("%{} on rank {rank}: {}", node.name, e.message))
            })?;
            // Attributes may name symbols (a slice's `end = S + 4`): bound too, where the
            // pieces are.
            if let Some(b) = specialize {
                for d in &mut inferred {
                    if let Ok(n) = d.eval(b) {
                        *d = Dim::constant(n);
                    }
                }
            }
            if inferred != shape {
                return Err(Error::Lowering(format!(
                    "%{} on rank {rank}: its `{}` gives {} from the local operands, but the piece it holds is {}",
                    node.name,
                    op.name(),
                    tpc_ir::types::shape_string(&inferred),
                    tpc_ir::types::shape_string(&shape),
                )));
            }
        }
        shapes.insert(v, shape);
    }
    Ok(LocalShapes {
        rank,
        coords,
        shapes,
    })
}

use tpc_ir::Diagnostic;

use crate::pass::{OptionKind, OptionSpec, Options, Outcome, Pass, Phase};
use crate::PassContext;

/// The mesh's axes with their sizes, in mesh order (first axis major): from the context's axis
/// sizes, else the sizes the mesh declares.
pub fn mesh_sizes(g: &Graph, cx: &PassContext) -> Result<Vec<(String, usize)>> {
    g.mesh
        .axes
        .iter()
        .map(|a| {
            let size = cx.axis_sizes.get(&a.name).copied().or(a.size);
            match size {
                Some(n) if n >= 1 => Ok((a.name.clone(), n as usize)),
                _ => Err(Error::Lowering(format!(
                    "the size of mesh axis `{}` is not known; give the device count (--devices)",
                    a.name
                ))),
            }
        })
        .collect()
}

/// `lower-to-local` as a [`Pass`]: from the resharded phase to the local one. The graph stays
/// as it is (the global program every rank's pieces are cut from); the outcome carries the
/// program as rank `rank` runs it ([`lower_to_local`]), with the context's symbols as the
/// bindings and its axis sizes as the mesh.
#[derive(Clone, Copy, Debug, Default)]
pub struct LowerToLocal {
    rank: usize,
}

impl Pass for LowerToLocal {
    fn name(&self) -> &'static str {
        "lower-to-local"
    }

    fn description(&self) -> &'static str {
        "the program as one rank runs it: every value's piece and index maps, each collective's group"
    }

    fn requires(&self) -> Phase {
        Phase::Resharded
    }

    fn produces(&self) -> Option<Phase> {
        Some(Phase::Local)
    }

    fn options(&self) -> &'static [OptionSpec] {
        &[OptionSpec {
            name: "rank",
            kind: OptionKind::Count,
            default: "0",
            help: "the rank to lower for (ranks are numbered with the first mesh axis major)",
        }]
    }

    fn configure(&mut self, options: &Options) -> Result<()> {
        self.rank = options.count("rank")?;
        Ok(())
    }

    fn run(&self, g: &mut Graph, cx: &PassContext) -> Result<Outcome> {
        let sizes = mesh_sizes(g, cx)?;
        let program = lower_to_local(g, &sizes, &cx.symbols, self.rank)?;
        Ok(Outcome {
            changed: false,
            local: Some(program),
            warnings: Vec::new(),
        })
    }
}

/// The local phase's own invariant: on every class of ranks ([`rank_classes`]), every op's shape
/// rule applied to the rank's local operands gives the piece it holds ([`lower_shapes`]), at the
/// context's symbol values when they bind every symbol, else symbolically.
pub(crate) fn check_lowers(g: &Graph, cx: &PassContext) -> Vec<Diagnostic> {
    let located = |message: String| {
        let span = message
            .strip_prefix('%')
            .and_then(|rest| rest.split([' ', ':']).next())
            .and_then(|name| g.find(name))
            .map(|v| g.node(v).span)
            .unwrap_or(g.span);
        Diagnostic::error(message, span, "does not lower to the ranks' pieces")
    };
    let sizes = match mesh_sizes(g, cx) {
        Ok(s) => s,
        Err(e) => return vec![located(lowering_message(e))],
    };
    let bound = g.values().iter().all(|&v| {
        g.ty(v)
            .shape
            .iter()
            .all(|d| d.symbols().iter().all(|s| cx.symbols.contains_key(s)))
    });
    let specialize = bound.then_some(&cx.symbols);
    let classes = match rank_classes(g, &sizes, specialize) {
        Ok(c) => c,
        Err(e) => return vec![located(lowering_message(e))],
    };
    classes
        .iter()
        .filter_map(|ranks| ranks.first())
        .filter_map(|&rank| lower_shapes(g, &sizes, rank, specialize).err())
        .map(|e| located(lowering_message(e)))
        .collect()
}

fn lowering_message(e: Error) -> String {
    match e {
        Error::Lowering(m) => m,
        other => other.to_string(),
    }
}

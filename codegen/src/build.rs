//! From segments to the host templates: buffers sized from the ranks' local shapes (dim
//! expressions over the program's symbols), kernel arguments (extents, offsets, strides,
//! tables of global indices), GEMM shapes, and the collectives, then the memory plan's
//! liveness. One template serves every rank of a class (ranks holding pieces of the same
//! shapes: all of them where splits are even) and every binding of the symbols; binding it
//! (`template::HostTemplate::bind`) gives a rank's concrete program.

use std::collections::BTreeMap;
use tpc_ir::ops::{CollectiveOp, Concat, Permute, SdpaScale, Slice};

use tpc_ir::{Collective, Dim, Graph, Op, ValueId};
use tpc_passes::lower_to_local::{lower_shapes, rank_classes, LocalShapes};

use crate::fuse::{Plan, ScalarSource, Segment};
use crate::host::{Arg, BufId, Buffer, Epilogue};
use crate::kir::{Kernel, ParamKind};
use crate::template::{
    HostTemplate, SymArg, SymBuffer, SymExchange, SymGemm, SymStep, TableSpec, Templates,
};
use crate::{Error, Result};

/// The host templates of `g` (sharded) on a mesh with axis `sizes`: one per class of ranks
/// that hold pieces of the same shapes. With `specialize`, every factor extent is bound first
/// (so uneven splits of symbolic extents are cut as at run time, and the templates serve only
/// that binding).
pub fn compile_templates(
    g: &Graph,
    plan: &Plan,
    sizes: &[(String, usize)],
    specialize: Option<&BTreeMap<String, i64>>,
) -> Result<Templates> {
    let world: usize = sizes.iter().map(|(_, n)| (*n).max(1)).product();
    let classes = rank_classes(g, sizes, specialize).map_err(|e| Error::Build {
        value: g.name.clone(),
        rank: 0,
        message: e.to_string(),
    })?;
    let programs = classes
        .into_iter()
        .map(|ranks| host_template(g, plan, sizes, specialize, ranks, world))
        .collect::<Result<Vec<_>>>()?;
    Ok(Templates {
        kernels: plan.kernels.clone(),
        programs,
        mesh: sizes.to_vec(),
    })
}

/// The template of the ranks `ranks` (which hold pieces of the same shapes).
fn host_template(
    g: &Graph,
    plan: &Plan,
    sizes: &[(String, usize)],
    specialize: Option<&BTreeMap<String, i64>>,
    ranks: Vec<usize>,
    world: usize,
) -> Result<HostTemplate> {
    let rank = ranks[0];
    let local = lower_shapes(g, sizes, rank, specialize).map_err(|e| Error::Build {
        value: g.name.clone(),
        rank,
        message: e.to_string(),
    })?;
    let mut b = HostBuilder {
        g,
        plan,
        local: &local,
        rank,
        buffers: Vec::new(),
        work: Vec::new(),
        buf_of: BTreeMap::new(),
    };
    for &p in g.params() {
        let buf = b.new_buffer(p);
        b.work.push((
            SymStep::Input {
                buf,
                param: g.name(p).to_string(),
            },
            vec![buf],
        ));
    }
    for seg in &plan.segments {
        b.segment(seg)?;
    }
    let mut keep = Vec::new();
    for &o in g.outputs() {
        let buf = b.buf(o)?;
        keep.push(buf);
        b.work.push((
            SymStep::Output {
                buf,
                value: g.name(o).to_string(),
                shape: b.shape(o).to_vec(),
            },
            vec![buf],
        ));
    }
    let HostBuilder { buffers, work, .. } = b;
    let steps = crate::memory::schedule(
        work,
        &keep,
        |s| matches!(s, SymStep::Input { .. } | SymStep::Table { .. }),
        |buf| SymStep::Alloc { buf },
        |buf| SymStep::Free { buf },
    );
    Ok(HostTemplate {
        ranks,
        world,
        buffers,
        steps,
    })
}

struct HostBuilder<'a> {
    g: &'a Graph,
    plan: &'a Plan,
    local: &'a LocalShapes,
    rank: usize,
    buffers: Vec<SymBuffer>,
    /// Steps without allocation, each with the buffers it touches.
    work: Vec<(SymStep, Vec<BufId>)>,
    buf_of: BTreeMap<ValueId, BufId>,
}

/// Row-major strides of `shape`, in elements, as dim expressions.
fn strides(shape: &[Dim]) -> Result<Vec<Dim>> {
    let mut s = vec![Dim::constant(1); shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1].mul(&shape[d + 1]).map_err(dim_error)?;
    }
    Ok(s)
}

fn dim_error(e: tpc_ir::DimError) -> Error {
    Error::Build {
        value: "a size".into(),
        rank: 0,
        message: e.to_string(),
    }
}

fn product(dims: &[Dim]) -> Result<Dim> {
    dims.iter()
        .try_fold(Dim::constant(1), |acc, d| acc.mul(d))
        .map_err(dim_error)
}

impl HostBuilder<'_> {
    fn fail(&self, v: ValueId, message: impl Into<String>) -> Error {
        Error::Build {
            value: self.g.name(v).to_string(),
            rank: self.rank,
            message: message.into(),
        }
    }

    fn dim(&self, v: ValueId) -> impl Fn(tpc_ir::DimError) -> Error + '_ {
        move |e| self.fail(v, e.to_string())
    }

    fn shape(&self, v: ValueId) -> &[Dim] {
        self.local.shape(v)
    }

    fn new_buffer(&mut self, v: ValueId) -> BufId {
        let id = BufId(self.buffers.len());
        self.buffers.push(SymBuffer {
            name: self.g.name(v).to_string(),
            dtype: self.g.ty(v).dtype,
            shape: self.shape(v).to_vec(),
        });
        self.buf_of.insert(v, id);
        id
    }

    fn buf(&self, v: ValueId) -> Result<BufId> {
        self.buf_of
            .get(&v)
            .copied()
            .ok_or_else(|| self.fail(v, "is used before a segment computes it (a bug in tpc)"))
    }

    fn table(&mut self, name: String, len: Dim, table: TableSpec) -> BufId {
        let id = BufId(self.buffers.len());
        self.buffers.push(SymBuffer {
            name,
            dtype: tpc_ir::DType::I64,
            shape: vec![len],
        });
        self.work
            .push((SymStep::Table { buf: id, table }, vec![id]));
        id
    }

    fn launch(&mut self, kernel: usize, args: Vec<SymArg>) {
        debug_assert_eq!(args.len(), self.plan.kernels[kernel].params().len());
        let touched = args
            .iter()
            .filter_map(|a| match a {
                SymArg::Buffer(b) => Some(*b),
                _ => None,
            })
            .collect();
        self.work.push((SymStep::Launch { kernel, args }, touched));
    }

    fn segment(&mut self, seg: &Segment) -> Result<()> {
        let g = self.g;
        match seg {
            Segment::View(v) => {
                let src = self.buf(g.operands(*v)[0])?;
                self.buf_of.insert(*v, src);
            }
            Segment::Fused { kernel, call } => {
                let Kernel::Fused(k) = &self.plan.kernels[*kernel] else {
                    return Err(self.fail(call.space, "a fused segment names another kernel"));
                };
                let extents = self.shape(call.space).to_vec();
                let mut args = Vec::new();
                for (i, &input) in call.inputs.iter().enumerate() {
                    // The input must hold exactly the elements its mask reads.
                    let read: Vec<Dim> = extents
                        .iter()
                        .zip(&k.inputs[i].broadcast)
                        .map(|(n, &b)| if b { Dim::constant(1) } else { n.clone() })
                        .collect();
                    let (want, have) = (product(&read)?, product(self.shape(input))?);
                    if want != have {
                        return Err(self.fail(
                            input,
                            format!(
                                "holds {have} elements here but kernel {} reads {want}",
                                k.name
                            ),
                        ));
                    }
                    args.push(SymArg::Buffer(self.buf(input)?));
                }
                for &o in &call.outputs {
                    let b = self.new_buffer(o);
                    args.push(SymArg::Buffer(b));
                }
                args.extend(extents.iter().map(|n| SymArg::Int(n.clone())));
                if k.global_index {
                    let ty = g.ty(call.space).clone();
                    for (d, n) in extents.iter().enumerate() {
                        let t = self.table(
                            format!("global offsets of %{} dim {d}", g.name(call.space)),
                            n.clone(),
                            TableSpec::GlobalOffsets {
                                ty: ty.clone(),
                                dim: d,
                            },
                        );
                        args.push(SymArg::Buffer(t));
                    }
                }
                for a in &call.args {
                    match a {
                        ScalarSource::InverseCount(count) => {
                            args.push(SymArg::InverseCount(count.clone()));
                        }
                    }
                }
                args.extend(call.seeds.iter().map(|&seed| SymArg::Seed(seed)));
                self.launch(*kernel, args);
            }
            Segment::Gemm { value, gelu } => self.gemm(*value, *gelu)?,
            Segment::Copy { kernel, value } => self.copy(*kernel, *value)?,
            Segment::Embedding { kernel, value } => {
                let ops = g.operands(*value);
                let (ids, table) = (ops[0], ops[1]);
                let ts = self.shape(table).to_vec();
                let rows = product(self.shape(ids))?;
                let rowpos = self.table(
                    format!("table rows of %{}", g.name(table)),
                    ts[0].clone(),
                    TableSpec::Positions {
                        ty: g.ty(table).clone(),
                        dim: 0,
                    },
                );
                let args = vec![
                    SymArg::Buffer(self.buf(ids)?),
                    SymArg::Buffer(self.buf(table)?),
                    SymArg::Buffer(self.new_buffer(*value)),
                    SymArg::Int(rows),
                    SymArg::Int(ts[1].clone()),
                    SymArg::Int(ts[0].clone()),
                    SymArg::Int(g.ty(table).shape[0].clone()),
                    SymArg::Buffer(rowpos),
                ];
                self.launch(*kernel, args);
            }
            Segment::Attention { kernel, value } => {
                let ops = g.operands(*value);
                let (q, k, v) = (ops[0], ops[1], ops[2]);
                let qs = self.shape(q).to_vec();
                let r = qs.len();
                let (sq, d) = (qs[r - 2].clone(), qs[r - 1].clone());
                let batch = product(&qs[..r - 2])?;
                let sk = self.shape(k)[r - 2].clone();
                let dv = self.shape(v)[r - 1].clone();
                let scale = match g.op(*value) {
                    Op::Sdpa(sdpa) => match sdpa.scale() {
                        SdpaScale::Given(s) => SymArg::Float(s as f32),
                        SdpaScale::InverseSqrtHeadDim => SymArg::InverseSqrt(d.clone()),
                    },
                    other => {
                        return Err(
                            self.fail(*value, format!("`{}` is not attention", other.name()))
                        )
                    }
                };
                let qpos = self.table(
                    format!("query positions of %{}", g.name(q)),
                    sq.clone(),
                    TableSpec::Positions {
                        ty: g.ty(q).clone(),
                        dim: r - 2,
                    },
                );
                let args = vec![
                    SymArg::Buffer(self.buf(q)?),
                    SymArg::Buffer(self.buf(k)?),
                    SymArg::Buffer(self.buf(v)?),
                    SymArg::Buffer(self.new_buffer(*value)),
                    SymArg::Int(batch),
                    SymArg::Int(sq),
                    SymArg::Int(sk),
                    SymArg::Int(d),
                    SymArg::Int(dv),
                    scale,
                    SymArg::Buffer(qpos),
                ];
                self.launch(*kernel, args);
            }
            Segment::Pick { kernel, value } => {
                let ops = g.operands(*value);
                let dim = match g.op(*value) {
                    Op::Pick(p) => p.dim,
                    other => {
                        return Err(self.fail(*value, format!("`{}` is not `pick`", other.name())))
                    }
                };
                let xs = self.shape(ops[0]).to_vec();
                let outer = product(&xs[..dim])?;
                let inner = product(&xs[dim + 1..])?;
                let pos = self.table(
                    format!("entries of %{} along dim {dim}", g.name(ops[0])),
                    xs[dim].clone(),
                    TableSpec::Positions {
                        ty: g.ty(ops[0]).clone(),
                        dim,
                    },
                );
                let args = vec![
                    SymArg::Buffer(self.buf(ops[0])?),
                    SymArg::Buffer(self.buf(ops[1])?),
                    SymArg::Buffer(self.new_buffer(*value)),
                    SymArg::Int(outer),
                    SymArg::Int(xs[dim].clone()),
                    SymArg::Int(inner),
                    SymArg::Int(g.ty(ops[0]).shape[dim].clone()),
                    SymArg::Buffer(pos),
                ];
                self.launch(*kernel, args);
            }
            Segment::Kept { kernel, value } => {
                let target = g.operands(*value)[0];
                let count = product(self.shape(target))?;
                let args = vec![
                    SymArg::Buffer(self.buf(target)?),
                    SymArg::Buffer(self.new_buffer(*value)),
                    SymArg::Int(count),
                ];
                self.launch(*kernel, args);
            }
            Segment::Collective(v) => self.exchange(*v)?,
        }
        Ok(())
    }

    fn gemm(&mut self, value: ValueId, gelu: Option<ValueId>) -> Result<()> {
        let g = self.g;
        let ops = g.operands(value);
        let out = gelu.unwrap_or(value);
        let (a_shape, b_shape) = (self.shape(ops[0]).to_vec(), self.shape(ops[1]).to_vec());
        let (ra, rb) = (a_shape.len(), b_shape.len());
        if ra < 1 || rb != 2 && matches!(g.op(value), Op::Linear(_)) || rb < 2 {
            return Err(self.fail(value, "a GEMM needs a matrix on the right"));
        }
        let bias = if matches!(g.op(value), Op::Linear(_)) {
            ops.get(2).map(|&b| self.buf(b)).transpose()?
        } else {
            None
        };
        let epilogue = match (bias.is_some(), gelu.is_some()) {
            (false, false) => Epilogue::None,
            (true, false) => Epilogue::Bias,
            (true, true) => Epilogue::BiasGelu,
            (false, true) => Epilogue::Gelu,
        };
        let (a, b) = (self.buf(ops[0])?, self.buf(ops[1])?);
        let c = self.new_buffer(out);
        let dtype = g.ty(value).dtype;
        let zero = Dim::constant(0);
        let one = Dim::constant(1);
        let step = match g.op(value) {
            Op::Linear(_) => {
                let k = a_shape[ra - 1].clone();
                let m = product(&a_shape[..ra - 1])?;
                let (n, k2) = (b_shape[0].clone(), b_shape[1].clone());
                if k != k2 {
                    return Err(self.fail(value, format!("contracts {k} with {k2}")));
                }
                SymGemm {
                    a,
                    b,
                    c,
                    bias,
                    epilogue,
                    dtype,
                    batch: one,
                    m,
                    n,
                    k,
                    stride_a: zero.clone(),
                    stride_b: zero.clone(),
                    stride_c: zero,
                    b_transposed: true,
                }
            }
            _ => {
                if ra < 2 {
                    return Err(self.fail(value, "a matmul needs matrices on the left"));
                }
                let (m, k) = (a_shape[ra - 2].clone(), a_shape[ra - 1].clone());
                let (k2, n) = (b_shape[rb - 2].clone(), b_shape[rb - 1].clone());
                if k != k2 {
                    return Err(self.fail(value, format!("contracts {k} with {k2}")));
                }
                let batch_a = product(&a_shape[..ra - 2])?;
                let batch_b = product(&b_shape[..rb - 2])?;
                let mul = |x: &Dim, y: &Dim| x.mul(y).map_err(self.dim(value));
                if rb == 2 {
                    // One right matrix for every batch: one GEMM over all rows.
                    SymGemm {
                        a,
                        b,
                        c,
                        bias: None,
                        epilogue,
                        dtype,
                        batch: one,
                        m: mul(&batch_a, &m)?,
                        n,
                        k,
                        stride_a: zero.clone(),
                        stride_b: zero.clone(),
                        stride_c: zero,
                        b_transposed: false,
                    }
                } else if ra == 2 || batch_a == batch_b {
                    let batch = if ra == 2 { batch_b } else { batch_a };
                    SymGemm {
                        a,
                        b,
                        c,
                        bias: None,
                        epilogue,
                        dtype,
                        batch,
                        stride_a: if ra == 2 { zero } else { mul(&m, &k)? },
                        stride_b: mul(&k, &n)?,
                        stride_c: mul(&m, &n)?,
                        m,
                        n,
                        k,
                        b_transposed: false,
                    }
                } else {
                    return Err(self.fail(
                        value,
                        format!("batches of {batch_a} and {batch_b} matrices do not pair up"),
                    ));
                }
            }
        };
        let mut touched = vec![a, b, c];
        touched.extend(bias);
        self.work.push((SymStep::Gemm(step), touched));
        Ok(())
    }

    fn copy(&mut self, kernel: usize, value: ValueId) -> Result<()> {
        let g = self.g;
        let ops = g.operands(value);
        let out_shape = self.shape(value).to_vec();
        let os = strides(&out_shape)?;
        let out = self.new_buffer(value);
        let call = |b: &mut Self,
                    input: ValueId,
                    extents: &[Dim],
                    in_base: Dim,
                    is: &[Dim],
                    out_base: Dim|
         -> Result<()> {
            let mut args = vec![SymArg::Buffer(b.buf(input)?), SymArg::Buffer(out)];
            args.extend(extents.iter().map(|n| SymArg::Int(n.clone())));
            args.push(SymArg::Int(in_base));
            args.extend(is.iter().map(|s| SymArg::Int(s.clone())));
            args.push(SymArg::Int(out_base));
            args.extend(os.iter().map(|s| SymArg::Int(s.clone())));
            b.launch(kernel, args);
            Ok(())
        };
        let zero = Dim::constant(0);
        match g.op(value) {
            Op::Permute(Permute { perm }) => {
                let in_strides = strides(self.shape(ops[0]))?;
                let is: Vec<Dim> = perm.iter().map(|&p| in_strides[p].clone()).collect();
                call(self, ops[0], &out_shape, zero.clone(), &is, zero)?;
            }
            op @ (Op::Slice(_) | Op::Split(_)) => {
                // A split's result is the slice it covers.
                let piece = match op {
                    Op::Split(sp) => sp.piece(g.node(value).result),
                    Op::Slice(sl) => sl.clone(),
                    _ => return Err(self.fail(value, "is not a slice")),
                };
                let Slice {
                    dim, start, step, ..
                } = &piece;
                let in_shape = self.shape(ops[0]).to_vec();
                let split = g
                    .ty(ops[0])
                    .sharding
                    .dims
                    .get(*dim)
                    .is_some_and(|ds| ds.factors.iter().any(|f| !f.axes.is_empty()));
                if split {
                    return Err(self.fail(
                        value,
                        format!("slices dim {dim}, which this rank holds only part of"),
                    ));
                }
                let in_strides = strides(&in_shape)?;
                let mut is = in_strides.clone();
                is[*dim] = in_strides[*dim]
                    .mul(&Dim::constant(*step))
                    .map_err(self.dim(value))?;
                let base = start.mul(&in_strides[*dim]).map_err(self.dim(value))?;
                call(self, ops[0], &out_shape, base, &is, zero)?;
            }
            Op::Concat(Concat { dim }) => {
                let mut offset = Dim::constant(0);
                for &o in &ops {
                    let shape = self.shape(o).to_vec();
                    let is = strides(&shape)?;
                    let base = offset.mul(&os[*dim]).map_err(self.dim(value))?;
                    call(self, o, &shape, zero.clone(), &is, base)?;
                    offset = offset.add(&shape[*dim]).map_err(self.dim(value))?;
                }
            }
            other => {
                return Err(self.fail(value, format!("`{}` is not a copy", other.name())));
            }
        }
        Ok(())
    }

    fn exchange(&mut self, v: ValueId) -> Result<()> {
        let g = self.g;
        let Op::Collective(CollectiveOp { kind, axis }) = g.op(v) else {
            return Err(self.fail(v, "is not a collective"));
        };
        let operand = g.operands(v)[0];
        let reduce = match kind {
            Collective::AllReduce(op) | Collective::ReduceScatter(op) => Some(*op),
            _ => None,
        };
        let input = self.buf(operand)?;
        let output = self.new_buffer(v);
        self.work.push((
            SymStep::Exchange(SymExchange {
                kind: *kind,
                axis: axis.clone(),
                input,
                output,
                dtype: g.ty(v).dtype,
                reduce,
                from: g.ty(operand).clone(),
                to: g.ty(v).clone(),
            }),
            vec![input, output],
        ));
        Ok(())
    }
}

/// Whether every argument of a launch matches its parameter's kind (a check for tests and the
/// executors).
pub fn args_match(k: &Kernel, args: &[Arg], buffers: &[Buffer]) -> bool {
    let params = k.params();
    params.len() == args.len()
        && params.iter().zip(args).all(|(p, a)| match (p.kind, a) {
            (ParamKind::Input(d) | ParamKind::Output(d), Arg::Buffer(b)) => buffers[b.0].dtype == d,
            (ParamKind::Table, Arg::Buffer(b)) => buffers[b.0].dtype == tpc_ir::DType::I64,
            (ParamKind::Int, Arg::Int(_)) => true,
            (ParamKind::Float, Arg::Float(_)) => true,
            _ => false,
        })
}

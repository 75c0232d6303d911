//! From segments to each rank's host program: buffers sized from the rank's local shapes,
//! kernel arguments (extents, offsets, strides, tables of global indices), GEMM shapes, and the
//! runs every collective moves, then the memory plan.

use std::collections::BTreeMap;

use tpc_ir::layout::{piece_indices, rank_coords};
use tpc_ir::{Collective, Graph, Op, ReduceOp, ValueId};
use tpc_passes::lower::{lower_to_local, LocalProgram};

use crate::fuse::{Plan, ScalarSource, Segment};
use crate::host::{Arg, BufId, Buffer, Compiled, Epilogue, Exchange, Gemm, HostProgram, Run, Step};
use crate::kir::{Kernel, ParamKind};
use crate::{Error, Result};

/// Every rank's host program for `g` (sharded, every symbol bound by `bindings`) on a mesh
/// with axis `sizes`.
pub fn compile_hosts(
    g: &Graph,
    plan: &Plan,
    sizes: &[(String, usize)],
    bindings: &BTreeMap<String, i64>,
) -> Result<Compiled> {
    let world: usize = sizes.iter().map(|(_, n)| (*n).max(1)).product();
    let hosts = (0..world)
        .map(|r| host_program(g, plan, sizes, bindings, r))
        .collect::<Result<Vec<_>>>()?;
    Ok(Compiled {
        kernels: plan.kernels.clone(),
        hosts,
    })
}

/// The host program of rank `rank`.
pub fn host_program(
    g: &Graph,
    plan: &Plan,
    sizes: &[(String, usize)],
    bindings: &BTreeMap<String, i64>,
    rank: usize,
) -> Result<HostProgram> {
    let local = lower_to_local(g, sizes, bindings, rank).map_err(|e| Error::Build {
        value: g.name.clone(),
        rank,
        message: e.to_string(),
    })?;
    let world: usize = sizes.iter().map(|(_, n)| (*n).max(1)).product();
    let mut b = HostBuilder {
        g,
        plan,
        sizes,
        bindings,
        local: &local,
        rank,
        buffers: Vec::new(),
        work: Vec::new(),
        buf_of: BTreeMap::new(),
    };
    for &p in g.params() {
        let buf = b.new_buffer(p);
        b.work.push((
            Step::Input {
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
            Step::Output {
                buf,
                value: g.name(o).to_string(),
                shape: b.shape(o).to_vec(),
            },
            vec![buf],
        ));
    }
    let HostBuilder {
        mut buffers, work, ..
    } = b;
    let (steps, peak_bytes) = crate::memory::plan(&mut buffers, work, &keep);
    Ok(HostProgram {
        rank,
        world,
        buffers,
        steps,
        peak_bytes,
    })
}

struct HostBuilder<'a> {
    g: &'a Graph,
    plan: &'a Plan,
    sizes: &'a [(String, usize)],
    bindings: &'a BTreeMap<String, i64>,
    local: &'a LocalProgram,
    rank: usize,
    buffers: Vec<Buffer>,
    /// Steps without allocation, each with the buffers it touches.
    work: Vec<(Step, Vec<BufId>)>,
    buf_of: BTreeMap<ValueId, BufId>,
}

/// Row-major strides of `shape`, in elements.
fn strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1] as i64;
    }
    s
}

impl HostBuilder<'_> {
    fn fail(&self, v: ValueId, message: impl Into<String>) -> Error {
        Error::Build {
            value: self.g.name(v).to_string(),
            rank: self.rank,
            message: message.into(),
        }
    }

    fn shape(&self, v: ValueId) -> &[usize] {
        &self.local.values[&v].shape
    }

    fn new_buffer(&mut self, v: ValueId) -> BufId {
        let id = BufId(self.buffers.len());
        self.buffers.push(Buffer {
            name: self.g.name(v).to_string(),
            dtype: self.g.ty(v).dtype,
            shape: self.shape(v).to_vec(),
            offset: 0,
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

    fn table(&mut self, name: String, values: Vec<i64>) -> BufId {
        let id = BufId(self.buffers.len());
        self.buffers.push(Buffer {
            name,
            dtype: tpc_ir::DType::I64,
            shape: vec![values.len()],
            offset: 0,
        });
        self.work.push((Step::Table { buf: id, values }, vec![id]));
        id
    }

    fn launch(&mut self, kernel: usize, args: Vec<Arg>, mut touched: Vec<BufId>) {
        let k = &self.plan.kernels[kernel];
        let ints: Vec<i64> = args
            .iter()
            .filter_map(|a| match a {
                Arg::Int(i) => Some(*i),
                _ => None,
            })
            .collect();
        let dims = k.launch(&ints);
        debug_assert_eq!(args.len(), k.params().len());
        touched.extend(args.iter().filter_map(|a| match a {
            Arg::Buffer(b) => Some(*b),
            _ => None,
        }));
        self.work.push((
            Step::Launch {
                kernel,
                grid: dims.grid,
                block: dims.block,
                shared_bytes: dims.shared_bytes,
                args,
            },
            touched,
        ));
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
                    let want: usize = extents
                        .iter()
                        .zip(&k.inputs[i].broadcast)
                        .map(|(&n, &b)| if b { 1 } else { n })
                        .product();
                    let have: usize = self.shape(input).iter().product();
                    if want != have {
                        return Err(self.fail(
                            input,
                            format!(
                                "holds {have} elements here but kernel {} reads {want}",
                                k.name
                            ),
                        ));
                    }
                    args.push(Arg::Buffer(self.buf(input)?));
                }
                for &o in &call.outputs {
                    let b = self.new_buffer(o);
                    args.push(Arg::Buffer(b));
                }
                args.extend(extents.iter().map(|&n| Arg::Int(n as i64)));
                if k.global_index {
                    let piece = &self.local.values[&call.space];
                    let gstrides = strides(&piece.global_shape);
                    for (d, (indices, stride)) in piece.indices.iter().zip(&gstrides).enumerate() {
                        let values: Vec<i64> = indices.iter().map(|&i| i as i64 * stride).collect();
                        let t = self.table(
                            format!("global offsets of %{} dim {d}", g.name(call.space)),
                            values,
                        );
                        args.push(Arg::Buffer(t));
                    }
                }
                for a in &call.args {
                    match a {
                        ScalarSource::InverseCount { value, dims } => {
                            let shape = &self.local.values[value].global_shape;
                            let n: usize = dims.iter().map(|&d| shape[d]).product();
                            args.push(Arg::Float(1.0 / n as f32));
                        }
                    }
                }
                self.launch(*kernel, args, Vec::new());
            }
            Segment::Gemm { value, gelu } => self.gemm(*value, *gelu)?,
            Segment::Copy { kernel, value } => self.copy(*kernel, *value)?,
            Segment::Embedding { kernel, value } => {
                let ops = g.operands(*value);
                let (ids, table) = (ops[0], ops[1]);
                let ts = self.shape(table).to_vec();
                let rows: usize = self.shape(ids).iter().product();
                let args = vec![
                    Arg::Buffer(self.buf(ids)?),
                    Arg::Buffer(self.buf(table)?),
                    Arg::Buffer(self.new_buffer(*value)),
                    Arg::Int(rows as i64),
                    Arg::Int(ts[1] as i64),
                    Arg::Int(ts[0] as i64),
                ];
                self.launch(*kernel, args, Vec::new());
            }
            Segment::Attention { kernel, value } => {
                let ops = g.operands(*value);
                let (q, k, v) = (ops[0], ops[1], ops[2]);
                let qs = self.shape(q).to_vec();
                let r = qs.len();
                let (sq, d) = (qs[r - 2], qs[r - 1]);
                let batch: usize = qs[..r - 2].iter().product();
                let sk = self.shape(k)[r - 2];
                let dv = self.shape(v)[r - 1];
                let scale = match g.op(*value) {
                    Op::Sdpa { scale: Some(s), .. } => *s as f32,
                    _ => (1.0 / (d as f64).sqrt()) as f32,
                };
                let positions: Vec<i64> = self.local.values[&q].indices[r - 2]
                    .iter()
                    .map(|&i| i as i64)
                    .collect();
                let qpos = self.table(format!("query positions of %{}", g.name(q)), positions);
                let args = vec![
                    Arg::Buffer(self.buf(q)?),
                    Arg::Buffer(self.buf(k)?),
                    Arg::Buffer(self.buf(v)?),
                    Arg::Buffer(self.new_buffer(*value)),
                    Arg::Int(batch as i64),
                    Arg::Int(sq as i64),
                    Arg::Int(sk as i64),
                    Arg::Int(d as i64),
                    Arg::Int(dv as i64),
                    Arg::Float(scale),
                    Arg::Buffer(qpos),
                ];
                self.launch(*kernel, args, Vec::new());
            }
            Segment::CrossEntropy { kernel, value } => {
                let ops = g.operands(*value);
                let ls = self.shape(ops[0]).to_vec();
                let class_dim = if ls.len() == 1 { 0 } else { 1 };
                let outer: usize = ls[..class_dim].iter().product();
                let inner: usize = ls[class_dim + 1..].iter().product();
                let blocks = crate::kir::cross_entropy_blocks((outer * inner) as u64, inner == 1);
                let partials = self.table(
                    format!("cross-entropy partials of %{}", g.name(*value)),
                    vec![0; crate::kir::cross_entropy_partials(blocks)],
                );
                let args = vec![
                    Arg::Buffer(self.buf(ops[0])?),
                    Arg::Buffer(self.buf(ops[1])?),
                    Arg::Buffer(self.new_buffer(*value)),
                    Arg::Buffer(partials),
                    Arg::Int(outer as i64),
                    Arg::Int(ls[class_dim] as i64),
                    Arg::Int(inner as i64),
                ];
                self.launch(*kernel, args, Vec::new());
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
        if ra < 1 || rb != 2 && matches!(g.op(value), Op::Linear) || rb < 2 {
            return Err(self.fail(value, "a GEMM needs a matrix on the right"));
        }
        let bias = if matches!(g.op(value), Op::Linear) {
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
        let step = match g.op(value) {
            Op::Linear => {
                let k = a_shape[ra - 1];
                let m: usize = a_shape[..ra - 1].iter().product();
                let (n, k2) = (b_shape[0], b_shape[1]);
                if k != k2 {
                    return Err(self.fail(value, format!("contracts {k} with {k2}")));
                }
                Gemm {
                    a,
                    b,
                    c,
                    bias,
                    epilogue,
                    dtype,
                    batch: 1,
                    m,
                    n,
                    k,
                    stride_a: 0,
                    stride_b: 0,
                    stride_c: 0,
                    b_transposed: true,
                }
            }
            _ => {
                if ra < 2 {
                    return Err(self.fail(value, "a matmul needs matrices on the left"));
                }
                let (m, k) = (a_shape[ra - 2], a_shape[ra - 1]);
                let (k2, n) = (b_shape[rb - 2], b_shape[rb - 1]);
                if k != k2 {
                    return Err(self.fail(value, format!("contracts {k} with {k2}")));
                }
                let batch_a: usize = a_shape[..ra - 2].iter().product();
                let batch_b: usize = b_shape[..rb - 2].iter().product();
                if rb == 2 {
                    // One right matrix for every batch: one GEMM over all rows.
                    Gemm {
                        a,
                        b,
                        c,
                        bias: None,
                        epilogue,
                        dtype,
                        batch: 1,
                        m: batch_a * m,
                        n,
                        k,
                        stride_a: 0,
                        stride_b: 0,
                        stride_c: 0,
                        b_transposed: false,
                    }
                } else if ra == 2 || batch_a == batch_b {
                    let batch = batch_a.max(batch_b);
                    Gemm {
                        a,
                        b,
                        c,
                        bias: None,
                        epilogue,
                        dtype,
                        batch,
                        m,
                        n,
                        k,
                        stride_a: if ra == 2 { 0 } else { m * k },
                        stride_b: k * n,
                        stride_c: m * n,
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
        self.work.push((Step::Gemm(step), touched));
        Ok(())
    }

    fn copy(&mut self, kernel: usize, value: ValueId) -> Result<()> {
        let g = self.g;
        let ops = g.operands(value);
        let out_shape = self.shape(value).to_vec();
        let os = strides(&out_shape);
        let out = self.new_buffer(value);
        let call = |b: &mut Self,
                    input: ValueId,
                    extents: &[usize],
                    in_base: i64,
                    is: &[i64],
                    out_base: i64|
         -> Result<()> {
            let mut args = vec![Arg::Buffer(b.buf(input)?), Arg::Buffer(out)];
            args.extend(extents.iter().map(|&n| Arg::Int(n as i64)));
            args.push(Arg::Int(in_base));
            args.extend(is.iter().map(|&s| Arg::Int(s)));
            args.push(Arg::Int(out_base));
            args.extend(os.iter().map(|&s| Arg::Int(s)));
            b.launch(kernel, args, Vec::new());
            Ok(())
        };
        match g.op(value) {
            Op::Permute { perm } => {
                let in_strides = strides(self.shape(ops[0]));
                let is: Vec<i64> = perm.iter().map(|&p| in_strides[p]).collect();
                call(self, ops[0], &out_shape, 0, &is, 0)?;
            }
            Op::Slice {
                dim, start, step, ..
            } => {
                let in_shape = self.shape(ops[0]).to_vec();
                let global = &self.local.values[&ops[0]].global_shape;
                if in_shape[*dim] != global[*dim] {
                    return Err(self.fail(
                        value,
                        format!("slices dim {dim}, which this rank holds only part of"),
                    ));
                }
                let start = start
                    .eval(self.bindings)
                    .map_err(|e| self.fail(value, e.to_string()))?;
                let in_strides = strides(&in_shape);
                let mut is = in_strides.clone();
                is[*dim] = in_strides[*dim] * step;
                call(self, ops[0], &out_shape, start * in_strides[*dim], &is, 0)?;
            }
            Op::Concat { dim } => {
                let mut offset = 0i64;
                for &o in &ops {
                    let shape = self.shape(o).to_vec();
                    let is = strides(&shape);
                    call(self, o, &shape, 0, &is, offset * os[*dim])?;
                    offset += shape[*dim] as i64;
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
        let Op::Collective { kind, axis } = g.op(v) else {
            return Err(self.fail(v, "is not a collective"));
        };
        let operand = g.operands(v)[0];
        let group = self.local.groups.get(&v).cloned().unwrap_or_default();
        let me = group
            .iter()
            .position(|&r| r == self.rank)
            .ok_or_else(|| self.fail(v, "this rank is not in its own group"))?;
        let reduce = match kind {
            Collective::AllReduce(op) | Collective::ReduceScatter(op) => Some(*op),
            _ => None,
        };
        let pieces = |ty: &tpc_ir::TensorType| -> Result<Vec<Piece>> {
            group
                .iter()
                .map(|&r| {
                    piece_indices(ty, self.bindings, &rank_coords(self.sizes, r))
                        .map_err(|e| self.fail(v, e.to_string()))
                })
                .collect()
        };
        let from = pieces(g.ty(operand))?;
        let to = pieces(g.ty(v))?;
        let recv_of = |t: usize| runs(&from, &to[t].1, t, reduce);
        let recv = recv_of(me).map_err(|e| self.fail(v, e))?;
        let mut send = Vec::with_capacity(group.len());
        for t in 0..group.len() {
            let theirs = if t == me {
                recv.clone()
            } else {
                recv_of(t).map_err(|e| self.fail(v, e))?
            };
            send.push(theirs[me].clone());
        }
        let input = self.buf(operand)?;
        let output = self.new_buffer(v);
        self.work.push((
            Step::Exchange(Exchange {
                kind: *kind,
                axis: axis.clone(),
                group,
                input,
                output,
                dtype: g.ty(v).dtype,
                reduce,
                recv,
                send,
            }),
            vec![input, output],
        ));
        Ok(())
    }
}

/// A rank's piece of a value: the global shape and, per dim, the global indices it holds.
type Piece = (Vec<usize>, Vec<Vec<usize>>);

/// For the member at position `me` of a group whose members hold pieces `from` (global shape,
/// per-dim global indices) and which must end with the piece `want` (per-dim global indices):
/// per member, the runs of its piece this member receives. Without `reduce` each element comes
/// from this member if it holds it, else from the first member that does; with `reduce` from
/// every member.
fn runs(
    from: &[Piece],
    want: &[Vec<usize>],
    me: usize,
    reduce: Option<ReduceOp>,
) -> std::result::Result<Vec<Vec<Run>>, String> {
    let rank = want.len();
    let Some((global, _)) = from.first() else {
        return Ok(Vec::new());
    };
    // Per member and dim: global index -> local position (usize::MAX: not held).
    let positions: Vec<Vec<Vec<usize>>> = from
        .iter()
        .map(|(_, idx)| {
            idx.iter()
                .zip(global)
                .map(|(d, &n)| {
                    let mut p = vec![usize::MAX; n];
                    for (k, &i) in d.iter().enumerate() {
                        p[i] = k;
                    }
                    p
                })
                .collect()
        })
        .collect();
    let member_strides: Vec<Vec<usize>> = from
        .iter()
        .map(|(_, idx)| {
            let shape: Vec<usize> = idx.iter().map(Vec::len).collect();
            strides(&shape).into_iter().map(|s| s as usize).collect()
        })
        .collect();
    let shape: Vec<usize> = want.iter().map(Vec::len).collect();
    let total: usize = shape.iter().product();
    let mut out: Vec<Vec<Run>> = vec![Vec::new(); from.len()];
    let mut push = |s: usize, src: usize, dst: usize| {
        let list = &mut out[s];
        match list.last_mut() {
            Some(r) if r.src + r.len == src && r.dst + r.len == dst => r.len += 1,
            _ => list.push(Run { src, dst, len: 1 }),
        }
    };
    let mut index = vec![0usize; rank];
    // The position of the current element in member `s`'s piece, if held.
    let locate = |s: usize, index: &[usize]| -> Option<usize> {
        let mut at = 0;
        for d in 0..rank {
            let p = positions[s][d][want[d][index[d]]];
            if p == usize::MAX {
                return None;
            }
            at += p * member_strides[s][d];
        }
        Some(at)
    };
    for dst in 0..total {
        match reduce {
            Some(_) => {
                for s in 0..from.len() {
                    let src = locate(s, &index).ok_or_else(|| {
                        format!("member {s} of the group lacks an element to reduce")
                    })?;
                    push(s, src, dst);
                }
            }
            None => {
                let source = std::iter::once(me)
                    .chain(0..from.len())
                    .find_map(|s| locate(s, &index).map(|src| (s, src)));
                let (s, src) =
                    source.ok_or_else(|| "no member of the group holds an element".to_string())?;
                push(s, src, dst);
            }
        }
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
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

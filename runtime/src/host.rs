//! The CPU executor of host programs: each rank runs its steps on a byte arena of the plan's
//! size, with every buffer at its planned offset, so segmentation, the kernels' meaning (through
//! the kernel-IR interpreter), the GEMM and collective steps and the memory plan are all
//! exercised and checked against the reference on any machine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tpc_codegen::host::{Arg, Buffer, Compiled, Epilogue, Exchange, Gemm, HostProgram, Step};
use tpc_codegen::kir::ParamKind;
use tpc_ir::{DType, Graph, ReduceOp};

use crate::bytes::{self, as_f32};
use crate::collective::{run_ranks, Comm};
use crate::emulate::{EmuArg, Emulator};
use crate::kernel::{run_kernel, KArg};
use crate::layout::{assemble, cut};
use crate::ops::pointwise::gelu_tanh_slice;
use crate::ranks::MeshSizes;
use crate::tensor::{round_to, Data, Tensor};
use crate::{Bindings, Error, Result};

/// Runs the host programs of `compiled` (one per rank of `mesh`) for sharded graph `g`: cuts
/// each parameter for each rank, runs the ranks as threads with real collectives, and assembles
/// the results into global tensors (in `g.outputs()` order).
pub fn run_host_programs(
    g: &Graph,
    compiled: &Compiled,
    mesh: &MeshSizes,
    inputs: &BTreeMap<String, Tensor>,
    bindings: &Bindings,
    timeout: Duration,
) -> Result<Vec<Tensor>> {
    run_host_programs_with(
        g,
        compiled,
        Kernels::Interpret,
        mesh,
        inputs,
        bindings,
        timeout,
    )
}

/// How the CPU executor runs a host program's launches.
#[derive(Clone, Copy)]
pub enum Kernels<'a> {
    /// Through the kernel-IR interpreter.
    Interpret,
    /// The generated CUDA C itself, compiled for the host ([`Emulator::build`] of the program's
    /// kernels, in their order).
    Emulate(&'a Emulator),
}

/// [`run_host_programs`], with the launches run as `kernels` says.
pub fn run_host_programs_with(
    g: &Graph,
    compiled: &Compiled,
    kernels: Kernels<'_>,
    mesh: &MeshSizes,
    inputs: &BTreeMap<String, Tensor>,
    bindings: &Bindings,
    timeout: Duration,
) -> Result<Vec<Tensor>> {
    if let Kernels::Emulate(e) = kernels {
        if e.kernels() != compiled.kernels.as_slice() {
            return Err(Error::Internal(
                "the emulator was built from other kernels than the program's".into(),
            ));
        }
    }
    if compiled.hosts.len() != mesh.world() {
        return Err(Error::Internal(format!(
            "{} host programs for {} ranks",
            compiled.hosts.len(),
            mesh.world()
        )));
    }
    let per_rank = run_ranks(mesh.world(), timeout, |comm| {
        let rank = comm.rank();
        let coords = mesh.coords(rank);
        let mut pieces = BTreeMap::new();
        for &p in g.params() {
            let name = g.name(p);
            let global = inputs
                .get(name)
                .ok_or_else(|| Error::MissingInput(name.to_string()))?;
            pieces.insert(name.to_string(), cut(global, g.ty(p), bindings, &coords)?);
        }
        run_host(&compiled.hosts[rank], compiled, kernels, &pieces, comm)
    })?;
    let mut out = Vec::new();
    for &o in g.outputs() {
        let name = g.name(o);
        let ty = g.ty(o);
        let pieces: Vec<_> = per_rank
            .iter()
            .enumerate()
            .map(|(r, outs)| {
                outs.get(name)
                    .cloned()
                    .map(|t| (mesh.coords(r), t))
                    .ok_or_else(|| Error::Internal(format!("rank {r} did not produce %{name}")))
            })
            .collect::<Result<_>>()?;
        let shape =
            tpc_ir::layout::bound_shape(ty, bindings).map_err(|e| Error::Shape(e.to_string()))?;
        out.push(assemble(&shape, ty, bindings, &pieces)?);
    }
    Ok(out)
}

/// The rank's memory: one arena of bytes, its start aligned as a device allocation is (256
/// bytes), so buffers keep the planned alignment that vectorized kernels test for.
struct Arena {
    bytes: Vec<u8>,
    /// Where the arena starts in `bytes`.
    base: usize,
    size: usize,
}

impl Arena {
    const ALIGN: usize = 256;

    fn new(size: usize) -> Arena {
        let bytes = vec![0u8; size + Self::ALIGN];
        let base = bytes.as_ptr().align_offset(Self::ALIGN).min(Self::ALIGN);
        Arena { bytes, base, size }
    }

    fn range(&self, b: &Buffer) -> Result<std::ops::Range<usize>> {
        let start = self.base + b.offset as usize;
        let end = start + b.bytes() as usize;
        if end > self.base + self.size {
            return Err(Error::Internal(format!(
                "%{} ends at byte {} of an arena of {}",
                b.name,
                end - self.base,
                self.size
            )));
        }
        Ok(start..end)
    }

    /// The address of buffer `b`, for a kernel that reads or writes it in place.
    fn address(&mut self, b: &Buffer) -> Result<*mut u8> {
        let r = self.range(b)?;
        Ok(self.bytes[r].as_mut_ptr())
    }

    fn read(&self, b: &Buffer) -> Result<Data> {
        Ok(bytes::decode(b.dtype, &self.bytes[self.range(b)?]))
    }

    fn write(&mut self, b: &Buffer, data: &Data) -> Result<()> {
        let range = self.range(b)?;
        let (n, len) = (b.elems(), bytes::len(data));
        if len != n {
            return Err(Error::Internal(format!(
                "%{} holds {n} elements, {len} were written",
                b.name
            )));
        }
        bytes::encode_into(b.dtype, data, &mut self.bytes[range])
            .map_err(|e| Error::Internal(format!("%{}: {e}", b.name)))
    }
}

/// Runs one rank's host program; `inputs` are the rank's pieces of the parameters. Returns the
/// rank's pieces of the results, by value name.
pub fn run_host(
    host: &HostProgram,
    compiled: &Compiled,
    kernels: Kernels<'_>,
    inputs: &BTreeMap<String, Tensor>,
    comm: &mut Comm,
) -> Result<BTreeMap<String, Tensor>> {
    let mut arena = Arena::new(host.peak_bytes as usize);
    let bufs = &host.buffers;
    let mut outputs = BTreeMap::new();
    for step in &host.steps {
        match step {
            Step::Input { buf, param } => {
                let t = inputs
                    .get(param)
                    .ok_or_else(|| Error::MissingInput(param.clone()))?;
                let b = &bufs[buf.0];
                if t.shape() != b.shape.as_slice() || t.dtype() != b.dtype {
                    return Err(Error::InputMismatch {
                        name: param.clone(),
                        expected: format!("{}{:?} on rank {}", b.dtype, b.shape, host.rank),
                        got: format!("{}{:?}", t.dtype(), t.shape()),
                    });
                }
                arena.write(b, t.data())?;
            }
            Step::Alloc { .. } | Step::Free { .. } => {}
            Step::Table { buf, values } => arena.write(&bufs[buf.0], &Data::I64(values.clone()))?,
            Step::Launch {
                kernel,
                grid,
                block,
                args,
                ..
            } => match kernels {
                Kernels::Interpret => interpret(&mut arena, bufs, compiled, *kernel, args)?,
                Kernels::Emulate(emulator) => {
                    emulate(&mut arena, bufs, emulator, *kernel, *grid, *block, args)?
                }
            },
            Step::Gemm(g) => gemm(&mut arena, bufs, g)?,
            Step::Exchange(x) => exchange(&mut arena, bufs, x, comm)?,
            Step::Output { buf, value, shape } => {
                let b = &bufs[buf.0];
                let t = Tensor {
                    dtype: b.dtype,
                    shape: shape.clone(),
                    data: arena.read(b)?,
                };
                outputs.insert(value.clone(), t);
            }
        }
    }
    Ok(outputs)
}

/// A launch through the kernel-IR interpreter.
fn interpret(
    arena: &mut Arena,
    bufs: &[Buffer],
    compiled: &Compiled,
    kernel: usize,
    args: &[Arg],
) -> Result<()> {
    let k = &compiled.kernels[kernel];
    let params = k.params();
    if params.len() != args.len() {
        return Err(Error::Internal(format!(
            "kernel {} takes {} arguments, the step passes {}",
            k.name(),
            params.len(),
            args.len()
        )));
    }
    // Read every buffer argument; outputs are written back after the kernel.
    let mut held: Vec<Option<Data>> = args
        .iter()
        .map(|a| match a {
            Arg::Buffer(b) => arena.read(&bufs[b.0]).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    let mut kargs: Vec<KArg<'_>> = Vec::with_capacity(args.len());
    for ((a, p), h) in args.iter().zip(&params).zip(held.iter_mut()) {
        kargs.push(match (a, p.kind) {
            (Arg::Buffer(_), ParamKind::Output(_)) => KArg::Out(
                h.as_mut()
                    .ok_or_else(|| Error::Internal("no buffer".into()))?,
            ),
            (Arg::Buffer(_), _) => KArg::In(
                h.as_ref()
                    .ok_or_else(|| Error::Internal("no buffer".into()))?,
            ),
            (Arg::Int(i), _) => KArg::Int(*i),
            (Arg::Float(x), _) => KArg::Float(*x),
        });
    }
    run_kernel(k, &mut kargs)?;
    drop(kargs);
    for ((a, p), h) in args.iter().zip(&params).zip(&held) {
        if let (Arg::Buffer(b), ParamKind::Output(_), Some(d)) = (a, p.kind, h) {
            arena.write(&bufs[b.0], d)?;
        }
    }
    Ok(())
}

/// A launch of the kernel's CUDA C, compiled for the host, on the buffers in place.
fn emulate(
    arena: &mut Arena,
    bufs: &[Buffer],
    emulator: &Emulator,
    kernel: usize,
    grid: [u32; 3],
    block: u32,
    args: &[Arg],
) -> Result<()> {
    let mut eargs = Vec::with_capacity(args.len());
    for a in args {
        eargs.push(match a {
            Arg::Buffer(b) => EmuArg::Ptr(arena.address(&bufs[b.0])?),
            Arg::Int(i) => EmuArg::Int(*i),
            Arg::Float(x) => EmuArg::Float(*x),
        });
    }
    // SAFETY: every pointer is a buffer of the plan, inside the arena (checked by `address`),
    // and the host program's arguments give the kernel that buffer's extents; the arena is not
    // touched otherwise until the launch returns.
    unsafe { emulator.launch(kernel, grid, block, &eargs) }
}

fn floats(d: Data, name: &str) -> Result<Vec<f32>> {
    match d {
        Data::Float(v) => Ok(v),
        _ => Err(Error::Internal(format!("%{name} is not a float buffer"))),
    }
}

/// C = A · op(B) per batch on the reference's GEMM (`ops::linalg::gemm`), then the epilogue,
/// rounded as the unfused ops round (the biased sum once, then gelu once). The operands are
/// read, and C written, in place in the arena where they are f32 and C overlaps none of them
/// (the plan's case); otherwise through copies.
fn gemm(arena: &mut Arena, bufs: &[Buffer], g: &Gemm) -> Result<()> {
    let (ab, bb, cb) = (&bufs[g.a.0], &bufs[g.b.0], &bufs[g.c.0]);
    let biasb = g.bias.map(|x| &bufs[x.0]);
    let (m, n, k) = (g.m, g.n, g.k);
    let need = |stride: usize, size: usize| (g.batch.saturating_sub(1)) * stride + size;
    let check = |a: usize, b: usize, c: usize, bias: Option<usize>| {
        if a < need(g.stride_a, m * k)
            || b < need(g.stride_b, k * n)
            || c < need(g.stride_c, m * n)
            || bias.is_some_and(|x| x < n)
        {
            return Err(Error::Internal(format!(
                "gemm into %{}: buffers too small for batch {} of {m}x{k} by {k}x{n}",
                cb.name, g.batch
            )));
        }
        Ok(())
    };
    let all_f32 = [Some(ab), Some(bb), Some(cb), biasb]
        .iter()
        .flatten()
        .all(|b| b.dtype == DType::F32);
    if all_f32 {
        let ins: Vec<_> = [Some(ab), Some(bb), biasb]
            .iter()
            .flatten()
            .map(|b| arena.range(b))
            .collect::<Result<_>>()?;
        let out = arena.range(cb)?;
        if let Some((c, views)) = split_views(&mut arena.bytes, out, &ins) {
            let bias = biasb.map(|_| views[2]);
            check(
                views[0].len(),
                views[1].len(),
                c.len(),
                bias.map(<[f32]>::len),
            )?;
            gemm_into(g, views[0], views[1], bias, c);
            return Ok(());
        }
    }
    let a = floats(arena.read(ab)?, &ab.name)?;
    let b = floats(arena.read(bb)?, &bb.name)?;
    let bias = match biasb {
        Some(x) => Some(floats(arena.read(x)?, &x.name)?),
        None => None,
    };
    let mut c = vec![0f32; cb.elems()];
    check(a.len(), b.len(), c.len(), bias.as_ref().map(Vec::len))?;
    gemm_into(g, &a, &b, bias.as_deref(), &mut c);
    arena.write(cb, &Data::Float(c))
}

/// `gemm`'s work on f32 slices, checked to be long enough: C's batches, then the epilogue on
/// the whole of `c` (the elements between batches too, as the unfused ops would).
fn gemm_into(g: &Gemm, a: &[f32], b: &[f32], bias: Option<&[f32]>, c: &mut [f32]) {
    let (m, n, k) = (g.m, g.n, g.k);
    // B's row and column strides: k×n row-major, or n×k read transposed.
    let (rsb, csb) = if g.b_transposed { (1, k) } else { (n, 1) };
    // Elements no batch writes are zeros (C may be the arena's old bytes).
    let covered = g.batch * m * n == c.len() && (g.batch <= 1 || g.stride_c == m * n);
    if !covered || m == 0 || n == 0 {
        c.fill(0.0);
    }
    if m > 0 && n > 0 {
        for batch in 0..g.batch {
            let (oa, ob, oc) = (batch * g.stride_a, batch * g.stride_b, batch * g.stride_c);
            crate::ops::linalg::gemm(
                m,
                k,
                n,
                &a[oa..oa + m * k],
                k,
                1,
                &b[ob..ob + k * n],
                rsb,
                csb,
                &mut c[oc..oc + m * n],
            );
        }
    }
    let dt = g.dtype;
    let gelu_after = matches!(g.epilogue, Epilogue::BiasGelu | Epilogue::Gelu);
    // Row by row, so each row is still in cache from the bias when gelu reads it.
    for row in c.chunks_mut(n.max(1)) {
        if let Some(bias) = bias {
            row.iter_mut().zip(bias).for_each(|(y, &x)| *y += x);
        }
        if gelu_after {
            if dt != DType::F32 {
                row.iter_mut().for_each(|x| *x = round_to(dt, *x));
            }
            gelu_tanh_slice(dt, row);
        } else if dt != DType::F32 {
            row.iter_mut().for_each(|x| *x = round_to(dt, *x));
        }
    }
}

/// Views of the arena's bytes as f32: `out` mutably, each of `ins` shared. None where a range
/// overlaps `out`, is not 4-aligned in memory, or the host is big-endian (the arena is
/// little-endian bytes).
fn split_views<'a>(
    bytes: &'a mut [u8],
    out: std::ops::Range<usize>,
    ins: &[std::ops::Range<usize>],
) -> Option<(&'a mut [f32], Vec<&'a [f32]>)> {
    if cfg!(target_endian = "big") {
        return None;
    }
    let (left, rest) = bytes.split_at_mut(out.start);
    let (mid, right) = rest.split_at_mut(out.end - out.start);
    let (left, right): (&'a [u8], &'a [u8]) = (left, right);
    let mut views = Vec::with_capacity(ins.len());
    for r in ins {
        let raw = if r.end <= out.start {
            &left[r.clone()]
        } else if r.start >= out.end {
            &right[r.start - out.end..r.end - out.end]
        } else if r.is_empty() {
            &[][..]
        } else {
            return None;
        };
        views.push(as_f32(raw)?);
    }
    // SAFETY: every bit pattern is an f32; `align_to_mut` gives the aligned middle.
    let (pre, c, post) = unsafe { mid.align_to_mut::<f32>() };
    if !pre.is_empty() || !post.is_empty() {
        return None;
    }
    Some((c, views))
}

/// A collective: every rank shares its input buffer, then takes the runs it receives (and
/// reduces them in group order, in f64, rounded once).
fn exchange(arena: &mut Arena, bufs: &[Buffer], x: &Exchange, comm: &mut Comm) -> Result<()> {
    let (ib, ob) = (&bufs[x.input.0], &bufs[x.output.0]);
    let all: Vec<Arc<Data>> = comm.allgather(arena.read(ib)?)?;
    let n = ob.elems();
    let data = match x.reduce {
        Some(op) => {
            // A sum starts from -0.0, its exact identity (-0 + x is x for every x, -0 and NaN
            // included), so adding every run in member order gives what starting from the
            // first value does; max and min start from the first value each element sees.
            let mut acc = vec![-0.0f64; n];
            let mut seen = (op != ReduceOp::Sum).then(|| vec![false; n]);
            for (s, runs) in x.recv.iter().enumerate() {
                let Data::Float(src) = &*all[x.group[s]] else {
                    return Err(Error::Internal("a reduction of non-floats".into()));
                };
                for r in runs {
                    if r.src + r.len > src.len() || r.dst + r.len > n {
                        return Err(Error::Internal(format!(
                            "a run of {} elements leaves %{}",
                            r.len, ob.name
                        )));
                    }
                    let dst = &mut acc[r.dst..r.dst + r.len];
                    let from = &src[r.src..r.src + r.len];
                    match &mut seen {
                        None => {
                            for (a, &v) in dst.iter_mut().zip(from) {
                                *a += v as f64;
                            }
                        }
                        Some(seen) => {
                            let seen = &mut seen[r.dst..r.dst + r.len];
                            for ((a, &v), seen) in dst.iter_mut().zip(from).zip(seen) {
                                let v = v as f64;
                                *a = match (*seen, op) {
                                    (false, _) => v,
                                    (true, ReduceOp::Max) => a.max(v),
                                    (true, _) => a.min(v),
                                };
                                *seen = true;
                            }
                        }
                    }
                }
            }
            Data::Float(
                acc.into_iter()
                    .map(|a| round_to(ob.dtype, a as f32))
                    .collect(),
            )
        }
        None => {
            let mut out = arena.read(ob)?;
            for (s, runs) in x.recv.iter().enumerate() {
                let src = &*all[x.group[s]];
                for r in runs {
                    copy_run(src, &mut out, r.src, r.dst, r.len)?;
                }
            }
            out
        }
    };
    arena.write(ob, &data)
}

fn copy_run(src: &Data, dst: &mut Data, from: usize, to: usize, len: usize) -> Result<()> {
    fn go<T: Copy>(s: &[T], d: &mut [T], from: usize, to: usize, len: usize) -> Result<()> {
        if from + len > s.len() || to + len > d.len() {
            return Err(Error::Internal(
                "a collective's run leaves its buffer".into(),
            ));
        }
        d[to..to + len].copy_from_slice(&s[from..from + len]);
        Ok(())
    }
    match (src, dst) {
        (Data::Float(s), Data::Float(d)) => go(s, d, from, to, len),
        (Data::I64(s), Data::I64(d)) => go(s, d, from, to, len),
        (Data::Bool(s), Data::Bool(d)) => go(s, d, from, to, len),
        _ => Err(Error::Internal(
            "a collective between different dtypes".into(),
        )),
    }
}

//! The CPU executor of host programs: each rank runs its steps on a byte arena of the plan's
//! size, with every buffer at its planned offset, so segmentation, the kernels' meaning (through
//! the kernel-IR interpreter), the GEMM and collective steps and the memory plan are all
//! exercised and checked against the reference on any machine.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tpc_codegen::host::{Arg, Buffer, Compiled, Epilogue, Exchange, Gemm, HostProgram, Step};
use tpc_codegen::kir::ParamKind;
use tpc_ir::{DType, Graph, ReduceOp};

use crate::bytes::{self, as_f32};
use crate::collective::{run_ranks, Comm};
use crate::emulate::{EmuArg, Emulator};
use crate::kernel::{run_views, VArg, View, ViewMut};
use crate::layout;
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
        // Where each parameter's piece lies in its global tensor; the pieces are written into
        // the arena straight from the global tensors.
        let mut pieces = BTreeMap::new();
        for &p in g.params() {
            let name = g.name(p);
            let global = inputs
                .get(name)
                .ok_or_else(|| Error::MissingInput(name.to_string()))?;
            let piece = layout::piece(global.shape(), g.ty(p), bindings, &coords)?;
            pieces.insert(name.to_string(), (global, piece));
        }
        run_rank(
            &compiled.hosts[rank],
            compiled,
            kernels,
            &Inputs::Global(&pieces),
            comm,
        )
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
                    .map(|t| (mesh.coords(r), t))
                    .ok_or_else(|| Error::Internal(format!("rank {r} did not produce %{name}")))
            })
            .collect::<Result<_>>()?;
        let shape =
            tpc_ir::layout::bound_shape(ty, bindings).map_err(|e| Error::Shape(e.to_string()))?;
        out.push(layout::assemble_refs(&shape, ty, bindings, &pieces)?);
    }
    Ok(out)
}

/// A rank's inputs: its pieces of the parameters, or the global tensors with where its pieces
/// lie in them.
enum Inputs<'a> {
    Pieces(&'a BTreeMap<String, Tensor>),
    Global(&'a BTreeMap<String, (&'a Tensor, layout::Piece)>),
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

    /// An arena with `early` (step, offset, values) written in it (sorted by offset, apart,
    /// inside the arena), zeros elsewhere: the values are copied in without zeroing their bytes
    /// first.
    fn with_inputs(size: usize, early: &[(usize, usize, Vec<&[f32]>)]) -> Arena {
        let mut bytes: Vec<u8> = Vec::with_capacity(size + Self::ALIGN);
        // The vector does not move while it grows within its capacity.
        let base = bytes.as_ptr().align_offset(Self::ALIGN).min(Self::ALIGN);
        bytes.resize(base, 0);
        for (_, offset, parts) in early {
            bytes.resize(base + offset, 0);
            for part in parts {
                match bytes::f32_bytes(part) {
                    Some(raw) => bytes.extend_from_slice(raw),
                    None => part
                        .iter()
                        .for_each(|x| bytes.extend_from_slice(&x.to_le_bytes())),
                }
            }
        }
        bytes.resize(size + Self::ALIGN, 0);
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

    /// Writes `piece` of the global values `data` (its runs, or zeros where the rank does not
    /// hold the values) as buffer `b`, which holds as many elements as the piece.
    fn write_piece(&mut self, b: &Buffer, data: &Data, piece: &layout::Piece) -> Result<()> {
        let range = self.range(b)?;
        let out = &mut self.bytes[range];
        if !piece.keep && !matches!(data, Data::Bool(_)) {
            // Zero is all-zero bytes in every float dtype and in i64.
            out.fill(0);
            return Ok(());
        }
        let size = b.dtype.size_bytes() as usize;
        let mut at = 0;
        for &(start, len) in &piece.runs {
            let dst = out.get_mut(at..at + len * size).ok_or_else(|| {
                Error::Internal(format!("%{}: the piece is longer than the buffer", b.name))
            })?;
            bytes::encode_part(b.dtype, data, start, dst)
                .map_err(|e| Error::Internal(format!("%{}: {e}", b.name)))?;
            at += len * size;
        }
        if at != out.len() {
            return Err(Error::Internal(format!(
                "%{} holds {} elements, {} were written",
                b.name,
                b.elems(),
                at / size.max(1)
            )));
        }
        Ok(())
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
    run_rank(host, compiled, kernels, &Inputs::Pieces(inputs), comm)
}

fn run_rank(
    host: &HostProgram,
    compiled: &Compiled,
    kernels: Kernels<'_>,
    inputs: &Inputs<'_>,
    comm: &mut Comm,
) -> Result<BTreeMap<String, Tensor>> {
    let early = early_inputs(host, inputs);
    let mut arena = Arena::with_inputs(host.peak_bytes as usize, &early);
    let bufs = &host.buffers;
    let mut outputs = BTreeMap::new();
    for (i, step) in host.steps.iter().enumerate() {
        match step {
            // Written as the arena was made.
            Step::Input { .. } if early.iter().any(|e| e.0 == i) => {}
            Step::Input { buf, param } => {
                let b = &bufs[buf.0];
                let mismatch = |dtype: DType, shape: &[usize]| Error::InputMismatch {
                    name: param.clone(),
                    expected: format!("{}{:?} on rank {}", b.dtype, b.shape, host.rank),
                    got: format!("{dtype}{shape:?}"),
                };
                match inputs {
                    Inputs::Pieces(pieces) => {
                        let t = pieces
                            .get(param)
                            .ok_or_else(|| Error::MissingInput(param.clone()))?;
                        if t.shape() != b.shape.as_slice() || t.dtype() != b.dtype {
                            return Err(mismatch(t.dtype(), t.shape()));
                        }
                        arena.write(b, t.data())?;
                    }
                    Inputs::Global(globals) => {
                        let (t, piece) = globals
                            .get(param)
                            .ok_or_else(|| Error::MissingInput(param.clone()))?;
                        if piece.shape != b.shape || t.dtype() != b.dtype {
                            return Err(mismatch(t.dtype(), &piece.shape));
                        }
                        arena.write_piece(b, t.data(), piece)?;
                    }
                }
            }
            Step::Alloc { .. } | Step::Free { .. } => {}
            Step::Table { buf, values } => {
                arena.write(&bufs[buf.0], &Data::I64(values.to_vec()))?
            }
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

/// The f32 inputs that the program's first steps (before anything reads or writes the arena)
/// write, as (step, arena offset, values in order), sorted by offset: the arena is made with
/// them in it. Inputs that do not match their buffers are left to their steps (which report
/// the mismatch); none at all where two would overlap.
fn early_inputs<'a>(
    host: &HostProgram,
    inputs: &Inputs<'a>,
) -> Vec<(usize, usize, Vec<&'a [f32]>)> {
    let mut early = Vec::new();
    // Every input of those steps, as (offset, bytes), to check that none overlap.
    let mut spans = Vec::new();
    for (i, step) in host.steps.iter().enumerate() {
        let (buf, param) = match step {
            Step::Input { buf, param } => (buf, param),
            Step::Alloc { .. } => continue,
            _ => break,
        };
        let b = &host.buffers[buf.0];
        let offset = b.offset as usize;
        spans.push((offset, b.bytes() as usize));
        if b.dtype != DType::F32 || offset + b.bytes() as usize > host.peak_bytes as usize {
            continue;
        }
        let parts: Vec<&'a [f32]> = match inputs {
            Inputs::Pieces(pieces) => match pieces.get(param) {
                Some(t) if t.shape() == b.shape.as_slice() && t.dtype() == b.dtype => {
                    match t.data() {
                        Data::Float(v) => vec![v.as_slice()],
                        _ => continue,
                    }
                }
                _ => continue,
            },
            Inputs::Global(globals) => match globals.get(param) {
                Some((t, piece)) if piece.shape == b.shape && t.dtype() == b.dtype => {
                    let Data::Float(v) = t.data() else {
                        continue;
                    };
                    if !piece.keep {
                        // Zeros, which the arena starts with.
                        Vec::new()
                    } else if piece.runs.iter().all(|&(s, l)| s + l <= v.len()) {
                        piece.runs.iter().map(|&(s, l)| &v[s..s + l]).collect()
                    } else {
                        continue;
                    }
                }
                _ => continue,
            },
        };
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if !parts.is_empty() && n != b.elems() {
            continue;
        }
        early.push((i, offset, parts));
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
        return Vec::new();
    }
    early.sort_by_key(|e| e.1);
    early
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
    // f32 and i64 buffers are seen in place (inputs always, outputs where no other buffer
    // argument overlaps them); the others are decoded into owned values, and those outputs
    // written back after the kernel.
    let base = arena.bytes.as_ptr() as usize;
    let ranges: Vec<Option<Range<usize>>> = args
        .iter()
        .map(|a| match a {
            Arg::Buffer(b) => arena.range(&bufs[b.0]).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    let in_place: Vec<bool> = args
        .iter()
        .zip(&params)
        .zip(&ranges)
        .enumerate()
        .map(|(i, ((a, p), r))| {
            let (Arg::Buffer(b), Some(r)) = (a, r) else {
                return false;
            };
            let size = match bufs[b.0].dtype {
                DType::F32 => 4,
                DType::I64 => 8,
                _ => return false,
            };
            let aligned = (base + r.start).is_multiple_of(size) && cfg!(target_endian = "little");
            let alone = !matches!(p.kind, ParamKind::Output(_))
                || ranges
                    .iter()
                    .enumerate()
                    .all(|(j, o)| j == i || o.as_ref().is_none_or(|o| !overlaps(o, r)));
            aligned && alone
        })
        .collect();
    let mut held: Vec<Option<Data>> = args
        .iter()
        .zip(&in_place)
        .map(|(a, &inp)| match a {
            Arg::Buffer(b) if !inp => arena.read(&bufs[b.0]).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    // The arena split into the outputs seen in place and the shared gaps between them.
    let mut outs: Vec<(usize, Range<usize>)> = (0..args.len())
        .filter(|&i| in_place[i] && matches!(params[i].kind, ParamKind::Output(_)))
        .filter_map(|i| ranges[i].clone().map(|r| (i, r)))
        .collect();
    outs.sort_by_key(|(i, r)| (r.start, r.end, *i));
    let (mut out_slices, gaps) = carve(&mut arena.bytes, &outs)?;
    let mut kargs: Vec<VArg<'_>> = Vec::with_capacity(args.len());
    for (i, ((a, p), h)) in args.iter().zip(&params).zip(held.iter_mut()).enumerate() {
        let is_out = matches!(p.kind, ParamKind::Output(_));
        kargs.push(match (a, h) {
            (Arg::Buffer(b), None) => {
                let b = &bufs[b.0];
                let bad = || Error::Internal(format!("%{} is not aligned in the arena", b.name));
                if is_out {
                    let raw = out_slices
                        .iter_mut()
                        .find(|(j, _)| *j == i)
                        .and_then(|(_, s)| s.take())
                        .ok_or_else(|| Error::Internal(format!("%{} is not carved", b.name)))?;
                    VArg::Out(match b.dtype {
                        DType::F32 => ViewMut::Float(bytes::as_f32_mut(raw).ok_or_else(bad)?),
                        _ => ViewMut::I64(bytes::as_i64_mut(raw).ok_or_else(bad)?),
                    })
                } else {
                    let r = ranges[i].clone().unwrap_or_default();
                    let raw = in_gaps(&gaps, &r).ok_or_else(|| {
                        Error::Internal(format!("%{} overlaps an output", b.name))
                    })?;
                    VArg::In(match b.dtype {
                        DType::F32 => View::Float(as_f32(raw).ok_or_else(bad)?),
                        _ => View::I64(bytes::as_i64(raw).ok_or_else(bad)?),
                    })
                }
            }
            (Arg::Buffer(_), Some(d)) => {
                if is_out {
                    VArg::Out(ViewMut::of(d))
                } else {
                    VArg::In(View::of(d))
                }
            }
            (Arg::Int(i), _) => VArg::Int(*i),
            (Arg::Float(x), _) => VArg::Float(*x),
        });
    }
    run_views(k, kargs)?;
    for ((a, p), h) in args.iter().zip(&params).zip(&held) {
        if let (Arg::Buffer(b), ParamKind::Output(_), Some(d)) = (a, p.kind, h) {
            arena.write(&bufs[b.0], d)?;
        }
    }
    Ok(())
}

/// Whether two byte ranges share a byte.
fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// [`carve`]'s pieces of the arena: the outputs (taken as they are used) and the gaps.
type Carved<'a> = (
    Vec<(usize, Option<&'a mut [u8]>)>,
    Vec<(Range<usize>, &'a [u8])>,
);

/// Mutable outputs, one per `(argument, range)` of `outs` (sorted by start, disjoint), as
/// `(argument, bytes)`, and the shared bytes between them as `(range, bytes)`.
fn carve<'a>(bytes: &'a mut [u8], outs: &[(usize, Range<usize>)]) -> Result<Carved<'a>> {
    let mut slices = Vec::with_capacity(outs.len());
    let mut gaps = Vec::with_capacity(outs.len() + 1);
    let (mut rest, mut pos) = (bytes, 0usize);
    for (i, r) in outs {
        if r.start < pos || r.end > pos + rest.len() {
            return Err(Error::Internal("outputs of a launch overlap".into()));
        }
        let (gap, tail) = rest.split_at_mut(r.start - pos);
        let (out, tail) = tail.split_at_mut(r.end - r.start);
        gaps.push((pos..r.start, &*gap));
        slices.push((*i, Some(out)));
        rest = tail;
        pos = r.end;
    }
    let end = pos + rest.len();
    gaps.push((pos..end, &*rest));
    Ok((slices, gaps))
}

/// The bytes of range `r` of the arena, where it lies inside one of [`carve`]'s gaps.
fn in_gaps<'a>(gaps: &[(Range<usize>, &'a [u8])], r: &Range<usize>) -> Option<&'a [u8]> {
    gaps.iter()
        .find(|(g, _)| g.start <= r.start && r.end <= g.end)
        .map(|(g, s)| &s[r.start - g.start..r.end - g.start])
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
        if let Some((c, views)) = f32_views(&mut arena.bytes, out, &ins) {
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

/// Views of the arena's bytes as f32 ([`carve`]d): `out` mutably, each of `ins` shared. None
/// where one of `ins` overlaps `out` or a range is not 4-aligned in memory.
fn f32_views<'a>(
    bytes: &'a mut [u8],
    out: Range<usize>,
    ins: &[Range<usize>],
) -> Option<(&'a mut [f32], Vec<&'a [f32]>)> {
    let (mut outs, gaps) = carve(bytes, &[(0, out)]).ok()?;
    let views = ins
        .iter()
        .map(|r| in_gaps(&gaps, r).and_then(as_f32))
        .collect::<Option<Vec<_>>>()?;
    let c = bytes::as_f32_mut(outs.pop()?.1?)?;
    Some((c, views))
}

/// A collective: every rank shares its input buffer, then takes the runs it receives (and
/// reduces them in group order, in f64, rounded once). The output is written in place where it
/// is f32.
fn exchange(arena: &mut Arena, bufs: &[Buffer], x: &Exchange, comm: &mut Comm) -> Result<()> {
    let (ib, ob) = (&bufs[x.input.0], &bufs[x.output.0]);
    let all: Vec<Arc<Data>> = comm.allgather(arena.read(ib)?)?;
    let n = ob.elems();
    let recv = x.recv_runs();
    let Some(op) = x.reduce else {
        if ob.dtype == DType::F32 {
            let range = arena.range(ob)?;
            if let Some(out) = bytes::as_f32_mut(&mut arena.bytes[range]) {
                for (s, runs) in recv.iter().enumerate() {
                    let Data::Float(src) = &*all[x.group[s]] else {
                        return Err(Error::Internal(
                            "a collective between different dtypes".into(),
                        ));
                    };
                    for r in runs {
                        copy_slice(src, out, r.src, r.dst, r.len)?;
                    }
                }
                return Ok(());
            }
        }
        let mut out = arena.read(ob)?;
        for (s, runs) in recv.iter().enumerate() {
            let src = &*all[x.group[s]];
            for r in runs {
                copy_run(src, &mut out, r.src, r.dst, r.len)?;
            }
        }
        return arena.write(ob, &out);
    };
    let mut srcs: Vec<&[f32]> = Vec::with_capacity(recv.len());
    for (s, runs) in recv.iter().enumerate() {
        let Data::Float(src) = &*all[x.group[s]] else {
            return Err(Error::Internal("a reduction of non-floats".into()));
        };
        if let Some(r) = runs
            .iter()
            .find(|r| r.src + r.len > src.len() || r.dst + r.len > n)
        {
            return Err(Error::Internal(format!(
                "a run of {} elements leaves %{}",
                r.len, ob.name
            )));
        }
        srcs.push(src);
    }
    // The reduced values, into the arena where the output is f32, else into `vals`.
    let range = arena.range(ob)?;
    let in_place = ob.dtype == DType::F32 && as_f32(&arena.bytes[range.clone()]).is_some();
    let mut vals: Vec<f32> = Vec::new();
    let out: &mut [f32] = if in_place {
        bytes::as_f32_mut(&mut arena.bytes[range])
            .ok_or_else(|| Error::Internal(format!("%{} is not aligned", ob.name)))?
    } else {
        vals.resize(n, 0.0);
        &mut vals
    };
    // Where every member ends with the same output (an allreduce), each reduces only its share
    // of it and the shares are then exchanged, as a ring allreduce divides the work; the
    // decision depends only on the layouts, so every rank of the world takes the same path.
    let g = x.group.len();
    let shared = g > 1 && x.outputs.iter().all(|o| *o == x.outputs[0]);
    let share = |s: usize| -> Range<usize> {
        if shared {
            tpc_ir::layout::split_range(n, g, s)
        } else {
            0..n
        }
    };
    let mine = share(x.me);
    // Block by block of the output (while the runs are few), so the f64 sums stay in cache;
    // every element still adds its runs in member order, then run order.
    let few = recv.iter().map(Vec::len).sum::<usize>() <= 256;
    let block = if few { 4096 } else { n.max(1) };
    let mut acc = vec![0f64; block.min(n)];
    let mut seen = vec![false; if op == ReduceOp::Sum { 0 } else { block.min(n) }];
    for lo in mine.clone().step_by(block) {
        let hi = (lo + block).min(mine.end);
        // A sum starts from -0.0, its exact identity (-0 + x is x for every x, -0 and NaN
        // included), so adding every run in member order gives what starting from the first
        // value does; max and min start from the first value each element sees.
        let acc = &mut acc[..hi - lo];
        acc.fill(-0.0);
        let seen = &mut seen[..if op == ReduceOp::Sum { 0 } else { hi - lo }];
        seen.fill(false);
        for (runs, src) in recv.iter().zip(&srcs) {
            for r in runs {
                let (a, b) = (r.dst.max(lo), (r.dst + r.len).min(hi));
                if a >= b {
                    continue;
                }
                let from = &src[r.src + (a - r.dst)..r.src + (b - r.dst)];
                let dst = &mut acc[a - lo..b - lo];
                if op == ReduceOp::Sum {
                    for (a, &v) in dst.iter_mut().zip(from) {
                        *a += v as f64;
                    }
                } else {
                    let seen = &mut seen[a - lo..b - lo];
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
        let out = &mut out[lo..hi];
        if ob.dtype == DType::F32 {
            out.iter_mut().zip(acc).for_each(|(y, a)| *y = *a as f32);
        } else {
            out.iter_mut()
                .zip(acc)
                .for_each(|(y, a)| *y = round_to(ob.dtype, *a as f32));
        }
    }
    if shared {
        let shares = comm.allgather(Data::Float(out[mine].to_vec()))?;
        for s in (0..g).filter(|&s| s != x.me) {
            let Data::Float(part) = &*shares[x.group[s]] else {
                return Err(Error::Internal("a reduced share of non-floats".into()));
            };
            let range = share(s);
            if part.len() != range.len() {
                return Err(Error::Internal(format!(
                    "member {s} reduced {} elements of %{}, not {}",
                    part.len(),
                    ob.name,
                    range.len()
                )));
            }
            out[range].copy_from_slice(part);
        }
    }
    if !in_place {
        arena.write(ob, &Data::Float(vals))?;
    }
    Ok(())
}

fn copy_slice<T: Copy>(s: &[T], d: &mut [T], from: usize, to: usize, len: usize) -> Result<()> {
    if from + len > s.len() || to + len > d.len() {
        return Err(Error::Internal(
            "a collective's run leaves its buffer".into(),
        ));
    }
    d[to..to + len].copy_from_slice(&s[from..from + len]);
    Ok(())
}

fn copy_run(src: &Data, dst: &mut Data, from: usize, to: usize, len: usize) -> Result<()> {
    match (src, dst) {
        (Data::Float(s), Data::Float(d)) => copy_slice(s, d, from, to, len),
        (Data::I64(s), Data::I64(d)) => copy_slice(s, d, from, to, len),
        (Data::Bool(s), Data::Bool(d)) => copy_slice(s, d, from, to, len),
        _ => Err(Error::Internal(
            "a collective between different dtypes".into(),
        )),
    }
}

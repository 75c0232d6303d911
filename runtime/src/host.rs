//! The CPU executor of host programs: each rank runs its steps on a byte arena of the plan's
//! size, with every buffer at its planned offset, so segmentation, the kernels' meaning (through
//! the kernel-IR interpreter), the GEMM and collective steps and the memory plan are all
//! exercised and checked against the reference on any machine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tpc_codegen::host::{Arg, Buffer, Compiled, Epilogue, Exchange, Gemm, HostProgram, Step};
use tpc_codegen::kir::ParamKind;
use tpc_ir::op::GeluApprox;
use tpc_ir::{DType, Graph, ReduceOp};

use crate::collective::{run_ranks, Comm};
use crate::emulate::{EmuArg, Emulator};
use crate::kernel::{run_kernel, KArg};
use crate::layout::{assemble, cut};
use crate::ops::pointwise::gelu;
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
        let raw = &self.bytes[self.range(b)?];
        Ok(match b.dtype {
            DType::F32 => Data::Float(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            DType::BF16 => Data::Float(
                raw.chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect(),
            ),
            DType::F16 => Data::Float(
                raw.chunks_exact(2)
                    .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                    .collect(),
            ),
            DType::I64 => Data::I64(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            DType::Bool => Data::Bool(raw.iter().map(|&x| x != 0).collect()),
        })
    }

    fn write(&mut self, b: &Buffer, data: &Data) -> Result<()> {
        let range = self.range(b)?;
        let n = b.elems();
        let len = match data {
            Data::Float(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        };
        if len != n {
            return Err(Error::Internal(format!(
                "%{} holds {n} elements, {len} were written",
                b.name
            )));
        }
        let out = &mut self.bytes[range];
        match (b.dtype, data) {
            (DType::F32, Data::Float(v)) => {
                for (c, x) in out.chunks_exact_mut(4).zip(v) {
                    c.copy_from_slice(&x.to_le_bytes());
                }
            }
            (DType::BF16, Data::Float(v)) => {
                for (c, x) in out.chunks_exact_mut(2).zip(v) {
                    c.copy_from_slice(&half::bf16::from_f32(*x).to_bits().to_le_bytes());
                }
            }
            (DType::F16, Data::Float(v)) => {
                for (c, x) in out.chunks_exact_mut(2).zip(v) {
                    c.copy_from_slice(&half::f16::from_f32(*x).to_bits().to_le_bytes());
                }
            }
            (DType::I64, Data::I64(v)) => {
                for (c, x) in out.chunks_exact_mut(8).zip(v) {
                    c.copy_from_slice(&x.to_le_bytes());
                }
            }
            (DType::Bool, Data::Bool(v)) => {
                for (c, x) in out.iter_mut().zip(v) {
                    *c = u8::from(*x);
                }
            }
            (dt, _) => {
                return Err(Error::Internal(format!(
                    "%{}: wrong kind of values for {dt}",
                    b.name
                )))
            }
        }
        Ok(())
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

/// C = A · op(B) per batch on matrixmultiply's sgemm, then the epilogue, rounded as the unfused
/// ops round (the biased sum once, then gelu once).
fn gemm(arena: &mut Arena, bufs: &[Buffer], g: &Gemm) -> Result<()> {
    let (ab, bb, cb) = (&bufs[g.a.0], &bufs[g.b.0], &bufs[g.c.0]);
    let a = floats(arena.read(ab)?, &ab.name)?;
    let b = floats(arena.read(bb)?, &bb.name)?;
    let bias = match g.bias {
        Some(x) => Some(floats(arena.read(&bufs[x.0])?, &bufs[x.0].name)?),
        None => None,
    };
    let (m, n, k) = (g.m, g.n, g.k);
    let mut c = vec![0f32; cb.elems()];
    let need = |stride: usize, size: usize| (g.batch.saturating_sub(1)) * stride + size;
    if a.len() < need(g.stride_a, m * k)
        || b.len() < need(g.stride_b, k * n)
        || c.len() < need(g.stride_c, m * n)
        || bias.as_ref().is_some_and(|x| x.len() < n)
    {
        return Err(Error::Internal(format!(
            "gemm into %{}: buffers too small for batch {} of {m}x{k} by {k}x{n}",
            cb.name, g.batch
        )));
    }
    // B's row and column strides: k×n row-major, or n×k read transposed.
    let (rsb, csb) = if g.b_transposed { (1, k) } else { (n, 1) };
    for batch in 0..g.batch {
        let (oa, ob, oc) = (batch * g.stride_a, batch * g.stride_b, batch * g.stride_c);
        let cs = &mut c[oc..oc + m * n];
        if m == 0 || n == 0 {
            continue;
        }
        if k == 0 {
            cs.iter_mut().for_each(|x| *x = 0.0);
            continue;
        }
        // SAFETY: the length checks above bound every access through these strides.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a[oa..].as_ptr(),
                k as isize,
                1,
                b[ob..].as_ptr(),
                rsb as isize,
                csb as isize,
                0.0,
                cs.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
    let dt = g.dtype;
    let with_bias = |c: &mut [f32]| {
        if let Some(bias) = &bias {
            for row in c.chunks_mut(n.max(1)) {
                row.iter_mut().zip(bias).for_each(|(y, &x)| *y += x);
            }
        }
    };
    match g.epilogue {
        Epilogue::None | Epilogue::Bias => {
            with_bias(&mut c);
            c.iter_mut().for_each(|x| *x = round_to(dt, *x));
        }
        Epilogue::BiasGelu | Epilogue::Gelu => {
            with_bias(&mut c);
            c.iter_mut()
                .for_each(|x| *x = round_to(dt, gelu(round_to(dt, *x), GeluApprox::Tanh)));
        }
    }
    arena.write(cb, &Data::Float(c))
}

/// A collective: every rank shares its input buffer, then takes the runs it receives (and
/// reduces them in group order, in f64, rounded once).
fn exchange(arena: &mut Arena, bufs: &[Buffer], x: &Exchange, comm: &mut Comm) -> Result<()> {
    let (ib, ob) = (&bufs[x.input.0], &bufs[x.output.0]);
    let all: Vec<Arc<Data>> = comm.allgather(arena.read(ib)?)?;
    let n = ob.elems();
    let data = match x.reduce {
        Some(op) => {
            let mut acc = vec![0f64; n];
            let mut seen = vec![false; n];
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
                    for i in 0..r.len {
                        let v = src[r.src + i] as f64;
                        let a = &mut acc[r.dst + i];
                        *a = if !seen[r.dst + i] {
                            v
                        } else {
                            match op {
                                ReduceOp::Sum => *a + v,
                                ReduceOp::Max => a.max(v),
                                ReduceOp::Min => a.min(v),
                            }
                        };
                        seen[r.dst + i] = true;
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

//! The CPU interpreter of the kernel IR (tpc-codegen's `kir`): runs a generated kernel of any kind
//! on host buffers with the reference executor's scalar functions, so a kernel can be checked, bit
//! for bit, against the ops it replaces, and the CPU executor of host programs runs the same
//! kernels as the CUDA one.
//!
//! [`run_kernel`] takes the arguments in the order of [`Kernel::params`] and checks each one's
//! kind, dtype and length against the parameters and the extents before anything runs.

mod attention;
mod copy;
mod draw;
mod embedding;
mod fused;
mod lut;
mod pick;

use tpc_codegen::kir::{Fused, Kernel, ParamKind};
use tpc_ir::DType;

use crate::tensor::{Data, Tensor};
use crate::{Error, Result};

/// One argument of a kernel launch.
pub enum KArg<'a> {
    /// A buffer the kernel reads (an `Input` or a `Table` parameter; tables are `Data::I64`).
    In(&'a Data),
    /// A buffer the kernel writes (an `Output` parameter), pre-sized to the buffer's element
    /// count, of the variant for its dtype.
    Out(&'a mut Data),
    /// An `Int` parameter.
    Int(i64),
    /// A `Float` parameter.
    Float(f32),
}

/// A buffer a kernel reads, borrowed: the values of its dtype's [`Data`] variant.
#[derive(Clone, Copy)]
pub(crate) enum View<'a> {
    Float(&'a [f32]),
    I64(&'a [i64]),
    Bool(&'a [bool]),
}

/// A buffer a kernel writes, borrowed: the values of its dtype's [`Data`] variant.
pub(crate) enum ViewMut<'a> {
    Float(&'a mut [f32]),
    I64(&'a mut [i64]),
    Bool(&'a mut [bool]),
}

impl<'a> View<'a> {
    pub(crate) fn of(d: &'a Data) -> View<'a> {
        match d {
            Data::Float(v) => View::Float(v),
            Data::I64(v) => View::I64(v),
            Data::Bool(v) => View::Bool(v),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            View::Float(v) => v.len(),
            View::I64(v) => v.len(),
            View::Bool(v) => v.len(),
        }
    }
}

impl<'a> ViewMut<'a> {
    pub(crate) fn of(d: &'a mut Data) -> ViewMut<'a> {
        match d {
            Data::Float(v) => ViewMut::Float(v),
            Data::I64(v) => ViewMut::I64(v),
            Data::Bool(v) => ViewMut::Bool(v),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            ViewMut::Float(v) => v.len(),
            ViewMut::I64(v) => v.len(),
            ViewMut::Bool(v) => v.len(),
        }
    }
}

/// One argument of a launch on borrowed buffers ([`KArg`]'s counterpart).
pub(crate) enum VArg<'a> {
    In(View<'a>),
    Out(ViewMut<'a>),
    Int(i64),
    Float(f32),
}

/// Runs kernel `k` with `args` in the order of `k.params()`: Input/Table params get `In`
/// (tables are `Data::I64`), Output params get `Out` (pre-sized to the buffer's element count,
/// of the variant for its dtype; a Copy writes only the elements it addresses), Int params get
/// `Int`, Float params `Float`.
///
/// A mismatch between the arguments and the parameters or the extents is `Error::Internal`; an
/// index out of range in the data (an embedding id, a cross-entropy target) is `Error::Value`.
pub fn run_kernel(k: &Kernel, args: &mut [KArg<'_>]) -> Result<()> {
    let views = args
        .iter_mut()
        .map(|a| match a {
            KArg::In(d) => VArg::In(View::of(d)),
            KArg::Out(d) => VArg::Out(ViewMut::of(d)),
            KArg::Int(v) => VArg::Int(*v),
            KArg::Float(v) => VArg::Float(*v),
        })
        .collect();
    run_views(k, views)
}

/// [`run_kernel`] on borrowed buffers.
pub(crate) fn run_views(k: &Kernel, args: Vec<VArg<'_>>) -> Result<()> {
    let mut a = split(k, args)?;
    match k {
        Kernel::Fused(f) => fused::run(f, &mut a),
        Kernel::Copy(c) => copy::run(c, &mut a),
        Kernel::Embedding(e) => embedding::run(e, &mut a),
        Kernel::Attention(at) => attention::run(at, &mut a),
        Kernel::Pick(p) => pick::run_pick(p, &mut a),
        Kernel::Kept(kept) => pick::run_kept(kept, &mut a),
    }
}

/// The arguments of one launch, sorted by kind, each list in parameter order.
pub(crate) struct Args<'a> {
    /// The kernel's name, for messages.
    kernel: String,
    /// `Input` and `Table` arguments, with their parameter names.
    ins: Vec<(String, View<'a>)>,
    outs: Vec<(String, ViewMut<'a>)>,
    ints: Vec<(String, i64)>,
    floats: Vec<f32>,
}

impl<'a> Args<'a> {
    fn err(&self, message: impl std::fmt::Display) -> Error {
        Error::Internal(format!("kernel {}: {message}", self.kernel))
    }

    /// Int argument `i` as a count (an extent), which must not be negative.
    fn extent(&self, i: usize) -> Result<usize> {
        let (name, v) = &self.ints[i];
        usize::try_from(*v).map_err(|_| self.err(format_args!("{name} = {v} is negative")))
    }

    /// Checks that buffer argument `name` holds `want` elements.
    fn check_len(&self, name: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(self.err(format_args!(
                "{name} holds {got} elements, but the extents address {want}"
            )));
        }
        Ok(())
    }

    /// Input `i` as floats, checked to hold `want` elements.
    fn in_floats(&self, i: usize, want: usize) -> Result<&'a [f32]> {
        let (name, d) = &self.ins[i];
        let View::Float(v) = *d else {
            return Err(self.err(format_args!("{name} is not a float buffer")));
        };
        self.check_len(name, v.len(), want)?;
        Ok(v)
    }

    /// Input (or table) `i` as i64, checked to hold `want` elements.
    fn in_ints(&self, i: usize, want: usize) -> Result<&'a [i64]> {
        let (name, d) = &self.ins[i];
        let View::I64(v) = *d else {
            return Err(self.err(format_args!("{name} is not an i64 buffer")));
        };
        self.check_len(name, v.len(), want)?;
        Ok(v)
    }

    /// Output `i` as floats, checked to hold `want` elements.
    fn out_floats(&mut self, i: usize, want: usize) -> Result<&mut [f32]> {
        let kernel = &self.kernel;
        let (name, d) = &mut self.outs[i];
        let got = d.len();
        let ViewMut::Float(v) = d else {
            return Err(Error::Internal(format!(
                "kernel {kernel}: {name} is not a float buffer"
            )));
        };
        if got != want {
            return Err(Error::Internal(format!(
                "kernel {kernel}: {name} holds {got} elements, but the extents address {want}"
            )));
        }
        Ok(v)
    }
}

/// The variant of a buffer's values: 0 float, 1 i64, 2 bool.
fn variant_of_in(d: &View<'_>) -> usize {
    match d {
        View::Float(_) => 0,
        View::I64(_) => 1,
        View::Bool(_) => 2,
    }
}

fn variant_of_out(d: &ViewMut<'_>) -> usize {
    match d {
        ViewMut::Float(_) => 0,
        ViewMut::I64(_) => 1,
        ViewMut::Bool(_) => 2,
    }
}

fn variant_name(variant: usize) -> &'static str {
    ["a float buffer", "an i64 buffer", "a bool buffer"][variant]
}

/// Whether `variant` is the one that holds `dtype`.
fn holds(variant: usize, dtype: DType) -> bool {
    match variant {
        0 => dtype.is_float(),
        1 => dtype == DType::I64,
        _ => dtype == DType::Bool,
    }
}

fn karg_name(a: &VArg<'_>) -> String {
    match a {
        VArg::In(d) => format!("an input ({})", variant_name(variant_of_in(d))),
        VArg::Out(d) => format!("an output ({})", variant_name(variant_of_out(d))),
        VArg::Int(v) => format!("the int {v}"),
        VArg::Float(v) => format!("the float {v}"),
    }
}

/// Checks `args` against `k.params()` (count, kind, buffer variant) and sorts them by kind.
fn split<'a>(k: &Kernel, args: Vec<VArg<'a>>) -> Result<Args<'a>> {
    let params = k.params();
    let kernel = k.name().to_string();
    if params.len() != args.len() {
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        return Err(Error::Internal(format!(
            "kernel {kernel} takes {} arguments ({}), got {}",
            params.len(),
            names.join(", "),
            args.len()
        )));
    }
    let mut out = Args {
        kernel,
        ins: Vec::new(),
        outs: Vec::new(),
        ints: Vec::new(),
        floats: Vec::new(),
    };
    // Check every argument first, then sort them.
    for (p, a) in params.iter().zip(args.iter()) {
        let want = match (p.kind, a) {
            (ParamKind::Input(dt), VArg::In(d)) if holds(variant_of_in(d), dt) => continue,
            (ParamKind::Table, VArg::In(d)) if holds(variant_of_in(d), DType::I64) => continue,
            (ParamKind::Output(dt), VArg::Out(d)) if holds(variant_of_out(d), dt) => continue,
            (ParamKind::Int, VArg::Int(_)) | (ParamKind::Float, VArg::Float(_)) => continue,
            (ParamKind::Input(dt), _) => format!("an input of {dt}"),
            (ParamKind::Table, _) => "an i64 table".to_string(),
            (ParamKind::Output(dt), _) => format!("an output of {dt}"),
            (ParamKind::Int, _) => "an int".to_string(),
            (ParamKind::Float, _) => "a float".to_string(),
        };
        return Err(Error::Internal(format!(
            "kernel {}: parameter {} wants {want}, got {}",
            out.kernel,
            p.name,
            karg_name(a)
        )));
    }
    for (p, a) in params.into_iter().zip(args) {
        match a {
            VArg::In(d) => out.ins.push((p.name, d)),
            VArg::Out(d) => out.outs.push((p.name, d)),
            VArg::Int(v) => out.ints.push((p.name, v)),
            VArg::Float(v) => out.floats.push(v),
        }
    }
    Ok(out)
}

/// Runs fused kernel `k` on whole (unsharded) tensors: `inputs` in the kernel's input order
/// (each of `shape` with its broadcast dims of extent 1, or missing on the left), `shape` the
/// iteration extents, `scalars` its float arguments `s<i>`, `seeds` its seeds `r<i>`; a kernel
/// drawing random numbers gets the global offsets of an unsharded tensor. Returns its outputs:
/// of `shape`, or, for per-row outputs, `shape` with the row dims of extent 1.
pub fn run_pointwise(
    k: &Fused,
    inputs: &[&Tensor],
    shape: &[usize],
    scalars: &[f32],
    seeds: &[u64],
) -> Result<Vec<Tensor>> {
    if inputs.len() != k.inputs.len() || shape.len() != k.rank {
        return Err(Error::Internal(format!(
            "kernel {} takes {} inputs of rank {}, got {} for rank {}",
            k.name,
            k.inputs.len(),
            k.rank,
            inputs.len(),
            shape.len()
        )));
    }
    let mut outs: Vec<(Vec<usize>, Data)> = Vec::new();
    for o in &k.outputs {
        let out_shape: Vec<usize> = (0..k.rank)
            .map(|d| match k.row {
                Some((a, b)) if o.per_row && (a..b).contains(&d) => 1,
                _ => shape[d],
            })
            .collect();
        let n = out_shape.iter().product();
        let data = match o.dtype {
            DType::Bool => Data::Bool(vec![false; n]),
            DType::I64 => Data::I64(vec![0; n]),
            _ => Data::Float(vec![0.0; n]),
        };
        outs.push((out_shape, data));
    }
    {
        let mut args: Vec<KArg<'_>> = inputs.iter().map(|t| KArg::In(t.data())).collect();
        args.extend(outs.iter_mut().map(|(_, d)| KArg::Out(d)));
        args.extend(shape.iter().map(|&n| KArg::Int(n as i64)));
        // Global offsets of an unsharded tensor: index times row-major stride.
        let tables: Vec<Data> = if k.global_index {
            let mut stride = 1i64;
            let mut t: Vec<Data> = Vec::new();
            for &n in shape.iter().rev() {
                t.push(Data::I64((0..n as i64).map(|i| i * stride).collect()));
                stride *= n as i64;
            }
            t.reverse();
            t
        } else {
            Vec::new()
        };
        args.extend(tables.iter().map(KArg::In));
        args.extend(scalars.iter().map(|&x| KArg::Float(x)));
        args.extend(seeds.iter().map(|&s| KArg::Int(s as i64)));
        run_kernel(&Kernel::Fused(k.clone()), &mut args)?;
    }
    outs.into_iter()
        .zip(&k.outputs)
        .map(|((shape, data), o)| match data {
            Data::Float(v) => Tensor::from_f32(o.dtype, shape, v),
            Data::Bool(v) => Tensor::from_bool(shape, v),
            Data::I64(v) => Tensor::from_i64(shape, v),
        })
        .collect()
}

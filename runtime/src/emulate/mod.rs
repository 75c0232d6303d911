//! The CUDA emulator: the generated CUDA C itself, compiled for the host by a C++ compiler
//! against `tpc_emu.h` (CUDA's built-ins, barriers and shuffles on fibers) and run on the CPU.
//!
//! The kernel-IR interpreter proves what a kernel means; this proves that the CUDA C written
//! from it computes that, on any machine with a C++ compiler: index arithmetic, vectorized fast
//! paths and their alignment tests, shared-memory tiling, warp and block reductions, the
//! attention kernel's online softmax. What it cannot show is what only a GPU has (timing, the
//! memory model across blocks that run at once, the device's own `expf`).
//!
//! The compiler is `TPC_CXX`, else `CXX`, else the first of `c++`, `g++`, `clang++` that runs.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use tpc_codegen::cuda::{module_source, param_type};
use tpc_codegen::kir::Kernel;

use crate::{Error, Result};

/// The header every emulated module is compiled with.
pub const HEADER: &str = include_str!("tpc_emu.h");

/// What to do when no C++ compiler is found.
pub const HOW_TO_GET_CXX: &str =
    "install a C++ compiler with C++17 and _Float16 (g++ 12 or clang++ 15, e.g. `apt install g++`) or point TPC_CXX at one";

/// The C++ compiler to use, if one runs here: `TPC_CXX` when set (and only it), else `CXX`,
/// else the first of `c++`, `g++`, `clang++`.
pub fn find_compiler() -> Option<PathBuf> {
    let runs = |cxx: &PathBuf| {
        Command::new(cxx)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if let Some(cxx) = std::env::var_os("TPC_CXX") {
        return Some(PathBuf::from(cxx)).filter(runs);
    }
    let named = std::env::var_os("CXX").map(PathBuf::from);
    let defaults = ["c++", "g++", "clang++"].iter().map(PathBuf::from);
    named.into_iter().chain(defaults).find(runs)
}

/// One argument of an emulated launch, in the order of [`Kernel::params`].
#[derive(Clone, Copy, Debug)]
pub enum EmuArg {
    /// A device pointer: here, a host address inside the rank's arena.
    Ptr(*mut u8),
    Int(i64),
    Float(f32),
}

type LaunchFn = unsafe extern "C" fn(
    kernel: c_uint,
    args: *mut *mut c_void,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    block: c_uint,
    err: *mut c_char,
    errlen: usize,
) -> c_int;

/// A module of kernels compiled for the host.
pub struct Emulator {
    kernels: Vec<Kernel>,
    launch: LaunchFn,
    // Keeps `launch` valid; dropped after it.
    _lib: libloading::Library,
    dir: PathBuf,
}

// The library's state is thread_local (see tpc_emu.h): ranks on different threads may launch at
// once. Launch arguments point into the calling rank's own arena.
unsafe impl Send for Emulator {}
unsafe impl Sync for Emulator {}

/// The C++ translation unit: the header, the generated CUDA C, and a trampoline per kernel that
/// unpacks CUDA-style argument pointers into the kernel's parameters.
pub fn translation_unit(kernels: &[Kernel]) -> String {
    let mut out = String::from("#include \"tpc_emu.h\"\n#include \"kernels.cu\"\n\n");
    for (i, k) in kernels.iter().enumerate() {
        let args: Vec<String> = k
            .params()
            .iter()
            .enumerate()
            .map(|(j, p)| format!("*({}*)a[{j}]", param_type(p)))
            .collect();
        out.push_str(&format!(
            "static void tpc_emu_k{i}(void** a) {{ {}({}); }}\n",
            k.name(),
            args.join(", ")
        ));
    }
    let table: Vec<String> = (0..kernels.len())
        .map(|i| format!("tpc_emu_k{i}"))
        .collect();
    out.push_str(&format!(
        r#"
extern "C" int tpc_emu_launch(unsigned int kernel, void** args, unsigned int gx, unsigned int gy,
                              unsigned int gz, unsigned int block, char* err, size_t errlen) {{
  static void (*const table[])(void**) = {{ {}nullptr }};
  if (kernel >= {}u) {{ snprintf(err, errlen, "no kernel %u", kernel); return 1; }}
  return tpc_emu::launch(table[kernel], args, gx, gy, gz, block, err, errlen);
}}
"#,
        table.iter().map(|t| format!("{t}, ")).collect::<String>(),
        kernels.len()
    ));
    out
}

static BUILDS: AtomicU64 = AtomicU64::new(0);

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Emulator(format!("{what} {}: {e}", path.display()))
}

impl Emulator {
    /// Compiles `kernels` (their CUDA C as `tpc_codegen::cuda::module_source` writes it) for the
    /// host and loads them. Kernel `i` of a launch is `kernels[i]`.
    pub fn build(kernels: &[Kernel]) -> Result<Emulator> {
        let cxx = find_compiler()
            .ok_or_else(|| Error::Emulator(format!("no C++ compiler found; {HOW_TO_GET_CXX}")))?;
        let dir = std::env::temp_dir().join(format!(
            "tpc-emu-{}-{}",
            std::process::id(),
            BUILDS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
        let emulator = Self::build_in(&cxx, &dir, kernels);
        if emulator.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        emulator
    }

    fn build_in(cxx: &Path, dir: &Path, kernels: &[Kernel]) -> Result<Emulator> {
        let files = [
            ("tpc_emu.h", HEADER.to_string()),
            ("kernels.cu", module_source(kernels)),
            ("emu.cpp", translation_unit(kernels)),
        ];
        for (name, text) in &files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| io("cannot write", &path, e))?;
        }
        let lib_path = dir.join("libtpc_emu.so");
        // -ffp-contract=off: no fused multiply-adds, as the interpreter (NVRTC does contract, so
        // a GPU differs from both in the last bits).
        let out = Command::new(cxx)
            .args(["-std=c++17", "-O1", "-shared", "-fPIC", "-ffp-contract=off"])
            .args(["-Wno-unknown-pragmas", "-Wno-attributes", "-o"])
            .arg(&lib_path)
            .arg(dir.join("emu.cpp"))
            .current_dir(dir)
            .output()
            .map_err(|e| Error::Emulator(format!("cannot run {}: {e}", cxx.display())))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let head: String = stderr.lines().take(40).collect::<Vec<_>>().join("\n");
            return Err(Error::Emulator(format!(
                "{} could not compile the generated CUDA C for the host (in {}):\n{head}",
                cxx.display(),
                dir.display()
            )));
        }
        // SAFETY: the library is the one just built from tpc_emu.h and the generated source; its
        // initializers only zero thread_local state.
        let lib = unsafe { libloading::Library::new(&lib_path) }
            .map_err(|e| Error::Emulator(format!("cannot load {}: {e}", lib_path.display())))?;
        // SAFETY: emu.cpp defines tpc_emu_launch with exactly LaunchFn's signature.
        let launch: LaunchFn = unsafe {
            *lib.get::<LaunchFn>(b"tpc_emu_launch\0")
                .map_err(|e| Error::Emulator(format!("no tpc_emu_launch in the module: {e}")))?
        };
        Ok(Emulator {
            kernels: kernels.to_vec(),
            launch,
            _lib: lib,
            dir: dir.to_path_buf(),
        })
    }

    /// Kernel `kernel` and its parameters, checked to be `args` many.
    fn kernel_params(
        &self,
        kernel: usize,
        args: usize,
    ) -> Result<(&Kernel, Vec<tpc_codegen::kir::Param>)> {
        let k = self
            .kernels
            .get(kernel)
            .ok_or_else(|| Error::Internal(format!("no emulated kernel {kernel}")))?;
        let params = k.params();
        if params.len() != args {
            return Err(Error::Internal(format!(
                "kernel {} takes {} arguments, {args} were given",
                k.name(),
                params.len()
            )));
        }
        Ok((k, params))
    }

    /// The kernels, in launch-index order.
    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    /// Runs kernel `kernel` over `grid` × `block` threads with `args` in the order of its
    /// parameters.
    ///
    /// # Safety
    /// Every `Ptr` must address memory that the kernel may read and write for the extents in
    /// `args`, for the duration of the call.
    pub unsafe fn launch(
        &self,
        kernel: usize,
        grid: [u32; 3],
        block: u32,
        args: &[EmuArg],
    ) -> Result<()> {
        let (k, _) = self.kernel_params(kernel, args.len())?;
        // Each argument in an 8-byte cell (a pointer, an i64, or an f32 in the low bytes), and
        // CUDA's array of pointers to them.
        let mut cells: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                EmuArg::Ptr(p) => p as usize as u64,
                EmuArg::Int(i) => i as u64,
                EmuArg::Float(x) => x.to_bits() as u64,
            })
            .collect();
        let mut pointers: Vec<*mut c_void> = cells
            .iter_mut()
            .map(|c| c as *mut u64 as *mut c_void)
            .collect();
        let mut err = vec![0u8; 512];
        // SAFETY: the caller vouches for the pointers; the cells outlive the call.
        let rc = unsafe {
            (self.launch)(
                kernel as c_uint,
                pointers.as_mut_ptr(),
                grid[0],
                grid[1],
                grid[2],
                block,
                err.as_mut_ptr() as *mut c_char,
                err.len(),
            )
        };
        if rc != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(Error::Emulator(format!(
                "kernel {}: {}",
                k.name(),
                String::from_utf8_lossy(&err[..end])
            )));
        }
        Ok(())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs kernel `kernel` of `emulator` on host buffers, as [`crate::kernel::run_kernel`] runs it
/// through the interpreter: `args` in the order of its parameters (`In` for inputs and tables,
/// `Out` for outputs, whose elements the kernel does not write keep their values), at the
/// geometry the host program would launch it with ([`Kernel::launch`]).
pub fn run_kernel_emulated(
    emulator: &Emulator,
    kernel: usize,
    args: &mut [crate::kernel::KArg<'_>],
) -> Result<()> {
    use crate::kernel::KArg;
    use tpc_codegen::kir::ParamKind;
    let (k, params) = emulator.kernel_params(kernel, args.len())?;
    let dtype_of = |p: &tpc_codegen::kir::Param| match p.kind {
        ParamKind::Input(d) | ParamKind::Output(d) => d,
        // A table is i64; the scalars have no buffer.
        ParamKind::Table | ParamKind::Int | ParamKind::Float => tpc_ir::DType::I64,
    };
    // Every buffer in its own 256-byte-aligned place, as a device allocation is.
    let mut memory: Vec<Option<aligned::Aligned>> = args
        .iter()
        .zip(&params)
        .map(|(a, p)| match a {
            KArg::In(d) => aligned::Aligned::encode(dtype_of(p), d).map(Some),
            KArg::Out(d) => aligned::Aligned::encode(dtype_of(p), d).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    let mut ints = Vec::new();
    let mut eargs = Vec::with_capacity(args.len());
    for (a, m) in args.iter().zip(memory.iter_mut()) {
        eargs.push(match (a, m) {
            (KArg::In(_) | KArg::Out(_), Some(m)) => EmuArg::Ptr(m.as_mut_ptr()),
            (KArg::Int(i), _) => {
                ints.push(*i);
                EmuArg::Int(*i)
            }
            (KArg::Float(x), _) => EmuArg::Float(*x),
            (KArg::In(_) | KArg::Out(_), None) => {
                return Err(Error::Internal("a buffer argument without memory".into()))
            }
        });
    }
    let dims = k.launch(&ints);
    // SAFETY: each pointer is a buffer of its argument's full length; the kernel addresses what
    // its extents say, which the caller sized the buffers for (as for the interpreter).
    unsafe { emulator.launch(kernel, dims.grid, dims.block, &eargs)? };
    for ((a, p), m) in args.iter_mut().zip(&params).zip(&memory) {
        if let (KArg::Out(d), Some(m)) = (a, m) {
            **d = m.decode(dtype_of(p))?;
        }
    }
    Ok(())
}

mod aligned {
    //! Host buffers as the bytes a kernel sees.
    use crate::tensor::Data;
    use crate::Result;
    use tpc_ir::DType;

    /// Bytes starting at a 256-byte boundary.
    pub struct Aligned {
        raw: Vec<u8>,
        base: usize,
        len: usize,
    }

    impl Aligned {
        pub fn encode(dtype: DType, d: &Data) -> Result<Aligned> {
            let bytes = crate::bytes::encode(dtype, d)?;
            let mut raw = vec![0u8; bytes.len() + 256];
            let base = raw.as_ptr().align_offset(256).min(256);
            raw[base..base + bytes.len()].copy_from_slice(&bytes);
            Ok(Aligned {
                raw,
                base,
                len: bytes.len(),
            })
        }

        pub fn as_mut_ptr(&mut self) -> *mut u8 {
            self.raw[self.base..].as_mut_ptr()
        }

        pub fn decode(&self, dtype: DType) -> Result<Data> {
            Ok(crate::bytes::decode(
                dtype,
                &self.raw[self.base..self.base + self.len],
            ))
        }
    }
}

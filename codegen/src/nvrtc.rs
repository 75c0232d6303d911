//! Compiling CUDA C to PTX with NVRTC (through cudarc, loading `libnvrtc` at run time, so
//! building tpc needs no CUDA toolkit). The library is looked for before it is used: without it
//! the answer is an error that says how to get it, not cudarc's panic.

use crate::{Error, Result};

/// The GPU architectures every kernel is compiled for.
pub const ARCHES: [&str; 2] = ["sm_80", "sm_90"];

/// How to get the library, for error messages.
pub const HOW_TO_GET_NVRTC: &str = "install it with `python3 -m pip install nvidia-cuda-nvrtc-cu12` (no GPU needed) and add the wheel's `nvidia/cuda_nvrtc/lib` directory to LD_LIBRARY_PATH";

/// Whether `libnvrtc` can be loaded here.
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// PTX for `source` on `arch` (`sm_80`, `sm_90`).
pub fn compile(source: &str, arch: &'static str) -> Result<String> {
    if !available() {
        return Err(Error::NvrtcMissing(HOW_TO_GET_NVRTC.to_string()));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        name: Some("kernels.cu".to_string()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts)
        .map(|ptx| ptx.to_src())
        .map_err(|e| Error::Nvrtc {
            arch: arch.to_string(),
            log: format!("{e:?}"),
        })
}

//! Whether the CUDA libraries can be loaded here, asked before cudarc touches them: cudarc
//! loads each library on first use and panics when it is missing, so every entry point of the
//! CUDA executor goes through these checks and turns an absence into a clear [`Error::Cuda`].

use crate::{Error, Result};

/// How to get the NVIDIA driver, for messages.
const DRIVER_HINT: &str = "the CUDA executor needs an NVIDIA GPU and its driver (libcuda.so.1, \
installed with the driver); run on a machine with one, or use the CPU executor";

/// Whether `libcuda` (the driver API) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether `libcublasLt` can be loaded.
pub fn cublaslt_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::cublaslt::sys::is_culib_present() }
}

/// Whether `libnccl` can be loaded under a name cudarc looks for.
pub fn nccl_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// The number of GPUs the driver sees, or a clear error: no driver, a driver that does not
/// initialize (no device, a stub library), or no GPU.
pub fn gpu_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::Cuda(format!(
            "no CUDA driver: libcuda could not be loaded; {DRIVER_HINT}"
        )));
    }
    cudarc::driver::result::init().map_err(|e| {
        Error::Cuda(format!(
            "the CUDA driver could not be initialized ({}); {DRIVER_HINT}",
            driver_error(&e)
        ))
    })?;
    let n = cudarc::driver::result::device::get_count().map_err(|e| {
        Error::Cuda(format!(
            "the CUDA driver could not count the GPUs ({})",
            driver_error(&e)
        ))
    })?;
    if n <= 0 {
        return Err(Error::Cuda(format!(
            "no GPU: the CUDA driver is loaded but sees no device (check CUDA_VISIBLE_DEVICES); {DRIVER_HINT}"
        )));
    }
    Ok(n as usize)
}

/// A clear error unless cuBLASLt can be loaded.
pub fn require_cublaslt() -> Result<()> {
    if cublaslt_present() {
        return Ok(());
    }
    Err(Error::Cuda(
        "the program has GEMM steps but libcublasLt could not be loaded: install the CUDA \
         toolkit's cuBLAS, or `python3 -m pip install nvidia-cublas-cu12` and add the wheel's \
         `nvidia/cublas/lib` directory to LD_LIBRARY_PATH"
            .into(),
    ))
}

/// A clear error unless NCCL can be loaded.
pub fn require_nccl() -> Result<()> {
    if nccl_present() {
        return Ok(());
    }
    let mut m = String::from(
        "the program exchanges data between ranks but libnccl could not be loaded: install NCCL \
         (libnccl2, or `python3 -m pip install nvidia-nccl-cu12`)",
    );
    match find_versioned_nccl() {
        Some(path) => {
            m += &format!(
                "; {path} exists, but cudarc looks for `libnccl.so`: add a link \
             `ln -s {path} <dir>/libnccl.so` in a directory on LD_LIBRARY_PATH"
            )
        }
        None => m += " and make sure `libnccl.so` is on LD_LIBRARY_PATH",
    }
    Err(Error::Cuda(m))
}

/// A `libnccl.so.2` that the dynamic loader would not find under cudarc's names (NCCL's
/// packages and wheels install only the versioned name).
fn find_versioned_nccl() -> Option<String> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
        "/usr/local/cuda/lib64",
    ] {
        dirs.push(d.into());
    }
    dirs.into_iter()
        .map(|d| d.join("libnccl.so.2"))
        .find(|p| p.exists())
        .map(|p| p.display().to_string())
}

/// A driver error as its name and description.
pub(crate) fn driver_error(e: &cudarc::driver::DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name}: {}", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// What the benchmarks need to know of a GPU.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    /// Theoretical DRAM bandwidth: 2 transfers a clock × memory clock × bus width.
    pub peak_bytes_per_s: f64,
    pub multiprocessors: u32,
}

/// The name, peak memory bandwidth and SM count of GPU `ordinal`, or a clear error.
pub fn device_info(ordinal: usize) -> Result<DeviceInfo> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    let count = gpu_count()?;
    if ordinal >= count {
        return Err(Error::Cuda(format!(
            "GPU {ordinal} asked for, but this machine has {count}"
        )));
    }
    let fail = |what: &str, e: cudarc::driver::DriverError| {
        Error::Cuda(format!(
            "cannot read the GPU's {what} ({})",
            driver_error(&e)
        ))
    };
    let dev = cudarc::driver::result::device::get(ordinal as i32).map_err(|e| fail("handle", e))?;
    let name = cudarc::driver::result::device::get_name(dev).map_err(|e| fail("name", e))?;
    // SAFETY: `dev` comes from device::get.
    let attr = |a: A| unsafe { cudarc::driver::result::device::get_attribute(dev, a) };
    let clock_khz =
        attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE).map_err(|e| fail("memory clock", e))?;
    let bus_bits = attr(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
        .map_err(|e| fail("memory bus width", e))?;
    let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| fail("multiprocessor count", e))?;
    Ok(DeviceInfo {
        name,
        peak_bytes_per_s: 2.0 * clock_khz as f64 * 1e3 * bus_bits as f64 / 8.0,
        multiprocessors: sms.max(0) as u32,
    })
}

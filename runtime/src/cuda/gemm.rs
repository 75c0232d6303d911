//! GEMM steps on cuBLASLt (through cudarc's `cublaslt::result` layer, on raw arena pointers).
//!
//! cuBLASLt is column-major; a row-major `c = a · op(b)` (a `m×k`, b `k×n` or `n×k`, c `m×n`)
//! is the column-major `cᵀ = op(b)ᵀ · aᵀ`, so the library's "A" is our `b`, its "B" is our `a`,
//! and its `m, n` are our `n, m`. The bias (one value per column of the row-major c) is then one
//! value per row of the column-major D, which is what cuBLASLt's BIAS epilogues add.
//! Products accumulate in f32 (`CUBLAS_COMPUTE_32F`, also for f32 storage: no TF32).

use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Arc;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use tpc_codegen::host::{Epilogue, Gemm};
use tpc_ir::DType;

/// A cuBLASLt handle and its workspace, for one GPU.
pub(crate) struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    workspace_ptr: u64,
}

impl Drop for Blas {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: the handle was created by `new` and is destroyed once.
            let _ = unsafe { lt::destroy_handle(self.handle) };
        }
    }
}

fn lt_err(what: &str, e: lt::CublasError) -> String {
    format!("cuBLASLt {what}: {:?}", e.0)
}

/// Destroys a descriptor on drop.
struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn data_type(d: DType) -> Result<sys::cudaDataType, String> {
    Ok(match d {
        DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
        DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType_t::CUDA_R_16F,
        other => return Err(format!("cuBLASLt GEMMs take float operands, not {other}")),
    })
}

/// The largest power of two (at most 256) dividing every value.
fn alignment(values: &[u64]) -> u32 {
    let mut a = 256u64;
    for &v in values {
        while a > 1 && v % a != 0 {
            a /= 2;
        }
    }
    a as u32
}

/// Pointers of one GEMM's operands (bytes; the bias is absent without one).
pub(crate) struct Operands {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub bias: Option<(u64, DType)>,
}

impl Blas {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Blas, String> {
        let major = stream
            .context()
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .map_err(|e| format!("reading the compute capability: {}", super::check::driver_error(&e)))?;
        // NVIDIA's recommendation: 32 MiB on Hopper and later, 4 MiB before.
        let size = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = stream.alloc_zeros::<u8>(size).map_err(|e| {
            format!(
                "allocating the cuBLASLt workspace: {}",
                super::check::driver_error(&e)
            )
        })?;
        let workspace_ptr = workspace.device_ptr(stream).0;
        let handle = lt::create_handle().map_err(|e| lt_err("create", e))?;
        Ok(Blas {
            handle,
            workspace,
            workspace_ptr,
        })
    }

    /// Enqueues `g` on `stream` with operand pointers `p`.
    pub(crate) fn gemm(&self, stream: &CudaStream, g: &Gemm, p: &Operands) -> Result<(), String> {
        if g.batch == 0 || g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let esize = g.dtype.size_bytes();
        if g.k == 0 {
            // An empty sum: zeros, and gelu(0) = 0; a bias would need a kernel.
            if g.bias.is_some() {
                return Err("a GEMM with k = 0 and a bias is not supported on the GPU".into());
            }
            for b in 0..g.batch as u64 {
                let at = p.c + b * g.stride_c as u64 * esize;
                let bytes = (g.m * g.n) as u64 * esize;
                // SAFETY: the range lies in the arena (checked by the plan).
                unsafe {
                    cudarc::driver::result::memset_d8_async(
                        at,
                        0,
                        bytes as usize,
                        stream.cu_stream(),
                    )
                }
                .map_err(|e| super::check::driver_error(&e))?;
            }
            return Ok(());
        }
        let ty = data_type(g.dtype)?;
        let (m, n, k) = (g.m as u64, g.n as u64, g.k as u64);
        // Library A = our b: n×k op of a stored (k×n row-major = n×k column-major, ld n) or
        // (n×k row-major = k×n column-major, ld k, transposed).
        let (a_rows, a_cols, lda) = if g.b_transposed { (k, n, k) } else { (n, k, n) };
        let la = lt::create_matrix_layout(ty, a_rows, a_cols, lda as i64)
            .map_err(|e| lt_err("layout", e))?;
        let _ga = Guard(|| unsafe {
            let _ = lt::destroy_matrix_layout(la);
        });
        // Library B = our a: m×k row-major = k×m column-major, ld k.
        let lb = lt::create_matrix_layout(ty, k, m, k as i64).map_err(|e| lt_err("layout", e))?;
        let _gb = Guard(|| unsafe {
            let _ = lt::destroy_matrix_layout(lb);
        });
        // D = our c: m×n row-major = n×m column-major, ld n.
        let lc = lt::create_matrix_layout(ty, n, m, n as i64).map_err(|e| lt_err("layout", e))?;
        let _gc = Guard(|| unsafe {
            let _ = lt::destroy_matrix_layout(lc);
        });
        let batch = g.batch as i32;
        for (layout, stride) in [(la, g.stride_b), (lb, g.stride_a), (lc, g.stride_c)] {
            let stride = stride as i64;
            // SAFETY: valid layouts; attribute values of the documented types.
            unsafe {
                lt::set_matrix_layout_attribute(
                    layout,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    &batch as *const i32 as *const c_void,
                    size_of::<i32>(),
                )
                .map_err(|e| lt_err("batch count", e))?;
                lt::set_matrix_layout_attribute(
                    layout,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    &stride as *const i64 as *const c_void,
                    size_of::<i64>(),
                )
                .map_err(|e| lt_err("batch stride", e))?;
            }
        }
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(|e| lt_err("matmul descriptor", e))?;
        let _gd = Guard(|| unsafe {
            let _ = lt::destroy_matmul_desc(desc);
        });
        let set = |attr: sys::cublasLtMatmulDescAttributes_t, ptr: *const c_void, size: usize| {
            // SAFETY: a valid descriptor; `ptr` points at `size` bytes of the attribute's type.
            unsafe { lt::set_matmul_desc_attribute(desc, attr, ptr, size) }
                .map_err(|e| lt_err(&format!("{attr:?}"), e))
        };
        let trans_a: i32 = i32::from(g.b_transposed);
        let trans_b: i32 = 0;
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &trans_a as *const i32 as *const c_void,
            size_of::<i32>(),
        )?;
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            &trans_b as *const i32 as *const c_void,
            size_of::<i32>(),
        )?;
        // The bias is added whenever the step has one (as the CPU executor does).
        let gelu = matches!(g.epilogue, Epilogue::Gelu | Epilogue::BiasGelu);
        let epilogue = match (p.bias.is_some(), gelu) {
            (false, false) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            (true, false) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            (false, true) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU,
            (true, true) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        };
        let epilogue_value = epilogue as u32;
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &epilogue_value as *const u32 as *const c_void,
            size_of::<u32>(),
        )?;
        if let Some((ptr, dtype)) = p.bias {
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &ptr as *const u64 as *const c_void,
                size_of::<u64>(),
            )?;
            let bias_type = data_type(dtype)? as i32;
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &bias_type as *const i32 as *const c_void,
                size_of::<i32>(),
            )?;
            let zero: i64 = 0;
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE,
                &zero as *const i64 as *const c_void,
                size_of::<i64>(),
            )?;
        }
        let pref = lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?;
        let _gp = Guard(|| unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        });
        let workspace_bytes = self.workspace.len() as u64;
        let batched = g.batch > 1;
        let stride_bytes = |s: usize| if batched { s as u64 * esize } else { 0 };
        let prefs: [(sys::cublasLtMatmulPreferenceAttributes_t, u64); 5] = [
            (
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                workspace_bytes,
            ),
            (
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                alignment(&[p.b, stride_bytes(g.stride_b)]) as u64,
            ),
            (
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                alignment(&[p.a, stride_bytes(g.stride_a)]) as u64,
            ),
            (
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                alignment(&[p.c, stride_bytes(g.stride_c)]) as u64,
            ),
            (
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                alignment(&[p.c, stride_bytes(g.stride_c)]) as u64,
            ),
        ];
        for (attr, value) in prefs {
            // MAX_WORKSPACE_BYTES is a uint64_t, the alignments uint32_t.
            let r = if attr
                == sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
            {
                // SAFETY: a valid preference descriptor and a u64 value.
                unsafe {
                    lt::set_matmul_pref_attribute(pref, attr, &value as *const u64 as *const c_void, size_of::<u64>())
                }
            } else {
                let v = value as u32;
                // SAFETY: as above, a u32 value.
                unsafe {
                    lt::set_matmul_pref_attribute(pref, attr, &v as *const u32 as *const c_void, size_of::<u32>())
                }
            };
            r.map_err(|e| lt_err(&format!("{attr:?}"), e))?;
        }
        // SAFETY: valid descriptors, created above.
        let heuristic =
            unsafe { lt::get_matmul_algo_heuristic(self.handle, desc, la, lb, lc, lc, pref) }
                .map_err(|e| {
                    format!(
                        "cuBLASLt has no algorithm for {} batch {} m {} n {} k {}{} ({:?})",
                        g.dtype,
                        g.batch,
                        g.m,
                        g.n,
                        g.k,
                        if g.b_transposed { " b transposed" } else { "" },
                        e.0
                    )
                })?;
        let alpha: f32 = 1.0;
        let beta: f32 = 0.0;
        // SAFETY: every pointer lies in the arena at a range the plan checked, the workspace is
        // ours, and all descriptors are alive until the call has been enqueued.
        unsafe {
            lt::matmul(
                self.handle,
                desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                p.b as *const c_void,
                la,
                p.a as *const c_void,
                lb,
                p.c as *const c_void,
                lc,
                p.c as *mut c_void,
                lc,
                &heuristic.algo,
                self.workspace_ptr as *mut c_void,
                workspace_bytes as usize,
                stream.cu_stream() as _,
            )
        }
        .map_err(|e| lt_err("matmul", e))
    }
}

#[cfg(test)]
mod tests {
    use super::alignment;

    #[test]
    fn alignment_is_the_largest_common_power_of_two() {
        assert_eq!(alignment(&[0]), 256);
        assert_eq!(alignment(&[512, 0]), 256);
        assert_eq!(alignment(&[256, 6]), 2);
        assert_eq!(alignment(&[256, 12]), 4);
        assert_eq!(alignment(&[1024, 64]), 64);
    }
}

//! tpc-codegen: from a sharded program to what a GPU runs.
//!
//! This first step covers pointwise code end to end: segmentation (`fuse`) puts maximal chains
//! of pointwise ops into one kernel each; the kernel IR (`kir`) says what a kernel computes; the
//! CUDA C writer (`cuda`) prints it; NVRTC (`nvrtc`) compiles it to PTX for sm_80 and sm_90. The
//! runtime interprets the same kernel IR on the CPU. GEMMs, reductions, attention, host programs
//! and the CUDA executor are later steps (docs/codegen.md).

pub mod build;
pub mod cuda;
pub mod exchange;
pub mod fuse;
pub mod host;
pub mod kir;
pub mod memory;
pub mod nvrtc;
pub mod template;

/// Errors of the code generator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("libnvrtc is not available: {0}")]
    NvrtcMissing(String),
    #[error("NVRTC could not compile the kernels for {arch}: {log}")]
    Nvrtc { arch: String, log: String },
    #[error("%{value}: code generation does not support {what} yet")]
    Unsupported { value: String, what: String },
    #[error("binding {}: {message}", symbols.join(", "))]
    Binding {
        symbols: Vec<String>,
        message: String,
    },
    #[error("%{value} on rank {rank}: {message}")]
    Build {
        value: String,
        rank: usize,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

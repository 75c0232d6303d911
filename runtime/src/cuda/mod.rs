//! The CUDA executor: host programs on GPUs through cudarc (driver, NVRTC-compiled PTX,
//! cuBLASLt, NCCL), every library loaded at run time, so tpc builds without a CUDA toolkit and
//! a machine without a driver or a GPU gets a clear [`crate::Error::Cuda`], never a panic.
//!
//! - [`run_cuda`] runs the ranks of a compiled program, one thread per local GPU, one NCCL
//!   communicator over the world (split per mesh-axis group);
//! - [`WorldConfig`] and [`share_blob`] join the processes of a multi-node run
//!   (`TPC_RANK`, `TPC_WORLD_SIZE`, `TPC_MASTER_ADDR`, `TPC_MASTER_PORT`, `TPC_LOCAL_RANK`);
//! - [`plan`] checks the host programs and maps every exchange to NCCL calls, on the CPU;
//! - [`gpu_count`] says whether this machine can run anything at all.

mod check;
mod exec;
mod gemm;
mod nccl;
pub mod plan;
pub mod rendezvous;

pub use check::{
    cublaslt_present, device_info, driver_present, gpu_count, nccl_present, DeviceInfo,
};
pub use exec::{run_cuda, run_cuda_with, RunOptions};
pub use rendezvous::{share_blob, Master, WorldConfig};

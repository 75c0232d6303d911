//! tpc-runtime: the CPU reference executor.
//!
//! It runs any verified graph on one device; its results are the truth every sharded result is
//! checked against. Sharding annotations are ignored: the reference computes the global program.
//! bf16/f16 values are stored rounded, ops compute in f32 and round once, GEMMs run on
//! matrixmultiply's sgemm, random numbers come from Philox keyed by seed and global index.

mod bytes;
pub mod collective;
pub mod cuda;
pub mod emulate;
mod exec;
pub mod host;
mod inputs;
mod io;
pub mod kernel;
pub mod layout;
mod ops;
pub mod philox;
pub mod ranks;
mod tensor;

use std::collections::BTreeMap;

pub use inputs::{bind_symbols, draw_missing_inputs, random_inputs};
pub use io::{load_safetensors, save_safetensors};
pub use tensor::{round_to, Data, Tensor};
use tpc_ir::Graph;

/// Values of the program's symbols.
pub type Bindings = BTreeMap<String, i64>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "missing input %{0}: pass it in --inputs (keyed `{0}`) or let it be drawn from the seed"
    )]
    MissingInput(String),
    #[error("input %{name} should be {expected} but is {got}")]
    InputMismatch {
        name: String,
        expected: String,
        got: String,
    },
    #[error("%{value}: {source}")]
    Dim {
        value: String,
        source: tpc_ir::DimError,
    },
    #[error("{0}")]
    Binding(String),
    #[error("%{value} would need {bytes} bytes of live memory, over the limit of {limit} bytes; use smaller --bind values")]
    TooLarge {
        value: String,
        bytes: u64,
        limit: u64,
    },
    #[error("a size overflows")]
    Overflow,
    #[error("{0}")]
    Shape(String),
    #[error("{0}")]
    Value(String),
    #[error("{0}")]
    Io(String),
    #[error("rank {rank} failed: {message}")]
    RankFailed { rank: usize, message: String },
    #[error("{0}")]
    Cuda(String),
    #[error("CUDA emulator: {0}")]
    Emulator(String),
    #[error("internal error in the reference executor: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Resource limits of a run.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most bytes of tensors alive at once.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: 16 << 30,
        }
    }
}

/// Runs `graph` on one device; outputs in `graph.outputs()` order.
pub fn run_reference(
    graph: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    bindings: &Bindings,
) -> Result<Vec<Tensor>> {
    run_reference_with_limits(graph, inputs, bindings, &Limits::default())
}

pub fn run_reference_with_limits(
    graph: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    bindings: &Bindings,
    limits: &Limits,
) -> Result<Vec<Tensor>> {
    exec::run(graph, inputs, bindings, limits)
}

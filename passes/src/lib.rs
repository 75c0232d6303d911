//! tpc-passes: the pass manager and the passes.
//!
//! A pass has a kebab-case name, runs on a [`Graph`], and reports whether it changed it. The
//! manager runs a pipeline given as a string (`dce`), verifies the graph after every pass when
//! asked (always in tests and debug builds), and can print the IR after a pass and time passes.
//! The sharding passes of DESIGN.md (propagate-sharding, insert-resharding, …) join the registry
//! as they land.

pub mod cost;
mod dce;
mod insert_resharding;
pub mod lower_to_local;
mod manager;
mod place;
mod propagate_sharding;
mod reorder_sharded_axis;

/// The per-rank lowering under its former name.
pub use lower_to_local as lower;

pub use manager::{registry, PassInfo, PassManager, PassRecord, PrintAfter};

use std::collections::BTreeMap;

use tpc_ir::{Diagnostic, Graph};

/// Errors of the pass crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown pass `{name}`; the passes are: {valid}")]
    UnknownPass { name: String, valid: String },
    #[error("the pipeline is empty; name at least one pass, like `dce`")]
    EmptyPipeline,
    #[error("cannot lower to a rank: {0}")]
    Lowering(String),
    /// Internal to insert-resharding, which handles it: `value`'s op cannot make its layout on
    /// `axis` from local pieces.
    #[error("%{value} is split over `{axis}` in a way its op cannot produce locally")]
    NotLocal { value: String, axis: String },
    #[error("not supported yet: {0}")]
    Unsupported(String),
    #[error("the graph is invalid after pass `{pass}` ({} error(s))", .diagnostics.len())]
    InvalidAfter {
        pass: String,
        diagnostics: Vec<Diagnostic>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The passes that shard a program, in order: what `tpc compile` and `tpc run --devices` run
/// unless told otherwise.
pub const DEFAULT_PIPELINE: &str = "propagate-sharding,insert-resharding,reorder-sharded-axis";

/// Runs one pass function: the signature every pass has.
pub type PassFn = fn(&mut Graph, &PassContext) -> Result<bool>;

/// What passes may read besides the graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassContext {
    /// Symbol values at which the cost model sizes tensors (`--bind`); a symbol left out counts
    /// as [`cost::UNBOUND_SYMBOL`].
    pub symbols: BTreeMap<String, i64>,
    /// Mesh axis sizes, when the device count is known (`--devices`): what a pass that must
    /// count ranks (reorder-sharded-axis for `all_to_all`) needs; without them it leaves such
    /// collectives as they are.
    pub axis_sizes: BTreeMap<String, i64>,
}

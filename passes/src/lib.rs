//! tpc-passes: the pass manager and the passes.
//!
//! A pass ([`Pass`]) has a kebab-case name, typed options, the [`Phase`] it needs the graph in
//! and the phase it leaves it in; it runs on a [`Graph`](tpc_ir::Graph) and reports whether it changed it. The
//! manager runs a pipeline given as a string (`propagate-sharding{cost=bytes},insert-resharding`),
//! checks that every pass finds the graph in a phase it can run at, verifies the input and the
//! graph after every pass (the IR's verifier and the phase's invariants, [`verify_phase`]) when
//! asked (always in tests and debug builds), and can print the IR before and after a pass and
//! time passes. docs/passes.md has the phases, the options syntax and how to add a pass.

pub mod cost;
mod dce;
pub mod decompose;
mod insert_resharding;
pub mod lower_to_local;
mod manager;
mod pass;
mod phase;
mod place;
mod propagate_sharding;
mod reorder_sharded_axis;

pub use insert_resharding::check_local;
pub use manager::{registry, Dump, PassManager, PassRecord, PrintAfter, PrintIr};
pub use pass::{OptionKind, OptionSpec, OptionValue, Options, Outcome, Pass, Phase};
pub use phase::verify_phase;

use std::collections::BTreeMap;

use tpc_ir::Diagnostic;

/// Errors of the pass crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown pass `{name}`; the passes are: {valid}")]
    UnknownPass { name: String, valid: String },
    #[error("the pipeline is empty; name at least one pass, like `dce`")]
    EmptyPipeline,
    #[error("bad pipeline: {0}")]
    Pipeline(String),
    #[error("pass `{pass}` has no option `{option}`; {valid}")]
    UnknownOption {
        pass: String,
        option: String,
        valid: String,
    },
    #[error("`{value}` is not a value of option `{option}` of pass `{pass}`: it takes {expected}")]
    BadOptionValue {
        pass: String,
        option: String,
        value: String,
        expected: String,
    },
    #[error("unknown phase `{name}`; the phases are: {valid}")]
    UnknownPhase { name: String, valid: String },
    #[error("pass `{pass}` needs the graph at the {requires} phase, but it is at the {current} phase{hint}")]
    PhaseTooEarly {
        pass: String,
        requires: Phase,
        current: Phase,
        /// Which pass brings the graph to the required phase, as `; `x` brings it there`.
        hint: String,
    },
    #[error(
        "pass `{pass}` makes the {produces} phase, but the graph is already at the {current} phase"
    )]
    PhasePassed {
        pass: String,
        produces: Phase,
        current: Phase,
    },
    #[error("the input is not a valid program at the {phase} phase ({} error(s))", .diagnostics.len())]
    InvalidInput {
        phase: Phase,
        diagnostics: Vec<Diagnostic>,
    },
    #[error("cannot lower to a rank: {0}")]
    Lowering(String),
    /// Internal to insert-resharding, which handles it: `value`'s op cannot make its layout on
    /// `axis` from local pieces.
    #[error("%{value} is split over `{axis}` in a way its op cannot produce locally")]
    NotLocal { value: String, axis: String },
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// What a pass cannot do yet for this program, located at the values concerned.
    #[error("not supported yet ({} error(s))", .diagnostics.len())]
    Refused { diagnostics: Vec<Diagnostic> },
    #[error("the graph is invalid after pass `{pass}` ({} error(s))", .diagnostics.len())]
    InvalidAfter {
        pass: String,
        diagnostics: Vec<Diagnostic>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The passes that shard a program, in order: what `tpc compile` and `tpc run --devices` run
/// unless told otherwise.
pub const DEFAULT_PIPELINE: &str =
    "decompose-before-sharding,propagate-sharding,insert-resharding,reorder-sharded-axis";

/// What passes (and the phase verifier) may read besides the graph: the manager's context, the
/// same for every pass of a pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassContext {
    /// Symbol values at which the cost model sizes tensors (`--bind`); a symbol left out counts
    /// as [`cost::UNBOUND_SYMBOL`].
    pub symbols: BTreeMap<String, i64>,
    /// Mesh axis sizes, when the device count is known (`--devices`): what a pass that must
    /// count ranks (reorder-sharded-axis for `all_to_all`) needs; without them it leaves such
    /// collectives as they are. `lower-to-local` takes the mesh from them (and binds the
    /// program's symbols with `symbols`).
    pub axis_sizes: BTreeMap<String, i64>,
}

//! The phase verifier: each [`Phase`]'s invariants, checked in addition to the IR's verifier
//! (`tpc_ir::verify::verify`, which every phase needs first).
//!
//! | phase | invariants |
//! |---|---|
//! | global | none beyond the IR's: shardings are the user's annotations, possibly incomplete (collectives a program writes are layout changes it asks for, which the passes keep) |
//! | sharded | every value has its layout: `propagate-sharding` would give no value a new one |
//! | resharded | every op but a collective computes locally from its operands' layouts; a `linear` with a bias is not partial; a result is partial only where its declared type is |
//! | local | as resharded, and on every class of ranks every op's shape rule gives the piece the rank holds |

use tpc_ir::{Diagnostic, Graph};

use crate::insert_resharding::check_local;
use crate::lower_to_local::check_lowers;
use crate::pass::Phase;
use crate::propagate_sharding::check_complete;
use crate::PassContext;

/// Every violation of `phase`'s invariants in `g` (a graph the IR's verifier accepts), each
/// located at the value it names. `cx` gives the mesh's axis sizes (which tell two writings of
/// one even split apart from two layouts) and the symbol values the cost model weighs at.
pub fn verify_phase(g: &Graph, phase: Phase, cx: &PassContext) -> Vec<Diagnostic> {
    match phase {
        Phase::Global => Vec::new(),
        Phase::Sharded => check_complete(g, cx),
        Phase::Resharded => check_local(g, &cx.axis_sizes),
        Phase::Local => {
            let diagnostics = check_local(g, &cx.axis_sizes);
            if !diagnostics.is_empty() {
                return diagnostics;
            }
            check_lowers(g, cx)
        }
    }
}

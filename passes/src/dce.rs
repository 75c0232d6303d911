//! `dce`: removes values that no result depends on (parameters always stay).

use tpc_ir::Graph;

use crate::Result;

pub fn run(g: &mut Graph, _cx: &crate::PassContext) -> Result<bool> {
    let mut changed = false;
    // Reverse program order removes a dead chain in one sweep: users go before their operands.
    let values: Vec<_> = g.values().iter().rev().copied().collect();
    for v in values {
        if g.users(v).is_empty() && g.remove_unused(v) {
            changed = true;
        }
    }
    Ok(changed)
}

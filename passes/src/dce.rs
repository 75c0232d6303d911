//! `dce`: removes values that no result depends on (parameters always stay).

use tpc_ir::Graph;

use crate::pass::{Outcome, Pass, Phase};
use crate::{PassContext, Result};

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

/// `dce` as a [`Pass`]: runs at any phase and keeps it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn description(&self) -> &'static str {
        "remove values that no result depends on"
    }

    fn requires(&self) -> Phase {
        Phase::Global
    }

    fn produces(&self) -> Option<Phase> {
        None
    }

    fn run(&self, g: &mut Graph, cx: &PassContext) -> Result<Outcome> {
        run(g, cx).map(Outcome::changed)
    }
}

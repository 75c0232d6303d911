//! The pass manager: named passes, pipeline strings, verification after each pass, IR dumps
//! and timings.

use std::time::{Duration, Instant};

use tpc_ir::verify::verify;
use tpc_ir::Graph;

use crate::{
    dce, insert_resharding, propagate_sharding, reorder_sharded_axis, Error, PassContext, PassFn,
    Result,
};

/// A registered pass.
#[derive(Clone, Copy, Debug)]
pub struct PassInfo {
    pub name: &'static str,
    pub description: &'static str,
    pub run: PassFn,
}

/// Every pass, in the order a default pipeline would run them.
pub fn registry() -> &'static [PassInfo] {
    const PASSES: &[PassInfo] = &[
        PassInfo {
            name: "propagate-sharding",
            description: "spread the user's shardings to every value through the ops' factor rules",
            run: propagate_sharding::run,
        },
        PassInfo {
            name: "insert-resharding",
            description: "insert the cheapest collective wherever an op needs an operand laid out differently",
            run: insert_resharding::run,
        },
        PassInfo {
            name: "reorder-sharded-axis",
            description: "move the split factor of every gather and scatter to the outermost dim, with local permutes around it",
            run: reorder_sharded_axis::run,
        },
        PassInfo {
            name: "dce",
            description: "remove values that no result depends on",
            run: dce::run,
        },
    ];
    PASSES
}

/// Which passes to print the IR after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PrintAfter {
    #[default]
    None,
    All,
    Passes(Vec<String>),
}

impl PrintAfter {
    fn wants(&self, pass: &str) -> bool {
        match self {
            PrintAfter::None => false,
            PrintAfter::All => true,
            PrintAfter::Passes(names) => names.iter().any(|n| n == pass),
        }
    }
}

/// What one pass did.
#[derive(Clone, Debug)]
pub struct PassRecord {
    pub pass: &'static str,
    pub changed: bool,
    pub time: Duration,
    /// The IR after the pass (full form), when asked for.
    pub ir_after: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PassManager {
    passes: Vec<PassInfo>,
    /// Verify after every pass (on by default in debug builds and tests).
    pub verify_each: bool,
    pub print_after: PrintAfter,
    pub context: PassContext,
}

impl PassManager {
    /// A manager for a comma-separated pipeline (`dce`); unknown names are an error that lists
    /// the valid ones.
    pub fn parse(pipeline: &str) -> Result<PassManager> {
        let mut passes = Vec::new();
        for name in pipeline.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let info =
                registry()
                    .iter()
                    .find(|p| p.name == name)
                    .ok_or_else(|| Error::UnknownPass {
                        name: name.to_string(),
                        valid: registry()
                            .iter()
                            .map(|p| p.name)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
            passes.push(*info);
        }
        if passes.is_empty() {
            return Err(Error::EmptyPipeline);
        }
        Ok(PassManager {
            passes,
            verify_each: cfg!(debug_assertions),
            print_after: PrintAfter::None,
            context: PassContext::default(),
        })
    }

    pub fn pass_names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name).collect()
    }

    /// Runs the pipeline in order; stops at the first pass after which the graph is invalid.
    pub fn run(&self, g: &mut Graph) -> Result<Vec<PassRecord>> {
        let mut records = Vec::new();
        for p in &self.passes {
            let start = Instant::now();
            let changed = (p.run)(g, &self.context)?;
            let time = start.elapsed();
            if self.verify_each {
                let diagnostics = verify(g);
                if !diagnostics.is_empty() {
                    return Err(Error::InvalidAfter {
                        pass: p.name.to_string(),
                        diagnostics,
                    });
                }
            }
            let ir_after = self
                .print_after
                .wants(p.name)
                .then(|| tpc_ir::print(g, tpc_ir::PrintMode::Full));
            records.push(PassRecord {
                pass: p.name,
                changed,
                time,
                ir_after,
            });
        }
        Ok(records)
    }
}

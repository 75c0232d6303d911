//! The pass manager: the registry, pipeline strings with options, phase checks, verification of
//! the input and after each pass, IR dumps before and after passes, and timings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tpc_ir::verify::verify;
use tpc_ir::{Diagnostic, Graph};

use crate::dce::Dce;
use crate::decompose::{Decompose, DecomposeBeforeSharding};
use crate::insert_resharding::InsertResharding;
use crate::lower_to_local::{LocalProgram, LowerToLocal};
use crate::pass::{Options, Pass, Phase};
use crate::phase::verify_phase;
use crate::propagate_sharding::PropagateSharding;
use crate::reorder_sharded_axis::ReorderShardedAxis;
use crate::{Error, PassContext, Result};

/// Every pass with default options, in the order a pipeline would run them (`dce` may run
/// anywhere).
pub fn registry() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(DecomposeBeforeSharding),
        Box::new(PropagateSharding::default()),
        Box::new(InsertResharding),
        Box::new(ReorderShardedAxis::default()),
        Box::new(Dce),
        Box::new(Decompose::default()),
        Box::new(LowerToLocal::default()),
    ]
}

fn pass_names() -> String {
    registry()
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which passes to print the IR before or after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PrintIr {
    #[default]
    None,
    All,
    Passes(Vec<String>),
}

/// The name [`PassManager::print_after`] had first.
pub type PrintAfter = PrintIr;

impl PrintIr {
    fn wants(&self, pass: &str) -> bool {
        match self {
            PrintIr::None => false,
            PrintIr::All => true,
            PrintIr::Passes(names) => names.iter().any(|n| n == pass),
        }
    }
}

/// Whether a dump is of the IR before or after a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dump {
    Before,
    After,
}

/// What one pass did.
#[derive(Clone, Debug)]
pub struct PassRecord {
    pub pass: &'static str,
    pub changed: bool,
    pub time: Duration,
    /// The phase the graph is in after the pass.
    pub phase: Phase,
    /// The IR before the pass (full form), when asked for.
    pub ir_before: Option<String>,
    /// The IR after the pass (full form), when asked for.
    pub ir_after: Option<String>,
    /// What `lower-to-local` lowered: the program as its rank runs it.
    pub local: Option<LocalProgram>,
    /// The pass's warnings, located in the program.
    pub warnings: Vec<Diagnostic>,
}

/// One pass of a pipeline, with the options it was given.
#[derive(Clone, Debug)]
struct Scheduled {
    pass: Arc<dyn Pass>,
    options: Options,
}

#[derive(Clone, Debug)]
pub struct PassManager {
    passes: Vec<Scheduled>,
    /// Verify the input (the IR's verifier and the invariants of the phase the pipeline starts
    /// at) and, with the IR's verifier, the graph after every pass (on by default in debug
    /// builds and tests).
    pub verify_each: bool,
    /// With `verify_each`, also check the graph after every pass against the invariants of the
    /// phase the pass leaves it in (on by default in debug builds and tests; in a release build
    /// they cost about as much as the passes, since the sharded phase's check propagates again).
    pub verify_phases: bool,
    pub print_before: PrintIr,
    pub print_after: PrintIr,
    /// The phase the input is in; `None` takes the first pass's required phase.
    pub input_phase: Option<Phase>,
    pub context: PassContext,
}

/// One element of a pipeline string: the pass's name and its options as written.
type Element = (String, Vec<(String, Option<String>)>);

/// Splits a pipeline at the commas outside braces and each element into its pass name and
/// options (`name{a=1 b}`); empty elements are skipped.
fn split_pipeline(text: &str) -> Result<Vec<Element>> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' if depth > 0 => {
                return Err(Error::Pipeline(format!(
                    "`{}`: options do not nest",
                    text[start..].trim()
                )))
            }
            '{' => depth = 1,
            '}' if depth == 0 => {
                return Err(Error::Pipeline(format!(
                    "`{}`: a `}}` closes no `{{`",
                    text[start..=i].trim()
                )))
            }
            '}' => depth = 0,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err(Error::Pipeline(format!(
            "`{}`: the `{{` is not closed",
            text[start..].trim()
        )));
    }
    parts.push(&text[start..]);
    let mut out = Vec::new();
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, rest)) = part.split_once('{') else {
            out.push((part.to_string(), Vec::new()));
            continue;
        };
        let Some(body) = rest.trim_end().strip_suffix('}') else {
            return Err(Error::Pipeline(format!(
                "`{part}`: nothing may follow a pass's options"
            )));
        };
        let options = body
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|o| !o.is_empty())
            .map(|o| match o.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                None => (o.to_string(), None),
            })
            .collect();
        out.push((name.trim().to_string(), options));
    }
    Ok(out)
}

/// Checks that the passes can run in order from `input`: none needs a later phase than the
/// graph is in, none makes a phase the graph is already past. Returns the phase after each.
fn phases(passes: &[Scheduled], input: Phase) -> Result<Vec<Phase>> {
    let mut phase = input;
    let mut out = Vec::new();
    for s in passes {
        let p = &s.pass;
        if p.requires() > phase {
            let by = registry()
                .iter()
                .find(|q| q.produces() == Some(p.requires()))
                .map(|q| format!("; `{}` brings it there", q.name()))
                .unwrap_or_default();
            return Err(Error::PhaseTooEarly {
                pass: p.name().to_string(),
                requires: p.requires(),
                current: phase,
                hint: by,
            });
        }
        if let Some(next) = p.produces() {
            if next < phase {
                return Err(Error::PhasePassed {
                    pass: p.name().to_string(),
                    produces: next,
                    current: phase,
                });
            }
            phase = next;
        }
        out.push(phase);
    }
    Ok(out)
}

impl PassManager {
    /// A manager for a comma-separated pipeline, each pass with its options in braces
    /// (`propagate-sharding{cost=bytes},insert-resharding`). An unknown pass, an unknown option
    /// or a bad value is an error that lists the valid ones.
    pub fn parse(pipeline: &str) -> Result<PassManager> {
        let mut passes = Vec::new();
        for (name, given) in split_pipeline(pipeline)? {
            let mut pass = registry()
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| Error::UnknownPass {
                    name: name.clone(),
                    valid: pass_names(),
                })?;
            let options = Options::parse(pass.as_ref(), &given)?;
            pass.configure(&options)?;
            passes.push(Scheduled {
                pass: Arc::from(pass),
                options,
            });
        }
        if passes.is_empty() {
            return Err(Error::EmptyPipeline);
        }
        Ok(PassManager {
            passes,
            verify_each: cfg!(debug_assertions),
            verify_phases: cfg!(debug_assertions),
            print_before: PrintIr::None,
            print_after: PrintIr::None,
            input_phase: None,
            context: PassContext::default(),
        })
    }

    pub fn pass_names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|s| s.pass.name()).collect()
    }

    /// The passes, each with its options (the given ones and the defaults).
    pub fn passes(&self) -> impl Iterator<Item = (&dyn Pass, &Options)> {
        self.passes.iter().map(|s| (s.pass.as_ref(), &s.options))
    }

    /// The phase the input is taken to be in.
    pub fn start_phase(&self) -> Phase {
        self.input_phase
            .or_else(|| self.passes.first().map(|s| s.pass.requires()))
            .unwrap_or(Phase::Global)
    }

    /// The IR verifier's diagnostics for `g`, then (when it has none and `phases`) `phase`'s.
    fn check(&self, g: &Graph, phase: Phase, phases: bool) -> Vec<Diagnostic> {
        let mut diagnostics = verify(g);
        if diagnostics.is_empty() && phases {
            diagnostics = verify_phase(g, phase, &self.context);
        }
        diagnostics
    }

    /// Runs the pipeline in order (see [`PassManager::run_dumping`]).
    pub fn run(&self, g: &mut Graph) -> Result<Vec<PassRecord>> {
        self.run_dumping(g, &mut |_, _, _| {})
    }

    /// Runs the pipeline in order: first checks that every pass finds the graph in a phase it
    /// can run at, then (with `verify_each`) verifies the input at its phase, then runs each
    /// pass and verifies the graph (with `verify_phases`, at the phase the pass leaves it in),
    /// stopping at the first error. `dump(when, pass, ir)` gets each IR that `print_before` and `print_after` ask for
    /// as soon as it is printed, so that the IR before a failing pass is seen.
    pub fn run_dumping(
        &self,
        g: &mut Graph,
        dump: &mut dyn FnMut(Dump, &str, &str),
    ) -> Result<Vec<PassRecord>> {
        let input = self.start_phase();
        let after = phases(&self.passes, input)?;
        if self.verify_each {
            let diagnostics = self.check(g, input, true);
            if !diagnostics.is_empty() {
                return Err(Error::InvalidInput {
                    phase: input,
                    diagnostics,
                });
            }
        }
        let mut records = Vec::new();
        for (s, phase) in self.passes.iter().zip(after) {
            let name = s.pass.name();
            let ir_before = self
                .print_before
                .wants(name)
                .then(|| tpc_ir::print(g, tpc_ir::PrintMode::Full));
            if let Some(ir) = &ir_before {
                dump(Dump::Before, name, ir);
            }
            let start = Instant::now();
            let outcome = s.pass.run(g, &self.context)?;
            let time = start.elapsed();
            if self.verify_each {
                let diagnostics = self.check(g, phase, self.verify_phases);
                if !diagnostics.is_empty() {
                    return Err(Error::InvalidAfter {
                        pass: name.to_string(),
                        diagnostics,
                    });
                }
            }
            let ir_after = self
                .print_after
                .wants(name)
                .then(|| tpc_ir::print(g, tpc_ir::PrintMode::Full));
            if let Some(ir) = &ir_after {
                dump(Dump::After, name, ir);
            }
            records.push(PassRecord {
                pass: name,
                changed: outcome.changed,
                time,
                phase,
                ir_before,
                ir_after,
                local: outcome.local,
                warnings: outcome.warnings,
            });
        }
        Ok(records)
    }
}

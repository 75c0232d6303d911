//! `decompose`: every composite op (softmax, the norms and their `_stats`, mean, dropout, gelu)
//! written as the primitive ops its definition states ([`tpc_ir::OpDef::decompose`]), so that
//! code generation lowers only primitives. Runs on the resharded program and keeps its phase:
//! the decompositions lay every new value out from the composite's operands and results, so each
//! new op computes locally.
//!
//! The composite's nodes keep their names, types and ids: each takes the op of its result's
//! last primitive, the others come before it, named after it (`%p.exp`, `%p.sum`).

use std::collections::BTreeSet;

use tpc_ir::decompose::Expander;
use tpc_ir::ops::{Gelu, GeluApprox};
use tpc_ir::{Graph, Op, ValueId};

use crate::pass::{OptionKind, OptionSpec, Options, Outcome, Pass, Phase};
use crate::{Error, PassContext, Result};

/// How deep a decomposition may use composites that decompose in turn (a norm's means).
const MAX_DEPTH: usize = 8;

/// The tanh gelu that is the only use of float GEMM `gemm` (a `linear` or `matmul` whose value
/// is not returned), if there is one: cuBLASLt computes it in the GEMM's epilogue.
pub fn gemm_epilogue_gelu(g: &Graph, gemm: ValueId) -> Option<ValueId> {
    if !matches!(g.op(gemm), Op::Linear(_) | Op::Matmul(_))
        || !g.ty(gemm).dtype.is_float()
        || g.outputs().contains(&gemm)
    {
        return None;
    }
    let [u] = g.users(gemm)[..] else {
        return None;
    };
    let fits = matches!(
        g.op(u),
        Op::Gelu(Gelu {
            approximate: GeluApprox::Tanh
        })
    ) && g.ty(u).dtype == g.ty(gemm).dtype
        && g.operand_slice(u).len() == 1;
    fits.then_some(u)
}

/// Decomposes every composite of `g`; with `keep_gemm_gelu`, a GEMM's epilogue gelu
/// ([`gemm_epilogue_gelu`]) stays whole.
pub fn run(g: &mut Graph, keep_gemm_gelu: bool) -> Result<bool> {
    let mut names: BTreeSet<String> = g.values().iter().map(|&v| g.name(v).to_string()).collect();
    let values = g.values().to_vec();
    let mut changed = false;
    for v in values {
        if keep_gemm_gelu {
            let gemm = g.operand_slice(v).first().copied();
            if gemm.is_some_and(|m| gemm_epilogue_gelu(g, m) == Some(v)) {
                continue;
            }
        }
        changed |= expand(g, &mut names, v, 0, false)?;
    }
    Ok(changed)
}

/// Decomposes the composites whose definition asks to be sharded as their decomposition
/// ([`tpc_ir::OpDef::decompose_before_sharding`]), leaving every new value unannotated.
pub fn run_before_sharding(g: &mut Graph) -> Result<bool> {
    let mut names: BTreeSet<String> = g.values().iter().map(|&v| g.name(v).to_string()).collect();
    let mut changed = false;
    for v in g.values().to_vec() {
        if g.contains(v) && g.op(v).def().decompose_before_sharding() {
            changed |= expand(g, &mut names, v, 0, true)?;
        }
    }
    Ok(changed)
}

/// Decomposes the statement of `v` if its op is a composite, then the composites its
/// decomposition used.
fn expand(
    g: &mut Graph,
    names: &mut BTreeSet<String>,
    v: ValueId,
    depth: usize,
    before_sharding: bool,
) -> Result<bool> {
    let op = g.op(v).clone();
    let nodes = g.statement_of(v);
    let mut e = Expander::new(g, names, &nodes);
    if before_sharding {
        e = e.before_sharding();
    }
    let finals = op.def().decompose(&mut e);
    let added = e.finish();
    let finals = finals.map_err(|err| bug(g.name(v), &op, &err.message))?;
    let Some(finals) = finals else {
        return Ok(false);
    };
    if depth >= MAX_DEPTH {
        return Err(bug(g.name(v), &op, "its decomposition nests too deep"));
    }
    // The comments before the statement go before its decomposition.
    if let (Some(&first), Some(comments)) = (added.first(), g.comments.before.remove(&nodes[0])) {
        g.comments.before.insert(first, comments);
    }
    for &node in &nodes {
        let k = g.node(node).result;
        let Some(&last) = finals.get(k) else {
            return Err(bug(
                g.name(v),
                &op,
                "its decomposition gives too few results",
            ));
        };
        // Each result's last op is one the decomposition made for it alone.
        if !(added.contains(&last) && g.replace_with(node, last)) {
            return Err(bug(
                g.name(v),
                &op,
                "a result is not an op its decomposition made for it alone",
            ));
        }
    }
    // What only a result no node keeps used.
    for &a in added.iter().rev() {
        if g.users(a).is_empty() {
            g.remove_unused(a);
        }
    }
    let live: Vec<ValueId> = added.into_iter().filter(|&a| g.contains(a)).collect();
    for a in live {
        expand(g, names, a, depth + 1, before_sharding)?;
    }
    Ok(true)
}

fn bug(value: &str, op: &Op, what: &str) -> Error {
    Error::Unsupported(format!(
        "decomposing `%{value}` (`{}`): {what} (a bug in tpc)",
        op.name()
    ))
}

/// `decompose` as a [`Pass`].
#[derive(Clone, Copy, Debug)]
pub struct Decompose {
    keep_gemm_gelu: bool,
}

impl Default for Decompose {
    fn default() -> Self {
        Decompose {
            keep_gemm_gelu: true,
        }
    }
}

const OPTIONS: &[OptionSpec] = &[OptionSpec {
    name: "gemm-gelu",
    kind: OptionKind::Bool,
    default: "true",
    help: "keep a tanh gelu that is a float GEMM's only use whole (cuBLASLt computes it in the GEMM's epilogue)",
}];

impl Pass for Decompose {
    fn name(&self) -> &'static str {
        "decompose"
    }

    fn description(&self) -> &'static str {
        "write composite ops (softmax, norms, mean, dropout, gelu) as primitive ops"
    }

    fn requires(&self) -> Phase {
        Phase::Resharded
    }

    fn produces(&self) -> Option<Phase> {
        None
    }

    fn options(&self) -> &'static [OptionSpec] {
        OPTIONS
    }

    fn configure(&mut self, options: &Options) -> Result<()> {
        self.keep_gemm_gelu = options.bool("gemm-gelu")?;
        Ok(())
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<Outcome> {
        run(g, self.keep_gemm_gelu).map(Outcome::changed)
    }
}

/// `decompose-before-sharding` as a [`Pass`]: on the global program, the composites that shard
/// better as their stages (cross-entropy: with the classes split, a partial max and two partial
/// sums of one value per position instead of gathering the logits).
#[derive(Clone, Copy, Debug, Default)]
pub struct DecomposeBeforeSharding;

impl Pass for DecomposeBeforeSharding {
    fn name(&self) -> &'static str {
        "decompose-before-sharding"
    }

    fn description(&self) -> &'static str {
        "write the composites that shard as their stages (cross_entropy) as primitive ops, before sharding"
    }

    fn requires(&self) -> Phase {
        Phase::Global
    }

    fn produces(&self) -> Option<Phase> {
        None
    }

    fn run(&self, g: &mut Graph, _cx: &PassContext) -> Result<Outcome> {
        run_before_sharding(g).map(Outcome::changed)
    }
}

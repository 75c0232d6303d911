//! A rank's view of a sharded program: every value with the shape of the piece that rank holds,
//! and the ops' shape attributes in local terms, so that per-rank shapes (uneven ones included)
//! can be read and reviewed. The executors derive the same shapes from the same index maps.

use std::collections::BTreeMap;
use std::fmt::Write;

use tpc_ir::{Graph, Op};
use tpc_passes::lower_to_local::{lower_to_local, LocalProgram};

use crate::{Error, Result};

fn dims(v: &[usize]) -> String {
    v.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The program as rank `rank` runs it on a mesh with `sizes` (first axis major).
pub fn local_program(
    g: &Graph,
    sizes: &[(String, i64)],
    bindings: &BTreeMap<String, i64>,
    rank: usize,
) -> Result<String> {
    let usizes: Vec<(String, usize)> = sizes
        .iter()
        .map(|(n, s)| (n.clone(), *s as usize))
        .collect();
    let program = lower_to_local(g, &usizes, bindings, rank).map_err(|e| match e {
        tpc_passes::Error::Lowering(m) => Error::Usage(m),
        other => Error::Pass(other),
    })?;
    Ok(format_local(g, &program, sizes, bindings))
}

/// `program` (what `lower-to-local` gave for one rank of `g` on a mesh with `sizes`, at
/// `bindings`) as text: a header naming the rank, then every value with its local type.
pub fn format_local(
    g: &Graph,
    program: &LocalProgram,
    sizes: &[(String, i64)],
    bindings: &BTreeMap<String, i64>,
) -> String {
    let rank = program.rank;
    let coords = &program.coords;
    let mut out = String::new();
    let place: Vec<String> = sizes
        .iter()
        .map(|(n, s)| format!("{n} {} of {s}", coords[n].0))
        .collect();
    let binds: Vec<String> = bindings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        out,
        "# @{} on rank {rank} ({}), {}",
        g.name,
        place.join(", "),
        binds.join(", ")
    );
    for &v in g.values() {
        let node = g.node(v);
        let local = &program.values[&v].shape;
        let ty = format!("{}[{}]", node.ty.dtype, dims(local));
        if let Op::Param { .. } = node.op {
            let _ = writeln!(out, "%{}: {ty}", node.name);
            continue;
        }
        let operands: Vec<String> = g
            .operands(v)
            .iter()
            .map(|&o| format!("%{}", g.name(o)))
            .collect();
        let mut attrs: Vec<String> = Vec::new();
        for (k, a) in program.ops[&v].attrs() {
            attrs.push(format!("{k} = {a}"));
        }
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", attrs.join(", "))
        };
        let partial = &program.values[&v].partial;
        let note = if partial.is_empty() {
            String::new()
        } else {
            format!("  # partial over {}", partial.join(", "))
        };
        let _ = writeln!(
            out,
            "%{} = {}({}){attrs} : {ty}{note}",
            node.name,
            node.op.name(),
            operands.join(", ")
        );
    }
    let outs: Vec<String> = g
        .outputs()
        .iter()
        .map(|&o| format!("%{}", g.name(o)))
        .collect();
    let _ = writeln!(out, "return {}", outs.join(", "));
    out
}

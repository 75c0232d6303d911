//! The printer. `Source` mode is what `tpc fmt` writes: types only where the source wrote them,
//! implicit broadcasts folded back into their users. `Full` mode shows every node and every
//! value's type, for IR after passes. Both keep the source's comments (see `Comments`).

use crate::ops::Broadcast;
use std::fmt::Write;

use super::attrs::default_attrs;
use crate::dim::Dim;
use crate::graph::{Graph, ValueId};
use crate::mesh::Mesh;
use crate::ops::Op;
use crate::types::{DimSharding, Factor, Partial, TensorType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrintMode {
    Source,
    Full,
}

/// Signatures longer than this put one parameter per line.
const MAX_LINE: usize = 100;

fn factor_string(f: &Factor) -> String {
    let mut s = f.extent.to_string();
    for a in &f.axes {
        s.push('@');
        s.push_str(a);
    }
    s
}

fn dim_string(extent: &Dim, ds: &DimSharding) -> String {
    let mut s = match ds.factors.as_slice() {
        [] => extent.to_string(),
        [one] => factor_string(one),
        many => format!(
            "({})",
            many.iter()
                .map(factor_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if ds.closed {
        s.push('!');
    }
    s
}

fn partial_string(partial: &[Partial]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < partial.len() {
        let op = partial[i].op;
        let mut axes = Vec::new();
        while i < partial.len() && partial[i].op == op {
            axes.push(partial[i].axis.as_str());
            i += 1;
        }
        let name = match op {
            crate::types::ReduceOp::Sum => "partial",
            crate::types::ReduceOp::Max => "partial.max",
            crate::types::ReduceOp::Min => "partial.min",
        };
        let _ = write!(out, " {name}({})", axes.join(", "));
    }
    out
}

/// A type as the text form writes it: `bf16[B, S, (3, 16@tp, 48)] partial(dp)`.
pub fn type_string(ty: &TensorType) -> String {
    let default = DimSharding::default();
    let dims: Vec<String> = ty
        .shape
        .iter()
        .enumerate()
        .map(|(i, d)| dim_string(d, ty.sharding.dims.get(i).unwrap_or(&default)))
        .collect();
    format!(
        "{}[{}]{}",
        ty.dtype,
        dims.join(", "),
        partial_string(&ty.sharding.partial)
    )
}

fn mesh_string(m: &Mesh) -> String {
    let axes: Vec<String> = m
        .axes
        .iter()
        .map(|a| match a.size {
            Some(n) => format!("{} = {n}", a.name),
            None => a.name.clone(),
        })
        .collect();
    format!("mesh {}\n", axes.join(", "))
}

fn is_folded(g: &Graph, v: ValueId, mode: PrintMode) -> bool {
    mode == PrintMode::Source
        && matches!(g.op(v), Op::Broadcast(Broadcast { implicit: true, .. }))
        && !g.node(v).explicit_type
}

/// The name a user of `v` prints: through folded broadcasts to what the source wrote.
fn operand_name(g: &Graph, mut v: ValueId, mode: PrintMode) -> String {
    while is_folded(g, v, mode) {
        match g.operands(v).first() {
            Some(&o) => v = o,
            None => break,
        }
    }
    format!("%{}", g.name(v))
}

/// Prints a graph as text.
pub fn print(g: &Graph, mode: PrintMode) -> String {
    let mut out = String::new();
    let comment_lines = |out: &mut String, lines: &[String], indent: &str| {
        for l in lines {
            let _ = writeln!(out, "{indent}#{l}");
        }
    };
    comment_lines(&mut out, &g.comments.header, "");
    if !g.mesh.is_empty() {
        out.push_str(&mesh_string(&g.mesh));
        out.push('\n');
    }
    let params: Vec<String> = g
        .params()
        .iter()
        .map(|&p| format!("%{}: {}", g.name(p), type_string(g.ty(p))))
        .collect();
    let results = match g.result_types.as_slice() {
        [] => String::new(),
        [(one, _)] => format!(" -> {}", type_string(one)),
        many => format!(
            " -> ({})",
            many.iter()
                .map(|(t, _)| type_string(t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let head = format!("func @{}(", g.name);
    let one_line = format!("{head}{}){results} {{", params.join(", "));
    if one_line.len() <= MAX_LINE || params.len() <= 1 {
        out.push_str(&one_line);
    } else {
        let indent = " ".repeat(head.len());
        out.push_str(&head);
        for (i, p) in params.iter().enumerate() {
            if i > 0 {
                out.push_str(",\n");
                out.push_str(&indent);
            }
            out.push_str(p);
        }
        let _ = write!(out, "){results} {{");
    }
    out.push('\n');
    for &v in g.values() {
        if matches!(g.op(v), Op::Param { .. }) || is_folded(g, v, mode) {
            continue;
        }
        let node = g.node(v);
        // An op with several results prints once, at its first kept result, naming every
        // result (`_` for one no node keeps).
        let statement = g.statement_of(v);
        if statement[0] != v {
            continue;
        }
        if let Some(lines) = g.comments.before.get(&v) {
            comment_lines(&mut out, lines, "  ");
        }
        let operands: Vec<String> = g
            .operands(v)
            .into_iter()
            .map(|o| operand_name(g, o, mode))
            .collect();
        let names: Vec<String> = if node.op.num_results() == 1 {
            vec![format!("%{}", node.name)]
        } else {
            (0..node.op.num_results())
                .map(|k| {
                    statement
                        .iter()
                        .find(|&&x| g.node(x).result == k)
                        .map_or("_".to_string(), |&x| format!("%{}", g.name(x)))
                })
                .collect()
        };
        let _ = write!(
            out,
            "  {} = {}({})",
            names.join(", "),
            node.op.name(),
            operands.join(", ")
        );
        let operand_tys: Vec<&TensorType> = g.operands(v).into_iter().map(|o| g.ty(o)).collect();
        let defaults = default_attrs(node.op.name(), &operand_tys);
        // Attributes equal to their defaults are left out, so `fmt` prints what a person writes.
        let attrs: Vec<(&str, crate::ops::AttrValue)> = node
            .op
            .attrs()
            .into_iter()
            .filter(|a| !defaults.contains(a))
            .collect();
        if !attrs.is_empty() {
            let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let _ = write!(out, " {{{}}}", attrs.join(", "));
        }
        if mode == PrintMode::Full || statement.iter().any(|&x| g.node(x).explicit_type) {
            let types: Vec<String> = statement.iter().map(|&x| type_string(g.ty(x))).collect();
            if node.op.num_results() == 1 {
                let _ = write!(out, " : {}", types[0]);
            } else {
                let _ = write!(out, " : ({})", types.join(", "));
            }
        }
        if let Some(t) = g.comments.trailing.get(&v) {
            let _ = write!(out, "  #{t}");
        }
        out.push('\n');
    }
    comment_lines(&mut out, &g.comments.before_return, "  ");
    let outs: Vec<String> = g
        .outputs()
        .iter()
        .map(|&o| operand_name(g, o, mode))
        .collect();
    let _ = write!(out, "  return {}", outs.join(", "));
    if let Some(t) = &g.comments.trailing_return {
        let _ = write!(out, "  #{t}");
    }
    out.push('\n');
    comment_lines(&mut out, &g.comments.before_close, "  ");
    out.push_str("}\n");
    out
}

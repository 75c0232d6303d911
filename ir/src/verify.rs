//! The verifier: checks a graph and collects every problem (not just the first).
//! Validation gates everything after it: passes, executors and codegen see only verified graphs.

use crate::ops::{CollectiveOp, Param};
use std::collections::BTreeMap;

use crate::diag::Diagnostic;
use crate::dim::Dim;
use crate::graph::{Graph, ValueId};
use crate::infer::{infer, MAX_ELEMENTS};
use crate::ops::{Collective, Op};
use crate::types::{ReduceOp, Sharding, TensorType};
use crate::value_map::ValueMap;

/// Every problem found in `g`, in program order. Empty means the graph is valid.
pub fn verify(g: &Graph) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    check_mesh(g, &mut diags);
    let mut defined: BTreeMap<&str, ValueId> = BTreeMap::new();
    let mut position: ValueMap<usize> = ValueMap::new();
    for (pos, &v) in g.values().iter().enumerate() {
        let node = g.node(v);
        if let Some(&first) = defined.get(node.name.as_str()) {
            diags.push(
                Diagnostic::error(
                    format!("`%{}` is defined twice", node.name),
                    node.span,
                    "defined again here",
                )
                .with_secondary(g.node(first).span, "first defined here")
                .with_help("every value needs its own name"),
            );
        }
        defined.insert(node.name.as_str(), v);
        check_op(g, v, &position, &mut diags);
        check_type(g, v, &node.ty, &mut diags);
        check_declared_partial(g, v, &mut diags);
        position.insert(v, pos);
    }
    check_params(g, &mut diags);
    check_outputs(g, &position, &mut diags);
    diags
}

/// Checks, for a device count, that every split the program writes gives each rank something:
/// a factor of known extent split over more ranks than it has elements would leave ranks idle,
/// which is never what a person means (12 heads over 16 devices). `sizes` are the mesh's axis
/// sizes for that device count.
pub fn verify_splits(g: &Graph, sizes: &[(String, i64)]) -> Vec<Diagnostic> {
    check_splits(g, sizes, None)
}

/// [`verify_splits`] for the factors whose extents `bindings` give (`B@dp` at `B=2` over 4
/// devices): what a binding of the symbols must not break. Factors of known extent are
/// [`verify_splits`]'s, and not reported again.
pub fn verify_bound_splits(
    g: &Graph,
    sizes: &[(String, i64)],
    bindings: &BTreeMap<String, i64>,
) -> Vec<Diagnostic> {
    check_splits(g, sizes, Some(bindings))
}

fn check_splits(
    g: &Graph,
    sizes: &[(String, i64)],
    bindings: Option<&BTreeMap<String, i64>>,
) -> Vec<Diagnostic> {
    let size = |a: &str| {
        sizes
            .iter()
            .find(|(n, _)| n == a)
            .map(|(_, s)| *s)
            .unwrap_or(1)
    };
    let mut diags = Vec::new();
    for &v in g.values() {
        let node = g.node(v);
        if !node.explicit_type {
            continue;
        }
        for (d, ds) in node.ty.sharding.dims.iter().enumerate() {
            for f in ds.factors.iter().filter(|f| !f.axes.is_empty()) {
                let parts: i64 = f.axes.iter().map(|a| size(a)).product();
                let (n, what, help) = match (f.extent.as_const(), bindings) {
                    (Some(n), None) => (
                        n,
                        n.to_string(),
                        format!("use at most {n} devices on that axis, or split a larger factor"),
                    ),
                    (None, Some(b)) => match f.extent.eval(b) {
                        Ok(n) => (
                            n,
                            format!("{} = {n}", f.extent),
                            format!(
                                "bind {} so that it is at least {parts}, use at most {n} devices on that axis, or split another factor",
                                f.extent
                            ),
                        ),
                        Err(_) => continue,
                    },
                    _ => continue,
                };
                if n < parts {
                    let axes: Vec<String> = f.axes.iter().map(|a| format!("`{a}`")).collect();
                    diags.push(
                        Diagnostic::error(
                            format!(
                                "`%{}` splits a factor of {what} in dim {d} over {parts} devices ({}): {} of them would hold none of it",
                                node.name,
                                axes.join(" × "),
                                parts - n
                            ),
                            node.span,
                            "split over more devices than it has elements",
                        )
                        .with_help(help),
                    );
                }
            }
        }
        if bindings.is_none() {
            check_torn_groups(g, v, &size, &mut diags);
        }
    }
    diags
}

/// A result declared partial over an axis must come from an op that can leave it so: one with a
/// reduction of that kind (a matmul's contraction sums, `max` takes maxima). `exp(x)` declared
/// `partial(tp)` has no such reduction: every rank would hold the whole value and the sum would
/// count it once per rank.
fn check_declared_partial(g: &Graph, v: ValueId, diags: &mut Vec<Diagnostic>) {
    use crate::rule::{rule_of, FactorKind};
    let node = g.node(v);
    if !node.explicit_type
        || node.ty.sharding.partial.is_empty()
        || matches!(node.op, Op::Param { .. } | Op::Collective { .. })
    {
        return;
    }
    let rule = rule_of(g, v);
    // An op that only moves elements, or is linear (its rule says so), keeps a pending
    // reduction pending.
    for p in &node.ty.sharding.partial {
        let reduces = rule
            .factors
            .iter()
            .any(|f| f.kind == FactorKind::Reduction(p.op));
        let carried = rule.carries(p.op)
            && g.operands(v)
                .first()
                .is_some_and(|&o| g.ty(o).sharding.partial.contains(p));
        if reduces || carried {
            continue;
        }
        let keyword = match p.op {
            ReduceOp::Sum => "partial".to_string(),
            other => format!("partial.{}", other.name()),
        };
        let what = match p.op {
            ReduceOp::Sum => "sums",
            ReduceOp::Max => "takes a maximum",
            ReduceOp::Min => "takes a minimum",
        };
        diags.push(
            Diagnostic::error(
                format!(
                    "`%{}` is declared {}({}) but `{}` never {what} over a dim, so no split of its operands leaves it partial",
                    node.name,
                    keyword,
                    p.axis,
                    node.op.name()
                ),
                node.span,
                "cannot be partial",
            )
            .with_help(format!(
                "remove `{keyword}({})`; partial results come from ops that reduce (matmul, linear, sum, max, ...)",
                p.axis
            )),
        );
    }
}

/// The reshapes that see dim `d` of `v` whole, wherever they sit: reached from `v` through every
/// op that shares the dim as one factor, forward or backward, with a result or another operand
/// (a weight's rows become a linear's output features, then a reshape splits them into heads;
/// an output projection's input features are contracted with a value a reshape made of heads).
/// As (reshape, whether the dim is its result, the dim's index there).
fn reshape_views(g: &Graph, v: ValueId, d: usize) -> Vec<(ValueId, bool, usize)> {
    use crate::rule::rule_of;
    let mut out = Vec::new();
    let mut seen: Vec<(ValueId, usize)> = vec![(v, d)];
    let mut frontier = vec![(v, d)];
    // Bounded: a dim passes through a few ops before a reshape in any real program.
    let mut budget = 64;
    let mut visit = |t: ValueId, dt: usize, frontier: &mut Vec<(ValueId, usize)>| {
        if !seen.contains(&(t, dt)) {
            seen.push((t, dt));
            frontier.push((t, dt));
        }
    };
    while let Some((t, dt)) = frontier.pop() {
        if budget == 0 {
            break;
        }
        budget -= 1;
        // The op producing `t`: a reshape sees the dim as its result; another op passes it on
        // from the operands that hold the same single factor.
        if matches!(g.op(t), Op::Reshape { .. }) {
            out.push((t, true, dt));
        } else if !matches!(g.op(t), Op::Param { .. }) {
            let rule = rule_of(g, t);
            if let Some([f]) = rule.result.get(dt).map(Vec::as_slice) {
                for (i, o) in g.operands(t).into_iter().enumerate() {
                    let dims = rule.operands.get(i).map(Vec::as_slice).unwrap_or(&[]);
                    for (k, fs) in dims.iter().enumerate() {
                        if fs.as_slice() == [*f] {
                            visit(o, k, &mut frontier);
                        }
                    }
                }
            }
        }
        // The ops using `t`: a reshape sees the dim as its operand; another op shares it with
        // its result or its other operands where they hold the same single factor.
        for u in g.users(t) {
            if matches!(g.op(u), Op::Reshape { .. }) {
                out.push((u, false, dt));
                continue;
            }
            let rule = rule_of(g, u);
            let operands = g.operands(u);
            for (i, o) in operands.iter().enumerate() {
                if *o != t {
                    continue;
                }
                let Some([f]) = rule
                    .operands
                    .get(i)
                    .and_then(|ds| ds.get(dt))
                    .map(Vec::as_slice)
                else {
                    continue;
                };
                if let Some(k) = rule.result.iter().position(|fs| fs.as_slice() == [*f]) {
                    visit(u, k, &mut frontier);
                }
                for (j, other) in operands.iter().enumerate() {
                    let dims = rule.operands.get(j).map(Vec::as_slice).unwrap_or(&[]);
                    for (k, fs) in dims.iter().enumerate() {
                        if fs.as_slice() == [*f] && (j != i || k != dt) {
                            visit(*other, k, &mut frontier);
                        }
                    }
                }
            }
        }
    }
    out.sort_by_key(|&(r, is_result, k)| (r.index(), is_result, k));
    out.dedup();
    out
}

/// A user's split of a dim that a `reshape` (before or after it) groups into several factors
/// must not cut through the innermost group: splitting 2304 = [3, 16, 48] rows over 5 ranks
/// gives 461 rows each, so ranks would hold parts of heads of 48, which no layout of the heads
/// can express. The split is refused, naming the annotation and the reshape, with the split of a
/// whole factor to write instead.
fn check_torn_groups(
    g: &Graph,
    v: ValueId,
    size: &dyn Fn(&str) -> i64,
    diags: &mut Vec<Diagnostic>,
) {
    let node = g.node(v);
    for (d, ds) in node.ty.sharding.dims.iter().enumerate() {
        let split: Vec<usize> = (0..ds.factors.len())
            .filter(|&j| !ds.factors[j].axes.is_empty())
            .collect();
        let [j] = split.as_slice() else { continue };
        let consts: Option<Vec<i64>> = ds.factors.iter().map(|f| f.extent.as_const()).collect();
        let Some(consts) = consts else { continue };
        let parts: i64 = ds.factors[*j].axes.iter().map(|a| size(a)).product();
        // The split as [outer, len, inner] elements of the dim.
        let outer: i64 = consts[..*j].iter().product();
        let len = consts[*j];
        let inner: i64 = consts[j + 1..].iter().product();
        let extent: i64 = consts.iter().product();
        if parts <= 1 {
            continue;
        }
        // Only a split dim can be torn: the reshapes that see it are looked for here.
        for (r, is_result, rd) in reshape_views(g, v, d) {
            let rule = crate::rule::rule_of(g, r);
            let dims = if is_result {
                &rule.result
            } else {
                &rule.operands[0]
            };
            let Some(factors) = dims.get(rd) else {
                continue;
            };
            let groups: Option<Vec<i64>> = factors
                .iter()
                .map(|&f| rule.factors[f].extent.as_const())
                .collect();
            let Some(groups) = groups else { continue };
            let Some(&unit) = groups.last() else { continue };
            if groups.len() < 2 || unit <= 1 {
                continue;
            }
            // A split that lies inside one of the groups (a whole factor, or part of one) is the
            // reshape's own business: it splits that factor, tearing nothing.
            let inside_one = (0..groups.len()).any(|k| {
                let before: i64 = groups[..k].iter().product();
                let after: i64 = groups[k + 1..].iter().product();
                outer % before == 0
                    && inner % after == 0
                    && (outer / before) * len * (inner / after) == groups[k]
            });
            if inside_one {
                continue;
            }
            // Where the owning rank changes along the dim (the split part in the middle): at
            // the start of every part but the first, in every repeat of the outer factors, and
            // at each outer repeat. A group is torn when such a boundary falls inside it; the
            // boundaries' offsets within a group repeat after `unit` outer steps, so that many
            // repeats decide it (no walk over the elements).
            let starts: Vec<i64> = (0..parts as usize)
                .map(|p| crate::layout::split_range(len as usize, parts as usize, p).start as i64)
                .collect();
            let torn = (0..outer.min(unit)).find_map(|o| {
                starts
                    .iter()
                    .filter(|&&k| o > 0 || k > 0)
                    .map(|&k| (o * len + k) * inner)
                    .find(|x| x % unit != 0)
                    .map(|x| x / unit)
            });
            let Some(u) = torn else { continue };
            let shown: Vec<String> = groups.iter().map(|e| e.to_string()).collect();
            let axes = ds.factors[*j].axes.join(", ");
            let hint = groups[..groups.len() - 1]
                .iter()
                .position(|&e| e >= parts)
                .map(|k| {
                    let mut w: Vec<String> = shown.clone();
                    w[k] = format!("{}@{}", groups[k], ds.factors[*j].axes.join("@"));
                    format!(
                        "split a whole factor instead, like `({})`; a factor that does not divide evenly is split unevenly without padding",
                        w.join(", ")
                    )
                })
                .unwrap_or_else(|| {
                    "split another dim, or use fewer devices on that axis".to_string()
                });
            diags.push(
                Diagnostic::error(
                    format!(
                        "`%{}` splits dim {d} ({extent}) over {parts} devices (`{axes}`), so ranks share group {u} of {unit} elements of `[{}]`",
                        node.name,
                        shown.join(", ")
                    ),
                    node.span,
                    "this split tears a group apart",
                )
                .with_secondary(
                    g.node(r).span,
                    format!("this reshape groups that dim as [{}]", shown.join(", ")),
                )
                .with_help(hint),
            );
        }
    }
}

fn check_mesh(g: &Graph, diags: &mut Vec<Diagnostic>) {
    for (i, a) in g.mesh.axes.iter().enumerate() {
        if g.mesh.axes[..i].iter().any(|b| b.name == a.name) {
            diags.push(Diagnostic::error(
                format!("mesh axis `{}` is declared twice", a.name),
                a.span,
                "declared again here",
            ));
        }
        if let Some(size) = a.size {
            if !(1..=1 << 20).contains(&size) {
                diags.push(
                    Diagnostic::error(
                        format!("mesh axis `{}` has size {size}", a.name),
                        a.span,
                        "invalid size",
                    )
                    .with_help("a mesh axis needs between 1 and 1048576 devices"),
                );
            }
        }
    }
}

fn check_params(g: &Graph, diags: &mut Vec<Diagnostic>) {
    for (i, &p) in g.params().iter().enumerate() {
        if g.op(p) != &(Op::Param(Param { index: i })) {
            diags.push(Diagnostic::error(
                format!(
                    "parameter {i} (`%{}`) is not a parameter node with index {i}",
                    g.name(p)
                ),
                g.node(p).span,
                "malformed parameter",
            ));
        }
    }
}

fn check_op(g: &Graph, v: ValueId, position: &ValueMap<usize>, diags: &mut Vec<Diagnostic>) {
    let node = g.node(v);
    let operands = g.operands(v);
    if let Op::Param { .. } = node.op {
        if !operands.is_empty() {
            diags.push(Diagnostic::error(
                "a parameter has operands",
                node.span,
                "here",
            ));
        }
        return;
    }
    for &o in &operands {
        if !position.contains_key(&o) {
            diags.push(
                Diagnostic::error(
                    format!(
                        "`%{}` uses `%{}` before it is defined",
                        node.name,
                        g.name(o)
                    ),
                    node.span,
                    "used here",
                )
                .with_secondary(g.node(o).span, "defined here"),
            );
            return;
        }
    }
    let tys: Vec<&TensorType> = operands.iter().map(|&o| g.ty(o)).collect();
    match infer(&node.op, &tys, node.result) {
        Err(e) => {
            let mut d = Diagnostic::error(e.message, node.span, format!("in `{}`", node.op.name()));
            if let Some(h) = e.hint {
                d = d.with_help(h);
            }
            diags.push(d);
        }
        Ok((dtype, shape)) => {
            if let Op::Collective(CollectiveOp { kind, axis }) = &node.op {
                if let Some(&o) = operands.first() {
                    check_collective(g, v, g.ty(o), *kind, axis, diags);
                }
            }
            if dtype != node.ty.dtype || shape != node.ty.shape {
                let want = TensorType::new(dtype, shape);
                diags.push(
                    Diagnostic::error(
                        format!(
                            "`%{}` is declared {}{} but `{}` gives {}{}",
                            node.name,
                            node.ty.dtype,
                            node.ty.shape_string(),
                            node.op.name(),
                            want.dtype,
                            want.shape_string()
                        ),
                        node.span,
                        "type differs from the op's result",
                    )
                    .with_help(format!(
                        "declare it as {}{}, or change the operands",
                        want.dtype,
                        want.shape_string()
                    )),
                );
            }
        }
    }
}

/// How a tensor lies on one mesh axis.
#[derive(Clone, Debug, PartialEq)]
enum OnAxis {
    Whole,
    /// Split in dim `dim`.
    Split {
        dim: usize,
    },
    Partial(ReduceOp),
}

impl OnAxis {
    fn describe(&self) -> String {
        match self {
            OnAxis::Whole => "whole".into(),
            OnAxis::Split { dim } => format!("split in dim {dim}"),
            OnAxis::Partial(op) => format!("partial ({})", op.name()),
        }
    }
}

fn on_axis(sh: &Sharding, axis: &str) -> OnAxis {
    if let Some(p) = sh.partial.iter().find(|p| p.axis == axis) {
        return OnAxis::Partial(p.op);
    }
    for (dim, ds) in sh.dims.iter().enumerate() {
        if ds.factors.iter().any(|f| f.axes.iter().any(|a| a == axis)) {
            return OnAxis::Split { dim };
        }
    }
    OnAxis::Whole
}

/// The sharding with `axis` taken out, and dims left with no split written as plain dims.
fn without_axis(sh: &Sharding, axis: &str) -> Sharding {
    let mut out = sh.clone();
    out.partial.retain(|p| p.axis != axis);
    for ds in &mut out.dims {
        for f in &mut ds.factors {
            f.axes.retain(|a| a != axis);
        }
        if ds.factors.iter().all(|f| f.axes.is_empty()) {
            ds.factors.clear();
        }
    }
    out
}

/// A collective must change exactly how the value lies on its axis, in the way its kind says.
fn check_collective(
    g: &Graph,
    v: ValueId,
    from: &TensorType,
    kind: Collective,
    axis: &str,
    diags: &mut Vec<Diagnostic>,
) {
    let node = g.node(v);
    if g.mesh.axis(axis).is_none() {
        diags.push(Diagnostic::error(
            format!("`{}` over unknown mesh axis `{axis}`", kind.name()),
            node.span,
            "unknown mesh axis",
        ));
        return;
    }
    let (before, after) = (
        on_axis(&from.sharding, axis),
        on_axis(&node.ty.sharding, axis),
    );
    let fits = match kind {
        Collective::AllReduce(op) => before == OnAxis::Partial(op) && after == OnAxis::Whole,
        Collective::ReduceScatter(op) => {
            before == OnAxis::Partial(op) && matches!(after, OnAxis::Split { .. })
        }
        Collective::AllGather => matches!(before, OnAxis::Split { .. }) && after == OnAxis::Whole,
        Collective::AllToAll => {
            matches!((&before, &after), (OnAxis::Split { dim: a, .. }, OnAxis::Split { dim: b, .. }) if a != b)
        }
        Collective::Shard => before == OnAxis::Whole && matches!(after, OnAxis::Split { .. }),
    };
    let want = match kind {
        Collective::AllReduce(op) => format!(
            "a partial ({}) operand and a result whole on the axis",
            op.name()
        ),
        Collective::ReduceScatter(op) => format!(
            "a partial ({}) operand and a result split on the axis",
            op.name()
        ),
        Collective::AllGather => "an operand split on the axis and a result whole on it".into(),
        Collective::AllToAll => "operand and result split on the axis in different dims".into(),
        Collective::Shard => "an operand whole on the axis and a result split on it".into(),
    };
    if !fits {
        diags.push(
            Diagnostic::error(
                format!(
                    "`%{}` = {} over `{axis}` needs {want}",
                    node.name,
                    kind.name()
                ),
                node.span,
                "collective does not match its types",
            )
            .with_help(format!(
                "on `{axis}` the operand is {} and the result {}",
                before.describe(),
                after.describe()
            )),
        );
    } else if without_axis(&from.sharding, axis) != without_axis(&node.ty.sharding, axis) {
        diags.push(Diagnostic::error(
            format!(
                "`%{}` = {} over `{axis}` also changes how the value lies on other axes",
                node.name,
                kind.name()
            ),
            node.span,
            "one collective changes one axis",
        ));
    }
}

/// Shape limits and sharding well-formedness of one value's type.
pub fn check_type(g: &Graph, v: ValueId, ty: &TensorType, diags: &mut Vec<Diagnostic>) {
    let node = g.node(v);
    let err = |msg: String, label: &str| Diagnostic::error(msg, node.span, label);
    for d in &ty.shape {
        if let Some(n) = d.as_const() {
            if !(0..=MAX_ELEMENTS).contains(&n) {
                diags.push(
                    err(
                        format!("`%{}` has a dim of extent {n}", node.name),
                        "extent out of range",
                    )
                    .with_help("extents lie between 0 and 2^40"),
                );
                return;
            }
        }
    }
    // Symbolic element counts are bounded when the symbols are bound; known ones here.
    let known = ty
        .shape
        .iter()
        .map(Dim::as_const)
        .try_fold(1i64, |acc, d| d.map(|d| acc.saturating_mul(d)));
    if let Some(count) = known {
        if count > MAX_ELEMENTS {
            diags.push(
                err(
                    format!("`%{}` has {count} elements", node.name),
                    "tensor too large",
                )
                .with_help("a tensor holds at most 2^40 elements"),
            );
        }
    }
    let sh = &ty.sharding;
    if sh.dims.len() != ty.shape.len() {
        diags.push(err(
            format!(
                "`%{}` has a sharding for {} dims but a shape of rank {}",
                node.name,
                sh.dims.len(),
                ty.rank()
            ),
            "malformed sharding",
        ));
        return;
    }
    if g.mesh.is_empty() && !sh.axes().is_empty() {
        diags.push(
            err(
                format!(
                    "`%{}` is sharded, but the program declares no mesh",
                    node.name
                ),
                "sharding without a mesh",
            )
            .with_help("declare the mesh first, for example `mesh tp`"),
        );
        return;
    }
    let mut seen: Vec<&String> = Vec::new();
    for axis in sh.axes() {
        if g.mesh.axis(axis).is_none() {
            let names: Vec<String> = g
                .mesh
                .axes
                .iter()
                .map(|a| format!("`{}`", a.name))
                .collect();
            diags.push(
                err(
                    format!(
                        "`%{}` names mesh axis `{axis}`, which the mesh does not have",
                        node.name
                    ),
                    "unknown mesh axis",
                )
                .with_help(format!("the mesh's axes are {}", names.join(", "))),
            );
        } else if seen.contains(&axis) {
            diags.push(
                err(
                    format!("`%{}` uses mesh axis `{axis}` twice", node.name),
                    "axis used twice",
                )
                .with_help("a tensor is split or partial over each mesh axis at most once"),
            );
        }
        seen.push(axis);
    }
    for (i, (ds, extent)) in sh.dims.iter().zip(&ty.shape).enumerate() {
        if ds.factors.is_empty() {
            continue;
        }
        let mut product = Dim::constant(1);
        for f in &ds.factors {
            match product.mul(&f.extent) {
                Ok(p) => product = p,
                Err(e) => {
                    diags.push(err(
                        format!("factors of dim {i} of `%{}`: {e}", node.name),
                        "bad factors",
                    ));
                    return;
                }
            }
        }
        if product != *extent {
            let fs: Vec<String> = ds.factors.iter().map(|f| f.extent.to_string()).collect();
            diags.push(
                err(
                    format!(
                        "dim {i} of `%{}` is {extent}, but its factors ({}) multiply to {product}",
                        node.name,
                        fs.join(", ")
                    ),
                    "factors do not match the dim",
                )
                .with_help(
                    "a dim's factors are its row-major decomposition, so their product is the dim",
                ),
            );
        }
    }
}

fn check_outputs(g: &Graph, position: &ValueMap<usize>, diags: &mut Vec<Diagnostic>) {
    if g.outputs().is_empty() {
        diags.push(
            Diagnostic::error(
                format!("`@{}` returns nothing", g.name),
                g.span,
                "no results",
            )
            .with_help("end the function with `return %value`"),
        );
    }
    for &o in g.outputs() {
        if !position.contains_key(&o) {
            diags.push(Diagnostic::error(
                "the function returns a value that is not in it",
                g.return_span,
                "here",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::mesh::{Mesh, MeshAxis};
    use crate::span::Span;
    use crate::types::{Factor, Sharding};

    fn mesh_tp() -> Mesh {
        Mesh {
            axes: vec![MeshAxis {
                name: "tp".into(),
                size: None,
                span: Span::DUMMY,
            }],
            span: Span::DUMMY,
        }
    }

    #[test]
    fn valid_graph_passes() {
        let mut g = Graph::new("f", mesh_tp());
        let x = g.add_param(
            "x",
            TensorType::new(DType::F32, vec![Dim::symbol("B"), 8.into()]),
            Span::DUMMY,
        );
        let y = g
            .add_op("y", Op::Unary(crate::ops::UnaryOp::Exp), &[x], Span::DUMMY)
            .unwrap();
        g.set_outputs(vec![y]);
        assert!(verify(&g).is_empty());
    }

    #[test]
    fn collects_every_problem() {
        let mut g = Graph::new("f", mesh_tp());
        let mut ty = TensorType::new(DType::F32, vec![48.into(), 8.into()]);
        ty.sharding = Sharding::replicated(2);
        ty.sharding.dims[0].factors = vec![
            Factor {
                extent: 3.into(),
                axes: vec![],
            },
            Factor {
                extent: 15.into(),
                axes: vec!["tp".into()],
            },
        ];
        ty.sharding.dims[1].factors = vec![Factor {
            extent: 8.into(),
            axes: vec!["dp".into()],
        }];
        let x = g.add_param("x", ty, Span::DUMMY);
        let mut node = g.node(x).clone();
        node.op = Op::Unary(crate::ops::UnaryOp::Exp);
        node.ty = TensorType::new(DType::BF16, vec![48.into(), 8.into()]);
        let y = g.add_node(node, &[x]);
        let _ = y;
        let diags = verify(&g);
        let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(diags.len(), 5, "{messages:#?}");
        assert!(messages[0].contains("`dp`"));
        assert!(messages[1].contains("multiply to 45"));
        assert!(messages[2].contains("defined twice"));
        assert!(messages[3].contains("declared bf16"));
        assert!(messages[4].contains("returns nothing"));
    }
}

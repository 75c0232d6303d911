//! The graph: a DAG of ops over tensor values. petgraph's `StableDiGraph` holds it; the rest of
//! tpc sees typed `ValueId`s and never raw indices. Edges point from operand to user and carry
//! the operand's position.
//!
//! A node is one value. An op with several results (`%q, %k, %v = split(%x)`) is one node per
//! result it keeps, each with the op, its result index ([`Node::result`]) and its own type and
//! sharding: propagation, resharding and lowering treat each result as a value computed from
//! the op's operands, and may lay each out (and feed each) as it needs. The nodes of one
//! statement are adjacent in program order with the same operands; the printer writes them as
//! one statement again (`_` for a result nobody kept).

use std::collections::BTreeMap;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::infer::{broadcast_shapes, infer_results, InferError};
use crate::mesh::Mesh;
use crate::ops::Op;
use crate::span::Span;
use crate::types::TensorType;

/// A value (equivalently, the node that produces it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(NodeIndex<u32>);

impl ValueId {
    /// A stable number for the value, for maps and debug output.
    pub fn index(self) -> usize {
        self.0.index()
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    /// The SSA name without `%` (`h.0.attn.qkv.weight`).
    pub name: String,
    pub op: Op,
    /// Which of the op's results this node is (0 for ops with one result).
    pub result: usize,
    pub ty: TensorType,
    /// The whole statement (or parameter declaration) in the source.
    pub span: Span,
    /// Whether the source wrote this value's type (a parameter's, or `: type` after an op); the
    /// source printer writes exactly those, so `fmt` keeps what the user wrote.
    pub explicit_type: bool,
}

/// One function over a mesh.
#[derive(Clone, Debug)]
pub struct Graph {
    pub mesh: Mesh,
    /// The function's name without `@`.
    pub name: String,
    /// Span of the `func` header.
    pub span: Span,
    graph: StableDiGraph<Node, u32>,
    /// Program order: parameters first, then ops, each after its operands.
    order: Vec<ValueId>,
    /// Each node's position in `order`, by node index (built when first asked for after a
    /// change of order), so that `users` is not a scan of the program per user.
    positions: std::sync::OnceLock<Vec<usize>>,
    params: Vec<ValueId>,
    outputs: Vec<ValueId>,
    /// The declared result types, when the source gave them (`-> bf16[B, S, 768]`).
    pub result_types: Vec<(TensorType, Span)>,
    /// Span of the `return` statement.
    pub return_span: Span,
    /// The source's comments, kept so that `tpc fmt` does not lose them.
    pub comments: Comments,
}

/// Comments attached to the places the printer writes them. Text is what followed the `#`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comments {
    /// Before the `mesh` line (and comments from inside the signature).
    pub header: Vec<String>,
    /// On lines of their own before a statement.
    pub before: BTreeMap<ValueId, Vec<String>>,
    /// At the end of a statement's line.
    pub trailing: BTreeMap<ValueId, String>,
    pub before_return: Vec<String>,
    pub trailing_return: Option<String>,
    /// Before the closing `}`.
    pub before_close: Vec<String>,
}

impl Graph {
    pub fn new(name: impl Into<String>, mesh: Mesh) -> Graph {
        Graph {
            mesh,
            name: name.into(),
            span: Span::DUMMY,
            graph: StableDiGraph::default(),
            order: Vec::new(),
            positions: std::sync::OnceLock::new(),
            params: Vec::new(),
            outputs: Vec::new(),
            result_types: Vec::new(),
            return_span: Span::DUMMY,
            comments: Comments::default(),
        }
    }

    pub fn node(&self, v: ValueId) -> &Node {
        &self.graph[v.0]
    }

    pub fn node_mut(&mut self, v: ValueId) -> &mut Node {
        &mut self.graph[v.0]
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.graph[v.0].ty
    }

    pub fn name(&self, v: ValueId) -> &str {
        &self.graph[v.0].name
    }

    pub fn op(&self, v: ValueId) -> &Op {
        &self.graph[v.0].op
    }

    /// Every value in program order.
    pub fn values(&self) -> &[ValueId] {
        &self.order
    }

    pub fn params(&self) -> &[ValueId] {
        &self.params
    }

    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }

    pub fn set_outputs(&mut self, outputs: Vec<ValueId>) {
        self.outputs = outputs;
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The value named `name` (without `%`).
    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.order.iter().copied().find(|&v| self.name(v) == name)
    }

    /// The operands of `v`, in order.
    pub fn operands(&self, v: ValueId) -> Vec<ValueId> {
        let mut edges: Vec<(u32, ValueId)> = self
            .graph
            .edges_directed(v.0, Direction::Incoming)
            .map(|e| (*e.weight(), ValueId(e.source())))
            .collect();
        edges.sort();
        edges.into_iter().map(|(_, v)| v).collect()
    }

    /// The values that use `v`, in program order, once each.
    pub fn users(&self, v: ValueId) -> Vec<ValueId> {
        let mut users: Vec<ValueId> = self
            .graph
            .edges_directed(v.0, Direction::Outgoing)
            .map(|e| ValueId(e.target()))
            .collect();
        users.sort_by_key(|u| self.position(*u));
        users.dedup();
        users
    }

    fn position(&self, v: ValueId) -> usize {
        let positions = self.positions.get_or_init(|| {
            use petgraph::visit::NodeIndexable;
            let mut p = vec![usize::MAX; self.graph.node_bound()];
            for (i, x) in self.order.iter().enumerate() {
                p[x.0.index()] = i;
            }
            p
        });
        positions.get(v.0.index()).copied().unwrap_or(usize::MAX)
    }

    /// Removes a value that nothing uses and that is not a parameter or an output.
    /// Returns false (and changes nothing) otherwise.
    pub fn remove_unused(&mut self, v: ValueId) -> bool {
        let used = self
            .graph
            .edges_directed(v.0, Direction::Outgoing)
            .next()
            .is_some();
        if used
            || self.params.contains(&v)
            || self.outputs.contains(&v)
            || !self.graph.contains_node(v.0)
        {
            return false;
        }
        self.graph.remove_node(v.0);
        self.order.retain(|&x| x != v);
        self.positions = std::sync::OnceLock::new();
        true
    }

    /// Inserts a node just before `before` in program order (its operands must come earlier).
    pub fn insert_before(&mut self, before: ValueId, node: Node, operands: &[ValueId]) -> ValueId {
        let v = ValueId(self.graph.add_node(node));
        for (i, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o.0, v.0, i as u32);
        }
        // Keep the position cache where there is one (shifting what follows), else find the
        // place by a scan: passes insert many nodes in a row, and rebuilding the cache after
        // every one would cost the program's size each time.
        let cached = self.positions.get().is_some();
        let at = if cached {
            self.position(before)
        } else {
            self.order
                .iter()
                .position(|&x| x == before)
                .unwrap_or(usize::MAX)
        }
        .min(self.order.len());
        self.order.insert(at, v);
        match self.positions.get_mut() {
            Some(p) => {
                p.iter_mut()
                    .filter(|x| **x != usize::MAX && **x >= at)
                    .for_each(|x| *x += 1);
                let i = v.0.index();
                if p.len() <= i {
                    p.resize(i + 1, usize::MAX);
                }
                p[i] = at;
            }
            None => self.positions = std::sync::OnceLock::new(),
        }
        v
    }

    /// Makes operand `index` of `user` be `new` instead of what it was.
    pub fn set_operand(&mut self, user: ValueId, index: usize, new: ValueId) {
        self.remove_operand_edge(user, index);
        self.graph.add_edge(new.0, user.0, index as u32);
    }

    /// Removes the edge that feeds operand `index` of `user` (which must be its last operand).
    pub fn remove_operand_edge(&mut self, user: ValueId, index: usize) {
        let old: Vec<_> = self
            .graph
            .edges_directed(user.0, Direction::Incoming)
            .filter(|e| *e.weight() == index as u32)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.graph.remove_edge(e);
        }
    }

    /// Replaces result `index` of the function.
    pub fn set_output(&mut self, index: usize, v: ValueId) {
        if let Some(slot) = self.outputs.get_mut(index) {
            *slot = v;
        }
    }

    /// For every value that something uses, the program position of its last user: where an
    /// executor can free it.
    pub fn last_uses(&self) -> BTreeMap<ValueId, usize> {
        let mut out = BTreeMap::new();
        for (pos, &v) in self.order.iter().enumerate() {
            for o in self.operands(v) {
                out.insert(o, pos);
            }
        }
        out
    }

    /// Adds a parameter with a declared type.
    pub fn add_param(&mut self, name: impl Into<String>, ty: TensorType, span: Span) -> ValueId {
        let index = self.params.len();
        let node = Node {
            name: name.into(),
            op: Op::Param(crate::ops::Param { index }),
            result: 0,
            ty,
            span,
            explicit_type: true,
        };
        let v = ValueId(self.graph.add_node(node));
        self.order.push(v);
        self.positions = std::sync::OnceLock::new();
        self.params.push(v);
        v
    }

    /// Adds an op with a type given by the caller (no inference, no broadcasting): for passes
    /// and the parser. The verifier checks the type later.
    pub fn add_node(&mut self, node: Node, operands: &[ValueId]) -> ValueId {
        let v = ValueId(self.graph.add_node(node));
        for (i, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o.0, v.0, i as u32);
        }
        self.order.push(v);
        self.positions = std::sync::OnceLock::new();
        v
    }

    /// Adds an op, inferring its type. Operands of broadcasting ops (`add`, `where`, …) whose
    /// shapes differ get implicit `broadcast` nodes named `<name>.bcast<i>`.
    pub fn add_op(
        &mut self,
        name: impl Into<String>,
        op: Op,
        operands: &[ValueId],
        span: Span,
    ) -> Result<ValueId, InferError> {
        let name = name.into();
        let n = op.num_results();
        if n != 1 {
            return Err(InferError::new(format!(
                "`{}` has {n} results; name them all (`add_op_results`)",
                op.name()
            )));
        }
        let mut v = self.add_op_results(&[Some(name)], op, operands, span)?;
        Ok(v.remove(0).expect("one named result"))
    }

    /// Adds an op with one name per result (`None` for a result nobody uses), inferring the
    /// types; returns the values of the named results, in order.
    pub fn add_op_results(
        &mut self,
        names: &[Option<String>],
        op: Op,
        operands: &[ValueId],
        span: Span,
    ) -> Result<Vec<Option<ValueId>>, InferError> {
        let n = op.num_results();
        if names.len() != n {
            return Err(InferError::new(format!(
                "`{}` gives {n} result{}, but {} name{} written",
                op.name(),
                if n == 1 { "" } else { "s" },
                names.len(),
                if names.len() == 1 { " is" } else { "s are" }
            ))
            .hint("write one name per result, `_` for a result you do not use"));
        }
        let mut operands = operands.to_vec();
        if op.broadcasts_operands() {
            let shapes: Vec<&[crate::dim::Dim]> = operands
                .iter()
                .map(|&o| self.ty(o).shape.as_slice())
                .collect();
            let target = broadcast_shapes(&shapes).map_err(InferError::new)?;
            let base = names.iter().flatten().next().cloned().unwrap_or_default();
            for (i, o) in operands.iter_mut().enumerate() {
                if self.ty(*o).shape != target {
                    let b = Op::Broadcast(crate::ops::Broadcast {
                        shape: target.clone(),
                        implicit: true,
                    });
                    *o = self.add_op(format!("{base}.bcast{i}"), b, &[*o], span)?;
                }
            }
        }
        let tys: Vec<&TensorType> = operands.iter().map(|&o| self.ty(o)).collect();
        let results = infer_results(&op, &tys)?;
        let mut out = Vec::with_capacity(n);
        // The op moves into the last node that keeps a result (one-result ops are not cloned).
        let last = names.iter().rposition(Option::is_some);
        let mut op = Some(op);
        for (k, (name, (dtype, shape))) in names.iter().zip(results).enumerate() {
            let Some(name) = name else {
                out.push(None);
                continue;
            };
            let op = if Some(k) == last {
                op.take()
            } else {
                op.clone()
            };
            let Some(op) = op else {
                break;
            };
            let node = Node {
                name: name.clone(),
                op,
                result: k,
                ty: TensorType::new(dtype, shape),
                span,
                explicit_type: false,
            };
            out.push(Some(self.add_node(node, &operands)));
        }
        Ok(out)
    }

    /// The values that `v`'s statement defines with it, `v` included, in result order: the
    /// adjacent nodes of one multi-result op with the same operands.
    pub fn statement_of(&self, v: ValueId) -> Vec<ValueId> {
        let node = self.node(v);
        if node.op.num_results() == 1 {
            return vec![v];
        }
        let pos = self.position(v);
        if pos >= self.order.len() {
            return vec![v];
        }
        let ops = self.operands(v);
        let same = |x: ValueId| self.op(x) == &node.op && self.operands(x) == ops;
        let mut start = pos;
        while start > 0 {
            let prev = self.order[start - 1];
            if same(prev) && self.node(prev).result < self.node(self.order[start]).result {
                start -= 1;
            } else {
                break;
            }
        }
        let mut end = pos + 1;
        while end < self.order.len() {
            let next = self.order[end];
            if same(next) && self.node(next).result > self.node(self.order[end - 1]).result {
                end += 1;
            } else {
                break;
            }
        }
        self.order[start..end].to_vec()
    }
}

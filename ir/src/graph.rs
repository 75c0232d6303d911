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
    /// Each node's sequence number, by node index: increasing along `order`, with gaps so that
    /// inserting a node before another takes one between its neighbours (renumbering only when
    /// a gap runs out). Comparing two values' order is O(1); a position is a binary search.
    seq: Vec<u64>,
    /// Each node's operands in order, by node index (the edges carry the same for `users`).
    operand_lists: Vec<Vec<ValueId>>,
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
            seq: Vec::new(),
            operand_lists: Vec::new(),
            params: Vec::new(),
            outputs: Vec::new(),
            result_types: Vec::new(),
            return_span: Span::DUMMY,
            comments: Comments::default(),
        }
    }

    /// Whether `v` is (still) a value of the graph.
    pub fn contains(&self, v: ValueId) -> bool {
        self.graph.contains_node(v.0)
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
        self.operand_slice(v).to_vec()
    }

    /// The operands of `v`, in order, without a copy.
    pub fn operand_slice(&self, v: ValueId) -> &[ValueId] {
        self.operand_lists
            .get(v.index())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The values that use `v`, in program order, once each.
    pub fn users(&self, v: ValueId) -> Vec<ValueId> {
        let mut users: Vec<ValueId> = self
            .graph
            .edges_directed(v.0, Direction::Outgoing)
            .map(|e| ValueId(e.target()))
            .collect();
        users.sort_by_key(|u| self.seq_of(*u));
        users.dedup();
        users
    }

    fn seq_of(&self, v: ValueId) -> u64 {
        self.seq.get(v.index()).copied().unwrap_or(u64::MAX)
    }

    /// `v`'s index in program order (`usize::MAX` when it is not in the graph).
    fn position(&self, v: ValueId) -> usize {
        let key = self.seq_of(v);
        match self.order.binary_search_by_key(&key, |&x| self.seq_of(x)) {
            Ok(i) if self.order[i] == v => i,
            _ => usize::MAX,
        }
    }

    /// Gap between consecutive sequence numbers when they are (re)assigned.
    const SEQ_GAP: u64 = 1 << 16;

    /// Registers a new node's operand list and sequence number `seq`.
    fn register(&mut self, v: ValueId, operands: &[ValueId], seq: u64) {
        let i = v.index();
        if self.seq.len() <= i {
            self.seq.resize(i + 1, u64::MAX);
            self.operand_lists.resize(i + 1, Vec::new());
        }
        self.seq[i] = seq;
        self.operand_lists[i] = operands.to_vec();
        for (k, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o.0, v.0, k as u32);
        }
    }

    /// The sequence number after the last value's.
    fn next_seq(&self) -> u64 {
        self.order
            .last()
            .map_or(Self::SEQ_GAP, |&l| self.seq_of(l) + Self::SEQ_GAP)
    }

    fn renumber(&mut self) {
        for (k, &v) in self.order.iter().enumerate() {
            self.seq[v.index()] = (k as u64 + 1) * Self::SEQ_GAP;
        }
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
        let at = self.position(v);
        self.graph.remove_node(v.0);
        if at < self.order.len() {
            self.order.remove(at);
        }
        self.seq[v.index()] = u64::MAX;
        self.operand_lists[v.index()].clear();
        true
    }

    /// Adds a node that is not yet in program order: its id, operands and edges exist (so other
    /// detached nodes may use it), and [`Graph::place_before`] puts it in place. For passes that
    /// insert many nodes at one place: one splice instead of one insertion each.
    pub fn add_detached(&mut self, node: Node, operands: &[ValueId]) -> ValueId {
        let v = ValueId(self.graph.add_node(node));
        self.register(v, operands, u64::MAX);
        v
    }

    /// Puts detached nodes (see [`Graph::add_detached`]), in this order, just before `before`
    /// in program order; their operands must come earlier.
    pub fn place_before(&mut self, before: ValueId, vs: &[ValueId]) {
        if vs.is_empty() {
            return;
        }
        let at = self.position(before).min(self.order.len());
        let prev = match at {
            0 => 0,
            _ => self.seq_of(self.order[at - 1]),
        };
        let n = vs.len() as u64 + 1;
        let next = self
            .order
            .get(at)
            .map_or(prev.saturating_add(n * Self::SEQ_GAP), |&x| self.seq_of(x));
        self.order.splice(at..at, vs.iter().copied());
        let step = (next - prev) / n;
        if step >= 1 {
            for (k, &v) in vs.iter().enumerate() {
                self.seq[v.index()] = prev + step * (k as u64 + 1);
            }
        } else {
            // The gap ran out: renumber the program.
            self.renumber();
        }
    }

    /// Inserts a node just before `before` in program order (its operands must come earlier).
    pub fn insert_before(&mut self, before: ValueId, node: Node, operands: &[ValueId]) -> ValueId {
        let at = self.position(before).min(self.order.len());
        let prev = match at {
            0 => 0,
            _ => self.seq_of(self.order[at - 1]),
        };
        let next = self
            .order
            .get(at)
            .map_or(prev.saturating_add(2 * Self::SEQ_GAP), |&x| self.seq_of(x));
        let v = ValueId(self.graph.add_node(node));
        self.order.insert(at, v);
        if next - prev >= 2 {
            self.register(v, operands, prev + (next - prev) / 2);
        } else {
            // The gap ran out: renumber the program (rare: a gap halves 16 times first).
            self.register(v, operands, 0);
            self.renumber();
        }
        v
    }

    /// Makes `target` compute what `from` computes (`from`'s op, result index and operands;
    /// `target` keeps its name, type and place), then removes `from`. `from` must come before
    /// `target` and nothing but `target`'s new operands may use it. Returns false (and changes
    /// nothing) when something uses `from`.
    pub fn replace_with(&mut self, target: ValueId, from: ValueId) -> bool {
        let used = self
            .graph
            .edges_directed(from.0, Direction::Outgoing)
            .next()
            .is_some();
        if used || self.outputs.contains(&from) || self.params.contains(&from) {
            return false;
        }
        let old: Vec<_> = self
            .graph
            .edges_directed(target.0, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.graph.remove_edge(e);
        }
        let operands = self.operand_lists[from.index()].clone();
        for (k, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o.0, target.0, k as u32);
        }
        self.operand_lists[target.index()] = operands;
        let (op, result) = (self.node(from).op.clone(), self.node(from).result);
        let node = self.node_mut(target);
        node.op = op;
        node.result = result;
        self.remove_unused(from)
    }

    /// Makes operand `index` of `user` be `new` instead of what it was.
    pub fn set_operand(&mut self, user: ValueId, index: usize, new: ValueId) {
        self.remove_operand_edge(user, index);
        self.graph.add_edge(new.0, user.0, index as u32);
        let list = &mut self.operand_lists[user.index()];
        if index < list.len() {
            list[index] = new;
        } else {
            // After its operands were removed from the end, `user` gets them anew in order.
            list.push(new);
        }
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
        if let Some(list) = self.operand_lists.get_mut(user.index()) {
            if index + 1 == list.len() {
                list.pop();
            }
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
    pub fn last_uses(&self) -> crate::value_map::ValueMap<usize> {
        let mut out = crate::value_map::ValueMap::new();
        for (pos, &v) in self.order.iter().enumerate() {
            for &o in self.operand_slice(v) {
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
        let seq = self.next_seq();
        let v = ValueId(self.graph.add_node(node));
        self.register(v, &[], seq);
        self.order.push(v);
        self.params.push(v);
        v
    }

    /// Adds an op with a type given by the caller (no inference, no broadcasting): for passes
    /// and the parser. The verifier checks the type later.
    pub fn add_node(&mut self, node: Node, operands: &[ValueId]) -> ValueId {
        let seq = self.next_seq();
        let v = ValueId(self.graph.add_node(node));
        self.register(v, operands, seq);
        self.order.push(v);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dim::Dim;
    use crate::dtype::DType;
    use crate::ops::UnaryOp;

    fn exp_node(name: &str) -> Node {
        Node {
            name: name.into(),
            op: Op::Unary(UnaryOp::Exp),
            result: 0,
            ty: TensorType::new(DType::F32, vec![Dim::constant(4)]),
            span: Span::DUMMY,
            explicit_type: false,
        }
    }

    /// `%x` and `%last = exp(%x)`.
    fn param_and_last() -> (Graph, ValueId, ValueId) {
        let mut g = Graph::new("f", Mesh::default());
        let x = g.add_param(
            "x",
            TensorType::new(DType::F32, vec![Dim::constant(4)]),
            Span::DUMMY,
        );
        let last = g.add_node(exp_node("last"), &[x]);
        (g, x, last)
    }

    #[test]
    fn many_inserts_before_one_value_keep_program_order_and_operands() {
        let (mut g, x, last) = param_and_last();
        // Each insert lands between the previous insert and `last`: the gap halves every time,
        // so 40 inserts run it out and renumber.
        let mut prev = x;
        let mut inserted = Vec::new();
        for i in 0..40 {
            let v = g.insert_before(last, exp_node(&format!("n{i}")), &[prev]);
            inserted.push(v);
            prev = v;
        }
        g.set_operand(last, 0, prev);
        let mut want = vec![x];
        want.extend(&inserted);
        want.push(last);
        assert_eq!(g.values(), want.as_slice());
        assert_eq!(g.operands(last), [prev]);
        assert_eq!(g.operands(inserted[0]), [x]);
        // Users come in program order.
        let early = g.insert_before(inserted[0], exp_node("early"), &[x]);
        assert_eq!(g.users(x), [early, inserted[0]]);
        assert_eq!(g.position(early), 1);
        assert!(g.remove_unused(early));
        assert_eq!(g.users(x), [inserted[0]]);
        assert_eq!(g.position(inserted[0]), 1);
    }

    #[test]
    fn detached_nodes_placed_in_one_splice_keep_program_order() {
        let (mut g, x, last) = param_and_last();
        // Runs of detached nodes placed between `x` and `last` again and again: the gap is
        // split evenly, then runs out and the program is renumbered.
        let mut all = Vec::new();
        for run in 0..12 {
            let mut prev = all.last().copied().unwrap_or(x);
            let mut vs = Vec::new();
            for i in 0..20 {
                let v = g.add_detached(exp_node(&format!("r{run}n{i}")), &[prev]);
                // Not in program order until placed.
                assert_eq!(g.position(v), usize::MAX);
                vs.push(v);
                prev = v;
            }
            g.place_before(last, &vs);
            all.extend(vs);
        }
        let mut want = vec![x];
        want.extend(&all);
        want.push(last);
        assert_eq!(g.values(), want.as_slice());
        for (i, &v) in want.iter().enumerate() {
            assert_eq!(g.position(v), i);
        }
        assert_eq!(g.users(all[0]), [all[1]]);
        assert_eq!(g.operands(all[0]), [x]);
    }
}

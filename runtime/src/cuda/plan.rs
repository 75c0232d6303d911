//! Checking a set of host programs before any GPU work, and mapping every `Exchange` to NCCL
//! calls. Everything here runs on the CPU and is the same on every process (it reads all ranks'
//! host programs), so every member of a group picks the same calls.
//!
//! How an exchange maps (per group of members, from all members' runs):
//! - with a reduction: the output elements of each member (the root) are cut into segments
//!   that every member sends from one contiguous range; then
//!   - one segment `[0, n)` from offset 0 everywhere, on every member: `ncclAllReduce`;
//!   - one segment `[0, l)` on member `t` from offset `t·l` everywhere, equal `l`:
//!     `ncclReduceScatter`;
//!   - otherwise one `ncclReduce` per root and segment, in one NCCL group (uneven splits);
//! - without: when each member's contribution reaches every member as one run of the same
//!   source range (the receivers' destinations may differ):
//!   - runs `[s·l, (s+1)·l)` from offset 0 with equal `l`: `ncclAllGather`;
//!   - otherwise one `ncclBroadcast` per root, in one NCCL group (uneven splits);
//! - otherwise (all_to_all and any other shape): `ncclSend`/`ncclRecv` per run in one NCCL
//!   group, and device-to-device copies for what a member keeps of its own input;
//! - a group of one rank: copies only, no NCCL.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use tpc_codegen::host::{Buffer, Compiled, Epilogue, Exchange, HostProgram, Run, Step};
use tpc_ir::{DType, ReduceOp};

use crate::{Error, Result};

/// One operation of an exchange on one rank. Offsets and counts are in elements of the
/// exchange's dtype; `src` offsets are into the rank's input buffer, `dst` into its output.
/// Roots and peers are positions in the group (the ranks of the group's communicator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    AllReduce {
        op: ReduceOp,
        src: usize,
        dst: usize,
        count: usize,
    },
    /// `count` elements per member.
    ReduceScatter {
        op: ReduceOp,
        src: usize,
        dst: usize,
        count: usize,
    },
    /// `count` elements per member.
    AllGather {
        src: usize,
        dst: usize,
        count: usize,
    },
    /// `dst` only on the root.
    Reduce {
        op: ReduceOp,
        root: usize,
        src: usize,
        dst: Option<usize>,
        count: usize,
    },
    /// `src` only on the root.
    Broadcast {
        root: usize,
        src: Option<usize>,
        dst: usize,
        count: usize,
    },
    Send {
        peer: usize,
        src: usize,
        count: usize,
    },
    Recv {
        peer: usize,
        dst: usize,
        count: usize,
    },
    /// A device-to-device copy within the rank.
    Copy {
        src: usize,
        dst: usize,
        count: usize,
    },
}

impl Call {
    pub fn is_nccl(&self) -> bool {
        !matches!(self, Call::Copy { .. })
    }
}

fn op_name(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Sum => "sum",
        ReduceOp::Max => "max",
        ReduceOp::Min => "min",
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |x: &Option<usize>| x.map_or("-".to_string(), |v| v.to_string());
        match self {
            Call::AllReduce {
                op,
                src,
                dst,
                count,
            } => write!(
                f,
                "ncclAllReduce({}, in+{src} -> out+{dst}, {count})",
                op_name(*op)
            ),
            Call::ReduceScatter {
                op,
                src,
                dst,
                count,
            } => write!(
                f,
                "ncclReduceScatter({}, in+{src} -> out+{dst}, {count} each)",
                op_name(*op)
            ),
            Call::AllGather { src, dst, count } => {
                write!(f, "ncclAllGather(in+{src} -> out+{dst}, {count} each)")
            }
            Call::Reduce {
                op,
                root,
                src,
                dst,
                count,
            } => write!(
                f,
                "ncclReduce({}, root {root}, in+{src} -> out+{}, {count})",
                op_name(*op),
                opt(dst)
            ),
            Call::Broadcast {
                root,
                src,
                dst,
                count,
            } => write!(
                f,
                "ncclBroadcast(root {root}, in+{} -> out+{dst}, {count})",
                opt(src)
            ),
            Call::Send { peer, src, count } => {
                write!(f, "ncclSend(in+{src}, {count}, peer {peer})")
            }
            Call::Recv { peer, dst, count } => {
                write!(f, "ncclRecv(out+{dst}, {count}, peer {peer})")
            }
            Call::Copy { src, dst, count } => write!(f, "copy(in+{src} -> out+{dst}, {count})"),
        }
    }
}

/// What one rank does for one exchange step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangePlan {
    /// The group whose communicator the NCCL calls use (`None`: copies only).
    pub comm: Option<Vec<usize>>,
    /// Whether the NCCL calls go in one `ncclGroupStart`/`ncclGroupEnd`.
    pub grouped: bool,
    pub calls: Vec<Call>,
}

/// The checked host programs' collective plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub world: usize,
    /// Per global rank: step index -> what the exchange at that step does.
    pub exchanges: Vec<BTreeMap<usize, ExchangePlan>>,
    /// Communicators other than the world's, as layers of disjoint groups: one
    /// `ncclCommSplit` of the world communicator per layer, in this order, on every rank.
    pub split_layers: Vec<Vec<Vec<usize>>>,
    /// Whether any rank makes an NCCL call.
    pub needs_nccl: bool,
}

impl Plan {
    /// Whether `group` is the world in rank order (then the world communicator serves it).
    pub fn is_world(&self, group: &[usize]) -> bool {
        group.len() == self.world && group.iter().enumerate().all(|(i, &r)| i == r)
    }
}

fn bad(rank: usize, step: usize, m: impl fmt::Display) -> Error {
    Error::Cuda(format!("host program of rank {rank}, step {step}: {m}"))
}

fn buffer(h: &HostProgram, rank: usize, step: usize, b: usize) -> Result<&Buffer> {
    h.buffers
        .get(b)
        .ok_or_else(|| bad(rank, step, format!("buffer b{b} does not exist")))
}

/// Checks every host program of `compiled` (buffers inside the arena, launches against their
/// kernels' parameters, GEMM extents, exchange runs and the agreement of every group's members)
/// and maps the exchanges to NCCL calls.
pub fn check(compiled: &Compiled) -> Result<Plan> {
    let world = compiled.hosts.len();
    if world == 0 {
        return Err(Error::Cuda("the program has no host programs".into()));
    }
    for (r, h) in compiled.hosts.iter().enumerate() {
        check_host(compiled, h, r, world)?;
    }
    plan_exchanges(compiled)
}

fn check_host(compiled: &Compiled, h: &HostProgram, r: usize, world: usize) -> Result<()> {
    if h.rank != r || h.world != world {
        return Err(Error::Cuda(format!(
            "host program {r} says it is rank {} of {}, but there are {world} host programs",
            h.rank, h.world
        )));
    }
    for (i, b) in h.buffers.iter().enumerate() {
        let bytes = b
            .shape
            .iter()
            .try_fold(b.dtype.size_bytes(), |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| Error::Cuda(format!("rank {r}: buffer b{i} %{} overflows", b.name)))?;
        let end = b.offset.checked_add(bytes);
        if end.is_none_or(|e| e > h.peak_bytes) || b.offset % b.dtype.size_bytes() != 0 {
            return Err(Error::Cuda(format!(
                "rank {r}: buffer b{i} %{} ({bytes} bytes at offset {}) does not fit the arena of {} bytes",
                b.name, b.offset, h.peak_bytes
            )));
        }
    }
    for (i, step) in h.steps.iter().enumerate() {
        match step {
            Step::Input { buf, .. } | Step::Alloc { buf } | Step::Free { buf } => {
                buffer(h, r, i, buf.0)?;
            }
            Step::Output { buf, value, shape } => {
                let b = buffer(h, r, i, buf.0)?;
                if shape.iter().product::<usize>() != b.elems() {
                    return Err(bad(
                        r,
                        i,
                        format!(
                            "output %{value} of shape {shape:?} views %{} of {} elements",
                            b.name,
                            b.elems()
                        ),
                    ));
                }
            }
            Step::Table { buf, values } => {
                let b = buffer(h, r, i, buf.0)?;
                if b.dtype != DType::I64 || b.elems() != values.len() {
                    return Err(bad(
                        r,
                        i,
                        format!(
                            "table %{} is {}{:?}, given {} values",
                            b.name,
                            b.dtype,
                            b.shape,
                            values.len()
                        ),
                    ));
                }
            }
            Step::Launch {
                kernel,
                grid,
                block,
                args,
                ..
            } => {
                let k = compiled
                    .kernels
                    .get(*kernel)
                    .ok_or_else(|| bad(r, i, format!("kernel {kernel} does not exist")))?;
                for a in args {
                    if let tpc_codegen::host::Arg::Buffer(b) = a {
                        buffer(h, r, i, b.0)?;
                    }
                }
                if !tpc_codegen::build::args_match(k, args, &h.buffers) {
                    return Err(bad(
                        r,
                        i,
                        format!(
                            "the arguments of @{} do not match its {} parameters",
                            k.name(),
                            k.params().len()
                        ),
                    ));
                }
                if grid.contains(&0) || *block == 0 || *block > 1024 {
                    return Err(bad(
                        r,
                        i,
                        format!("@{}: launch grid {grid:?} block {block}", k.name()),
                    ));
                }
                if k.name().contains('\0') {
                    return Err(bad(r, i, "a kernel name with a NUL byte"));
                }
            }
            Step::Gemm(g) => {
                let (a, b, c) = (
                    buffer(h, r, i, g.a.0)?,
                    buffer(h, r, i, g.b.0)?,
                    buffer(h, r, i, g.c.0)?,
                );
                if !g.dtype.is_float() || [a, b, c].iter().any(|x| x.dtype != g.dtype) {
                    return Err(bad(
                        r,
                        i,
                        format!(
                            "gemm %{} in {}: operands are {}, {}, {}",
                            c.name, g.dtype, a.dtype, b.dtype, c.dtype
                        ),
                    ));
                }
                let need = |stride: usize, size: usize| -> Option<usize> {
                    if g.batch == 0 {
                        return Some(0);
                    }
                    (g.batch - 1).checked_mul(stride)?.checked_add(size)
                };
                let fits = |x: &Buffer, stride: usize, rows: usize, cols: usize| {
                    rows.checked_mul(cols)
                        .and_then(|s| need(stride, s))
                        .is_some_and(|n| n <= x.elems())
                };
                if !fits(a, g.stride_a, g.m, g.k)
                    || !fits(b, g.stride_b, g.k, g.n)
                    || !fits(c, g.stride_c, g.m, g.n)
                {
                    return Err(bad(
                        r,
                        i,
                        format!(
                            "gemm %{}: buffers too small for batch {} of {}x{} by {}x{}",
                            c.name, g.batch, g.m, g.k, g.k, g.n
                        ),
                    ));
                }
                let limit = i32::MAX as usize;
                if g.m > limit || g.n > limit || g.k > limit || g.batch > limit {
                    return Err(bad(r, i, format!("gemm %{}: extents beyond i32", c.name)));
                }
                match (g.bias, g.epilogue) {
                    (Some(x), _) => {
                        let x = buffer(h, r, i, x.0)?;
                        if !x.dtype.is_float() || x.elems() < g.n {
                            return Err(bad(
                                r,
                                i,
                                format!(
                                    "gemm %{}: bias %{} is {}{:?}",
                                    c.name, x.name, x.dtype, x.shape
                                ),
                            ));
                        }
                    }
                    (None, Epilogue::Bias | Epilogue::BiasGelu) => {
                        return Err(bad(
                            r,
                            i,
                            format!("gemm %{}: a bias epilogue without a bias", c.name),
                        ));
                    }
                    (None, _) => {}
                }
            }
            Step::Exchange(x) => check_exchange(h, r, i, x)?,
        }
    }
    Ok(())
}

fn check_exchange(h: &HostProgram, r: usize, i: usize, x: &Exchange) -> Result<()> {
    let (ib, ob) = (buffer(h, r, i, x.input.0)?, buffer(h, r, i, x.output.0)?);
    if ib.dtype != x.dtype || ob.dtype != x.dtype {
        return Err(bad(
            r,
            i,
            format!(
                "{} of {}: input %{} is {}, output %{} is {}",
                x.kind.name(),
                x.dtype,
                ib.name,
                ib.dtype,
                ob.name,
                ob.dtype
            ),
        ));
    }
    if x.reduce.is_some() && !x.dtype.is_float() {
        return Err(bad(r, i, format!("a reduction of {}", x.dtype)));
    }
    let distinct: BTreeSet<usize> = x.group.iter().copied().collect();
    if distinct.len() != x.group.len() || x.group.iter().any(|&g| g >= h.world) {
        return Err(bad(
            r,
            i,
            format!("group {:?} of a world of {}", x.group, h.world),
        ));
    }
    if !x.group.contains(&r) {
        return Err(bad(
            r,
            i,
            format!("rank {r} is not in its group {:?}", x.group),
        ));
    }
    if x.recv.len() != x.group.len() || x.send.len() != x.group.len() {
        return Err(bad(
            r,
            i,
            format!(
                "{} runs received and {} sent for a group of {}",
                x.recv.len(),
                x.send.len(),
                x.group.len()
            ),
        ));
    }
    let (ni, no) = (ib.elems(), ob.elems());
    let (recv, send) = (x.recv_runs(), x.send_runs());
    let out_of = |run: &Run, src_len: Option<usize>, dst_len: Option<usize>| {
        src_len.is_some_and(|n| run.src.checked_add(run.len).is_none_or(|e| e > n))
            || dst_len.is_some_and(|n| run.dst.checked_add(run.len).is_none_or(|e| e > n))
    };
    for runs in &recv {
        if runs.iter().any(|run| out_of(run, None, Some(no))) {
            return Err(bad(
                r,
                i,
                format!("a received run leaves output %{}", ob.name),
            ));
        }
    }
    for runs in &send {
        if runs.iter().any(|run| out_of(run, Some(ni), None)) {
            return Err(bad(r, i, format!("a sent run leaves input %{}", ib.name)));
        }
    }
    let me = x.group.iter().position(|&g| g == r).unwrap_or(0);
    if recv[me].iter().any(|run| out_of(run, Some(ni), None)) {
        return Err(bad(
            r,
            i,
            format!("a run this rank keeps leaves input %{}", ib.name),
        ));
    }
    // NCCL needs the input and output apart.
    let (a0, a1) = (ib.offset, ib.offset + ib.bytes());
    let (b0, b1) = (ob.offset, ob.offset + ob.bytes());
    if ib.bytes() > 0 && ob.bytes() > 0 && a0 < b1 && b0 < a1 {
        return Err(bad(
            r,
            i,
            format!(
                "the input %{} and output %{} of {} overlap in the arena",
                ib.name,
                ob.name,
                x.kind.name()
            ),
        ));
    }
    // Without a reduction, every output element is received at most once.
    if x.reduce.is_none() {
        let mut spans: Vec<(usize, usize)> = recv
            .iter()
            .flatten()
            .filter(|r| r.len > 0)
            .map(|r| (r.dst, r.dst + r.len))
            .collect();
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err(bad(
                r,
                i,
                format!("output %{} receives an element twice", ob.name),
            ));
        }
    }
    Ok(())
}

/// One exchange of one member: (global rank, step index, the exchange).
type Member<'a> = (usize, usize, &'a Exchange);
/// Per group: per member rank, its exchanges over the group as (step index, exchange).
type ByGroup<'a> = BTreeMap<Vec<usize>, BTreeMap<usize, Vec<(usize, &'a Exchange)>>>;
/// A collective instance: the group and the index of the exchange among the group's.
type Instance = (Vec<usize>, usize);

fn plan_exchanges(compiled: &Compiled) -> Result<Plan> {
    let world = compiled.hosts.len();
    // Per group: per member rank, its exchanges over that group in program order.
    let mut by_group: ByGroup = BTreeMap::new();
    for (r, h) in compiled.hosts.iter().enumerate() {
        for (i, s) in h.steps.iter().enumerate() {
            if let Step::Exchange(x) = s {
                by_group
                    .entry(x.group.clone())
                    .or_default()
                    .entry(r)
                    .or_default()
                    .push((i, x));
            }
        }
    }
    let mut exchanges: Vec<BTreeMap<usize, ExchangePlan>> = vec![BTreeMap::new(); world];
    // Collective instances (group, k) that make NCCL calls, per rank in program order.
    let mut order: Vec<Vec<(usize, Instance)>> = vec![Vec::new(); world];
    let mut comm_groups: BTreeSet<Vec<usize>> = BTreeSet::new();
    for (group, members) in &by_group {
        let counts: Vec<usize> = group
            .iter()
            .map(|r| members.get(r).map_or(0, |v| v.len()))
            .collect();
        if counts.iter().any(|&c| c != counts[0]) {
            let list: Vec<String> = group
                .iter()
                .zip(&counts)
                .map(|(r, c)| format!("rank {r}: {c}"))
                .collect();
            return Err(Error::Cuda(format!(
                "the members of group {group:?} do not make the same number of exchanges over it ({}): \
                 NCCL would wait forever",
                list.join(", ")
            )));
        }
        let lists: Vec<&Vec<(usize, &Exchange)>> =
            group.iter().filter_map(|r| members.get(r)).collect();
        for k in 0..counts[0] {
            let ms: Vec<Member> = group
                .iter()
                .zip(&lists)
                .map(|(&r, list)| (r, list[k].0, list[k].1))
                .collect();
            let calls = plan_instance(&ms)?;
            for (t, (r, i, _)) in ms.iter().enumerate() {
                let mine = &calls[t];
                let nccl = mine.iter().any(Call::is_nccl);
                let grouped = mine.iter().filter(|c| c.is_nccl()).count() > 1;
                if nccl {
                    comm_groups.insert(group.clone());
                    order[*r].push((*i, (group.clone(), k)));
                }
                exchanges[*r].insert(
                    *i,
                    ExchangePlan {
                        comm: nccl.then(|| group.clone()),
                        grouped,
                        calls: mine.clone(),
                    },
                );
            }
        }
    }
    for seq in order.iter_mut() {
        seq.sort_by_key(|(i, _)| *i);
    }
    check_order(&order)?;
    // Layers of disjoint groups, one split each (the world in rank order needs none).
    let mut split_layers: Vec<Vec<Vec<usize>>> = Vec::new();
    for g in &comm_groups {
        if g.len() == world && g.iter().enumerate().all(|(i, &r)| i == r) {
            continue;
        }
        let fits = |layer: &Vec<Vec<usize>>| layer.iter().all(|o| o.iter().all(|r| !g.contains(r)));
        match split_layers.iter_mut().find(|l| fits(l)) {
            Some(l) => l.push(g.clone()),
            None => split_layers.push(vec![g.clone()]),
        }
    }
    Ok(Plan {
        world,
        exchanges,
        split_layers,
        needs_nccl: !comm_groups.is_empty(),
    })
}

/// The collectives must happen in one order that every rank follows, else the ranks wait on
/// each other in a cycle. `order[r]` lists rank r's collective instances in program order.
fn check_order(order: &[Vec<(usize, Instance)>]) -> Result<()> {
    let mut ids: BTreeMap<&Instance, usize> = BTreeMap::new();
    for seq in order {
        for (_, inst) in seq {
            let n = ids.len();
            ids.entry(inst).or_insert(n);
        }
    }
    let n = ids.len();
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut indegree = vec![0usize; n];
    for seq in order {
        for w in seq.windows(2) {
            let (a, b) = (ids[&w[0].1], ids[&w[1].1]);
            if edges[a].insert(b) {
                indegree[b] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut seen = 0;
    while let Some(a) = ready.pop() {
        seen += 1;
        for &b in &edges[a] {
            indegree[b] -= 1;
            if indegree[b] == 0 {
                ready.push(b);
            }
        }
    }
    if seen < n {
        let stuck: Vec<String> = ids
            .iter()
            .filter(|(_, &i)| indegree[i] > 0)
            .take(4)
            .map(|((g, k), _)| format!("exchange {k} over {g:?}"))
            .collect();
        return Err(Error::Cuda(format!(
            "the host programs order their collectives differently on different ranks, so NCCL \
             would deadlock (e.g. {})",
            stuck.join(", ")
        )));
    }
    Ok(())
}

/// Per member (in group order), the calls of one collective instance.
fn plan_instance(ms: &[Member]) -> Result<Vec<Vec<Call>>> {
    let (r0, i0, x0) = ms[0];
    let g = ms.len();
    for &(r, i, x) in ms {
        if x.kind != x0.kind || x.dtype != x0.dtype || x.reduce != x0.reduce {
            return Err(Error::Cuda(format!(
                "group {:?}: rank {r} step {i} is {} of {} but rank {r0} step {i0} is {} of {}",
                x0.group,
                x.kind.name(),
                x.dtype,
                x0.kind.name(),
                x0.dtype
            )));
        }
    }
    for (t, &(rt, it, xt)) in ms.iter().enumerate() {
        for (s, &(rs, is, xs)) in ms.iter().enumerate() {
            if xt.send[s] != xs.recv[t] {
                return Err(Error::Cuda(format!(
                    "{} over {:?}: rank {rt} (step {it}) sends rank {rs} other runs than rank {rs} \
                     (step {is}) expects to receive",
                    x0.kind.name(),
                    x0.group
                )));
            }
        }
    }
    let copies = |runs: &[Run]| -> Vec<Call> {
        runs.iter()
            .filter(|r| r.len > 0)
            .map(|r| Call::Copy {
                src: r.src,
                dst: r.dst,
                count: r.len,
            })
            .collect()
    };
    if g == 1 {
        return Ok(vec![copies(&x0.recv_runs()[0])]);
    }
    // recv[t][s]: what member t receives from member s.
    let received: Vec<Vec<Vec<Run>>> = ms.iter().map(|m| m.2.recv_runs()).collect();
    let recv: Vec<&Vec<Vec<Run>>> = received.iter().collect();
    match x0.reduce {
        Some(op) => plan_reduce(ms, &recv, op),
        None => Ok(plan_move(&recv).unwrap_or_else(|| {
            ms.iter()
                .enumerate()
                .map(|(me, m)| {
                    let x = m.2;
                    let (sent, got) = (x.send_runs(), &received[me]);
                    let mut calls = Vec::new();
                    for (t, runs) in sent.iter().enumerate() {
                        if t != me {
                            calls.extend(runs.iter().filter(|r| r.len > 0).map(|r| Call::Send {
                                peer: t,
                                src: r.src,
                                count: r.len,
                            }));
                        }
                    }
                    for (s, runs) in got.iter().enumerate() {
                        if s != me {
                            calls.extend(runs.iter().filter(|r| r.len > 0).map(|r| Call::Recv {
                                peer: s,
                                dst: r.dst,
                                count: r.len,
                            }));
                        }
                    }
                    calls.extend(copies(&got[me]));
                    calls
                })
                .collect()
        })),
    }
}

/// A reduced segment of a root's output: `len` elements at `dst`, from `src[s]` of member s.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Segment {
    dst: usize,
    len: usize,
    src: Vec<usize>,
}

/// The segments of root `t`'s output.
fn segments(ms: &[Member], recv_t: &[Vec<Run>]) -> Result<Vec<Segment>> {
    let g = recv_t.len();
    let mut sorted: Vec<Vec<Run>> = recv_t
        .iter()
        .map(|runs| runs.iter().filter(|r| r.len > 0).copied().collect())
        .collect();
    for (s, runs) in sorted.iter_mut().enumerate() {
        runs.sort_by_key(|r| r.dst);
        if runs.windows(2).any(|w| w[1].dst < w[0].dst + w[0].len) {
            return Err(Error::Cuda(format!(
                "{} over {:?}: member {s} sends an element twice",
                ms[0].2.kind.name(),
                ms[0].2.group
            )));
        }
    }
    let mut bounds: BTreeSet<usize> = BTreeSet::new();
    for r in sorted.iter().flatten() {
        bounds.insert(r.dst);
        bounds.insert(r.dst + r.len);
    }
    let bounds: Vec<usize> = bounds.into_iter().collect();
    let mut cursor = vec![0usize; g];
    let mut out: Vec<Segment> = Vec::new();
    for w in bounds.windows(2) {
        let (d0, d1) = (w[0], w[1]);
        let mut src = Vec::with_capacity(g);
        for s in 0..g {
            let runs = &sorted[s];
            while cursor[s] < runs.len() && runs[cursor[s]].dst + runs[cursor[s]].len <= d0 {
                cursor[s] += 1;
            }
            match runs.get(cursor[s]) {
                Some(r) if r.dst <= d0 => src.push(r.src + (d0 - r.dst)),
                _ => {}
            }
        }
        if src.is_empty() {
            continue;
        }
        if src.len() < g {
            return Err(Error::Cuda(format!(
                "{} over {:?}: output elements {d0}..{d1} are reduced from only {} of {g} members",
                ms[0].2.kind.name(),
                ms[0].2.group,
                src.len()
            )));
        }
        let len = d1 - d0;
        match out.last_mut() {
            Some(p)
                if p.dst + p.len == d0 && p.src.iter().zip(&src).all(|(a, b)| a + p.len == *b) =>
            {
                p.len += len
            }
            _ => out.push(Segment { dst: d0, len, src }),
        }
    }
    Ok(out)
}

fn plan_reduce(ms: &[Member], recv: &[&Vec<Vec<Run>>], op: ReduceOp) -> Result<Vec<Vec<Call>>> {
    let g = ms.len();
    let segs: Vec<Vec<Segment>> = recv
        .iter()
        .map(|rt| segments(ms, rt))
        .collect::<Result<_>>()?;
    let single = |t: usize| -> Option<&Segment> {
        match segs[t].as_slice() {
            [s] if s.dst == 0 => Some(s),
            _ => None,
        }
    };
    // allreduce: everyone reduces the same [0, n) from offset 0.
    let all: Option<Vec<&Segment>> = (0..g).map(single).collect();
    if let Some(all) = &all {
        let n = all[0].len;
        if all
            .iter()
            .all(|s| s.len == n && s.src.iter().all(|&x| x == 0))
        {
            let call = Call::AllReduce {
                op,
                src: 0,
                dst: 0,
                count: n,
            };
            return Ok(vec![vec![call]; g]);
        }
        // reduce_scatter: member t gets chunk t of everyone's input.
        if all
            .iter()
            .enumerate()
            .all(|(t, s)| s.len == n && s.src.iter().all(|&x| x == t * n))
        {
            let call = Call::ReduceScatter {
                op,
                src: 0,
                dst: 0,
                count: n,
            };
            return Ok(vec![vec![call]; g]);
        }
    }
    // Uneven: one reduce per root and segment; every member walks them in the same order.
    Ok((0..g)
        .map(|me| {
            let mut calls = Vec::new();
            for (t, list) in segs.iter().enumerate() {
                for s in list {
                    calls.push(Call::Reduce {
                        op,
                        root: t,
                        src: s.src[me],
                        dst: (me == t).then_some(s.dst),
                        count: s.len,
                    });
                }
            }
            calls
        })
        .collect())
}

/// Allgather or per-root broadcasts when every member's contribution reaches every member as
/// one run of one source range; `None` for any other shape.
fn plan_move(recv: &[&Vec<Vec<Run>>]) -> Option<Vec<Vec<Call>>> {
    let g = recv.len();
    // Per root: (src, len, dst per receiver), or None when it sends nothing.
    type Root = Option<(usize, usize, Vec<usize>)>;
    let root = |s: usize| -> Option<Root> {
        let runs: Vec<Vec<Run>> = recv
            .iter()
            .map(|rt| rt[s].iter().filter(|r| r.len > 0).copied().collect())
            .collect();
        if runs.iter().all(|r| r.is_empty()) {
            return Some(None);
        }
        let first = runs[0].first()?;
        let (src, len) = (first.src, first.len);
        let mut dst = Vec::with_capacity(g);
        for r in &runs {
            match r.as_slice() {
                [x] if x.src == src && x.len == len => dst.push(x.dst),
                _ => return None,
            }
        }
        Some(Some((src, len, dst)))
    };
    let roots: Vec<Root> = (0..g).map(root).collect::<Option<_>>()?;
    if roots.iter().all(Option::is_none) {
        return Some(vec![Vec::new(); g]);
    }
    if let Some((_, l, _)) = &roots[0] {
        let l = *l;
        let gather = roots.iter().enumerate().all(|(s, x)| {
            matches!(x, Some((0, len, dst)) if *len == l && dst.iter().all(|&d| d == s * l))
        });
        if gather {
            return Some(vec![
                vec![Call::AllGather {
                    src: 0,
                    dst: 0,
                    count: l
                }];
                g
            ]);
        }
    }
    Some(
        (0..g)
            .map(|me| {
                roots
                    .iter()
                    .enumerate()
                    .filter_map(|(s, x)| {
                        x.as_ref().map(|(src, len, dst)| Call::Broadcast {
                            root: s,
                            src: (me == s).then_some(*src),
                            dst: dst[me],
                            count: *len,
                        })
                    })
                    .collect()
            })
            .collect(),
    )
}

/// Per rank, per exchange step: a line naming the step and the calls it makes on the GPU.
pub fn describe(compiled: &Compiled) -> Result<Vec<Vec<String>>> {
    let plan = check(compiled)?;
    Ok(plan
        .exchanges
        .iter()
        .enumerate()
        .map(|(r, m)| {
            m.iter()
                .map(|(i, p)| {
                    let Step::Exchange(x) = &compiled.hosts[r].steps[*i] else {
                        return String::new();
                    };
                    let calls: Vec<String> = p.calls.iter().map(|c| c.to_string()).collect();
                    format!(
                        "step {i} {} over {:?}{}: {}",
                        x.kind.name(),
                        x.group,
                        if p.grouped { " (grouped)" } else { "" },
                        calls.join("; ")
                    )
                })
                .collect()
        })
        .collect())
}

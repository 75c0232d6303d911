//! A collective's blocks, from the layouts of its operand and result: which box of the tensor
//! each member holds before and after, and which box each member receives from each other.
//!
//! The tensor is seen through a *view*: every dim cut into the factors that both layouts'
//! factors are made of (`(3, 16@tp, 64)` against a whole `3072` is three view dims), so that
//! every member's piece of either layout is one box of the view. Everything is computed from
//! the factor extents and the ranks' coordinates: time proportional to the view's rank times
//! the group's size (squared for the send side), never to the tensor's elements.

use std::collections::BTreeMap;
use std::ops::Range;

use tpc_ir::layout::{factor_pieces, rank_coords, FactorPiece};
use tpc_ir::TensorType;

use crate::host::Block;

/// The blocks of one member of a group ([`GroupBlocks::member`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Blocks {
    pub view: Vec<usize>,
    pub inputs: Vec<Block>,
    pub outputs: Vec<Block>,
    pub recv: Vec<Option<Block>>,
    pub send: Vec<Option<Block>>,
}

/// The factors that two factorizations of one extent (row-major, major first) are both made
/// of, if there are such: the boundaries of both (the products of the factors after each) must
/// form one chain of divisors.
fn refine(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let suffixes = |f: &[usize]| -> Vec<usize> {
        let mut out = vec![1usize];
        let mut p = 1usize;
        for &x in f.iter().rev() {
            p = p.saturating_mul(x);
            out.push(p);
        }
        out
    };
    let mut bounds: Vec<usize> = suffixes(a);
    bounds.extend(suffixes(b));
    bounds.sort_unstable_by(|x, y| y.cmp(x));
    bounds.dedup();
    if bounds.last() == Some(&0) || bounds.contains(&0) {
        // An empty dim: one view dim of extent 0.
        return Some(vec![0]);
    }
    let mut out = Vec::with_capacity(bounds.len());
    for w in bounds.windows(2) {
        if w[0] % w[1] != 0 {
            return None;
        }
        out.push(w[0] / w[1]);
    }
    if out.is_empty() {
        out.push(1);
    }
    Some(out)
}

/// A piece's factors mapped onto `view` (the refinement of its factorization): the range of
/// each view factor it holds. A factor that the view cuts further must be held in whole
/// multiples of its inner view factors, else the piece is no box.
fn onto_view(pieces: &[FactorPiece], view: &[usize]) -> Option<Vec<Range<usize>>> {
    if view == [0] {
        return Some(std::iter::once(0..0).collect());
    }
    let mut out = Vec::with_capacity(view.len());
    let mut empty = false;
    let mut v = 0;
    for p in pieces {
        // Factors of extent 1 have no view dim (the refinement drops them), but a rank may
        // still hold none of one.
        if p.extent == 1 {
            empty |= p.held.is_empty();
            continue;
        }
        // The view factors making up this factor.
        let start = v;
        let mut product = 1usize;
        while v < view.len() && product < p.extent {
            product *= view[v];
            v += 1;
        }
        if product != p.extent {
            return None;
        }
        let inner: usize = view[start + 1..v].iter().product();
        let (lo, hi) = (p.held.start, p.held.end);
        if lo == hi {
            empty = true;
            out.push(0..0);
        } else {
            if inner == 0 || lo % inner != 0 || hi % inner != 0 {
                return None;
            }
            out.push(lo / inner..hi / inner);
        }
        out.extend(view[start + 1..v].iter().map(|&n| 0..n));
    }
    // View factors of extent 1 (a dim without factors of its own) are held whole.
    out.extend(view[v..].iter().map(|&n| 0..n));
    if empty {
        if let Some(first) = out.first_mut() {
            *first = 0..0;
        }
    }
    (out.len() == view.len()).then_some(out)
}

fn unsupported(from: &TensorType, to: &TensorType, why: &str) -> String {
    format!(
        "a collective from {} to {}: {why}",
        tpc_ir::syntax::type_string(from),
        tpc_ir::syntax::type_string(to)
    )
}

/// The blocks of a collective from layout `from` to layout `to` between the ranks of `group`
/// (global ranks, in axis order) of a mesh with `sizes`, for every member. With `reduce`,
/// every member sends what it holds of each output element; without, each output element
/// comes from the receiver itself if it holds it, else from one member that does.
pub fn group_blocks(
    from: &TensorType,
    to: &TensorType,
    bindings: &BTreeMap<String, i64>,
    sizes: &[(String, usize)],
    group: &[usize],
    reduce: bool,
) -> Result<GroupBlocks, String> {
    let pieces = |ty: &TensorType| -> Result<Vec<Vec<Vec<FactorPiece>>>, String> {
        group
            .iter()
            .map(|&r| {
                factor_pieces(ty, bindings, &rank_coords(sizes, r)).map_err(|e| e.to_string())
            })
            .collect()
    };
    let (pf, pt) = (pieces(from)?, pieces(to)?);
    let (Some(f0), Some(t0)) = (pf.first(), pt.first()) else {
        return Err("a collective over an empty group".into());
    };
    if f0.len() != t0.len() {
        return Err(unsupported(from, to, "the ranks differ"));
    }
    // Per tensor dim, the view factors.
    let mut per_dim: Vec<Vec<usize>> = Vec::with_capacity(f0.len());
    for (a, b) in f0.iter().zip(t0) {
        let extents = |f: &[FactorPiece]| -> Vec<usize> {
            f.iter().map(|p| p.extent).filter(|&e| e != 1).collect()
        };
        let (ea, eb) = (extents(a), extents(b));
        per_dim.push(refine(&ea, &eb).ok_or_else(|| {
            unsupported(
                from,
                to,
                "its layouts cut one dim into factors that no common factorization refines",
            )
        })?);
    }
    let view: Vec<usize> = per_dim.iter().flatten().copied().collect();
    let boxes = |all: &[Vec<Vec<FactorPiece>>]| -> Result<Vec<Block>, String> {
        all.iter()
            .map(|dims| {
                let mut b = Vec::with_capacity(view.len());
                for (d, p) in dims.iter().enumerate() {
                    b.extend(onto_view(p, &per_dim[d]).ok_or_else(|| {
                        unsupported(from, to, "a rank's piece is not one block of the view")
                    })?);
                }
                Ok(Block(b))
            })
            .collect()
    };
    let (inputs, outputs) = (boxes(&pf)?, boxes(&pt)?);
    let recv_of = |t: usize| -> Result<Vec<Option<Block>>, String> {
        let want = &outputs[t];
        let mut out: Vec<Option<Block>> = vec![None; group.len()];
        if want.is_empty() {
            return Ok(out);
        }
        if reduce {
            for (s, held) in inputs.iter().enumerate() {
                if !held.contains(want) {
                    return Err(format!(
                        "member {s} of the group lacks part of what member {t} reduces"
                    ));
                }
                out[s] = Some(want.clone());
            }
            return Ok(out);
        }
        if inputs[t].contains(want) {
            out[t] = Some(want.clone());
            return Ok(out);
        }
        let mut got = 0usize;
        let mut taken: Vec<usize> = Vec::new();
        for s in std::iter::once(t).chain(0..group.len()) {
            if taken.contains(&s) {
                continue;
            }
            let Some(part) = inputs[s].intersect(want) else {
                continue;
            };
            // Members holding the same piece as one already taken add nothing.
            if taken.iter().any(|&p| inputs[p] == inputs[s]) {
                continue;
            }
            if taken
                .iter()
                .filter_map(|&p| out[p].as_ref())
                .any(|b| b.intersect(&part).is_some())
            {
                return Err(unsupported(
                    from,
                    to,
                    "the members' pieces overlap without being equal",
                ));
            }
            got += part.elems();
            out[s] = Some(part);
            taken.push(s);
        }
        if got != want.elems() {
            return Err(format!(
                "no member of the group holds part of what member {t} needs"
            ));
        }
        Ok(out)
    };
    let recv = (0..group.len())
        .map(recv_of)
        .collect::<Result<Vec<_>, String>>()?;
    Ok(GroupBlocks {
        view,
        inputs,
        outputs,
        recv,
    })
}

/// What every member of a group receives from every other: found once per collective and
/// group, then read by each member ([`GroupBlocks::member`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupBlocks {
    pub view: Vec<usize>,
    pub inputs: Vec<Block>,
    pub outputs: Vec<Block>,
    /// `recv[t][s]`: what member `t` receives from member `s`.
    pub recv: Vec<Vec<Option<Block>>>,
}

impl GroupBlocks {
    /// The blocks of the member at position `me`.
    pub fn member(&self, me: usize) -> Blocks {
        Blocks {
            view: self.view.clone(),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            recv: self.recv[me].clone(),
            send: self.recv.iter().map(|r| r[me].clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(text: &str) -> TensorType {
        let src = format!("mesh tp\nfunc @f(%x: {text}) -> {text} {{\n  return %x\n}}\n");
        let g = tpc_ir::parse(&tpc_ir::SourceFile::new("t.ir", &src)).expect("parses");
        g.ty(g.params()[0]).clone()
    }

    fn sizes(n: usize) -> Vec<(String, usize)> {
        vec![("tp".to_string(), n)]
    }

    #[test]
    fn refinement_keeps_both_factorizations_boundaries() {
        assert_eq!(refine(&[3, 16, 48], &[2304]), Some(vec![3, 16, 48]));
        assert_eq!(refine(&[12, 64], &[3, 4, 64]), Some(vec![3, 4, 64]));
        assert_eq!(refine(&[16, 3, 48], &[3, 16, 48]), None);
        assert_eq!(refine(&[5], &[5]), Some(vec![5]));
    }

    #[test]
    fn an_uneven_allgather_of_fused_heads_is_one_block_per_member() {
        // 12 heads of (3, 12@tp, 4) over 8 ranks: ranks 0-3 hold 2 heads, 4-7 one.
        let from = ty("f32[2, (3, 12@tp, 4)]");
        let to = ty("f32[2, 144]");
        let group: Vec<usize> = (0..8).collect();
        let b = group_blocks(&from, &to, &BTreeMap::new(), &sizes(8), &group, false)
            .unwrap()
            .member(5);
        assert_eq!(b.view, vec![2, 3, 12, 4]);
        assert_eq!(b.inputs[5], Block(vec![0..2, 0..3, 9..10, 0..4]));
        assert_eq!(b.recv[1], Some(Block(vec![0..2, 0..3, 2..4, 0..4])));
        let total: usize = b.recv.iter().flatten().map(Block::elems).sum();
        assert_eq!(total, 2 * 144);
        // Rank 5 sends its one head to everyone.
        assert!(b.send.iter().all(|s| s.as_ref() == Some(&b.inputs[5])));
        // Runs: per batch row and per q/k/v, one run of the member's heads.
        let runs = b.recv[1]
            .as_ref()
            .unwrap()
            .runs(&b.inputs[1], &b.outputs[5]);
        assert_eq!(runs.len(), 6);
        assert_eq!(runs[0].len, 8);
        assert_eq!(runs[1].dst, 48 + 8);
    }

    #[test]
    fn a_reduce_scatter_receives_this_ranks_chunk_from_everyone() {
        let from = ty("f32[8, 6] partial(tp)");
        let to = ty("f32[8@tp, 6]");
        let group: Vec<usize> = (0..4).collect();
        let b = group_blocks(&from, &to, &BTreeMap::new(), &sizes(4), &group, true)
            .unwrap()
            .member(2);
        for s in 0..4 {
            assert_eq!(b.recv[s], Some(Block(vec![4..6, 0..6])));
            let runs = b.recv[s]
                .as_ref()
                .unwrap()
                .runs(&b.inputs[s], &b.outputs[2]);
            assert_eq!(
                runs,
                vec![crate::host::Run {
                    src: 24,
                    dst: 0,
                    len: 12
                }]
            );
        }
    }

    #[test]
    fn a_shard_takes_its_piece_from_itself() {
        let from = ty("f32[4, 10]");
        let to = ty("f32[4, 10@tp]");
        let group: Vec<usize> = (0..3).collect();
        let b = group_blocks(&from, &to, &BTreeMap::new(), &sizes(3), &group, false)
            .unwrap()
            .member(1);
        assert_eq!(b.recv[0], None);
        assert_eq!(b.recv[1], Some(Block(vec![0..4, 4..7])));
        assert_eq!(b.send[0], None);
        assert_eq!(b.send[2], None);
    }
}

//! The blocks of a collective (`tpc_codegen::exchange`) against the element-by-element meaning
//! of a collective, on random layouts: fused dims with several factors, uneven splits, one
//! factor split before and another (or none) after, sums. For every receiving member, the runs
//! of its blocks must move exactly the elements the element walk moves: each output element
//! from the receiver itself where it holds it, else from the first member holding it, or, for
//! a reduction, from every member.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tpc_codegen::exchange::group_blocks;
use tpc_ir::layout::{piece_indices, rank_coords};
use tpc_ir::TensorType;

fn ty(text: &str) -> TensorType {
    let src = format!("mesh tp\nfunc @f(%x: {text}) -> {text} {{\n  return %x\n}}\n");
    let g = tpc_ir::parse(&tpc_ir::SourceFile::new("t.ir", &src)).expect("parses");
    g.ty(g.params()[0]).clone()
}

/// A dim written with its factors, the `split`th of them over `tp` (none when out of range).
fn dim_text(factors: &[usize], split: usize) -> String {
    let parts: Vec<String> = factors
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if i == split {
                format!("{n}@tp")
            } else {
                n.to_string()
            }
        })
        .collect();
    if factors.len() == 1 {
        parts[0].clone()
    } else {
        format!("({})", parts.join(", "))
    }
}

/// Per member, the global indices (per dim) of its piece of `t`.
fn pieces(t: &TensorType, sizes: &[(String, usize)], n: usize) -> Vec<Vec<Vec<usize>>> {
    (0..n)
        .map(|r| {
            piece_indices(t, &BTreeMap::new(), &rank_coords(sizes, r))
                .expect("cuts")
                .1
        })
        .collect()
}

/// Row-major position of global `index` in a piece holding `held` per dim, if it does.
fn position(held: &[Vec<usize>], index: &[usize]) -> Option<usize> {
    let mut at = 0;
    for (d, idx) in held.iter().enumerate() {
        let p = idx.iter().position(|&i| i == index[d])?;
        at = at * idx.len() + p;
    }
    Some(at)
}

/// Every (sender, source offset, destination offset) the element walk moves into member `t`.
fn walk(
    from: &[Vec<Vec<usize>>],
    to: &[Vec<Vec<usize>>],
    t: usize,
    reduce: bool,
) -> Vec<(usize, usize, usize)> {
    let want = &to[t];
    let shape: Vec<usize> = want.iter().map(Vec::len).collect();
    let total: usize = shape.iter().product();
    let mut out = Vec::new();
    let mut local = vec![0usize; shape.len()];
    for dst in 0..total {
        let global: Vec<usize> = local.iter().enumerate().map(|(d, &i)| want[d][i]).collect();
        if reduce {
            for (s, held) in from.iter().enumerate() {
                out.push((s, position(held, &global).expect("held by all"), dst));
            }
        } else {
            let s = std::iter::once(t)
                .chain(0..from.len())
                .find(|&s| position(&from[s], &global).is_some())
                .expect("someone holds it");
            out.push((s, position(&from[s], &global).unwrap_or(0), dst));
        }
        for d in (0..shape.len()).rev() {
            local[d] += 1;
            if local[d] < shape[d] {
                break;
            }
            local[d] = 0;
        }
    }
    out.sort_unstable();
    out
}

fn layouts() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, usize, usize, usize, bool)> {
    (
        prop::collection::vec(1usize..6, 1..4), // factors of dim 0
        prop::collection::vec(1usize..5, 1..3), // factors of dim 1
        0usize..4,                              // which factor `from` splits (flat index)
        0usize..5,                              // which factor `to` splits
        1usize..5,                              // ranks on tp
        any::<bool>(),                          // a reduction (from is a sum over tp)
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn blocks_move_what_the_element_walk_moves(
        (f0, f1, split_from, split_to, n, reduce) in layouts()
    ) {
        let flat = f0.len() + f1.len();
        let text = |split: usize, partial: bool| {
            let (s0, s1) = if split < f0.len() { (split, usize::MAX) } else { (usize::MAX, split - f0.len()) };
            let split_any = split < flat;
            format!(
                "f32[{}, {}]{}",
                dim_text(&f0, if split_any { s0 } else { usize::MAX }),
                dim_text(&f1, if split_any { s1 } else { usize::MAX }),
                if partial { " partial(tp)" } else { "" }
            )
        };
        // A sum is replicated in its dims (the reduction's own layout); the result may split.
        let from = ty(&text(if reduce { usize::MAX } else { split_from }, reduce));
        let to = ty(&text(split_to, false));
        let sizes = vec![("tp".to_string(), n)];
        // A factor split over more ranks than it has is refused by the verifier, not here.
        let small = |split: usize| {
            let all: Vec<usize> = f0.iter().chain(&f1).copied().collect();
            split < flat && all[split] < n
        };
        prop_assume!(!small(split_to) && (reduce || !small(split_from)));
        let group: Vec<usize> = (0..n).collect();
        let blocks = group_blocks(&from, &to, &BTreeMap::new(), &sizes, &group, reduce)
            .map_err(|e| TestCaseError::fail(format!("{} -> {}: {e}", text(split_from, reduce), text(split_to, false))))?;
        let (pf, pt) = (pieces(&from, &sizes, n), pieces(&to, &sizes, n));
        for t in 0..n {
            let mine = blocks.member(t);
            let mut moved: Vec<(usize, usize, usize)> = Vec::new();
            for (s, b) in mine.recv.iter().enumerate() {
                if let Some(b) = b {
                    for r in b.runs(&mine.inputs[s], &mine.outputs[t]) {
                        moved.extend((0..r.len).map(|i| (s, r.src + i, r.dst + i)));
                    }
                }
            }
            moved.sort_unstable();
            prop_assert_eq!(&moved, &walk(&pf, &pt, t, reduce), "member {} of {}", t, n);
            // What t sends is what every other member receives from it.
            for (u, b) in mine.send.iter().enumerate() {
                prop_assert_eq!(b, &blocks.member(u).recv[t]);
            }
        }
    }
}

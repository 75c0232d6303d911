//! The cost model the sharding passes decide by: bytes, with symbols at the values the user
//! bound (`--bind`) and [`UNBOUND_SYMBOL`] for any other.

use std::collections::BTreeMap;

use tpc_ir::ops::CollectiveOp;
use tpc_ir::{Collective, Dim, Graph, Op, TensorType};

/// The value a symbol counts as when the user bound none.
pub const UNBOUND_SYMBOL: i64 = 128;

/// `d` evaluated with `symbols`, unbound symbols at [`UNBOUND_SYMBOL`]; as a float, so that a
/// huge symbolic size compares instead of overflowing.
pub fn extent(d: &Dim, symbols: &BTreeMap<String, i64>) -> f64 {
    let missing: Vec<String> = d
        .symbols()
        .into_iter()
        .filter(|s| !symbols.contains_key(s))
        .collect();
    let value = if missing.is_empty() {
        d.eval(symbols)
    } else {
        let mut bound = symbols.clone();
        bound.extend(missing.into_iter().map(|s| (s, UNBOUND_SYMBOL)));
        d.eval(&bound)
    };
    match value {
        Ok(n) => n as f64,
        // Only an extent that overflows i64 fails here: it is larger than any other.
        Err(_) => f64::MAX,
    }
}

/// The bytes of the whole (global) tensor.
pub fn global_bytes(ty: &TensorType, symbols: &BTreeMap<String, i64>) -> f64 {
    ty.shape
        .iter()
        .fold(ty.dtype.size_bytes() as f64, |acc, d| {
            acc * extent(d, symbols)
        })
}

/// The bytes a collective of `kind` moves on an axis of `n` ranks, counted in whole tensors of
/// `bytes` (the larger side): a gather or a reduce_scatter moves the tensor once, an allreduce
/// twice (a reduce_scatter and a gather), an all_to_all a rank's piece, a `shard` nothing.
pub fn collective_bytes(kind: Collective, bytes: f64, n: Option<i64>) -> f64 {
    match kind {
        Collective::AllReduce(_) => 2.0 * bytes,
        Collective::AllGather | Collective::ReduceScatter(_) => bytes,
        Collective::AllToAll => bytes / n.unwrap_or(2).max(1) as f64,
        Collective::Shard => 0.0,
    }
}

/// What a resharded program moves in all, by [`collective_bytes`]: what decides between
/// whole plans.
pub fn plan_bytes(
    g: &Graph,
    symbols: &BTreeMap<String, i64>,
    axis_sizes: &BTreeMap<String, i64>,
) -> f64 {
    g.values()
        .iter()
        .filter_map(|&v| match g.op(v) {
            Op::Collective(CollectiveOp { kind, axis }) => {
                let operand = g.operand_slice(v).first().copied()?;
                let bytes =
                    global_bytes(g.ty(v), symbols).max(global_bytes(g.ty(operand), symbols));
                Some(collective_bytes(
                    *kind,
                    bytes,
                    axis_sizes.get(axis).copied(),
                ))
            }
            _ => None,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tpc_ir::DType;

    #[test]
    fn bound_and_unbound_symbols() {
        let ty = TensorType::new(
            DType::BF16,
            vec![Dim::symbol("B"), Dim::symbol("S"), 768.into()],
        );
        let bound = BTreeMap::from([("B".to_string(), 2), ("S".to_string(), 128)]);
        assert_eq!(global_bytes(&ty, &bound), 2.0 * 128.0 * 768.0 * 2.0);
        assert_eq!(
            global_bytes(&ty, &BTreeMap::new()),
            128.0 * 128.0 * 768.0 * 2.0
        );
    }
}

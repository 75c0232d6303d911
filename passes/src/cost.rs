//! The cost model the sharding passes decide by: bytes, with symbols at the values the user
//! bound (`--bind`) and [`UNBOUND_SYMBOL`] for any other.

use std::collections::BTreeMap;

use tpc_ir::{Dim, TensorType};

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

//! Where each piece of a sharded tensor lives: per-rank index maps for factor splits, multi-axis
//! splits and uneven splits. Lowering, the executors and the weight-sharding tool all cut and
//! place tensors with these maps, so they agree by construction.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::dim::Dim;
use crate::types::{DimSharding, Sharding, TensorType};

/// A rank's position on the mesh: for each axis, its index and the axis size.
pub type MeshCoords = BTreeMap<String, (usize, usize)>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("mesh axis `{0}` has no coordinate for this rank")]
    UnknownAxis(String),
    #[error("dim of extent {extent} has factors multiplying to {product}")]
    FactorMismatch { extent: usize, product: usize },
    #[error(transparent)]
    Dim(#[from] crate::dim::DimError),
}

/// The coordinates of rank `rank` on a mesh with these axis sizes, first axis major.
pub fn rank_coords(sizes: &[(String, usize)], rank: usize) -> MeshCoords {
    let mut out = MeshCoords::new();
    let mut rest = rank;
    for (name, n) in sizes.iter().rev() {
        let n = (*n).max(1);
        out.insert(name.clone(), (rest % n, n));
        rest /= n;
    }
    out
}

fn bound(d: &crate::dim::Dim, b: &BTreeMap<String, i64>) -> Result<usize, LayoutError> {
    Ok(d.eval(b)? as usize)
}

/// A type's global shape with its symbols bound.
pub fn bound_shape(ty: &TensorType, b: &BTreeMap<String, i64>) -> Result<Vec<usize>, LayoutError> {
    ty.shape.iter().map(|d| bound(d, b)).collect()
}

/// The global shape of a value of type `ty`, and the global indices, per dim, of the piece that
/// the rank at `coords` holds.
pub fn piece_indices(
    ty: &TensorType,
    b: &BTreeMap<String, i64>,
    coords: &MeshCoords,
) -> Result<(Vec<usize>, Vec<Vec<usize>>), LayoutError> {
    let shape = bound_shape(ty, b)?;
    let factors: Vec<Vec<usize>> = ty
        .sharding
        .dims
        .iter()
        .map(|ds| ds.factors.iter().map(|f| bound(&f.extent, b)).collect())
        .collect::<Result<_, _>>()?;
    let idx = local_indices(&shape, &ty.sharding, &factors, coords)?;
    Ok((shape, idx))
}

/// Part `part` of `extent` elements cut into `parts`: the first `extent % parts` parts hold one
/// element more than the others, so an uneven split needs no padding.
pub fn split_range(extent: usize, parts: usize, part: usize) -> Range<usize> {
    let base = extent / parts;
    let extra = extent % parts;
    let start = part * base + part.min(extra);
    start..start + base + usize::from(part < extra)
}

/// This rank's part number and the number of parts for a factor split over `axes` (major first).
fn part_of(axes: &[String], coords: &MeshCoords) -> Result<(usize, usize), LayoutError> {
    let mut part = 0;
    let mut parts = 1;
    for a in axes {
        let &(index, size) = coords
            .get(a)
            .ok_or_else(|| LayoutError::UnknownAxis(a.clone()))?;
        part = part * size + index;
        parts *= size;
    }
    Ok((part, parts))
}

/// The global indices, in order, that this rank holds of a dim of `extent` laid out as `ds`,
/// where `factors` are the bound extents of `ds.factors` (ignored when it has none).
pub fn dim_indices(
    extent: usize,
    ds: &DimSharding,
    factors: &[usize],
    coords: &MeshCoords,
) -> Result<Vec<usize>, LayoutError> {
    if ds.factors.is_empty() {
        return Ok((0..extent).collect());
    }
    let product: usize = factors.iter().product();
    if product != extent || factors.len() != ds.factors.len() {
        return Err(LayoutError::FactorMismatch { extent, product });
    }
    // Row-major over the factors: each factor contributes its local range times its stride.
    let mut out = vec![0usize];
    let mut stride = extent;
    for (f, &n) in ds.factors.iter().zip(factors) {
        stride /= n.max(1);
        let range = if f.axes.is_empty() {
            0..n
        } else {
            let (part, parts) = part_of(&f.axes, coords)?;
            split_range(n, parts, part)
        };
        out = out
            .iter()
            .flat_map(|&base| range.clone().map(move |i| base + i * stride))
            .collect();
    }
    Ok(out)
}

/// The global indices this rank holds along every dim of a tensor with `shape` and `sharding`;
/// `factors[d]` are the bound factor extents of dim `d`.
pub fn local_indices(
    shape: &[usize],
    sharding: &Sharding,
    factors: &[Vec<usize>],
    coords: &MeshCoords,
) -> Result<Vec<Vec<usize>>, LayoutError> {
    let default = DimSharding::default();
    shape
        .iter()
        .enumerate()
        .map(|(d, &n)| {
            let ds = sharding.dims.get(d).unwrap_or(&default);
            dim_indices(
                n,
                ds,
                factors.get(d).map(Vec::as_slice).unwrap_or(&[]),
                coords,
            )
        })
        .collect()
}

/// The extent this rank holds of one factor of `extent` split over `axes` (none: the whole
/// factor). A whole-number extent splits as [`split_range`] does (uneven splits allowed); a
/// symbolic one splits evenly (`S/8`), so a binding that leaves a remainder fails when the
/// piece is bound, naming the expression.
pub fn local_factor(
    extent: &Dim,
    axes: &[String],
    coords: &MeshCoords,
) -> Result<Dim, LayoutError> {
    if axes.is_empty() {
        return Ok(extent.clone());
    }
    let (part, parts) = part_of(axes, coords)?;
    match extent.as_const() {
        Some(n) => Ok(Dim::constant(
            split_range(n.max(0) as usize, parts, part).len() as i64,
        )),
        None => Ok(extent.div(&Dim::constant(parts as i64))?),
    }
}

/// The shape of the piece of a value of type `ty` that the rank at `coords` holds, as dim
/// expressions over the program's symbols (valid for every binding that divides the symbolic
/// splits). With `specialize`, every extent is bound first (the shape is then whole numbers),
/// so uneven splits of symbolic extents are cut as [`split_range`] cuts them.
pub fn local_shape(
    ty: &TensorType,
    coords: &MeshCoords,
    specialize: Option<&BTreeMap<String, i64>>,
) -> Result<Vec<Dim>, LayoutError> {
    let default = DimSharding::default();
    ty.shape
        .iter()
        .enumerate()
        .map(|(d, extent)| {
            let ds = ty.sharding.dims.get(d).unwrap_or(&default);
            if ds.factors.iter().all(|f| f.axes.is_empty()) {
                return match specialize {
                    Some(b) => Ok(Dim::constant(extent.eval(b)?)),
                    None => Ok(extent.clone()),
                };
            }
            let mut out = Dim::constant(1);
            for f in &ds.factors {
                let e = match specialize {
                    Some(b) => Dim::constant(f.extent.eval(b)?),
                    None => f.extent.clone(),
                };
                out = out.mul(&local_factor(&e, &f.axes, coords)?)?;
            }
            Ok(out)
        })
        .collect()
}

/// One factor of a dim as a rank holds it: the factor's extent and the range of it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactorPiece {
    pub extent: usize,
    pub held: Range<usize>,
}

/// Per dim, per factor (a dim without factors is one), what the rank at `coords` holds of a
/// value of type `ty`: the piece's structure, in time proportional to the type's size, never
/// to its elements.
pub fn factor_pieces(
    ty: &TensorType,
    b: &BTreeMap<String, i64>,
    coords: &MeshCoords,
) -> Result<Vec<Vec<FactorPiece>>, LayoutError> {
    let default = DimSharding::default();
    let shape = bound_shape(ty, b)?;
    shape
        .iter()
        .enumerate()
        .map(|(d, &n)| {
            let ds = ty.sharding.dims.get(d).unwrap_or(&default);
            if ds.factors.is_empty() {
                return Ok(vec![FactorPiece {
                    extent: n,
                    held: 0..n,
                }]);
            }
            let mut product = 1usize;
            let pieces = ds
                .factors
                .iter()
                .map(|f| {
                    let e = bound(&f.extent, b)?;
                    product = product.saturating_mul(e);
                    let held = if f.axes.is_empty() {
                        0..e
                    } else {
                        let (part, parts) = part_of(&f.axes, coords)?;
                        split_range(e, parts, part)
                    };
                    Ok(FactorPiece { extent: e, held })
                })
                .collect::<Result<Vec<_>, LayoutError>>()?;
            if product != n {
                return Err(LayoutError::FactorMismatch { extent: n, product });
            }
            Ok(pieces)
        })
        .collect()
}

/// Elements of the piece of a value of type `ty` held at `coords` (structurally).
pub fn piece_elems(
    ty: &TensorType,
    b: &BTreeMap<String, i64>,
    coords: &MeshCoords,
) -> Result<u64, LayoutError> {
    Ok(factor_pieces(ty, b, coords)?
        .iter()
        .flatten()
        .map(|f| f.held.len() as u64)
        .product())
}

/// Flat row-major offsets into the global tensor of every local element, in local row-major
/// order: the gather that cuts a rank's piece, or the scatter that places it back.
pub fn flat_offsets(shape: &[usize], indices: &[Vec<usize>]) -> Vec<usize> {
    let mut out = vec![0usize];
    let mut stride: usize = shape.iter().product();
    for (d, idx) in indices.iter().enumerate() {
        stride /= shape[d].max(1);
        out = out
            .iter()
            .flat_map(|&base| idx.iter().map(move |&i| base + i * stride))
            .collect();
    }
    out
}

/// `ty` with every factor split over several mesh axes written as one factor per axis, the
/// first axis the major one: `64@dp@tp` over `dp = 2, tp = 2` is `(2@dp, 32@tp)`, the very same
/// pieces on every rank, in the form the passes handle axis by axis. `size` gives an axis's size
/// (`None`: unknown, and the factor stays). A known extent that the axes' sizes do not divide
/// stays as written (the verifier refuses it); a symbolic one is taken to divide (as every
/// symbolic split is, checked at bind time).
pub fn one_axis_per_factor(ty: &TensorType, size: &dyn Fn(&str) -> Option<i64>) -> TensorType {
    let mut out = ty.clone();
    for ds in &mut out.sharding.dims {
        if ds.factors.iter().all(|f| f.axes.len() <= 1) {
            continue;
        }
        let mut factors = Vec::with_capacity(ds.factors.len() + 1);
        for f in &ds.factors {
            let sizes: Option<Vec<i64>> = f.axes.iter().map(|a| size(a)).collect();
            let whole = sizes
                .as_ref()
                .filter(|s| f.axes.len() > 1 && s.iter().all(|&n| n >= 1))
                .filter(|s| {
                    let parts: i64 = s.iter().product();
                    f.extent.as_const().is_none_or(|n| n % parts == 0)
                });
            let Some(sizes) = whole else {
                factors.push(f.clone());
                continue;
            };
            let outer: i64 = sizes[..sizes.len() - 1].iter().product();
            let Ok(inner) = f.extent.div(&Dim::constant(outer)) else {
                factors.push(f.clone());
                continue;
            };
            for (a, &n) in f.axes.iter().zip(sizes.iter()).take(sizes.len() - 1) {
                factors.push(crate::types::Factor {
                    extent: Dim::constant(n),
                    axes: vec![a.clone()],
                });
            }
            factors.push(crate::types::Factor {
                extent: inner,
                axes: vec![f.axes[f.axes.len() - 1].clone()],
            });
        }
        ds.factors = factors;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Factor;

    fn coords(axes: &[(&str, usize, usize)]) -> MeshCoords {
        axes.iter()
            .map(|(a, i, n)| (a.to_string(), (*i, *n)))
            .collect()
    }

    fn factors(spec: &[(i64, &[&str])]) -> DimSharding {
        DimSharding {
            factors: spec
                .iter()
                .map(|(n, axes)| Factor {
                    extent: (*n).into(),
                    axes: axes.iter().map(|a| a.to_string()).collect(),
                })
                .collect(),
            closed: false,
        }
    }

    #[test]
    fn uneven_splits_give_the_first_ranks_one_more() {
        let parts: Vec<Range<usize>> = (0..8).map(|p| split_range(12, 8, p)).collect();
        assert_eq!(parts[0], 0..2);
        assert_eq!(parts[3], 6..8);
        assert_eq!(parts[4], 8..9);
        assert_eq!(parts[7], 11..12);
        assert_eq!(
            split_range(3, 8, 5),
            3..3,
            "more ranks than elements: some hold none"
        );
    }

    #[test]
    fn glm_fused_qkv_keeps_whole_heads_of_q_k_and_v() {
        // (3, 16@tp, 48) over tp = 8: rank 3 holds heads 6 and 7 of q, of k and of v.
        let ds = factors(&[(3, &[]), (16, &["tp"]), (48, &[])]);
        let idx = dim_indices(2304, &ds, &[3, 16, 48], &coords(&[("tp", 3, 8)])).unwrap();
        assert_eq!(idx.len(), 3 * 2 * 48);
        assert_eq!(idx[0], 6 * 48);
        assert_eq!(idx[96], 768 + 6 * 48, "then k's heads 6 and 7");
        assert_eq!(idx[192], 1536 + 6 * 48, "then v's");
        // Bloom's (16@tp, 3, 48): one contiguous block of two heads' q, k, v.
        let ds = factors(&[(16, &["tp"]), (3, &[]), (48, &[])]);
        let idx = dim_indices(2304, &ds, &[16, 3, 48], &coords(&[("tp", 3, 8)])).unwrap();
        assert_eq!(idx, (6 * 144..8 * 144).collect::<Vec<_>>());
    }

    #[test]
    fn two_axes_split_one_factor_major_first_and_pieces_tile_the_tensor() {
        let ds = factors(&[(8, &["dp", "tp"])]);
        let idx = dim_indices(8, &ds, &[8], &coords(&[("dp", 1, 2), ("tp", 2, 4)])).unwrap();
        assert_eq!(idx, [6]);
        // Every element of a [4, 2304] tensor with (3, 12@tp, 64)-split rows is held exactly once.
        let mut sharding = Sharding::replicated(2);
        sharding.dims[1] = factors(&[(3, &[]), (12, &["tp"]), (64, &[])]);
        let mut seen = vec![0u8; 4 * 2304];
        for rank in 0..8 {
            let idx = local_indices(
                &[4, 2304],
                &sharding,
                &[vec![], vec![3, 12, 64]],
                &coords(&[("tp", rank, 8)]),
            )
            .unwrap();
            for o in flat_offsets(&[4, 2304], &idx) {
                seen[o] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
    }

    #[test]
    fn mismatched_factors_and_missing_axes_are_errors() {
        let ds = factors(&[(3, &[]), (16, &["tp"])]);
        assert!(matches!(
            dim_indices(50, &ds, &[3, 16], &coords(&[("tp", 0, 2)])),
            Err(LayoutError::FactorMismatch { .. })
        ));
        assert!(matches!(
            dim_indices(48, &ds, &[3, 16], &MeshCoords::new()),
            Err(LayoutError::UnknownAxis(_))
        ));
    }

    #[test]
    fn a_factor_over_two_axes_is_one_factor_per_axis_with_the_same_pieces() {
        use crate::types::Factor;
        let ty = TensorType {
            dtype: crate::dtype::DType::F32,
            shape: vec![Dim::constant(64)],
            sharding: Sharding {
                dims: vec![DimSharding {
                    factors: vec![Factor {
                        extent: Dim::constant(64),
                        axes: vec!["dp".into(), "tp".into()],
                    }],
                    closed: false,
                }],
                partial: Vec::new(),
            },
        };
        let size = |a: &str| match a {
            "dp" => Some(2),
            "tp" => Some(2),
            _ => None,
        };
        let split = one_axis_per_factor(&ty, &size);
        let extents: Vec<(i64, Vec<String>)> = split.sharding.dims[0]
            .factors
            .iter()
            .map(|f| (f.extent.as_const().unwrap_or(0), f.axes.clone()))
            .collect();
        assert_eq!(
            extents,
            [(2, vec!["dp".to_string()]), (32, vec!["tp".to_string()])]
        );
        let sizes = vec![("dp".to_string(), 2), ("tp".to_string(), 2)];
        let b = BTreeMap::new();
        for r in 0..4 {
            let c = rank_coords(&sizes, r);
            let want = piece_indices(&ty, &b, &c).expect("cut").1;
            let got = piece_indices(&split, &b, &c).expect("cut").1;
            assert_eq!(want, got, "rank {r}");
        }
        // 63 over 4 ranks does not divide: kept as written.
        let mut odd = ty.clone();
        odd.shape = vec![Dim::constant(63)];
        odd.sharding.dims[0].factors[0].extent = Dim::constant(63);
        assert_eq!(one_axis_per_factor(&odd, &size), odd);
    }
}

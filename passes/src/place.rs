//! Where a value lies on each mesh axis, in terms the sharding passes share: splits of a dim seen
//! as `[outer, size, inner]`, pending reductions, and how a split maps onto an op's factors.

use std::collections::BTreeMap;

use tpc_ir::rule::{FactorId, FactorRule};
use tpc_ir::{Dim, Factor, Graph, Partial, ReduceOp, TensorType};

/// Where a value lies on one mesh axis.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Place {
    /// Dim `dim` seen as `[outer, size, inner]`, its `size` part divided over the axis.
    Split {
        dim: usize,
        outer: Dim,
        size: Dim,
        inner: Dim,
    },
    /// A pending reduction.
    Partial(ReduceOp),
    /// Used by a factor split over several axes at once: kept as written, not propagated.
    Fixed,
}

/// A value's places, by mesh axis.
pub(crate) type Places = BTreeMap<String, Place>;

pub(crate) fn product(dims: &[Dim]) -> Dim {
    dims.iter()
        .fold(Dim::constant(1), |acc, d| acc.mul(d).unwrap_or(acc))
}

/// The places a type's sharding already gives.
pub(crate) fn places_of(ty: &TensorType) -> Places {
    let mut out = Places::new();
    for (dim, ds) in ty.sharding.dims.iter().enumerate() {
        let extents: Vec<Dim> = ds.factors.iter().map(|f| f.extent.clone()).collect();
        for (j, f) in ds.factors.iter().enumerate() {
            match f.axes.as_slice() {
                [] => {}
                [axis] => {
                    let place = Place::Split {
                        dim,
                        outer: product(&extents[..j]),
                        size: f.extent.clone(),
                        inner: product(&extents[j + 1..]),
                    };
                    out.insert(axis.clone(), place);
                }
                several => {
                    for a in several {
                        out.insert(a.clone(), Place::Fixed);
                    }
                }
            }
        }
    }
    for p in &ty.sharding.partial {
        out.insert(p.axis.clone(), Place::Partial(p.op));
    }
    out
}

/// A split as the op's rule sees it: factor `f` seen as `[outer, size, inner]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FactorSplit {
    pub(crate) factor: FactorId,
    pub(crate) outer: Dim,
    pub(crate) size: Dim,
    pub(crate) inner: Dim,
}

/// The rule factor of a dim (made of `factors`, outer first) that holds the split
/// `[outer, size, inner]` entirely, with the split in that factor's terms.
pub(crate) fn locate(
    rule: &FactorRule,
    factors: &[FactorId],
    outer: &Dim,
    size: &Dim,
    inner: &Dim,
) -> Option<FactorSplit> {
    // A dim that is one factor holds any split of itself (the common case: no arithmetic).
    if let [f] = factors {
        return Some(FactorSplit {
            factor: *f,
            outer: outer.clone(),
            size: size.clone(),
            inner: inner.clone(),
        });
    }
    let extents = extents_of(rule, factors);
    for (j, &f) in factors.iter().enumerate() {
        let before = product(&extents[..j]);
        let after = product(&extents[j + 1..]);
        let Some(o) = outer.exact_div(&before) else {
            continue;
        };
        let Some(i) = inner.exact_div(&after) else {
            continue;
        };
        if o.mul(size).ok().and_then(|p| p.mul(&i).ok()).as_ref() == Some(&extents[j]) {
            return Some(FactorSplit {
                factor: f,
                outer: o,
                size: size.clone(),
                inner: i,
            });
        }
    }
    None
}

/// The place in a tensor's dim (made of `factors`) of a split of factor `s.factor`.
pub(crate) fn place_in(
    rule: &FactorRule,
    dim: usize,
    factors: &[FactorId],
    s: &FactorSplit,
) -> Option<Place> {
    let j = factors.iter().position(|&f| f == s.factor)?;
    if factors.len() == 1 {
        return Some(Place::Split {
            dim,
            outer: s.outer.clone(),
            size: s.size.clone(),
            inner: s.inner.clone(),
        });
    }
    let extents = extents_of(rule, factors);
    Some(Place::Split {
        dim,
        outer: product(&extents[..j]).mul(&s.outer).ok()?,
        size: s.size.clone(),
        inner: s.inner.mul(&product(&extents[j + 1..])).ok()?,
    })
}

/// A dim's factors for a split `[outer, size, inner]` with `size` over `axis` (ones dropped).
pub(crate) fn split_factors(outer: &Dim, size: &Dim, inner: &Dim, axis: &str) -> Vec<Factor> {
    let one = Dim::constant(1);
    let whole = |extent: &Dim| Factor {
        extent: extent.clone(),
        axes: vec![],
    };
    let mut factors = Vec::new();
    if *outer != one {
        factors.push(whole(outer));
    }
    factors.push(Factor {
        extent: size.clone(),
        axes: vec![axis.to_string()],
    });
    if *inner != one {
        factors.push(whole(inner));
    }
    factors
}

/// The extents of `factors` in `rule`.
fn extents_of(rule: &FactorRule, factors: &[FactorId]) -> Vec<Dim> {
    factors
        .iter()
        .map(|&f| rule.factors[f].extent.clone())
        .collect()
}

/// One axis's split of a dim: the axis, and the dim seen as `[outer, size, inner]`.
pub(crate) type DimSplit<'a> = (&'a str, &'a Dim, &'a Dim, &'a Dim);

/// The splits of dim `dim` among `places`, in axis order.
pub(crate) fn splits_of_dim(places: &Places, dim: usize) -> Vec<DimSplit<'_>> {
    places
        .iter()
        .filter_map(|(axis, p)| match p {
            Place::Split {
                dim: d,
                outer,
                size,
                inner,
            } if *d == dim => Some((axis.as_str(), outer, size, inner)),
            _ => None,
        })
        .collect()
}

/// Writes the places a value gained into its type's sharding. A dim split over several axes
/// gets the factors of all its splits at once (`(2@dp, 32@tp)` for a split of 64 over `dp` at
/// `[1, 2, 32]` and over `tp` at `[2, 32, 1]`), so that one axis's split does not overwrite
/// another's.
pub(crate) fn write_back(ty: &mut TensorType, before: &Places, after: &Places) {
    let mut dims = std::collections::BTreeSet::new();
    for (axis, p) in after {
        if before.contains_key(axis) {
            continue;
        }
        match p {
            Place::Split { dim, .. } => {
                dims.insert(*dim);
            }
            Place::Partial(op) => ty.sharding.partial.push(Partial {
                axis: axis.clone(),
                op: *op,
            }),
            Place::Fixed => {}
        }
    }
    for dim in dims {
        let splits = splits_of_dim(after, dim);
        let factors = nested_factors(&splits).unwrap_or_else(|| {
            // Splits that do not nest: the last new one, as written alone.
            let (axis, outer, size, inner) = splits
                .iter()
                .rev()
                .find(|(a, ..)| !before.contains_key(*a))
                .copied()
                .unwrap_or(splits[0]);
            split_factors(outer, size, inner, axis)
        });
        if let Some(ds) = ty.sharding.dims.get_mut(dim) {
            ds.factors = factors;
        }
    }
}

/// The factors of a dim split at each `[outer, size, inner]` over its axis, when the splits
/// nest (each lies inside the previous one's inner part): outer first, whole gaps between.
pub(crate) fn nested_factors(splits: &[DimSplit<'_>]) -> Option<Vec<Factor>> {
    let mut rest: Vec<DimSplit<'_>> = splits.to_vec();
    let mut ordered = Vec::with_capacity(rest.len());
    // The outermost split first: the one whose block (outer × size) divides every other's outer.
    while !rest.is_empty() {
        let i = rest.iter().position(|(_, o, s, _)| {
            let block = o.mul(s).ok();
            rest.iter().all(|(_, o2, ..)| {
                block
                    .as_ref()
                    .is_some_and(|b| o2 == o || o2.exact_div(b).is_some())
            })
        })?;
        ordered.push(rest.remove(i));
    }
    let one = Dim::constant(1);
    let whole = |extent: Dim| Factor {
        extent,
        axes: vec![],
    };
    let mut factors = Vec::new();
    let mut seen = one.clone();
    for (k, (axis, outer, size, inner)) in ordered.iter().enumerate() {
        let gap = outer.exact_div(&seen)?;
        if gap != one {
            factors.push(whole(gap));
        }
        factors.push(Factor {
            extent: (*size).clone(),
            axes: vec![axis.to_string()],
        });
        seen = outer.mul(size).ok()?;
        if k + 1 == ordered.len() && **inner != one {
            factors.push(whole((*inner).clone()));
        }
    }
    // Every split must describe the same dim.
    let total = seen.mul(ordered.last()?.3).ok()?;
    ordered
        .iter()
        .all(|(_, o, s, i)| o.mul(s).and_then(|x| x.mul(i)).ok().as_ref() == Some(&total))
        .then_some(factors)
}

/// The names a graph's values have, for making new ones without scanning the graph each time.
#[derive(Default)]
pub(crate) struct Names(std::collections::BTreeSet<String>);

impl Names {
    pub(crate) fn of(g: &Graph) -> Names {
        Names(g.values().iter().map(|&v| g.name(v).to_string()).collect())
    }

    /// `base`, or `base2`, `base3`, … : the first name not taken, now taken.
    pub(crate) fn fresh(&mut self, base: &str) -> String {
        let name = if self.0.contains(base) {
            (2..)
                .map(|i| format!("{base}{i}"))
                .find(|n| !self.0.contains(n))
                .unwrap_or_else(|| base.to_string())
        } else {
            base.to_string()
        };
        self.0.insert(name.clone());
        name
    }
}

/// Whether two places on an axis of `n` ranks (when known) put the same elements on each rank:
/// an even split of `[outer, size, inner]` is the same as one of `[outer, n, inner * size / n]`
/// (`128@tp` over 4 ranks is `(4@tp, 32)`).
pub(crate) fn same_layout(a: &Place, b: &Place, n: Option<i64>) -> bool {
    if a == b {
        return true;
    }
    let canonical = |p: &Place| -> Option<(usize, Dim, Dim)> {
        let Place::Split {
            dim,
            outer,
            size,
            inner,
        } = p
        else {
            return None;
        };
        let n = Dim::constant(n?);
        let rest = size.exact_div(&n)?;
        Some((*dim, outer.clone(), inner.mul(&rest).ok()?))
    };
    matches!((canonical(a), canonical(b)), (Some(x), Some(y)) if x == y)
}

/// As [`locate`], and else, with the axis size `n` known, the factor whose even split over `n`
/// ranks puts the same elements on each rank: `2304@tp` over 8 ranks is Bloom's
/// `(16@tp, 3, 48)` (each rank holds 288 = 2 × 3 × 48 rows either way).
pub(crate) fn locate_even(
    rule: &FactorRule,
    factors: &[FactorId],
    outer: &Dim,
    size: &Dim,
    inner: &Dim,
    n: Option<i64>,
) -> Option<FactorSplit> {
    if let Some(s) = locate(rule, factors, outer, size, inner) {
        return Some(s);
    }
    // Without the axis size no two writings can be told equal; a one-factor dim has no other.
    n?;
    if factors.len() < 2 {
        return None;
    }
    let have = Place::Split {
        dim: 0,
        outer: outer.clone(),
        size: size.clone(),
        inner: inner.clone(),
    };
    let extents = extents_of(rule, factors);
    factors.iter().enumerate().find_map(|(k, &f)| {
        let candidate = Place::Split {
            dim: 0,
            outer: product(&extents[..k]),
            size: extents[k].clone(),
            inner: product(&extents[k + 1..]),
        };
        same_layout(&have, &candidate, n).then(|| FactorSplit {
            factor: f,
            outer: Dim::constant(1),
            size: extents[k].clone(),
            inner: Dim::constant(1),
        })
    })
}

//! Symbolic dims: polynomials over run-time symbols (`B`, `S*4`, `3*E`, `S/8`, `S + T`) with
//! rational coefficients, kept in a canonical form so that equal dims compare and print equal.

use std::collections::BTreeMap;
use std::fmt;

/// Largest magnitude a coefficient may reach while dims are combined; beyond it the arithmetic
/// reports overflow instead of wrapping.
const COEFF_LIMIT: i128 = 1 << 100;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DimError {
    #[error("dim arithmetic overflowed")]
    Overflow,
    #[error("division by zero")]
    DivisionByZero,
    #[error("can only divide by a product of numbers and symbols, not by `{0}`")]
    NonMonomialDivisor(String),
    #[error("symbol `{0}` has no value; bind it (for example `--bind {0}=128`)")]
    Unbound(String),
    #[error("`{expr}` is {value} with the bound symbols, which is not a whole number")]
    NotInteger { expr: String, value: String },
    #[error("`{expr}` is negative ({value}) with the bound symbols")]
    Negative { expr: String, value: i128 },
}

/// A reduced fraction with a positive denominator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Ratio {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

impl Ratio {
    fn new(num: i128, den: i128) -> Result<Ratio, DimError> {
        if den == 0 {
            return Err(DimError::DivisionByZero);
        }
        let g = gcd(num, den).max(1);
        let (mut n, mut d) = (num / g, den / g);
        if d < 0 {
            n = -n;
            d = -d;
        }
        if n.abs() > COEFF_LIMIT || d > COEFF_LIMIT {
            return Err(DimError::Overflow);
        }
        Ok(Ratio { num: n, den: d })
    }
    fn int(n: i128) -> Ratio {
        Ratio { num: n, den: 1 }
    }
    fn add(self, o: Ratio) -> Result<Ratio, DimError> {
        let num = self
            .num
            .checked_mul(o.den)
            .and_then(|a| o.num.checked_mul(self.den).and_then(|b| a.checked_add(b)))
            .ok_or(DimError::Overflow)?;
        let den = self.den.checked_mul(o.den).ok_or(DimError::Overflow)?;
        Ratio::new(num, den)
    }
    fn mul(self, o: Ratio) -> Result<Ratio, DimError> {
        let num = self.num.checked_mul(o.num).ok_or(DimError::Overflow)?;
        let den = self.den.checked_mul(o.den).ok_or(DimError::Overflow)?;
        Ratio::new(num, den)
    }
}

/// A product of symbols with non-zero integer exponents, sorted by name.
type Monomial = Vec<(String, i32)>;

/// Largest power a symbol may be raised to: far beyond any real shape, small enough that
/// evaluating it stays cheap.
const MAX_EXPONENT: i32 = 64;

fn mono_mul(a: &Monomial, b: &Monomial, sign: i32) -> Result<Monomial, DimError> {
    let mut exps: BTreeMap<String, i32> = a.iter().cloned().collect();
    for (s, e) in b {
        let x = exps.entry(s.clone()).or_insert(0);
        *x += sign * e;
        if x.abs() > MAX_EXPONENT {
            return Err(DimError::Overflow);
        }
    }
    Ok(exps.into_iter().filter(|(_, e)| *e != 0).collect())
}

/// A dim's terms, sorted by monomial: a small sorted vector (most dims have one term, and a
/// constant's monomial allocates nothing), compared, ordered and hashed as the sorted list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
struct Terms(Vec<(Monomial, Ratio)>);

impl Terms {
    fn find(&self, m: &Monomial) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(m))
    }

    fn get(&self, m: &Monomial) -> Option<&Ratio> {
        self.find(m).ok().map(|i| &self.0[i].1)
    }

    fn insert(&mut self, m: Monomial, r: Ratio) {
        match self.find(&m) {
            Ok(i) => self.0[i].1 = r,
            Err(i) => self.0.insert(i, (m, r)),
        }
    }

    fn remove(&mut self, m: &Monomial) {
        if let Ok(i) = self.find(m) {
            self.0.remove(i);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Monomial, &Ratio)> {
        self.0.iter().map(|(m, r)| (m, r))
    }

    fn keys(&self) -> impl Iterator<Item = &Monomial> {
        self.0.iter().map(|(m, _)| m)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Ratio> {
        self.0.iter_mut().map(|(_, r)| r)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(Monomial, Ratio)> for Terms {
    fn from_iter<I: IntoIterator<Item = (Monomial, Ratio)>>(iter: I) -> Terms {
        let mut v: Vec<(Monomial, Ratio)> = iter.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        Terms(v)
    }
}

impl<'a> IntoIterator for &'a Terms {
    type Item = (&'a Monomial, &'a Ratio);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Monomial, Ratio)>,
        fn(&'a (Monomial, Ratio)) -> (&'a Monomial, &'a Ratio),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(m, r)| (m, r))
    }
}

/// A dim: a sum of terms `coefficient * symbols`, canonical (no zero terms, sorted).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dim {
    terms: Terms,
}

impl Dim {
    pub fn constant(n: i64) -> Dim {
        let mut terms = Terms::default();
        if n != 0 {
            terms.insert(Vec::new(), Ratio::int(n as i128));
        }
        Dim { terms }
    }

    pub fn symbol(name: &str) -> Dim {
        let mut terms = Terms::default();
        terms.insert(vec![(name.to_string(), 1)], Ratio::int(1));
        Dim { terms }
    }

    /// The value when the dim needs no symbols.
    pub fn as_const(&self) -> Option<i64> {
        if self.terms.is_empty() {
            return Some(0);
        }
        if self.terms.len() == 1 {
            if let Some(r) = self.terms.get(&Vec::new()) {
                if r.den == 1 {
                    return i64::try_from(r.num).ok();
                }
            }
        }
        None
    }

    /// The symbol when the dim is exactly one symbol (`B`), used to bind symbols from shapes.
    pub fn as_symbol(&self) -> Option<&str> {
        if self.terms.len() != 1 {
            return None;
        }
        let (mono, coeff) = self.terms.iter().next()?;
        match (mono.as_slice(), coeff) {
            ([(s, 1)], Ratio { num: 1, den: 1 }) => Some(s),
            _ => None,
        }
    }

    pub fn is_const(&self) -> bool {
        self.as_const().is_some()
    }

    /// Whether the dim is a whole number for every binding of its symbols to whole numbers:
    /// integer coefficients and no symbol in a denominator.
    pub fn is_whole(&self) -> bool {
        self.terms
            .iter()
            .all(|(m, c)| c.den == 1 && m.iter().all(|(_, e)| *e > 0))
    }

    /// `self / other` when that is a whole-number dim (`48*S / 16` is `3*S`), else `None`.
    pub fn exact_div(&self, other: &Dim) -> Option<Dim> {
        self.div(other).ok().filter(Dim::is_whole)
    }

    /// The symbols the dim mentions, sorted.
    pub fn symbols(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .terms
            .keys()
            .flatten()
            .map(|(s, _)| s.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn add(&self, other: &Dim) -> Result<Dim, DimError> {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let sum = match terms.get(m) {
                Some(prev) => prev.add(*c)?,
                None => *c,
            };
            if sum.num == 0 {
                terms.remove(m);
            } else {
                terms.insert(m.clone(), sum);
            }
        }
        Ok(Dim { terms })
    }

    pub fn neg(&self) -> Dim {
        let terms = self
            .terms
            .iter()
            .map(|(m, c)| {
                (
                    m.clone(),
                    Ratio {
                        num: -c.num,
                        den: c.den,
                    },
                )
            })
            .collect();
        Dim { terms }
    }

    pub fn sub(&self, other: &Dim) -> Result<Dim, DimError> {
        self.add(&other.neg())
    }

    pub fn mul(&self, other: &Dim) -> Result<Dim, DimError> {
        // Fast paths: shapes are mostly constants and single symbols, and this runs for every
        // element count the verifier and inference compute.
        if let Some(c) = other.as_const() {
            return self.scale(c);
        }
        if let Some(c) = self.as_const() {
            return other.scale(c);
        }
        let mut out = Dim::default();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &other.terms {
                let mut t = Terms::default();
                t.insert(mono_mul(ma, mb, 1)?, ca.mul(*cb)?);
                out = out.add(&Dim { terms: t })?;
            }
        }
        Ok(out)
    }

    /// Every coefficient times `c`.
    fn scale(&self, c: i64) -> Result<Dim, DimError> {
        match c {
            0 => Ok(Dim::default()),
            1 => Ok(self.clone()),
            _ => {
                let mut terms = self.terms.clone();
                for r in terms.values_mut() {
                    *r = r.mul(Ratio::int(c as i128))?;
                }
                Ok(Dim { terms })
            }
        }
    }

    /// Exact division by a monomial (`S/8`, `3*E/E`).
    pub fn div(&self, other: &Dim) -> Result<Dim, DimError> {
        if other.terms.is_empty() {
            return Err(DimError::DivisionByZero);
        }
        if other.terms.len() != 1 {
            return Err(DimError::NonMonomialDivisor(other.to_string()));
        }
        let (mb, cb) = other.terms.iter().next().expect("one term");
        let inv = Ratio::new(cb.den, cb.num)?;
        let mut out = Dim::default();
        for (ma, ca) in &self.terms {
            let mut t = Terms::default();
            t.insert(mono_mul(ma, mb, -1)?, ca.mul(inv)?);
            out = out.add(&Dim { terms: t })?;
        }
        Ok(out)
    }

    /// The value with every symbol bound; must be a non-negative whole number.
    pub fn eval(&self, bindings: &BTreeMap<String, i64>) -> Result<i64, DimError> {
        let mut total = Ratio::int(0);
        for (mono, coeff) in &self.terms {
            let mut v = *coeff;
            for (s, e) in mono {
                let x = *bindings
                    .get(s)
                    .ok_or_else(|| DimError::Unbound(s.clone()))? as i128;
                for _ in 0..e.unsigned_abs() {
                    v = if *e > 0 {
                        v.mul(Ratio::int(x))?
                    } else {
                        v.mul(Ratio::new(1, x)?)?
                    };
                }
            }
            total = total.add(v)?;
        }
        if total.den != 1 {
            return Err(DimError::NotInteger {
                expr: self.to_string(),
                value: format!("{}/{}", total.num, total.den),
            });
        }
        if total.num < 0 {
            return Err(DimError::Negative {
                expr: self.to_string(),
                value: total.num,
            });
        }
        i64::try_from(total.num).map_err(|_| DimError::Overflow)
    }
}

fn write_term(
    f: &mut fmt::Formatter<'_>,
    mono: &Monomial,
    coeff: Ratio,
    leading: bool,
) -> fmt::Result {
    let num = if leading { coeff.num } else { coeff.num.abs() };
    let mut parts: Vec<String> = Vec::new();
    if num.abs() != 1 || mono.iter().all(|(_, e)| *e < 0) {
        parts.push(num.to_string());
    } else if num == -1 {
        parts.push("-1".to_string());
    }
    for (s, e) in mono.iter().filter(|(_, e)| *e > 0) {
        for _ in 0..*e {
            parts.push(s.clone());
        }
    }
    f.write_str(&parts.join("*"))?;
    if coeff.den != 1 {
        write!(f, "/{}", coeff.den)?;
    }
    for (s, e) in mono.iter().filter(|(_, e)| *e < 0) {
        for _ in 0..e.unsigned_abs() {
            write!(f, "/{s}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Dim {
    /// Symbolic terms first (in symbol order, those added before those subtracted), the
    /// constant last: `2*S + 1`, `B*S`, `3*E/2`, `B*S - B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        let symbolic = |positive: bool| {
            self.terms
                .iter()
                .filter(move |(m, c)| !m.is_empty() && (c.num > 0) == positive)
        };
        let mut ordered: Vec<(&Monomial, &Ratio)> = symbolic(true).collect();
        ordered.extend(symbolic(false));
        ordered.extend(self.terms.iter().filter(|(m, _)| m.is_empty()));
        for (i, (mono, coeff)) in ordered.into_iter().enumerate() {
            if i > 0 {
                f.write_str(if coeff.num < 0 { " - " } else { " + " })?;
            }
            write_term(f, mono, *coeff, i == 0)?;
        }
        Ok(())
    }
}

impl From<i64> for Dim {
    fn from(n: i64) -> Dim {
        Dim::constant(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_compare_equal() {
        let s = Dim::symbol("S");
        let three_s = Dim::constant(3).mul(&s).unwrap();
        let s_times_3 = s.mul(&Dim::constant(3)).unwrap();
        assert_eq!(three_s, s_times_3);
        assert_eq!(three_s.to_string(), "3*S");
        let half = three_s.div(&Dim::constant(2)).unwrap();
        assert_eq!(half.to_string(), "3*S/2");
        let sum = s.add(&Dim::constant(1)).unwrap();
        assert_eq!(sum.to_string(), "S + 1");
        assert_eq!(s.sub(&s).unwrap(), Dim::constant(0));
        // Added terms before subtracted ones, whatever the symbol order.
        let b = Dim::symbol("B");
        let shifted = b.mul(&s).unwrap().sub(&b).unwrap();
        assert_eq!(shifted.to_string(), "B*S - B");
    }

    #[test]
    fn eval_checks_whole_numbers() {
        let s = Dim::symbol("S");
        let d = s.div(&Dim::constant(8)).unwrap();
        let mut b = BTreeMap::new();
        b.insert("S".to_string(), 128);
        assert_eq!(d.eval(&b).unwrap(), 16);
        b.insert("S".to_string(), 100);
        assert!(matches!(d.eval(&b), Err(DimError::NotInteger { .. })));
        assert!(matches!(
            Dim::symbol("B").eval(&b),
            Err(DimError::Unbound(_))
        ));
    }

    #[test]
    fn huge_powers_are_an_overflow_not_a_hang() {
        let s = Dim::symbol("S");
        let mut d = s.clone();
        let mut result = Ok(());
        for _ in 0..100 {
            match d.mul(&s) {
                Ok(next) => d = next,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        assert_eq!(result, Err(DimError::Overflow));
    }

    #[test]
    fn division_by_sums_is_rejected() {
        let st = Dim::symbol("S").add(&Dim::symbol("T")).unwrap();
        assert!(matches!(
            Dim::constant(4).div(&st),
            Err(DimError::NonMonomialDivisor(_))
        ));
        assert!(matches!(
            Dim::constant(4).div(&Dim::constant(0)),
            Err(DimError::DivisionByZero)
        ));
    }
}

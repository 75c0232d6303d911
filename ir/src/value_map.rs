//! A map from values to `T`, stored densely by value index: what the hot per-value tables use
//! instead of a `BTreeMap<ValueId, T>` (no tree walk, no node allocation per entry). Iteration is
//! by value index, the order a `BTreeMap<ValueId, _>` iterates in, so it stays deterministic.

use crate::graph::ValueId;

#[derive(Clone, Debug, PartialEq)]
pub struct ValueMap<T> {
    slots: Vec<Option<T>>,
    /// How many values are present.
    len: usize,
    /// The id of the value in each slot, for iteration.
    ids: Vec<Option<ValueId>>,
}

impl<T> Default for ValueMap<T> {
    fn default() -> Self {
        ValueMap {
            slots: Vec::new(),
            len: 0,
            ids: Vec::new(),
        }
    }
}

impl<T> ValueMap<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, v: &ValueId) -> Option<&T> {
        self.slots.get(v.index()).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, v: &ValueId) -> Option<&mut T> {
        self.slots.get_mut(v.index()).and_then(Option::as_mut)
    }

    pub fn contains_key(&self, v: &ValueId) -> bool {
        self.get(v).is_some()
    }

    /// Sets `v`'s entry; returns the one it replaces.
    pub fn insert(&mut self, v: ValueId, x: T) -> Option<T> {
        let i = v.index();
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
            self.ids.resize(i + 1, None);
        }
        let old = self.slots[i].replace(x);
        if old.is_none() {
            self.len += 1;
        }
        self.ids[i] = Some(v);
        old
    }

    pub fn remove(&mut self, v: &ValueId) -> Option<T> {
        let old = self.slots.get_mut(v.index()).and_then(Option::take);
        if old.is_some() {
            self.len -= 1;
            self.ids[v.index()] = None;
        }
        old
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries in value-index order.
    pub fn iter(&self) -> impl Iterator<Item = (ValueId, &T)> {
        self.ids
            .iter()
            .zip(&self.slots)
            .filter_map(|(id, x)| Some(((*id)?, x.as_ref()?)))
    }
}

impl<T: Default> ValueMap<T> {
    /// `v`'s entry, inserted as the default when absent.
    pub fn get_or_default(&mut self, v: ValueId) -> &mut T {
        if !self.contains_key(&v) {
            self.insert(v, T::default());
        }
        self.slots[v.index()].get_or_insert_with(T::default)
    }
}

impl<T> std::ops::Index<&ValueId> for ValueMap<T> {
    type Output = T;
    fn index(&self, v: &ValueId) -> &T {
        self.get(v).expect("a value the map holds")
    }
}

impl<T> FromIterator<(ValueId, T)> for ValueMap<T> {
    fn from_iter<I: IntoIterator<Item = (ValueId, T)>>(iter: I) -> Self {
        let mut m = ValueMap::new();
        for (v, x) in iter {
            m.insert(v, x);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dim::Dim;
    use crate::dtype::DType;
    use crate::graph::Graph;
    use crate::mesh::Mesh;
    use crate::span::Span;
    use crate::types::TensorType;

    #[test]
    fn acts_as_a_btreemap_of_values() {
        let mut g = Graph::new("f", Mesh::default());
        let ty = TensorType::new(DType::F32, vec![Dim::constant(2)]);
        let vs: Vec<ValueId> = (0..5)
            .map(|i| g.add_param(format!("p{i}"), ty.clone(), Span::DUMMY))
            .collect();
        let mut m = ValueMap::new();
        let mut want = std::collections::BTreeMap::new();
        for (k, &i) in [3usize, 0, 4, 3].iter().enumerate() {
            assert_eq!(m.insert(vs[i], k), want.insert(vs[i], k));
        }
        assert_eq!(m.remove(&vs[4]), want.remove(&vs[4]));
        assert_eq!(m.remove(&vs[1]), None);
        assert_eq!(m.len(), want.len());
        let got: Vec<(ValueId, usize)> = m.iter().map(|(v, &x)| (v, x)).collect();
        let wanted: Vec<(ValueId, usize)> = want.iter().map(|(&v, &x)| (v, x)).collect();
        assert_eq!(got, wanted, "the same entries in the same order");
        assert_eq!(m[&vs[3]], 3);
        *m.get_or_default(vs[2]) += 7;
        assert_eq!(m.get(&vs[2]), Some(&7));
        assert!(!m.contains_key(&vs[4]));
    }
}

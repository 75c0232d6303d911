//! The reference kernels, by family.

pub mod linalg;
pub mod lookup;
pub mod pointwise;
pub mod random;
pub mod reduce;
pub mod shape;

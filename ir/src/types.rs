//! Tensor types: dtype, global shape, and how the tensor is laid over the mesh.

use crate::dim::Dim;
use crate::dtype::DType;

/// How a pending reduction combines the ranks' pieces of a partial tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }
}

/// One factor of a dim; a dim is the row-major product of its factors. The factor is divided
/// over `axes` (major to minor), or whole on every rank when `axes` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Factor {
    pub extent: Dim,
    pub axes: Vec<String>,
}

/// How one dim is laid over the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct DimSharding {
    /// Empty: the dim is one unsplit factor. Otherwise the factors, which multiply to the dim.
    pub factors: Vec<Factor>,
    /// A closed dim must stay as written; an open one may be sharded further by propagation.
    pub closed: bool,
}

impl DimSharding {
    pub fn is_trivial(&self) -> bool {
        !self.closed && self.factors.iter().all(|f| f.axes.is_empty()) && self.factors.len() <= 1
    }

    /// Mesh axes this dim is split over, outer factor first.
    pub fn axes(&self) -> impl Iterator<Item = &String> {
        self.factors.iter().flat_map(|f| f.axes.iter())
    }
}

/// A pending reduction over one mesh axis.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Partial {
    pub axis: String,
    pub op: ReduceOp,
}

/// How a tensor is laid over the mesh. Axes not mentioned are replicated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Sharding {
    /// One entry per dim (same length as the shape).
    pub dims: Vec<DimSharding>,
    pub partial: Vec<Partial>,
}

impl Sharding {
    pub fn replicated(rank: usize) -> Sharding {
        Sharding {
            dims: vec![DimSharding::default(); rank],
            partial: Vec::new(),
        }
    }

    pub fn is_replicated(&self) -> bool {
        self.partial.is_empty() && self.dims.iter().all(|d| d.is_trivial())
    }

    /// Every mesh axis the tensor names, in order of appearance (split axes, then partial).
    pub fn axes(&self) -> Vec<&String> {
        let mut out: Vec<&String> = self.dims.iter().flat_map(|d| d.axes()).collect();
        out.extend(self.partial.iter().map(|p| &p.axis));
        out
    }
}

/// The type of a value: element type, global (logical) shape, sharding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
    pub sharding: Sharding,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> TensorType {
        let sharding = Sharding::replicated(shape.len());
        TensorType {
            dtype,
            shape,
            sharding,
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Same dtype and shape, whatever the sharding.
    pub fn same_value_type(&self, other: &TensorType) -> bool {
        self.dtype == other.dtype && self.shape == other.shape
    }

    /// Shape as text: `[B, S, 768]`.
    pub fn shape_string(&self) -> String {
        shape_string(&self.shape)
    }
}

pub fn shape_string(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

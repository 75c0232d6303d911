//! tpc-ir: the IR of the tpc tensor-parallel compiler.
//!
//! dtypes, symbolic dims, meshes, shardings, the ops (each defined once, in `ops/`), the graph, its text form
//! (parser and printer), the verifier, and diagnostics rendered like rustc's.

pub mod decompose;
pub mod diag;
pub mod dim;
pub mod dtype;
pub mod graph;
pub mod infer;
pub mod layout;
pub mod mesh;
pub mod ops;
pub mod rule;
pub mod span;
pub mod syntax;
pub mod types;
pub mod value_map;
pub mod verify;

pub use diag::{Diagnostic, Severity, SourceFile};
pub use dim::{Dim, DimError};
pub use dtype::DType;
pub use graph::{Comments, Graph, Node, ValueId};
pub use mesh::{Mesh, MeshAxis};
pub use ops::{AttrValue, BinaryOp, Collective, GeluApprox, Op, OpDef, ReduceKind, UnaryOp};
pub use rule::{check_rule, factor_rule, rule_of, FactorKind, FactorRule, PartialFlow};
pub use span::Span;
pub use syntax::{parse, print, PrintMode};
pub use types::{DimSharding, Factor, Partial, ReduceOp, Sharding, TensorType};
pub use value_map::ValueMap;

/// Errors of the IR crate that are not source diagnostics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Parse or verify errors, each located in the source.
    #[error("{} error(s) in the program", .0.len())]
    Diagnostics(Vec<Diagnostic>),
    #[error(transparent)]
    Dim(#[from] DimError),
    #[error(transparent)]
    Mesh(#[from] mesh::MeshError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

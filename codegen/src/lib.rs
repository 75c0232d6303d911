//! tpc-codegen: segmentation, kernel IR, CUDA C writer and host programs.
//!
//! Empty for now: code generation is the subject of a later issue (see `docs/` and DESIGN.md).

//! tpc

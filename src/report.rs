//! The compile report's sharding part: every collective with its size on one device and totals
//! by kind, and apart from them the local slices (`shard`: each rank keeps its piece, nothing
//! moves), as JSON that embedders parse. `compile` adds the kernels and, from the memory plan
//! of the host programs, the one figure of peak bytes per rank (`peak_bytes_per_rank`, and
//! its maximum `peak_bytes_per_device`).

use std::collections::BTreeMap;
use tpc_ir::ops::CollectiveOp;

use serde_json::{json, Map, Value};
use tpc_ir::layout::{piece_elems, rank_coords, MeshCoords};
use tpc_ir::{Graph, Op, TensorType, ValueId};

use crate::{Error, Result};

/// Bytes of the piece of a value of type `ty` held at `c`.
fn local_bytes(ty: &TensorType, b: &BTreeMap<String, i64>, c: &MeshCoords) -> Result<u64> {
    let n = piece_elems(ty, b, c).map_err(|e| Error::Usage(e.to_string()))?;
    Ok(n * ty.dtype.size_bytes())
}

/// The report of a compiled graph on `devices` devices with symbols bound by `bindings`.
pub fn report(g: &Graph, devices: i64, bindings: &BTreeMap<String, i64>) -> Result<Value> {
    let sizes = g.mesh.resolve(Some(devices))?;
    let world: usize = sizes.iter().map(|(_, n)| *n as usize).product();
    let usizes: Vec<(String, usize)> = sizes
        .iter()
        .map(|(n, s)| (n.clone(), *s as usize))
        .collect();
    let ranks: Vec<MeshCoords> = (0..world.max(1)).map(|r| rank_coords(&usizes, r)).collect();
    // The largest piece over all ranks (the first ranks of an uneven split hold more).
    let size_of = |v: ValueId| -> Result<u64> {
        ranks
            .iter()
            .map(|c| local_bytes(g.ty(v), bindings, c))
            .try_fold(0u64, |m, x| x.map(|x| m.max(x)))
    };
    let mut collectives = Vec::new();
    let mut local_slices = Vec::new();
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for &v in g.values() {
        if let Op::Collective(CollectiveOp { kind, axis }) = g.op(v) {
            let bytes = size_of(v)?;
            let entry = json!({"kind": kind.name(), "axis": axis, "value": format!("%{}", g.name(v)), "bytes_per_device": bytes});
            if !kind.moves_data() {
                // A local slice: the piece kept is `bytes`, the bytes moved none.
                local_slices.push(entry);
                continue;
            }
            collectives.push(entry);
            let t = totals.entry(kind.name().to_string()).or_default();
            t.0 += 1;
            t.1 += bytes;
        }
    }
    let mesh: Map<String, Value> = sizes.iter().map(|(n, s)| (n.clone(), json!(s))).collect();
    let totals: Map<String, Value> = totals
        .into_iter()
        .map(|(k, (count, bytes))| (k, json!({"count": count, "bytes_per_device": bytes})))
        .collect();
    Ok(json!({
        "devices": devices,
        "mesh": mesh,
        "collectives": collectives,
        "totals": totals,
        "local_slices": local_slices,
    }))
}

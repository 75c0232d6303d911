//! safetensors files in and out, keyed by value names without `%`.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use tpc_ir::DType;

use crate::tensor::{Data, Tensor};
use crate::{Error, Result};

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

pub fn load_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| io_err(path, format!("not a valid safetensors file ({e})")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let t = match view.dtype() {
            StDtype::F32 => Tensor::from_f32(
                DType::F32,
                shape,
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )?,
            StDtype::BF16 => Tensor::from_f32(
                DType::BF16,
                shape,
                raw.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )?,
            StDtype::F16 => Tensor::from_f32(
                DType::F16,
                shape,
                raw.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )?,
            StDtype::I64 => Tensor::from_i64(
                shape,
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            )?,
            StDtype::BOOL => Tensor::from_bool(shape, raw.iter().map(|&b| b != 0).collect())?,
            other => {
                return Err(io_err(path, format!("tensor `{name}` has dtype {other:?}; tpc reads F32, BF16, F16, I64 and BOOL")));
            }
        };
        out.insert(name, t);
    }
    Ok(out)
}

fn to_bytes(t: &Tensor) -> (StDtype, Vec<u8>) {
    match (t.dtype(), t.data()) {
        (DType::BF16, Data::Float(v)) => (
            StDtype::BF16,
            v.iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        ),
        (DType::F16, Data::Float(v)) => (
            StDtype::F16,
            v.iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
        ),
        (_, Data::Float(v)) => (
            StDtype::F32,
            v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        ),
        (_, Data::I64(v)) => (
            StDtype::I64,
            v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        ),
        (_, Data::Bool(v)) => (StDtype::BOOL, v.iter().map(|&x| x as u8).collect()),
    }
}

pub fn save_safetensors(path: &Path, tensors: &[(String, &Tensor)]) -> Result<()> {
    let mut seen = BTreeMap::new();
    let encoded: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let (dt, bytes) = to_bytes(t);
            (n.clone(), dt, t.shape().to_vec(), bytes)
        })
        .collect();
    let mut views = Vec::new();
    for (name, dt, shape, bytes) in &encoded {
        if seen.insert(name.clone(), ()).is_some() {
            return Err(io_err(path, format!("two outputs are named `{name}`")));
        }
        let view = TensorView::new(*dt, shape.clone(), bytes).map_err(|e| io_err(path, e))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize_to_file(views, None, path).map_err(|e| io_err(path, e))
}

//! Tensors' values as the bytes a device buffer holds: little-endian, bf16 and f16 as their
//! bits, bool as one byte. One codec for the CPU executor's arena, the CUDA executor's uploads
//! and downloads, and the emulator's buffers.

use tpc_ir::DType;

use crate::tensor::Data;
use crate::{Error, Result};

/// Elements in `data`.
pub(crate) fn len(data: &Data) -> usize {
    match data {
        Data::Float(v) => v.len(),
        Data::I64(v) => v.len(),
        Data::Bool(v) => v.len(),
    }
}

/// `raw` as f32, where it is 4-aligned and the host is little-endian (the bytes are).
pub(crate) fn as_f32(raw: &[u8]) -> Option<&[f32]> {
    // SAFETY: every bit pattern is an f32; `align_to` gives the aligned middle.
    let (pre, v, post) = unsafe { raw.align_to::<f32>() };
    (pre.is_empty() && post.is_empty() && cfg!(target_endian = "little")).then_some(v)
}

/// The bytes of `v` as an f32 buffer holds them, where the host is little-endian.
pub(crate) fn f32_bytes(v: &[f32]) -> Option<&[u8]> {
    // SAFETY: an f32 is 4 initialized bytes without padding, and u8 has alignment 1, so the
    // middle is the whole slice.
    let (_, raw, _) = unsafe { v.align_to::<u8>() };
    cfg!(target_endian = "little").then_some(raw)
}

/// `raw` as i64, where it is 8-aligned and the host is little-endian (the bytes are).
pub(crate) fn as_i64(raw: &[u8]) -> Option<&[i64]> {
    // SAFETY: every bit pattern is an i64; `align_to` gives the aligned middle.
    let (pre, v, post) = unsafe { raw.align_to::<i64>() };
    (pre.is_empty() && post.is_empty() && cfg!(target_endian = "little")).then_some(v)
}

/// `raw` as mutable f32, where it is 4-aligned and the host is little-endian.
pub(crate) fn as_f32_mut(raw: &mut [u8]) -> Option<&mut [f32]> {
    // SAFETY: every bit pattern is an f32 (and every f32 is 4 bytes); `align_to_mut` gives the
    // aligned middle.
    let (pre, v, post) = unsafe { raw.align_to_mut::<f32>() };
    (pre.is_empty() && post.is_empty() && cfg!(target_endian = "little")).then_some(v)
}

/// `raw` as mutable i64, where it is 8-aligned and the host is little-endian.
pub(crate) fn as_i64_mut(raw: &mut [u8]) -> Option<&mut [i64]> {
    // SAFETY: every bit pattern is an i64 (and every i64 is 8 bytes); `align_to_mut` gives the
    // aligned middle.
    let (pre, v, post) = unsafe { raw.align_to_mut::<i64>() };
    (pre.is_empty() && post.is_empty() && cfg!(target_endian = "little")).then_some(v)
}

/// The values the bytes `raw` of a `dtype` buffer hold.
pub(crate) fn decode(dtype: DType, raw: &[u8]) -> Data {
    match dtype {
        DType::F32 => Data::Float(match as_f32(raw) {
            Some(v) => v.to_vec(),
            None => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        }),
        DType::BF16 => Data::Float(
            raw.chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        ),
        DType::F16 => Data::Float(
            raw.chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        ),
        DType::I64 => Data::I64(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        DType::Bool => Data::Bool(raw.iter().map(|&x| x != 0).collect()),
    }
}

/// Writes `data` as a `dtype` buffer's bytes into `out`, which must be exactly that long.
pub(crate) fn encode_into(dtype: DType, data: &Data, out: &mut [u8]) -> Result<()> {
    if len(data) * dtype.size_bytes() as usize != out.len() {
        return Err(Error::Internal(format!(
            "{} values of {dtype} do not fill {} bytes",
            len(data),
            out.len()
        )));
    }
    encode_part(dtype, data, 0, out)
}

/// Writes the values of `data` from element `from` on, as many as fill `out` (a whole number
/// of `dtype` elements, which `data` must hold), as a `dtype` buffer's bytes.
pub(crate) fn encode_part(dtype: DType, data: &Data, from: usize, out: &mut [u8]) -> Result<()> {
    let size = dtype.size_bytes() as usize;
    let n = out.len() / size;
    if n * size != out.len() || from + n > len(data) {
        return Err(Error::Internal(format!(
            "{} bytes of {dtype} from element {from} of {} values",
            out.len(),
            len(data)
        )));
    }
    match (dtype, data) {
        (DType::F32, Data::Float(v)) => {
            let v = &v[from..from + n];
            match as_f32_mut(out) {
                Some(dst) => dst.copy_from_slice(v),
                None => {
                    for (c, x) in out.chunks_exact_mut(4).zip(v) {
                        c.copy_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        (DType::BF16, Data::Float(v)) => {
            for (c, x) in out.chunks_exact_mut(2).zip(&v[from..]) {
                c.copy_from_slice(&half::bf16::from_f32(*x).to_bits().to_le_bytes());
            }
        }
        (DType::F16, Data::Float(v)) => {
            for (c, x) in out.chunks_exact_mut(2).zip(&v[from..]) {
                c.copy_from_slice(&half::f16::from_f32(*x).to_bits().to_le_bytes());
            }
        }
        (DType::I64, Data::I64(v)) => {
            for (c, x) in out.chunks_exact_mut(8).zip(&v[from..]) {
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
        (DType::Bool, Data::Bool(v)) => {
            for (c, x) in out.iter_mut().zip(&v[from..]) {
                *c = u8::from(*x);
            }
        }
        (d, _) => return Err(Error::Internal(format!("values of the wrong kind for {d}"))),
    }
    Ok(())
}

/// `data` as a `dtype` buffer's bytes.
pub(crate) fn encode(dtype: DType, data: &Data) -> Result<Vec<u8>> {
    let mut out = vec![0u8; len(data) * dtype.size_bytes() as usize];
    encode_into(dtype, data, &mut out)?;
    Ok(out)
}

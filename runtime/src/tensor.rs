//! Host tensors: row-major, with floats held as f32 values already rounded to their dtype.

use tpc_ir::DType;

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// f32, bf16 and f16 tensors; bf16/f16 values are exactly representable in their dtype.
    Float(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Data,
}

/// Rounds an f32 to the nearest value of `dtype` (round to nearest even), as storing it would.
#[inline]
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    fn check_len(shape: &[usize], len: usize) -> Result<()> {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or(Error::Overflow)?;
        if n != len {
            return Err(Error::Shape(format!(
                "shape {shape:?} holds {n} elements, but {len} values were given"
            )));
        }
        Ok(())
    }

    /// A float tensor; values are rounded to `dtype`.
    pub fn from_f32(dtype: DType, shape: Vec<usize>, mut values: Vec<f32>) -> Result<Tensor> {
        if !dtype.is_float() {
            return Err(Error::Shape(format!(
                "from_f32 needs a float dtype, not {dtype}"
            )));
        }
        Self::check_len(&shape, values.len())?;
        if dtype != DType::F32 {
            values.iter_mut().for_each(|x| *x = round_to(dtype, *x));
        }
        Ok(Tensor {
            dtype,
            shape,
            data: Data::Float(values),
        })
    }

    pub fn from_i64(shape: Vec<usize>, values: Vec<i64>) -> Result<Tensor> {
        Self::check_len(&shape, values.len())?;
        Ok(Tensor {
            dtype: DType::I64,
            shape,
            data: Data::I64(values),
        })
    }

    pub fn from_bool(shape: Vec<usize>, values: Vec<bool>) -> Result<Tensor> {
        Self::check_len(&shape, values.len())?;
        Ok(Tensor {
            dtype: DType::Bool,
            shape,
            data: Data::Bool(values),
        })
    }

    /// A float tensor from values already rounded to `dtype` (kernels' results).
    pub(crate) fn float(dtype: DType, shape: Vec<usize>, values: Vec<f32>) -> Tensor {
        Tensor {
            dtype,
            shape,
            data: Data::Float(values),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn size_bytes(&self) -> u64 {
        self.numel() as u64 * self.dtype.size_bytes()
    }

    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The values as f32 (bool as 0/1, i64 converted), for statistics and comparisons.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::Float(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8 as f32).collect(),
        }
    }

    pub(crate) fn floats(&self) -> Result<&[f32]> {
        match &self.data {
            Data::Float(v) => Ok(v),
            _ => Err(Error::Internal(format!(
                "expected a float tensor, got {}",
                self.dtype
            ))),
        }
    }

    pub(crate) fn ints(&self) -> Result<&[i64]> {
        match &self.data {
            Data::I64(v) => Ok(v),
            _ => Err(Error::Internal(format!(
                "expected an i64 tensor, got {}",
                self.dtype
            ))),
        }
    }

    pub(crate) fn bools(&self) -> Result<&[bool]> {
        match &self.data {
            Data::Bool(v) => Ok(v),
            _ => Err(Error::Internal(format!(
                "expected a bool tensor, got {}",
                self.dtype
            ))),
        }
    }

    /// The mean of all elements (NaN for an empty tensor).
    pub fn mean(&self) -> f64 {
        let v = self.to_f32_vec();
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    }

    /// The largest magnitude (0 for an empty tensor; NaN if any element is NaN).
    pub fn max_abs(&self) -> f64 {
        self.to_f32_vec().iter().fold(0.0f64, |m, &x| {
            if x.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(x.abs() as f64)
            }
        })
    }

    /// Same data viewed with another shape of equal element count.
    pub(crate) fn reshaped(&self, shape: Vec<usize>) -> Tensor {
        Tensor {
            dtype: self.dtype,
            shape,
            data: self.data.clone(),
        }
    }
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The source offset of every element of a tensor of shape `shape` (row-major order) read
/// through `strides`: strides of a permutation, or 0 on broadcast dims.
pub fn strided_offsets(shape: &[usize], strides: &[usize]) -> Vec<usize> {
    let n = numel(shape);
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    let mut offset = 0usize;
    for _ in 0..n {
        out.push(offset);
        // Increment the multi-index from the innermost dim, keeping the offset in step.
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            offset += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            offset -= strides[d] * shape[d];
            idx[d] = 0;
        }
    }
    out
}

/// Gathers `src` (with `shape`) into the order `perm`: result dim `i` is source dim `perm[i]`.
pub fn permute_vec<T: Copy>(src: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let st = strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let out_st: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    strided_offsets(&out_shape, &out_st)
        .into_iter()
        .map(|o| src[o])
        .collect()
}

//! A model's float tensors as candle tensors (f32) on the evaluation device, and the running sum greedy search builds candidates from there.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use half::{bf16, f16};

use model_soup::format::{Checkpoint, Dtype};
use model_soup::soup::Soup;

use super::arch::{Architecture, TensorKind};
use super::error::{CandleContext, Error, Result};

/// The float tensors one model is built from: name → f32 tensor, all on one device.
#[derive(Clone, Debug)]
pub struct Weights {
    device: Device,
    tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    /// The float tensors of `checkpoint`, on `device`, widened (or for F64 rounded) to f32 there.
    /// Each tensor crosses to the device once, in its stored dtype.
    pub fn from_checkpoint(checkpoint: &Checkpoint, device: &Device) -> Result<Weights> {
        let mut tensors = BTreeMap::new();
        for t in checkpoint.tensors().filter(|t| t.info.dtype.is_averaged()) {
            let value = upload(t.info.dtype, t.data, &t.info.shape, device)
                .and_then(|x| x.to_dtype(DType::F32))
                .context(|| cannot_place(checkpoint.path().display(), t.name()))?;
            tensors.insert(t.name().to_string(), value);
        }
        Ok(Weights {
            device: device.clone(),
            tensors,
        })
    }

    /// The float tensors of a soup the core merged in memory, on `device`, as f32.
    pub fn from_soup(soup: &Soup, device: &Device) -> Result<Weights> {
        let mut tensors = BTreeMap::new();
        for e in soup.entries.iter().filter(|e| e.dtype.is_averaged()) {
            let bytes = &soup.data[e.begin as usize..e.end as usize];
            let value = upload(e.dtype, bytes, &e.shape, device)
                .and_then(|x| x.to_dtype(DType::F32))
                .context(|| cannot_place("the merged soup", &e.name))?;
            tensors.insert(e.name.clone(), value);
        }
        Ok(Weights {
            device: device.clone(),
            tensors,
        })
    }

    /// The device the tensors are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One tensor, if there is one of that name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// One tensor's f32 values, copied to the host (for tests and reports, never for scoring).
    pub fn values(&self, name: &str) -> Result<Option<Vec<f32>>> {
        self.tensors
            .get(name)
            .map(|t| t.flatten_all().and_then(|t| t.to_vec1::<f32>()))
            .transpose()
            .context(|| format!("cannot read tensor '{name}' back from the device"))
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|k| k.as_str())
    }

    /// These weights on `device`: the same tensors when they are already there, else a copy.
    pub fn to_device(&self, device: &Device) -> Result<Weights> {
        if self.device.same_device(device) {
            return Ok(self.clone());
        }
        let mut tensors = BTreeMap::new();
        for (name, t) in &self.tensors {
            let moved = t
                .to_device(device)
                .context(|| cannot_place("the weights", name))?;
            tensors.insert(name.clone(), moved);
        }
        Ok(Weights {
            device: device.clone(),
            tensors,
        })
    }

    /// A `VarBuilder` over these tensors, for [`Architecture::build`]; models read them as
    /// `dtype` (converted on the device when it isn't f32).
    pub fn var_builder(&self, dtype: DType) -> VarBuilder<'static> {
        let map: HashMap<String, Tensor> = self
            .tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        VarBuilder::from_tensors(map, dtype, &self.device)
    }
}

/// Equal names, shapes and f32 bits (NaNs compare by bits too). For tests.
impl PartialEq for Weights {
    fn eq(&self, other: &Weights) -> bool {
        self.tensors.len() == other.tensors.len()
            && self
                .tensors
                .iter()
                .zip(&other.tensors)
                .all(|((n, a), (m, b))| {
                    let bits = |t: &Tensor| {
                        t.flatten_all()
                            .and_then(|t| t.to_vec1::<f32>())
                            .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                            .ok()
                    };
                    n == m && a.dims() == b.dims() && bits(a).is_some() && bits(a) == bits(b)
                })
    }
}

fn cannot_place(file: impl std::fmt::Display, tensor: &str) -> String {
    format!("{file}: cannot place tensor '{tensor}' on the device")
}

/// One stored float tensor as a candle tensor on `device`, in its stored dtype: the bytes are
/// decoded on the host (they need not be aligned) and cross to the device once.
fn upload(
    dtype: Dtype,
    bytes: &[u8],
    shape: &[u64],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    match dtype {
        Dtype::F32 => Tensor::from_vec(decode::<f32>(bytes), shape, device),
        Dtype::F64 => Tensor::from_vec(decode::<f64>(bytes), shape, device),
        Dtype::F16 => Tensor::from_vec(decode::<f16>(bytes), shape, device),
        Dtype::BF16 => Tensor::from_vec(decode::<bf16>(bytes), shape, device),
        other => Err(candle_core::Error::Msg(format!(
            "{other} is not a float dtype the evaluator reads"
        ))),
    }
}

/// Little-endian values from bytes of any alignment (a safetensors file only promises byte
/// offsets).
fn decode<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let mut out = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
    bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(bytes);
    out
}

fn shape_of(shape: &[u64]) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}

/// Checks, from the header alone, that `checkpoint` has every tensor `arch` needs with the
/// right shape and a float dtype. Integer buffers are optional but, when present, must fit too.
pub fn check_fits(checkpoint: &Checkpoint, arch: &dyn Architecture) -> Result<()> {
    for spec in arch.tensors() {
        let bad = |reason: String| Error::Arch {
            path: checkpoint.path().to_path_buf(),
            tensor: spec.name.clone(),
            arch: arch.name(),
            reason,
        };
        let Some(t) = checkpoint.tensor(&spec.name) else {
            if spec.kind == TensorKind::Float {
                return Err(bad("is missing".into()));
            }
            continue;
        };
        let shape = shape_of(&t.info.shape);
        if shape != spec.shape {
            return Err(bad(format!(
                "has shape {shape:?}, but {} expects {:?}",
                arch.name(),
                spec.shape
            )));
        }
        let float = t.info.dtype.is_averaged();
        if spec.kind == TensorKind::Float && !float {
            return Err(bad(format!(
                "is {}, but it must be a float tensor (F32, F16, BF16 or F64)",
                t.info.dtype
            )));
        }
        if spec.kind == TensorKind::Buffer && float {
            return Err(bad(format!(
                "is {}, but it is an integer buffer",
                t.info.dtype
            )));
        }
    }
    Ok(())
}

/// The sum of several ingredients' float tensors, on the evaluation device, to which one more
/// ingredient can be added with one pass over that ingredient's tensors.
///
/// Greedy search keeps the sum of the chosen ingredients; each candidate is that sum plus the
/// candidate, divided by the new count. Sums are f64, like the core's accumulator for f32
/// soups, so that a soup of identical inputs is exactly the input and candidates agree with
/// the merged soup to the last f32 bit or so. Every step (widening, adding, dividing,
/// rounding to f32) is exact or correctly rounded, on the CPU and on a GPU alike, so a
/// candidate's weights are the same bits on either. On a GPU a step costs one upload of the
/// new ingredient in its stored dtype; the sum never leaves the device. Device memory: the
/// chosen sum and the candidate's sum (8 bytes a parameter each) and the candidate's f32
/// weights (4).
#[derive(Clone)]
pub struct RunningSum {
    count: usize,
    device: Device,
    sums: BTreeMap<String, Tensor>,
}

impl RunningSum {
    /// A sum of one ingredient, on `device`.
    pub fn new(first: &Checkpoint, device: &Device) -> Result<RunningSum> {
        let mut sums = BTreeMap::new();
        for t in first.tensors().filter(|t| t.info.dtype.is_averaged()) {
            let value = upload(t.info.dtype, t.data, &t.info.shape, device)
                .and_then(|x| x.to_dtype(DType::F64))
                .context(|| cannot_place(first.path().display(), t.name()))?;
            sums.insert(t.name().to_string(), value);
        }
        Ok(RunningSum {
            count: 1,
            device: device.clone(),
            sums,
        })
    }

    /// How many ingredients are summed.
    pub fn count(&self) -> usize {
        self.count
    }

    /// This sum plus `other`'s float tensors. The ingredients must share names and shapes,
    /// which [`check_fits`] and the core's plan have already checked; a mismatch is an error.
    pub fn plus(&self, other: &Checkpoint) -> Result<RunningSum> {
        let mut sums = BTreeMap::new();
        for (name, acc) in &self.sums {
            let mismatch = |what: String| {
                Error::Format(model_soup::Error::Plan(format!(
                    "{}: tensor '{name}' {what}, unlike the ingredients before it; soups need fine-tunes of one model",
                    other.path().display()
                )))
            };
            let t = other
                .tensor(name)
                .ok_or_else(|| mismatch("is missing".into()))?;
            if shape_of(&t.info.shape) != acc.dims() || !t.info.dtype.is_averaged() {
                return Err(mismatch(format!("is {} {:?}", t.info.dtype, t.info.shape)));
            }
            let sum = upload(t.info.dtype, t.data, &t.info.shape, &self.device)
                .and_then(|x| x.to_dtype(DType::F64))
                .and_then(|x| acc + x)
                .context(|| cannot_place(other.path().display(), name))?;
            sums.insert(name.clone(), sum);
        }
        Ok(RunningSum {
            count: self.count + 1,
            device: self.device.clone(),
            sums,
        })
    }

    /// The uniform average of the summed ingredients, rounded to f32, on the sum's device.
    pub fn mean(&self) -> Result<Weights> {
        // A true division, not a multiplication by 1/n, so that n identical inputs give the
        // input back exactly.
        let n = Tensor::new(self.count as f64, &self.device)
            .context(|| "cannot place the ingredient count on the device".to_string())?;
        let mut tensors = BTreeMap::new();
        for (name, sum) in &self.sums {
            let mean = sum
                .broadcast_div(&n)
                .and_then(|m| m.to_dtype(DType::F32))
                .context(|| format!("cannot average tensor '{name}' on the device"))?;
            tensors.insert(name.clone(), mean);
        }
        Ok(Weights {
            device: self.device.clone(),
            tensors,
        })
    }
}

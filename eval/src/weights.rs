//! A model's float tensors as candle tensors (f32) on the evaluation device, and the running sum greedy search builds candidates from.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use half::{bf16, f16};
use rayon::prelude::*;

use model_soup::format::{Accumulator, Checkpoint, Dtype};
use model_soup::soup::{Soup, Warning};

use super::arch::{Architecture, Layout, TensorKind};
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
            // The mapped pages count in the process's RSS until released; with k
            // ingredients read in turn they would add up to k model sizes.
            checkpoint.release(&t, 0..t.data.len());
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
/// right shape and a float dtype, and no tensor `arch` doesn't know. Integer buffers are
/// optional but, when present, must fit too.
pub fn check_fits(checkpoint: &Checkpoint, arch: &dyn Architecture) -> Result<()> {
    let specs = arch.tensors();
    let bad = |tensor: &str, reason: String| Error::Arch {
        path: checkpoint.path().to_path_buf(),
        tensor: tensor.to_string(),
        arch: arch.describe(),
        reason,
    };
    // An ingredient of another family than `arch` is named as one: "conv1.weight is missing"
    // alone doesn't say that the wrong model was given.
    let other_family = || {
        Layout::of(checkpoint)
            .ok()
            .and_then(|layout| crate::arch::recognise(&layout))
            .filter(|f| *f != arch.family())
            .map(|f| format!("it is a {f} checkpoint, not {}: every ingredient must be of the architecture --arch names (with --arch auto, the first ingredient's)", arch.family()))
    };
    let with_hint = |reason: String, hint: Option<String>| match hint {
        Some(hint) => format!("{reason}; {hint}"),
        None => reason,
    };
    for spec in &specs {
        let Some(t) = checkpoint.tensor(&spec.name) else {
            if spec.kind == TensorKind::Float {
                // Why it is missing, when that is known: a wrapper's prefix, a LoRA adapter, or
                // another family.
                let names: Vec<&str> = checkpoint.tensors().map(|t| t.name()).collect();
                let hint =
                    crate::arch::wrapper::missing_hint(&names, &spec.name).or_else(other_family);
                return Err(bad(&spec.name, with_hint("is missing".into(), hint)));
            }
            continue;
        };
        let shape = shape_of(&t.info.shape);
        if shape != spec.shape {
            let reason = format!(
                "has shape {shape:?}, but {} expects {:?}",
                arch.describe(),
                spec.shape
            );
            return Err(bad(&spec.name, with_hint(reason, other_family())));
        }
        let float = t.info.dtype.is_averaged();
        if spec.kind == TensorKind::Float && !float {
            return Err(bad(
                &spec.name,
                format!(
                    "is {}, but it must be a float tensor (F32, F16, BF16 or F64)",
                    t.info.dtype
                ),
            ));
        }
        if spec.kind == TensorKind::Buffer && float {
            return Err(bad(
                &spec.name,
                format!("is {}, but it is an integer buffer", t.info.dtype),
            ));
        }
    }
    let known: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    if let Some(extra) = checkpoint.tensors().find(|t| !known.contains(t.name())) {
        return Err(bad(
            extra.name(),
            format!(
                "is not part of {}; was the checkpoint saved from another model, or with a wrapper's prefix?",
                arch.describe()
            ),
        ));
    }
    Ok(())
}

/// How a [`RunningSum`] holds the chosen ingredients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SumStrategy {
    /// References to the members' mapped files; [`RunningSum::mean`] reads them tensor by
    /// tensor on the host. Memory: the candidate's f32 weights, about the model's f32 size,
    /// whatever the number of members. The CPU's strategy.
    Members,
    /// The members' f64 sums as tensors on the device; a step uploads the new ingredient once
    /// and [`RunningSum::mean`] divides there. Device memory: two f64 sums and the candidate's
    /// f32 weights, 20 bytes a parameter. A GPU's strategy: the host never reads the members
    /// again.
    DeviceSums,
}

impl SumStrategy {
    /// The strategy for evaluating on `device`: [`SumStrategy::Members`] on the CPU,
    /// [`SumStrategy::DeviceSums`] elsewhere.
    pub fn for_device(device: &Device) -> SumStrategy {
        if device.is_cpu() {
            SumStrategy::Members
        } else {
            SumStrategy::DeviceSums
        }
    }
}

/// The uniform soup of several ingredients, to which one more ingredient can be added; each
/// greedy candidate is the chosen ingredients plus one, divided by the new count.
///
/// Each element is summed in f64 in member order and divided once (a true division), like the
/// core's accumulator for f32 soups, so a soup of identical inputs is exactly the input and
/// candidates agree with the merged soup to the last f32 bit or so. Every step (widening,
/// adding, dividing, rounding to f32) is exact or correctly rounded under either
/// [`SumStrategy`], on the CPU and on a GPU alike, so a candidate's weights are the same bits
/// whichever holds the sum.
#[derive(Clone)]
pub struct RunningSum<'a> {
    members: Vec<&'a Checkpoint>,
    device: Device,
    /// [`SumStrategy::DeviceSums`]: name → the members' f64 sum on `device`.
    sums: Option<BTreeMap<String, Tensor>>,
}

/// Elements summed per step: bounds the f64 scratch of each worker.
const CHUNK: usize = 1 << 16;

impl<'a> RunningSum<'a> {
    /// A soup of one ingredient, evaluated on `device`, held as
    /// [`SumStrategy::for_device`] says.
    pub fn new(first: &'a Checkpoint, device: &Device) -> Result<RunningSum<'a>> {
        RunningSum::with_strategy(first, device, SumStrategy::for_device(device))
    }

    /// A soup of one ingredient held as `strategy` says (tests compare the two on the CPU).
    pub fn with_strategy(
        first: &'a Checkpoint,
        device: &Device,
        strategy: SumStrategy,
    ) -> Result<RunningSum<'a>> {
        let sums = match strategy {
            SumStrategy::Members => None,
            SumStrategy::DeviceSums => {
                let mut sums = BTreeMap::new();
                for t in first.tensors().filter(|t| t.info.dtype.is_averaged()) {
                    let value = upload(t.info.dtype, t.data, &t.info.shape, device)
                        .and_then(|x| x.to_dtype(DType::F64))
                        .context(|| cannot_place(first.path().display(), t.name()))?;
                    first.release(&t, 0..t.data.len());
                    sums.insert(t.name().to_string(), value);
                }
                Some(sums)
            }
        };
        Ok(RunningSum {
            members: vec![first],
            device: device.clone(),
            sums,
        })
    }

    /// How many ingredients are summed.
    pub fn count(&self) -> usize {
        self.members.len()
    }

    /// How the members are held.
    pub fn strategy(&self) -> SumStrategy {
        match self.sums {
            Some(_) => SumStrategy::DeviceSums,
            None => SumStrategy::Members,
        }
    }

    /// This soup plus `other`. The ingredients must share float tensor names and shapes,
    /// which [`check_fits`] and the core's plan have already checked; a mismatch is an error.
    pub fn plus(&self, other: &'a Checkpoint) -> Result<RunningSum<'a>> {
        let first = self.members[0];
        for t in first.tensors().filter(|t| t.info.dtype.is_averaged()) {
            let name = t.name();
            let mismatch = |what: String| {
                Error::Format(model_soup::Error::Plan(format!(
                    "{}: tensor '{name}' {what}, unlike the ingredients before it; soups need fine-tunes of one model",
                    other.path().display()
                )))
            };
            let o = other
                .tensor(name)
                .ok_or_else(|| mismatch("is missing".into()))?;
            if o.info.shape != t.info.shape || !o.info.dtype.is_averaged() {
                return Err(mismatch(format!("is {} {:?}", o.info.dtype, o.info.shape)));
            }
        }
        let sums = match &self.sums {
            None => None,
            Some(sums) => {
                let mut next = BTreeMap::new();
                for (name, acc) in sums {
                    let t = other.tensor(name).expect("checked above");
                    let sum = upload(t.info.dtype, t.data, &t.info.shape, &self.device)
                        .and_then(|x| x.to_dtype(DType::F64))
                        .and_then(|x| acc + x)
                        .context(|| cannot_place(other.path().display(), name))?;
                    other.release(&t, 0..t.data.len());
                    next.insert(name.clone(), sum);
                }
                Some(next)
            }
        };
        let mut members = self.members.clone();
        members.push(other);
        Ok(RunningSum {
            members,
            device: self.device.clone(),
            sums,
        })
    }

    /// The uniform average of the members, rounded to f32, on the evaluation device.
    pub fn mean(&self) -> Result<Weights> {
        let tensors = match &self.sums {
            Some(sums) => self.mean_of_sums(sums)?,
            None => self.mean_of_members()?,
        };
        Ok(Weights {
            device: self.device.clone(),
            tensors,
        })
    }

    /// [`SumStrategy::DeviceSums`]: divides the sums on the device.
    fn mean_of_sums(&self, sums: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        // A true division, not a multiplication by 1/n, so that n identical inputs give the
        // input back exactly.
        let n = Tensor::new(self.count() as f64, &self.device)
            .context(|| "cannot place the ingredient count on the device".to_string())?;
        let mut tensors = BTreeMap::new();
        for (name, sum) in sums {
            let mean = sum
                .broadcast_div(&n)
                .and_then(|m| m.to_dtype(DType::F32))
                .context(|| format!("cannot average tensor '{name}' on the device"))?;
            tensors.insert(name.clone(), mean);
        }
        Ok(tensors)
    }

    /// [`SumStrategy::Members`]: reads the members chunk by chunk on the host, in parallel
    /// over tensors, and places each mean on the device.
    fn mean_of_members(&self) -> Result<BTreeMap<String, Tensor>> {
        let n = self.count() as f64;
        let first = self.members[0];
        let names: Vec<(String, Vec<usize>)> = first
            .tensors()
            .filter(|t| t.info.dtype.is_averaged())
            .map(|t| (t.name().to_string(), shape_of(&t.info.shape)))
            .collect();
        names
            .into_par_iter()
            .map(|(name, shape)| {
                let views: Vec<_> = self
                    .members
                    .iter()
                    .map(|m| m.tensor(&name).expect("checked by plus"))
                    .collect();
                let len: usize = shape.iter().product();
                let mut mean = Vec::with_capacity(len);
                let (mut acc, mut scratch) = (Vec::new(), Vec::new());
                for start in (0..len).step_by(CHUNK) {
                    let end = (start + CHUNK).min(len);
                    acc.clear();
                    acc.resize(end - start, 0f64);
                    scratch.resize(end - start, 0f64);
                    for (m, v) in self.members.iter().zip(&views) {
                        let size = v.info.dtype.size();
                        f64::load(
                            v.info.dtype,
                            &v.data[start * size..end * size],
                            &mut scratch,
                        );
                        f64::axpy(&mut acc, 1.0, &scratch);
                        // Mapped pages count in RSS until released (see from_checkpoint).
                        m.release(v, start * size..end * size);
                    }
                    mean.extend(acc.iter().map(|x| (x / n) as f32));
                }
                let tensor = Tensor::from_vec(mean, shape, &self.device).context(|| {
                    format!("cannot place the mean of tensor '{name}' on the device")
                })?;
                Ok((name, tensor))
            })
            .collect()
    }
}

/// A warning when `checkpoint` holds NaN or infinite values, naming the first such tensor and
/// counting the others, with soup-merge's stable kind `non-finite-input`. Its scores are not to
/// be trusted: candle's ReLU and max-pool drop NaN (`max(NaN, 0)` is 0) where PyTorch
/// propagates it, so a broken checkpoint can score as a plausible model. A scan of each float
/// tensor's exponent bits, as soup-merge's, in parallel over tensors and a block at a time,
/// each block's pages given back once scanned: opening an LLM's ingredients must not leave
/// them all resident.
pub fn non_finite(checkpoint: &Checkpoint) -> Option<Warning> {
    const BLOCK: usize = 64 << 20;
    let tensors: Vec<_> = checkpoint.tensors().collect();
    let bad: Vec<String> = tensors
        .par_iter()
        .filter(|t| {
            let size = t.info.dtype.size().max(1);
            let block = BLOCK / size * size;
            (0..t.data.len()).step_by(block.max(1)).any(|start| {
                let range = start..(start + block).min(t.data.len());
                let found = t.info.dtype.any_non_finite(&t.data[range.clone()]);
                checkpoint.release(t, range);
                found
            })
        })
        .map(|t| t.name().to_string())
        .collect();
    let mut found = bad.into_iter();
    let first = found.next()?;
    let more = found.count();
    let others = match more {
        0 => String::new(),
        1 => " (and 1 other tensor)".to_string(),
        n => format!(" (and {n} other tensors)"),
    };
    Some(Warning {
        tensor: Some(first.clone()),
        input: Some(checkpoint.path().to_path_buf()),
        kind: "non-finite-input",
        message: format!(
            "tensor '{}'{others} has NaN or infinite values in {}; its scores, and those of any soup with it, are not to be trusted",
            model_soup::error::printable(&first),
            checkpoint.path().display()
        ),
    })
}

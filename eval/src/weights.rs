//! A model's float tensors in memory (f32), and the running sum greedy search builds candidates from.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use model_soup::format::{Accumulator, Checkpoint};
use model_soup::soup::Soup;

use super::arch::{Architecture, TensorKind};
use super::error::{CandleContext, Error, Result};

/// The float tensors one model is built from: name → (shape, f32 values).
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Weights {
    /// The float tensors of `checkpoint`, converted to f32.
    pub fn from_checkpoint(checkpoint: &Checkpoint) -> Weights {
        let tensors = checkpoint
            .tensors()
            .filter(|t| t.info.dtype.is_averaged())
            .map(|t| {
                let mut values = vec![0f32; t.info.elements() as usize];
                f32::load(t.info.dtype, t.data, &mut values);
                (t.name().to_string(), (shape_of(&t.info.shape), values))
            })
            .collect();
        Weights { tensors }
    }

    /// The float tensors of a soup the core merged in memory, converted to f32.
    pub fn from_soup(soup: &Soup) -> Weights {
        let tensors = soup
            .entries
            .iter()
            .filter(|e| e.dtype.is_averaged())
            .map(|e| {
                let bytes = &soup.data[e.begin as usize..e.end as usize];
                let mut values = vec![0f32; bytes.len() / e.dtype.size()];
                f32::load(e.dtype, bytes, &mut values);
                (e.name.clone(), (shape_of(&e.shape), values))
            })
            .collect();
        Weights { tensors }
    }

    /// The f32 values of one tensor.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors.get(name).map(|(_, v)| v.as_slice())
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|k| k.as_str())
    }

    /// A `VarBuilder` over these tensors on `device`, for [`Architecture::build`].
    pub fn var_builder(&self, device: &Device) -> Result<VarBuilder<'static>> {
        let mut map = HashMap::with_capacity(self.tensors.len());
        for (name, (shape, values)) in &self.tensors {
            let t = Tensor::from_slice(values, shape.as_slice(), device)
                .context(|| format!("cannot place tensor '{name}' on the device"))?;
            map.insert(name.clone(), t);
        }
        Ok(VarBuilder::from_tensors(map, DType::F32, device))
    }
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
    for spec in &specs {
        let Some(t) = checkpoint.tensor(&spec.name) else {
            if spec.kind == TensorKind::Float {
                return Err(bad(&spec.name, "is missing".into()));
            }
            continue;
        };
        let shape = shape_of(&t.info.shape);
        if shape != spec.shape {
            return Err(bad(
                &spec.name,
                format!(
                    "has shape {shape:?}, but {} expects {:?}",
                    arch.describe(),
                    spec.shape
                ),
            ));
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

/// The sum of several ingredients' float tensors, to which one more ingredient can be added
/// with one pass over that ingredient's tensors.
///
/// Greedy search keeps the sum of the chosen ingredients; each candidate is that sum plus the
/// candidate, divided by the new count. Sums are f64, like the core's accumulator for f32
/// soups, so that a soup of identical inputs is exactly the input and candidates agree with
/// the merged soup to the last f32 bit or so.
#[derive(Clone)]
pub struct RunningSum {
    count: usize,
    sums: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
}

impl RunningSum {
    /// A sum of one ingredient.
    pub fn new(first: &Checkpoint) -> RunningSum {
        let sums = first
            .tensors()
            .filter(|t| t.info.dtype.is_averaged())
            .map(|t| {
                let mut values = vec![0f64; t.info.elements() as usize];
                f64::load(t.info.dtype, t.data, &mut values);
                (t.name().to_string(), (shape_of(&t.info.shape), values))
            })
            .collect();
        RunningSum { count: 1, sums }
    }

    /// How many ingredients are summed.
    pub fn count(&self) -> usize {
        self.count
    }

    /// This sum plus `other`'s float tensors. The ingredients must share names and shapes,
    /// which [`check_fits`] and the core's plan have already checked; a mismatch is an error.
    pub fn plus(&self, other: &Checkpoint) -> Result<RunningSum> {
        let mut sums = self.sums.clone();
        let mut scratch = Vec::new();
        for (name, (shape, acc)) in sums.iter_mut() {
            let mismatch = |what: String| {
                Error::Format(model_soup::Error::Plan(format!(
                    "{}: tensor '{name}' {what}, unlike the ingredients before it; soups need fine-tunes of one model",
                    other.path().display()
                )))
            };
            let t = other
                .tensor(name)
                .ok_or_else(|| mismatch("is missing".into()))?;
            if shape_of(&t.info.shape) != *shape || !t.info.dtype.is_averaged() {
                return Err(mismatch(format!("is {} {:?}", t.info.dtype, t.info.shape)));
            }
            scratch.resize(acc.len(), 0f64);
            f64::load(t.info.dtype, t.data, &mut scratch);
            f64::axpy(acc, 1.0, &scratch);
        }
        Ok(RunningSum {
            count: self.count + 1,
            sums,
        })
    }

    /// The uniform average of the summed ingredients, rounded to f32.
    pub fn mean(&self) -> Weights {
        let n = self.count as f64;
        let tensors = self
            .sums
            .iter()
            .map(|(name, (shape, sum))| {
                let mean = sum.iter().map(|x| (x / n) as f32).collect();
                (name.clone(), (shape.clone(), mean))
            })
            .collect();
        Weights { tensors }
    }
}

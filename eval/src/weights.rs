//! A model's float tensors in memory (f32), and the running sum greedy search builds candidates from.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

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
                // The mapped pages count in the process's RSS until released; with k
                // ingredients read in turn they would add up to k model sizes.
                checkpoint.release(&t, 0..t.data.len());
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

/// The uniform soup of several ingredients, held as references to their mapped files: adding
/// an ingredient is a header check, and [`RunningSum::mean`] reads the members tensor by
/// tensor when a candidate is evaluated.
///
/// Greedy search tries each candidate as the chosen ingredients plus one. Keeping no sum in
/// memory means a candidate needs only its f32 weights (and the device's copy of them), about
/// 2 x the model's f32 size whatever the number of ingredients, instead of a float64 copy of
/// the model besides. Each element is summed in f64 in member order and divided once, like
/// the core's accumulator for f32 soups, so a soup of identical inputs is exactly the input.
#[derive(Clone)]
pub struct RunningSum<'a> {
    members: Vec<&'a Checkpoint>,
}

/// Elements summed per step: bounds the f64 scratch of each worker.
const CHUNK: usize = 1 << 16;

impl<'a> RunningSum<'a> {
    /// A soup of one ingredient.
    pub fn new(first: &'a Checkpoint) -> RunningSum<'a> {
        RunningSum {
            members: vec![first],
        }
    }

    /// How many ingredients are summed.
    pub fn count(&self) -> usize {
        self.members.len()
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
        let mut members = self.members.clone();
        members.push(other);
        Ok(RunningSum { members })
    }

    /// The uniform average of the members, rounded to f32.
    pub fn mean(&self) -> Weights {
        let n = self.members.len() as f64;
        let first = self.members[0];
        let names: Vec<(String, Vec<usize>)> = first
            .tensors()
            .filter(|t| t.info.dtype.is_averaged())
            .map(|t| (t.name().to_string(), shape_of(&t.info.shape)))
            .collect();
        let tensors = names
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
                (name, (shape, mean))
            })
            .collect();
        Weights { tensors }
    }
}

//! From ingredients and weights to a validated `Plan`: what every output tensor is made of,
//! its dtype and its place in the output. Headers only; no tensor byte is read here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::method::{self, Layers, Method, Settings, TensorInfo, Work};
use crate::error::{printable, Error, Result};
use crate::format::{encode_header, Checkpoint, Dtype, HeaderEntry};

/// What to do with a tensor that some ingredients lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    /// Refuse the merge and list the tensors.
    #[default]
    Error,
    /// Leave the tensor out of the output.
    Skip,
    /// Copy it from the first ingredient that has it.
    First,
    /// Average over the ingredients that have it, with their weights rescaled to the same sum.
    Renormalize,
}

impl OnMissing {
    /// The policy's name, as `--on-missing` and model cards spell it.
    pub fn name(self) -> &'static str {
        match self {
            OnMissing::Error => "error",
            OnMissing::Skip => "skip",
            OnMissing::First => "first",
            OnMissing::Renormalize => "renormalize",
        }
    }
}

/// Choices that shape the plan beyond the ingredients and weights.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Output dtype of averaged tensors; `None` keeps the first ingredient's, or see `promote`.
    pub dtype: Option<Dtype>,
    /// Without `dtype`, an averaged tensor takes the widest of its inputs' dtypes (torch's
    /// promotion: bf16 with f16 gives f32) instead of the first's. mergekit computes a
    /// recipe's merge, and writes it, in that dtype, so recipes use it.
    pub promote: bool,
    pub on_missing: OnMissing,
    /// Extra `__metadata__` entries for the output (recipes, say), after the provenance.
    pub extra_metadata: BTreeMap<String, String>,
}

/// One weighted input of an averaged tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Term {
    pub ingredient: usize,
    pub weight: f64,
}

/// How an output tensor is made.
#[derive(Debug, Clone)]
pub enum Action {
    /// `sum(weight * x)` over the terms in order, accumulated in f64 when `wide`, else f32.
    Average {
        terms: Vec<Term>,
        wide: bool,
        /// Task vectors folded into the terms ([`method::TaskVectors::folded`]): a chunk whose
        /// sum is not finite is computed again from these, in mergekit's order.
        unfolded: Option<Whole>,
    },
    /// A non-float tensor: copied from `from`, and compared with `others`, which should match.
    Copy { from: usize, others: Vec<usize> },
    /// A merge method's whole-tensor work: statistics or trims over the whole tensor first,
    /// then an element-wise kernel.
    Whole(Whole),
}

/// A tensor that a method processes as a whole (see [`Work`]).
#[derive(Debug, Clone)]
pub struct Whole {
    /// The method's name, for dry runs.
    pub method: &'static str,
    /// The ingredient behind each of the work's inputs: the models in order, then the base.
    pub inputs: Vec<usize>,
    /// What to compute; never [`Work::Linear`], which is planned as an [`Action::Average`].
    pub work: Arc<Work>,
    /// Work in f64 (F32/F64 output or any F64 input), else f32.
    pub wide: bool,
}

impl Action {
    /// The ingredients this action reads.
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            Action::Average { terms, .. } => terms.iter().map(|t| t.ingredient).collect(),
            Action::Copy { from, others } => std::iter::once(*from)
                .chain(others.iter().copied())
                .collect(),
            Action::Whole(w) => w.inputs.clone(),
        }
    }
}

/// One output tensor.
#[derive(Debug, Clone)]
pub struct TensorPlan {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Byte range in the output's data section.
    pub begin: u64,
    pub end: u64,
    pub action: Action,
}

impl TensorPlan {
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A validated merge: ingredients, weights and every output tensor, ready to execute.
pub struct Plan {
    pub ingredients: Vec<Checkpoint>,
    pub weights: Vec<f64>,
    /// Output tensors in output order (see [`lay_out`]), laid out back to back.
    pub tensors: Vec<TensorPlan>,
    /// The output's `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// Tensors that are in some ingredients but not others, and what was done about them.
    pub missing: Vec<String>,
    /// The merge method's name (`linear` for [`Plan::new`]).
    pub method: &'static str,
    /// The ingredient that is the base model, for methods that use one.
    pub base: Option<usize>,
}

/// A merge by a registered method: the method, the parameters as given, the base (an index
/// into the ingredients) and the seed of random drops.
pub struct MethodMerge<'a> {
    pub method: &'static dyn Method,
    /// One map of per-model settings per ingredient that is not the base, in order.
    pub settings: &'a Settings,
    pub base: Option<usize>,
    pub seed: u64,
}

/// The key of `__metadata__` that transformers reads to tell a PyTorch checkpoint (`pt`) from
/// others; the output gets `pt` when the first ingredient has none.
pub const META_FORMAT: &str = "format";
/// Keys the output's `__metadata__` gets, beside the first ingredient's own.
pub const META_INGREDIENTS: &str = "model_soup.ingredients";
pub const META_WEIGHTS: &str = "model_soup.weights";
pub const META_METHOD: &str = "model_soup.method";
pub const META_TOOL: &str = "model_soup.tool";
/// The recipe file's text, when the merge came from `--config`.
pub const META_RECIPE: &str = "model_soup.recipe";
/// A method's parameters as given, as JSON: `{"parameters": {...}, "models": [{...}, ...]}`.
pub const META_PARAMETERS: &str = "model_soup.parameters";
/// The base model's file or directory name, for methods that use one.
pub const META_BASE: &str = "model_soup.base";
/// The seed of random drops (DARE, DELLA).
pub const META_SEED: &str = "model_soup.seed";

/// Orders the output's tensors as the safetensors library writes them, by dtype (widest
/// first, in its dtype order) and then by name, and lays them out back to back. A header is
/// padded to 8 bytes and every tensor's length is a multiple of its element size, so each
/// tensor then starts at a multiple of its element size, in a file or in a shard: a loader
/// that maps the file can use the data in place (in name order, a bf16 tensor could leave the
/// next f32 one at an odd address).
fn lay_out(tensors: &mut [TensorPlan]) {
    tensors.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    let mut offset = 0u64;
    for t in tensors {
        let len = t.elements() * t.dtype.size() as u64;
        t.begin = offset;
        t.end = offset + len;
        offset += len;
    }
}

/// The name and version written into outputs.
pub fn tool_version() -> String {
    format!("model-soup {}", env!("CARGO_PKG_VERSION"))
}

impl Plan {
    /// Checks the ingredients against each other and lays out the output.
    pub fn new(
        ingredients: Vec<Checkpoint>,
        weights: Vec<f64>,
        options: &PlanOptions,
    ) -> Result<Plan> {
        check_weights(&ingredients, &weights)?;
        let (names, partial) = census(&ingredients, options)?;
        check_shapes(&ingredients, &names)?;

        let mut tensors = Vec::with_capacity(names.len());
        for (name, have) in &names {
            let Some((dtype, action)) = plan_tensor(&ingredients, &weights, options, name, have)?
            else {
                continue;
            };
            let first = ingredients[have[0]].tensor(name).expect("listed above");
            let shape = first.info.shape.clone();
            tensors.push(TensorPlan {
                name: name.to_string(),
                dtype,
                shape,
                begin: 0,
                end: 0,
                action,
            });
        }
        lay_out(&mut tensors);
        if tensors.is_empty() && !names.is_empty() {
            return Err(Error::Plan(format!(
                "no tensor is in every input, so --on-missing skip leaves nothing to write ({} tensor(s) skipped, such as '{}'); are these fine-tunes of one model?",
                names.len(),
                printable(names.keys().next().expect("not empty"))
            )));
        }
        let metadata = output_metadata(&ingredients, &weights, options);
        let missing = partial.iter().map(|s| s.to_string()).collect();
        Ok(Plan {
            ingredients,
            weights,
            tensors,
            metadata,
            missing,
            method: "linear",
            base: None,
        })
    }

    /// Checks the ingredients against each other and against `merge`'s method and parameters,
    /// and plans every tensor with the method's work. Headers only: every parameter is resolved
    /// and checked per tensor before any tensor byte is read.
    pub fn with_method(
        ingredients: Vec<Checkpoint>,
        merge: &MethodMerge<'_>,
        options: &PlanOptions,
    ) -> Result<Plan> {
        let method = merge.method;
        let fail = |m: String| Error::Plan(format!("method {}: {m}", method.name()));
        if ingredients.is_empty() {
            return Err(Error::Plan(
                "no ingredients: give at least one .safetensors input".into(),
            ));
        }
        check_not_empty(&ingredients)?;
        let base = match (method.base(), merge.base) {
            (method::BaseUse::Required, None) => {
                return Err(fail(
                    "needs a base model: give --base PATH (or base_model in the recipe)".into(),
                ))
            }
            (method::BaseUse::Unused, Some(_)) => None,
            (_, base) => base,
        };
        if base.is_some_and(|b| b >= ingredients.len()) {
            return Err(fail("the base is not one of the ingredients".into()));
        }
        let models: Vec<usize> = (0..ingredients.len())
            .filter(|i| Some(*i) != base)
            .collect();
        if merge.settings.models.len() != models.len() {
            return Err(fail(format!(
                "{} sets of model parameters for {} models",
                merge.settings.models.len(),
                models.len()
            )));
        }
        method
            .check_models(models.len(), base.is_some())
            .map_err(fail)?;
        // The work's inputs: the models, then the base.
        let roles: Vec<usize> = models.iter().copied().chain(base).collect();

        let (names, partial) = census(&ingredients, options)?;
        if !partial.is_empty() && options.on_missing == OnMissing::Renormalize {
            return Err(fail(format!(
                "{} tensor(s) are not in every input ({}), and --on-missing renormalize applies to linear merges; use skip or first",
                partial.len(),
                list_names(partial.iter().copied())
            )));
        }
        check_shapes(&ingredients, &names)?;
        let layers = Layers::from_names(names.keys().copied());
        merge.settings.check(method, layers.most()).map_err(fail)?;

        let mut tensors = Vec::with_capacity(names.len());
        for (name, have) in &names {
            let complete = have.len() == ingredients.len();
            if !complete && options.on_missing == OnMissing::Skip {
                continue;
            }
            let first = ingredients[have[0]].tensor(name).expect("listed");
            let shape = first.info.shape.clone();
            let planned = if complete {
                plan_method_tensor(
                    &ingredients,
                    merge,
                    &roles,
                    base,
                    &layers,
                    options,
                    name,
                    &shape,
                )?
            } else {
                // --on-missing first: the first input that has it, as is (or converted).
                plan_tensor(
                    &ingredients,
                    &vec![1.0; ingredients.len()],
                    &PlanOptions {
                        on_missing: OnMissing::First,
                        ..options.clone()
                    },
                    name,
                    have,
                )?
                .expect("first always plans")
            };
            let (dtype, action) = planned;
            tensors.push(TensorPlan {
                name: name.to_string(),
                dtype,
                shape,
                begin: 0,
                end: 0,
                action,
            });
        }
        lay_out(&mut tensors);
        let weights: Vec<f64> = (0..ingredients.len())
            .map(|i| {
                let m = models.iter().position(|&x| x == i);
                match m.and_then(|m| merge.settings.models[m].get("weight")) {
                    Some(g) => match g.setting {
                        method::Setting::Value(w) => w,
                        _ => f64::NAN,
                    },
                    None => f64::NAN,
                }
            })
            .collect();
        let mut metadata = output_metadata(&ingredients, &weights, options);
        metadata.remove(META_WEIGHTS);
        metadata.insert(META_METHOD.into(), method.name().into());
        metadata.insert(
            META_PARAMETERS.into(),
            merge.settings.to_json(method).to_string(),
        );
        if let Some(b) = base {
            metadata.insert(META_BASE.into(), display_name(ingredients[b].path()));
        }
        metadata.insert(META_SEED.into(), merge.seed.to_string());
        metadata.extend(options.extra_metadata.clone());
        let missing = partial.iter().map(|s| s.to_string()).collect();
        Ok(Plan {
            ingredients,
            weights,
            tensors,
            metadata,
            missing,
            method: method.name(),
            base,
        })
    }

    /// Bytes of tensor data in the output.
    pub fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |t| t.end)
    }

    /// The output's header entries, in output order.
    pub fn entries(&self) -> Vec<HeaderEntry> {
        self.tensors
            .iter()
            .map(|t| HeaderEntry {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                begin: t.begin,
                end: t.end,
            })
            .collect()
    }

    /// The output file's header bytes.
    pub fn header(&self) -> Vec<u8> {
        encode_header(&self.metadata, &self.entries())
    }

    /// Size of the output file, header included.
    pub fn file_len(&self) -> u64 {
        self.header().len() as u64 + self.data_len()
    }

    /// Bytes of tensor data read from the ingredients.
    pub fn read_len(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| {
                t.action
                    .inputs()
                    .iter()
                    .map(|&i| {
                        self.ingredients[i]
                            .tensor(&t.name)
                            .map_or(0, |x| x.info.len_bytes())
                    })
                    .sum::<u64>()
            })
            .sum()
    }
}

/// Refuses an input whose header lists no tensors (`{}`, or only `__metadata__`): a soup of it
/// is an empty file, written and reported as a success, when the file given was surely not the
/// model meant (an adapter's empty stub, a placeholder of an interrupted export).
fn check_not_empty(ingredients: &[Checkpoint]) -> Result<()> {
    match ingredients.iter().find(|c| c.is_empty()) {
        Some(c) => Err(Error::header(
            c.path(),
            "holds no tensors (its header lists none), so there is nothing to merge; give the model's weights file",
        )),
        None => Ok(()),
    }
}

fn check_weights(ingredients: &[Checkpoint], weights: &[f64]) -> Result<()> {
    if ingredients.is_empty() {
        return Err(Error::Usage(
            "no inputs: give at least one .safetensors file or model directory".into(),
        ));
    }
    check_not_empty(ingredients)?;
    if weights.len() != ingredients.len() {
        return Err(Error::Weights(format!(
            "the weights have {} values for {} inputs; give one weight per input, or none for 1/N each",
            weights.len(),
            ingredients.len()
        )));
    }
    super::weights::check("the weights", weights)
}

fn list_names<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    let shown: Vec<String> = names
        .iter()
        .take(5)
        .map(|n| format!("'{}'", printable(n)))
        .collect();
    let more = names.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn missing_error(ingredients: &[Checkpoint], names: &BTreeMap<&str, Vec<usize>>) -> Error {
    let mut parts = Vec::new();
    for (i, ck) in ingredients.iter().enumerate() {
        let lacking: Vec<&str> = names
            .iter()
            .filter(|(_, have)| !have.contains(&i))
            .map(|(n, _)| *n)
            .collect();
        if !lacking.is_empty() {
            parts.push(format!(
                "{} lacks {} tensor(s): {}",
                ck.path().display(),
                lacking.len(),
                list_names(lacking)
            ));
        }
    }
    Error::Plan(format!(
        "inputs have different tensor names: {}; are they fine-tunes of the same model? (--on-missing skip|first|renormalize decides what to do)",
        parts.join("; ")
    ))
}

/// Which ingredients hold each tensor name, and the names some of them lack (refused under
/// `--on-missing error`).
#[allow(clippy::type_complexity)]
fn census<'c>(
    ingredients: &'c [Checkpoint],
    options: &PlanOptions,
) -> Result<(BTreeMap<&'c str, Vec<usize>>, Vec<&'c str>)> {
    let mut names: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, ck) in ingredients.iter().enumerate() {
        for t in ck.tensors() {
            names.entry(t.info.name.as_str()).or_default().push(i);
        }
    }
    let partial: Vec<&str> = names
        .iter()
        .filter(|(_, have)| have.len() != ingredients.len())
        .map(|(n, _)| *n)
        .collect();
    if !partial.is_empty() && options.on_missing == OnMissing::Error {
        return Err(missing_error(ingredients, &names));
    }
    Ok((names, partial))
}

fn check_shapes(ingredients: &[Checkpoint], names: &BTreeMap<&str, Vec<usize>>) -> Result<()> {
    let mut bad = Vec::new();
    let mut example = None;
    for (name, have) in names {
        let first = ingredients[have[0]].tensor(name).expect("indexed");
        for &i in &have[1..] {
            let other = ingredients[i].tensor(name).expect("indexed");
            if other.info.shape != first.info.shape {
                bad.push(*name);
                example.get_or_insert_with(|| {
                    format!(
                        "'{}' is {:?} in {} but {:?} in {}",
                        printable(name),
                        first.info.shape,
                        ingredients[have[0]].path().display(),
                        other.info.shape,
                        ingredients[i].path().display()
                    )
                });
                break;
            }
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::Plan(format!(
        "{} tensor(s) differ in shape between inputs: {} ({}); only fine-tunes of one architecture can be averaged",
        bad.len(),
        list_names(bad),
        example.unwrap_or_default()
    )))
}

/// One tensor in every ingredient, planned with the method: copied when it isn't a float
/// (from the base when there is one), else the method's work.
#[allow(clippy::too_many_arguments)]
fn plan_method_tensor(
    ingredients: &[Checkpoint],
    merge: &MethodMerge<'_>,
    roles: &[usize],
    base: Option<usize>,
    layers: &Layers,
    options: &PlanOptions,
    name: &str,
    shape: &[u64],
) -> Result<(Dtype, Action)> {
    let all: Vec<usize> = (0..ingredients.len()).collect();
    let (dtype, action) = plan_tensor(ingredients, &vec![1.0; all.len()], options, name, &all)?
        .expect("complete tensors always plan");
    let wide = match action {
        Action::Copy { .. } => {
            // Non-floats come from the base, so that what a method leaves alone is the base's.
            let from = base.unwrap_or(0);
            let others = all.iter().copied().filter(|&i| i != from).collect();
            return Ok((dtype, Action::Copy { from, others }));
        }
        Action::Average { wide, .. } => wide,
        Action::Whole(_) => unreachable!("plan_tensor plans averages and copies"),
    };
    let elements = shape.iter().product();
    let info = TensorInfo {
        name,
        shape,
        elements,
        seed: merge.seed,
    };
    let at = |m: String| {
        Error::Plan(format!(
            "method {}: tensor '{}': {m}",
            merge.method.name(),
            printable(name)
        ))
    };
    let params = merge
        .settings
        .resolve(merge.method, name, layers.position(name), base.is_some())
        .map_err(at)?;
    let work = merge.method.work(&info, &params).map_err(at)?;
    let action = match work {
        Work::Linear(combination) => {
            let mut terms: Vec<Term> = combination
                .iter()
                .map(|&(input, weight)| Term {
                    ingredient: roles[input],
                    weight,
                })
                .collect();
            let first = terms[0];
            // A base of coefficient 0 stays: that 0 is `base + (x - base)` folded (nuslerp at
            // an end of t), not a weight of 0, and still carries the base's NaN and infinities
            // (as mergekit's does), where leaving it out gave the model's plausible values,
            // unread and unwarned.
            terms.retain(|t| t.weight != 0.0 || Some(t.ingredient) == base);
            if terms.is_empty() {
                terms.push(first);
            }
            Action::Average {
                terms,
                wide,
                unfolded: None,
            }
        }
        Work::TaskVectors(mut tv) => {
            // Only the models taking part, then the base, are inputs: one of weight 0 is not
            // read, nor scanned for NaN.
            let mut inputs: Vec<usize> = Vec::with_capacity(tv.models.len() + 1);
            for (k, m) in tv.models.iter_mut().enumerate() {
                inputs.push(roles[m.input]);
                m.input = k;
            }
            inputs.push(*roles.last().expect("task vectors have a base"));
            let folded = tv.folded(tv.models.len());
            let whole = Whole {
                method: merge.method.name(),
                inputs,
                work: Arc::new(Work::TaskVectors(tv)),
                wide,
            };
            match folded {
                // Every term stays, at coefficient 0 too (lambda 0): each model's NaN and
                // infinities make mergekit's `inf - inf`, and the unfolded form is computed
                // from the same inputs.
                Some(combination) => Action::Average {
                    terms: combination
                        .iter()
                        .map(|&(input, weight)| Term {
                            ingredient: whole.inputs[input],
                            weight,
                        })
                        .collect(),
                    wide,
                    unfolded: Some(whole),
                },
                None => Action::Whole(whole),
            }
        }
        work => Action::Whole(Whole {
            method: merge.method.name(),
            inputs: roles.to_vec(),
            work: Arc::new(work),
            wide,
        }),
    };
    Ok((dtype, action))
}

fn plan_tensor(
    ingredients: &[Checkpoint],
    weights: &[f64],
    options: &PlanOptions,
    name: &str,
    have: &[usize],
) -> Result<Option<(Dtype, Action)>> {
    let complete = have.len() == ingredients.len();
    let have: &[usize] = match options.on_missing {
        _ if complete => have,
        OnMissing::Error | OnMissing::Skip => return Ok(None),
        OnMissing::First => &have[..1],
        OnMissing::Renormalize => have,
    };
    let dtypes: Vec<Dtype> = have
        .iter()
        .map(|&i| ingredients[i].tensor(name).expect("indexed").info.dtype)
        .collect();
    let averaged = dtypes.iter().filter(|d| d.is_averaged()).count();
    let first_path = || {
        ingredients[have[0]]
            .shard_path(&ingredients[have[0]].tensor(name).expect("indexed"))
            .to_path_buf()
    };
    if averaged == 0 {
        if let Some(pos) = dtypes.iter().position(|d| *d != dtypes[0]) {
            return Err(Error::tensor(
                &first_path(),
                name,
                format!(
                    "is {} here but {} in {}; non-float tensors are copied and must have one dtype",
                    dtypes[0],
                    dtypes[pos],
                    ingredients[have[pos]].path().display()
                ),
            ));
        }
        let action = Action::Copy {
            from: have[0],
            others: have[1..].to_vec(),
        };
        return Ok(Some((dtypes[0], action)));
    }
    if averaged != dtypes.len() {
        let pos = dtypes
            .iter()
            .position(|d| !d.is_averaged())
            .expect("some are not averaged");
        let float = dtypes
            .iter()
            .position(|d| d.is_averaged())
            .expect("some are");
        return Err(Error::Plan(format!(
            "tensor '{}' is {} in {} but {} in {}; a tensor must be a float in every input or in none",
            printable(name),
            dtypes[float],
            ingredients[have[float]].path().display(),
            dtypes[pos],
            ingredients[have[pos]].path().display()
        )));
    }
    let out = match options.dtype {
        Some(d) => d,
        None if options.promote => dtypes[1..].iter().fold(dtypes[0], |a, &b| a.promoted(b)),
        None => dtypes[0],
    };
    let mut terms: Vec<Term> = if !complete && options.on_missing == OnMissing::First {
        // A copy of the first input that has it, in the output dtype: the weights, and so
        // their sum, play no part.
        vec![Term {
            ingredient: have[0],
            weight: 1.0,
        }]
    } else {
        let scale = if complete {
            1.0
        } else {
            rescale(weights, have, name)?
        };
        have.iter()
            .map(|&i| Term {
                ingredient: i,
                weight: weights[i] * scale,
            })
            .collect()
    };
    // A zero weight contributes nothing, and multiplying by it would still turn -0.0 into 0.0
    // and an ignored input's NaN into the soup's; the first term stays so there is a shape.
    let first = terms[0];
    terms.retain(|t| t.weight != 0.0);
    if terms.is_empty() {
        terms.push(first);
    }
    let wide = matches!(out, Dtype::F32 | Dtype::F64) || dtypes.contains(&Dtype::F64);
    Ok(Some((
        out,
        Action::Average {
            terms,
            wide,
            unfolded: None,
        },
    )))
}

/// The factor that brings the weights of the inputs that have a tensor back to the full sum.
fn rescale(weights: &[f64], have: &[usize], name: &str) -> Result<f64> {
    let total: f64 = weights.iter().sum();
    let present: f64 = have.iter().map(|&i| weights[i]).sum();
    let scale = total / present;
    if scale.is_finite() {
        Ok(scale)
    } else {
        Err(Error::Plan(format!(
            "the inputs that have tensor '{}' have weights summing to 0, so they can't be rescaled; use --on-missing skip",
            printable(name)
        )))
    }
}

fn output_metadata(
    ingredients: &[Checkpoint],
    weights: &[f64],
    options: &PlanOptions,
) -> BTreeMap<String, String> {
    let mut meta = ingredients[0].metadata().clone();
    // A soup of soups keeps the first input's own metadata, but not its provenance: that
    // soup's recipe, parameters, base and seed describe another merge.
    meta.retain(|key, _| !key.starts_with("model_soup."));
    // The output always has a `__metadata__` (the provenance below), and transformers 4
    // refuses to load a safetensors file whose metadata has no `format` ("does not contain
    // the valid metadata"): say `pt`, as `save_pretrained` and mergekit do, unless the first
    // input says otherwise.
    meta.entry(META_FORMAT.into())
        .or_insert_with(|| "pt".into());
    let paths: Vec<&Path> = ingredients.iter().map(|c| c.path()).collect();
    let names = display_names(&paths);
    meta.insert(
        META_INGREDIENTS.into(),
        serde_json::to_string(&names).expect("strings serialise"),
    );
    meta.insert(
        META_WEIGHTS.into(),
        serde_json::to_string(weights).expect("finite floats serialise"),
    );
    meta.insert(META_METHOD.into(), "linear".into());
    meta.insert(META_TOOL.into(), tool_version());
    meta.extend(options.extra_metadata.clone());
    meta
}

/// The file or directory name that stands for an ingredient in provenance.
pub fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Names for several ingredients that tell them apart: each file name, widened by parent
/// folders (`1/model.safetensors`) as far as needed to differ from the others. The usual
/// `runs/*/model.safetensors` would otherwise show one name for every run. Paths that are
/// the same throughout keep the same name.
pub fn display_names(paths: &[&Path]) -> Vec<String> {
    let parts: Vec<Vec<String>> = paths
        .iter()
        .map(|p| {
            p.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        })
        .collect();
    // Rejoined as a path, not with "/": a whole absolute path starts with the root, which
    // joined as text showed as "//work/...".
    let suffix = |i: usize, depth: usize| {
        let p = &parts[i];
        p[p.len().saturating_sub(depth)..]
            .iter()
            .collect::<PathBuf>()
            .display()
            .to_string()
    };
    let mut depth = vec![1; paths.len()];
    loop {
        let names: Vec<String> = (0..paths.len()).map(|i| suffix(i, depth[i])).collect();
        let mut widened = false;
        for i in 0..paths.len() {
            let clash = (0..paths.len()).any(|j| j != i && names[j] == names[i]);
            if clash && depth[i] < parts[i].len() {
                depth[i] += 1;
                widened = true;
            }
        }
        if !widened {
            return (0..paths.len())
                .map(|i| match depth[i] {
                    1 => display_name(paths[i]),
                    d => suffix(i, d),
                })
                .collect();
        }
    }
}

#[cfg(test)]
mod display_name_tests {
    #[test]
    fn display_names_widen_only_as_far_as_needed() {
        use std::path::Path;
        let names = |ps: &[&str]| {
            let paths: Vec<&Path> = ps.iter().map(Path::new).collect();
            super::display_names(&paths)
        };
        assert_eq!(
            names(&["a/x.safetensors", "b/y.safetensors"]),
            ["x.safetensors", "y.safetensors"]
        );
        assert_eq!(
            names(&[
                "runs/1/model.safetensors",
                "runs/2/model.safetensors",
                "z.safetensors"
            ]),
            [
                "1/model.safetensors",
                "2/model.safetensors",
                "z.safetensors"
            ]
        );
        assert_eq!(
            names(&["a/run/ckpt", "b/run/ckpt", "c/other/ckpt"]),
            ["a/run/ckpt", "b/run/ckpt", "other/ckpt"]
        );
        // One path given twice widens to the whole path, shown once rooted.
        assert_eq!(
            names(&["/work/ft.safetensors", "/work/ft.safetensors"]),
            ["/work/ft.safetensors", "/work/ft.safetensors"]
        );
        assert_eq!(
            names(&["m.safetensors", "m.safetensors"]),
            ["m.safetensors", "m.safetensors"]
        );
    }
}

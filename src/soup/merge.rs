//! One merge, from a request to a report: the orchestrator both tools drive (soup-merge for
//! every merge, soup-eval for the greedy soup it writes). It owns the policy: the inputs (or a
//! recipe), the weights, the output's kind and the output policy, the layout, the companion
//! files and the model card, and it collects every warning as data.
//!
//! [`Merge::plan`] does everything that needs no tensor byte (a dry run stops there);
//! [`Merge::run`] writes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::card::Card;
use super::chat;
use super::execute::{self, ExtraFile, RunOptions, Warning};
use super::layout::{Layout, DEFAULT_SHARD_SIZE};
use super::method::{self, BaseUse, Method, Setting, Settings};
use super::plan::{display_name, Action, MethodMerge, OnMissing, Plan, PlanOptions, META_RECIPE};
use super::recipe::Recipe;
use super::report::{DtypeSummary, InputReport, MergeReport, PlannedTensor};
use super::verify::Record;
use crate::error::{Error, Result};
use crate::format::destination::{self, Destination, OutputKind, Reads, Request, Role};
use crate::format::model_dir::{self, Companion};
use crate::format::{model_key, same_model, Checkpoint, Dtype};

/// What to merge and where: everything a front end parsed, nothing validated yet.
#[derive(Debug, Clone, Default)]
pub struct MergeRequest {
    /// Input checkpoints (files or model directories), in order. Empty with a recipe.
    pub inputs: Vec<PathBuf>,
    /// One weight per input; `None` for 1/N each.
    pub weights: Option<Vec<f64>>,
    /// Divide the weights by their sum.
    pub normalize: bool,
    /// Output dtype of averaged tensors; `None` keeps the first input's.
    pub dtype: Option<Dtype>,
    /// A mergekit recipe to read inputs, weights and dtype from instead.
    pub recipe: Option<PathBuf>,
    /// The model directory to take config and tokenizer from (directory outputs).
    pub base: Option<PathBuf>,
    /// Where to write; `None` only for a dry run.
    pub output: Option<PathBuf>,
    /// Shard size for a directory output; given, it makes the output a directory.
    pub shard_size: Option<u64>,
    /// What to do with tensors that some inputs lack.
    pub on_missing: OnMissing,
    /// Make warnings about the data errors.
    pub strict: bool,
    /// Replace an existing output (only one the tool could have written).
    pub force: bool,
    /// Read the output back and hash it after writing.
    pub verify: bool,
    /// What else the caller's run reads (soup-eval's datasets): no output may touch it.
    pub also_reads: Vec<(Role, PathBuf)>,
    /// The caller's other outputs (soup-eval's `--plot`), checked against this one.
    pub also_writes: Vec<Request>,
    /// The merge method's name (see `soup::method`); empty means `linear`.
    pub method: String,
    /// The method's parameters from flags: name, value, and the flag that gave it (for
    /// messages), such as `("density", 0.5, "--density")`.
    pub parameters: Vec<(String, f64, String)>,
    /// Seed of the random drops of DARE and DELLA (default 0).
    pub seed: Option<u64>,
}

/// The method parameters that have a flag of their own (`--density VALUE`); the others are
/// given as `--param NAME=VALUE`.
pub const PARAMETER_FLAGS: [&str; 5] = ["density", "t", "lambda", "epsilon", "gamma"];

/// The merge a request or recipe asks for, resolved: the ingredients (the base first, when the
/// method uses one), and either a linear merge's weights or a method's settings.
struct Mix {
    inputs: Vec<PathBuf>,
    /// The weights of a linear merge, one per input (`Plan::new`).
    weights: Vec<f64>,
    dtype: Option<Dtype>,
    method: &'static dyn Method,
    /// Any other method's parameters (`Plan::with_method`); `None` on the linear path.
    settings: Option<Settings>,
    /// The base's index in `inputs`.
    base: Option<usize>,
    seed: u64,
}

impl Mix {
    /// From a recipe: its method, models, base and parameters.
    fn from_recipe(path: &Path, r: &Recipe) -> Result<Mix> {
        let fail = |reason: String| Error::Recipe {
            path: path.to_path_buf(),
            reason,
        };
        // A relative path that exists beside the recipe is the likelier mistake than a model
        // to download: paths are read from the working directory, as mergekit reads them.
        let missing = |key: String, model: &Path| {
            let beside = path.parent().map(|dir| dir.join(model));
            let fix = match beside {
                Some(b) if model.is_relative() && b.exists() => format!(
                    "relative paths are read from the working directory, not the recipe's folder, and {} exists: run from there or write the path in full",
                    b.display()
                ),
                _ => "soup-merge does not download models: fetch it first (huggingface-cli download REPO --local-dir DIR) and put the directory in the recipe".into(),
            };
            fail(format!(
                "{key} {} is not a local file or directory; {fix}",
                model.display()
            ))
        };
        for (model, at) in r.models.iter().zip(&r.settings.given_at) {
            if !model.exists() {
                let key = if at == "base_model" {
                    at.clone()
                } else {
                    format!("{at}.model")
                };
                return Err(missing(key, model));
            }
        }
        let base = r
            .base_is_ingredient()
            .then(|| PathBuf::from(r.base_model.as_deref().expect("has a base")));
        if let Some(b) = base.as_ref().filter(|b| !b.exists()) {
            return Err(missing("base_model".into(), b));
        }
        let seed = r.seed.unwrap_or(0);
        if let Some(weights) = r.linear_weights() {
            return Ok(Mix {
                inputs: r.models.clone(),
                weights: weights?,
                dtype: r.dtype,
                method: r.method,
                settings: None,
                base: None,
                seed,
            });
        }
        Ok(Mix {
            inputs: base
                .iter()
                .cloned()
                .chain(r.models.iter().cloned())
                .collect(),
            weights: Vec::new(),
            dtype: r.dtype,
            method: r.method,
            settings: Some(r.settings.clone()),
            base: base.map(|_| 0),
            seed,
        })
    }

    /// From flags: the method, its base, and settings from the weights and parameters.
    fn from_flags(request: &MergeRequest) -> Result<Mix> {
        let name = if request.method.is_empty() {
            "linear"
        } else {
            request.method.as_str()
        };
        let method = method::find(name).ok_or_else(|| {
            Error::Usage(format!(
                "--method {name} is not a merge method; use one of {}",
                method::names()
            ))
        })?;
        let dtype = request.dtype;
        let seed = request.seed.unwrap_or(0);
        if method.name() == "linear" && request.parameters.is_empty() {
            return Ok(Mix {
                inputs: request.inputs.clone(),
                weights: super::weights::resolve(
                    "--weights",
                    request.weights.as_deref(),
                    request.inputs.len(),
                    request.normalize,
                )?,
                dtype,
                method,
                settings: None,
                base: None,
                seed,
            });
        }
        let base = match (method.base(), &request.base) {
            (BaseUse::Unused, _) | (_, None) => None,
            (_, Some(b)) => Some(b.clone()),
        };
        // An input that is the base model (however spelled) is the base, as a mergekit recipe
        // lists it among models.
        let models: Vec<PathBuf> = request
            .inputs
            .iter()
            .filter(|p| !base.as_ref().is_some_and(|b| same_model(b, p)))
            .cloned()
            .collect();
        // What the command line lacks is a usage error, found before any file is opened.
        let usage = |e: String| Error::Usage(format!("--method {}: {e}", method.name()));
        if method.base() == BaseUse::Required && base.is_none() {
            return Err(usage("needs a base model: give --base PATH".into()));
        }
        method
            .check_models(models.len(), base.is_some())
            .map_err(usage)?;
        let mut settings = Settings::new(models.len());
        let declares = |name: &str| method.params().iter().any(|p| p.name == name);
        if let Some(w) = &request.weights {
            if w.len() != models.len() {
                return Err(Error::Weights(format!(
                    "--weights has {} values for {} models{}; give one weight per model",
                    w.len(),
                    models.len(),
                    if base.is_some() {
                        " besides the base"
                    } else {
                        ""
                    }
                )));
            }
            if !declares("weight") {
                return Err(Error::Usage(format!(
                    "--weights: {} takes no weights",
                    method.name()
                )));
            }
            super::weights::check("--weights", w)?;
            for (m, x) in w.iter().enumerate() {
                settings.set_model(m, "weight", Setting::Value(*x), "--weights");
            }
        } else if declares("weight") {
            // The flags' defaults whatever the route: linear averages (1/N each), the other
            // methods weigh each model 1.
            if method.name() == "linear" {
                let w = 1.0 / models.len().max(1) as f64;
                for m in 0..models.len() {
                    settings.set_model(
                        m,
                        "weight",
                        Setting::Value(w),
                        "--weights (1/N each by default)",
                    );
                }
            } else {
                settings.set_global(
                    "weight",
                    Setting::Value(1.0),
                    "--weights (1 each by default)",
                );
            }
        }
        if request.normalize || method.name() == "linear" {
            // Linear from flags uses the weights as given unless --normalize, also when
            // --param routes it here; a recipe keeps mergekit's default (true).
            let on = if request.normalize { 1.0 } else { 0.0 };
            settings.set_global("normalize", Setting::Value(on), "--normalize");
        }
        for (name, value, flag) in &request.parameters {
            if name == "weight" {
                if request.weights.is_some() {
                    return Err(Error::Usage(format!(
                        "{flag} and --weights both set the weights; give them once"
                    )));
                }
                // One weight for every model, reported per model as -w's are.
                for m in 0..models.len() {
                    settings.set_model(m, name, Setting::Value(*value), flag.clone());
                }
            } else {
                settings.set_global(name, Setting::Value(*value), flag.clone());
            }
        }
        settings.check(method, u64::MAX).map_err(usage)?;
        if let Some(p) = method.params().iter().find(|p| {
            p.scope == method::Scope::Global
                && p.default.is_none()
                && !settings.global.contains_key(p.name)
        }) {
            let flag = if PARAMETER_FLAGS.contains(&p.name) {
                format!("--{} VALUE", p.name)
            } else {
                format!("--param {}=VALUE", p.name)
            };
            return Err(usage(format!(
                "needs parameter {} ({}): give {flag}",
                p.name, p.doc
            )));
        }
        Ok(Mix {
            inputs: base.iter().cloned().chain(models).collect(),
            weights: Vec::new(),
            dtype,
            method,
            settings: Some(settings),
            base: base.map(|_| 0),
            seed,
        })
    }
}

/// A validated merge, planned from headers alone, ready to run.
pub struct Merge {
    plan: Plan,
    layout: Layout,
    kind: OutputKind,
    destination: Option<Destination>,
    extra: Vec<ExtraFile>,
    warnings: Vec<Warning>,
    report: MergeReport,
    strict: bool,
    verify: bool,
    started: Instant,
}

/// Whether `-o PATH` names a file or a model directory: a `.safetensors` name (in any case)
/// is a file, unless `--shard-size` asks for shards; anything else is a directory.
pub fn output_kind(output: &Path, shard_size: Option<u64>) -> Result<OutputKind> {
    let is_file = output.file_name().is_some_and(|n| {
        n.as_encoded_bytes()
            .to_ascii_lowercase()
            .ends_with(b".safetensors")
    });
    match (is_file, shard_size) {
        (true, Some(_)) => Err(Error::Usage(format!(
            "--shard-size writes a model directory, but -o {} names a .safetensors file; give -o a directory name",
            output.display()
        ))),
        (true, None) => Ok(OutputKind::File),
        (false, _) => Ok(OutputKind::Directory),
    }
}

/// Refuses standard output or error that is a file the command line names to read (an input,
/// a file in an input's model directory, `--base`, `--config` or a model of that recipe), or
/// what is already at `-o` (`output`), as [`destination::check_standard_streams`] does, but
/// before anything is opened, parsed or validated: an error found first (a missing input, a
/// bad weight, a corrupt header, an output that exists) would otherwise be printed into that
/// file (`2>> a.safetensors`). [`Merge::plan`] checks again with everything the merge reads.
pub fn check_named_streams(
    inputs: &[PathBuf],
    base: Option<&Path>,
    recipe: Option<&Path>,
    output: Option<&Path>,
) -> Result<()> {
    let mut reads = Reads::new();
    if let Some(output) = output {
        reads.add_existing_output(output);
    }
    for input in inputs {
        reads.add_named(Role::Ingredient, input);
    }
    if let Some(base) = base {
        reads.add_named(Role::Base, base);
    }
    if let Some(path) = recipe {
        reads.add(Role::Recipe, path);
        match Recipe::read(path) {
            Ok(r) => {
                for model in &r.models {
                    reads.add_named(Role::Ingredient, model);
                }
                if let Some(base) = r.base_model.as_deref() {
                    reads.add_named(Role::Base, Path::new(base));
                }
                if let Some(source) = &r.tokenizer_source {
                    reads.add_named(Role::Base, source);
                }
            }
            // A recipe refused later, with its reason, still names its models: any word of
            // it that is a path here may be one, and its refusal must not land there.
            Err(_) => {
                let cap = super::recipe::MAX_RECIPE_BYTES;
                if let Ok(bytes) = crate::format::small_file::read(path, cap, "recipe") {
                    for word in existing_paths(&String::from_utf8_lossy(&bytes)) {
                        reads.add_named(Role::Ingredient, Path::new(word));
                    }
                }
            }
        }
    }
    destination::check_standard_streams(&reads)
}

/// The words of a text (split at YAML's punctuation and white space, and every piece between
/// quotes, which may hold spaces) that are paths of something here, each once.
fn existing_paths(text: &str) -> Vec<&str> {
    let words = text.split(|c: char| {
        c.is_whitespace() || matches!(c, ':' | ',' | '[' | ']' | '{' | '}' | '"' | '\'' | '#')
    });
    let quoted = ['"', '\''].into_iter().flat_map(|q| {
        text.lines()
            .flat_map(move |line| line.split(q).skip(1).step_by(2))
    });
    let mut seen = std::collections::HashSet::new();
    words
        .chain(quoted)
        .filter(|w| !w.is_empty() && seen.insert(*w) && Path::new(w).symlink_metadata().is_ok())
        .collect()
}

/// What a merge reads and writes, checked by the output policy.
fn check_outputs(
    request: &MergeRequest,
    kind: OutputKind,
    ingredients: &[Checkpoint],
    companions: &[Companion],
) -> Result<Option<Destination>> {
    let mut reads = Reads::new();
    for ck in ingredients {
        reads.add_checkpoint(ck);
    }
    if let Some(base) = &request.base {
        reads.add(Role::Base, base);
    }
    if let Some(recipe) = &request.recipe {
        reads.add(Role::Recipe, recipe);
    }
    for (role, path) in &request.also_reads {
        // soup-eval's other ingredients: a model directory reached through their files is
        // protected as one merged here is (a greedy soup leaves rejected ones out).
        match role {
            Role::Ingredient => reads.add_ingredient(path),
            _ => reads.add(*role, path),
        }
    }
    for c in companions {
        if let Companion::Copy { from, .. } = c {
            reads.add(Role::Companion, from);
        }
    }
    // The standard streams are written too: never into an input (`--json >> a.safetensors`),
    // nor into what is at the output's path.
    let mut streams = reads.clone();
    if let Some(output) = &request.output {
        streams.add_existing_output(output);
    }
    destination::check_standard_streams(&streams)?;
    let mut requests = Vec::new();
    if let Some(output) = &request.output {
        requests.push(Request {
            flag: "-o",
            path: output.clone(),
            kind,
        });
    }
    requests.extend(request.also_writes.iter().cloned());
    let mut checked = destination::check(&requests, &reads, request.force)?;
    Ok(request.output.as_ref().map(|_| checked.remove(0)))
}

impl Merge {
    /// Validates the request and plans the merge, reading headers only: the recipe, the
    /// weights, the inputs against each other, the output against the policy, the companion
    /// files and the card. Nothing is written.
    pub fn plan(request: &MergeRequest) -> Result<Merge> {
        let started = Instant::now();
        let recipe = request.recipe.as_deref().map(Recipe::read).transpose()?;
        let mix = match (&recipe, &request.recipe) {
            (Some(r), Some(path)) => Mix::from_recipe(path, r)?,
            _ => Mix::from_flags(request)?,
        };
        let kind = match &request.output {
            Some(o) => output_kind(o, request.shard_size)?,
            None if request.shard_size.is_some() => OutputKind::Directory,
            None => OutputKind::File,
        };
        if let Some(base) = &request.base {
            if mix.base.is_some() {
                if !base.exists() {
                    // A missing model is an input error (kind io, exit 1), as a missing
                    // positional input is, not a usage error.
                    return Err(Error::io(
                        base,
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "the --base model does not exist; give the base model's .safetensors file or directory",
                        ),
                    ));
                }
            } else if kind == OutputKind::File {
                return Err(Error::Usage("--base applies to a model-directory output (or to a method with a base model); give -o a directory name (without .safetensors)".into()));
            } else if !base.is_dir() {
                return Err(Error::Usage(format!(
                    "--base {} is not a directory; give the model directory whose config and tokenizer to copy",
                    base.display()
                )));
            }
        }
        let inputs = mix.inputs.clone();
        let ingredients = inputs
            .iter()
            .map(|p| Checkpoint::open(p))
            .collect::<Result<Vec<_>>>()?;
        if let Some((r, path)) = recipe.as_ref().zip(request.recipe.as_ref()) {
            r.check_slice_layers(&ingredients)
                .map_err(|reason| Error::Recipe {
                    path: path.clone(),
                    reason,
                })?;
        }
        let mut options = PlanOptions {
            dtype: mix.dtype,
            // A base's dtype says nothing about the fine-tunes' precision: with one, as in a
            // recipe, each tensor takes its inputs' promotion, never silently the narrower.
            promote: recipe.is_some() || mix.base.is_some(),
            on_missing: request.on_missing,
            ..Default::default()
        };
        if let Some(r) = &recipe {
            options
                .extra_metadata
                .insert(META_RECIPE.into(), r.text.clone());
        }
        let companion_source = (kind == OutputKind::Directory)
            .then(|| companion_source(request, recipe.as_ref(), &inputs))
            .flatten();
        let tokenizer_source = recipe
            .as_ref()
            .and_then(|r| r.tokenizer_source.as_deref())
            .filter(|_| kind == OutputKind::Directory);
        let companions =
            companions(companion_source.as_deref(), tokenizer_source).map_err(|reason| {
                Error::Recipe {
                    path: request.recipe.clone().unwrap_or_default(),
                    reason,
                }
            })?;
        let destination = check_outputs(request, kind, &ingredients, &companions)?;
        let plan = match &mix.settings {
            None => Plan::new(ingredients, mix.weights.clone(), &options)?,
            Some(settings) => Plan::with_method(
                ingredients,
                &MethodMerge {
                    method: mix.method,
                    settings,
                    base: mix.base,
                    seed: mix.seed,
                },
                &options,
            )
            .map_err(|e| match &request.recipe {
                // A parameter the headers refute is the recipe's to fix.
                Some(path) => Error::Recipe {
                    path: path.clone(),
                    reason: e.to_string(),
                },
                None => e,
            })?,
        };
        let layout = match kind {
            OutputKind::File => Layout::single(
                &plan,
                &request
                    .output
                    .as_deref()
                    .map_or_else(|| "soup.safetensors".into(), display_name),
            ),
            OutputKind::Directory => {
                Layout::sharded(&plan, request.shard_size.unwrap_or(DEFAULT_SHARD_SIZE))
            }
        };
        layout.check_header_sizes(&plan)?;
        let mut warnings = Vec::new();
        warnings.extend(repeated_models(&mix.inputs));
        let extra = match kind {
            OutputKind::File => {
                if recipe.as_ref().is_some_and(|r| r.chat_template.is_some()) {
                    warnings.push(Warning::general(
                        "chat-template",
                        None,
                        "the recipe's chat_template applies to a model directory's tokenizer, and -o names a .safetensors file, which has none; give -o a directory name to have it written".into(),
                    ));
                }
                Vec::new()
            }
            OutputKind::Directory => extra_files(
                request,
                recipe.as_ref(),
                (&plan, &mix.inputs),
                &options,
                &companions,
                &mut warnings,
            )?,
        };
        if kind == OutputKind::Directory && !extra.iter().any(|f| f.name() == "config.json") {
            let skipped = companions.iter().find_map(|c| match c {
                Companion::Skipped {
                    name: "config.json",
                    path,
                    ..
                } => Some(path),
                _ => None,
            });
            let message = match skipped {
                // Its own warning says why; "no input has one" would send the user looking
                // for a config they have.
                Some(path) => format!(
                    "the output directory will have no config.json ({} was skipped, see the warning above), so transformers can't load it as is; make it a regular file inside the model directory and merge again",
                    path.display()
                ),
                None => "the output directory will have no config.json (no base or input is a model directory with one), so transformers can't load it as is; to copy the config and tokenizer, give a model directory that has them as an input, or with soup-merge pass --base DIR".into(),
            };
            warnings.push(Warning::general("no-config", None, message));
        }
        if let Some(source) = companion_source.as_deref() {
            let modules = model_dir::remote_code(source);
            if !modules.is_empty() {
                warnings.push(Warning::general(
                    "remote-code",
                    Some(source.to_path_buf()),
                    format!(
                        "{}'s config names custom code ({}) for transformers' trust_remote_code, which soup-merge does not copy; copy those files from {} into the output before loading it",
                        source.display(),
                        modules.join(", "),
                        source.display()
                    ),
                ));
            }
        }
        let report = summarise(request, &plan, &layout, &extra, &warnings);
        Ok(Merge {
            plan,
            layout,
            kind,
            destination,
            extra,
            warnings,
            report,
            strict: request.strict,
            verify: request.verify,
            started,
        })
    }

    /// The validated plan.
    pub fn plan_ref(&self) -> &Plan {
        &self.plan
    }

    /// The dry run's report: the plan per tensor, nothing read beyond headers. A Ctrl-C that
    /// came while the headers were read (a model of thousands of shards, a slow disk) stops it
    /// here, as it stops a merge at its first chunk: the plan is not printed as if it had not.
    pub fn dry_run(mut self) -> Result<MergeReport> {
        if super::interrupted() {
            return Err(Error::InterruptedWhile(
                "reading the inputs' headers (a dry run); nothing was written".into(),
            ));
        }
        self.report.dry_run = true;
        self.report.plan = Some(planned_tensors(&self.plan));
        Ok(self.report)
    }

    /// Runs the merge and publishes the output atomically. `progress` sees the output bytes
    /// of each finished chunk.
    pub fn run(self, progress: &(dyn Fn(u64) + Sync)) -> Result<MergeReport> {
        let Merge {
            plan,
            layout,
            kind,
            destination,
            extra,
            mut warnings,
            mut report,
            strict,
            verify,
            started,
        } = self;
        let dest =
            destination.ok_or_else(|| Error::Usage("no output path; pass -o PATH".into()))?;
        let record = Record::new();
        let observe = |t: usize, start: usize, bytes: &[u8]| record.observe(t, start, bytes);
        let options = RunOptions {
            strict,
            progress,
            observe: verify.then_some(&observe as _),
        };
        let found = match kind {
            OutputKind::File => execute::write(&plan, &dest, options)?,
            OutputKind::Directory => execute::write_dir(&plan, &layout, &dest, &extra, options)?,
        };
        warnings.extend(found);
        report.warnings = warnings;
        report.seconds = started.elapsed().as_secs_f64();
        report.bytes_written = bytes_on_disk(dest.path());
        if verify {
            report.verified = Some(record.check(&plan, &layout, dest.path())?);
        }
        Ok(report)
    }
}

/// Size of a written file, or of the files in a written directory.
fn bytes_on_disk(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum(),
        Err(_) => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    }
}

/// The companion files of a directory output: `source`'s, with the tokenizer's taken from
/// `tokenizer` instead when a recipe's `tokenizer_source` names another model.
fn companions(
    source: Option<&Path>,
    tokenizer: Option<&Path>,
) -> std::result::Result<Vec<Companion>, String> {
    let mut found = source.map(model_dir::companion_files).unwrap_or_default();
    let Some(tokenizer) = tokenizer else {
        return Ok(found);
    };
    if !tokenizer.is_dir() {
        return Err(format!(
            "tokenizer_source {} is a weights file, which has no tokenizer; name a model directory",
            tokenizer.display()
        ));
    }
    let is_tokenizer = |c: &Companion| model_dir::is_tokenizer_file(c.name());
    let theirs: Vec<Companion> = model_dir::companion_files(tokenizer)
        .into_iter()
        .filter(is_tokenizer)
        .collect();
    if theirs.is_empty() {
        return Err(format!(
            "tokenizer_source {} has no tokenizer files (tokenizer.json, tokenizer_config.json, ...); name a model directory that has them",
            tokenizer.display()
        ));
    }
    found.retain(|c| !is_tokenizer(c));
    found.extend(theirs);
    // In the order of the file list, as a single source gives them.
    let rank = |c: &Companion| {
        model_dir::COMPANION_FILES
            .iter()
            .position(|n| *n == c.name())
    };
    found.sort_by_key(rank);
    Ok(found)
}

/// Where a directory output's config and tokenizer come from: --base, the recipe's
/// base_model, or an input, whichever is a model directory first.
fn companion_source(
    request: &MergeRequest,
    recipe: Option<&Recipe>,
    inputs: &[PathBuf],
) -> Option<PathBuf> {
    // A base given as a file has no config to copy: the inputs' model directories still do.
    let recipe_base = recipe
        .and_then(|r| r.base_model.as_ref())
        .map(PathBuf::from);
    request
        .base
        .clone()
        .into_iter()
        .chain(recipe_base)
        .chain(inputs.iter().cloned())
        .find(|p| p.is_dir())
}

/// The dtype a directory output's config.json should name: --dtype (or the recipe's), else the
/// dtype of most of the averaged bytes.
fn config_dtype(plan: &Plan, options: &PlanOptions) -> Option<Dtype> {
    if options.dtype.is_some() {
        return options.dtype;
    }
    let mut bytes: Vec<(Dtype, u64)> = Vec::new();
    for t in plan
        .tensors
        .iter()
        .filter(|t| !matches!(t.action, Action::Copy { .. }))
    {
        match bytes.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some((_, n)) => *n += t.end - t.begin,
            None => bytes.push((t.dtype, t.end - t.begin)),
        }
    }
    bytes.into_iter().max_by_key(|&(_, n)| n).map(|(d, _)| d)
}

/// The non-weight files of a directory output: the companion files that may travel (config
/// with its dtype updated, tokenizer, chat template) and the model card. Companions that may
/// not travel become warnings.
fn extra_files(
    request: &MergeRequest,
    recipe: Option<&Recipe>,
    (plan, inputs): (&Plan, &[PathBuf]),
    options: &PlanOptions,
    companions: &[Companion],
    warnings: &mut Vec<Warning>,
) -> Result<Vec<ExtraFile>> {
    let dtype = config_dtype(plan, options);
    let mut extra = Vec::new();
    for c in companions {
        match c {
            Companion::Skipped { path, reason, .. } => warnings.push(Warning::general(
                "companion-skipped",
                Some(path.clone()),
                format!(
                    "{} {reason}; it was not copied into the output",
                    path.display()
                ),
            )),
            Companion::Copy { name, from } => match dtype.and_then(model_dir::torch_name) {
                Some(torch) if *name == "config.json" => {
                    // Parsed whole, at about 20 times its size: the largest real configs
                    // (a label map of 21 000 classes) are near 1 MiB.
                    let (bytes, read) = crate::format::small_file::read_source(
                        from,
                        crate::format::small_file::MAX_CONFIG_BYTES,
                        "config",
                    )?;
                    let bytes = model_dir::config_with_dtype(from, &bytes, torch)?;
                    extra.push(ExtraFile::Bytes {
                        name: name.to_string(),
                        bytes,
                        from: vec![read],
                    });
                }
                _ => extra.push(ExtraFile::Copy {
                    name: name.to_string(),
                    from: from.clone(),
                }),
            },
        }
    }
    let wanted = recipe.and_then(|r| r.chat_template.as_ref());
    if let Some((template, from)) = wanted.and_then(|w| chat::choose(w, inputs)) {
        chat::apply(&template, &from, &mut extra, warnings)?;
    }
    let title = request
        .output
        .as_deref()
        .map_or_else(|| "soup".into(), display_name);
    let base_model = recipe.and_then(|r| r.base_model.as_deref());
    let mut card = Card::for_plan(plan, &title, base_model);
    card.dtype = match options.dtype {
        Some(d) => Some(model_dir::torch_name(d).unwrap_or(d.name()).to_string()),
        // Not the first model's: with a base (or a recipe) a bf16 model and an f32 one give f32.
        None if options.promote => Some(
            "each tensor in the promotion of its models' dtypes (bf16 with f32 gives f32, bf16 with f16 gives f32)"
                .to_string(),
        ),
        None => None,
    };
    card.on_missing = request.on_missing.name().to_string();
    card.recipe = recipe.map(|r| r.text.clone());
    extra.push(ExtraFile::Bytes {
        name: "README.md".into(),
        bytes: card.render().into_bytes(),
        from: Vec::new(),
    });
    Ok(extra)
}

fn dtype_summary(plan: &Plan) -> Vec<DtypeSummary> {
    let mut out: Vec<DtypeSummary> = Vec::new();
    for t in &plan.tensors {
        let name = t.dtype.name().to_string();
        let i = match out.iter().position(|d| d.dtype == name) {
            Some(i) => i,
            None => {
                out.push(DtypeSummary {
                    dtype: name,
                    tensors: 0,
                    parameters: 0,
                    bytes: 0,
                });
                out.len() - 1
            }
        };
        out[i].tensors += 1;
        out[i].parameters += t.elements();
        out[i].bytes += t.end - t.begin;
    }
    out
}

fn summarise(
    request: &MergeRequest,
    plan: &Plan,
    layout: &Layout,
    extra: &[ExtraFile],
    warnings: &[Warning],
) -> MergeReport {
    let averaged = plan
        .tensors
        .iter()
        .filter(|t| !matches!(t.action, Action::Copy { .. }))
        .count();
    MergeReport {
        output: request.output.clone(),
        dry_run: false,
        inputs: plan
            .ingredients
            .iter()
            .zip(&plan.weights)
            .map(|(ck, &w)| InputReport {
                path: ck.path().to_path_buf(),
                weight: w,
                shards: ck.shards().len(),
            })
            .collect(),
        tensors: plan.tensors.len(),
        averaged,
        copied: plan.tensors.len() - averaged,
        missing: plan.missing.clone(),
        bytes_read: plan.read_len(),
        output_bytes: layout.total_len(),
        bytes_written: 0,
        seconds: 0.0,
        warnings: warnings.to_vec(),
        parameters: plan.tensors.iter().map(|t| t.elements()).sum(),
        dtypes: dtype_summary(plan),
        files: layout.summary(),
        extra_files: extra.iter().map(|f| f.name().to_string()).collect(),
        config: request.recipe.clone(),
        plan: None,
        verified: None,
    }
}

fn planned_tensors(plan: &Plan) -> Vec<PlannedTensor> {
    plan.tensors
        .iter()
        .map(|t| {
            let (action, terms) = match &t.action {
                Action::Average { terms, .. } => (
                    "average",
                    terms.iter().map(|x| (x.ingredient, x.weight)).collect(),
                ),
                Action::Copy { from, .. } => ("copy", vec![(*from, 1.0)]),
                // The coefficients depend on the data; the inputs are listed with weight 1.
                Action::Whole(w) => (w.method, w.inputs.iter().map(|&i| (i, 1.0)).collect()),
            };
            PlannedTensor {
                name: t.name.clone(),
                dtype: t.dtype.name().to_string(),
                shape: t.shape.clone(),
                action,
                terms,
            }
        })
        .collect()
}

/// A warning for each model given again (however spelled: a link, a hard link, a model
/// directory and its own weights file), naming both places. mergekit merges a model listed
/// twice without a word; it is most often a slip (a repeated path, a glob that matched a link),
/// and it silently doubles that model's weight in any soup of them all.
pub fn repeated_models(paths: &[PathBuf]) -> Vec<Warning> {
    let mut warnings = Vec::new();
    // One look-up per input: comparing every pair took 20 s for 3000 inputs.
    let mut first_of = std::collections::HashMap::new();
    for (j, later) in paths.iter().enumerate() {
        let i = *first_of.entry(model_key(later)).or_insert(j);
        if i != j {
            let first = if paths[i] == *later {
                String::new()
            } else {
                format!(", the first as {}", paths[i].display())
            };
            warnings.push(Warning::general(
                "repeated-input",
                Some(later.clone()),
                format!(
                    "{} is given twice (inputs {i} and {j}{first}); each counts as a model of its own, so it weighs double in a soup of them all; drop one if that was not meant",
                    later.display()
                ),
            ));
        }
    }
    warnings
}

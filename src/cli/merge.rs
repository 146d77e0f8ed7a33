//! `soup-merge`: flags, validation of flags into a `Plan`, running it, and the summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::format::{model_dir, Checkpoint, Dtype};
use crate::soup::method::{self, BaseUse, Method, Setting, Settings};
use crate::soup::{
    self, Action, Card, ExtraFile, FileSummary, Layout, MethodMerge, OnMissing, Plan, PlanOptions,
    Recipe, RunOptions, Warning, DEFAULT_SHARD_SIZE, META_RECIPE,
};

const AFTER_HELP: &str = "\
How tensors are merged:
  Float tensors (F16, BF16, F32, F64) are averaged: out = sum_i w_i * x_i, summed in input order.
  The sum is kept in f32 when the output is F16/BF16, and in f64 when the output is F32/F64 or any
  input is F64, then rounded once to the output dtype (round to nearest even). Inputs may mix
  float dtypes. The output dtype is the first input's unless --dtype says otherwise.
  Other tensors (integers, BOOL, F8 types, C64) are never averaged. Identical in every input,
  they are copied; when they differ (BatchNorm's num_batches_tracked after different epochs, say)
  the first input's value is copied and a warning names them. --strict makes that an error.
  NaN or infinite values in an input, or an overflow when rounding to the output dtype, are
  warnings too, and errors under --strict.

Safety:
  Every header is validated, and every input checked against the others, before any tensor data
  is read. The output is written to a hidden temporary beside it, fsynced and renamed into
  place: on any error, Ctrl-C or a full disk nothing appears at the destination. An existing
  output is refused without --force; an output that is one of the inputs is always refused.

Model directories:
  An input may be a Hugging Face model directory: its model.safetensors, or its
  model.safetensors.index.json and shards (the index is checked against the shards). When -o does
  not end in .safetensors, or --shard-size is given, the output is a model directory: shards of at
  most --shard-size (default 5GB) named model-00001-of-0000N.safetensors with their index (one
  shard is model.safetensors), the config, generation config, tokenizer and chat template of the
  first input (or --base DIR) with torch_dtype set to the output dtype, and a README.md model card.
  It is built in a hidden temporary directory beside it and renamed into place when complete.

Methods (--method, default linear; mergekit's names, parameters and defaults):
  linear            sum w_i x_i                          weight, normalize
  task_arithmetic   base + lambda sum w_i (x_i - base)   weight, lambda, normalize
  ties              trim to density, elect sign, mean    weight, density, lambda, normalize
  dare_linear       random drop, rescale, sum            weight, density, lambda, rescale
  dare_ties         random drop, rescale, elect sign     weight, density, lambda, rescale
  della             ranked drop, rescale, elect sign     weight, density, epsilon, lambda
  della_linear      ranked drop, rescale, sum            weight, density, epsilon, lambda
  breadcrumbs       drop largest gamma and smallest      weight, density, gamma, lambda
  breadcrumbs_ties  breadcrumbs, elect sign              weight, density, gamma, lambda
  slerp             spherical, base to one model         t
  nuslerp           spherical, two models (+ base)       weight, nuslerp_flatten, nuslerp_row_wise
  model_stock       base + 2 or more fine-tunes          filter_wise
  passthrough       one model, scaled                    scale
  Methods with a base take it from --base (a file or model directory; an input that is the same
  file is the base, not a model). -w gives one weight per model besides the base (default 1/N
  for linear, 1 otherwise); --density, --t, --lambda, --epsilon, --gamma and --param NAME=VALUE
  set the method's parameters; --seed seeds DARE's and DELLA's drops (default 0), per tensor, so
  the bytes are the same at any thread count. Whole-tensor methods hold about 8 bytes per element
  of the largest tensor, beside the inputs' mapped pages of that tensor.

Recipes:
  --config recipe.yaml reads a mergekit config: merge_method (any method above), base_model,
  models[].model, models[].parameters, top-level parameters (the method's, and per-model
  defaults), per-layer gradient lists and filter/value entries, dtype, out_dtype,
  tokenizer_source: base, random_seed. Any other key, parameter or method is an error naming it.
  The recipe is stored in the output's __metadata__ (model_soup.recipe) and model card.

Exit status: 0 success, 1 any error (one line on stderr: error: ...), 2 bad command line,
130 interrupted. With --json, stdout holds one JSON object, also on failure ({\"error\": ...}).

Examples:
  soup-merge a.safetensors b.safetensors c.safetensors -o soup.safetensors
  soup-merge a.safetensors b.safetensors -w 0.7,0.3 --dtype bf16 -o soup.safetensors
  soup-merge a.safetensors b.safetensors -o soup.safetensors --dry-run
  soup-merge ./ft-a ./ft-b -o ./soup --shard-size 2GB
  soup-merge --config recipe.yaml -o ./soup";

/// Average safetensors checkpoints into one model soup, streaming and in parallel.
#[derive(Debug, Parser)]
#[command(name = "soup-merge", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Input checkpoints (.safetensors files or Hugging Face model directories), fine-tunes of
    /// one model with the same tensor names and shapes. One input just converts it (with
    /// --dtype).
    #[arg(required_unless_present = "config", value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Read the inputs, method, parameters and dtype from a mergekit YAML recipe.
    #[arg(
        long,
        value_name = "RECIPE",
        conflicts_with_all = ["inputs", "weights", "normalize", "dtype", "method", "density", "t", "lambda", "epsilon", "gamma", "param", "seed"]
    )]
    pub config: Option<PathBuf>,

    /// The merge method (see below): linear, task_arithmetic, ties, dare_linear, dare_ties,
    /// della, della_linear, breadcrumbs, breadcrumbs_ties, slerp, nuslerp, model_stock,
    /// passthrough.
    #[arg(long, value_name = "METHOD", default_value = "linear")]
    pub method: String,

    /// Fraction of each task vector kept (ties, dare_*, della*, breadcrumbs*), in (0, 1].
    #[arg(long, value_name = "D")]
    pub density: Option<f64>,

    /// Interpolation factor of slerp, in [0, 1] (0 = the base).
    #[arg(long = "t", value_name = "T")]
    pub t: Option<f64>,

    /// Scale of the merged task vector (task-vector methods).
    #[arg(long, value_name = "L", allow_hyphen_values = true)]
    pub lambda: Option<f64>,

    /// Half-width of DELLA's keep probabilities.
    #[arg(long, value_name = "E")]
    pub epsilon: Option<f64>,

    /// Fraction of the largest magnitudes breadcrumbs drops.
    #[arg(long, value_name = "G")]
    pub gamma: Option<f64>,

    /// Any other parameter of the method, as NAME=VALUE (a number, true or false); repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub param: Vec<String>,

    /// Seed of the random drops of dare_* and della*.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Write a model directory with shards of at most this size (5GB, 500MB, 2GiB). Default for
    /// a directory output: 5GB.
    #[arg(long, value_name = "SIZE", value_parser = parse_shard_size)]
    pub shard_size: Option<u64>,

    /// The base model of methods that use one (a .safetensors file or model directory). For
    /// a directory output, config.json, the tokenizer and the chat template come from it
    /// instead of the first input.
    #[arg(long, value_name = "PATH")]
    pub base: Option<PathBuf>,

    /// Where to write the soup: a .safetensors file, or a Hugging Face model directory when the
    /// name does not end in .safetensors (see --shard-size).
    #[arg(short, long, value_name = "PATH", required_unless_present = "dry_run")]
    pub output: Option<PathBuf>,

    /// One weight per input (alphal), comma-separated, used exactly as given: they may be
    /// negative and need not sum to 1. Default: 1/N each.
    #[arg(
        short,
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_name = "W,W,..."
    )]
    pub weights: Option<Vec<f64>>,

    /// Divide the weights by their sum.
    #[arg(long)]
    pub normalize: bool,

    /// Output dtype of averaged tensors. Default: the first input's.
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<OutDtype>,

    /// What to do with tensors that some inputs lack.
    #[arg(long, value_enum, default_value_t = OnMissing::Error, value_name = "POLICY")]
    pub on_missing: OnMissing,

    /// Make warnings errors: differing non-float tensors, NaN/Inf in inputs, overflow.
    #[arg(long)]
    pub strict: bool,

    /// Replace an existing output.
    #[arg(short, long)]
    pub force: bool,

    /// Validate and print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    pub json: bool,

    /// After writing, read the output back from the disk, check its header and every tensor
    /// against what was written, and report each file's sha256 (in the --json summary too).
    #[arg(long)]
    pub verify: bool,

    /// No progress bar and no summary line on stderr. Warnings are still printed.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `--dtype` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutDtype {
    F32,
    F16,
    Bf16,
    F64,
}

impl From<OutDtype> for Dtype {
    fn from(d: OutDtype) -> Dtype {
        match d {
            OutDtype::F32 => Dtype::F32,
            OutDtype::F16 => Dtype::F16,
            OutDtype::Bf16 => Dtype::BF16,
            OutDtype::F64 => Dtype::F64,
        }
    }
}

/// The `--json` summary of a merge (or of a plan, with `--dry-run`).
#[derive(Debug, Serialize)]
pub struct MergeReport {
    /// The output path, or null for a dry run without -o.
    pub output: Option<PathBuf>,
    /// Whether this was a dry run: nothing was read beyond headers, nothing written.
    pub dry_run: bool,
    /// Inputs in command-line order, with the weights actually used.
    pub inputs: Vec<InputReport>,
    /// Output tensors.
    pub tensors: usize,
    /// Tensors averaged (float dtypes).
    pub averaged: usize,
    /// Tensors copied (non-float dtypes).
    pub copied: usize,
    /// Tensors not in every input (handled by --on-missing).
    pub missing: Vec<String>,
    /// Bytes of tensor data read from the inputs.
    pub bytes_read: u64,
    /// Size of the output file, header included, as planned.
    pub output_bytes: u64,
    /// Bytes actually written (0 in a dry run).
    pub bytes_written: u64,
    /// Wall-clock seconds from start to the output being in place.
    pub seconds: f64,
    /// Findings about the data; the merge went on.
    pub warnings: Vec<Warning>,
    /// Parameters (elements) in the output's tensors.
    pub parameters: u64,
    /// Output tensors per dtype: count and bytes.
    pub dtypes: Vec<DtypeSummary>,
    /// The output's safetensors files: one, or the shards of a model directory.
    pub files: Vec<FileSummary>,
    /// Non-weight files written beside the shards of a directory output (config, tokenizer,
    /// model card).
    pub extra_files: Vec<String>,
    /// The recipe file, with --config.
    pub config: Option<PathBuf>,
    /// The plan per tensor, with --dry-run only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Vec<PlannedTensor>>,
    /// With --verify: the output as read back, with the sha256 of each file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<soup::Verified>,
}

/// Output tensors of one dtype.
#[derive(Debug, Serialize)]
pub struct DtypeSummary {
    /// The dtype's safetensors name.
    pub dtype: String,
    /// Number of tensors.
    pub tensors: usize,
    /// Parameters (elements) in them.
    pub parameters: u64,
    /// Bytes of tensor data.
    pub bytes: u64,
}

/// One input in the summary.
#[derive(Debug, Serialize)]
pub struct InputReport {
    /// The file or model directory, as given.
    pub path: PathBuf,
    /// The weight used, after --normalize.
    pub weight: f64,
    /// Number of safetensors files it is stored in (1 for a file or model.safetensors).
    pub shards: usize,
}

/// One output tensor in a dry run.
#[derive(Debug, Serialize)]
pub struct PlannedTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// `average` or `copy`.
    pub action: &'static str,
    /// Indices of the inputs used, with their weights (1 for a copy).
    pub terms: Vec<(usize, f64)>,
}

/// Runs `soup-merge` with parsed arguments and returns the process's exit status.
pub fn main(args: Args) -> ExitCode {
    super::handle_interrupts();
    let json = args.json;
    match run(&args) {
        Ok(report) => {
            let printed = if json {
                super::print(
                    &(serde_json::to_string_pretty(&report).expect("report serialises") + "\n"),
                )
            } else if report.dry_run {
                super::print(&describe_plan(&report))
            } else {
                Ok(())
            };
            if let Err(e) = printed {
                return super::fail(&anyhow::Error::new(e).context("cannot write to stdout"));
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            if json {
                let _ = super::print(&format!(
                    "{}\n",
                    serde_json::json!({ "error": super::one_line(&format!("{err:#}")) })
                ));
            }
            super::fail(&err)
        }
    }
}

/// What to merge, from the command line or a recipe.
struct Merge {
    /// The ingredients, the base first when the method uses one.
    inputs: Vec<PathBuf>,
    /// The weights of a linear merge with one number per input (`Plan::new`).
    weights: Vec<f64>,
    dtype: Option<Dtype>,
    recipe: Option<Recipe>,
    method: &'static dyn Method,
    /// Every other method's parameters (`Plan::with_method`); `None` for the linear path.
    settings: Option<Settings>,
    /// The base's index in `inputs`.
    base: Option<usize>,
    seed: u64,
}

fn merge_inputs(args: &Args) -> anyhow::Result<Merge> {
    let Some(path) = &args.config else {
        return flag_merge(args);
    };
    let recipe = Recipe::read(path)?;
    let base = recipe
        .base_is_ingredient()
        .then(|| PathBuf::from(recipe.base_model.as_deref().expect("has a base")));
    for (i, model) in recipe.models.iter().enumerate() {
        if !model.exists() {
            bail!(
                "{}: models[{i}].model {} is not a local file or directory; soup-merge does not download models: fetch it first (huggingface-cli download REPO --local-dir DIR) and put the directory in the recipe",
                path.display(),
                model.display()
            );
        }
    }
    if let Some(b) = &base {
        if !b.exists() {
            bail!(
                "{}: base_model {} is not a local file or directory; soup-merge does not download models: fetch it first and put the directory in the recipe",
                path.display(),
                b.display()
            );
        }
    }
    let seed = recipe.seed.unwrap_or(0);
    let method = recipe.method;
    if let Some(weights) = recipe.linear_weights() {
        return Ok(Merge {
            inputs: recipe.models.clone(),
            weights,
            dtype: recipe.dtype,
            method,
            settings: None,
            base: None,
            seed,
            recipe: Some(recipe),
        });
    }
    Ok(Merge {
        inputs: base
            .iter()
            .cloned()
            .chain(recipe.models.iter().cloned())
            .collect(),
        weights: Vec::new(),
        dtype: recipe.dtype,
        method,
        settings: Some(recipe.settings.clone()),
        base: base.map(|_| 0),
        seed,
        recipe: Some(recipe),
    })
}

/// A merge from flags: the method, its base, and settings from -w and the parameter flags.
fn flag_merge(args: &Args) -> anyhow::Result<Merge> {
    let method = method::find(&args.method).with_context(|| {
        format!(
            "--method {} is not a merge method; use one of {}",
            args.method,
            method::names()
        )
    })?;
    let base = match (method.base(), &args.base) {
        (BaseUse::Unused, _) | (_, None) => None,
        (_, Some(b)) => Some(b.clone()),
    };
    // An input that is the base file is the base, as a mergekit recipe lists it among models.
    let models: Vec<PathBuf> = args
        .inputs
        .iter()
        .filter(|p| !base.as_ref().is_some_and(|b| same_file(b, p)))
        .cloned()
        .collect();
    let mut settings = Settings::new(models.len());
    let declares = |name: &str| method.params().iter().any(|p| p.name == name);
    let linear = method.name() == "linear";
    // A linear merge's weights are checked (and normalized) as they always were.
    let linear_weights = if linear { Some(weights(args)?) } else { None };
    if let Some(w) = args.weights.as_ref().filter(|_| !linear) {
        if let Some(bad) = w.iter().find(|x| !x.is_finite()) {
            bail!("--weights value {bad} is not finite; give finite numbers");
        }
        if w.len() != models.len() {
            bail!(
                "--weights has {} values for {} models{}; give one weight per model",
                w.len(),
                models.len(),
                if base.is_some() {
                    " besides the base"
                } else {
                    ""
                }
            );
        }
        if !declares("weight") {
            bail!("--weights: {} takes no weights", method.name());
        }
        for (m, x) in w.iter().enumerate() {
            settings.set_model(m, "weight", Setting::Value(*x), "--weights");
        }
    } else if declares("weight") && !linear {
        settings.set_global(
            "weight",
            Setting::Value(1.0),
            "--weights (1 each by default)",
        );
    }
    if args.normalize && !linear {
        settings.set_global("normalize", Setting::Value(1.0), "--normalize");
    }
    let flags = [
        ("density", args.density),
        ("t", args.t),
        ("lambda", args.lambda),
        ("epsilon", args.epsilon),
        ("gamma", args.gamma),
    ];
    for (name, value) in flags {
        if let Some(v) = value {
            settings.set_global(name, Setting::Value(v), format!("--{name}"));
        }
    }
    for p in &args.param {
        let (name, value) = p
            .split_once('=')
            .with_context(|| format!("--param {p}: give NAME=VALUE, such as rescale=false"))?;
        let value = match value {
            "true" => 1.0,
            "false" => 0.0,
            v => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .with_context(|| format!("--param {p}: {v} is not a number, true or false"))?,
        };
        settings.set_global(name, Setting::Value(value), format!("--param {name}"));
    }
    settings
        .check(method, u64::MAX)
        .map_err(|e| anyhow::anyhow!("--method {}: {e}", method.name()))?;
    let seed = args.seed.unwrap_or(0);
    if let Some(weights) = linear_weights {
        return Ok(Merge {
            inputs: args.inputs.clone(),
            weights,
            dtype: args.dtype.map(Dtype::from),
            recipe: None,
            method,
            settings: None,
            base: None,
            seed,
        });
    }
    Ok(Merge {
        inputs: base.iter().cloned().chain(models).collect(),
        weights: Vec::new(),
        dtype: args.dtype.map(Dtype::from),
        recipe: None,
        method,
        settings: Some(settings),
        base: base.map(|_| 0),
        seed,
    })
}

/// Whether two paths name the same file or directory.
fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Where the output goes: one file, or a model directory of shards.
enum Output {
    File,
    Dir { shard_size: u64 },
}

fn output_kind(args: &Args) -> anyhow::Result<Output> {
    let is_file = args
        .output
        .as_ref()
        .is_some_and(|o| o.extension().is_some_and(|e| e == "safetensors"));
    match (is_file, args.shard_size) {
        (true, Some(_)) => bail!(
            "--shard-size writes a model directory, but -o {} names a .safetensors file; give -o a directory name",
            args.output.as_ref().expect("is_file").display()
        ),
        (true, None) => {
            if args.base.is_some() && method_base(args) == BaseUse::Unused {
                bail!("--base applies to a model-directory output; give -o a directory name (without .safetensors)");
            }
            Ok(Output::File)
        }
        (false, size) if args.output.is_some() || size.is_some() => Ok(Output::Dir {
            shard_size: size.unwrap_or(DEFAULT_SHARD_SIZE),
        }),
        _ => Ok(Output::File),
    }
}

/// Validates the flags, plans the merge and runs it.
pub fn run(args: &Args) -> anyhow::Result<MergeReport> {
    let started = Instant::now();
    let merge = merge_inputs(args)?;
    let kind = output_kind(args)?;
    if let Some(base) = &args.base {
        if merge.base.is_some() {
            if !base.exists() {
                bail!(
                    "--base {} does not exist; give the base model's .safetensors file or directory",
                    base.display()
                );
            }
        } else if !base.is_dir() {
            bail!(
                "--base {} is not a directory; give the model directory whose config and tokenizer to copy",
                base.display()
            );
        }
    }
    let ingredients = merge
        .inputs
        .iter()
        .map(|p| Checkpoint::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = PlanOptions {
        dtype: merge.dtype,
        on_missing: args.on_missing,
        ..Default::default()
    };
    if let Some(recipe) = &merge.recipe {
        options
            .extra_metadata
            .insert(META_RECIPE.into(), recipe.text.clone());
    }
    let plan = match &merge.settings {
        None => Plan::new(ingredients, merge.weights.clone(), &options)?,
        Some(settings) => Plan::with_method(
            ingredients,
            &MethodMerge {
                method: merge.method,
                settings,
                base: merge.base,
                seed: merge.seed,
            },
            &options,
        )
        .map_err(|e| match &args.config {
            // A parameter the headers refute is the recipe's to fix.
            Some(path) => anyhow::Error::new(e).context(path.display().to_string()),
            None => anyhow::Error::new(e),
        })?,
    };
    let layout = match kind {
        Output::File => Layout::single(
            &plan,
            &args
                .output
                .as_deref()
                .map_or_else(|| "soup.safetensors".into(), soup::display_name),
        ),
        Output::Dir { shard_size } => Layout::sharded(&plan, shard_size),
    };
    let extra = match kind {
        Output::File => Vec::new(),
        Output::Dir { .. } => extra_files(args, &merge, &plan, &options)?,
    };
    if matches!(kind, Output::Dir { .. }) && !extra.iter().any(|f| f.name() == "config.json") {
        eprintln!("warning: the output directory will have no config.json (the first input is not a model directory with one), so transformers can't load it as is; pass --base DIR to copy the config and tokenizer from a model directory");
    }
    let mut report = summarise(args, &merge, &plan, &layout, &extra);
    if args.dry_run {
        report.plan = Some(planned_tensors(&plan));
        return Ok(report);
    }
    let output = args
        .output
        .as_ref()
        .context("no output path; pass -o PATH")?;
    let bar = super::progress_bar(plan.data_len(), args.quiet);
    let progress = |n: u64| bar.inc(n);
    let record = soup::Record::new();
    let observe = |t: usize, start: usize, bytes: &[u8]| record.observe(t, start, bytes);
    let run_options = RunOptions {
        strict: args.strict,
        progress: &progress,
        observe: args.verify.then_some(&observe as _),
    };
    let warnings = match kind {
        Output::File => soup::write(&plan, output, args.force, run_options)?,
        Output::Dir { .. } => {
            soup::write_dir(&plan, &layout, output, args.force, &extra, run_options)?
        }
    };
    bar.finish_and_clear();
    for w in &warnings {
        eprintln!("warning: {}", super::one_line(&w.message));
    }
    report.warnings = warnings;
    report.seconds = started.elapsed().as_secs_f64();
    report.bytes_written = bytes_on_disk(output);
    if args.verify {
        let verified = record.check(&plan, &layout, output)?;
        if !args.quiet {
            let hash = verified
                .sha256
                .as_deref()
                .unwrap_or("see --json for each file");
            eprintln!(
                "verified {} tensors as read back; sha256 {hash}",
                verified.tensors
            );
        }
        report.verified = Some(verified);
    }
    if !args.quiet {
        eprintln!(
            "wrote {} ({} tensors, {:.1} MB) in {:.2} s",
            output.display(),
            report.tensors,
            report.bytes_written as f64 / 1e6,
            report.seconds
        );
    }
    Ok(report)
}

/// How the method named by --method uses a base (`Unused` for an unknown name, which fails
/// elsewhere with its own message).
fn method_base(args: &Args) -> BaseUse {
    method::find(&args.method).map_or(BaseUse::Unused, |m| m.base())
}

fn weights(args: &Args) -> anyhow::Result<Vec<f64>> {
    let n = args.inputs.len();
    let mut w = match &args.weights {
        Some(w) if w.len() != n => bail!(
            "--weights has {} values for {n} inputs; give one weight per input",
            w.len()
        ),
        Some(w) => w.clone(),
        None => vec![1.0 / n as f64; n],
    };
    if let Some(bad) = w.iter().find(|x| !x.is_finite()) {
        bail!("--weights value {bad} is not finite; give finite numbers");
    }
    if args.normalize {
        let sum: f64 = w.iter().sum();
        if sum == 0.0 || !sum.is_finite() {
            bail!("--normalize needs weights with a non-zero sum, but they sum to {sum}");
        }
        w.iter_mut().for_each(|x| *x /= sum);
    }
    Ok(w)
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

/// The non-weight files of a directory output: the config, tokenizer and chat template of
/// --base, the recipe's base_model or the first input (whichever is a directory first), and
/// the model card.
fn extra_files(
    args: &Args,
    merge: &Merge,
    plan: &Plan,
    options: &PlanOptions,
) -> anyhow::Result<Vec<ExtraFile>> {
    let recipe_base = merge
        .recipe
        .as_ref()
        .and_then(|r| r.base_model.as_ref())
        .map(PathBuf::from)
        .filter(|p| p.is_dir());
    let source = args
        .base
        .clone()
        .or(recipe_base)
        .or_else(|| merge.inputs.first().filter(|p| p.is_dir()).cloned());
    let dtype = config_dtype(plan, options);
    let mut extra = Vec::new();
    if let Some(dir) = &source {
        for from in model_dir::companion_files(dir) {
            let name = soup::display_name(&from);
            match dtype.and_then(model_dir::torch_name) {
                Some(torch) if name == "config.json" => {
                    let bytes = std::fs::read(&from)
                        .with_context(|| format!("cannot read {}", from.display()))?;
                    let bytes = model_dir::config_with_dtype(&from, &bytes, torch)?;
                    extra.push(ExtraFile::Bytes { name, bytes });
                }
                _ => extra.push(ExtraFile::Copy { name, from }),
            }
        }
    }
    let title = args
        .output
        .as_deref()
        .map_or_else(|| "soup".into(), soup::display_name);
    let base_model = merge.recipe.as_ref().and_then(|r| r.base_model.as_deref());
    let mut card = Card::for_plan(plan, &title, base_model);
    card.dtype = options
        .dtype
        .map(|d| model_dir::torch_name(d).unwrap_or(d.name()).to_string());
    card.on_missing = args
        .on_missing
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string());
    card.recipe = merge.recipe.as_ref().map(|r| r.text.clone());
    extra.push(ExtraFile::Bytes {
        name: "README.md".into(),
        bytes: card.render().into_bytes(),
    });
    Ok(extra)
}

fn parse_shard_size(text: &str) -> Result<u64, String> {
    soup::parse_size(text)
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
    args: &Args,
    merge: &Merge,
    plan: &Plan,
    layout: &Layout,
    extra: &[ExtraFile],
) -> MergeReport {
    let averaged = plan
        .tensors
        .iter()
        .filter(|t| !matches!(t.action, Action::Copy { .. }))
        .count();
    MergeReport {
        output: args.output.clone(),
        dry_run: args.dry_run,
        inputs: merge
            .inputs
            .iter()
            .zip(&plan.weights)
            .zip(&plan.ingredients)
            .map(|((p, &w), ck)| InputReport {
                path: p.clone(),
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
        warnings: Vec::new(),
        parameters: plan.tensors.iter().map(|t| t.elements()).sum(),
        dtypes: dtype_summary(plan),
        files: layout.summary(),
        extra_files: extra.iter().map(|f| f.name().to_string()).collect(),
        config: args.config.clone(),
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

fn describe_plan(report: &MergeReport) -> String {
    let mut s = String::new();
    for (i, input) in report.inputs.iter().enumerate() {
        let shards = match input.shards {
            1 => String::new(),
            n => format!("{n} shards, "),
        };
        let weight = if input.weight.is_finite() {
            format!("weight {}", input.weight)
        } else {
            "parameters per tensor".to_string()
        };
        s += &format!("input {i}: {} ({shards}{weight})\n", input.path.display());
    }
    for t in report.plan.iter().flatten() {
        let terms: Vec<String> = match t.action {
            "average" | "copy" => t.terms.iter().map(|(i, w)| format!("{w}*in{i}")).collect(),
            _ => t.terms.iter().map(|(i, _)| format!("in{i}")).collect(),
        };
        s += &format!(
            "{:<8} {:<5} {:<20} {}  {}\n",
            t.action,
            t.dtype,
            format!("{:?}", t.shape),
            crate::error::printable(&t.name),
            terms.join(" + ")
        );
    }
    for d in &report.dtypes {
        s += &format!(
            "dtype {:<5} {} tensors, {} parameters, {:.1} MB\n",
            d.dtype,
            d.tensors,
            d.parameters,
            d.bytes as f64 / 1e6
        );
    }
    for f in &report.files {
        s += &format!(
            "file {}: {} tensors, {} bytes\n",
            f.name, f.tensors, f.bytes
        );
    }
    if !report.extra_files.is_empty() {
        s += &format!("with {}\n", report.extra_files.join(", "));
    }
    s += &format!("{} parameters\n", report.parameters);
    s += &format!(
        "{} tensors: {} averaged, {} copied, {} not in every input; {:.1} MB to read, {:.1} MB to write\n",
        report.tensors,
        report.averaged,
        report.copied,
        report.missing.len(),
        report.bytes_read as f64 / 1e6,
        report.output_bytes as f64 / 1e6
    );
    s
}

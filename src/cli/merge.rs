//! `soup-merge`'s front end: its flags, and printing what `soup::Merge` reports. The merge
//! itself, and every rule about inputs, weights and outputs, is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::format::Dtype;
use crate::soup::{self, Merge, MergeReport, MergeRequest, OnMissing, PARAMETER_FLAGS};

const AFTER_HELP: &str = "\
How tensors are merged:
  Float tensors (F16, BF16, F32, F64) are averaged: out = sum_i w_i * x_i, summed in input order.
  The sum is kept in f32 when the output is F16/BF16, and in f64 when the output is F32/F64 or any
  input is F64, then rounded once to the output dtype (round to nearest even). Inputs may mix
  float dtypes. The output dtype is the first input's unless --dtype says otherwise; with the
  --base of a method that uses one (not linear's, which only names the config's source), or a
  --config recipe without dtype, each tensor takes its inputs' promoted dtype (bf16 with f32
  gives f32, bf16 with f16 gives f32), as mergekit computes it.
  Other tensors (integers, BOOL, F8 types, C64) are never averaged. Identical in every input,
  they are copied; when they differ (BatchNorm's num_batches_tracked after different epochs, say)
  the first input's value is copied and a warning names them. --strict makes that an error.
  NaN or infinite values in an input, or an overflow when rounding to the output dtype, are
  warnings too, and errors under --strict. A model given twice (by its path, a link or a hard
  link) is merged as given, so it weighs double, with a warning.

Safety:
  Every header is validated, and every input checked against the others, before any tensor data
  is read. The output is written to a hidden temporary beside it, fsynced and renamed into
  place: on any error, Ctrl-C or a full disk nothing appears at the destination.
  The output never replaces anything the merge reads (an input, shard, index, --base, --config
  or companion file), whether named directly, through a symbolic link, `..` or a hard link,
  and never lands inside an input's model directory. Devices, FIFOs, sockets and links are
  never replaced. --force replaces only what soup-merge wrote itself: a soup that carries its
  model-soup mark for a .safetensors output, a directory holding nothing but model files, with
  marked weights, for a directory output (another tool's checkpoint is refused); the
  replacement keeps the old one's permissions.

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
  model is the base, not a model). -w gives one weight per model besides the base (default 1/N
  for linear, 1 otherwise); --density, --t, --lambda, --epsilon, --gamma and --param NAME=VALUE
  set the method's parameters; --seed seeds DARE's and DELLA's drops (default 0), per tensor, so
  the bytes are the same at any thread count. Methods other than linear, task_arithmetic,
  passthrough and DARE with rescale=false work one tensor at a time: they hold the inputs' pages
  of that tensor plus, per model, a bit per element (DARE, DELLA) or a few percent of its
  magnitudes (TIES, breadcrumbs); about 3.6 x the largest tensor in all on three inputs,
  more for DELLA on very long rows (README.md, Memory).

Recipes:
  --config recipe.yaml reads a mergekit config: merge_method (any method above), base_model,
  models[].model (a path, or {model: PATH}), models[].parameters, top-level parameters (the
  method's, and per-model defaults), per-layer gradient lists and filter/value entries, dtype,
  out_dtype, tokenizer_source (base, or one of the models' paths), chat_template (auto, or the
  template's text), random_seed. The models may also be one slice whose sources each take
  every layer (slices: [{sources: [{model: PATH, layer_range: [0, LAYERS]}, ...]}]); several
  slices or part of the layers are refused. Any other key, parameter or method is an error
  naming it.
  The recipe is stored in the output's __metadata__ (model_soup.recipe) and model card.

Exit status: 0 success, 1 any error (one line on stderr: error: ...), 2 bad command line
(also when found after parsing: --json kind usage), 130 interrupted. With --json, stdout holds one JSON object, also on failure
({\"error\": ..., \"kind\": ...}; kind is one of io, invalid-input, plan, recipe, output, usage,
weights, resources, interrupted). Paths that are not UTF-8 appear in JSON as
{\"utf8_lossy\": ..., \"bytes_hex\": ...}.

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
        conflicts_with_all = ["inputs", "weights", "normalize", "dtype", "method", "density", "t", "lambda", "epsilon", "gamma", "param", "seed", "base"]
    )]
    pub config: Option<PathBuf>,

    /// The merge method (see below): linear, task_arithmetic, ties, dare_linear, dare_ties,
    /// della, della_linear, breadcrumbs, breadcrumbs_ties, slerp, nuslerp, model_stock,
    /// passthrough.
    #[arg(long, value_name = "METHOD", default_value = "linear")]
    pub method: String,

    /// Fraction of each task vector kept (ties, dare_*, della*, breadcrumbs*), in (0, 1].
    #[arg(long, value_name = "D", allow_negative_numbers = true)]
    pub density: Option<f64>,

    /// Interpolation factor of slerp, in [0, 1] (0 = the base).
    #[arg(long = "t", value_name = "T", allow_negative_numbers = true)]
    pub t: Option<f64>,

    /// Scale of the merged task vector (task-vector methods).
    #[arg(long, value_name = "L", allow_hyphen_values = true)]
    pub lambda: Option<f64>,

    /// Half-width of DELLA's keep probabilities.
    #[arg(long, value_name = "E", allow_negative_numbers = true)]
    pub epsilon: Option<f64>,

    /// Fraction of the largest magnitudes breadcrumbs drops.
    #[arg(long, value_name = "G", allow_negative_numbers = true)]
    pub gamma: Option<f64>,

    /// Any other parameter of the method, as NAME=VALUE (a number, true or false); repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub param: Vec<String>,

    /// Seed of the random drops of dare_* and della*.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub seed: Option<u64>,

    /// Write a model directory with shards of at most this size (5GB, 500MB, 2GiB). Default for
    /// a directory output: 5GB.
    #[arg(long, value_name = "SIZE", value_parser = soup::parse_size)]
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

    /// Output dtype of averaged tensors. Default: the first input's; with the --base of a
    /// method that uses one, or --config (unless the recipe sets dtype), each tensor's inputs'
    /// promoted dtype.
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<OutDtype>,

    /// What to do with tensors that some inputs lack.
    #[arg(long, value_enum, default_value_t = MissingPolicy::Error, value_name = "POLICY")]
    pub on_missing: MissingPolicy,

    /// Make warnings errors: differing non-float tensors, NaN/Inf in inputs, overflow.
    #[arg(long)]
    pub strict: bool,

    /// Replace an existing output that soup-merge wrote itself (a soup, or a directory of model
    /// files, that carries its mark). Inputs, other files, links and special files are never
    /// replaced.
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

/// `--on-missing` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MissingPolicy {
    /// Refuse the merge and list the tensors.
    Error,
    /// Leave the tensor out of the output.
    Skip,
    /// Copy it from the first input that has it, whatever the weights.
    First,
    /// Average over the inputs that have it, with their weights rescaled to the same sum.
    Renormalize,
}

impl From<MissingPolicy> for OnMissing {
    fn from(p: MissingPolicy) -> OnMissing {
        match p {
            MissingPolicy::Error => OnMissing::Error,
            MissingPolicy::Skip => OnMissing::Skip,
            MissingPolicy::First => OnMissing::First,
            MissingPolicy::Renormalize => OnMissing::Renormalize,
        }
    }
}

impl Args {
    /// The library's request for these flags.
    pub fn request(&self) -> Result<MergeRequest, crate::Error> {
        Ok(MergeRequest {
            inputs: self.inputs.clone(),
            weights: self.weights.clone(),
            normalize: self.normalize,
            dtype: self.dtype.map(Dtype::from),
            recipe: self.config.clone(),
            base: self.base.clone(),
            output: self.output.clone(),
            shard_size: self.shard_size,
            on_missing: self.on_missing.into(),
            strict: self.strict,
            force: self.force,
            verify: self.verify,
            also_reads: Vec::new(),
            also_writes: Vec::new(),
            method: self.method.clone(),
            parameters: self.parameters()?,
            seed: self.seed,
        })
    }

    /// The method's parameters from their own flags and from `--param NAME=VALUE`.
    fn parameters(&self) -> Result<Vec<(String, f64, String)>, crate::Error> {
        let mut out = Vec::new();
        // In PARAMETER_FLAGS' order.
        let flags = [self.density, self.t, self.lambda, self.epsilon, self.gamma];
        for (name, value) in PARAMETER_FLAGS.into_iter().zip(flags) {
            if let Some(v) = value {
                out.push((name.to_string(), v, format!("--{name}")));
            }
        }
        for p in &self.param {
            let (name, value) = p
                .split_once('=')
                .filter(|(name, _)| !name.trim().is_empty())
                .ok_or_else(|| {
                    crate::Error::Usage(format!(
                        "--param {p}: give NAME=VALUE, such as rescale=false"
                    ))
                })?;
            let value = match value {
                "true" => 1.0,
                "false" => 0.0,
                v => v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| {
                        crate::Error::Usage(format!(
                            "--param {p}: {v} is not a number, true or false"
                        ))
                    })?,
            };
            // One setting per parameter: a second would silently win over the first.
            if let Some((_, _, first)) = out.iter().find(|(n, _, _)| n == name) {
                return Err(crate::Error::Usage(format!(
                    "{first} and --param {name} both set {name}; give it once"
                )));
            }
            out.push((name.to_string(), value, format!("--param {name}")));
        }
        Ok(out)
    }
}

/// Runs `soup-merge` with parsed arguments and returns the process's exit status.
pub fn main(args: Args) -> ExitCode {
    super::handle_interrupts();
    if let Err(err) = soup::check_named_streams(
        &args.inputs,
        args.base.as_deref(),
        args.config.as_deref(),
        args.output.as_deref(),
    ) {
        return super::fail_json(&err.into(), args.json);
    }
    if let Err(err) = super::start_thread_pool() {
        return super::fail_json(&err.into(), args.json);
    }
    match run(&args) {
        Ok(report) => {
            super::print_warnings(&report.warnings);
            if !args.quiet && !report.dry_run {
                say_done(&report);
            }
            let printed = if args.json {
                super::print_json(&report)
            } else if report.dry_run {
                super::print(&describe_plan(&report))
            } else {
                Ok(())
            };
            if let Err(e) = printed {
                // The soup is already in place and complete; say so, since the exit status
                // alone would read as "nothing was written".
                let context = match (&report.output, report.dry_run) {
                    (Some(o), false) => format!(
                        "{} is written and complete, but its summary could not be written to stdout",
                        o.display()
                    ),
                    _ => "cannot write to stdout".to_string(),
                };
                return super::fail(&anyhow::Error::new(e).context(context));
            }
            ExitCode::SUCCESS
        }
        Err(err) => super::fail_json(&err, args.json),
    }
}

/// Plans the merge with the library and runs it, or stops at the plan for a dry run.
pub fn run(args: &Args) -> anyhow::Result<MergeReport> {
    let merge = Merge::plan(&args.request()?)?;
    if args.dry_run {
        return Ok(merge.dry_run()?);
    }
    let bar = super::progress_bar(merge.plan_ref().data_len(), args.quiet);
    let report = merge.run(&|n| bar.inc(n));
    bar.finish_and_clear();
    Ok(report?)
}

/// The summary line (and the hash, with --verify) on stderr.
fn say_done(report: &MergeReport) {
    let output = report
        .output
        .as_deref()
        .unwrap_or(std::path::Path::new("?"));
    if let Some(verified) = &report.verified {
        let hash = verified
            .sha256
            .as_deref()
            .unwrap_or("see --json for each file");
        super::say(&format!(
            "verified {} tensors as read back; sha256 {hash}",
            verified.tensors
        ));
    }
    super::say(&format!(
        "wrote {} ({} tensors, {:.1} MB) in {:.2} s",
        output.display(),
        report.tensors,
        report.bytes_written as f64 / 1e6,
        report.seconds
    ));
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

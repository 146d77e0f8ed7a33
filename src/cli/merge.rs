//! `soup-merge`: flags, validation of flags into a `Plan`, running it, and the summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;

use crate::format::{Checkpoint, Dtype};
use crate::soup::{self, Action, OnMissing, Plan, PlanOptions, RunOptions, Warning};

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

Exit status: 0 success, 1 any error (one line on stderr: error: ...), 2 bad command line,
130 interrupted. With --json, stdout holds one JSON object, also on failure ({\"error\": ...}).

Examples:
  soup-merge a.safetensors b.safetensors c.safetensors -o soup.safetensors
  soup-merge a.safetensors b.safetensors -w 0.7,0.3 --dtype bf16 -o soup.safetensors
  soup-merge a.safetensors b.safetensors -o soup.safetensors --dry-run";

/// Average safetensors checkpoints into one model soup, streaming and in parallel.
#[derive(Debug, Parser)]
#[command(name = "soup-merge", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Input checkpoints (.safetensors), fine-tunes of one model with the same tensor names and
    /// shapes. One input just converts it (with --dtype).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Where to write the soup.
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
    /// The plan per tensor, with --dry-run only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Vec<PlannedTensor>>,
}

/// One input in the summary.
#[derive(Debug, Serialize)]
pub struct InputReport {
    pub path: PathBuf,
    pub weight: f64,
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

/// Validates the flags, plans the merge and runs it.
pub fn run(args: &Args) -> anyhow::Result<MergeReport> {
    let started = Instant::now();
    let weights = weights(args)?;
    let ingredients = args
        .inputs
        .iter()
        .map(|p| Checkpoint::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let options = PlanOptions {
        dtype: args.dtype.map(Dtype::from),
        on_missing: args.on_missing,
        ..Default::default()
    };
    let plan = Plan::new(ingredients, weights, &options)?;
    let mut report = summarise(args, &plan);
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
    let warnings = soup::write(
        &plan,
        output,
        args.force,
        RunOptions {
            strict: args.strict,
            progress: &progress,
        },
    )?;
    bar.finish_and_clear();
    for w in &warnings {
        eprintln!("warning: {}", super::one_line(&w.message));
    }
    report.warnings = warnings;
    report.seconds = started.elapsed().as_secs_f64();
    report.bytes_written = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
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

fn summarise(args: &Args, plan: &Plan) -> MergeReport {
    let averaged = plan
        .tensors
        .iter()
        .filter(|t| matches!(t.action, Action::Average { .. }))
        .count();
    MergeReport {
        output: args.output.clone(),
        dry_run: args.dry_run,
        inputs: args
            .inputs
            .iter()
            .zip(&plan.weights)
            .map(|(p, &w)| InputReport {
                path: p.clone(),
                weight: w,
            })
            .collect(),
        tensors: plan.tensors.len(),
        averaged,
        copied: plan.tensors.len() - averaged,
        missing: plan.missing.clone(),
        bytes_read: plan.read_len(),
        output_bytes: plan.file_len(),
        bytes_written: 0,
        seconds: 0.0,
        warnings: Vec::new(),
        plan: None,
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
        s += &format!(
            "input {i}: {} (weight {})\n",
            input.path.display(),
            input.weight
        );
    }
    for t in report.plan.iter().flatten() {
        let terms: Vec<String> = t.terms.iter().map(|(i, w)| format!("{w}*in{i}")).collect();
        s += &format!(
            "{:<8} {:<5} {:<20} {}  {}\n",
            t.action,
            t.dtype,
            format!("{:?}", t.shape),
            crate::error::printable(&t.name),
            terms.join(" + ")
        );
    }
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

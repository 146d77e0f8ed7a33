//! `soup-eval`: flags, their validation, the commands, and printing the report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::error::{usage, usage_error};
use clap::{Args as ClapArgs, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use model_soup::format::Checkpoint;

use super::arch;
use super::device::DeviceSpec;
use super::ensemble::Mode;
use super::evaluator::Evaluator;
use super::images::LoadOptions;
use super::plot;
use super::report::Report;
use super::score::{Metric, Task};
use super::session::{DataOptions, Session, Split};
use super::text::TextOptions;
use super::transform::{Given, Interpolation, Resize, Transform};
use model_soup::format::{self, Destination, OutputKind, Reads, Request, Role};
use model_soup::soup::{self, MergeRequest};

const AFTER_HELP: &str = "\
Data: a dataset is a .safetensors file with 'inputs' (float [N, ...], the shape --arch expects)
and 'labels' (integers [N]); or images: a folder ROOT/<class>/<image> (classes sorted by name, as
torchvision's ImageFolder), or a .csv (path,label) or .jsonl ({\"path\", \"label\"}) list, labels
being class indices or class names. Images are decoded (JPEG, PNG, BMP, PPM, TIFF, WebP) and transformed as
torchvision's evaluation preset (see the Images flags). --val ranks and chooses ingredients;
--test is only reported.

Language models (Hugging Face model directories: config.json, safetensors, tokenizer.json):
the task follows the model and the data. A sequence classifier reads .jsonl or .csv with
'text', an optional 'text_pair' and 'label' (an index, or a name from config.json's label2id),
scored by accuracy and cross-entropy. A causal LM reads a text file or .jsonl {\"text\"} per
document, cut into --seq-len windows every --stride tokens and scored by loss (mean token
cross-entropy), perplexity and next-token accuracy; or multiple-choice .jsonl {\"context\",
\"choices\", \"answer\"}, scored as lm-evaluation-harness does (accuracy, acc_norm). Any of them
may be pre-tokenised: .safetensors with 'input_ids' (I64 [N, T]), an optional 'attention_mask'
and, for classification, 'labels'. --metric picks what greedy optimises (loss and perplexity
are minimised); the report shows every metric.

Soups are merged by the same code as soup-merge: uniform weights 1/k, the first ingredient's
dtype, summed in input order. The greedy soup written with -o is byte-identical to
`soup-merge` of its ingredients in the order printed.

Exit status: 0 success, 1 any error (one line on stderr: error: ...), 2 bad command line
(also when found after parsing: --json kind usage), 130 after Ctrl-C.

Examples:
  soup-eval score  --arch digits-cnn --test fixtures/digits/test.safetensors fixtures/models/*.safetensors
  soup-eval greedy --arch digits-cnn --val fixtures/digits/val.safetensors --test fixtures/digits/test.safetensors \\
      fixtures/models/ft-*.safetensors -o greedy.safetensors
  soup-eval report --arch digits-cnn --val fixtures/digits/val.safetensors --test fixtures/digits/test.safetensors \\
      fixtures/models/ft-*.safetensors --plot soups.svg
  soup-eval greedy --scorer 'srun --gres=gpu:1 python score.py {checkpoint}' --jobs 4 --speculate 4 \\
      --work-dir /shared/candidates --log search.jsonl ft-*/ -o greedy/";

/// Evaluate checkpoints, uniform and greedy soups, and ensembles on a dataset, with candle.
#[derive(Debug, Parser)]
#[command(name = "soup-eval", version, after_help = AFTER_HELP)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every metric of each checkpoint: accuracy and mean cross-entropy; for a causal LM loss,
    /// perplexity and next-token accuracy, or multiple-choice accuracy and acc_norm.
    Score(Common),
    /// The uniform soup of all the checkpoints.
    Uniform(Common),
    /// The greedy soup: rank by the val metric (accuracy; a language model's loss; --metric),
    /// add each next one only if it improves.
    Greedy(GreedyArgs),
    /// Soft voting: the mean of the models' softmax probabilities (or logits), then argmax;
    /// for language models the mixture of their next-token probabilities.
    Ensemble(EnsembleArgs),
    /// Everything: each checkpoint, the uniform soup, the greedy soup and the ensemble.
    Report(ReportArgs),
}

/// Flags every command takes.
#[derive(Debug, ClapArgs)]
pub struct Common {
    /// Checkpoints (.safetensors); for soups, fine-tunes of one model.
    #[arg(required = true, value_name = "CHECKPOINT")]
    pub inputs: Vec<PathBuf>,

    /// (Default: auto, unless --scorer is given.)
    #[arg(long, value_name = "NAME", help = arch::help())]
    pub arch: Option<String>,

    /// A setting the checkpoint's shapes don't reveal, such as a ViT's number of heads
    /// (repeatable; which keys a family takes is in the error for an unknown one).
    #[arg(long = "arch-option", value_name = "KEY=VALUE")]
    pub arch_options: Vec<String>,

    /// Validation split: ranks and chooses ingredients.
    #[arg(long, value_name = "PATH")]
    pub val: Option<PathBuf>,

    /// Test split: reported only.
    #[arg(long, value_name = "PATH")]
    pub test: Option<PathBuf>,

    /// Examples per forward pass (1 to 65536). Default: 256 images, or 8 token sequences.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: Option<u32>,

    /// Where models run: auto (the GPU when this is the CUDA build and the machine has one,
    /// else the CPU), cpu, cuda or cuda:N. CUDA needs the CUDA build of soup-eval:
    /// cargo build --release -p soup-eval --features cuda.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: String,

    /// The dtype models compute in: auto (the first checkpoint's float type, but f32 for bf16
    /// on the CPU, which has no bf16 kernels), f32, or f16 / bf16 (their logits differ from
    /// f32's by rounding, see README.md; bf16 on the CPU for language models only, at half
    /// f32's memory and some speed). Either way, greedy candidates are averaged in f64, and
    /// the reported uniform and greedy soups are the bytes soup-merge writes (for 16-bit
    /// ingredients, summed in f32 and rounded to their dtype).
    #[arg(long, value_enum, default_value_t = EvalDtype::Auto, value_name = "DTYPE")]
    pub eval_dtype: EvalDtype,

    /// CPU threads for candle's kernels and the merge (sets RAYON_NUM_THREADS), 1 to 1024.
    /// Default: every core. Small models are often fastest with 1, especially on a busy
    /// machine.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=model_soup::cli::MAX_THREADS as i64))]
    pub threads: Option<u32>,

    #[command(flatten)]
    pub images: ImageArgs,

    #[command(flatten)]
    pub text: TextArgs,

    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,

    /// No progress bar on stderr.
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub scorer: super::scorer_cli::ScorerFlags,
}

/// How image datasets (folders, CSV/JSONL lists) are decoded and transformed: torchvision's
/// evaluation transform by default.
#[derive(Debug, ClapArgs)]
pub struct ImageArgs {
    /// Resize images so the short side is N pixels, or to exactly HxW pixels (224x224), or
    /// `none`; antialiased, as PIL resizes. Default: the model directory's
    /// preprocessor_config.json if it has one, else 256.
    #[arg(long, value_name = "N|HxW|none", help_heading = "Images")]
    pub resize: Option<String>,

    /// The resize's filter: bilinear or bicubic (PIL's). Default: the model directory's
    /// preprocessor_config.json if it has one, else bilinear (torchvision's default).
    #[arg(long, value_name = "FILTER", help_heading = "Images")]
    pub interpolation: Option<String>,

    /// Center-crop to N x N pixels, or `none` (then every image must have one size).
    /// Default: the model directory's preprocessor_config.json if it has one, else 224.
    #[arg(long, value_name = "N|none", help_heading = "Images")]
    pub crop: Option<String>,

    /// Channel means to subtract after scaling to [0, 1]. Default: the model directory's
    /// preprocessor_config.json if it has one, else ImageNet's (0.485,0.456,0.406).
    #[arg(long, value_name = "R,G,B", help_heading = "Images")]
    pub mean: Option<String>,

    /// Channel standard deviations to divide by. Default: the model directory's
    /// preprocessor_config.json if it has one, else ImageNet's (0.229,0.224,0.225).
    #[arg(long, value_name = "R,G,B", help_heading = "Images")]
    pub std: Option<String>,

    /// Keep values in [0, 1]: no mean or std (so not with --mean or --std).
    #[arg(long, help_heading = "Images", conflicts_with_all = ["mean", "std"])]
    pub no_normalize: bool,

    /// Hold a split's preprocessed inputs in memory up to this size (e.g. 4GiB); a larger
    /// split is written to a cache file once and read back batch by batch.
    #[arg(
        long,
        default_value = "4GiB",
        value_name = "SIZE",
        help_heading = "Images"
    )]
    pub data_memory: String,

    /// Folder for the cache files of large splits (default: the system's temporary folder).
    #[arg(long, value_name = "DIR", help_heading = "Images")]
    pub cache_dir: Option<PathBuf>,

    /// Skip images that cannot be decoded, with a warning counting them, instead of stopping.
    #[arg(long, help_heading = "Images")]
    pub skip_bad_images: bool,
}

impl ImageArgs {
    /// The validated load options.
    pub fn options(&self) -> anyhow::Result<LoadOptions> {
        let side = |flag: &str, text: &str| -> anyhow::Result<usize> {
            match text.trim().parse::<usize>() {
                Ok(n) if n > 0 && n <= 1 << 14 => Ok(n),
                _ => usage!("{flag} '{text}' must be a size in pixels (1 to 16384) or none"),
            }
        };
        let size = |flag: &str, text: &str| -> anyhow::Result<Option<usize>> {
            if text == "none" {
                return Ok(None);
            }
            side(flag, text).map(Some)
        };
        let resize = |text: &str| -> anyhow::Result<Option<Resize>> {
            if text == "none" {
                return Ok(None);
            }
            Ok(Some(match text.split_once(['x', 'X']) {
                Some((h, w)) => Resize::Exact(side("--resize", h)?, side("--resize", w)?),
                None => Resize::ShortSide(side("--resize", text)?),
            }))
        };
        let triple = |flag: &str, text: &str| -> anyhow::Result<[f32; 3]> {
            let values: Vec<f32> = text
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| {
                    usage_error(format!("{flag} '{text}' must be three numbers: R,G,B"))
                })?;
            match values[..] {
                [r, g, b] if values.iter().all(|v| v.is_finite()) => Ok([r, g, b]),
                _ => usage!("{flag} '{text}' must be three finite numbers: R,G,B"),
            }
        };
        let std = self
            .std
            .as_deref()
            .map(|s| triple("--std", s))
            .transpose()?;
        if std.is_some_and(|s| s.iter().any(|&x| x <= 0.0)) {
            usage!(
                "--std '{}' must be positive",
                self.std.as_deref().unwrap_or_default()
            );
        }
        let given = Given {
            resize: self.resize.as_deref().map(resize).transpose()?,
            interpolation: match self.interpolation.as_deref() {
                None => None,
                Some("bilinear") => Some(Interpolation::Bilinear),
                Some("bicubic") => Some(Interpolation::Bicubic),
                Some(other) => usage!("--interpolation '{other}' must be bilinear or bicubic"),
            },
            crop: self
                .crop
                .as_deref()
                .map(|c| size("--crop", c))
                .transpose()?,
            mean: self
                .mean
                .as_deref()
                .map(|m| triple("--mean", m))
                .transpose()?,
            std,
            no_normalize: self.no_normalize,
        };
        let memory_limit = model_soup::soup::parse_size(&self.data_memory)
            .map_err(|e| usage_error(format!("--data-memory: {e}")))?;
        if let Some(dir) = &self.cache_dir {
            if !dir.is_dir() {
                usage!("--cache-dir {} is not a folder", dir.display());
            }
        }
        Ok(LoadOptions {
            transform: given.over(&Transform::default()),
            given: Some(given),
            memory_limit,
            cache_dir: self.cache_dir.clone(),
            skip_bad_images: self.skip_bad_images,
        })
    }
}

/// How text data is tokenised, cut and scored (language models).
#[derive(Debug, ClapArgs)]
pub struct TextArgs {
    /// What to score, when the model and data leave it open: classification, lm (language
    /// modelling) or mc (multiple choice). Default: a classifier's classification; for a
    /// causal LM, mc when the data is .jsonl with 'choices', else lm.
    #[arg(long, value_name = "TASK", value_parser = parse_task, help_heading = "Text")]
    pub task: Option<Task>,

    /// What greedy optimises and the plot shows: accuracy, loss, perplexity or acc_norm
    /// (default: accuracy; loss for language modelling). Loss and perplexity are minimised.
    #[arg(long, value_name = "NAME", value_parser = parse_metric, help_heading = "Text")]
    pub metric: Option<Metric>,

    /// The tokenizer.json for text data (default: the first ingredient's, in its model
    /// directory). Pre-tokenised .safetensors data needs none.
    #[arg(long, value_name = "PATH", help_heading = "Text")]
    pub tokenizer: Option<PathBuf>,

    /// Classification: tokens per example, special tokens included, longer ones truncated
    /// (default: the model's positions, at most 512). Multiple choice: the longest input, whose
    /// tokens predict one more (the last is never read, as in lm-evaluation-harness); longer
    /// contexts are cut from the left (default: the model's positions).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Text")]
    pub max_length: Option<u32>,

    /// Language modelling: tokens per window, at most the model's positions (its
    /// max_position_embeddings) (default: the model's positions, at most 512).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..), help_heading = "Text")]
    pub seq_len: Option<u32>,

    /// Language modelling: tokens from one window's start to the next's, 1 to --seq-len
    /// (default: --seq-len). Each token is scored once, from the window that first has it
    /// with context; a smaller stride gives each more context.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Text")]
    pub stride: Option<u32>,
}

impl TextArgs {
    /// The text options.
    pub fn options(&self) -> TextOptions {
        TextOptions {
            task: self.task,
            max_length: self.max_length.map(|n| n as usize),
            seq_len: self.seq_len.map(|n| n as usize),
            stride: self.stride.map(|n| n as usize),
        }
    }
}

fn parse_task(s: &str) -> Result<Task, String> {
    Task::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
        format!("one of: {}", names.join(", "))
    })
}

fn parse_metric(s: &str) -> Result<Metric, String> {
    Metric::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        format!("one of: {}", names.join(", "))
    })
}

/// `--eval-dtype`: the float type models compute in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalDtype {
    /// The first checkpoint's float type, where the device computes in it.
    Auto,
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl EvalDtype {
    /// The candle dtype, `None` for [`EvalDtype::Auto`].
    pub fn dtype(self) -> Option<candle_core::DType> {
        Some(match self {
            EvalDtype::Auto => return None,
            EvalDtype::F32 => candle_core::DType::F32,
            EvalDtype::F16 => candle_core::DType::F16,
            EvalDtype::Bf16 => candle_core::DType::BF16,
        })
    }
}

/// Flags of `greedy`.
#[derive(Debug, ClapArgs)]
pub struct GreedyArgs {
    #[command(flatten)]
    pub common: Common,

    /// Write the greedy soup here (byte-identical to soup-merge of its ingredients): a
    /// .safetensors file, or a Hugging Face model directory when the name does not end in
    /// .safetensors.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Replace an existing -o (or --plot) that this tool wrote itself: a soup, a directory of
    /// model files or a plot that carries its mark. Inputs, datasets and anything else are
    /// never replaced.
    #[arg(short, long)]
    pub force: bool,

    /// Keep a candidate whose val metric ties the soup's (">=" instead of ">", "<=" for a
    /// loss).
    #[arg(long)]
    pub accept_ties: bool,
}

/// Flags of `ensemble`.
#[derive(Debug, ClapArgs)]
pub struct EnsembleArgs {
    #[command(flatten)]
    pub common: Common,

    /// Average probabilities (soft voting) or logits.
    #[arg(long, value_enum, default_value_t = EnsembleMode::Probs)]
    pub mode: EnsembleMode,
}

/// Flags of `report`.
#[derive(Debug, ClapArgs)]
pub struct ReportArgs {
    #[command(flatten)]
    pub greedy: GreedyArgs,

    /// How the ensemble combines its members.
    #[arg(long, value_enum, default_value_t = EnsembleMode::Probs)]
    pub mode: EnsembleMode,

    /// Write an SVG plot of val against test accuracy here.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
}

/// `--mode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EnsembleMode {
    /// Mean of the softmax probabilities, then argmax (soft voting, as the seed does).
    Probs,
    /// Mean of the logits, then argmax (the model-soups paper's ensemble baseline).
    Logits,
}

impl From<EnsembleMode> for Mode {
    fn from(m: EnsembleMode) -> Mode {
        match m {
            EnsembleMode::Probs => Mode::Probs,
            EnsembleMode::Logits => Mode::Logits,
        }
    }
}

/// Runs `args` and prints the report: the whole of `soup-eval`'s `main`.
pub fn main(args: Args) -> ExitCode {
    let common = common(&args);
    let json = common.json;
    let scored_externally = common.scorer.given();
    if let Some(n) = common.threads {
        // Read by candle's CPU kernels on each call and by rayon's pool, which starts next; no
        // other thread is running yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let result = model_soup::cli::start_thread_pool()
        .and_then(|()| check_standard_streams(&args))
        .map_err(anyhow::Error::from);
    let result = if scored_externally {
        // Scorers are waited for in a loop that sees Ctrl-C, stops them and removes their
        // candidates: no exit from the handler, which would leave both behind.
        model_soup::cli::handle_interrupts();
        result
            .and_then(|()| super::scorer_cli::run(&args))
            .map(|r| print_report(&r, json))
    } else {
        model_soup::cli::handle_interrupts_then_exit();
        result
            .and_then(|()| run(&args))
            .map(|r| print_report(&r, json))
    };
    match result {
        Ok(printed) => {
            if let Err(e) = printed {
                return model_soup::cli::fail(
                    &anyhow::Error::new(e).context("cannot write to stdout"),
                );
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            let own = err.chain().find_map(|e| e.downcast_ref::<super::Error>());
            let kind = own.map_or_else(|| model_soup::cli::error_kind(&err), |e| e.kind());
            let interrupted = model_soup::cli::interrupted(&err)
                || matches!(
                    own,
                    Some(super::Error::Format(model_soup::Error::Interrupted))
                );
            model_soup::cli::fail_report(&err, json, kind, interrupted)
        }
    }
}

/// Prints the report's warnings on stderr, then the report on stdout: a table, or JSON.
fn print_report<M: super::score::Measure>(report: &Report<M>, json: bool) -> std::io::Result<()> {
    model_soup::cli::print_warnings(&report.warnings);
    if json {
        model_soup::cli::print_json(report)
    } else {
        model_soup::cli::print(&report.table())
    }
}

/// Refuses standard output or error that is a file the run reads (`--json >> val.jsonl`), or
/// what is already at `-o` or `--plot` (a soup or plot `--force` would replace, kept when the
/// run fails), before any work: the report would be appended to it.
fn check_standard_streams(args: &Args) -> model_soup::Result<()> {
    let mut read = Reads::new();
    for (role, path) in reads(common(args)) {
        match role {
            Role::Ingredient => read.add_ingredient(&path),
            _ => read.add(role, &path),
        }
    }
    let (output, plot) = match &args.command {
        Command::Greedy(g) => (g.output.as_ref(), None),
        Command::Report(r) => (r.greedy.output.as_ref(), r.plot.as_ref()),
        _ => (None, None),
    };
    for path in output.into_iter().chain(plot) {
        read.add_existing_output(path);
    }
    format::destination::check_standard_streams(&read)
}

/// The flags every command shares.
fn common(args: &Args) -> &Common {
    match &args.command {
        Command::Score(c) | Command::Uniform(c) => c,
        Command::Greedy(g) => &g.common,
        Command::Ensemble(e) => &e.common,
        Command::Report(r) => &r.greedy.common,
    }
}

/// Validates the flags, then runs the command.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    match &args.command {
        Command::Score(c) => {
            let mut session = open(c, &[])?;
            let ingredients = session.ingredients(&[Split::Val, Split::Test])?;
            Ok(finish(c, &session, |r| r.ingredients = ingredients))
        }
        Command::Uniform(c) => {
            let mut session = open(c, &[])?;
            session.check_soup()?;
            let uniform = session.uniform()?;
            Ok(finish(c, &session, |r| r.uniform = Some(uniform)))
        }
        Command::Greedy(g) => {
            let c = &g.common;
            let (writes, _) = outputs(c, g, None)?;
            let mut session = open(c, &[("--val", c.val.is_some())])?;
            session.check_soup()?;
            let greedy = session.greedy(g.accept_ties, writes.as_ref())?;
            let ingredients = session.ingredients(&[Split::Val, Split::Test])?;
            Ok(finish(c, &session, |r| {
                r.ingredients = ingredients;
                r.greedy = Some(greedy);
            }))
        }
        Command::Ensemble(e) => {
            let c = &e.common;
            let mut session = open(c, &[])?;
            let ensemble = session.ensemble(e.mode.into())?;
            let ingredients = session.ingredients(&[Split::Val, Split::Test])?;
            Ok(finish(c, &session, |r| {
                r.ingredients = ingredients;
                r.ensemble = Some(ensemble);
            }))
        }
        Command::Report(r) => {
            let g = &r.greedy;
            let c = &g.common;
            let (writes, plot) = outputs(c, g, r.plot.as_deref())?;
            let mut session = open(c, &[("--val", c.val.is_some())])?;
            session.check_soup()?;
            let ingredients = session.ingredients(&[Split::Val, Split::Test])?;
            let uniform = session.uniform()?;
            let greedy = session.greedy(g.accept_ties, writes.as_ref())?;
            let ensemble = session.ensemble(r.mode.into())?;
            let report = finish(c, &session, |rep| {
                rep.ingredients = ingredients;
                rep.uniform = Some(uniform);
                rep.greedy = Some(greedy);
                rep.ensemble = Some(ensemble);
            });
            if let Some(dest) = plot {
                let svg = plot::svg(&report, &format!("{}: soups and ingredients", report.arch))?;
                format::write_whole(&dest, svg.as_bytes())?;
            }
            Ok(report)
        }
    }
}

/// What a soup-eval run reads: every ingredient and dataset, which no output may touch.
pub(crate) fn reads(c: &Common) -> Vec<(Role, PathBuf)> {
    let mut reads: Vec<(Role, PathBuf)> = c
        .inputs
        .iter()
        .map(|p| (Role::Ingredient, p.clone()))
        .collect();
    reads.extend(
        [&c.val, &c.test]
            .into_iter()
            .flatten()
            .map(|p| (Role::Dataset, p.clone())),
    );
    reads.extend(
        c.text
            .tokenizer
            .iter()
            .map(|p| (Role::Tokenizer, p.clone())),
    );
    // The log is read (--resume) or written as the search goes (--log): -o and --plot must
    // never land on it.
    reads.extend(
        [&c.scorer.resume, &c.scorer.log]
            .into_iter()
            .flatten()
            .map(|p| (Role::SearchLog, p.clone())),
    );
    reads
}

/// Checks every output of the run (-o and --plot) against the output policy before any work,
/// and proves each writable by claiming (and dropping) its temporary. Returns the request the
/// greedy soup will be written with, if -o was given, and the plot's destination.
pub(crate) fn outputs(
    c: &Common,
    g: &GreedyArgs,
    plot: Option<&Path>,
) -> anyhow::Result<(Option<MergeRequest>, Option<Destination>)> {
    let mut requests = Vec::new();
    let mut also_writes = Vec::new();
    if let Some(o) = &g.output {
        requests.push(Request {
            flag: "-o",
            path: o.clone(),
            kind: soup::output_kind(o, None)?,
        });
    }
    if let Some(p) = plot {
        let request = Request {
            flag: "--plot",
            path: p.to_path_buf(),
            kind: OutputKind::File,
        };
        also_writes.push(request.clone());
        requests.push(request);
    }
    let mut read = Reads::new();
    for (role, path) in reads(c) {
        // An ingredient as a checkpoint: a model directory it reaches through its files (a
        // folder of links, a weights file given alone) is protected like one given.
        match role {
            Role::Ingredient => read.add_ingredient(&path),
            _ => read.add(role, &path),
        }
    }
    let checked = format::destination::check(&requests, &read, g.force)?;
    // After the policy, whose refusals say more (a plot onto an input): the plot is SVG,
    // whatever the name says, and a viewer given p.png would refuse it.
    if let Some(p) = plot {
        if !p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
            usage!(
                "--plot {}: the plot is an SVG file; give a path ending in .svg",
                p.display()
            );
        }
    }
    let mut plot_dest = None;
    for dest in checked {
        match dest.kind() {
            OutputKind::File => drop(format::AtomicFile::create(&dest)?),
            OutputKind::Directory => drop(format::AtomicDir::create(&dest)?),
        }
        if plot.is_some_and(|p| p == dest.given()) {
            plot_dest = Some(dest);
        }
    }
    let greedy = g.output.as_ref().map(|o| MergeRequest {
        output: Some(o.clone()),
        force: g.force,
        also_reads: reads(c),
        also_writes,
        ..Default::default()
    });
    Ok((greedy, plot_dest))
}

/// Validates the common flags (before any file is read) and opens the session.
fn open(c: &Common, required: &[(&str, bool)]) -> anyhow::Result<Session> {
    // Without --scorer, the architecture is a built-in one, detected unless named.
    let selection = arch::Selection::parse(c.arch.as_deref().unwrap_or("auto"))?;
    let options = arch::Options::parse(&c.arch_options)?;
    let device: DeviceSpec = c.device.parse()?;
    let images = c.images.options()?;

    for (flag, given) in required {
        if !given && *flag == "--val" {
            usage!("this command needs --val PATH (scored by a built-in --arch model) or --scorer CMD (any command that scores a checkpoint)");
        }
        if !given {
            usage!("this command needs {flag} PATH");
        }
    }
    if c.val.is_none() && c.test.is_none() {
        usage!("no dataset; pass --val PATH and/or --test PATH");
    }
    let device = device.open()?;
    // The first checkpoint configures the architecture; every ingredient is then checked
    // against that configuration.
    let first = c.inputs.first().ok_or(super::Error::NoIngredients)?;
    let first = Checkpoint::open(first)?;
    let arch = selection.configure(&first, &options)?;
    let dtype = c
        .eval_dtype
        .dtype()
        .unwrap_or_else(|| super::device::checkpoint_dtype(&first, &device));
    drop(first);
    let text = matches!(arch.input(), arch::Input::Tokens(_));
    if device.is_cpu() && dtype == candle_core::DType::BF16 && !text {
        // candle's CPU convolutions have no bf16 kernel: say so before any work.
        usage!("--eval-dtype bf16 needs a GPU for image models (candle's CPU convolutions have no bf16 kernel); on the CPU use f32 or f16");
    }
    let batch_size = c.batch_size.unwrap_or(if text { 8 } else { 256 });
    let mut evaluator = Evaluator::new(arch, device, batch_size as usize);
    evaluator.dtype = dtype;
    evaluator.progress = progress_bar(c.quiet, if text { "sequences" } else { "images" });
    let data = DataOptions {
        images,
        text: c.text.options(),
        tokenizer: c.text.tokenizer.clone(),
        metric: c.text.metric,
    };
    Ok(Session::open_data(
        evaluator,
        &c.inputs,
        c.val.as_deref(),
        c.test.as_deref(),
        &data,
    )?)
}

fn finish(c: &Common, session: &Session, fill: impl FnOnce(&mut Report)) -> Report {
    session.evaluator().progress.finish_and_clear();
    let mut report = Report {
        arch: session.arch().describe(),
        device: Some(super::device::name(&session.evaluator().device)),
        eval_dtype: Some(super::device::dtype_name(session.evaluator().dtype).to_string()),
        val_data: c.val.clone(),
        test_data: c.test.clone(),
        preprocessor: session.preprocessor().map(Path::to_path_buf),
        ingredients: Vec::new(),
        uniform: None,
        greedy: None,
        ensemble: None,
        scorer: None,
        warnings: session.warnings.clone(),
    };
    fill(&mut report);
    report
}

/// Counts evaluated images (or sequences) on stderr; hidden when stderr is not a terminal or
/// with --quiet.
fn progress_bar(quiet: bool, unit: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40.cyan/blue}} {{pos}}/{{len}} {unit} {{per_sec}} {{elapsed}}"
        ))
        .expect("template is valid"),
    );
    bar
}

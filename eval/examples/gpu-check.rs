//! The GPU check that `bench/gpu-check.sh` runs on a machine with a CUDA GPU: parity of the
//! device's logits with the CPU's and with an independent float64 reference, the same report
//! counts as the CPU, identical candidate weights, and forward and greedy-step timings.
//!
//! ```sh
//! gpu-check [--device cuda:0] [--python PYTHON] [--quick] > gpu-check.md
//! ```
//!
//! Prints a Markdown report (the one BENCHMARKS.md quotes) on stdout and exits 1 when a check
//! fails. `--python` names a Python with numpy for tests/reference/forward_ref.py (default:
//! `SOUP_PYTHON`); without one the reference comparison is reported as not run, and fails.
//! Run from the repository root (it reads fixtures/ and tests/reference/).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Parser;

use model_soup::format::Checkpoint;
use model_soup::soup::{self, Plan, PlanOptions, RunOptions};
use soup_eval::arch;
use soup_eval::cli::{self, Args};
use soup_eval::dataset::Dataset;
use soup_eval::device::{self, DeviceSpec};
use soup_eval::evaluator::Evaluator;
use soup_eval::report::{Report, Row};
use soup_eval::weights::{RunningSum, Weights};

/// Largest per-image logit error, relative to the image's largest reference logit, that each
/// comparison accepts.
/// - f32: against float64, the CPU test's bound (tests/eval_reference.rs; the CPU reaches
///   3e-6); against the CPU, ten times f32's rounding, for two f32 computations that add in
///   other orders.
/// - f16: three times the worst error the CPU's f16 reaches against float64 on these models
///   (9.5e-3, ft-lr3e-1-poor); both sides round, so the same bound serves against the CPU's
///   f16.
/// - bf16: f16's bound times 8 (bf16 keeps 3 fewer mantissa bits), against float64 and against
///   the CPU's f32 (the CPU has no bf16 matmul).
const TOLERANCES: [(DType, f64, f64); 3] = [
    // (dtype, against float64, against the CPU)
    (DType::F32, 1e-4, 1e-5),
    (DType::F16, 3e-2, 3e-2),
    (DType::BF16, 2.4e-1, 2.4e-1),
];

/// The checkpoints compared: f32, a poor fine-tune, stored f16 and bf16, and soups.
const MODELS: &[&[&str]] = &[
    &["base"],
    &["ft-lr3e-1-poor"],
    &["half/ft-lr2e-3.f16"],
    &["half/ft-lr1e-3-shift.bf16"],
    &["ft-lr2e-3", "ft-lr2e-3-long", "ft-lr1e-3-smooth"],
    &["scratch-a", "scratch-b"],
];

/// The README's main job: every f32 fine-tune.
const INGREDIENTS: [&str; 8] = [
    "ft-lr1e-3-shift",
    "ft-lr1e-3-smooth",
    "ft-lr1e-3",
    "ft-lr2e-3-long",
    "ft-lr2e-3",
    "ft-lr3e-1-poor",
    "ft-lr3e-3-shift-smooth",
    "ft-lr5e-4",
];

#[derive(Parser)]
struct Flags {
    /// The GPU to check.
    #[arg(long, default_value = "cuda:0")]
    device: String,
    /// A Python with numpy, for the float64 reference (default: SOUP_PYTHON).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Fewer and smaller timing runs (for trying the script out on a CPU).
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let mut out = String::new();
    match run(&flags, &mut out) {
        Ok(failures) => {
            print!("{out}");
            if failures.is_empty() {
                println!("\nAll checks passed.");
                ExitCode::SUCCESS
            } else {
                println!("\nFAILED: {}", failures.join("; "));
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            print!("{out}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new("fixtures").join(name)
}

fn model_path(name: &str) -> PathBuf {
    fixture(&format!("models/{name}.safetensors"))
}

fn run(flags: &Flags, out: &mut String) -> Result<Vec<String>> {
    let spec: DeviceSpec = flags.device.parse()?;
    let gpu = spec.open()?;
    let python = flags
        .python
        .clone()
        .or_else(|| std::env::var_os("SOUP_PYTHON").map(PathBuf::from));
    let arch = arch::digits_cnn::arch();
    let test = Dataset::open(&fixture("digits/test.safetensors"), &*arch)?;
    let mut failures = Vec::new();

    writeln!(out, "# GPU check: {} against the CPU\n", device::name(&gpu))?;
    writeln!(
        out,
        "soup-eval {} (digits-cnn fixtures, {} test images).\n",
        env!("CARGO_PKG_VERSION"),
        test.len()
    )?;

    // 1. Logits: the device against float64 numpy and against the CPU, in each dtype.
    writeln!(out, "## Logits\n")?;
    writeln!(out, "Largest per-image error relative to the image's largest logit; `flips`: images whose predicted class differs from the CPU's f32.\n")?;
    writeln!(
        out,
        "| model | dtype | vs float64 | bound | vs CPU | bound | flips |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|")?;
    for models in MODELS {
        let label = models.join(" + ");
        let weights_cpu = weights_of(models, &Device::Cpu)?;
        let cpu_f32 = Evaluator::new(arch.clone(), Device::Cpu, 256).logits(&weights_cpu, &test)?;
        let reference = match &python {
            Some(p) => Some(numpy_logits(p, models, test.len())?),
            None => None,
        };
        for (dtype, bound_ref, bound_cpu) in TOLERANCES {
            if gpu.is_cpu() && dtype == DType::BF16 {
                continue; // a dry run on the CPU, which has no bf16 matmul
            }
            let mut on_gpu = Evaluator::new(arch.clone(), gpu.clone(), 256);
            on_gpu.dtype = dtype;
            let gpu_logits = on_gpu.logits(&weights_of(models, &gpu)?, &test)?;
            // The CPU runs f32 and f16; bf16 (no CPU matmul) is compared with the CPU's f32.
            let cpu = if dtype == DType::F16 {
                let mut e = Evaluator::new(arch.clone(), Device::Cpu, 256);
                e.dtype = dtype;
                e.logits(&weights_cpu, &test)?
            } else {
                cpu_f32.clone()
            };
            let vs_cpu = worst_relative_error(
                &gpu_logits,
                &cpu.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            );
            let flips = flips(&gpu_logits, &cpu_f32);
            let vs_ref = reference
                .as_ref()
                .map(|r| worst_relative_error(&gpu_logits, r));
            let name = format!("{dtype:?}").to_lowercase();
            writeln!(
                out,
                "| {label} | {name} | {} | {bound_ref:.0e} | {vs_cpu:.1e} | {bound_cpu:.0e} | {flips} |",
                vs_ref.map_or("not run".to_string(), |e| format!("{e:.1e}"))
            )?;
            match vs_ref {
                Some(e) if e <= bound_ref => {}
                Some(e) => failures.push(format!("{label} {name}: {e:.1e} from float64")),
                None => failures.push("no Python with numpy for the float64 reference".into()),
            }
            if vs_cpu > bound_cpu {
                failures.push(format!("{label} {name}: {vs_cpu:.1e} from the CPU"));
            }
        }
    }
    failures.dedup();

    // 2. Candidate weights: the running sum's mean is the same bits on the device.
    let names = [
        "ft-lr2e-3",
        "ft-lr2e-3-long",
        "ft-lr1e-3-smooth",
        "half/ft-lr2e-3.f16",
    ];
    let checkpoints: Vec<Checkpoint> = names
        .iter()
        .map(|n| Checkpoint::open(&model_path(n)))
        .collect::<Result<_, _>>()?;
    // The device keeps f64 sums there; the CPU averages the members by reference: the bits
    // must agree.
    let mean_on = |device: &Device| -> Result<Weights> {
        let mut sum = RunningSum::new(&checkpoints[0], device)?;
        for c in &checkpoints[1..] {
            sum = sum.plus(c)?;
        }
        Ok(sum.mean()?)
    };
    let same = mean_on(&gpu)?.to_device(&Device::Cpu)? == mean_on(&Device::Cpu)?;
    writeln!(out, "\n## Greedy candidates\n")?;
    writeln!(
        out,
        "The running sum's mean of {} on the device is {} the CPU's.",
        names.join(" + "),
        if same {
            "bit for bit"
        } else {
            "NOT bit for bit"
        }
    )?;
    if !same {
        failures.push("candidate weights differ from the CPU's".into());
    }

    // 3. The fixtures' report: every count as on the CPU.
    writeln!(out, "\n## Report counts (f32)\n")?;
    let cpu_report = report("cpu", "f32")?;
    let gpu_report = report(&device::name(&gpu), "f32")?;
    let (rows, differing) = compare_counts(&cpu_report, &gpu_report);
    writeln!(
        out,
        "{rows} rows (ingredients, uniform, greedy, ensemble) on val and test: {}.",
        if differing.is_empty() {
            "every count equals the CPU's".to_string()
        } else {
            format!("DIFFERENT: {}", differing.join(", "))
        }
    )?;
    let same_soup = cpu_report.greedy.as_ref().map(|g| &g.row.members)
        == gpu_report.greedy.as_ref().map(|g| &g.row.members);
    writeln!(
        out,
        "Greedy soup on the device: {}{}.",
        gpu_report
            .greedy
            .as_ref()
            .map_or(String::new(), |g| g.row.members.join(" + ")),
        if same_soup {
            " (as on the CPU)"
        } else {
            " (NOT the CPU's)"
        }
    )?;
    if !differing.is_empty() || !same_soup {
        failures.push("report counts differ from the CPU's".into());
    }
    for dtype in ["f16", "bf16"] {
        if gpu.is_cpu() && dtype == "bf16" {
            continue;
        }
        let r = report(&device::name(&gpu), dtype)?;
        let (_, d) = compare_counts(&cpu_report, &r);
        writeln!(
            out,
            "With --eval-dtype {dtype}: {} (informational).",
            if d.is_empty() {
                "every count equals the CPU's f32".to_string()
            } else {
                format!(
                    "{} counts differ from the CPU's f32: {}",
                    d.len(),
                    d.join(", ")
                )
            }
        )?;
    }

    // 4. Every vision family's fixture: PyTorch's logits, the CPU's and the device's.
    vision_fixtures(&gpu, out, &mut failures)?;

    // 5. Speed: forward throughput and greedy steps.
    writeln!(out, "\n## Speed\n")?;
    let repeat = if flags.quick { 4 } else { 200 };
    let big = tiled(
        &Dataset::open(&fixture("digits/val.safetensors"), &*arch)?,
        repeat,
    );
    writeln!(out, "Forward passes over {} images (the validation split repeated), best of 3, including the upload of the weights:\n", big.len())?;
    writeln!(out, "| device | dtype | batch | images/s |")?;
    writeln!(out, "|---|---|---:|---:|")?;
    let weights_cpu = weights_of(&["ft-lr2e-3"], &Device::Cpu)?;
    let weights_gpu = weights_of(&["ft-lr2e-3"], &gpu)?;
    let mut best = [0f64; 2];
    for batch in [256, 4096] {
        for (i, (device, weights)) in [(&Device::Cpu, &weights_cpu), (&gpu, &weights_gpu)]
            .into_iter()
            .enumerate()
        {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                if device.is_cpu() && dtype != DType::F32 {
                    continue;
                }
                let mut e = Evaluator::new(arch.clone(), device.clone(), batch);
                e.dtype = dtype;
                let inputs = e.upload(&big)?;
                e.logits_on(weights, &big, &inputs)?; // warm-up (kernel loading, PTX JIT)
                let mut fastest = f64::INFINITY;
                for _ in 0..3 {
                    let started = Instant::now();
                    e.logits_on(weights, &big, &inputs)?;
                    fastest = fastest.min(started.elapsed().as_secs_f64());
                }
                let rate = big.len() as f64 / fastest;
                if dtype == DType::F32 {
                    best[i] = best[i].max(rate);
                }
                writeln!(
                    out,
                    "| {} | {} | {batch} | {:.0} |",
                    device::name(device),
                    format!("{dtype:?}").to_lowercase(),
                    rate
                )?;
            }
        }
    }
    writeln!(
        out,
        "\nf32 throughput, device / CPU: {:.1}x.",
        best[1] / best[0]
    )?;
    writeln!(out, "\nGreedy steps of the fixtures' report (8 ingredients, 359 validation images; medians over the 7 candidates):\n")?;
    writeln!(
        out,
        "| device | building a candidate | scoring it (model build + forward) |"
    )?;
    writeln!(out, "|---|---:|---:|")?;
    for (name, r) in [
        ("cpu", &cpu_report),
        (device::name(&gpu).as_str(), &gpu_report),
    ] {
        let steps = &r
            .greedy
            .as_ref()
            .context("report has a greedy soup")?
            .search
            .steps;
        let median = |f: &dyn Fn(&soup_eval::greedy::Step<soup_eval::score::Metrics>) -> f64| {
            let mut v: Vec<f64> = steps.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN) * 1e3
        };
        writeln!(
            out,
            "| {name} | {:.2} ms | {:.2} ms |",
            median(&|s| s.trial.merge_seconds),
            median(&|s| s.trial.eval_seconds)
        )?;
    }
    Ok(failures)
}

/// Bounds for the vision fixtures' logits, relative to the largest of PyTorch's: against
/// PyTorch, the CPU test's (eval/tests/vision_parity.rs); against the CPU, ten times f32's
/// rounding, as for the digits CNN.
const VISION_BOUNDS: (f64, f64) = (1e-4, 1e-5);

/// Each fixture in fixtures/vision (`NAME.safetensors`, or the Hugging Face model directory
/// `NAME/`, beside the inputs and PyTorch's logits in `NAME.io.safetensors`), configured by
/// `--arch auto` as a user's would be, run on the CPU and on `gpu` in f32.
fn vision_fixtures(gpu: &Device, out: &mut String, failures: &mut Vec<String>) -> Result<()> {
    let dir = fixture("vision");
    let mut cases: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let case = name.strip_suffix(".io.safetensors")?.to_string();
            (dir.join(format!("{case}.safetensors")).is_file() || dir.join(&case).is_dir())
                .then_some(case)
        })
        .collect();
    cases.sort();
    writeln!(out, "\n## Vision families (f32)\n")?;
    writeln!(out, "Each fixture of fixtures/vision (torchvision files, Hugging Face directories), `--arch auto`; largest logit error relative to PyTorch's largest logit.\n")?;
    writeln!(out, "The f16 and bf16 columns (vs PyTorch's f32) are informational: they fail only when the device can't run the model in that dtype.\n")?;
    writeln!(
        out,
        "| fixture | model | vs PyTorch | vs CPU | f16 | bf16 |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|")?;
    for case in &cases {
        let file = dir.join(format!("{case}.safetensors"));
        let weights = Checkpoint::open(&if file.is_file() { file } else { dir.join(case) })?;
        let io = Checkpoint::open(&dir.join(format!("{case}.io.safetensors")))?;
        let given: Vec<String> = weights
            .metadata()
            .get("arch_options")
            .map(|o| o.split(' ').map(str::to_string).collect())
            .unwrap_or_default();
        let model = arch::Selection::parse("auto")?
            .configure(&weights, &arch::Options::parse(&given)?)
            .with_context(|| format!("{case}: --arch auto"))?;
        let (shape, inputs) = f32_tensor(&io, "inputs")?;
        let (_, torch) = f32_tensor(&io, "logits")?;
        let data = Dataset::in_memory(
            dir.join(case),
            inputs,
            shape[1..].to_vec(),
            vec![0; shape[0]],
        );
        let logits_on = |device: &Device, dtype: DType| -> Result<Vec<f32>> {
            let mut e = Evaluator::new(model.clone(), device.clone(), 8);
            e.dtype = dtype;
            Ok(e.logits(&Weights::from_checkpoint(&weights, device)?, &data)?)
        };
        let result = logits_on(&Device::Cpu, DType::F32)
            .and_then(|cpu| Ok((cpu, logits_on(gpu, DType::F32)?)));
        let (cpu, on_gpu) = match result {
            Ok(r) => r,
            Err(e) => {
                writeln!(
                    out,
                    "| {case} | {} | FAILED: {e:#} | | | |",
                    model.describe()
                )?;
                failures.push(format!("{case}: {e:#}"));
                continue;
            }
        };
        let scale = torch.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| (x as f64 - y as f64).abs())
                .fold(0f64, f64::max)
                / scale
        };
        let (vs_torch, vs_cpu) = (worst(&on_gpu, &torch), worst(&on_gpu, &cpu));
        let mut half = Vec::new();
        for dtype in [DType::F16, DType::BF16] {
            if gpu.is_cpu() && dtype == DType::BF16 {
                half.push("-".to_string()); // a dry run on the CPU, which has no bf16 matmul
                continue;
            }
            half.push(match logits_on(gpu, dtype) {
                Ok(l) => format!("{:.1e}", worst(&l, &torch)),
                Err(e) => {
                    failures.push(format!("{case} {dtype:?}: {e:#}"));
                    format!("FAILED: {e:#}")
                }
            });
        }
        writeln!(
            out,
            "| {case} | {} | {vs_torch:.1e} | {vs_cpu:.1e} | {} | {} |",
            model.describe(),
            half[0],
            half[1]
        )?;
        if on_gpu.len() != torch.len() || vs_torch > VISION_BOUNDS.0 || vs_cpu > VISION_BOUNDS.1 {
            failures.push(format!(
                "{case}: {vs_torch:.1e} from PyTorch, {vs_cpu:.1e} from the CPU"
            ));
        }
    }
    Ok(())
}

/// A float32 tensor of a fixture file, with its shape.
fn f32_tensor(file: &Checkpoint, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = file
        .tensor(name)
        .with_context(|| format!("no tensor '{name}'"))?;
    let shape = t.info.shape.iter().map(|&d| d as usize).collect();
    let values = t
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    Ok((shape, values))
}

/// The uniform soup of `models` merged by the core (one model: itself), on `device`.
fn weights_of(models: &[&str], device: &Device) -> Result<Weights> {
    let checkpoints: Vec<Checkpoint> = models
        .iter()
        .map(|m| Checkpoint::open(&model_path(m)))
        .collect::<Result<_, _>>()?;
    if checkpoints.len() == 1 {
        return Ok(Weights::from_checkpoint(&checkpoints[0], device)?);
    }
    let k = checkpoints.len();
    let plan = Plan::new(
        checkpoints,
        vec![1.0 / k as f64; k],
        &PlanOptions::default(),
    )?;
    let (soup, _) = soup::to_memory(&plan, RunOptions::default())?;
    Ok(Weights::from_soup(&soup, device)?)
}

/// tests/reference/forward_ref.py's float64 logits for the first `count` test images.
fn numpy_logits(python: &Path, models: &[&str], count: usize) -> Result<Vec<f64>> {
    let out = Command::new(python)
        .arg("tests/reference/forward_ref.py")
        .arg(fixture("digits/test.safetensors"))
        .arg(count.to_string())
        .args(models.iter().map(|m| model_path(m)))
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "forward_ref.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rows = json["logits"]
        .as_array()
        .context("forward_ref.py printed no logits")?;
    Ok(rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_f64())
        })
        .collect())
}

/// The largest per-image error, relative to the image's largest reference magnitude.
fn worst_relative_error(ours: &[f32], reference: &[f64]) -> f64 {
    if ours.len() != reference.len() {
        return f64::INFINITY;
    }
    let classes = 10;
    ours.chunks(classes)
        .zip(reference.chunks(classes))
        .map(|(a, r)| {
            let scale = r.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-6);
            a.iter()
                .zip(r)
                .map(|(x, y)| (*x as f64 - y).abs() / scale)
                .fold(0f64, f64::max)
        })
        .fold(0f64, f64::max)
}

/// Images whose argmax differs.
fn flips(a: &[f32], b: &[f32]) -> usize {
    a.chunks(10)
        .zip(b.chunks(10))
        .filter(|(x, y)| soup_eval::score::argmax(x) != soup_eval::score::argmax(y))
        .count()
}

/// `soup-eval report` on the fixtures, through the CLI's own code.
fn report(device: &str, dtype: &str) -> Result<Report> {
    let mut argv: Vec<String> = [
        "soup-eval",
        "report",
        "--arch",
        "digits-cnn",
        "-q",
        "--device",
        device,
        "--eval-dtype",
        dtype,
        "--val",
        "fixtures/digits/val.safetensors",
        "--test",
        "fixtures/digits/test.safetensors",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(
        INGREDIENTS
            .iter()
            .map(|m| model_path(m).display().to_string()),
    );
    cli::run(&Args::try_parse_from(argv)?)
}

/// How many (row, split) counts were compared, and which differ.
fn compare_counts(a: &Report, b: &Report) -> (usize, Vec<String>) {
    let (ra, rb): (Vec<&Row>, Vec<&Row>) = (a.rows(), b.rows());
    let mut differing = Vec::new();
    if ra.len() != rb.len() {
        differing.push(format!("{} rows against {}", ra.len(), rb.len()));
    }
    for (x, y) in ra.iter().zip(&rb) {
        for (split, sx, sy) in [("val", x.val, y.val), ("test", x.test, y.test)] {
            let (cx, cy) = (sx.map(|s| s.correct), sy.map(|s| s.correct));
            if cx != cy || x.name != y.name {
                differing.push(format!("{} {split}: {cx:?} vs {cy:?}", x.name));
            }
        }
    }
    (ra.len(), differing)
}

/// `data` repeated `times` times.
fn tiled(data: &Dataset, times: usize) -> Dataset {
    let inputs = data
        .batch(0, data.len())
        .expect("an in-memory split")
        .repeat(times);
    Dataset::in_memory(
        data.path.clone(),
        inputs,
        data.sample_shape.clone(),
        data.labels.repeat(times),
    )
}

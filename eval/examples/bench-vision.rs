//! Vision benchmark probes for bench/vision_bench.sh: forward throughput of a checkpoint and decode + transform throughput of an image folder, printed as one JSON line.
//!
//! ```sh
//! cargo run --release -p soup-eval --example bench-vision -- forward model.safetensors 32 3
//! cargo run --release -p soup-eval --example bench-vision -- preprocess IMAGE_FOLDER
//! ```
//!
//! Threads: RAYON_NUM_THREADS, as for soup-eval.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use model_soup::format::Checkpoint;
use soup_eval::arch::{Input, Options, Selection};
use soup_eval::dataset::Dataset;
use soup_eval::evaluator::Evaluator;
use soup_eval::images::{load, ImageList, LoadOptions};
use soup_eval::weights::Weights;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["forward", path, batch, iterations] => {
            forward(Path::new(path), batch.parse()?, iterations.parse()?)
        }
        ["preprocess", dir] => preprocess(Path::new(dir)),
        _ => bail!("usage: bench-vision forward CKPT BATCH ITERATIONS | preprocess IMAGE_FOLDER"),
    }
}

/// Images per second of the model in `path` on random 224x224 inputs (one untimed warm-up).
fn forward(path: &Path, batch: usize, iterations: usize) -> Result<()> {
    let checkpoint = Checkpoint::open(path)?;
    let arch = Selection::parse("auto")?.configure(&checkpoint, &Options::default())?;
    let weights = Weights::from_checkpoint(&checkpoint, &candle_core::Device::Cpu)?;
    let side = match arch.input() {
        Input::Image(shape) => shape.size.map_or(224, |s| s[0]),
        Input::Tokens(_) => bail!("{}: not an image model", path.display()),
    };
    let per = 3 * side * side;
    // A fixed pseudo-random batch (SplitMix64), so runs are comparable.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let inputs: Vec<f32> = (0..batch * per)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    let data = Dataset::in_memory(
        path.to_path_buf(),
        inputs,
        vec![3, side, side],
        vec![0; batch],
    );
    let evaluator = Evaluator::new(arch.clone(), candle_core::Device::Cpu, batch);
    evaluator.logits(&weights, &data).context("warm-up")?;
    let started = Instant::now();
    for _ in 0..iterations {
        evaluator.logits(&weights, &data)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "tool": "candle", "model": arch.describe(), "batch": batch, "iterations": iterations,
            "seconds": seconds, "images_per_second": (batch * iterations) as f64 / seconds,
        })
    );
    Ok(())
}

/// Images per second of decoding and transforming (torchvision's default eval transform) an
/// image folder.
fn preprocess(dir: &Path) -> Result<()> {
    let list = ImageList::open(dir)?;
    let started = Instant::now();
    let loaded = load(&list, &LoadOptions::default())?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "tool": "soup-eval", "images": loaded.labels.len(), "seconds": seconds,
            "images_per_second": loaded.labels.len() as f64 / seconds,
        })
    );
    Ok(())
}

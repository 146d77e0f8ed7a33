//! Language-model benchmark probe for bench/text_bench.sh: forward throughput (tokens per second) of a model directory built through soup-eval's registry, printed as one JSON line.
//!
//! ```sh
//! cargo run --release -p soup-eval --example bench-text -- MODEL_DIR BATCH SEQ_LEN ITERATIONS
//! ```
//!
//! Threads: RAYON_NUM_THREADS, as for soup-eval. The logits at every position are computed
//! (what scoring needs), in f32, on the CPU.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use model_soup::format::Checkpoint;
use soup_eval::arch::{Batch, Input, Options, Selection};
use soup_eval::weights::Weights;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, batch, seq_len, iterations] = &args[..] else {
        bail!("usage: bench-text MODEL_DIR BATCH SEQ_LEN ITERATIONS");
    };
    forward(
        Path::new(dir),
        batch.parse()?,
        seq_len.parse()?,
        iterations.parse()?,
    )
}

/// Tokens per second of the model in `dir` on fixed pseudo-random ids (one untimed warm-up).
fn forward(dir: &Path, batch: usize, seq_len: usize, iterations: usize) -> Result<()> {
    let checkpoint = Checkpoint::open(dir)?;
    let arch = Selection::parse("auto")?.configure(&checkpoint, &Options::default())?;
    let Input::Tokens(tokens) = arch.input() else {
        bail!("{}: not a language model", dir.display());
    };
    let weights = Weights::from_checkpoint(&checkpoint, &Device::Cpu)?;
    let model = arch
        .build(weights.var_builder(DType::F32))
        .context("building the model")?;
    // A fixed pseudo-random batch (SplitMix64), so runs are comparable.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let ids: Vec<u32> = (0..batch * seq_len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z % tokens.vocab as u64) as u32
        })
        .collect();
    let ids = Tensor::from_vec(ids, (batch, seq_len), &Device::Cpu)?;
    let mask = Tensor::ones((batch, seq_len), DType::U32, &Device::Cpu)?;
    let run = || -> Result<()> {
        let logits = model.logits(&Batch::tokens(&ids, Some(&mask)))?;
        // Read one value back so that nothing is left unevaluated.
        logits
            .flatten_all()?
            .get(0)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        Ok(())
    };
    run().context("warm-up")?;
    let started = Instant::now();
    for _ in 0..iterations {
        run()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens = (batch * seq_len * iterations) as f64;
    println!(
        "{}",
        serde_json::json!({
            "tool": "candle", "model": arch.describe(), "batch": batch, "seq_len": seq_len,
            "iterations": iterations, "seconds": seconds, "tokens_per_second": tokens / seconds,
        })
    );
    Ok(())
}

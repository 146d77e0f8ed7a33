//! Trains the fixtures' checkpoints on the UCI digits: a base model, fine-tuned ingredients,
//! a deliberately poor one, f16/bf16 copies, and a pair trained from different random inits.
//!
//! ```text
//! cargo run --release -p soup-eval --example make-fixtures -- --readme fixtures/README.md  # rewrites fixtures/models
//! cargo run --release -p soup-eval --example make-fixtures -- --fast --out DIR             # the quick CI variant
//! ```
//!
//! Everything random (weight init, batch order, augmentation) comes from a seeded SplitMix64,
//! never from candle's unseeded generator, so two runs write byte-identical files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use model_soup::format::Checkpoint;
use soup_eval::arch::{self, digits_cnn::DigitsCnn};
use soup_eval::dataset::Dataset;
use soup_eval::evaluator::Evaluator;
use soup_eval::weights::Weights;

/// The seeded generator: SplitMix64 (Steele, Lea and Flood, 2014).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal, by Box-Muller.
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform integer in 0..n.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// One split of the digits, kept on the host for batching and augmentation.
struct Split {
    inputs: Vec<f32>,
    labels: Vec<i64>,
}

impl Split {
    fn load(path: &Path) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("{}: cannot load the digits split", path.display()))?;
        let inputs = tensors.get("inputs").context("no `inputs` tensor")?;
        let labels = tensors.get("labels").context("no `labels` tensor")?;
        Ok(Self {
            inputs: inputs.flatten_all()?.to_vec1::<f32>()?,
            labels: labels.to_vec1::<i64>()?,
        })
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

const PIXELS: usize = 64;

/// How one model is trained.
#[derive(Clone)]
struct Recipe {
    /// File stem, e.g. `ft-lr3e-4`.
    name: &'static str,
    /// AdamW learning rate.
    lr: f64,
    epochs: usize,
    /// Random shifts of up to one pixel in each direction.
    shift: bool,
    /// Label smoothing epsilon; 0 for plain cross-entropy.
    smoothing: f64,
    /// Seed for batch order and augmentation (and for the init, when trained from scratch).
    seed: u64,
    /// What the recipe is for, recorded in the file's metadata.
    note: &'static str,
}

const BATCH: usize = 32;

/// Kaiming-normal init for conv and linear weights, zero biases; batch norm starts at
/// weight 1, bias 0, mean 0, variance 1 (as candle-nn already sets them).
fn init_from_seed(varmap: &VarMap, seed: u64) -> Result<()> {
    let mut rng = SplitMix64(seed);
    let vars = varmap.data().lock().unwrap();
    let names: BTreeMap<_, _> = vars.iter().collect();
    for (name, var) in names {
        let dims = var.dims().to_vec();
        let value = if name.starts_with("conv") || name == "fc.weight" {
            let fan_in: usize = dims[1..].iter().product();
            let std = (2.0 / fan_in as f64).sqrt();
            let n: usize = dims.iter().product();
            let data: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
            Tensor::from_vec(data, dims.as_slice(), &Device::Cpu)?
        } else if name == "fc.bias" {
            Tensor::zeros(dims.as_slice(), DType::F32, &Device::Cpu)?
        } else {
            continue;
        };
        var.set(&value)?;
    }
    Ok(())
}

/// The trainable model plus the batch counters PyTorch keeps as `num_batches_tracked`.
struct Trainee {
    varmap: VarMap,
    model: DigitsCnn,
    batches_tracked: i64,
}

impl Trainee {
    fn from_scratch(seed: u64) -> Result<Self> {
        let varmap = VarMap::new();
        let model = DigitsCnn::new(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
        init_from_seed(&varmap, seed)?;
        Ok(Self {
            varmap,
            model,
            batches_tracked: 0,
        })
    }

    fn from_parent(parent: &Trainee) -> Result<Self> {
        let child = Self::from_scratch(0)?;
        {
            let theirs = parent.varmap.data().lock().unwrap();
            let ours = child.varmap.data().lock().unwrap();
            for (name, var) in ours.iter() {
                var.set(&theirs[name].as_tensor().copy()?)?;
            }
        }
        Ok(Self {
            batches_tracked: parent.batches_tracked,
            ..child
        })
    }

    fn train(&mut self, recipe: &Recipe, data: &Split) -> Result<()> {
        let mut rng = SplitMix64(recipe.seed.wrapping_mul(0x1000_0000_01b3) ^ 0x5eed);
        let params = ParamsAdamW {
            lr: recipe.lr,
            ..Default::default()
        };
        let mut opt = AdamW::new(self.varmap.all_vars(), params)?;
        let mut order: Vec<usize> = (0..data.len()).collect();
        for _ in 0..recipe.epochs {
            rng.shuffle(&mut order);
            for chunk in order.chunks(BATCH) {
                if chunk.len() < 2 {
                    continue; // batch norm needs two samples for a variance
                }
                let mut pixels = Vec::with_capacity(chunk.len() * PIXELS);
                let mut labels = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    let image = &data.inputs[i * PIXELS..(i + 1) * PIXELS];
                    if recipe.shift {
                        let dx = rng.below(3) as isize - 1;
                        let dy = rng.below(3) as isize - 1;
                        pixels.extend(shifted(image, dx, dy));
                    } else {
                        pixels.extend_from_slice(image);
                    }
                    labels.push(data.labels[i]);
                }
                let x = Tensor::from_vec(pixels, (chunk.len(), 1, 8, 8), &Device::Cpu)?;
                let y = Tensor::from_vec(labels, chunk.len(), &Device::Cpu)?;
                let logits = self.model.forward_t(&x, true)?;
                let loss = smoothed_cross_entropy(&logits, &y, recipe.smoothing)?;
                opt.backward_step(&loss)?;
                self.batches_tracked += 1;
            }
        }
        Ok(())
    }

    /// Every tensor, with PyTorch's names, in f32 (plus the i64 counters).
    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut state = BTreeMap::new();
        for (name, var) in self.varmap.data().lock().unwrap().iter() {
            state.insert(name.clone(), var.as_tensor().copy()?);
        }
        for bn in ["bn1", "bn2"] {
            let n = Tensor::new(self.batches_tracked, &Device::Cpu)?;
            state.insert(format!("{bn}.num_batches_tracked"), n);
        }
        Ok(state)
    }
}

/// `image` (8×8) moved by (dx, dy) pixels, filled with zeros.
fn shifted(image: &[f32], dx: isize, dy: isize) -> Vec<f32> {
    let mut out = vec![0f32; PIXELS];
    for r in 0..8isize {
        for c in 0..8isize {
            let (sr, sc) = (r - dy, c - dx);
            if (0..8).contains(&sr) && (0..8).contains(&sc) {
                out[(r * 8 + c) as usize] = image[(sr * 8 + sc) as usize];
            }
        }
    }
    out
}

/// Cross-entropy with label smoothing `eps`: (1 - eps) * NLL + eps * mean over classes of -log p.
fn smoothed_cross_entropy(logits: &Tensor, labels: &Tensor, eps: f64) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp
        .gather(&labels.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?
        .mean_all()?;
    if eps == 0.0 {
        return Ok(nll);
    }
    let uniform = logp.mean(D::Minus1)?.neg()?.mean_all()?;
    Ok(((nll * (1.0 - eps))? + (uniform * eps)?)?)
}

/// Writes `tensors` as safetensors with a sorted header (8-byte padded) and data ordered by
/// (alignment, name), so the bytes depend only on the tensors and the metadata.
fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut order: Vec<(&String, &Tensor)> = tensors.iter().collect();
    order.sort_by_key(|(name, t)| {
        (
            std::cmp::Reverse(t.dtype().size_in_bytes()),
            (*name).clone(),
        )
    });
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    let mut data = Vec::new();
    for (name, t) in &order {
        let bytes = tensor_bytes(t)?;
        let dtype = match t.dtype() {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            other => bail!("tensor '{name}': unexpected dtype {other:?}"),
        };
        header.insert(
            (*name).clone(),
            serde_json::json!({
                "dtype": dtype,
                "shape": t.dims(),
                "data_offsets": [data.len(), data.len() + bytes.len()],
            }),
        );
        data.extend(bytes);
    }
    let mut text = serde_json::to_vec(&header)?;
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut file = Vec::with_capacity(8 + text.len() + data.len());
    file.extend((text.len() as u64).to_le_bytes());
    file.extend(text);
    file.extend(data);
    std::fs::write(path, file).with_context(|| format!("cannot write {}", path.display()))
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => bail!("unexpected dtype {other:?}"),
    })
}

/// The same state with every float tensor converted to `dtype` (integer buffers unchanged).
fn converted(state: &BTreeMap<String, Tensor>, dtype: DType) -> Result<BTreeMap<String, Tensor>> {
    state
        .iter()
        .map(|(name, t)| {
            let t = if t.dtype() == DType::I64 {
                t.clone()
            } else {
                t.to_dtype(dtype)?
            };
            Ok((name.clone(), t))
        })
        .collect()
}

struct Options {
    out: PathBuf,
    data: PathBuf,
    fast: bool,
    readme: Option<PathBuf>,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        out: PathBuf::from("fixtures/models"),
        data: PathBuf::from("fixtures/digits"),
        fast: false,
        readme: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fast" => options.fast = true,
            "--out" => options.out = args.next().context("--out needs a directory")?.into(),
            "--readme" => {
                options.readme = Some(args.next().context("--readme needs a file")?.into())
            }
            "--data" => options.data = args.next().context("--data needs a directory")?.into(),
            other => bail!("unknown argument '{other}' (expected --fast, --out DIR, --data DIR, --readme FILE)"),
        }
    }
    Ok(options)
}

fn main() -> Result<()> {
    let options = parse_args()?;
    let train = Split::load(&options.data.join("train.safetensors"))?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;

    // The fast variant keeps the base recipe (two epochs: over 80% test accuracy) and cuts
    // every other recipe to a quarter of its epochs.
    let scale = |epochs: usize| {
        if options.fast {
            epochs.div_ceil(4)
        } else {
            epochs
        }
    };
    let recipe = |name, lr, epochs, shift, smoothing, seed, note| Recipe {
        name,
        lr,
        epochs: scale(epochs),
        shift,
        smoothing,
        seed,
        note,
    };
    let base_recipe = Recipe {
        epochs: 2,
        ..recipe(
            "base",
            3e-3,
            2,
            false,
            0.0,
            1,
            "the shared starting point ('pretrained'), trained from a seeded init",
        )
    };
    let fine_tunes = [
        recipe(
            "ft-lr2e-3",
            2e-3,
            3,
            false,
            0.0,
            2,
            "fine-tune of base, lr 2e-3",
        ),
        recipe(
            "ft-lr1e-3",
            1e-3,
            3,
            false,
            0.0,
            3,
            "fine-tune of base, lr 1e-3",
        ),
        recipe(
            "ft-lr5e-4",
            5e-4,
            3,
            false,
            0.0,
            4,
            "fine-tune of base, lr 5e-4",
        ),
        recipe(
            "ft-lr1e-3-shift",
            1e-3,
            3,
            true,
            0.0,
            5,
            "fine-tune of base, lr 1e-3, random one-pixel shifts",
        ),
        recipe(
            "ft-lr1e-3-smooth",
            1e-3,
            3,
            false,
            0.1,
            6,
            "fine-tune of base, lr 1e-3, label smoothing 0.1",
        ),
        recipe(
            "ft-lr2e-3-long",
            2e-3,
            8,
            false,
            0.0,
            7,
            "fine-tune of base, lr 2e-3, 8 epochs",
        ),
        recipe(
            "ft-lr3e-3-shift-smooth",
            3e-3,
            3,
            true,
            0.1,
            8,
            "fine-tune of base, lr 3e-3, shifts and label smoothing 0.1",
        ),
        recipe(
            "ft-lr3e-1-poor",
            3e-1,
            2,
            false,
            0.0,
            9,
            "deliberately poor: a fine-tune of base with a learning rate far too high",
        ),
    ];
    let scratch = [
        recipe(
            "scratch-a",
            3e-3,
            12,
            false,
            0.0,
            101,
            "trained from its own random init, not from base (pair with scratch-b)",
        ),
        recipe(
            "scratch-b",
            3e-3,
            12,
            false,
            0.0,
            102,
            "trained from its own random init, not from base (pair with scratch-a)",
        ),
    ];
    let copies = [
        ("ft-lr2e-3", DType::F16),
        ("ft-lr1e-3-shift", DType::BF16),
        ("base", DType::F16),
    ];

    let mut models: Vec<(Recipe, Trainee)> = Vec::new();
    let mut base = Trainee::from_scratch(base_recipe.seed)?;
    base.train(&base_recipe, &train)?;
    for recipe in &fine_tunes {
        let mut model = Trainee::from_parent(&base)?;
        model.train(recipe, &train)?;
        models.push((recipe.clone(), model));
    }
    for recipe in &scratch {
        let mut model = Trainee::from_scratch(recipe.seed)?;
        model.train(recipe, &train)?;
        models.push((recipe.clone(), model));
    }
    models.insert(0, (base_recipe, base));

    let mut written: Vec<(&str, &str, PathBuf)> = Vec::new();
    for (recipe, model) in &models {
        let metadata: BTreeMap<String, String> = [
            ("arch", "digits-cnn".to_string()),
            ("recipe", recipe.note.to_string()),
            ("lr", format!("{:e}", recipe.lr)),
            ("epochs", recipe.epochs.to_string()),
            ("seed", recipe.seed.to_string()),
            (
                "augment",
                if recipe.shift { "shift" } else { "none" }.to_string(),
            ),
            ("label_smoothing", recipe.smoothing.to_string()),
            (
                "parent",
                if recipe.name.starts_with("ft-") {
                    "base"
                } else {
                    "none"
                }
                .to_string(),
            ),
            (
                "dataset",
                "UCI digits (scikit-learn load_digits), train split".to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let state = model.state()?;
        let state_path = options.out.join(format!("{}.safetensors", recipe.name));
        save(&state_path, &state, &metadata)?;
        written.push((recipe.name, recipe.note, state_path));
        for (name, dtype) in copies {
            if name == recipe.name {
                let suffix = if dtype == DType::F16 { "f16" } else { "bf16" };
                // Copies live in half/, so that `models/ft-*.safetensors` is the f32 ingredients.
                let half = options.out.join("half");
                std::fs::create_dir_all(&half)
                    .with_context(|| format!("cannot create {}", half.display()))?;
                let path = half.join(format!("{}.{suffix}.safetensors", recipe.name));
                save(&path, &converted(&state, dtype)?, &metadata)?;
                written.push((
                    recipe.name,
                    if dtype == DType::F16 {
                        "f16 copy"
                    } else {
                        "bf16 copy"
                    },
                    path,
                ));
            }
        }
    }

    // Score every written file with the evaluator soup-eval uses, so the table below is what
    // `soup-eval score` prints for these files.
    let arch = arch::digits_cnn::arch();
    let evaluator = Evaluator::new(arch.clone(), Device::Cpu, 256);
    let val = Dataset::open(&options.data.join("val.safetensors"), &*arch)?;
    let test = Dataset::open(&options.data.join("test.safetensors"), &*arch)?;
    let mut table = String::from(
        "| file | what it is | val correct (accuracy) | test correct (accuracy) |\n|---|---|---|---|\n",
    );
    for (_, note, path) in &written {
        let weights = Weights::from_checkpoint(&Checkpoint::open(path)?, &Device::Cpu)?;
        let (v, t) = (
            evaluator.score(&weights, &val)?,
            evaluator.score(&weights, &test)?,
        );
        let file = path
            .strip_prefix(&options.out)
            .unwrap_or(path)
            .display()
            .to_string();
        println!(
            "{file:<36} val {:>3}/{} ({:.4}%)  test {:>3}/{} ({:.4}%)",
            v.correct,
            v.total,
            v.percent(),
            t.correct,
            t.total,
            t.percent()
        );
        table.push_str(&format!(
            "| `{file}` | {note} | {}/{} ({:.4}%) | {}/{} ({:.4}%) |\n",
            v.correct,
            v.total,
            v.percent(),
            t.correct,
            t.total,
            t.percent()
        ));
    }
    if let Some(readme) = &options.readme {
        replace_between_markers(readme, &table)?;
    }
    Ok(())
}

/// Replaces the text between `<!-- accuracies:begin -->` and `<!-- accuracies:end -->` in
/// `readme` with `table`.
fn replace_between_markers(readme: &Path, table: &str) -> Result<()> {
    const BEGIN: &str = "<!-- accuracies:begin -->";
    const END: &str = "<!-- accuracies:end -->";
    let text = std::fs::read_to_string(readme)
        .with_context(|| format!("cannot read --readme {}", readme.display()))?;
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} has no {BEGIN} ... {END} markers", readme.display());
    };
    let updated = format!("{}{BEGIN}\n{table}{}", &text[..a], &text[b..]);
    std::fs::write(readme, updated).with_context(|| format!("cannot write {}", readme.display()))
}

//! The greedy search's in-memory candidates against the core's merge: the running sum's mean
//! agrees with `soup::to_memory` of the same ingredients, identical inputs give the input back,
//! and input order doesn't matter beyond rounding; under both sum strategies (the CPU's
//! members by reference, a GPU's device-resident f64 sums, here run on the CPU), which give
//! the same bits.

use std::path::Path;

use candle_core::Device;
use model_soup::format::Checkpoint;
use model_soup::soup::{self, Plan, PlanOptions, RunOptions};
use soup_eval::weights::{RunningSum, SumStrategy, Weights};

fn open(name: &str) -> Checkpoint {
    Checkpoint::open(
        &Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .join(format!("fixtures/models/{name}.safetensors")),
    )
    .unwrap()
}

const STRATEGIES: [SumStrategy; 2] = [SumStrategy::Members, SumStrategy::DeviceSums];

/// The running sum's mean of `names`, held as `strategy` says.
fn mean_with(names: &[&str], strategy: SumStrategy) -> Weights {
    let checkpoints: Vec<Checkpoint> = names.iter().map(|n| open(n)).collect();
    let mut sum = RunningSum::with_strategy(&checkpoints[0], &Device::Cpu, strategy).unwrap();
    for c in &checkpoints[1..] {
        sum = sum.plus(c).unwrap();
    }
    assert_eq!(sum.count(), names.len());
    assert_eq!(sum.strategy(), strategy);
    sum.mean().unwrap()
}

/// The mean under both strategies, checked to be the same bits.
fn mean_of(names: &[&str]) -> Weights {
    let [members, sums] = STRATEGIES.map(|s| mean_with(names, s));
    assert!(members == sums, "the strategies differ on {names:?}");
    members
}

fn core_soup(names: &[&str]) -> Weights {
    let k = names.len();
    let plan = Plan::new(
        names.iter().map(|n| open(n)).collect(),
        vec![1.0 / k as f64; k],
        &PlanOptions::default(),
    )
    .unwrap();
    Weights::from_soup(
        &soup::to_memory(&plan, RunOptions::default()).unwrap().0,
        &Device::Cpu,
    )
    .unwrap()
}

/// The largest difference between two weight sets, in units of the larger magnitude.
fn max_relative_difference(a: &Weights, b: &Weights) -> f64 {
    assert_eq!(a.names().collect::<Vec<_>>(), b.names().collect::<Vec<_>>());
    let mut worst = 0f64;
    for name in a.names() {
        let (x, y) = (a.values(name).unwrap(), b.values(name).unwrap());
        for (x, y) in x.unwrap().iter().zip(y.unwrap()) {
            let scale = x.abs().max(y.abs()).max(f32::MIN_POSITIVE) as f64;
            worst = worst.max((x - y).abs() as f64 / scale);
        }
    }
    worst
}

#[test]
fn running_sum_mean_matches_the_core_merge() {
    let names = [
        "ft-lr2e-3",
        "ft-lr2e-3-long",
        "ft-lr1e-3-smooth",
        "ft-lr3e-1-poor",
    ];
    let ours = mean_of(&names);
    let core = core_soup(&names);
    let d = max_relative_difference(&ours, &core);
    // Both sum in f64 and round once to f32; they differ only in dividing by k versus
    // multiplying each term by 1/k, so at most one f32 rounding step apart.
    assert!(d <= 1.2e-7, "candidate and core soup differ by {d:e}");
}

#[test]
fn soup_of_identical_inputs_is_the_input() {
    let one = Weights::from_checkpoint(&open("ft-lr1e-3"), &Device::Cpu).unwrap();
    assert_eq!(mean_of(&["ft-lr1e-3"; 3]), one);
    assert_eq!(mean_of(&["ft-lr1e-3"]), one);
    // The comparison can fail: another model is not equal.
    assert_ne!(mean_of(&["ft-lr2e-3"]), one);
}

#[test]
fn order_does_not_matter_beyond_rounding() {
    let a = mean_of(&["ft-lr2e-3", "ft-lr5e-4", "scratch-a"]);
    let b = mean_of(&["scratch-a", "ft-lr2e-3", "ft-lr5e-4"]);
    assert!(max_relative_difference(&a, &b) <= 1.2e-7);
}

#[test]
fn half_precision_ingredients_are_widened_exactly() {
    // The f16 copy enters the sum as its exact f16 values.
    let f16 = open("half/ft-lr2e-3.f16");
    let direct = Weights::from_checkpoint(&f16, &Device::Cpu).unwrap();
    for strategy in STRATEGIES {
        let sum = RunningSum::with_strategy(&f16, &Device::Cpu, strategy).unwrap();
        assert_eq!(sum.mean().unwrap(), direct, "{strategy:?}");
    }
}

#[test]
fn an_ingredient_without_a_tensor_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.safetensors");
    // A file with only one of the tensors: the sum names what's missing.
    let base = open("base");
    let t = base.tensor("fc.bias").unwrap();
    let header = format!(
        r#"{{"fc.bias":{{"dtype":"F32","shape":[10],"data_offsets":[0,{}]}}}}"#,
        t.data.len()
    );
    let mut header = header.into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(&header);
    bytes.extend(t.data);
    std::fs::write(&path, bytes).unwrap();
    let partial = Checkpoint::open(&path).unwrap();
    for strategy in STRATEGIES {
        let err = RunningSum::with_strategy(&base, &Device::Cpu, strategy)
            .unwrap()
            .plus(&partial)
            .err()
            .expect("an error");
        let text = err.to_string();
        assert!(
            text.contains("partial.safetensors") && text.contains("is missing"),
            "{strategy:?}: {text}"
        );
    }
}

#[test]
fn the_cpu_holds_members_and_both_strategies_agree_on_mixed_dtypes() {
    let base = open("base");
    assert_eq!(
        RunningSum::new(&base, &Device::Cpu).unwrap().strategy(),
        SumStrategy::Members
    );
    // f16 and bf16 ingredients among f32 ones, in a soup of six: every step is exact or correctly
    // rounded under both strategies, so the bits agree (mean_of asserts it).
    let mixed = mean_of(&[
        "ft-lr2e-3",
        "half/ft-lr2e-3.f16",
        "ft-lr5e-4",
        "scratch-a",
        "ft-lr1e-3",
        "half/ft-lr1e-3-shift.bf16",
    ]);
    assert_ne!(
        mixed,
        Weights::from_checkpoint(&base, &Device::Cpu).unwrap()
    );
}

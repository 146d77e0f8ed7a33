//! The same bytes on every x86-64 CPU. The hot loops are compiled three times (AVX2, SSE4.1,
//! baseline x86-64) and picked at run time, and half's f16 conversions use F16C where the CPU
//! has it. This runs every method natively and under qemu-user on emulated CPUs without AVX2
//! and F16C (Nehalem: the SSE4.1 clones) and without SSE4.1 (qemu64: the baseline clones), and
//! compares the outputs byte for byte.
//!
//! `.ci/run` installs qemu-user. Without `qemu-x86_64` the test is skipped with a message,
//! except under CI=true, where it fails. Other architectures have no clones to compare.
#![cfg(target_arch = "x86_64")]

mod common;

use common::*;
use safetensors::Dtype as D;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Emulated CPUs, and the features each must lack for its run to test another clone.
const CPUS: &[(&str, &str)] = &[
    ("Nehalem", "avx2=false sse4.1=true f16c=false"),
    ("qemu64", "avx2=false sse4.1=false f16c=false"),
];

/// Tensors that reach the kernels' tails and every path that depends on the size: 77 100
/// elements (more than the 65 536 that TIES samples, so its thresholds come from windows), an
/// odd 1-D length, a 4-D tensor (DELLA's strided rows) and a short one.
const TENSORS: &[(&str, &[usize])] = &[
    ("model.layers.0.mlp.up.weight", &[257, 300]),
    ("model.layers.1.self_attn.q.bias", &[70001]),
    ("model.layers.1.conv.weight", &[6, 5, 3, 3]),
    ("model.norm.weight", &[37]),
];

/// A base and two fine-tunes in `dtype`. Every eleventh element of a fine-tune equals the
/// base's, so task vectors have zeros and ties; the rest is base plus noise and a bias.
fn family(dir: &Path, dtype: D) -> Vec<PathBuf> {
    (0..3)
        .map(|m| {
            let specs: Vec<Spec> = TENSORS
                .iter()
                .enumerate()
                .map(|(t, (name, shape))| {
                    let n: usize = shape.iter().product();
                    let mut base = Rng::new(10 + t as u64);
                    let mut noise = Rng::new(100 * m as u64 + t as u64);
                    let values: Vec<f64> = (0..n)
                        .map(|e| {
                            let b = base.normal() * 0.5;
                            let d = 0.05 * noise.normal() + 0.01 * m as f64;
                            if m == 0 || e % 11 == 0 {
                                b
                            } else {
                                b + d
                            }
                        })
                        .collect();
                    spec(name, dtype, shape, encode(dtype, &values))
                })
                .collect();
            let path = dir.join(format!("{dtype:?}-{m}.safetensors"));
            write(&path, &specs);
            path
        })
        .collect()
}

/// Every method, with the arguments after `--method NAME` (inputs included).
fn cases(inputs: &[PathBuf]) -> Vec<(&'static str, Vec<std::ffi::OsString>)> {
    let [base, a, b] = inputs else {
        panic!("a base and two fine-tunes")
    };
    let with_base = |flags: &[&str]| {
        let mut args: Vec<std::ffi::OsString> =
            vec!["--base".into(), base.into(), a.into(), b.into()];
        args.extend(flags.iter().map(Into::into));
        args
    };
    vec![
        ("linear", vec![base.into(), a.into(), b.into()]),
        (
            "linear",
            vec![
                base.into(),
                a.into(),
                b.into(),
                "--dtype".into(),
                "f16".into(),
            ],
        ),
        (
            "task_arithmetic",
            with_base(&["-w", "0.6,0.4", "--lambda", "0.7"]),
        ),
        ("ties", with_base(&["--density", "0.4"])),
        (
            "ties",
            with_base(&["--density", "0.3", "--param", "rescale=true"]),
        ),
        ("dare_linear", with_base(&["--density", "0.5"])),
        (
            "dare_linear",
            with_base(&["--density", "0.5", "--param", "rescale=false"]),
        ),
        ("dare_ties", with_base(&["--density", "0.4"])),
        (
            "della",
            with_base(&["--density", "0.5", "--epsilon", "0.1"]),
        ),
        ("della_linear", with_base(&["--density", "0.5"])),
        (
            "breadcrumbs",
            with_base(&["--density", "0.5", "--gamma", "0.1"]),
        ),
        (
            "breadcrumbs_ties",
            with_base(&["--density", "0.5", "--gamma", "0.1"]),
        ),
        (
            "slerp",
            vec![
                "--base".into(),
                base.into(),
                a.into(),
                "--t".into(),
                "0.3".into(),
            ],
        ),
        ("nuslerp", with_base(&["-w", "0.6,0.4"])),
        ("model_stock", with_base(&[])),
        (
            "passthrough",
            vec![a.into(), "--param".into(), "scale=0.5".into()],
        ),
    ]
}

/// `qemu-x86_64`, or `None` (after saying why) when the test must be skipped.
fn qemu() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("qemu-x86_64"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "qemu-x86_64 is missing; .ci/run installs qemu-user"
        );
        eprintln!("skipping the CPU test: qemu-x86_64 is missing (apt-get install qemu-user)");
    }
    found
}

/// Run under qemu by [`every_method_gives_the_same_bytes_on_every_cpu`]: prints the features
/// that the kernels are dispatched on, as the emulated CPU reports them.
#[test]
fn cpu_features_probe() {
    if std::env::var_os("SOUP_CPU_PROBE").is_some() {
        println!(
            "features: avx2={} sse4.1={} f16c={}",
            is_x86_feature_detected!("avx2"),
            is_x86_feature_detected!("sse4.1"),
            is_x86_feature_detected!("f16c")
        );
    }
}

#[test]
fn every_method_gives_the_same_bytes_on_every_cpu() {
    let Some(qemu) = qemu() else { return };
    // The AVX2 and F16C code runs natively where the CPU has both, else on qemu's "max" CPU.
    let mut cpus = CPUS.to_vec();
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")) {
        cpus.push(("max", "avx2=true sse4.1=true f16c=true"));
    }
    // Each emulated CPU must have exactly the features it stands for, or two runs of one clone
    // are compared.
    let me = std::env::current_exe().unwrap();
    for (cpu, features) in &cpus {
        let o = Command::new(&qemu)
            .args(["-cpu", cpu])
            .arg(&me)
            .args(["cpu_features_probe", "--exact", "--nocapture"])
            .env("SOUP_CPU_PROBE", "1")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(
            said.contains(&format!("features: {features}")),
            "qemu -cpu {cpu}: expected {features}, the probe said {said}"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let merge = soup_merge_path();
    let mut compared = 0;
    for dtype in [D::BF16, D::F16, D::F32] {
        let inputs = family(tmp.path(), dtype);
        for (i, (method, args)) in cases(&inputs).into_iter().enumerate() {
            let run = |cpu: Option<&str>| {
                let out = tmp.path().join(format!(
                    "{dtype:?}-{i}-{}.safetensors",
                    cpu.unwrap_or("native")
                ));
                let mut cmd = match cpu {
                    Some(cpu) => {
                        let mut c = Command::new(&qemu);
                        c.args(["-cpu", cpu]).arg(&merge);
                        c
                    }
                    None => Command::new(&merge),
                };
                let o = cmd
                    .args(["--method", method, "-q", "--seed", "3"])
                    .args(&args)
                    .arg("-o")
                    .arg(&out)
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "{method} {args:?} on {cpu:?}: {}",
                    stderr(&o)
                );
                std::fs::read(&out).unwrap()
            };
            let native = run(None);
            for (cpu, _) in &cpus {
                assert!(
                    run(Some(cpu)) == native,
                    "{dtype:?} {method} {args:?}: the bytes on {cpu} differ from the native run's"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 3 * 16 * cpus.len());
}

//! soup-merge against an independent float64 reference: Python's official safetensors package
//! plus numpy (tests/reference/merge_ref.py).

mod common;

use common::*;
use safetensors::Dtype as D;
use std::process::Command;

fn check(case: &str, dtypes: [D; 3], weights: &str, extra: &[&str]) {
    let Some(python) = reference_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    for (i, dtype) in dtypes.iter().enumerate() {
        let mut rng = Rng::new(1000 + i as u64);
        let p = dir.path().join(format!("{case}{i}.safetensors"));
        write(
            &p,
            &[
                spec(
                    "model.embed.weight",
                    *dtype,
                    &[512, 300],
                    floats(&mut rng, *dtype, 153_600),
                ),
                spec(
                    "model.layers.0.mlp.weight",
                    *dtype,
                    &[77, 31],
                    floats(&mut rng, *dtype, 77 * 31),
                ),
                spec(
                    "model.norm.weight",
                    *dtype,
                    &[300],
                    floats(&mut rng, *dtype, 300),
                ),
                spec("model.scale", *dtype, &[], floats(&mut rng, *dtype, 1)),
                spec("model.empty", *dtype, &[0], vec![]),
                spec(
                    "bn.num_batches_tracked",
                    D::I64,
                    &[],
                    7i64.to_le_bytes().to_vec(),
                ),
            ],
        );
        inputs.push(p);
    }
    let out = dir.path().join("soup.safetensors");
    let o = soup_merge()
        .args(&inputs)
        .arg("-o")
        .arg(&out)
        .arg("-w")
        .arg(weights)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{case}: {}", stderr(&o));
    let r = Command::new(python)
        .arg(reference_script("merge_ref.py"))
        .arg(&out)
        .arg("--weights")
        .arg(weights)
        .args(&inputs)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(r.status.success(), "{case}: reference disagrees:\n{report}");
    assert!(report.contains("0 failures"), "{report}");
}

#[test]
fn bf16_uniform() {
    check(
        "bf16",
        [D::BF16; 3],
        "0.3333333333333333,0.3333333333333333,0.3333333333333333",
        &[],
    );
}

#[test]
fn f16_with_negative_weights() {
    check("f16", [D::F16; 3], "0.7,-0.2,0.5", &[]);
}

#[test]
fn f32_unnormalised() {
    check("f32", [D::F32; 3], "0.5,0.3,0.4", &[]);
}

#[test]
fn f64_accumulates_in_f64() {
    check("f64", [D::F64; 3], "0.25,0.25,0.5", &[]);
}

#[test]
fn mixed_inputs_to_bf16() {
    check(
        "mixed",
        [D::F32, D::BF16, D::F16],
        "0.4,0.4,0.2",
        &["--dtype", "bf16"],
    );
}

#[test]
fn bf16_inputs_to_f16_and_f64() {
    check("tof16", [D::BF16; 3], "0.2,0.3,0.5", &["--dtype", "f16"]);
    check(
        "tof64",
        [D::BF16, D::F32, D::BF16],
        "0.2,0.3,0.5",
        &["--dtype", "f64"],
    );
}

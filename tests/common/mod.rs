//! Helpers shared by the integration tests: writing checkpoints with the independent
//! `safetensors` crate, running the binaries, and the Python reference interpreter.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::Dtype as StDtype;

/// One tensor to write: name, safetensors dtype name, shape, little-endian bytes.
pub struct Spec {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn spec(name: &str, dtype: StDtype, shape: &[usize], data: Vec<u8>) -> Spec {
    Spec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

/// Writes a checkpoint with the official `safetensors` crate, with `format: pt` metadata.
pub fn write(path: &Path, tensors: &[Spec]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data).expect("valid spec"),
            )
        })
        .collect();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(meta), path).expect("write checkpoint");
}

/// A small deterministic generator (splitmix64) so tests need no rand crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Roughly normal: the sum of four uniforms, centred and scaled.
    pub fn normal(&mut self) -> f64 {
        let s: f64 = (0..4)
            .map(|_| (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
            .sum();
        (s - 2.0) * 1.7
    }
}

/// `n` float values encoded as `dtype`.
pub fn floats(rng: &mut Rng, dtype: StDtype, n: usize) -> Vec<u8> {
    let values: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    encode(dtype, &values)
}

/// `values` as little-endian `dtype`, each rounded once from f64.
pub fn encode(dtype: StDtype, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 8);
    for &x in values {
        match dtype {
            StDtype::F16 => out.extend(half::f16::from_f64(x).to_le_bytes()),
            StDtype::BF16 => out.extend(half::bf16::from_f64(x).to_le_bytes()),
            StDtype::F32 => out.extend((x as f32).to_le_bytes()),
            StDtype::F64 => out.extend(x.to_le_bytes()),
            other => panic!("not a float dtype: {other:?}"),
        }
    }
    out
}

/// `n` elements of any dtype as random bytes.
pub fn raw(rng: &mut Rng, bytes: usize) -> Vec<u8> {
    (0..bytes).map(|_| rng.next_u64() as u8).collect()
}

/// The repository's root, from the root crate's tests or the evaluator's (`eval/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("tests/common").is_dir() {
        manifest.to_path_buf()
    } else {
        manifest.parent().expect("eval/ has a parent").to_path_buf()
    }
}

/// The soup-merge binary: cargo names it to the root crate's tests; the evaluator's tests find
/// it beside their own executable, where `cargo test` at the root builds it.
pub fn soup_merge_path() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_soup-merge") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/deps")
        .join(format!("soup-merge{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        // `cargo test -p soup-eval` builds only the evaluator's binaries.
        let release = path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "release");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "-p", "model-soup", "--bin", "soup-merge"])
            .current_dir(repo_root());
        if release {
            cargo.arg("--release");
        }
        assert!(
            cargo.status().is_ok_and(|s| s.success()),
            "cannot build soup-merge for {}",
            path.display()
        );
    }
    path
}

pub fn soup_merge() -> Command {
    Command::new(soup_merge_path())
}

pub fn run_merge(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = soup_merge();
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.output().expect("run soup-merge")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a safetensors file with the official crate: name -> (dtype, shape, bytes).
pub fn read(path: &Path) -> HashMap<String, (StDtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("read output");
    let st =
        safetensors::SafeTensors::deserialize(&bytes).expect("official crate accepts the output");
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

/// The Python with numpy and safetensors for reference checks: `SOUP_PYTHON`, else `python3`.
/// Returns `None` (and says why) when it lacks them, outside CI; in CI that is a failure.
pub fn reference_python() -> Option<PathBuf> {
    let python = std::env::var_os("SOUP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import numpy, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(python);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} lacks numpy/safetensors; .ci/run must install them and set SOUP_PYTHON",
            python.display()
        );
    }
    eprintln!("skipping the Python reference check: set SOUP_PYTHON to a Python with numpy and safetensors");
    None
}

pub fn reference_script(name: &str) -> PathBuf {
    repo_root().join("tests/reference").join(name)
}

/// A file destination for library calls, checked by the output policy with nothing else read.
pub fn destination(path: &Path, force: bool) -> model_soup::format::Destination {
    use model_soup::format::{destination::check, OutputKind, Reads, Request};
    let request = Request {
        flag: "-o",
        path: path.to_path_buf(),
        kind: OutputKind::File,
    };
    check(&[request], &Reads::new(), force)
        .expect("the destination passes the policy")
        .remove(0)
}

//! soup-eval and Ctrl-C: a long evaluation stops with status 130 and leaves no temporary.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn ctrl_c_stops_an_evaluation_with_status_130() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let dir = tempfile::tempdir().unwrap();
    let models: Vec<_> = std::fs::read_dir(root.join("fixtures/models"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ft-"))
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_soup-eval"))
        .args(["report", "--arch", "digits-cnn", "--batch-size", "1", "-q"])
        .arg("--val")
        .arg(root.join("fixtures/digits/val.safetensors"))
        .arg("--test")
        .arg(root.join("fixtures/digits/test.safetensors"))
        .args(&models)
        .arg("-o")
        .arg(dir.path().join("greedy.safetensors"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "batch size 1 over 8 models takes longer than this"
    );
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let sent = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(130));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "left behind: {:?}",
        left.iter().map(|e| e.path()).collect::<Vec<_>>()
    );
}

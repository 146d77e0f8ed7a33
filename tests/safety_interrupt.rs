//! A Ctrl-C that arrives before the data pass (while headers are read, or the output is
//! allocated) is not forgotten when the pass starts. A binary of its own: the interrupt is
//! process-wide, and would stop every other test's merge.

mod common;

use common::*;
use model_soup::format::Checkpoint;
use model_soup::soup::{self, Plan, PlanOptions, RunOptions};
use model_soup::Error;
use safetensors::Dtype as D;

#[test]
fn an_interrupt_before_the_merge_starts_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    let paths = ["a", "b"].map(|n| dir.path().join(format!("{n}.safetensors")));
    for p in &paths {
        write(p, &[spec("w", D::F32, &[8], floats(&mut rng, D::F32, 8))]);
    }
    let plan = || {
        let cks = paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect();
        Plan::new(cks, vec![0.5, 0.5], &PlanOptions::default()).unwrap()
    };
    let (first, second) = (plan(), plan());
    // As if Ctrl-C came while the headers were being read.
    soup::interrupt();
    let out = dir.path().join("soup.safetensors");
    let err = soup::write(&first, &destination(&out, false), RunOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err}");
    assert!(!out.exists(), "published after an interrupt");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("soup-tmp"))
        .collect();
    assert!(left.is_empty(), "temporary kept: {left:?}");
    let err = soup::to_memory(&second, RunOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, Error::Interrupted), "{err}");
}

/// A Ctrl-C while a dry run reads its headers (thousands of shards on a slow disk) is not
/// forgotten either: the run stops with kind `interrupted` (exit status 130) instead of
/// printing the plan and exiting 0 as if it had never come.
#[test]
fn an_interrupt_while_a_dry_run_reads_headers_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(6);
    let paths = ["a", "b"].map(|n| dir.path().join(format!("{n}.safetensors")));
    for p in &paths {
        write(p, &[spec("w", D::F32, &[8], floats(&mut rng, D::F32, 8))]);
    }
    let args = <model_soup::cli::merge::Args as clap::Parser>::parse_from([
        "soup-merge".as_ref(),
        paths[0].as_os_str(),
        paths[1].as_os_str(),
        "--dry-run".as_ref(),
        "--json".as_ref(),
    ]);
    // As if Ctrl-C came while the headers were being read.
    soup::interrupt();
    let err = model_soup::cli::merge::run(&args).expect_err("a dry run after Ctrl-C");
    // Exit status 130, and `"kind": "interrupted"` in --json.
    assert!(model_soup::cli::interrupted(&err), "{err:#}");
    assert_eq!(model_soup::cli::error_kind(&err), "interrupted", "{err:#}");
    let text = format!("{err:#}");
    assert!(
        text.starts_with("interrupted") && text.contains("nothing was written"),
        "{text}"
    );
}

//! A Ctrl-C (or SIGTERM, SIGHUP) while `--verify` reads a published output back stops the
//! read-back, as it stops a merge: exit status 130 and kind `interrupted`, with the output left
//! in place, complete, and the error saying it was not verified. A binary of its own: the
//! interrupt is process-wide, and here the merge before it must run uninterrupted.

mod common;

use common::*;
use model_soup::format::Checkpoint;
use model_soup::soup::{self, Layout, Plan, PlanOptions, Record, RunOptions};
use safetensors::Dtype as D;

#[test]
fn an_interrupt_while_verifying_stops_the_read_back_and_keeps_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(12);
    let paths = ["a", "b"].map(|n| dir.path().join(format!("{n}.safetensors")));
    for p in &paths {
        write(
            p,
            &[
                spec("w", D::F32, &[300, 500], floats(&mut rng, D::F32, 150_000)),
                spec("b", D::BF16, &[7], floats(&mut rng, D::BF16, 7)),
            ],
        );
    }
    let cks = paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect();
    let plan = Plan::new(cks, vec![0.5, 0.5], &PlanOptions::default()).unwrap();
    let out = dir.path().join("soup.safetensors");
    let record = Record::new();
    let observe = |t: usize, start: usize, bytes: &[u8]| record.observe(t, start, bytes);
    let options = RunOptions {
        observe: Some(&observe),
        ..RunOptions::default()
    };
    soup::write(&plan, &destination(&out, false), options).unwrap();
    let written = std::fs::read(&out).unwrap();
    let layout = Layout::single(&plan, "soup.safetensors");

    // As if Ctrl-C came once the output was in place, as --verify starts reading it back.
    soup::interrupt();
    let err = record
        .check(&plan, &layout, &out)
        .expect_err("a read-back after Ctrl-C");
    let err = anyhow::Error::new(err);
    // Exit status 130, and `"kind": "interrupted"` in --json.
    assert!(model_soup::cli::interrupted(&err), "{err:#}");
    assert_eq!(model_soup::cli::error_kind(&err), "interrupted", "{err:#}");
    let text = format!("{err:#}");
    assert!(
        text.starts_with("interrupted while verifying")
            && text.contains(out.to_str().unwrap())
            && text.contains("complete but not verified"),
        "{text}"
    );
    // The output was complete before the read-back began: it stays, unchanged.
    assert_eq!(std::fs::read(&out).unwrap(), written);
}

//! A greedy search scored through a real Slurm cluster (single node, started by .ci/slurm.sh):
//! the scorer is `srun ...`, or `sbatch --wait ...`, with `--jobs 2`, and the soup is the one
//! known in advance.
//!
//! `.ci/run` starts the cluster and exports SLURM_CONF. Without SLURM_CONF the test starts one
//! itself with .ci/slurm.sh (and stops it after); when that can't be done here, the test is
//! skipped with a message, except under CI=true, where it fails.

mod scorer_support;

use std::path::PathBuf;
use std::process::Command;

use scorer_support::*;

/// A cluster this test started, stopped when dropped.
struct Started(PathBuf);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = Command::new(common::repo_root().join(".ci/slurm.sh"))
            .arg("stop")
            .env("SOUP_SLURM_DIR", &self.0)
            .status();
    }
}

/// The cluster's SLURM_CONF, and a guard if this test started it; `None` to skip.
fn cluster() -> Option<(PathBuf, Option<Started>)> {
    if let Some(conf) = std::env::var_os("SLURM_CONF") {
        return Some((conf.into(), None));
    }
    let dir = std::env::temp_dir().join(format!("model-soup-slurm-test-{}", std::process::id()));
    let out = Command::new(common::repo_root().join(".ci/slurm.sh"))
        .arg("start")
        .env("SOUP_SLURM_DIR", &dir)
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let conf = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Some((conf.into(), Some(Started(dir))))
        }
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but .ci/slurm.sh could not start Slurm: {why}");
            }
            eprintln!("skipping the Slurm test: .ci/slurm.sh could not start Slurm here ({why}); run it as root on Debian, or set SLURM_CONF to a cluster");
            None
        }
    }
}

fn check(report: &serde_json::Value) {
    let search = &report["greedy"]["search"];
    let ranking: Vec<usize> = serde_json::from_value(search["ranking"].clone()).unwrap();
    let chosen: Vec<usize> = serde_json::from_value(search["chosen"].clone()).unwrap();
    assert_eq!(ranking, RANKING);
    assert_eq!(chosen, CHOSEN);
    let kept: Vec<(usize, bool)> = search["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["candidate"].as_u64().unwrap() as usize,
                s["kept"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(kept, STEPS);
}

#[test]
fn a_greedy_search_scored_through_slurm_with_two_jobs() {
    let Some(python) = common::reference_python() else {
        return;
    };
    let Some((conf, _started)) = cluster() else {
        return;
    };
    let world = World::files();
    let work = world.folder("shared work");
    let record = world.dir.path().join("record");
    let scorer = format!("srun -N1 -n1 --quiet {}", world.scorer(&python, ""));
    let out = world.dir.path().join("greedy.safetensors");
    let (report, _) = run_json(
        soup_eval(
            &[
                "greedy",
                "--json",
                "-q",
                "--scorer",
                &scorer,
                "--jobs",
                "2",
                "--speculate",
                "2",
                "--scorer-timeout",
                "120",
                "--work-dir",
                work.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
            &world.ingredients,
        )
        .env("SLURM_CONF", &conf)
        .env("SCORER_RECORD", &record),
    );
    check(&report);
    assert!(left_in(&work).is_empty(), "{:?}", left_in(&work));
    // Every score came from a Slurm job step, two at a time at most.
    let lines = std::fs::read_to_string(&record).unwrap();
    let starts: Vec<&str> = lines.lines().filter(|l| l.contains(" start ")).collect();
    assert!(starts.len() >= 9, "{lines}");
    for l in &starts {
        let job = l.split(' ').nth(5).unwrap();
        assert!(job.parse::<u64>().is_ok(), "not run by Slurm: {l}");
    }

    // The same search with sbatch --wait, whose output goes to a file.
    let logs = world.folder("logs");
    let sbatch = format!(
        "sbatch --wait --quiet -o {logs}/{{name}}.out --wrap \"{}\" && tail -n 1 {logs}/{{name}}.out",
        world.scorer(&python, ""),
        logs = quote(&logs)
    );
    let (report, _) = run_json(
        soup_eval(
            &[
                "greedy",
                "--json",
                "-q",
                "--shell",
                "--scorer",
                &sbatch,
                "--jobs",
                "2",
                "--scorer-timeout",
                "120",
                "--work-dir",
                work.to_str().unwrap(),
            ],
            &world.ingredients,
        )
        .env("SLURM_CONF", &conf),
    );
    check(&report);
    assert!(left_in(&work).is_empty());
}

/// The README's `sbatch` wrapper (the code block that starts `# sbatch_wait.sh`), its log
/// folder and batch script replaced by the test's.
fn readme_sbatch_wrapper(logs: &std::path::Path, batch: &std::path::Path) -> String {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let start = readme
        .find("# sbatch_wait.sh")
        .expect("README.md has the sbatch_wait.sh example");
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end]
        .replace("/shared/logs", logs.to_str().unwrap())
        .replace("score_lm_eval.sbatch", &quote(batch))
        // Polled every second, not every ten, to keep the tests short.
        .replace("sleep 10 ", "sleep 1 ")
}

/// The README's `sbatch` wrapper scores only a job that completed. It took the last line of
/// the job's log whatever happened: a job that printed a number and then failed was scored
/// with it, and a `squeue` that failed once (a busy controller) ended the wait at once, so the
/// job ran on and the log an earlier run left under the same name was read as the score.
#[test]
fn the_readmes_sbatch_wrapper_scores_only_a_completed_job_and_rides_out_a_failed_squeue() {
    let Some((conf, _started)) = cluster() else {
        return;
    };
    let world = World::files();
    let logs = world.folder("logs");
    let batch = world.dir.path().join("score.sbatch");
    let wrapper = world.dir.path().join("sbatch_wait.sh");
    std::fs::write(&wrapper, readme_sbatch_wrapper(&logs, &batch)).unwrap();
    let scorer = format!("sh {} {{name}} {{checkpoint}}", quote(&wrapper));
    // A squeue that fails its first call, then is the real one.
    let real = Command::new("sh")
        .args(["-c", "command -v squeue"])
        .output()
        .unwrap();
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let busy = world.folder("busy-controller");
    let failed_once = busy.join("failed-once");
    std::fs::write(
        busy.join("squeue"),
        format!(
            "#!/bin/sh\nif [ ! -e {mark} ]; then : > {mark}; echo 'slurm_load_jobs error: Socket timed out on send/recv operation' >&2; exit 1; fi\nexec {} \"$@\"\n",
            quote(std::path::Path::new(&real)),
            mark = quote(&failed_once),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        busy.join("squeue"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        busy.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let score = |path: &str| {
        soup_eval(
            &[
                "score",
                "--json",
                "-q",
                "--scorer",
                &scorer,
                "--scorer-timeout",
                "60",
            ],
            &world.ingredients[..1],
        )
        .env("SLURM_CONF", &conf)
        .env("PATH", path)
        .output()
        .unwrap()
    };
    std::fs::write(&batch, "#!/bin/sh\necho 0.5\nexit 3\n").unwrap();
    let out = score(&std::env::var("PATH").unwrap_or_default());
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ended FAILED"), "{stderr}");
    // That job's log says 0.5; this one's will say 0.25, after a squeue that failed.
    std::fs::write(&batch, "#!/bin/sh\nsleep 3\necho 0.25\n").unwrap();
    let out = score(&path);
    let stderr = common::stderr(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(failed_once.exists(), "the failing squeue was not called");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ingredients"][0]["val"], 0.25, "{report}");
    no_job_left(&conf, &batch, "after a squeue that failed");
}

#[test]
fn the_readmes_sbatch_wrapper_keeps_odd_paths_whole_and_leaves_no_job_behind() {
    let Some(python) = common::reference_python() else {
        return;
    };
    let Some((conf, _started)) = cluster() else {
        return;
    };
    let world = World::files();
    // Ingredients whose folder has a `$1` and quotes: `--wrap "... {checkpoint}"` broke them.
    let odd = world.folder("ft$1 'x\"");
    let ingredients: Vec<PathBuf> = world
        .ingredients
        .iter()
        .map(|p| {
            let q = odd.join(p.file_name().unwrap());
            std::fs::copy(p, &q).unwrap();
            q
        })
        .collect();
    let logs = world.folder("logs");
    let batch = world.dir.path().join("score.sbatch");
    std::fs::write(
        &batch,
        format!(
            "#!/bin/sh\nexec {} {} \"$1\" {}\n",
            quote(&python),
            quote(&common::repo_root().join("eval/tests/scorers/distance.py")),
            quote(&world.target)
        ),
    )
    .unwrap();
    let wrapper = world.dir.path().join("sbatch_wait.sh");
    std::fs::write(&wrapper, readme_sbatch_wrapper(&logs, &batch)).unwrap();
    let scorer = format!("sh {} {{name}} {{checkpoint}}", quote(&wrapper));
    let work = world.folder("work");
    let (report, _) = run_json(
        soup_eval(
            &[
                "greedy",
                "--json",
                "-q",
                "--shell",
                "--scorer",
                &scorer,
                "--jobs",
                "2",
                "--scorer-timeout",
                "120",
                "--work-dir",
                work.to_str().unwrap(),
            ],
            &ingredients,
        )
        .env("SLURM_CONF", &conf),
    );
    check(&report);

    // A job that outlives --scorer-timeout is cancelled by the wrapper's trap.
    std::fs::write(&batch, "#!/bin/sh\nsleep 300\n").unwrap();
    let out = soup_eval(
        &[
            "score",
            "-q",
            "--shell",
            "--scorer",
            &scorer,
            "--scorer-timeout",
            "4",
        ],
        &ingredients[..1],
    )
    .env("SLURM_CONF", &conf)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("--scorer-timeout 4 s"));
    no_job_left(&conf, &batch, "after --scorer-timeout");

    // A stop can land at any moment, also while sbatch is submitting: CI once stopped it
    // there, before the trap that knew the job's number was set, and the job ran on. A busy
    // controller is played by an sbatch that answers a second after Slurm took the job.
    let real_sbatch = Command::new("sh")
        .args(["-c", "command -v sbatch"])
        .output()
        .unwrap();
    let real_sbatch = String::from_utf8_lossy(&real_sbatch.stdout)
        .trim()
        .to_string();
    let slow = world.folder("slow-controller");
    std::fs::write(
        slow.join("sbatch"),
        format!(
            "#!/bin/sh\nout=$({} \"$@\") || exit\nsleep 1\necho \"$out\"\n",
            quote(std::path::Path::new(&real_sbatch))
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        slow.join("sbatch"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        slow.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Stopped as soup-eval stops it: SIGTERM to its process group, SIGKILL 5 s later.
    for after_ms in [0, 10, 40, 160, 320, 640, 1280] {
        let mut wrapper_run = Command::new("sh");
        wrapper_run
            .arg(&wrapper)
            .arg(format!("stopped-after-{after_ms}-ms"))
            .arg(&ingredients[0])
            .env("SLURM_CONF", &conf)
            .env("PATH", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut wrapper_run, 0);
        let mut child = wrapper_run.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        let group = format!("-{}", child.id());
        Command::new("kill")
            .args(["-TERM", "--", &group])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = child.wait();
        no_job_left(
            &conf,
            &batch,
            &format!("stopped {after_ms} ms after it started"),
        );
    }
}

/// Fails if a job of `batch` is still queued or running 30 s after `when`, and cancels it.
fn no_job_left(conf: &std::path::Path, batch: &std::path::Path, when: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let queue = Command::new("squeue")
            .args(["-h", "-o", "%i %T %o"])
            .env("SLURM_CONF", conf)
            .output()
            .unwrap();
        let left: Vec<String> = String::from_utf8_lossy(&queue.stdout)
            .lines()
            .filter(|line| line.contains(batch.to_str().unwrap()))
            .map(str::to_string)
            .collect();
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            for job in &left {
                let id = job.split(' ').next().unwrap();
                let _ = Command::new("scancel")
                    .arg(id)
                    .env("SLURM_CONF", conf)
                    .status();
            }
            panic!("the batch job outlived its wrapper, {when}: {left:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

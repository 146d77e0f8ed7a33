//! `--log` and `--resume`: a search killed with SIGKILL mid-way and resumed ends with the same
//! soup as an uninterrupted one and scores nothing twice; a log cut mid-line resumes; a log of
//! another scorer or of changed ingredients is refused.

mod scorer_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use scorer_support::*;

fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_search_killed_mid_way_resumes_to_the_same_soup_without_rescoring() {
    let Some(python) = common::reference_python() else {
        return;
    };
    let world = World::files();
    let scorer = world.scorer(&python, "");
    let full = world.dir.path().join("full.safetensors");
    let (uninterrupted, _) = run_json(&mut soup_eval(
        &[
            "greedy",
            "--json",
            "-q",
            "--scorer",
            &scorer,
            "-o",
            full.to_str().unwrap(),
        ],
        &world.ingredients,
    ));

    let log = world.dir.path().join("search.jsonl");
    let out = world.dir.path().join("resumed.safetensors");
    let work = world.folder("work");
    let record = world.dir.path().join("record");
    let args = |flag: &'static str| {
        vec![
            "greedy".to_string(),
            "--json".into(),
            "-q".into(),
            "--scorer".into(),
            scorer.clone(),
            "--jobs".into(),
            "2".into(),
            "--work-dir".into(),
            work.display().to_string(),
            flag.into(),
            log.display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ]
    };
    let first: Vec<String> = args("--log");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let mut child = soup_eval(&first, &world.ingredients)
        .env("SCORER_SLEEP", "0.4")
        .env("SCORER_RECORD", &record)
        .env("SCORER_TAG", "first")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the ingredients and the first soup are logged (header + 6 entries).
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_lines(&log).len() < 7 {
        assert!(
            Instant::now() < deadline,
            "the search never logged 6 candidates"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists());
    // Scorers of the killed run may still be finishing; they are not ours to wait for, but
    // let them end before reading what was logged.
    std::thread::sleep(Duration::from_millis(1500));
    let logged: Vec<String> = log_lines(&log)[1..]
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert!(logged.len() >= 6 && logged.len() < 9, "{logged:?}");

    let second: Vec<String> = args("--resume");
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let (resumed, _) = run_json(
        soup_eval(&second, &world.ingredients)
            .env("SCORER_RECORD", &record)
            .env("SCORER_TAG", "second"),
    );
    assert_eq!(search_outcome(&resumed), search_outcome(&uninterrupted));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&full).unwrap());
    // Nothing logged was scored again, and everything else was scored once.
    let rescored: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("second ") && l.contains(" start "))
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    for name in &rescored {
        assert!(!logged.contains(name), "{name} was scored again");
    }
    assert_eq!(
        resumed["scorer"]["resumed"].as_u64().unwrap() as usize,
        logged.len()
    );
    assert_eq!(rescored.len() + logged.len(), 9, "{rescored:?} {logged:?}");
    // The log now holds all nine, each with what the issue asks for.
    let entries = log_lines(&log);
    assert_eq!(entries[0]["format"], "soup-eval-search-log");
    assert_eq!(entries.len(), 10);
    for e in &entries[1..] {
        assert_eq!(e["exit_status"], 0);
        assert_eq!(e["sha256"].as_str().unwrap().len(), 64);
        let k = e["members"].as_array().unwrap().len();
        assert_eq!(e["weights"].as_array().unwrap().len(), k);
        assert!(e["seconds"].as_f64().unwrap() > 0.0 && e["score"].is_f64());
    }
    // The final soup's entry has the sha256 of the -o file, byte-identical to what was scored.
    let final_entry = entries
        .iter()
        .find(|e| e["name"] == "soup-1-4-0")
        .expect("the final soup was logged");
    let digest = std::process::Command::new(&python)
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        final_entry["sha256"].as_str().unwrap(),
        String::from_utf8_lossy(&digest.stdout).trim()
    );
    assert!(left_in(&work).is_empty(), "{:?}", left_in(&work));
}

#[test]
fn a_log_cut_mid_line_resumes_and_other_searches_logs_are_refused() {
    let world = World::files();
    // A scorer that needs no Python: the score is the ingredient's position in the name.
    let scorer = "sh -c 'test -e \"$1\" && echo ${{#2}}' scorer {checkpoint} {name}";
    let log = world.dir.path().join("log.jsonl");
    let run = |args: &[&str]| {
        let mut all = vec!["greedy", "--json", "-q", "--scorer", scorer];
        all.extend_from_slice(args);
        soup_eval(&all, &world.ingredients).output().unwrap()
    };
    let out = run(&["--log", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let complete = std::fs::read(&log).unwrap();
    // A crash mid-append leaves half a line.
    let mut cut = complete.clone();
    cut.extend_from_slice(b"{\"name\": \"soup-0-1\", \"mem");
    std::fs::write(&log, &cut).unwrap();
    let out = run(&["--resume", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["scorer"]["scored"], 0,
        "everything came from the log"
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        complete,
        "the half line is cut off"
    );

    // Candidates a killed run logged but had not yet removed are removed by --resume (here
    // left on purpose with --keep-candidates), and only those.
    let work = world.folder("work");
    std::fs::write(work.join("notes.txt"), "mine").unwrap();
    let kept_log = world.dir.path().join("kept.jsonl");
    let w = work.to_str().unwrap();
    let out = run(&[
        "--log",
        kept_log.to_str().unwrap(),
        "--work-dir",
        w,
        "--keep-candidates",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(left_in(&work).len(), 5, "{:?}", left_in(&work));
    let out = run(&["--resume", kept_log.to_str().unwrap(), "--work-dir", w]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(left_in(&work), ["notes.txt"]);

    // Starting a new log over an old one is refused, and names --resume.
    let out = run(&["--log", log.to_str().unwrap()]);
    assert!(
        common::stderr(&out).contains("pass --resume"),
        "{}",
        common::stderr(&out)
    );
    assert_eq!(out.status.code(), Some(1));
    // Another scorer, direction or set of ingredients: refused, saying which.
    let other = soup_eval(
        &[
            "greedy",
            "-q",
            "--scorer",
            "sh -c 'echo 2' scorer {checkpoint}",
            "--resume",
            log.to_str().unwrap(),
        ],
        &world.ingredients,
    )
    .output()
    .unwrap();
    assert!(common::stderr(&other).contains("was logged with --scorer"));
    let out = run(&["--minimize", "--resume", log.to_str().unwrap()]);
    assert!(
        common::stderr(&out).contains("--minimize"),
        "{}",
        common::stderr(&out)
    );
    common::write(
        &world.ingredients[2],
        &[
            common::spec("a.weight", safetensors::Dtype::F32, &[2], vec![0; 8]),
            common::spec("b.bias", safetensors::Dtype::F32, &[1], vec![0; 4]),
            common::spec(
                "steps",
                safetensors::Dtype::I64,
                &[1],
                7i64.to_le_bytes().to_vec(),
            ),
        ],
    );
    let out = run(&["--resume", log.to_str().unwrap()]);
    let stderr = common::stderr(&out);
    assert!(
        stderr.contains("ingredient 3") && stderr.contains("sha256"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1));
    // Garbage is not a log.
    std::fs::write(&log, "hello\n").unwrap();
    let out = run(&["--resume", log.to_str().unwrap()]);
    assert!(common::stderr(&out).contains("not a soup-eval search log"));
}

/// The run of `command` on `ingredients` with a scorer that ties everything, and `args`.
fn tied(command: &str, ingredients: &[std::path::PathBuf], args: &[&str]) -> std::process::Output {
    let scorer = table_scorer(&[], "0.5");
    let mut all = vec![command, "-q", "--shell", "--scorer", &scorer];
    all.extend_from_slice(args);
    soup_eval(&all, ingredients).output().unwrap()
}

#[test]
fn resume_never_removes_a_users_file_or_folder_at_a_candidates_name() {
    for world in [World::files(), World::dirs()] {
        let ingredients = three(&world);
        let log = world.dir.path().join("log.jsonl");
        let out = tied("greedy", &ingredients, &["--log", log.to_str().unwrap()]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        // The search resumed in a shared folder (--work-dir may change), where a user's own
        // file and folder have candidates' names.
        let shared = world.folder("shared");
        let mine = |name: &str| {
            if world.ingredients[0].is_dir() {
                let d = shared.join(name);
                std::fs::create_dir(&d).unwrap();
                std::fs::write(d.join("thesis.tex"), "my thesis").unwrap();
                d.join("thesis.tex")
            } else {
                let f = shared.join(format!("{name}.safetensors"));
                std::fs::write(&f, "my notes, not a soup").unwrap();
                f
            }
        };
        let theirs = [mine("soup-0-1"), mine("soup-0-2")];
        let out = tied(
            "greedy",
            &ingredients,
            &[
                "--resume",
                log.to_str().unwrap(),
                "--work-dir",
                shared.to_str().unwrap(),
            ],
        );
        let stderr = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(
            errors[0].contains("soup-0-1") && errors[0].contains("not a soup this tool wrote"),
            "{stderr}"
        );
        for f in &theirs {
            assert!(f.exists(), "{} was removed", f.display());
        }
    }
}

/// An input that sits in `--work-dir` under a candidate's name (a soup kept with
/// `--keep-candidates` and fed back in) carries the tool's mark, so `--resume`'s removal of the
/// logged candidates took it for a leftover and deleted it. It is refused before anything runs.
#[test]
fn resume_never_removes_an_input_at_a_candidates_name() {
    for world in [World::files(), World::dirs()] {
        let shared = world.folder("shared");
        let kept = if world.ingredients[0].is_dir() {
            shared.join("soup-0-1")
        } else {
            shared.join("soup-0-1.safetensors")
        };
        let made = common::soup_merge()
            .args([&world.ingredients[3], &world.ingredients[4]])
            .arg("-o")
            .arg(&kept)
            .arg("-q")
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", common::stderr(&made));
        let ingredients = vec![
            world.ingredients[0].clone(),
            world.ingredients[1].clone(),
            kept.clone(),
        ];
        let log = world.dir.path().join("log.jsonl");
        let out = tied("greedy", &ingredients, &["--log", log.to_str().unwrap()]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        assert!(
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("\"soup-0-1\""),
            "the first run logged soup-0-1"
        );
        let before = std::fs::read(if kept.is_dir() {
            kept.join("model.safetensors")
        } else {
            kept.clone()
        })
        .unwrap();
        let fresh = world.dir.path().join("fresh.jsonl");
        for flags in [
            vec!["--resume", log.to_str().unwrap()],
            vec!["--log", fresh.to_str().unwrap()],
        ] {
            let mut args = flags.clone();
            args.extend(["--work-dir", shared.to_str().unwrap()]);
            let out = tied("greedy", &ingredients, &args);
            let stderr = common::stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
            let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(errors.len(), 1, "{stderr}");
            assert!(
                errors[0].contains("soup-0-1") && errors[0].contains("input"),
                "{stderr}"
            );
            let now = std::fs::read(if kept.is_dir() {
                kept.join("model.safetensors")
            } else {
                kept.clone()
            });
            assert_eq!(
                now.ok(),
                Some(before.clone()),
                "{flags:?}: the input was removed"
            );
        }
        assert!(!fresh.exists(), "a refused run starts no log");
    }
}

#[test]
fn a_failed_candidate_is_logged_with_its_exit_status_and_time() {
    let world = World::files();
    let log = world.dir.path().join("log.jsonl");
    let scorer = "sleep 0.5; echo 'CUDA out of memory' >&2; exit 3; echo {checkpoint}";
    let out = soup_eval(
        &[
            "score",
            "-q",
            "--shell",
            "--scorer",
            scorer,
            "--log",
            log.to_str().unwrap(),
        ],
        &world.ingredients[..1],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    let entries = log_lines(&log);
    let failed = entries.last().unwrap();
    assert_eq!(failed["score"], serde_json::Value::Null);
    assert_eq!(failed["exit_status"], 3, "{failed}");
    assert!(failed["seconds"].as_f64().unwrap() >= 0.5, "{failed}");
    assert!(failed["error"]
        .as_str()
        .unwrap()
        .contains("CUDA out of memory"));
    // Killed at the timeout: no exit status, and the time it ran.
    let log = world.dir.path().join("timeout.jsonl");
    let scorer = "sleep 30; echo {checkpoint}";
    let out = soup_eval(
        &[
            "score",
            "-q",
            "--shell",
            "--scorer",
            scorer,
            "--scorer-timeout",
            "0.5",
            "--log",
            log.to_str().unwrap(),
        ],
        &world.ingredients[..1],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    let failed = log_lines(&log).pop().unwrap();
    assert_eq!(failed["exit_status"], serde_json::Value::Null, "{failed}");
    assert!(failed["seconds"].as_f64().unwrap() >= 0.5, "{failed}");
}

#[test]
fn a_log_with_a_damaged_sha256_is_refused_not_a_panic() {
    let world = World::files();
    let log = world.dir.path().join("log.jsonl");
    let out = tied("greedy", &three(&world), &["--log", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    for (i, damaged) in ["€".repeat(22), "abc".into(), "Z".repeat(64)]
        .iter()
        .enumerate()
    {
        first["ingredients"][i]["sha256"] = serde_json::json!(damaged);
        lines[0] = first.to_string();
        std::fs::write(&log, lines.join("\n") + "\n").unwrap();
        let out = tied(
            "greedy",
            &three(&world),
            &["--resume", log.to_str().unwrap()],
        );
        let stderr = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains("log.jsonl")
                && stderr.contains(&format!("ingredient {}'s sha256", i + 1))
                && stderr.contains("damaged"),
            "{stderr}"
        );
        first["ingredients"][i]["sha256"] = serde_json::json!("0".repeat(64));
    }
}

#[test]
fn a_logged_search_without_a_work_dir_says_where_its_candidates_go() {
    let world = World::files();
    let tmp = world.folder("tmp");
    let log = world.dir.path().join("log.jsonl");
    let scorer = table_scorer(&[], "0.5");
    let out = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            &scorer,
            "--log",
            log.to_str().unwrap(),
        ],
        &three(&world),
    )
    .env("TMPDIR", &tmp)
    .output()
    .unwrap();
    let stderr = common::stderr(&out);
    assert!(out.status.success(), "{stderr}");
    let note = stderr
        .lines()
        .find(|l| l.contains("candidates go to"))
        .unwrap_or_else(|| panic!("no note of the folder: {stderr}"));
    assert!(
        note.contains(tmp.to_str().unwrap()) && note.contains("--work-dir"),
        "{note}"
    );
}

/// A run killed with SIGKILL leaves the candidates it was scoring in `--work-dir`, unlogged.
/// `--resume` removed only the logged ones and left the others to be rewritten, but a search
/// resumed with another `--speculate` never reaches the speculative ones, and they stayed
/// after its success. Now they go once the resumed search is done; a user's files stay.
#[test]
fn a_resumed_search_removes_the_killed_runs_unlogged_candidates() {
    let world = World::files();
    let ingredients = three(&world);
    // Ranking 0, 1, 2; {0,1} is kept, {0,1,2} is not; a speculative run also tries {0,2}.
    let scorer = table_scorer(
        &[
            ("ingredient-0", "0.9"),
            ("ingredient-1", "0.5"),
            ("ingredient-2", "0.4"),
            ("soup-0-1", "0.95"),
        ],
        "0.1",
    );
    let search = |args: &[&str]| {
        let mut all = vec!["greedy", "-q", "--shell", "--scorer", &scorer];
        all.extend_from_slice(args);
        let out = soup_eval(&all, &ingredients).output().unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
    };
    // The candidates a speculative run writes, each carrying the tool's mark.
    let kept = world.folder("kept");
    let kept_arg = kept.to_str().unwrap();
    search(&[
        "--jobs",
        "2",
        "--speculate",
        "2",
        "--keep-candidates",
        "--work-dir",
        kept_arg,
    ]);
    assert!(kept.join("soup-0-2.safetensors").is_file());
    let work = world.folder("work");
    let work_arg = work.to_str().unwrap();
    let log = world.dir.path().join("search.jsonl");
    let log_arg = log.to_str().unwrap();
    search(&["--work-dir", work_arg, "--log", log_arg]);
    // What a speculative run killed while scoring {0,2} leaves: that candidate, unlogged,
    // beside a user's files.
    std::fs::copy(
        kept.join("soup-0-2.safetensors"),
        work.join("soup-0-2.safetensors"),
    )
    .unwrap();
    std::fs::write(work.join("soup-1-2.safetensors"), "my notes, not a soup").unwrap();
    std::fs::write(work.join("notes.txt"), "mine").unwrap();
    search(&["--work-dir", work_arg, "--resume", log_arg]);
    let mut left = left_in(&work);
    left.sort();
    assert_eq!(left, ["notes.txt", "soup-1-2.safetensors"]);
    assert_eq!(
        std::fs::read_to_string(work.join("soup-1-2.safetensors")).unwrap(),
        "my notes, not a soup"
    );
}

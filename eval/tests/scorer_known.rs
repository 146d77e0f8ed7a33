//! `soup-eval --scorer` against a scorer whose answer is known in advance (minus the distance
//! to a hidden target, computed in float64 by numpy on files read by the official safetensors
//! package): the ranking, every acceptance and rejection, the final soup and its bytes, the
//! --minimize direction, --scorer-json, model directories, and --jobs/--speculate giving
//! exactly the sequential search.

mod scorer_support;

use scorer_support::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

fn check_known_answer(report: &serde_json::Value, sign: f64) {
    let search = &report["greedy"]["search"];
    let ranking: Vec<usize> = serde_json::from_value(search["ranking"].clone()).unwrap();
    assert_eq!(ranking, RANKING);
    let chosen: Vec<usize> = serde_json::from_value(search["chosen"].clone()).unwrap();
    assert_eq!(chosen, CHOSEN);
    for (i, row) in report["ingredients"].as_array().unwrap().iter().enumerate() {
        // Exact: quarter values in f32, their squares and sums are exact in float64.
        assert_eq!(
            row["val"].as_f64().unwrap(),
            sign * expected_score(&[i]),
            "{row}"
        );
        assert!(row["test"].is_null());
    }
    let steps = search["steps"].as_array().unwrap();
    assert_eq!(steps.len(), STEPS.len());
    let mut soup = vec![CHOSEN[0]];
    for (step, &(candidate, kept)) in steps.iter().zip(&STEPS) {
        assert_eq!(step["candidate"], candidate);
        assert_eq!(step["kept"], kept, "{step}");
        let mut members = soup.clone();
        members.push(candidate);
        let got = step["trial"]["val"].as_f64().unwrap();
        assert!(close(got, sign * expected_score(&members)), "{step}");
        if kept {
            soup = members;
        }
    }
    assert_eq!(soup, CHOSEN);
    let val = report["greedy"]["row"]["val"].as_f64().unwrap();
    assert!(close(val, sign * expected_score(&CHOSEN)) && close(val.abs(), 1.5));
}

#[test]
fn the_greedy_soup_of_a_known_scorer_is_the_designed_one() {
    let Some(python) = common::reference_python() else {
        return;
    };
    let world = World::files();
    let work = world.folder("work dir");
    let out = world.dir.path().join("greedy soup.safetensors");
    let (report, output) = run_json(
        soup_eval(
            &[
                "greedy",
                "--json",
                "--scorer",
                &world.scorer(&python, ""),
                "--work-dir",
                work.to_str().unwrap(),
                "--keep-candidates",
                "-o",
                out.to_str().unwrap(),
            ],
            &world.ingredients,
        )
        .env("SCORER_RECORD", world.dir.path().join("record")),
    );
    check_known_answer(&report, 1.0);
    assert_eq!(report["arch"], "scorer");
    // The command ran the models: soup-eval has no device or dtype to record.
    assert!(report["device"].is_null() && report["eval_dtype"].is_null());
    assert_eq!(report["greedy"]["goal"], "maximize");
    // Five ingredients and four candidate soups, each scored once.
    assert_eq!(report["scorer"]["scored"], 9);
    let record = std::fs::read_to_string(world.dir.path().join("record")).unwrap();
    assert_eq!(record.lines().filter(|l| l.contains(" start ")).count(), 9);
    // Ingredients are scored as they are; the soups were written to the work folder (kept
    // here), and the -o file is byte for byte the candidate that was scored.
    let mut kept = left_in(&work);
    kept.sort();
    assert_eq!(
        kept,
        [
            "soup-1-4-0-2.safetensors",
            "soup-1-4-0.safetensors",
            "soup-1-4-3.safetensors",
            "soup-1-4.safetensors"
        ]
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(work.join("soup-1-4-0.safetensors")).unwrap()
    );
    // And it is what soup-merge makes of the chosen ingredients, in join order.
    let merged = world.dir.path().join("merged.safetensors");
    let chosen: Vec<&std::path::PathBuf> = CHOSEN.iter().map(|&i| &world.ingredients[i]).collect();
    let status = common::soup_merge()
        .args(&chosen)
        .arg("-o")
        .arg(&merged)
        .arg("-q")
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        common::read(&merged),
        common::read(&out),
        "same tensors as soup-merge"
    );
    // The table: the scorer's number, no test columns.
    let table = soup_eval(
        &["greedy", "-q", "--scorer", &world.scorer(&python, "")],
        &world.ingredients,
    )
    .output()
    .unwrap();
    assert!(table.status.success(), "{}", common::stderr(&table));
    let text = common::stdout(&table);
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("val score") && !header.contains("test"),
        "{text}"
    );
    assert!(
        text.contains("ft-a.safetensors") && text.contains("-4.875"),
        "{text}"
    );
    assert!(
        text.contains("greedy soup: ft-a.safetensors + ft-b.safetensors + ft-d.safetensors"),
        "{text}"
    );
    assert!(text.contains("scorer: 9 runs"), "{text}");
    let _ = output;
}

#[test]
fn minimize_with_a_loss_gives_the_same_soup_and_maximize_the_opposite_ranking() {
    let Some(python) = common::reference_python() else {
        return;
    };
    let world = World::files();
    let (report, _) = run_json(&mut soup_eval(
        &[
            "greedy",
            "--json",
            "-q",
            "--minimize",
            "--scorer",
            &world.scorer(&python, "--positive"),
        ],
        &world.ingredients,
    ));
    check_known_answer(&report, -1.0);
    assert_eq!(report["greedy"]["goal"], "minimize");
    // The same distance maximized: the worst ingredient first.
    let (report, _) = run_json(&mut soup_eval(
        &[
            "greedy",
            "--json",
            "-q",
            "--scorer",
            &world.scorer(&python, "--positive"),
        ],
        &world.ingredients,
    ));
    let ranking: Vec<usize> =
        serde_json::from_value(report["greedy"]["search"]["ranking"].clone()).unwrap();
    let mut reversed = RANKING.to_vec();
    reversed.reverse();
    assert_eq!(ranking, reversed);
}

#[test]
fn scorer_json_reads_a_field_and_report_adds_the_uniform_soup_and_a_plot() {
    let Some(python) = common::reference_python() else {
        return;
    };
    let world = World::files();
    let plot = world.dir.path().join("plot.svg");
    let (report, _) = run_json(&mut soup_eval(
        &[
            "report",
            "--json",
            "-q",
            "--scorer",
            &world.scorer(&python, "--json"),
            "--scorer-json",
            "results.distance.score",
            "--plot",
            plot.to_str().unwrap(),
        ],
        &world.ingredients,
    ));
    check_known_answer(&report, 1.0);
    let uniform = report["uniform"]["val"].as_f64().unwrap();
    let all: Vec<usize> = (0..5).collect();
    assert!(close(uniform, expected_score(&all)));
    assert!(report["ensemble"].is_null());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<!-- written by model-soup -->\n<svg")
            && svg.contains("greedy soup")
            && svg.contains("ft-a")
    );
}

#[test]
fn model_directories_make_directory_candidates_and_output() {
    let Some(python) = common::reference_python() else {
        return;
    };
    let world = World::dirs();
    let work = world.folder("work");
    let out = world.dir.path().join("greedy");
    let (report, _) = run_json(&mut soup_eval(
        &[
            "greedy",
            "--json",
            "-q",
            "--scorer",
            &world.scorer(&python, ""),
            "--work-dir",
            work.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        &world.ingredients,
    ));
    check_known_answer(&report, 1.0);
    assert!(left_in(&work).is_empty(), "{:?}", left_in(&work));
    assert!(out.join("model.safetensors").is_file());
    // The first member's config (A) and a model card.
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"A\""), "{config}");
    assert!(out.join("README.md").is_file());
}

#[test]
fn jobs_and_speculation_give_exactly_the_sequential_search() {
    let Some(python) = common::reference_python() else {
        return;
    };
    let world = World::files();
    let run = |extra: &[&str], name: &str| {
        let out = world.dir.path().join(name);
        let mut args = vec!["greedy", "--json", "-q", "--scorer"];
        let scorer = world.scorer(&python, "");
        args.push(&scorer);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", out.to_str().unwrap()]);
        let record = world.dir.path().join(format!("{name}.record"));
        let (report, _) = run_json(
            soup_eval(&args, &world.ingredients)
                .env("SCORER_RECORD", &record)
                .env("SCORER_SLEEP", "0.2"),
        );
        (
            report,
            std::fs::read(&out).unwrap(),
            std::fs::read_to_string(&record).unwrap(),
        )
    };
    let (sequential, bytes, _) = run(&[], "seq.safetensors");
    check_known_answer(&sequential, 1.0);
    // One at a time, every run is one the search needs.
    let secs = |r: &serde_json::Value, k: &str| r["scorer"][k].as_f64().unwrap();
    assert!(
        (secs(&sequential, "scorer_seconds") - secs(&sequential, "sequential_seconds")).abs()
            < 1e-6
    );
    for (extra, name) in [
        (&["--jobs", "2"][..], "j2.safetensors"),
        (&["--speculate", "2"][..], "s2.safetensors"),
        (&["--jobs", "2", "--speculate", "2"][..], "j2s2.safetensors"),
        (&["--jobs", "3", "--speculate", "4"][..], "j3s4.safetensors"),
    ] {
        let (report, b, record) = run(extra, name);
        assert_eq!(
            search_outcome(&report),
            search_outcome(&sequential),
            "{extra:?}"
        );
        assert_eq!(b, bytes, "{extra:?}: the -o soup differs");
        // Slots: only 0..jobs, and one run per slot at a time.
        let jobs: usize = extra
            .iter()
            .position(|a| *a == "--jobs")
            .map_or(1, |i| extra[i + 1].parse().unwrap());
        let mut busy = vec![false; jobs];
        let mut events: Vec<(f64, usize, bool)> = record
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (
                    f[4].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3] == "start",
                )
            })
            .collect();
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut most = 0;
        for (_, slot, start) in events {
            assert!(slot < jobs, "{extra:?}: slot {slot}");
            assert_eq!(
                busy[slot], !start,
                "{extra:?}: slot {slot} ran two scorers at once"
            );
            busy[slot] = start;
            most = most.max(busy.iter().filter(|b| **b).count());
        }
        if jobs > 1 {
            assert!(most > 1, "{extra:?}: never ran two scorers at once");
        }
        let speculate = extra.contains(&"--speculate");
        if speculate && jobs > 1 {
            // Speculation scored soups that an acceptance then made moot; the speed-up counts
            // only the runs a one-at-a-time search makes too.
            assert!(report["greedy"]["search"]["discarded"].as_u64().unwrap() > 0);
            assert!(secs(&report, "sequential_seconds") < secs(&report, "scorer_seconds"));
        }
    }
}

/// Ranking 0 (0.9), 1 (0.5), 2 (0.4); the soup of 0 and 1 is kept; the soup of 0 and 2
/// fails, and only a speculative search tries it.
fn failing_after_a_kept_one() -> String {
    table_scorer(
        &[
            ("ingredient-0", "0.9"),
            ("ingredient-1", "0.5"),
            ("ingredient-2", "0.4"),
            ("soup-0-1", "0.95"),
            ("soup-0-2", "echo nan"),
        ],
        "0.3",
    )
}

#[test]
fn a_speculative_trial_failing_after_a_kept_one_doesnt_fail_the_search() {
    let world = World::files();
    let scorer = failing_after_a_kept_one();
    let mut outcomes = Vec::new();
    for extra in [&[][..], &["--jobs", "2", "--speculate", "2"][..]] {
        let out = world
            .dir
            .path()
            .join(format!("g{}.safetensors", extra.len()));
        let mut args = vec!["greedy", "--json", "-q", "--shell", "--scorer", &scorer];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", out.to_str().unwrap()]);
        let (report, output) = run_json(&mut soup_eval(&args, &three(&world)));
        assert_eq!(
            report["greedy"]["search"]["chosen"],
            serde_json::json!([0, 1])
        );
        outcomes.push((search_outcome(&report), std::fs::read(&out).unwrap()));
        if !extra.is_empty() {
            // The failure is said, not hidden: a warning on stderr and in the report.
            let stderr = common::stderr(&output);
            assert!(
                stderr.contains("soup-0-2") && stderr.contains("not a finite number"),
                "{stderr}"
            );
            assert!(report["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["kind"] == "speculative-trial-failed"));
        }
    }
    assert_eq!(outcomes[0], outcomes[1], "speculation changed the outcome");
    // A failure the sequential search meets too still fails a speculative one.
    let scorer = table_scorer(
        &[
            ("ingredient-0", "0.9"),
            ("ingredient-1", "0.5"),
            ("soup-0-1", "exit 4"),
        ],
        "0.3",
    );
    let out = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            &scorer,
            "--jobs",
            "2",
            "--speculate",
            "2",
        ],
        &three(&world),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("exited with status 4"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn minus_zero_and_zero_tie_in_command_line_order() {
    let world = World::files();
    for (flags, table) in [
        (
            &[][..],
            [
                ("ingredient-0", "-0.0"),
                ("ingredient-1", "0.0"),
                ("ingredient-2", "-1"),
            ],
        ),
        (
            &["--minimize"][..],
            [
                ("ingredient-0", "0.0"),
                ("ingredient-1", "-0.0"),
                ("ingredient-2", "1"),
            ],
        ),
    ] {
        let scorer = table_scorer(&table, "0.5");
        let mut args = vec!["greedy", "--json", "-q", "--shell", "--scorer", &scorer];
        args.extend_from_slice(flags);
        let (report, _) = run_json(&mut soup_eval(&args, &three(&world)));
        let search = &report["greedy"]["search"];
        assert_eq!(search["ranking"], serde_json::json!([0, 1, 2]), "{flags:?}");
        assert_eq!(search["chosen"][0], 0, "{flags:?}");
        // Read as one score: 0, never "-0".
        assert_eq!(
            report["ingredients"][0]["val"].as_f64().unwrap().to_bits(),
            0
        );
    }
}

#[test]
fn report_scores_the_uniform_soup_once_even_when_greedy_tries_the_same_soup() {
    let world = World::files();
    let record = world.dir.path().join("record");
    // Every ingredient ties, so the greedy candidates are in command-line order, and each is
    // kept (ties count with --accept-ties): the last is the uniform soup of all three. A
    // noisy scorer would give the one model two numbers.
    let scorer = format!(
        "echo {{name}} >> {}; test -e {{checkpoint}} && echo 0.5",
        quote(&record)
    );
    let (report, _) = run_json(&mut soup_eval(
        &[
            "report",
            "--json",
            "-q",
            "--accept-ties",
            "--shell",
            "--scorer",
            &scorer,
        ],
        &three(&world),
    ));
    let runs = std::fs::read_to_string(&record).unwrap();
    let uniform_runs = runs.lines().filter(|l| *l == "soup-0-1-2").count();
    assert_eq!(uniform_runs, 1, "{runs}");
    assert_eq!(
        report["greedy"]["search"]["chosen"],
        serde_json::json!([0, 1, 2])
    );
    assert_eq!(
        report["scorer"]["scored"], 5,
        "3 ingredients, soup-0-1, soup-0-1-2"
    );
}

#[test]
fn speculating_past_the_jobs_is_warned_about() {
    let world = World::files();
    let scorer = table_scorer(&[], "0.5");
    let out = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            &scorer,
            "--jobs",
            "1",
            "--speculate",
            "3",
        ],
        &three(&world),
    )
    .output()
    .unwrap();
    let stderr = common::stderr(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: --speculate 3 is more than --jobs 1"),
        "{stderr}"
    );
    let out = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            &scorer,
            "--jobs",
            "3",
            "--speculate",
            "3",
        ],
        &three(&world),
    )
    .output()
    .unwrap();
    assert!(
        !common::stderr(&out).contains("warning"),
        "{}",
        common::stderr(&out)
    );
}

/// `--speculate` as large as the flag takes: the batch's end once wrapped around, and the run
/// panicked after scoring every ingredient. It is the one-at-a-time search.
#[test]
fn a_speculation_as_large_as_the_flag_takes_is_the_one_at_a_time_search() {
    let world = World::files();
    let scorer = table_scorer(
        &[
            ("ingredient-0", "0.9"),
            ("ingredient-1", "0.5"),
            ("ingredient-2", "0.4"),
            ("soup-0-1", "0.95"),
            ("soup-0-1-2", "0.1"),
        ],
        "0.2",
    );
    let mut outcomes = Vec::new();
    for (jobs, speculate) in [("1", "1"), ("2", &usize::MAX.to_string()[..])] {
        let (report, out) = run_json(&mut soup_eval(
            &[
                "greedy",
                "--json",
                "-q",
                "--shell",
                "--scorer",
                &scorer,
                "--jobs",
                jobs,
                "--speculate",
                speculate,
            ],
            &three(&world),
        ));
        assert!(!common::stderr(&out).contains("panicked"));
        assert_eq!(
            report["greedy"]["search"]["chosen"],
            serde_json::json!([0, 1])
        );
        outcomes.push(search_outcome(&report));
    }
    assert_eq!(outcomes[0], outcomes[1]);
}

/// The warnings of a search run with `--jobs` and `--speculate` don't depend on which scorer
/// finished first. The merges' warnings were noted as candidates were written, so the NaN
/// warnings of three ingredients came in any order; and of two speculative trials failing
/// after a kept one, the later one's failure was warned about only when it failed before the
/// earlier one could stop it. Now: the merges' warnings in the one-at-a-time search's order,
/// and the first failure of a batch only.
#[test]
fn warnings_of_a_speculative_search_dont_depend_on_timing() {
    let dir = tempfile::tempdir().unwrap();
    let ingredients: Vec<std::path::PathBuf> = (0..5)
        .map(|i| {
            let mut w = [0.25f32 * i as f32; 4];
            if i >= 2 {
                w[i - 2] = f32::NAN;
            }
            let bytes = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            let p = dir.path().join(format!("nan{i}.safetensors"));
            common::write(
                &p,
                &[common::spec("w", safetensors::Dtype::F32, &[4], bytes)],
            );
            p
        })
        .collect();
    let table = |rest: &[(&'static str, &'static str)]| {
        let mut t = vec![
            ("ingredient-0", "0.9"),
            ("ingredient-1", "0.8"),
            ("ingredient-2", "0.7"),
            ("ingredient-3", "0.6"),
            ("ingredient-4", "0.5"),
            ("soup-0-1", "0.95"),
        ];
        t.extend_from_slice(rest);
        table_scorer(&t, "0.1")
    };
    let warnings = |scorer: &str, jobs: &str| {
        let args = [
            "greedy",
            "--json",
            "-q",
            "--shell",
            "--scorer",
            scorer,
            "--jobs",
            jobs,
            "--speculate",
            jobs,
        ];
        let (report, _) = run_json(&mut soup_eval(&args, &ingredients));
        assert_eq!(
            report["greedy"]["search"]["chosen"],
            serde_json::json!([0, 1])
        );
        report["warnings"].clone()
    };
    let scorer = table(&[]);
    let sequential = warnings(&scorer, "1");
    let named: Vec<bool> = (2..5)
        .map(|i| {
            sequential[i - 2]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("nan{i}."))
        })
        .collect();
    assert_eq!(named, [true; 3], "{sequential}");
    for _ in 0..5 {
        assert_eq!(warnings(&scorer, "4"), sequential);
    }
    // {0,2} fails slowly, {0,3} at once, both after the kept {0,1}: {0,2}'s failure is the
    // one said, whichever ended first.
    let scorer = table(&[("soup-0-2", "sleep 1; exit 3"), ("soup-0-3", "exit 4")]);
    let failed: Vec<String> = warnings(&scorer, "4")
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "speculative-trial-failed")
        .map(|w| w["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].contains("soup-0-2") && failed[0].contains("status 3"),
        "{failed:?}"
    );
}

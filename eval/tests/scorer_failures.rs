//! `soup-eval --scorer` when the scorer misbehaves, and when the user does: a scorer that fails,
//! hangs (and ignores SIGTERM), prints garbage or NaN, is flaky (`--retries`), or is stopped by
//! Ctrl-C. Each failure is one `error:` line with the command, the exit status and the end of
//! its stderr; no candidate is left in the work folder and no scorer process survives.

mod scorer_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use std::time::{Duration, Instant};

use scorer_support::*;

/// A `--shell` scorer that prints 1 for ingredients and runs `soup` for soups.
fn on_soups(soup: &str) -> String {
    format!("test -e {{checkpoint}} || exit 9; case {{name}} in soup-*) {soup};; esac; echo 1")
}

fn run(world: &World, work: &Path, args: &[&str]) -> Output {
    let mut all = vec!["greedy", "-q", "--work-dir", work.to_str().unwrap()];
    all.extend_from_slice(args);
    soup_eval(&all, &world.ingredients)
        .arg("-o")
        .arg(world.dir.path().join("out.safetensors"))
        .output()
        .unwrap()
}

/// Exit status 1 (2 for a usage error), one `error:` line holding every `needle`, nothing
/// left behind.
fn assert_fails(world: &World, work: &Path, out: &Output, needles: &[&str]) {
    let stderr = common::stderr(out);
    assert!(matches!(out.status.code(), Some(1 | 2)), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{needle:?} not in {}",
            errors[0]
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(left_in(work).is_empty(), "left behind: {:?}", left_in(work));
    assert!(!world.dir.path().join("out.safetensors").exists());
}

/// Whether process `pid` still runs (a zombie waiting for its parent does not).
fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        // The state follows the parenthesised command name.
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => false,
    }
}

#[test]
fn a_failing_scorer_is_an_error_with_its_command_status_and_stderr() {
    let world = World::files();
    let work = world.folder("work");
    let script = on_soups("echo 'loading model' >&2; echo 'CUDA out of memory' >&2; exit 3");
    let out = run(&world, &work, &["--shell", "--scorer", &script]);
    assert_fails(
        &world,
        &work,
        &out,
        &["exited with status 3", "CUDA out of memory", "sh -c"],
    );
}

#[test]
fn garbage_nan_and_silence_are_not_scores() {
    let world = World::files();
    let work = world.folder("work");
    for (print, needle) in [
        (
            "echo hello world",
            "\"hello world\" as its last line, which is not a number",
        ),
        ("echo nan", "not a finite number"),
        ("echo -inf", "not a finite number"),
        ("true", "printed nothing on stdout"),
    ] {
        let out = run(
            &world,
            &work,
            &[
                "--shell",
                "--scorer",
                &on_soups(&format!("{print}; exit 0")),
            ],
        );
        assert_fails(&world, &work, &out, &[needle]);
    }
    // The same for the ingredients themselves, which are scored as they are.
    let out = run(
        &world,
        &work,
        &["--shell", "--scorer", "echo {checkpoint} NaN"],
    );
    assert_fails(&world, &work, &out, &["which is not a number"]);
}

#[test]
fn a_hanging_scorer_is_stopped_with_its_process_group_at_the_timeout() {
    let world = World::files();
    let work = world.folder("work");
    let pids = world.folder("pids");
    // The scorer starts a grandchild in the background: the whole group must go.
    let script = on_soups(&format!(
        "sleep 300 & echo $! > {}/child; echo $$ > {}/shell; wait",
        pids.display(),
        pids.display()
    ));
    let started = Instant::now();
    let out = run(
        &world,
        &work,
        &["--shell", "--scorer", &script, "--scorer-timeout", "1"],
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_fails(&world, &work, &out, &["longer than --scorer-timeout 1 s"]);
    for who in ["child", "shell"] {
        let pid = std::fs::read_to_string(pids.join(who)).unwrap();
        assert!(!alive(&pid), "the scorer's {who} ({pid}) survived");
    }
}

#[test]
fn a_scorer_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let world = World::files();
    let work = world.folder("work");
    let pids = world.folder("pids");
    let script = on_soups(&format!(
        "trap '' TERM; echo $$ > {}/shell; sleep 300",
        pids.display()
    ));
    let started = Instant::now();
    let out = run(
        &world,
        &work,
        &["--shell", "--scorer", &script, "--scorer-timeout", "0.5"],
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(30),
        "{took:?}"
    );
    assert_fails(&world, &work, &out, &["longer than --scorer-timeout"]);
    let pid = std::fs::read_to_string(pids.join("shell")).unwrap();
    assert!(!alive(&pid));
}

#[test]
fn a_scorers_cleanup_gets_the_grace_period_after_its_shell_is_gone() {
    // `sh -c` runs the wrapper as a child and dies of the SIGTERM at once, while the wrapper's
    // trap is still cancelling its cluster job (the README's sbatch wrapper, run by --shell).
    // The grace belongs to the group: the trap finishes, then the run fails.
    let world = World::files();
    let work = world.folder("work");
    let marker = world.dir.path().join("cleaned-up");
    let script = on_soups(&format!(
        "sh -c 'trap \"sleep 1; echo done > {}; exit 143\" TERM; sleep 300 & wait'; :",
        marker.display()
    ));
    let started = Instant::now();
    let out = run(
        &world,
        &work,
        &["--shell", "--scorer", &script, "--scorer-timeout", "1"],
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_fails(&world, &work, &out, &["longer than --scorer-timeout 1 s"]);
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("done\n"),
        "the scorer's trap was killed before it finished"
    );
}

#[test]
fn retries_cover_a_flaky_scorer_and_only_as_many_times_as_asked() {
    let world = World::files();
    let flaky = world.folder("flaky");
    // Fails the first two times it sees each candidate, then prints 1.
    let script = format!(
        "test -e {{checkpoint}} || exit 9; n=$(cat {d}/{{name}} 2>/dev/null || echo 0); echo $((n+1)) > {d}/{{name}}; if [ $n -lt 2 ]; then echo flaky >&2; exit 1; fi; echo 1",
        d = flaky.display()
    );
    let work = world.folder("work");
    let out = run(
        &world,
        &work,
        &["--shell", "--scorer", &script, "--retries", "1"],
    );
    assert_fails(&world, &work, &out, &["exited with status 1", "flaky"]);
    for f in left_in(&flaky) {
        std::fs::remove_file(flaky.join(f)).unwrap();
    }
    let (report, output) = run_json(
        soup_eval(
            &[
                "greedy",
                "--json",
                "--shell",
                "--scorer",
                &script,
                "--retries",
                "2",
                "--work-dir",
                work.to_str().unwrap(),
            ],
            &world.ingredients,
        )
        .stderr(Stdio::piped()),
    );
    // Every ingredient ties at 1, so every soup ties and is rejected: 5 + 4 candidates, each
    // failing twice first.
    assert_eq!(report["scorer"]["scored"], 9);
    assert_eq!(report["scorer"]["retried"], 18);
    assert_eq!(
        common::stderr(&output)
            .lines()
            .filter(|l| l.starts_with("warning:") && l.contains("retrying"))
            .count(),
        18
    );
    assert!(left_in(&work).is_empty());
}

#[test]
fn ctrl_c_stops_the_scorers_removes_the_candidates_and_exits_130() {
    let world = World::files();
    let work = world.folder("work");
    let pids = world.folder("pids");
    let script = on_soups(&format!("echo $$ > {}/$$; sleep 300", pids.display()));
    let child = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            &script,
            "--jobs",
            "2",
            "--speculate",
            "2",
            "--work-dir",
            work.to_str().unwrap(),
        ],
        &world.ingredients,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while left_in(&pids).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the soups' scorers never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(left_in(&work).len(), 2, "two candidates being scored");
    let stopped = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130), "{}", common::stderr(&out));
    assert!(left_in(&work).is_empty(), "{:?}", left_in(&work));
    for pid in left_in(&pids) {
        assert!(!alive(&pid), "scorer {pid} survived Ctrl-C");
    }
}

#[test]
fn careless_command_lines_are_refused_before_anything_runs() {
    let world = World::files();
    let work = world.folder("work");
    for (args, needle) in [
        (
            &["--scorer", "score.sh model.safetensors"][..],
            "no {checkpoint}",
        ),
        (
            &["--scorer", "score {ckpt}"][..],
            "unknown placeholder {ckpt}",
        ),
        (
            &["--scorer", "no-such-scorer-program {checkpoint}"][..],
            "cannot start the scorer",
        ),
        (
            &["--scorer", "echo {checkpoint}", "--val", "v.safetensors"][..],
            "--val is for the built-in models",
        ),
        (
            &["--scorer", "echo {checkpoint}", "--arch", "digits-cnn"][..],
            "--arch is for the built-in models",
        ),
        (
            &["--scorer", "echo {checkpoint}", "--jobs", "0"][..],
            "--jobs must be at least 1",
        ),
        (
            &["--scorer", "echo {checkpoint}", "--speculate", "0"][..],
            "--speculate must be at least 1",
        ),
        (
            &["--scorer", "echo {checkpoint}", "--scorer-timeout", "0"][..],
            "--scorer-timeout must be a positive",
        ),
        (
            &["--scorer", "echo {checkpoint}", "--scorer-json", "a..b"][..],
            "--scorer-json \"a..b\": takes keys",
        ),
    ] {
        let out = run(&world, &work, args);
        assert_fails(&world, &work, &out, &[needle]);
    }
    // Without a validation set or a scorer, the error names both.
    let out = soup_eval(&["greedy"], &world.ingredients).output().unwrap();
    assert_fails(&world, &work, &out, &["--val PATH", "--scorer CMD"]);
    let out = soup_eval(
        &["ensemble", "--scorer", "echo {checkpoint}"],
        &world.ingredients,
    )
    .output()
    .unwrap();
    assert!(common::stderr(&out).contains("ensemble can't use --scorer"));
    assert_eq!(out.status.code(), Some(2), "a usage error");
    // Scorer flags without --scorer are a usage error.
    let out = soup_eval(
        &["greedy", "--jobs", "2", "--arch", "digits-cnn"],
        &world.ingredients,
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
}

#[test]
fn non_utf8_paths_reach_the_scorer_byte_for_byte() {
    use std::os::unix::ffi::OsStrExt;
    let world = World::files();
    let odd = world
        .dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9 'x\"y"));
    std::fs::create_dir(&odd).unwrap();
    let ingredients: Vec<_> = world
        .ingredients
        .iter()
        .map(|p| {
            let q = odd.join(p.file_name().unwrap());
            std::fs::copy(p, &q).unwrap();
            q
        })
        .collect();
    let work = odd.join("work");
    // The scorer checks that the file it was given exists, and that it is where we put it.
    let out = soup_eval(
        &[
            "greedy",
            "-q",
            "--scorer",
            "sh -c 'test -f \"$1\" && echo 1' scorer {checkpoint}",
            "--work-dir",
        ],
        &[],
    )
    .arg(&work)
    .args(&ingredients)
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(left_in(&work).is_empty());
}

/// `--json` with a `--log` whose path isn't UTF-8: the report's `scorer.log` failed to
/// serialise, and the run ended "cannot write to stdout" with exit status 1 after every scorer
/// had run. It is the object that keeps every byte, as every other path in the report.
#[test]
fn a_non_utf8_log_path_is_kept_whole_in_the_json_report() {
    use std::os::unix::ffi::OsStrExt;
    let world = World::files();
    let log = world
        .dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"search-\xe9.jsonl"));
    let (report, _) = run_json(
        soup_eval(
            &[
                "score",
                "--json",
                "-q",
                "--scorer",
                "sh -c 'echo 1' scorer {checkpoint}",
            ],
            &three(&world),
        )
        .arg("--log")
        .arg(&log),
    );
    let hex: String = log
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        report["scorer"]["log"]["bytes_hex"],
        hex.as_str(),
        "{report}"
    );
    assert!(log.is_file());
}

#[test]
fn the_search_log_is_never_an_output_and_never_blocks_the_run() {
    let world = World::files();
    let work = world.folder("work");
    let dir = world.dir.path();
    let scorer = on_soups("true");
    let log = dir.join("search.jsonl");
    let base = |extra: &[&str]| {
        let mut args = vec!["-q", "--work-dir", work.to_str().unwrap(), "--shell"];
        args.extend_from_slice(&["--scorer", &scorer]);
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let eval = |command: &str, extra: &[&str]| {
        let mut args = vec![command.to_string()];
        args.extend(base(extra));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        soup_eval(&args, &world.ingredients).output().unwrap()
    };
    let out = eval("greedy", &["--log", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let logged = std::fs::read(&log).unwrap();
    // -o onto the log being resumed, even with --force: refused before any scorer runs.
    let out = eval(
        "greedy",
        &[
            "--resume",
            log.to_str().unwrap(),
            "-o",
            log.to_str().unwrap(),
            "--force",
        ],
    );
    assert_fails(&world, &work, &out, &["search log"]);
    assert_eq!(std::fs::read(&log).unwrap(), logged, "the log changed");
    // --plot onto the log this run would write: refused up front, not after the search.
    let plot = dir.join("p.svg");
    let out = eval(
        "report",
        &[
            "--log",
            plot.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
            "--force",
        ],
    );
    assert_fails(&world, &work, &out, &["search log"]);
    assert!(!plot.exists());
    // A FIFO as --resume is refused at once: its open used to block, deaf to Ctrl-C.
    let fifo = dir.join("fifo.jsonl");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let out = eval("greedy", &["--resume", fifo.to_str().unwrap()]);
    assert_fails(&world, &work, &out, &["fifo.jsonl", "not a regular file"]);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_users_file_with_a_candidates_name_is_never_replaced() {
    let world = World::files();
    let work = world.folder("work");
    // Every score ties, so the ranking is the command-line order and the first candidate is
    // the soup of inputs 0 and 1.
    let theirs = work.join("soup-0-1.safetensors");
    std::fs::write(&theirs, "my notes, not a soup").unwrap();
    let out = run(&world, &work, &["--shell", "--scorer", &on_soups("true")]);
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("soup-0-1.safetensors") && stderr.contains("not a soup this tool wrote"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&theirs).unwrap(), b"my notes, not a soup");
    // A killed run's leftover carries the tool's mark: it is replaced, and the run goes on.
    std::fs::remove_file(&theirs).unwrap();
    let o = common::soup_merge()
        .args([&world.ingredients[0], &world.ingredients[1]])
        .arg("-o")
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let out = run(&world, &work, &["--shell", "--scorer", &on_soups("true")]);
    assert!(out.status.success(), "{}", common::stderr(&out));
}

#[test]
fn a_daemon_left_holding_the_scorers_stdout_doesnt_hang_the_run() {
    let world = World::files();
    let pids = world.folder("pids");
    // The scorer starts a process in a session of its own (as a server started with
    // start_new_session would be), which keeps its stdout, prints its score and exits.
    let script = format!(
        "test -e {{checkpoint}} || exit 9; setsid sleep 60 & echo $! > {}/daemon; echo 0.5",
        pids.display()
    );
    let started = Instant::now();
    let out = soup_eval(
        &[
            "score",
            "-q",
            "--shell",
            "--scorer",
            &script,
            "--scorer-timeout",
            "30",
        ],
        &world.ingredients[..1],
    )
    .output()
    .unwrap();
    let took = started.elapsed();
    let daemon = std::fs::read_to_string(pids.join("daemon")).unwrap();
    let _ = Command::new("kill").arg(daemon.trim()).status();
    let stderr = common::stderr(&out);
    assert!(took < Duration::from_secs(15), "took {took:?}: {stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("still holds its stdout"),
        "{stderr}"
    );
    assert!(
        common::stdout(&out).contains("0.5"),
        "{}",
        common::stdout(&out)
    );
}

#[test]
fn ctrl_c_is_heard_while_a_daemon_holds_the_scorers_stdout() {
    let world = World::files();
    let pids = world.folder("pids");
    let script = format!(
        "test -e {{checkpoint}} || exit 9; setsid sleep 60 & echo $! > {p}/daemon; echo $$ > {p}/scorer; sleep 1; echo 0.5",
        p = pids.display()
    );
    let child = soup_eval(
        &["score", "-q", "--shell", "--scorer", &script],
        &world.ingredients[..1],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pids.join("scorer").exists() {
        assert!(Instant::now() < deadline, "the scorer never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Once the scorer is gone, only the daemon holds the pipe.
    let scorer = std::fs::read_to_string(pids.join("scorer")).unwrap();
    while alive(&scorer) {
        assert!(Instant::now() < deadline, "the scorer never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let daemon = std::fs::read_to_string(pids.join("daemon")).unwrap();
    let _ = Command::new("kill").arg(daemon.trim()).status();
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{}", common::stderr(&out));
}

#[test]
fn a_scorer_that_reads_the_terminal_is_an_error_not_a_silent_hang() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping: no `script` to give soup-eval a terminal");
        return;
    }
    let world = World::files();
    let pids = world.folder("pids");
    let err = world.dir.path().join("stderr");
    // `script` gives soup-eval a terminal; the scorer, in a background group of it, asks a
    // question there as ssh does for an unknown host key, and is stopped by SIGTTIN.
    let scorer = format!(
        "sh -c 'echo $$ > {}/scorer; printf \"continue (yes/no)? \" > /dev/tty; read a < /dev/tty; echo 0.5' scorer {{checkpoint}}",
        pids.display()
    );
    let command = format!(
        "{} score -q --scorer {} {} 2> {}",
        quote(Path::new(env!("CARGO_BIN_EXE_soup-eval"))),
        quote(Path::new(&scorer)),
        quote(&world.ingredients[0]),
        quote(&err)
    );
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["60", "script", "-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(took < Duration::from_secs(30), "took {took:?}: {stderr}");
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("stopped to read the terminal")
            && errors[0].contains("can't be interactive"),
        "{stderr}"
    );
    let pid = std::fs::read_to_string(pids.join("scorer")).unwrap();
    assert!(!alive(&pid), "the stopped scorer ({pid}) survived");
    // SIGCONT went with SIGTERM: a stopped group is not left to the 5 s grace.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_work_dir_clashing_with_an_output_or_an_input_is_refused_before_any_scorer_runs() {
    let world = World::dirs();
    let record = world.dir.path().join("record");
    let scorer = format!(
        "echo {{name}} {{checkpoint}} >> {}; echo 0.5",
        quote(&record)
    );
    let dir = world.dir.path();
    let w = dir.join("W");
    let plot = dir.join("W.svg");
    let shared = world.folder("shared");
    let inside_input = world.ingredients[1].join("cands");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for (command, args, work, needle) in [
        ("greedy", vec!["-o".to_string(), s(&w)], &w, "is also -o"),
        (
            "greedy",
            vec!["-o".to_string(), s(&shared.join("soup"))],
            &shared,
            "holds -o",
        ),
        (
            "greedy",
            vec!["-o".to_string(), s(&w)],
            &w.join("cands"),
            "is inside -o",
        ),
        (
            "report",
            vec!["--plot".to_string(), s(&plot)],
            &plot,
            "is also --plot",
        ),
        ("greedy", vec![], &inside_input, "inside the input"),
    ] {
        let mut all = vec![command, "-q", "--shell", "--scorer", &scorer, "--work-dir"];
        let work = s(work);
        all.push(&work);
        all.extend(args.iter().map(String::as_str));
        let out = soup_eval(&all, &world.ingredients).output().unwrap();
        let stderr = common::stderr(&out);
        // The output policy's refusals, as for -o onto --plot: exit 1, not a usage error.
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(
            errors[0].contains("--work-dir") && errors[0].contains(needle),
            "{needle}: {stderr}"
        );
        assert!(!record.exists(), "a scorer ran before the check");
        assert!(!w.exists() && !plot.exists() && !inside_input.exists());
        assert!(left_in(&shared).is_empty());
    }
}

#[test]
fn scorer_timeouts_out_of_range_are_usage_errors_not_panics() {
    let world = World::files();
    let work = world.folder("work");
    for t in ["1e20", "1e300", "1e-12", "0.0001"] {
        let out = run(
            &world,
            &work,
            &[
                "--shell",
                "--scorer",
                "test -e {checkpoint} && echo 1",
                "--scorer-timeout",
                t,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{t}: {}", common::stderr(&out));
        assert_fails(
            &world,
            &work,
            &out,
            &["--scorer-timeout", "from 0.001 to 1e9"],
        );
    }
}

#[test]
fn a_full_work_dir_names_work_dir_as_the_fix() {
    let world = World::files();
    let small = world.folder("small");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
        .arg(&small)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipping: can't mount a small tmpfs here (needs root)");
        return;
    }
    // A candidate's bytes: bigger than the folder's room.
    let big: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = world.dir.path().join(format!("big{i}.safetensors"));
            common::write(
                &p,
                &[common::spec(
                    "w",
                    safetensors::Dtype::F32,
                    &[8192],
                    vec![i as u8; 8192 * 4],
                )],
            );
            p
        })
        .collect();
    let out = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            "test -e {checkpoint} && echo 1",
            "--work-dir",
        ],
        &[],
    )
    .arg(&small)
    .args(&big)
    .output()
    .unwrap();
    let left = left_in(&small);
    let _ = Command::new("umount").arg(&small).status();
    let stderr = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no space left") && stderr.contains("--work-dir"),
        "{stderr}"
    );
    assert!(!stderr.contains("-o"), "{stderr}");
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn keep_candidates_without_a_work_dir_says_where_they_are() {
    let world = World::files();
    let tmp = world.folder("tmp");
    let (report, out) = run_json(
        soup_eval(
            &[
                "greedy",
                "--json",
                "-q",
                "--shell",
                "--scorer",
                "test -e {checkpoint} && echo 1",
                "--keep-candidates",
            ],
            &world.ingredients[..2],
        )
        .env("TMPDIR", &tmp),
    );
    let kept = PathBuf::from(report["scorer"]["kept_in"].as_str().unwrap());
    assert!(kept.starts_with(&tmp), "{kept:?}");
    assert_eq!(left_in(&kept), ["soup-0-1.safetensors"]);
    assert!(
        common::stderr(&out).contains(&format!("left the candidates in {}", kept.display())),
        "{}",
        common::stderr(&out)
    );
}

/// Every file under `root` (links not followed) with its kind and contents, to compare before
/// and after a run.
fn snapshot(root: &Path) -> Vec<(PathBuf, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let (kind, bytes) = if meta.is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                (
                    "link".to_string(),
                    target.to_string_lossy().as_bytes().to_vec(),
                )
            } else if meta.is_dir() {
                stack.push(p.clone());
                ("dir".to_string(), Vec::new())
            } else {
                ("file".to_string(), std::fs::read(&p).unwrap())
            };
            out.push((p.strip_prefix(root).unwrap().to_path_buf(), kind, bytes));
        }
    }
    out.sort();
    out
}

#[test]
fn the_search_log_and_work_dir_never_land_inside_an_input_model_directory() {
    let world = World::dirs();
    let dir = world.dir.path();
    let record = dir.join("record");
    let scorer = format!(
        "echo {{name}} {{checkpoint}} >> {}; echo 0.5",
        quote(&record)
    );
    let input = &world.ingredients[1];
    let input_name = input.file_name().unwrap().to_str().unwrap();
    let link = dir.join("through-a-link");
    std::os::unix::fs::symlink(input, &link).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let work = world.folder("work");
    // A log the model directory's readers know by name would break the ingredient for later
    // runs; any other name still changes the directory, and a link is no way around it.
    let cases = [
        ("--log", s(&input.join("preprocessor_config.json"))),
        ("--log", s(&input.join("model.safetensors.index.json"))),
        ("--log", s(&input.join("search.jsonl"))),
        ("--log", s(&link.join("search.jsonl"))),
        ("--resume", s(&input.join("config.json"))),
        ("--log", s(&input.join("model.safetensors"))),
    ];
    for (flag, path) in &cases {
        let before = snapshot(dir);
        let args = [
            "greedy",
            "-q",
            "--json",
            "--shell",
            "--scorer",
            &scorer,
            "--work-dir",
            work.to_str().unwrap(),
            flag,
            path,
        ];
        let out = soup_eval(&args, &world.ingredients).output().unwrap();
        let stderr = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{flag} {path}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(
            errors[0].contains(path.as_str())
                && errors[0].contains(input_name)
                && errors[0].contains(&format!("give {flag} a path elsewhere")),
            "{flag} {path}: {stderr}"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], "output", "{v}");
        assert!(!record.exists(), "a scorer ran before the check");
        assert_eq!(snapshot(dir), before, "{flag} {path} changed the world");
    }
    // --work-dir into an input, directly or through a link: refused the same way as --log,
    // with the same exit status and kind (a placement refusal of the output policy), nothing
    // created.
    for inside in [input.join("cands"), link.join("cands"), input.join("a/b")] {
        let before = snapshot(dir);
        let args = [
            "greedy",
            "-q",
            "--json",
            "--shell",
            "--scorer",
            &scorer,
            "--work-dir",
            inside.to_str().unwrap(),
        ];
        let out = soup_eval(&args, &world.ingredients).output().unwrap();
        let stderr = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{inside:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(
            errors[0].contains(inside.to_str().unwrap())
                && errors[0].contains(input_name)
                && errors[0].contains("give --work-dir a folder elsewhere"),
            "{stderr}"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], "output", "{v}");
        assert!(!record.exists(), "a scorer ran before the check");
        assert_eq!(snapshot(dir), before);
    }
    // A log beside the ingredients is an ordinary request.
    let log = dir.join("search.jsonl");
    let args = [
        "greedy",
        "-q",
        "--shell",
        "--scorer",
        &scorer,
        "--work-dir",
        work.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
    ];
    let out = soup_eval(&args, &world.ingredients).output().unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(log.exists());
}

/// Only a candidate's own name clashes in `--work-dir`: any name that began with `soup-` was
/// refused, so `--log W/soup-search.jsonl`, or an input `W/soup-v1.safetensors` (a user's
/// earlier soup), stopped the run with "under a candidate's name", which no candidate has.
#[test]
fn names_in_the_work_dir_that_no_candidate_has_are_not_clashes() {
    let world = World::files();
    let work = world.folder("work");
    let log = work.join("soup-search.jsonl");
    let earlier = work.join("soup-v1.safetensors");
    std::fs::copy(&world.ingredients[0], &earlier).unwrap();
    let mut ingredients = vec![earlier.clone()];
    ingredients.extend_from_slice(&world.ingredients[1..3]);
    let scorer = table_scorer(&[("ingredient-0", "0.9"), ("soup-0-1", "0.95")], "0.5");
    let out = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            &scorer,
            "--work-dir",
            work.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ],
        &ingredients,
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    // The header, three ingredients, {0,1} kept, {0,1,2} rejected.
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 6, "{lines}");
    let mut left = left_in(&work);
    left.sort();
    assert_eq!(left, ["soup-search.jsonl", "soup-v1.safetensors"]);
}

#[test]
fn a_refused_run_leaves_no_work_dir_behind_and_clashes_with_the_log_are_found_first() {
    let world = World::files();
    let dir = world.dir.path();
    let record = dir.join("record");
    let scorer = format!(
        "echo {{name}} {{checkpoint}} >> {}; echo 0.5",
        quote(&record)
    );
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "my notes").unwrap();
    let new_wd = dir.join("new-wd");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let log = dir.join("L.jsonl");
    let wd_for = |p: &Path| p.to_path_buf();
    for (args, wd, needle, code) in [
        // An existing --log: refused before the work folder is made.
        (
            vec!["--log".to_string(), s(&notes)],
            wd_for(&new_wd),
            "already exists; pass --resume",
            1,
        ),
        // --work-dir equal to --log (or --resume): refused as the output policy refuses two
        // outputs on one path (exit 1, kind output), and no folder at the log's path for the
        // next run to trip over.
        (
            vec!["--log".to_string(), s(&log)],
            wd_for(&log),
            "--work-dir",
            1,
        ),
        (
            vec!["--resume".to_string(), s(&log)],
            wd_for(&log),
            "is also --resume",
            1,
        ),
        // A log at a candidate's name in the work folder: found up front, not after every
        // ingredient was scored.
        (
            vec!["--log".to_string(), s(&new_wd.join("soup-0-1.safetensors"))],
            wd_for(&new_wd),
            "candidate's name",
            1,
        ),
        // A failing scorer: the run fails after it made --work-dir, which goes with it.
        (
            vec!["--scorer-timeout".to_string(), "5".to_string()],
            wd_for(&new_wd),
            "exited with status 3",
            1,
        ),
    ] {
        let before = snapshot(dir);
        let failing = "test -e {checkpoint} && exit 3".to_string();
        let scorer = if needle.contains("status 3") {
            &failing
        } else {
            &scorer
        };
        let mut all = vec!["greedy", "-q", "--json", "--shell", "--scorer", scorer];
        let wd = s(&wd);
        all.extend(["--work-dir", wd.as_str()]);
        all.extend(args.iter().map(String::as_str));
        let out = soup_eval(&all, &world.ingredients).output().unwrap();
        let stderr = common::stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(needle), "{needle:?} not in {stderr}");
        if !needle.contains("status 3") {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let kind = if needle.contains("already exists") {
                "log"
            } else {
                "output"
            };
            assert_eq!(v["kind"], kind, "{v}");
            assert!(!record.exists(), "a scorer ran before the check");
        }
        assert_eq!(snapshot(dir), before, "{args:?} left something behind");
        assert!(!new_wd.exists() && !log.exists());
    }
    // A --work-dir the user made stays, even when the run fails.
    let mine = world.folder("mine");
    let out = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            "test -e {checkpoint} && exit 3",
            "--work-dir",
            mine.to_str().unwrap(),
        ],
        &world.ingredients,
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(mine.is_dir());
    // And one the run made stays after a success, as before.
    let out = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            &scorer,
            "--work-dir",
            new_wd.to_str().unwrap(),
        ],
        &world.ingredients,
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(new_wd.is_dir());
}

/// Two searches given one `--work-dir` (the same command started twice): the second took the
/// first one's candidates for a killed run's leftovers (they carry the tool's mark), replaced
/// them and removed them under the first one's scorers. It is refused at once, and the first
/// search goes on unharmed.
#[test]
fn a_second_search_in_a_work_dir_in_use_is_refused_at_once() {
    let world = World::files();
    let work = world.folder("work");
    let started = world.dir.path().join("started");
    let release = world.dir.path().join("release");
    // Every score ties, so the first search tries soup-0-1, then soup-0-2; its scorer holds
    // each soup until the test releases it, then checks it is still there.
    let holding = format!(
        "case {{name}} in soup-*) : > {s}; while [ ! -e {r} ]; do sleep 0.05; done;; esac; test -e {{checkpoint}} && echo 1",
        s = quote(&started),
        r = quote(&release)
    );
    let work_arg = work.to_str().unwrap();
    let first = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            &holding,
            "--scorer-timeout",
            "60",
            "--work-dir",
            work_arg,
        ],
        &three(&world),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = soup_eval(
        &[
            "greedy",
            "-q",
            "--shell",
            "--scorer",
            "test -e {checkpoint} && echo 1",
            "--work-dir",
            work_arg,
        ],
        &three(&world),
    )
    .output()
    .unwrap();
    let candidate_stayed = work.join("soup-0-1.safetensors").is_file();
    std::fs::write(&release, "").unwrap();
    let first = first.wait_with_output().unwrap();
    assert!(started.exists(), "the first search never reached a soup");
    assert_fails(
        &world,
        &world.folder("unused"),
        &second,
        &["another soup-eval search"],
    );
    assert!(
        candidate_stayed,
        "the second search removed the first's candidate"
    );
    assert!(first.status.success(), "{}", common::stderr(&first));
    assert!(left_in(&work).is_empty(), "{:?}", left_in(&work));
}

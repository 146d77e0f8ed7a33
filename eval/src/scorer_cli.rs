//! `soup-eval --scorer`: the external scorer's flags, their validation, and its commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use model_soup::format::{destination, Destination, OutputKind, Reads, Request, Role};
use model_soup::soup::MergeRequest;

use crate::error::{usage, usage_error};
use clap::Args as ClapArgs;

use super::cli::{outputs, Args, Command, Common, GreedyArgs};
use super::external::{External, Options};
use super::greedy::{Goal, Rule};
use super::plot;
use super::report::Report;
use super::scorer::{Reading, Scorer};

/// Flags for scoring with an external command instead of `--arch`.
#[derive(Debug, Default, ClapArgs)]
#[command(next_help_heading = "External scorer (instead of --arch, --val and --test)")]
pub struct ScorerFlags {
    /// Score each ingredient and candidate soup with this command, e.g.
    /// 'python score.py {checkpoint}' or 'srun --gres=gpu:1 python score.py {checkpoint}'.
    /// Also {slot} (0 to --jobs - 1), {name} (a stable candidate id) and {work_dir}. Run
    /// without a shell unless --shell. The score is the last line of its stdout.
    #[arg(long, value_name = "CMD")]
    pub scorer: Option<String>,

    /// Read the score from a field of a JSON object on the scorer's stdout, e.g.
    /// results.arc_easy.acc.
    #[arg(long, value_name = "KEY.PATH", requires = "scorer")]
    pub scorer_json: Option<String>,

    /// Lower scores are better (a loss, a perplexity).
    #[arg(long, requires = "scorer")]
    pub minimize: bool,

    /// Run the scorer with sh -c; placeholders are replaced by single-quoted values, so never
    /// put one inside other quotes ("{checkpoint}", --wrap "... {checkpoint}"): there a path's
    /// $, ` or " would be read by the shell.
    #[arg(long, requires = "scorer")]
    pub shell: bool,

    /// Stop a scorer run (its whole process group) after this many seconds (0.001 to 1e9);
    /// it counts as a failure.
    #[arg(long, value_name = "SECONDS", requires = "scorer")]
    pub scorer_timeout: Option<f64>,

    /// Run a failed scorer again up to N more times.
    #[arg(long, value_name = "N", requires = "scorer")]
    pub retries: Option<u32>,

    /// Run up to N scorers at once (ingredients, and the greedy candidates of --speculate).
    #[arg(long, value_name = "N", requires = "scorer")]
    pub jobs: Option<usize>,

    /// Score the next K greedy candidates at once (with --jobs K), as if none were kept; an
    /// acceptance throws away the ones after it. The result is the same as one at a time.
    #[arg(long, value_name = "K", requires = "scorer")]
    pub speculate: Option<usize>,

    /// Write candidate soups here (on a filesystem the scorer can read: shared, for a
    /// cluster). Default: a new folder in the system's temporary folder.
    #[arg(long, value_name = "DIR", requires = "scorer")]
    pub work_dir: Option<PathBuf>,

    /// Leave each candidate in --work-dir after it is scored.
    #[arg(long, requires = "scorer")]
    pub keep_candidates: bool,

    /// Start a JSON Lines log of every scored candidate, fsynced after each line.
    #[arg(long, value_name = "PATH", requires = "scorer")]
    pub log: Option<PathBuf>,

    /// Continue the search in this log: what it has scored is not scored again, and new scores
    /// are appended to it. Refused if the ingredients, the scorer or its options differ.
    #[arg(long, value_name = "LOG", requires = "scorer")]
    pub resume: Option<PathBuf>,
}

impl ScorerFlags {
    /// Whether an external scorer was asked for.
    pub fn given(&self) -> bool {
        self.scorer.is_some()
    }
}

/// Runs a command whose models are scored by `--scorer`.
pub fn run(args: &Args) -> anyhow::Result<Report<f64>> {
    let (c, greedy) = match &args.command {
        Command::Score(c) | Command::Uniform(c) => (c, None),
        Command::Greedy(g) => (&g.common, Some(g)),
        Command::Report(r) => (&r.greedy.common, Some(&r.greedy)),
        Command::Ensemble(_) => usage!(
            "ensemble can't use --scorer: an ensemble averages each model's outputs, and a scorer gives one number per model; use greedy, uniform or report"
        ),
    };
    let plot_path = match &args.command {
        Command::Report(r) => r.plot.as_deref(),
        _ => None,
    };
    let s = &c.scorer;
    let text = s.scorer.as_deref().expect("called with --scorer");
    for (given, flag) in [
        (c.arch.is_some(), "--arch"),
        (c.val.is_some(), "--val"),
        (c.test.is_some(), "--test"),
    ] {
        if given {
            usage!("{flag} is for the built-in models; with --scorer the command scores on its own data, so leave {flag} out");
        }
    }
    let timeout = match s.scorer_timeout {
        Some(t) if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&t) => usage!(
            "--scorer-timeout must be a positive number of seconds, from {MIN_TIMEOUT} to {MAX_TIMEOUT:e} (about 31 years); {t} is not"
        ),
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    if s.jobs == Some(0) {
        usage!("--jobs must be at least 1");
    }
    if s.speculate == Some(0) {
        usage!("--speculate must be at least 1 (1: one candidate at a time)");
    }
    // Every output is checked against the output policy before any scorer runs.
    let (soup_request, plot_dest) = match greedy {
        Some(g) => outputs(c, g, plot_path)?,
        None => (None, None),
    };
    let logs: Vec<(&str, &Path)> = [("--log", &s.log), ("--resume", &s.resume)]
        .into_iter()
        .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
        .collect();
    if let Some(dir) = &s.work_dir {
        let mut outputs: Vec<(&str, &Path)> = Vec::new();
        if let Some(o) = greedy.and_then(|g| g.output.as_deref()) {
            outputs.push(("-o", o));
        }
        if let Some(p) = plot_path {
            outputs.push(("--plot", p));
        }
        check_work_dir(dir, &outputs, &logs, &c.inputs)?;
    }
    check_placements(c)?;
    let scorer = Scorer::new(
        text,
        s.shell,
        Reading::new(s.scorer_json.as_deref())?,
        timeout,
        s.retries.unwrap_or(0),
    )?;
    let options = Options {
        jobs: s.jobs.unwrap_or(1),
        speculate: s.speculate.unwrap_or(1),
        keep_candidates: s.keep_candidates,
        work_dir: s.work_dir.clone(),
        log: s.log.clone(),
        resume: s.resume.clone(),
        rule: Rule {
            goal: if s.minimize {
                Goal::Minimize
            } else {
                Goal::Maximize
            },
            accept_ties: greedy.is_some_and(|g| g.accept_ties),
        },
        quiet: c.quiet,
    };
    let external = External::open(scorer, &c.inputs, options)?;
    let result = search(args, greedy, &external, soup_request, plot_dest);
    if result.is_ok() {
        external.succeeded();
    }
    if let Some(dir) = external.kept_in() {
        if external.work_dir_is_temporary() {
            // Not a folder the user named: say where the candidates are, whatever happened.
            model_soup::cli::say(&format!(
                "note: --keep-candidates left the candidates in {}",
                dir.display()
            ));
        }
    }
    result
}

/// The shortest --scorer-timeout: a shorter one reads as 0 s in messages, and no scorer
/// starts that fast.
const MIN_TIMEOUT: f64 = 0.001;
/// The longest --scorer-timeout, well inside what a `Duration` holds.
const MAX_TIMEOUT: f64 = 1e9;

/// Refuses a `--work-dir` that is, holds or lies inside an output (`-o`, `--plot`), is the
/// search log (`--log`, `--resume`) or holds it under a candidate's name, or lies inside (or is)
/// an input: the search fills it with candidates and writes the outputs at the end, so a clash
/// would be found only after every scorer has run. These are the output policy's placement
/// refusals, as `--log` inside an input and `-o` onto `--plot` are: `kind: output`, exit
/// status 1, not a usage error, whichever flag is refused.
fn check_work_dir(
    dir: &Path,
    outputs: &[(&str, &Path)],
    logs: &[(&str, &Path)],
    inputs: &[PathBuf],
) -> anyhow::Result<()> {
    let refuse = |path: &Path, reason: String| -> anyhow::Result<()> {
        Err(model_soup::Error::Output {
            path: path.to_path_buf(),
            reason,
        }
        .into())
    };
    let w = resolved(dir);
    for (flag, log) in logs {
        let l = resolved(log);
        let candidate_name = l.parent() == Some(w.as_path())
            && l.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(super::candidate::is_name);
        if l == w || w.starts_with(&l) {
            return refuse(
                dir,
                format!(
                    "--work-dir is also {flag} {}; the log is a file and candidates need a folder of their own: give --work-dir a folder apart from the log",
                    log.display()
                ),
            );
        }
        if candidate_name {
            return refuse(
                log,
                format!(
                    "{flag} is in --work-dir {} under a candidate's name (soup-...), where a candidate soup would be written: give the log another name or folder",
                    dir.display()
                ),
            );
        }
    }
    for (flag, output) in outputs {
        let o = resolved(output);
        let how = if o == w {
            "is also"
        } else if o.starts_with(&w) {
            "holds"
        } else if w.starts_with(&o) {
            "is inside"
        } else {
            continue;
        };
        return refuse(
            dir,
            format!(
                "--work-dir {how} {flag} {}; candidate soups and the run's outputs need places of their own: give --work-dir a folder apart from -o and --plot",
                output.display()
            ),
        );
    }
    for input in inputs {
        let i = resolved(input);
        // Worded as the output policy words --log and --work-dir inside an input (see
        // `destination::check_placement`, which finds the same for a folder that exists): this
        // also covers a --work-dir whose parent folders the run would create.
        if w == i {
            return refuse(
                dir,
                format!(
                    "is the input {}; --work-dir never writes to what the run reads: give --work-dir a folder elsewhere",
                    input.display()
                ),
            );
        }
        if input.is_dir() && w.starts_with(&i) {
            return refuse(
                dir,
                format!(
                    "is inside the input {}; writing there would change that model directory: give --work-dir a folder elsewhere",
                    input.display()
                ),
            );
        }
    }
    Ok(())
}

/// Runs the search log (`--log`, `--resume`) and `--work-dir` through the output policy's
/// placement rules, before anything is created: none may be an input or lie inside a model
/// directory the run reads (given, behind a symbolic link, or reached through its files), as
/// -o and --plot may not.
fn check_placements(c: &Common) -> anyhow::Result<()> {
    let s = &c.scorer;
    let mut read = Reads::new();
    for (role, path) in super::cli::reads(c) {
        match role {
            Role::SearchLog => {}
            Role::Ingredient => read.add_ingredient(&path),
            _ => read.add(role, &path),
        }
    }
    let requests = [
        ("--log", &s.log, OutputKind::File),
        ("--resume", &s.resume, OutputKind::File),
        ("--work-dir", &s.work_dir, OutputKind::Directory),
    ];
    for (flag, path, kind) in requests {
        if let Some(path) = path {
            let request = Request {
                flag,
                path: path.clone(),
                kind,
            };
            destination::check_placement(&request, &read)?;
        }
    }
    if let Some(dir) = &s.work_dir {
        check_candidate_names(dir, &read)?;
    }
    Ok(())
}

/// Refuses a `--work-dir` where an input (or a folder holding one) is at a candidate soup's
/// name, through a link or a hard link too: a candidate written there would be refused only
/// once the search reached it, and `--resume` removes the logged candidates it finds at their
/// names, which would have deleted an input that carries the tool's mark (a soup kept with
/// `--keep-candidates` and fed back in, say).
fn check_candidate_names(dir: &Path, read: &Reads) -> anyhow::Result<()> {
    // A folder the run will create holds nothing yet.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut clashes: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(super::candidate::is_name)
        })
        .map(|e| e.path())
        .filter(|p| read.protects(p))
        .collect();
    clashes.sort();
    match clashes.into_iter().next() {
        None => Ok(()),
        Some(path) => Err(model_soup::Error::Output {
            path,
            reason: format!(
                "is an input of this run (or holds one), at a candidate soup's name in --work-dir {}, where a candidate would replace it: give --work-dir a folder apart from the inputs",
                dir.display()
            ),
        }
        .into()),
    }
}

/// `path` made absolute with its longest existing part resolved (links, `..`), so that a
/// path that doesn't exist yet compares with others.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut head = absolute.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(head) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                head = parent;
            }
            _ => return absolute,
        }
    }
}

/// Scores the ingredients, then the soups the command asks for, and builds the report.
fn search(
    args: &Args,
    greedy: Option<&GreedyArgs>,
    external: &External,
    soup_request: Option<MergeRequest>,
    plot_dest: Option<Destination>,
) -> anyhow::Result<Report<f64>> {
    let mut report = Report {
        arch: "scorer".into(),
        device: None,
        eval_dtype: None,
        val_data: None,
        test_data: None,
        preprocessor: None,
        ingredients: Vec::new(),
        uniform: None,
        greedy: None,
        ensemble: None,
        scorer: None,
        warnings: Vec::new(),
    };
    let uniform_wanted = matches!(args.command, Command::Uniform(_) | Command::Report(_));
    let (ingredients, uniform) = external.score_ingredients(uniform_wanted)?;
    if !matches!(args.command, Command::Uniform(_)) {
        report.ingredients = ingredients;
    }
    report.uniform = uniform;
    if let Some(g) = greedy {
        let val: Vec<f64> = report
            .ingredients
            .iter()
            .map(|r| r.val.expect("scored"))
            .collect();
        let output = g.output.as_deref().map(|p| {
            let also = soup_request
                .as_ref()
                .map_or(&[][..], |r| &r.also_writes[..]);
            (p, g.force, also)
        });
        report.greedy = Some(external.greedy(&val, output)?);
    }
    report.scorer = Some(external.run_info());
    report.warnings = external.warnings();
    if let Some(dest) = plot_dest {
        let svg = plot::ranking_svg(&report, "soups and ingredients, by the scorer")?;
        model_soup::format::write_whole(&dest, svg.as_bytes())?;
    }
    Ok(report)
}

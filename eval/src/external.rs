//! A search scored by an external command: each candidate soup written to the work folder,
//! scored by up to `--jobs` scorers at once (the greedy pass `--speculate` candidates ahead),
//! logged for `--resume`, and removed; the results in the same report as the built-in models'.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use model_soup::format::Request;
use model_soup::soup::Warning;

use super::candidate::{self, Ingredients, Written};
use super::error::{Error, Result};
use super::greedy::{self, Candidates, Rule, Trial};
use super::report::{Greedy, Kind, Row, ScorerRun};
use super::scorer::{Scorer, Values};
use super::search_log::{Description, Entry, LoggedIngredient, SearchLog, FORMAT, VERSION};
use super::shell;

/// How an external search runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Scorers run at once at most (at least 1).
    pub jobs: usize,
    /// Greedy candidates scored at once (at least 1).
    pub speculate: usize,
    /// Leave every candidate in the work folder.
    pub keep_candidates: bool,
    /// Where candidates are written; a fresh folder in the system's temporary folder if `None`.
    pub work_dir: Option<PathBuf>,
    /// A new log to start.
    pub log: Option<PathBuf>,
    /// A log to continue.
    pub resume: Option<PathBuf>,
    /// How the greedy search compares scores.
    pub rule: Rule,
    /// No line per scored candidate on stderr.
    pub quiet: bool,
}

/// The folder candidates go to; one this run created is removed with it: a temporary one
/// always, a `--work-dir` the run created when the run fails (see [`External::succeeded`]).
struct WorkDir {
    path: PathBuf,
    ours: bool,
    created: AtomicBool,
    /// The folder, open with its advisory lock held while the search runs (see
    /// [`WorkDir::lock`]).
    lock: Option<std::fs::File>,
}

impl WorkDir {
    /// Takes the folder's advisory lock, so that a second search given the same `--work-dir`
    /// is refused at once: it replaced the first one's candidates as leftovers (they carry
    /// the tool's mark) and removed them under its scorers, and `--resume` removed its logged
    /// ones. Where the filesystem has no locks, nothing is held.
    fn lock(&mut self) -> Result<()> {
        let Ok(file) = std::fs::File::open(&self.path) else {
            return Ok(());
        };
        if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
            return Err(model_soup::Error::Output {
                path: self.path.clone(),
                reason: "is the --work-dir of another soup-eval search that is still running (it holds the folder's lock); give each search a --work-dir of its own, or wait for the other to end".into(),
            }
            .into());
        }
        self.lock = Some(file);
        Ok(())
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.ours || self.created.load(Ordering::Relaxed) {
            // Only empty: candidates kept with --keep-candidates stay, and so does the folder.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

#[derive(Default)]
struct Stats {
    scored: usize,
    resumed: usize,
    retried: usize,
    scorer_seconds: f64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Each ingredient's row, and the uniform soup's when asked for.
pub type Scored = (Vec<Row<f64>>, Option<Row<f64>>);

/// Ingredients, a scorer, the work folder and the log of one search.
pub struct External {
    scorer: Scorer,
    ingredients: Ingredients,
    work_dir: WorkDir,
    log: Option<SearchLog>,
    logged: HashMap<Vec<usize>, Entry>,
    hashes: Vec<String>,
    options: Options,
    stats: Mutex<Stats>,
    /// Scorer seconds of each candidate scored in this invocation, by its members.
    ran: Mutex<HashMap<Vec<usize>, f64>>,
    /// Each candidate scored in this invocation, by its members, so none is scored twice.
    trials: Mutex<HashMap<Vec<usize>, Trial<f64>>>,
    /// Candidates whose scorer failed in this invocation, with the error.
    failed: Mutex<Vec<(Vec<usize>, String)>>,
    /// The candidates a one-at-a-time search needs (no speculation), for the speed-up.
    needed: Mutex<Vec<Vec<usize>>>,
    warnings: Mutex<Vec<Warning>>,
}

impl External {
    /// Checks the ingredients against each other (from headers), prepares the work folder, and
    /// starts or resumes the log (hashing every ingredient) before any scorer runs.
    pub fn open(scorer: Scorer, paths: &[PathBuf], mut options: Options) -> Result<External> {
        options.jobs = options.jobs.max(1);
        options.speculate = options.speculate.max(1);
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let paths: Vec<PathBuf> = paths.iter().map(|p| absolute(p)).collect();
        let ingredients = Ingredients::open(&paths)?;
        // No scan for NaN here, unlike the built-in evaluators: the scorer runs its own
        // framework, which propagates NaN to a score the run refuses, and every soup's merge
        // warns of the NaN it reads. A scan would read every ingredient's bytes once more.
        let warnings = model_soup::soup::repeated_models(&paths);
        // Every refusal that needs no hashing comes before the work folder is made.
        if options.log.is_some() && options.resume.is_some() && options.log != options.resume {
            return Err(Error::Log {
                path: options.log.clone().expect("checked"),
                reason: "give --resume LOG alone: it goes on appending to LOG".into(),
            });
        }
        if let (Some(log), None) = (&options.log, &options.resume) {
            SearchLog::check_new(log)?;
        }
        let mut work_dir = match &options.work_dir {
            Some(dir) => {
                let mut created = false;
                match std::fs::create_dir(dir) {
                    Ok(()) => created = true,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                    Err(e) => {
                        return Err(Error::Io {
                            path: dir.clone(),
                            source: std::io::Error::new(
                                e.kind(),
                                format!("cannot use it as --work-dir: {e}; give a folder whose parent exists, on a filesystem the scorer can read"),
                            ),
                        })
                    }
                }
                WorkDir {
                    path: absolute(dir),
                    ours: false,
                    created: AtomicBool::new(created),
                    lock: None,
                }
            }
            None => {
                let path = std::env::temp_dir().join(format!(
                    "soup-eval-candidates-{}-{}",
                    std::process::id(),
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos())
                ));
                std::fs::create_dir(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                WorkDir {
                    path,
                    ours: true,
                    created: AtomicBool::new(true),
                    lock: None,
                }
            }
        };
        work_dir.lock()?;
        if options.speculate > options.jobs {
            model_soup::cli::say(&format!(
                "warning: --speculate {} is more than --jobs {}: the candidates beyond {} wait for a free slot, so speculation only adds runs (those after an accepted candidate are thrown away); give --jobs {} or a smaller --speculate",
                options.speculate, options.jobs, options.jobs, options.speculate
            ));
        }
        let mut hashes = Vec::new();
        let mut log = None;
        let mut logged = HashMap::new();
        if let Some(path) = options.resume.as_ref().or(options.log.as_ref()) {
            for p in &ingredients.paths {
                hashes.push(candidate::sha256(p)?);
            }
            let description = Description {
                format: FORMAT.into(),
                version: VERSION,
                scorer: scorer.text.clone(),
                shell: scorer.shell(),
                scorer_json: scorer.json_path(),
                minimize: options.rule.goal == greedy::Goal::Minimize,
                accept_ties: options.rule.accept_ties,
                ingredients: ingredients
                    .paths
                    .iter()
                    .zip(&hashes)
                    .map(|(p, h)| LoggedIngredient {
                        path: p.to_string_lossy().into_owned(),
                        sha256: h.clone(),
                    })
                    .collect(),
                tool: format!("soup-eval {}", env!("CARGO_PKG_VERSION")),
            };
            if options.resume.is_some() {
                let (l, scored) = SearchLog::resume(path, &description)?;
                log = Some(l);
                logged = scored;
                if !options.keep_candidates {
                    // A run killed between logging a candidate and removing it left it here;
                    // it won't be written again, so it goes now. The path is made from the
                    // members (checked against the ingredients), never from the log's text,
                    // and only what carries the tool's mark is removed: --work-dir may have
                    // changed since, to a shared folder with the user's own files in it.
                    let mut stale: Vec<PathBuf> = logged
                        .values()
                        .filter(|e| e.members.len() > 1)
                        .map(|e| {
                            ingredients.candidate_path(&work_dir.path, &candidate::name(&e.members))
                        })
                        .collect();
                    stale.sort();
                    // Every name is checked before anything goes, so an error removes nothing.
                    for path in &stale {
                        candidate::check_leftover(path)?;
                    }
                    for path in &stale {
                        candidate::remove_leftover(path)?;
                    }
                }
            } else {
                log = Some(SearchLog::create(path, &description)?);
            }
        }
        if work_dir.ours && (options.log.is_some() || options.resume.is_some()) {
            // A new folder each run: --resume can't know the killed run's.
            model_soup::cli::say(&format!(
                "note: candidates go to {}, a new folder for this run; a run killed with SIGKILL leaves the ones it was scoring there, where --resume won't look (give --work-dir to have --resume remove them)",
                work_dir.path.display()
            ));
        }
        Ok(External {
            scorer,
            ingredients,
            work_dir,
            log,
            logged,
            hashes,
            options,
            stats: Mutex::new(Stats::default()),
            ran: Mutex::new(HashMap::new()),
            trials: Mutex::new(HashMap::new()),
            failed: Mutex::new(Vec::new()),
            needed: Mutex::new(Vec::new()),
            warnings: Mutex::new(warnings),
        })
    }

    /// Marks the run a success: a `--work-dir` it created stays, even empty. Without this, an
    /// empty one is removed when the search is dropped, so a failed run leaves no folder behind.
    pub fn succeeded(&self) {
        self.work_dir.created.store(false, Ordering::Relaxed);
    }

    /// The ingredients' display names, in command-line order.
    pub fn names(&self) -> Vec<String> {
        self.ingredients.names()
    }

    /// The ingredients' paths (absolute), in command-line order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.ingredients.paths
    }

    /// Warnings from the core's merges, without repeats.
    pub fn warnings(&self) -> Vec<Warning> {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Scores each ingredient, and with `uniform` the uniform soup of them all, in parallel.
    pub fn score_ingredients(&self, uniform: bool) -> Result<Scored> {
        let n = self.ingredients.paths.len();
        let mut sets: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
        if uniform && n > 1 {
            sets.push((0..n).collect());
        }
        let trials = self.score_all(&sets)?;
        lock(&self.needed).extend(sets.iter().cloned());
        let names = self.names();
        let rows = names
            .iter()
            .zip(&trials)
            .map(|(name, t)| Row {
                kind: Kind::Ingredient,
                name: name.clone(),
                members: Vec::new(),
                val: Some(t.val),
                test: None,
            })
            .collect();
        let uniform = uniform.then(|| Row {
            kind: Kind::UniformSoup,
            name: format!("uniform soup ({n})"),
            members: names.clone(),
            val: Some(trials.last().expect("one per set").val),
            test: None,
        });
        Ok((rows, uniform))
    }

    /// The greedy search over ingredients scored `val`, then the chosen soup written to
    /// `output` if given (path, force, the run's other outputs): byte-identical to the
    /// candidate that was scored.
    pub fn greedy(
        &self,
        val: &[f64],
        output: Option<(&Path, bool, &[Request])>,
    ) -> Result<Greedy<f64>> {
        let mut candidates = ScorerCandidates {
            external: self,
            chosen: Vec::new(),
        };
        let search = greedy::search(
            val,
            &mut candidates,
            self.options.rule,
            self.options.speculate,
        )?;
        {
            let mut needed = lock(&self.needed);
            let mut soup: Vec<usize> = search.chosen.first().copied().into_iter().collect();
            for step in &search.steps {
                let mut members = soup.clone();
                members.push(step.candidate);
                if step.kept {
                    soup = members.clone();
                }
                needed.push(members);
            }
            // A speculative trial that failed after a kept one: the sequential search never
            // runs it, so it doesn't fail the search; it is said here, and logged.
            let mut discarded = Vec::new();
            for (members, error) in lock(&self.failed).iter() {
                if !needed.contains(members) {
                    discarded.push(Warning::general(
                        "speculative-trial-failed",
                        None,
                        format!(
                            "the speculative trial of {} failed, but a candidate before it was kept, so the one-at-a-time search never scores it and it was thrown away: {error}",
                            candidate::name(members)
                        ),
                    ));
                }
            }
            drop(needed);
            self.note(discarded);
        }
        if self.options.resume.is_some() && !self.options.keep_candidates {
            self.remove_unneeded_leftovers(&search.chosen);
        }
        if let Some((path, force, also)) = output {
            let warnings = self.ingredients.write(&search.chosen, path, force, also)?;
            self.note(warnings);
        }
        let names = self.names();
        let members: Vec<String> = search.chosen.iter().map(|&i| names[i].clone()).collect();
        let placeholder = if self.ingredients.dirs {
            "SOUP_DIR"
        } else {
            "SOUP.safetensors"
        };
        let merge_command = shell::merge_command(
            search
                .chosen
                .iter()
                .map(|&i| self.ingredients.paths[i].as_path()),
            output.map(|(p, _, _)| p),
            placeholder,
        );
        Ok(Greedy {
            row: Row {
                kind: Kind::GreedySoup,
                name: format!("greedy soup ({})", search.chosen.len()),
                members,
                val: search.val,
                test: None,
            },
            goal: self.options.rule.goal,
            metric: None,
            accept_ties: self.options.rule.accept_ties,
            output: output.map(|(p, _, _)| p.to_path_buf()),
            merge_command,
            search,
        })
    }

    /// Removes what a killed run may have left in the work folder that this resumed search
    /// never wrote again: the candidates it was scoring when it was killed, not logged, which
    /// only a search that reaches them rewrites (and removes). A search resumed with another
    /// `--speculate`, or as `greedy` after `report`, doesn't, and they stayed for good.
    ///
    /// The killed run's soup was, at any time, a start of `chosen` (its decisions came from
    /// the log), so it could have been scoring that start plus any other ingredient, or the
    /// uniform soup of all. Only those names are looked at, and only what carries the tool's
    /// mark goes (as `Written::create` would have replaced it); anything else stays.
    fn remove_unneeded_leftovers(&self, chosen: &[usize]) {
        let n = self.ingredients.paths.len();
        let mut lists = vec![(0..n).collect::<Vec<usize>>()];
        for k in 1..=chosen.len() {
            for c in (0..n).filter(|c| !chosen[..k].contains(c)) {
                let mut members = chosen[..k].to_vec();
                members.push(c);
                lists.push(members);
            }
        }
        for members in lists.iter().filter(|m| m.len() > 1) {
            let path = self
                .ingredients
                .candidate_path(&self.work_dir.path, &candidate::name(members));
            if path.symlink_metadata().is_ok() && candidate::check_leftover(&path).is_ok() {
                let _ = candidate::remove_leftover(&path);
            }
        }
    }

    /// How the scorer ran in this invocation.
    pub fn run_info(&self) -> ScorerRun {
        let stats = lock(&self.stats);
        let wall = match (stats.first, stats.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let ran = lock(&self.ran);
        let mut needed = lock(&self.needed).clone();
        needed.sort();
        needed.dedup();
        // Folded from +0: `sum` starts at -0, which a fully resumed search printed as "-0.0 s".
        let sequential: f64 = needed
            .iter()
            .filter_map(|m| ran.get(m))
            .fold(0.0, |a, b| a + b);
        ScorerRun {
            command: self.scorer.text.clone(),
            jobs: self.options.jobs,
            speculate: self.options.speculate,
            scored: stats.scored,
            resumed: stats.resumed,
            retried: stats.retried,
            scorer_seconds: stats.scorer_seconds,
            sequential_seconds: sequential,
            wall_seconds: wall,
            speedup: if wall > 0.0 { sequential / wall } else { 1.0 },
            log: self.log.as_ref().map(|l| l.path().to_path_buf()),
            kept_in: self.kept_in(),
        }
    }

    /// Where `--keep-candidates` left candidates, if it left any.
    pub fn kept_in(&self) -> Option<PathBuf> {
        let path = &self.work_dir.path;
        let any = std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some());
        (self.options.keep_candidates && any).then(|| path.clone())
    }

    /// Whether candidates go to a temporary folder of this run (no `--work-dir`).
    pub fn work_dir_is_temporary(&self) -> bool {
        self.work_dir.ours
    }

    fn note(&self, found: Vec<Warning>) {
        let mut warnings = lock(&self.warnings);
        for w in found {
            if !warnings.iter().any(|k| k.message == w.message) {
                warnings.push(w);
            }
        }
    }

    /// Scores the uniform soup of each member list: from the log or this run when they have
    /// it, else with up to `jobs` scorers at once. The first failure stops the others (their
    /// candidates are removed) and is the error.
    fn score_all(&self, sets: &[Vec<usize>]) -> Result<Vec<Trial<f64>>> {
        let mut first_error: Option<Error> = None;
        let mut trials = Vec::with_capacity(sets.len());
        for result in self.score_many(sets, Failing::StopsAll)? {
            match result {
                Ok(trial) => trials.push(trial),
                // Runs stopped because another failed say "interrupted"; the failure is
                // the news.
                Err(e) => {
                    let cancelled = matches!(e, Error::Format(model_soup::Error::Interrupted));
                    if first_error.is_none()
                        || (!cancelled
                            && matches!(
                                first_error,
                                Some(Error::Format(model_soup::Error::Interrupted))
                            ))
                    {
                        first_error = Some(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(trials),
        }
    }

    /// Scores each member list as [`External::score_all`] does, but with an outcome each: a
    /// failure stops only the runs of the lists after it (greedy speculation, where a failure
    /// after a kept candidate is thrown away). The error is for Ctrl-C only.
    fn score_each(&self, sets: &[Vec<usize>]) -> Result<Vec<Result<Trial<f64>>>> {
        self.score_many(sets, Failing::StopsLater)
    }

    fn score_many(&self, sets: &[Vec<usize>], failing: Failing) -> Result<Vec<Result<Trial<f64>>>> {
        let mut results: Vec<Option<Result<Trial<f64>>>> = Vec::new();
        results.resize_with(sets.len(), || None);
        let mut todo = Vec::new();
        for (i, members) in sets.iter().enumerate() {
            if let Some((score, entry)) = self
                .logged
                .get(members)
                .and_then(|e| e.score.map(|s| (s, e)))
            {
                results[i] = Some(Ok(Trial {
                    val: score,
                    merge_seconds: entry.write_seconds,
                    eval_seconds: entry.seconds,
                }));
                lock(&self.stats).resumed += 1;
            } else if let Some(trial) = lock(&self.trials).get(members) {
                // Scored earlier in this run (the uniform soup is the greedy soup of every
                // ingredient): the same bytes, so not scored twice, nor given two numbers.
                results[i] = Some(Ok(*trial));
            } else {
                todo.push(i);
            }
        }
        if !todo.is_empty() {
            // One flag per run: a failure sets those of the runs it makes pointless.
            let cancels: Vec<AtomicBool> = todo.iter().map(|_| AtomicBool::new(false)).collect();
            let next = AtomicUsize::new(0);
            // Each run's outcome and the warnings of its candidate's merge, by its position.
            type Done = (usize, Result<Trial<f64>>, Vec<Warning>);
            let done: Mutex<Vec<Done>> = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for slot in 0..self.options.jobs.min(todo.len()) {
                    let (cancels, next, done, todo) = (&cancels, &next, &done, &todo);
                    scope.spawn(move || loop {
                        let k = next.fetch_add(1, Ordering::SeqCst);
                        if k >= todo.len() {
                            break;
                        }
                        let i = todo[k];
                        let mut warnings = Vec::new();
                        let result = if cancels[k].load(Ordering::SeqCst) {
                            Err(model_soup::Error::Interrupted.into())
                        } else {
                            self.score_one(&sets[i], slot, &cancels[k], &mut warnings)
                        };
                        if result.is_err() {
                            let stopped = match failing {
                                Failing::StopsAll => &cancels[..],
                                Failing::StopsLater => &cancels[k + 1..],
                            };
                            for c in stopped {
                                c.store(true, Ordering::SeqCst);
                            }
                        }
                        lock(done).push((i, result, warnings));
                    });
                }
            });
            // In the order of the sets, not the order the runs ended in, so that the warnings
            // are the same whatever the timing (and, for --speculate, those of the one-at-a-time
            // search): the candidates' merge warnings, and the first failure only, since the
            // ones after it may or may not have been stopped by it before they failed.
            let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
            done.sort_by_key(|(i, _, _)| *i);
            let mut failed = false;
            for (i, result, warnings) in done {
                self.note(warnings);
                if let Err(e) = &result {
                    if !failed && !matches!(e, Error::Format(model_soup::Error::Interrupted)) {
                        lock(&self.failed)
                            .push((sets[i].clone(), model_soup::cli::one_line(&e.to_string())));
                    }
                    failed = true;
                }
                results[i] = Some(result);
            }
            if model_soup::soup::interrupted() {
                return Err(model_soup::Error::Interrupted.into());
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every set was scored or failed"))
            .collect())
    }

    /// Writes, scores, logs and removes one candidate; the warnings of its merge go to
    /// `warnings`, whatever the outcome.
    fn score_one(
        &self,
        members: &[usize],
        slot: usize,
        cancel: &AtomicBool,
        warnings: &mut Vec<Warning>,
    ) -> Result<Trial<f64>> {
        let name = candidate::name(members);
        let started = Instant::now();
        {
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.first.get_or_insert(started);
        }
        // An ingredient is scored as it is; a soup is written first, and removed when
        // `written` goes out of scope, however this function returns.
        let (path, _written) = if let [one] = members {
            (self.ingredients.paths[*one].clone(), None)
        } else {
            let path = self.ingredients.candidate_path(&self.work_dir.path, &name);
            let (written, found) = Written::create(
                &self.ingredients,
                members,
                path.clone(),
                self.options.keep_candidates,
            )?;
            warnings.extend(found);
            (path, Some(written))
        };
        let sha256 = match (&self.log, members) {
            (None, _) => String::new(),
            (Some(_), [one]) => self.hashes[*one].clone(),
            (Some(_), _) => candidate::sha256(&path)?,
        };
        let write_seconds = started.elapsed().as_secs_f64();
        let values = Values {
            checkpoint: &path,
            slot,
            name: &name,
            work_dir: &self.work_dir.path,
        };
        let on_retry = |e: &Error| {
            self.stats.lock().unwrap_or_else(|e| e.into_inner()).retried += 1;
            model_soup::cli::say(&format!(
                "warning: {}; retrying (--retries {})",
                model_soup::cli::one_line(&e.to_string()),
                self.scorer.retries
            ));
        };
        let result = self.scorer.score(&values, cancel, &on_retry);
        let names = self.names();
        let entry = |score: Option<f64>, seconds: f64, exit_status, attempts, error| Entry {
            name: name.clone(),
            members: members.to_vec(),
            ingredients: members.iter().map(|&m| names[m].clone()).collect(),
            weights: vec![1.0 / members.len() as f64; members.len()],
            score,
            seconds,
            write_seconds,
            exit_status,
            attempts,
            sha256: sha256.clone(),
            error,
            unix_time: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        };
        match result {
            Ok(run) => {
                if let Some(log) = &self.log {
                    log.append(&entry(
                        Some(run.score),
                        run.seconds,
                        Some(run.exit_status),
                        run.attempts,
                        None,
                    ))?;
                }
                lock(&self.ran).insert(members.to_vec(), run.total_seconds);
                lock(&self.trials).insert(
                    members.to_vec(),
                    Trial {
                        val: run.score,
                        merge_seconds: write_seconds,
                        eval_seconds: run.seconds,
                    },
                );
                {
                    let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                    stats.scored += 1;
                    stats.scorer_seconds += run.total_seconds;
                    stats.last = Some(Instant::now());
                }
                if !self.options.quiet {
                    model_soup::cli::say(&format!(
                        "scored {name}: {} in {:.1} s (slot {slot})",
                        run.score, run.seconds
                    ));
                }
                Ok(Trial {
                    val: run.score,
                    merge_seconds: write_seconds,
                    eval_seconds: run.seconds,
                })
            }
            Err(e) => {
                if let (
                    Some(log),
                    Error::Scorer {
                        exit_status,
                        seconds,
                        ..
                    },
                ) = (&self.log, &e)
                {
                    // The last failed run's status and time, as the fields' docs say.
                    log.append(&entry(
                        None,
                        *seconds,
                        *exit_status,
                        self.scorer.retries + 1,
                        Some(model_soup::cli::one_line(&e.to_string())),
                    ))?;
                }
                Err(e)
            }
        }
    }
}

/// How a failed run stops the others of a batch.
#[derive(Clone, Copy)]
enum Failing {
    /// Every run is needed: the first failure is the batch's, and stops them all.
    StopsAll,
    /// The runs are greedy candidates in order: a failure stops only those after it, which
    /// the search can't use whatever happens (before it, a kept candidate makes the failure
    /// moot, and without one the failure ends the search).
    StopsLater,
}

/// Greedy candidates scored by the external scorer, several at once when speculating.
struct ScorerCandidates<'a> {
    external: &'a External,
    chosen: Vec<usize>,
}

impl ScorerCandidates<'_> {
    fn with(&self, candidate: usize) -> Vec<usize> {
        let mut members = self.chosen.clone();
        members.push(candidate);
        members
    }
}

impl Candidates<f64> for ScorerCandidates<'_> {
    fn start(&mut self, first: usize) -> Result<()> {
        self.chosen = vec![first];
        Ok(())
    }

    fn try_with(&mut self, candidate: usize) -> Result<Trial<f64>> {
        Ok(self.external.score_all(&[self.with(candidate)])?[0])
    }

    fn try_each(&mut self, candidates: &[usize]) -> Result<Vec<Result<Trial<f64>>>> {
        let sets: Vec<Vec<usize>> = candidates.iter().map(|&c| self.with(c)).collect();
        self.external.score_each(&sets)
    }

    fn keep(&mut self, candidate: usize) -> Result<()> {
        self.chosen.push(candidate);
        Ok(())
    }
}

/// Locks `m`; a thread that panicked while holding it left data that is still usable here.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

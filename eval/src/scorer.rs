//! An external scorer: the `--scorer` command template, running it on one checkpoint in its own
//! process group (with a timeout, retries and Ctrl-C), and reading its score from stdout.
//!
//! The template is split into words like a shell would split it (quotes and backslashes, no
//! expansions), and each placeholder is replaced inside its word, so a checkpoint path with
//! spaces or quotes stays one argument. With `--shell` the whole template goes to `sh -c`, each
//! placeholder replaced by its value in single quotes.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::{Error, Result};
use super::shell;

/// What a placeholder stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placeholder {
    /// The candidate's path: a `.safetensors` file or a model directory.
    Checkpoint,
    /// Which of the `--jobs` slots runs it, 0 to N-1 (for `CUDA_VISIBLE_DEVICES={slot}`).
    Slot,
    /// A stable id of the candidate (which ingredients it averages).
    Name,
    /// The `--work-dir`.
    WorkDir,
}

impl Placeholder {
    const ALL: [(&'static str, Placeholder); 4] = [
        ("checkpoint", Placeholder::Checkpoint),
        ("slot", Placeholder::Slot),
        ("name", Placeholder::Name),
        ("work_dir", Placeholder::WorkDir),
    ];
}

/// A piece of a word: text as written, or a placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value(Placeholder),
}

/// A parsed `--scorer` template: words of pieces (one word, the whole text, with `--shell`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    words: Vec<Vec<Piece>>,
    shell: bool,
}

/// The values of one run's placeholders.
#[derive(Clone, Copy, Debug)]
pub struct Values<'a> {
    /// The candidate (or ingredient) to score.
    pub checkpoint: &'a Path,
    /// The job slot running it.
    pub slot: usize,
    /// The candidate's stable id.
    pub name: &'a str,
    /// The folder candidates are written to.
    pub work_dir: &'a Path,
}

impl Values<'_> {
    fn get(&self, p: Placeholder) -> OsString {
        match p {
            Placeholder::Checkpoint => self.checkpoint.as_os_str().to_owned(),
            Placeholder::Slot => self.slot.to_string().into(),
            Placeholder::Name => self.name.into(),
            Placeholder::WorkDir => self.work_dir.as_os_str().to_owned(),
        }
    }
}

impl Template {
    /// Parses `text`: words split as a shell would (unless `shell`), `{checkpoint}`, `{slot}`,
    /// `{name}` and `{work_dir}` recognised, `{{` and `}}` for literal braces. `{checkpoint}`
    /// is required: a scorer that isn't told what to score would score nothing.
    pub fn parse(text: &str, shell: bool) -> Result<Template> {
        let bad = |reason: String| Error::Template {
            flag: "--scorer",
            template: text.to_string(),
            reason,
        };
        let words = if shell {
            vec![text.to_string()]
        } else {
            split_words(text).map_err(bad)?
        };
        if words.is_empty() {
            return Err(bad(
                "it is empty; give the command that scores {checkpoint}".into(),
            ));
        }
        let mut parsed = Vec::with_capacity(words.len());
        for word in &words {
            parsed.push(placeholders(word).map_err(bad)?);
        }
        let has = |p| parsed.iter().flatten().any(|x| *x == Piece::Value(p));
        if !has(Placeholder::Checkpoint) {
            return Err(bad(
                "it has no {checkpoint}; put {checkpoint} where the scorer takes the model's path"
                    .into(),
            ));
        }
        if !shell && parsed[0].iter().any(|p| matches!(p, Piece::Value(_))) {
            return Err(bad(
                "the program name can't be a placeholder; pass --shell to build the command in sh"
                    .into(),
            ));
        }
        Ok(Template {
            words: parsed,
            shell,
        })
    }

    /// The program and its arguments for `values`.
    pub fn argv(&self, values: &Values<'_>) -> Vec<OsString> {
        if self.shell {
            let mut script = Vec::new();
            for piece in &self.words[0] {
                match piece {
                    Piece::Text(t) => script.extend_from_slice(t.as_bytes()),
                    Piece::Value(p) => script.extend(shell::quote(&values.get(*p))),
                }
            }
            return vec!["sh".into(), "-c".into(), OsString::from_vec(script)];
        }
        self.words
            .iter()
            .map(|word| {
                let mut arg = OsString::new();
                for piece in word {
                    match piece {
                        Piece::Text(t) => arg.push(t),
                        Piece::Value(p) => arg.push(values.get(*p)),
                    }
                }
                arg
            })
            .collect()
    }
}

/// Splits `text` into words as sh does, without expansions: spaces, tabs and newlines
/// separate (no other whitespace: a no-break space in a file name is part of it), '...' is
/// literal, "..." keeps \", \\, \$ and \` as the character after the backslash, a backslash
/// outside quotes escapes the next character, and a backslash before a newline, outside single
/// quotes, joins the lines (a template written over several lines).
fn split_words(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("a single quote is not closed".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("a double quote is not closed".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("a double quote is not closed".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                // A line continuation: no character, and no word boundary either.
                Some('\n') => {}
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("it ends with a lone backslash".into()),
            },
            // sh would act on these (a pipe, a redirection, an expansion) where this split
            // passes them to the scorer as text: `score {checkpoint} | tail -1` gave the
            // scorer the arguments `|`, `tail` and `-1`.
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' => {
                return Err(format!(
                    "'{c}' outside quotes is shell syntax, and the template is not run by a shell: pass --shell to run it in sh, or quote it to pass it as text"
                ))
            }
            '~' if word.is_none() => {
                return Err(
                    "a word starting with ~ is expanded by sh, not here: write the path in full, or pass --shell"
                        .into(),
                )
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Finds the placeholders in one word.
fn placeholders(word: &str) -> std::result::Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = word;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            text.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err("a '}' has no '{'; write '}}' for a literal brace".into());
        }
        let Some(end) = tail.find('}') else {
            return Err("a '{' is not closed; write '{{' for a literal brace".into());
        };
        let key = &tail[1..end];
        let Some(&(_, p)) = Placeholder::ALL.iter().find(|(k, _)| *k == key) else {
            return Err(format!(
                "unknown placeholder {{{key}}}; the placeholders are {{checkpoint}}, {{slot}}, {{name}} and {{work_dir}} ('{{{{' for a literal brace)"
            ));
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Value(p));
        rest = &tail[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// Where in the scorer's stdout the score is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// The last non-empty line, as a number.
    LastLine,
    /// A field of a JSON object on stdout (the whole output, or its last line that is one),
    /// by a dotted path such as `results.arc_easy.acc`.
    Json(Vec<String>),
}

impl Reading {
    /// `--scorer-json KEY.PATH`, or the last line when `None`.
    pub fn new(json_path: Option<&str>) -> Result<Reading> {
        let Some(path) = json_path else {
            return Ok(Reading::LastLine);
        };
        let keys: Vec<String> = path.split('.').map(str::to_string).collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(Error::Template {
                flag: "--scorer-json",
                template: path.to_string(),
                reason: "takes keys joined by dots, such as results.arc_easy.acc".into(),
            });
        }
        Ok(Reading::Json(keys))
    }

    /// Reads the score from `stdout`, or says what is wrong with it.
    pub fn score(&self, stdout: &[u8]) -> std::result::Result<f64, String> {
        let text = String::from_utf8_lossy(stdout);
        let value = match self {
            Reading::LastLine => {
                let Some(line) = text.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
                    return Err("printed nothing on stdout; print the score alone on the last line, or pass --scorer-json KEY.PATH".into());
                };
                line.parse::<f64>().map_err(|_| {
                    format!(
                        "printed {:?} as its last line, which is not a number; print the score alone on the last line, or pass --scorer-json KEY.PATH",
                        clip(line, 200)
                    )
                })?
            }
            Reading::Json(keys) => {
                let text = python_floats(&text);
                let object = serde_json::from_str::<serde_json::Value>(text.trim())
                    .ok()
                    .filter(|v| v.is_object())
                    .or_else(|| {
                        text.lines()
                            .rev()
                            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
                            .find(|v| v.is_object())
                    })
                    .ok_or("printed no JSON object on stdout (as the whole output or as one line) for --scorer-json")?;
                let mut at = &object;
                for (i, key) in keys.iter().enumerate() {
                    let next = match at {
                        serde_json::Value::Object(map) => map.get(key),
                        serde_json::Value::Array(items) => {
                            key.parse::<usize>().ok().and_then(|n| items.get(n))
                        }
                        _ => None,
                    };
                    at = next.ok_or_else(|| {
                        format!(
                            "printed JSON without {} (--scorer-json {})",
                            keys[..=i].join("."),
                            keys.join(".")
                        )
                    })?;
                }
                at.as_f64().or_else(|| python_float(at)).ok_or_else(|| {
                    format!(
                        "printed {} at {}, which is not a number",
                        clip(&at.to_string(), 200),
                        keys.join(".")
                    )
                })?
            }
        };
        if !value.is_finite() {
            return Err(format!(
                "printed the score {value}, which is not a finite number"
            ));
        }
        // -0 is 0: the same score, ranked and logged as one (adding +0 turns -0 into +0).
        Ok(value + 0.0)
    }
}

/// Marks a bare `NaN`, `Infinity` or `-Infinity` made into a JSON string by [`python_floats`].
const PYTHON_FLOAT: &str = "\u{0}soup-eval non-finite ";

/// Python's `json.dumps` writes NaN and the infinities as bare `NaN`, `Infinity` and
/// `-Infinity`, which JSON lacks, so one such value anywhere (a metric's stderr over one
/// example, say) made the whole object unreadable: "printed no JSON object". Outside strings
/// they become strings marked with [`PYTHON_FLOAT`], read back by [`python_float`], so the
/// rest of the object is read, and a score that is one of them is refused as not finite. A
/// line ends any string (JSON strings hold no newline), so noise with a stray quote doesn't
/// hide the lines after it.
fn python_floats(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            let word = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|w| rest.starts_with(w));
            if let Some(word) = word {
                out.push_str(&format!("\"\\u0000{}{word}\"", &PYTHON_FLOAT[1..]));
                rest = &rest[word.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
        if c == '\n' {
            (in_string, escaped) = (false, false);
        } else if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
    }
    out
}

/// The value of a string made by [`python_floats`], if `value` is one.
fn python_float(value: &serde_json::Value) -> Option<f64> {
    match value.as_str()?.strip_prefix(PYTHON_FLOAT)? {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(max).collect::<String>())
    }
}

/// How long a scorer gets after SIGTERM (so that `srun` can cancel its job step) before its
/// process group is killed.
pub const GRACE: Duration = Duration::from_secs(5);

/// Stdout kept for reading the score; past it the oldest half is dropped (the last line stays).
const STDOUT_KEPT: usize = 64 << 20;
/// Stderr kept for error messages.
const STDERR_KEPT: usize = 64 << 10;

/// The scorer command and how to run it.
#[derive(Clone, Debug)]
pub struct Scorer {
    /// The template as the user wrote it.
    pub text: String,
    template: Template,
    /// Where the score is on stdout.
    pub reading: Reading,
    /// The longest a run may take.
    pub timeout: Option<Duration>,
    /// How many times a failed run is tried again.
    pub retries: u32,
}

/// One successful scoring.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Run {
    /// The score read from stdout.
    pub score: f64,
    /// Wall seconds of the successful attempt.
    pub seconds: f64,
    /// Wall seconds of every attempt, failed ones included.
    pub total_seconds: f64,
    /// The exit status (0).
    pub exit_status: i32,
    /// Attempts made, 1 when the first one worked.
    pub attempts: u32,
}

/// Why a run stopped early.
enum Stop {
    TimedOut,
    Cancelled,
    /// A process of the scorer's group (this pid) was stopped for using the terminal.
    AtTerminal(u32),
}

impl Scorer {
    /// A scorer from a template, read as described in [`Template::parse`].
    pub fn new(
        text: &str,
        shell: bool,
        reading: Reading,
        timeout: Option<Duration>,
        retries: u32,
    ) -> Result<Scorer> {
        Ok(Scorer {
            text: text.to_string(),
            template: Template::parse(text, shell)?,
            reading,
            timeout,
            retries,
        })
    }

    /// Whether the template runs through `sh -c`.
    pub fn shell(&self) -> bool {
        self.template.shell
    }

    /// The `--scorer-json` path, if the score is a JSON field.
    pub fn json_path(&self) -> Option<String> {
        match &self.reading {
            Reading::LastLine => None,
            Reading::Json(keys) => Some(keys.join(".")),
        }
    }

    /// The command line for `values`, for messages.
    pub fn show(&self, values: &Values<'_>) -> String {
        shell::command(&self.template.argv(values))
    }

    /// Scores `values.checkpoint`, trying up to `retries` more times after a failure.
    /// `cancel` (or Ctrl-C) stops the run: its process group is terminated and the result is
    /// [`model_soup::Error::Interrupted`]. `on_retry` hears about each failure that is retried.
    pub fn score(
        &self,
        values: &Values<'_>,
        cancel: &AtomicBool,
        on_retry: &(dyn Fn(&Error) + Sync),
    ) -> Result<Run> {
        let mut total = 0.0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = self.run_once(values, cancel);
            let seconds = started.elapsed().as_secs_f64();
            total += seconds;
            match result {
                Ok((score, exit_status)) => {
                    return Ok(Run {
                        score,
                        seconds,
                        total_seconds: total,
                        exit_status,
                        attempts: attempt,
                    })
                }
                Err(e @ Error::Scorer { .. }) if attempt <= self.retries => on_retry(&e),
                Err(e) => return Err(e),
            }
        }
    }

    fn run_once(&self, values: &Values<'_>, cancel: &AtomicBool) -> Result<(f64, i32)> {
        let argv = self.template.argv(values);
        let shown = shell::command(&argv);
        let started = Instant::now();
        let exit_status = std::cell::Cell::new(None);
        let failed = |problem: String, stderr: &[u8]| Error::Scorer {
            command: shown.clone(),
            problem,
            stderr: stderr_tail(stderr),
            exit_status: exit_status.get(),
            seconds: started.elapsed().as_secs_f64(),
        };
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("SOUP_CHECKPOINT", values.checkpoint)
            .env("SOUP_SLOT", values.slot.to_string())
            .env("SOUP_CANDIDATE", values.name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a timeout or Ctrl-C stops it and everything it started,
            // and a Ctrl-C at the terminal reaches us, not it, so we decide how it ends.
            .process_group(0)
            .spawn()
            .map_err(|e| Error::ScorerStart {
                command: shown.clone(),
                source: e,
            })?;
        let stdout = Reader::start(child.stdout.take(), STDOUT_KEPT);
        let stderr = Reader::start(child.stderr.take(), STDERR_KEPT);
        let waited = wait(&mut child, self.timeout, cancel);
        let group = child.id();
        if waited.is_err() {
            stop_group(&mut child);
        }
        // A process the scorer left behind may hold its pipes open: give it a moment, then end
        // the group so that reading the output can finish. One in a session of its own
        // (setsid, a server started with start_new_session) survives that, so the wait is
        // bounded: what was read is used, and that process is left to run.
        let drained = |within: Duration| {
            let deadline = Instant::now() + within;
            while !(stdout.finished() && stderr.finished()) {
                if Instant::now() >= deadline
                    || cancel.load(Ordering::SeqCst)
                    || model_soup::soup::interrupted()
                {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            true
        };
        if !drained(Duration::from_secs(2)) {
            let _ = model_soup::format::signal_group(group, true);
            if !drained(Duration::from_secs(1)) && waited.is_ok() {
                model_soup::cli::say(&format!(
                    "warning: the scorer `{shown}` exited, but a process it started still holds its stdout or stderr (one in a session of its own, which stopping the scorer's process group doesn't reach); its output so far is used, and that process is left running"
                ));
            }
        }
        let out = stdout.take();
        let err = stderr.take();
        let status = match waited {
            Ok(status) => status,
            Err(Stop::Cancelled) => return Err(model_soup::Error::Interrupted.into()),
            Err(Stop::AtTerminal(pid)) => {
                return Err(failed(
                    format!("stopped to read the terminal (process {pid} was stopped by SIGTTIN or SIGTTOU, and would have waited forever) and was stopped with its process group; scorers can't be interactive: answer its question beforehand (an ssh host key, a login), or give the answer by a flag, a file or the environment"),
                    &err,
                ))
            }
            Err(Stop::TimedOut) => {
                return Err(failed(
                    format!(
                    "ran longer than --scorer-timeout {} s and was stopped with its process group",
                    self.timeout.map_or(0.0, |t| t.as_secs_f64())
                ),
                    &err,
                ))
            }
        };
        exit_status.set(status.code());
        if !status.success() {
            let problem = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                _ => "failed".into(),
            };
            return Err(failed(problem, &err));
        }
        let score = self.reading.score(&out).map_err(|p| failed(p, &err))?;
        Ok((score, status.code().unwrap_or(0)))
    }
}

/// Waits for `child`, up to `timeout`, while `cancel` and Ctrl-C are unset, and while no
/// process of its group is stopped for reading the terminal.
fn wait(
    child: &mut Child,
    timeout: Option<Duration>,
    cancel: &AtomicBool,
) -> std::result::Result<ExitStatus, Stop> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    // Only a process with a controlling terminal can be stopped for reading it; the scorer
    // has ours, if we have one.
    let terminal = has_terminal(std::process::id());
    let mut next_look = started + Duration::from_millis(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            // The child can't be waited for: treat it like a cancelled run, and stop it.
            Err(_) => return Err(Stop::Cancelled),
        }
        if cancel.load(Ordering::SeqCst) || model_soup::soup::interrupted() {
            return Err(Stop::Cancelled);
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return Err(Stop::TimedOut);
        }
        if terminal && Instant::now() >= next_look {
            if let Some(pid) = stopped_at_terminal(child.id()) {
                return Err(Stop::AtTerminal(pid));
            }
            next_look = Instant::now() + Duration::from_millis(500);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, pgrp, session,
/// tty_nr, tpgid, ...
fn proc_stat(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split(' ').map(str::to_string).collect())
}

/// Whether process `pid` has a controlling terminal.
fn has_terminal(pid: u32) -> bool {
    proc_stat(&pid.to_string())
        .and_then(|f| f.get(4).and_then(|t| t.parse::<i64>().ok()))
        .is_some_and(|tty| tty != 0)
}

/// A process of group `pgid` that is stopped (state `T`) while its group is in the background
/// of its terminal: stopped by SIGTTIN or SIGTTOU for using the terminal, which it would wait
/// for forever, since nobody brings a scorer to the foreground.
fn stopped_at_terminal(pgid: u32) -> Option<u32> {
    let group = pgid.to_string();
    group_members(pgid)?
        .into_iter()
        .find(|(_, f)| f.len() > 5 && f[0] == "T" && f[4] != "0" && f[5] != group)
        .map(|(pid, _)| pid)
}

/// The processes of group `pgid`, each with its [`proc_stat`] fields; `None` where /proc
/// can't be read.
fn group_members(pgid: u32) -> Option<Vec<(u32, Vec<String>)>> {
    let group = pgid.to_string();
    let members = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let f = proc_stat(&pid.to_string())?;
            (f.len() > 2 && f[2] == group).then_some((pid, f))
        })
        .collect();
    Some(members)
}

/// SIGTERM (with SIGCONT, so that a stopped member acts on it) to the child's process group,
/// SIGKILL after [`GRACE`], then reaps the child.
///
/// The grace is the group's, not the child's: `sh -c '... wrapper ...'` dies of the SIGTERM
/// at once while the wrapper's trap is still cancelling its cluster job, and killing the group
/// then would leave that job running. So the SIGKILL waits until every member has exited or
/// the grace is over.
fn stop_group(child: &mut Child) {
    let group = child.id();
    let _ = model_soup::format::signal_group(group, false);
    let _ = model_soup::format::continue_group(group);
    let deadline = Instant::now() + GRACE;
    loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            match group_members(group) {
                // Nobody left to kill; the group's number may even be another group's by now.
                Some(members) if members.is_empty() => return,
                // Zombies have finished: they wait for their parent, not for us.
                Some(members) if members.iter().all(|(_, f)| f[0] == "Z" || f[0] == "X") => break,
                Some(_) => {}
                // Without /proc, the child's exit is all we can see.
                None => break,
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = model_soup::format::signal_group(group, true);
    let _ = child.wait();
}

/// A pipe read to its end on a thread, keeping at most about `keep` bytes (the latest). What
/// was read so far can be taken at any time, so a pipe that another process holds open
/// forever doesn't hold up the run.
struct Reader {
    kept: Arc<Mutex<Vec<u8>>>,
    thread: JoinHandle<()>,
}

impl Reader {
    fn start(pipe: Option<impl Read + Send + 'static>, keep: usize) -> Reader {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&kept);
        let thread = std::thread::spawn(move || {
            let Some(mut pipe) = pipe else { return };
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut kept = shared.lock().unwrap_or_else(|e| e.into_inner());
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > keep {
                            let cut = kept.len() - keep / 2;
                            kept.drain(..cut);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Reader { kept, thread }
    }

    /// Whether the pipe was read to its end.
    fn finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// What was read so far; a thread still reading is left to finish on its own.
    fn take(self) -> Vec<u8> {
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
        std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The last lines of a scorer's stderr, for an error message.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    let chars: Vec<char> = tail.chars().collect();
    if chars.len() > 1000 {
        format!(
            "...{}",
            chars[chars.len() - 1000..].iter().collect::<String>()
        )
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn values<'a>(checkpoint: &'a Path) -> Values<'a> {
        Values {
            checkpoint,
            slot: 3,
            name: "soup-0-2",
            work_dir: Path::new("/w d"),
        }
    }

    #[test]
    fn words_are_split_like_a_shell_and_placeholders_stay_inside_their_word() {
        let t = Template::parse(
            r#"python "my score.py" --model={checkpoint} 'a b' x\ y --gpu {slot} {{lit}}"#,
            false,
        )
        .unwrap();
        let path = Path::new("/tmp/it's a \"dir\"/c.safetensors");
        let argv = t.argv(&values(path));
        let expected: Vec<OsString> = [
            "python",
            "my score.py",
            "--model=/tmp/it's a \"dir\"/c.safetensors",
            "a b",
            "x y",
            "--gpu",
            "3",
            "{lit}",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(argv, expected);
    }

    /// Shell syntax outside quotes (a pipe, a redirection, `$`, a leading `~`) was passed to
    /// the scorer as arguments; it is refused, naming --shell.
    #[test]
    fn shell_syntax_outside_quotes_is_refused_naming_shell() {
        for text in [
            "score {checkpoint} | tail -1",
            "score {checkpoint} 2>/dev/null",
            "score {checkpoint} > out.txt",
            "score {checkpoint}; echo done",
            "score {checkpoint} && true",
            "score --out $HOME/x {checkpoint}",
            "score `pwd` {checkpoint}",
            "~/bin/score {checkpoint}",
            "score {checkpoint} <in",
        ] {
            let err = Template::parse(text, false).unwrap_err().to_string();
            assert!(err.contains("--shell"), "{text}: {err}");
            Template::parse(text, true).unwrap();
        }
        // Quoted, escaped or inside a word, they are text, as sh has them.
        let t = Template::parse(r#"score '|' "a>b" \; x~y "$" {checkpoint}"#, false).unwrap();
        let argv = t.argv(&values(Path::new("c.safetensors")));
        assert_eq!(
            argv[1..6],
            ["|", "a>b", ";", "x~y", "$"].map(OsString::from)
        );
    }

    /// Templates are split as sh splits them: a backslash before a newline used to become a
    /// word of its own (a scorer written over several lines got an argument "\n"), "\$" kept
    /// its backslash, and a no-break space split a word in two.
    #[test]
    fn words_split_as_sh_splits_them() {
        for text in [
            "a  b\tc",
            "python score.py \\\n    --model x \\\n    --gpu 0",
            "ab\\\ncd \\\n",
            r#""a\$b" "c\`d" "e\\f" "g\hi" "j\"k""#,
            "\"l\\\nm\" 'n\\\no' p\\ q",
            "my\u{a0}score.py x\u{2003}y",
            "'' \"\" x\\'y",
        ] {
            let sh = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("for a in {text}; do printf '%s\\0' \"$a\"; done"))
                .output()
                .unwrap();
            assert!(sh.status.success(), "{text:?}");
            let expected: Vec<String> = String::from_utf8(sh.stdout)
                .unwrap()
                .split_terminator('\0')
                .map(str::to_string)
                .collect();
            assert_eq!(split_words(text).unwrap(), expected, "{text:?}");
        }
    }

    /// Python's json.dumps writes NaN and infinities as bare words, which JSON lacks: one in
    /// any field (a metric's stderr) made the scorer's whole object "no JSON object".
    #[test]
    fn python_nan_and_infinities_in_json_are_read_as_python_wrote_them() {
        let json = Reading::new(Some("results.arc_easy.acc,none")).unwrap();
        let out = br#"{"results": {"arc_easy": {"acc,none": 0.5, "acc_stderr,none": NaN, "x": [Infinity, -Infinity]}}}"#;
        assert_eq!(json.score(out), Ok(0.5));
        // Pretty-printed over several lines; and after noise with a stray quote.
        let out =
            b"{\n  \"results\": {\n    \"arc_easy\": {\"acc,none\": 0.25, \"s\": NaN}\n  }\n}\n";
        assert_eq!(json.score(out), Ok(0.25));
        let out = b"noise \"\n{\"results\": {\"arc_easy\": {\"acc,none\": 0.75, \"s\": NaN}}}\n";
        assert_eq!(json.score(out), Ok(0.75));
        for (word, shown) in [("NaN", "NaN"), ("Infinity", "inf"), ("-Infinity", "-inf")] {
            let out = format!(r#"{{"results": {{"arc_easy": {{"acc,none": {word}}}}}}}"#);
            let e = json.score(out.as_bytes()).unwrap_err();
            assert!(
                e.contains(&format!("the score {shown}, which is not a finite number")),
                "{e}"
            );
        }
        // In strings they stay text.
        let out = br#"{"results": {"arc_easy": {"acc,none": "NaN", "note": "Infinity \" NaN"}}}"#;
        let e = json.score(out).unwrap_err();
        assert!(e.contains(r#"printed "NaN" at"#), "{e}");
    }

    #[test]
    fn a_non_utf8_path_is_passed_through_byte_for_byte() {
        let raw = OsString::from_vec(b"/tmp/\xff\xfe.safetensors".to_vec());
        let t = Template::parse("score {checkpoint}", false).unwrap();
        let argv = t.argv(&values(Path::new(&raw)));
        assert_eq!(argv[1], raw);
        let t = Template::parse("score {checkpoint}", true).unwrap();
        let argv = t.argv(&values(Path::new(&raw)));
        assert_eq!(
            argv[2].as_bytes(),
            b"score '/tmp/\xff\xfe.safetensors'".as_slice()
        );
        // Shown as a word bash reads back as the same bytes, never a panic.
        assert!(shell::command(&argv).ends_with(r"$'score \x27/tmp/\xff\xfe.safetensors\x27'"));
    }

    #[test]
    fn shell_mode_quotes_values_so_they_stay_data() {
        let t = Template::parse("echo {checkpoint} | wc -c", true).unwrap();
        let argv = t.argv(&values(Path::new("a'; rm -rf x; '")));
        assert_eq!(argv[0], "sh");
        assert_eq!(argv[2], r"echo 'a'\''; rm -rf x; '\''' | wc -c");
    }

    #[test]
    fn bad_templates_are_refused_with_the_fix() {
        for (text, needle) in [
            ("", "empty"),
            ("score model.safetensors", "no {checkpoint}"),
            ("score {ckpt}", "unknown placeholder {ckpt}"),
            ("score {checkpoint", "not closed"),
            ("score 'x {checkpoint}", "single quote"),
            ("score {checkpoint} }", "has no '{'"),
            ("{checkpoint} --x", "program name"),
        ] {
            let e = Template::parse(text, false).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_score_is_the_last_line_or_a_json_field() {
        let last = Reading::LastLine;
        assert_eq!(last.score(b"loading...\n0.8125\n\n"), Ok(0.8125));
        assert_eq!(last.score(b"  -1.5e-3  "), Ok(-1.5e-3));
        assert!(last.score(b"0.5\ndone\n").unwrap_err().contains("\"done\""));
        assert!(last.score(b"").unwrap_err().contains("nothing"));
        assert!(last.score(b"NaN\n").unwrap_err().contains("not a finite"));
        assert!(last.score(b"inf\n").unwrap_err().contains("not a finite"));
        let json = Reading::new(Some("results.arc_easy.acc")).unwrap();
        let out = br#"{"results": {"arc_easy": {"acc": 0.75, "acc_stderr": 0.01}}}"#;
        assert_eq!(json.score(out), Ok(0.75));
        let mixed = b"log line\n{\"results\": {\"arc_easy\": {\"acc\": 0.5}}}\n";
        assert_eq!(json.score(mixed), Ok(0.5));
        let e = json
            .score(br#"{"results": {"arc": {"acc": 1}}}"#)
            .unwrap_err();
        assert!(e.contains("results.arc_easy"), "{e}");
        let e = json
            .score(br#"{"results": {"arc_easy": {"acc": "high"}}}"#)
            .unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let e = Reading::new(Some("a..b")).unwrap_err().to_string();
        assert!(e.starts_with("--scorer-json \"a..b\": takes keys"), "{e}");
        for minus_zero in [&b"-0.0\n"[..], b"-0", b"-0e5"] {
            assert_eq!(last.score(minus_zero).unwrap().to_bits(), 0f64.to_bits());
        }
        let json_zero = Reading::new(Some("s")).unwrap().score(br#"{"s": -0.0}"#);
        assert_eq!(json_zero.unwrap().to_bits(), 0f64.to_bits());
        let list = Reading::new(Some("scores.1")).unwrap();
        assert_eq!(list.score(br#"{"scores": [1, 2.5]}"#), Ok(2.5));
    }
}

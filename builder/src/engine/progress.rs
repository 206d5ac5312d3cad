//! Progress on stderr, and the parser of the classic builder's log.
//!
//! [`Progress`] is the display: on a terminal one status line redrawn in place (`[step 5/20]
//! RUN … | last output line`), elsewhere (CI logs) one line per step, optionally every output
//! line ([`ProgressMode::Verbose`]), or nothing. It never uses colour, so `NO_COLOR` holds.
//!
//! [`BuildLog`] reads the engine's build stream: fragments of text that are not line-aligned and
//! carry `\r` progress bars. It tracks the current `Step N/M : INSTRUCTION`, keeps every line (the
//! full log, for the error report and the log file) and the last [`TAIL_LINES`] lines of the
//! current step, and reports the intermediate images and containers the engine creates so the
//! caller can journal them (a killed run's leftovers are removed by the next run).

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::EngineError;

/// Lines of a failed step's output kept for the error.
pub const TAIL_LINES: usize = 30;

/// How much progress to show on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// [`ProgressMode::Tty`] when stderr is a terminal (and `TERM` is not `dumb`), else
    /// [`ProgressMode::Lines`].
    #[default]
    Auto,
    /// One status line redrawn in place, plus a line per phase.
    Tty,
    /// A line per phase and per build step: for logs.
    Lines,
    /// Every line of the build output.
    Verbose,
    /// Nothing.
    Quiet,
}

/// The progress display. Output errors are ignored: progress must never fail a build.
#[derive(Debug)]
pub struct Progress {
    mode: ProgressMode,
    /// Characters of the status line currently drawn (Tty mode).
    drawn: bool,
    last_draw: Option<Instant>,
    width: usize,
    started: Instant,
}

impl Progress {
    /// A display in `mode` (`Auto` is resolved here).
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto => {
                let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
                if std::io::stderr().is_terminal() && !dumb { ProgressMode::Tty } else { ProgressMode::Lines }
            }
            m => m,
        };
        let width =
            std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).filter(|&w: &usize| w >= 40).unwrap_or(100);
        Self { mode, drawn: false, last_draw: None, width, started: Instant::now() }
    }

    /// The resolved mode.
    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    /// A permanent line (a phase starting or ending), prefixed with the elapsed time.
    pub fn message(&mut self, text: &str) {
        if self.mode == ProgressMode::Quiet {
            return;
        }
        self.clear();
        let secs = self.started.elapsed().as_secs();
        let _ = writeln!(std::io::stderr().lock(), "{:>4}s {text}", secs);
    }

    /// A transient status (Tty only; at most 10 redraws a second).
    pub fn status(&mut self, text: &str) {
        if self.mode != ProgressMode::Tty {
            return;
        }
        let now = Instant::now();
        if self.last_draw.is_some_and(|t| now.duration_since(t) < Duration::from_millis(100)) {
            return;
        }
        self.last_draw = Some(now);
        let line = truncate(text, self.width.saturating_sub(1));
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K{line}");
        self.drawn = true;
    }

    /// One line of tool output: printed in Verbose mode, shown as status on a terminal.
    pub fn output(&mut self, context: &str, line: &str) {
        match self.mode {
            ProgressMode::Verbose => {
                let _ = writeln!(std::io::stderr().lock(), "       {line}");
            }
            ProgressMode::Tty => self.status(&format!("{context} | {}", line.trim())),
            _ => {}
        }
    }

    /// Removes the status line, if one is drawn.
    pub fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            self.drawn = false;
            self.last_draw = None;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// At most `max` characters of `s`, with `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Something the engine created during a build, reported as soon as the log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// A step ran in this intermediate container (`---> Running in <id>`).
    Container(String),
    /// A step committed this intermediate image (`---> <id>`).
    Image(String),
}

/// State of one build's log.
#[derive(Debug, Default)]
pub struct BuildLog {
    pending: String,
    step: u32,
    total: u32,
    instruction: String,
    tail: VecDeque<String>,
    full: Vec<String>,
}

impl BuildLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every complete line so far.
    pub fn lines(&self) -> &[String] {
        &self.full
    }

    /// The current step: number, total, instruction.
    pub fn step(&self) -> (u32, u32, &str) {
        (self.step, self.total, &self.instruction)
    }

    /// Feeds a fragment of the `stream` field; returns what the complete lines revealed.
    pub fn feed(&mut self, fragment: &str, progress: &mut Progress) -> Vec<BuildEvent> {
        self.pending.push_str(fragment);
        let mut events = Vec::new();
        while let Some(end) = self.pending.find('\n') {
            let raw: String = self.pending.drain(..=end).collect();
            let line = visible(&raw[..raw.len() - 1]);
            if let Some(e) = self.line(line, progress) {
                events.push(e);
            }
        }
        // A progress bar without newline yet: show it, but keep it pending.
        if !self.pending.is_empty() && self.step > 0 {
            let shown = visible(&self.pending).to_owned();
            progress.status(&format!("{} | {}", self.context(), shown.trim()));
        }
        events
    }

    /// Flushes an unterminated last line.
    pub fn finish(&mut self, progress: &mut Progress) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.line(visible(&rest), progress);
        }
    }

    fn context(&self) -> String {
        format!("[step {}/{}] {}", self.step, self.total, truncate(&self.instruction, 50))
    }

    fn line(&mut self, line: &str, progress: &mut Progress) -> Option<BuildEvent> {
        self.full.push(line.to_owned());
        if let Some((step, total, instruction)) = parse_step(line) {
            self.step = step;
            self.total = total;
            self.instruction = instruction.to_owned();
            self.tail.clear();
            progress.message(&format!("[{step}/{total}] {}", truncate(instruction, 150)));
            return None;
        }
        if let Some(rest) = line.strip_prefix(" ---> ") {
            let rest = rest.trim();
            if let Some(id) = rest.strip_prefix("Running in ") {
                return Some(BuildEvent::Container(id.trim().to_owned()));
            }
            // After a FROM step the id is the base image's, which is not this build's to remove.
            let from_step = self.instruction.get(..5).is_some_and(|k| k.eq_ignore_ascii_case("FROM "));
            if rest.len() >= 12 && rest.bytes().all(|b| b.is_ascii_hexdigit()) && !from_step {
                return Some(BuildEvent::Image(rest.to_owned()));
            }
            return None;
        }
        if line.starts_with("Removing intermediate container ") || line.starts_with("Successfully ") {
            return None;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
        let context = self.context();
        progress.output(&context, line);
        None
    }

    /// The error for a build that failed with the engine's `message`.
    pub fn failure(&mut self, message: &str, progress: &mut Progress) -> EngineError {
        self.finish(progress);
        if super::error::says_out_of_disk(message) {
            return EngineError::OutOfDisk {
                operation: format!(
                    "building (step {}/{}: {})",
                    self.step,
                    self.total,
                    truncate(&self.instruction, 120)
                ),
                message: message.trim().to_owned(),
                data_root: None,
            };
        }
        EngineError::BuildStepFailed {
            step: self.step,
            total: self.total,
            instruction: truncate(&self.instruction, 400),
            message: message.trim().to_owned(),
            tail: self.tail.iter().cloned().collect(),
        }
    }
}

/// What a terminal would show of a line with `\r` rewrites: the last non-empty segment.
fn visible(line: &str) -> &str {
    let line = line.strip_suffix('\r').unwrap_or(line);
    line.rsplit('\r').find(|s| !s.trim().is_empty()).unwrap_or("")
}

/// `Step 5/20 : RUN apt-get update` → (5, 20, `RUN apt-get update`).
fn parse_step(line: &str) -> Option<(u32, u32, &str)> {
    let rest = line.strip_prefix("Step ")?;
    let (numbers, instruction) = rest.split_once(" : ")?;
    let (n, m) = numbers.split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?, instruction.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Progress {
        Progress::new(ProgressMode::Quiet)
    }

    #[test]
    fn steps_events_and_tail_from_unaligned_fragments() {
        let mut log = BuildLog::new();
        let mut p = quiet();
        let mut events = Vec::new();
        let stream = "Step 1/3 : FROM capsem-base:0123\n ---> 5dffef13f98a\nStep 2/3 : RUN apt-get upd\
                      ate\n ---> Running in 715b42022ebd\nHit:1 http://deb.debian.org/debian bookworm InRelease\n\
                      Get:2 x 10%\rGet:2 x 100%\nRemoving intermediate container 715b42022ebd\n ---> 79ea86c78965\n\
                      Step 3/3 : RUN false\n ---> Running in aaaaaaaaaaaa\nboom";
        // Split at awkward places: inside words, inside "\r", inside the arrow.
        for chunk in stream.as_bytes().chunks(7) {
            events.extend(log.feed(std::str::from_utf8(chunk).unwrap(), &mut p));
        }
        assert_eq!(
            events,
            vec![
                // No event for 5dffef13f98a: that is the FROM image.
                BuildEvent::Container("715b42022ebd".into()),
                BuildEvent::Image("79ea86c78965".into()),
                BuildEvent::Container("aaaaaaaaaaaa".into()),
            ]
        );
        assert!(log.lines().contains(&"Get:2 x 100%".to_owned()), "{:?}", log.lines());
        assert_eq!(log.step(), (3, 3, "RUN false"));
        let err = log.failure("The command '/bin/sh -c false' returned a non-zero code: 1", &mut p);
        let EngineError::BuildStepFailed { step, total, instruction, tail, .. } = &err else { panic!("{err}") };
        assert_eq!((*step, *total, instruction.as_str()), (3, 3, "RUN false"));
        assert_eq!(tail, &vec!["boom".to_owned()], "only the failing step's output");
    }

    #[test]
    fn tail_keeps_the_last_lines_and_disk_full_is_its_own_error() {
        let mut log = BuildLog::new();
        let mut p = quiet();
        log.feed("Step 4/9 : RUN big\n", &mut p);
        for i in 0..100 {
            log.feed(&format!("line {i}\n"), &mut p);
        }
        let EngineError::BuildStepFailed { tail, .. } = log.failure("exit 1", &mut p) else { panic!() };
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last().unwrap(), "line 99");
        assert_eq!(tail.first().unwrap(), &format!("line {}", 100 - TAIL_LINES));
        let e = log.failure("failed to copy files: write /x: no space left on device", &mut p);
        assert!(e.is_out_of_disk(), "{e}");
        assert!(e.to_string().contains("step 4/9: RUN big"), "{e}");
    }

    #[test]
    fn carriage_returns_keep_what_a_terminal_shows() {
        assert_eq!(visible("a 10%\rb 50%\rc 100%"), "c 100%");
        assert_eq!(visible("done\r\r"), "done");
        assert_eq!(parse_step("Step 12/30 : COPY a b"), Some((12, 30, "COPY a b")));
        assert_eq!(parse_step("Stepping"), None);
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}

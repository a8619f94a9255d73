//! The live display of a run: one line per step with its state and time.
//! On a terminal the lines update in place (indicatif); otherwise each
//! state change is printed once, so logs and CI output stay readable.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use weir_store::StepStatus;

/// What the runner reports as it goes.
pub trait Progress: Send + Sync {
    fn run_started(&self, _run_id: &str, _steps: &[String]) {}
    /// `reason` says why the step runs rather than reusing an earlier result.
    fn step_running(&self, _step: &str, _reason: &str) {}
    /// The step reused the outputs of an earlier run with the same cache key.
    fn step_cached(&self, _step: &str, _from_run: &str) {}
    fn warning(&self, _text: &str) {}
    /// On resume: the step succeeded in an earlier attempt at this run.
    fn step_done_earlier(&self, _step: &str) {}
    /// Attempt `attempt` of `attempts` starts after `wait`, because of `why`.
    fn step_retrying(
        &self,
        _step: &str,
        _attempt: i64,
        _attempts: u32,
        _wait: Duration,
        _why: &str,
    ) {
    }
    fn step_finished(&self, _step: &str, _status: StepStatus, _seconds: f64, _error: Option<&str>) {
    }
}

/// Reports nothing (for `--json` and tests).
pub struct Quiet;
impl Progress for Quiet {}

pub struct Display {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    live: bool,
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}

impl Display {
    pub fn new() -> Self {
        let live = std::io::stderr().is_terminal();
        let target = if live {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Display {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
            live,
        }
    }

    /// Shows a step's final line: in place on a terminal, printed otherwise.
    fn finish(&self, step: &str, symbol: &str, line: String) {
        match self.bar(step) {
            Some(bar) => {
                bar.set_message(line);
                bar.set_style(
                    ProgressStyle::with_template("{prefix:.bold} {msg}").expect("valid template"),
                );
                bar.set_prefix(format!("{symbol} {step}"));
                bar.finish();
            }
            None => eprintln!("{symbol} {step} {line}"),
        }
    }

    fn bar(&self, step: &str) -> Option<ProgressBar> {
        self.bars.lock().expect("bars").get(step).cloned()
    }
}

fn symbol(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Succeeded => "✓",
        StepStatus::Failed => "✗",
        StepStatus::Skipped => "-",
        StepStatus::Pending => "·",
        StepStatus::Running => "▸",
    }
}

impl Progress for Display {
    fn run_started(&self, run_id: &str, steps: &[String]) {
        eprintln!("run {run_id}: {} steps", steps.len());
        if !self.live {
            return;
        }
        let width = steps.iter().map(|s| s.len()).max().unwrap_or(4);
        let style =
            ProgressStyle::with_template(&format!("{{spinner}} {{prefix:<{width}}} {{msg}}"))
                .expect("valid template")
                .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ");
        let mut bars = self.bars.lock().expect("bars");
        for step in steps {
            let bar = self.multi.add(
                ProgressBar::new_spinner()
                    .with_style(style.clone())
                    .with_prefix(step.clone()),
            );
            bar.set_message("pending");
            bars.insert(step.clone(), bar);
        }
    }

    fn step_running(&self, step: &str, reason: &str) {
        match self.bar(step) {
            Some(bar) => {
                bar.set_message(format!("running ({reason})"));
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            None => eprintln!("▸ {step} running ({reason})"),
        }
    }

    fn step_cached(&self, step: &str, from_run: &str) {
        self.finish(
            step,
            "✓",
            format!("cached (from run {})", &from_run[..from_run.len().min(12)]),
        );
    }

    fn warning(&self, text: &str) {
        self.multi.suspend(|| eprintln!("warning: {text}"));
    }

    fn step_done_earlier(&self, step: &str) {
        self.finish(step, "✓", "succeeded earlier in this run".to_string());
    }

    fn step_retrying(&self, step: &str, attempt: i64, attempts: u32, wait: Duration, why: &str) {
        let line = format!(
            "retrying in {:.1}s (attempt {attempt}/{attempts}; {why})",
            wait.as_secs_f64()
        );
        match self.bar(step) {
            Some(bar) => bar.set_message(line),
            None => eprintln!("↻ {step} {line}"),
        }
    }

    fn step_finished(&self, step: &str, status: StepStatus, seconds: f64, error: Option<&str>) {
        let line = match (status, error) {
            (StepStatus::Skipped, Some(why)) => format!("skipped ({why})"),
            (StepStatus::Failed, Some("cancelled")) => "cancelled".to_string(),
            (StepStatus::Failed, _) => format!("failed after {seconds:.2}s"),
            _ => format!("{status} in {seconds:.2}s"),
        };
        self.finish(step, symbol(status), line);
    }
}

/// A counter for long maintenance work (`weir fsck`, `weir gc`, `weir
/// backup`): on a terminal, a bar on stderr; otherwise (or `hidden`, for
/// `--json`) nothing, since its end state is printed anyway.
pub fn counter(what: &str, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    ProgressBar::new(0).with_style(
        ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}} {{eta}}"))
            .expect("valid template"),
    )
}

/// What long work reports to a [`counter`]: done of total so far.
pub fn advance(bar: &ProgressBar) -> impl FnMut(u64, u64) + '_ {
    |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }
}

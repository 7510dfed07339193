//! Step lines on stderr while a lab comes up (eprintln!, so test harnesses capture them).

use std::time::Instant;

pub struct Progress {
    quiet: bool,
    total: usize,
    step: usize,
    started: Instant,
}

impl Progress {
    pub fn new(quiet: bool, total: usize) -> Progress {
        Progress {
            quiet,
            total,
            step: 0,
            started: Instant::now(),
        }
    }

    /// Starts the next numbered step.
    pub fn step(&mut self, what: impl AsRef<str>) {
        self.step += 1;
        if !self.quiet {
            eprintln!(
                "[{}/{}] {} ({:.1}s)",
                self.step,
                self.total,
                what.as_ref(),
                self.started.elapsed().as_secs_f32()
            );
        }
    }

    /// A detail line under the current step.
    pub fn detail(&self, what: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("      {}", what.as_ref());
        }
    }
}

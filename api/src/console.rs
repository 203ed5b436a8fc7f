//! Watching the guest console: a `Write` sink for the serial device that keeps
//! the log and notes when boot milestones appear in it.
//!
//! Owns milestone patterns and their timestamps; it does not interpret anything
//! else the guest prints.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A boot milestone recognised on the console, with the line that shows it.
pub const MILESTONES: &[(&str, &str)] = &[
    ("console", ""),
    ("init", "Run /init as init process"),
    ("agent_ready", "spore-agent: ready"),
    ("panic", "Kernel panic"),
];

#[derive(Default)]
struct State {
    log: Vec<u8>,
    line: Vec<u8>,
    seen: Vec<(&'static str, Instant)>,
}

/// A cloneable console sink. Hand one clone to the VMM, keep one to read from.
#[derive(Clone, Default)]
pub struct ConsoleWatch {
    state: Arc<Mutex<State>>,
    echo: bool,
}

impl ConsoleWatch {
    /// `echo`: also copy the console to stderr.
    pub fn new(echo: bool) -> Self {
        Self {
            state: Arc::default(),
            echo,
        }
    }

    /// When `milestone` (a name from [`MILESTONES`]) first appeared.
    pub fn seen(&self, milestone: &str) -> Option<Instant> {
        let state = self.state.lock().expect("console state poisoned");
        state
            .seen
            .iter()
            .find(|(m, _)| *m == milestone)
            .map(|(_, t)| *t)
    }

    /// Everything the guest printed so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.state.lock().expect("console state poisoned").log)
            .into_owned()
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl State {
    fn mark(&mut self, name: &'static str, now: Instant) {
        if !self.seen.iter().any(|(m, _)| *m == name) {
            self.seen.push((name, now));
        }
    }

    fn feed(&mut self, bytes: &[u8], now: Instant) {
        if !bytes.is_empty() {
            self.mark("console", now);
        }
        self.log.extend_from_slice(bytes);
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let line = String::from_utf8_lossy(&self.line).into_owned();
            for (name, pattern) in MILESTONES.iter().filter(|(_, p)| !p.is_empty()) {
                if line.contains(pattern) {
                    self.mark(name, now);
                }
            }
            self.line.clear();
        }
    }
}

impl Write for ConsoleWatch {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.state
            .lock()
            .expect("console state poisoned")
            .feed(buf, Instant::now());
        if self.echo {
            io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_found_across_split_writes() {
        let mut c = ConsoleWatch::new(false);
        let reader = c.clone();
        assert!(reader.seen("console").is_none());
        c.write_all(b"[    0.1] Linux version\n[   1.0] Run /in")
            .unwrap();
        assert!(reader.seen("console").is_some());
        assert!(reader.seen("init").is_none());
        c.write_all(b"it as init process\n").unwrap();
        assert!(reader.seen("init").is_some());
        assert!(reader.seen("panic").is_none());
        assert!(reader.log().contains("Linux version"));
        assert_eq!(reader.tail(1), "[   1.0] Run /init as init process");
    }
}

//! Prometheus metrics: latency histograms the operations feed, and the text
//! exposition format (version 0.0.4) of everything, including sandboxes by state.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// The daemon's metrics, keyed by isolation where that matters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Time to a running sandbox (a clone under vm, an agent + container start
    /// under process).
    create: Mutex<BTreeMap<String, Histogram>>,
    /// `run` requests: request to exit code.
    run: Mutex<BTreeMap<String, Histogram>>,
}

/// The samples the renderer reads from the supervisor.
pub struct Gauges {
    pub sandboxes_by_state: BTreeMap<&'static str, usize>,
    pub template_memory: Vec<(String, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn observe_create(&self, isolation: &str, d: Duration) {
        lock(&self.create)
            .entry(isolation.into())
            .or_default()
            .observe(d.as_secs_f64());
    }

    pub fn observe_run(&self, isolation: &str, d: Duration) {
        lock(&self.run)
            .entry(isolation.into())
            .or_default()
            .observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP spore_sandboxes Sandboxes by state.\n# TYPE spore_sandboxes gauge\n");
        for (state, n) in &gauges.sandboxes_by_state {
            let _ = writeln!(out, "spore_sandboxes{{state=\"{state}\"}} {n}");
        }
        let histograms = [
            (
                "spore_clone_duration_seconds",
                "Time to a running sandbox: a template clone (vm) or an agent start (process).",
                &self.create,
            ),
            (
                "spore_run_duration_seconds",
                "run requests, from request to exit code.",
                &self.run,
            ),
        ];
        for (name, help, hist) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (isolation, h) in lock(hist).iter() {
                h.render(&mut out, name, &format!("isolation=\"{isolation}\""));
            }
        }
        out.push_str(
            "# HELP spore_template_memory_bytes Resident memory of captured templates.\n\
             # TYPE spore_template_memory_bytes gauge\n",
        );
        for (name, bytes) in &gauges.template_memory {
            let _ = writeln!(
                out,
                "spore_template_memory_bytes{{template=\"{name}\"}} {bytes}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe_run("process", Duration::from_millis(30));
        m.observe_run("process", Duration::from_millis(3));
        m.observe_create("process", Duration::from_secs(100));
        let text = m.render(&Gauges {
            sandboxes_by_state: [("running", 2), ("exited", 0)].into_iter().collect(),
            template_memory: vec![("default".into(), 0)],
        });
        assert!(text.contains("spore_sandboxes{state=\"running\"} 2\n"));
        assert!(text
            .contains("spore_run_duration_seconds_bucket{isolation=\"process\",le=\"0.005\"} 1\n"));
        assert!(text
            .contains("spore_run_duration_seconds_bucket{isolation=\"process\",le=\"0.05\"} 2\n"));
        assert!(text.contains("spore_run_duration_seconds_count{isolation=\"process\"} 2\n"));
        assert!(text
            .contains("spore_clone_duration_seconds_bucket{isolation=\"process\",le=\"30\"} 0\n"));
        assert!(text.contains(
            "spore_clone_duration_seconds_bucket{isolation=\"process\",le=\"+Inf\"} 1\n"
        ));
        assert!(text.contains("spore_template_memory_bytes{template=\"default\"} 0\n"));
    }
}

//! One cgroup v2 directory per container: limits, membership, OOM detection,
//! and killing everything in it.
//!
//! Owns the files under `<cgroup_root>/<id>`. Does not enable controllers for
//! the whole subtree beyond what a container asks for, and never mounts cgroupfs:
//! the agent server prepares `cgroup_root`. Limits are refused, never dropped,
//! when the hierarchy cannot enforce them (hybrid hosts have memory, cpu and
//! pids on cgroup v1, and an empty cgroup v2).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::spec::Limits;

/// cpu.max period in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// How long `kill_and_remove` waits for the cgroup to empty.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "resource limits need the cgroup v2 controller(s) {missing} at {root}, which this host \
         does not provide (cgroup v1 or hybrid layout?); run without limits or on a cgroup v2 host"
    )]
    LimitsUnsupported { missing: String, root: PathBuf },
    #[error("cpus must be a positive number, got {0}")]
    InvalidCpus(f64),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("processes of cgroup {0} still running after {KILL_TIMEOUT:?}")]
    KillTimeout(PathBuf),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A container's cgroup directory.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
}

/// The controllers `limits` needs, in the order cgroup.subtree_control takes them.
pub fn required_controllers(limits: &Limits) -> Vec<&'static str> {
    let wanted = [
        (limits.memory_bytes.is_some(), "memory"),
        (limits.cpus.is_some(), "cpu"),
        (limits.pids.is_some(), "pids"),
    ];
    wanted
        .iter()
        .filter(|(w, _)| *w)
        .map(|(_, name)| *name)
        .collect()
}

/// Which of `limits`' controllers are absent from a cgroup.controllers listing.
pub fn missing_controllers(available: &str, limits: &Limits) -> Vec<&'static str> {
    let have: Vec<&str> = available.split_whitespace().collect();
    required_controllers(limits)
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect()
}

/// cpu.max for a share of CPUs: 0.5 → "50000 100000".
pub fn cpu_max(cpus: f64) -> Result<String, CgroupError> {
    if !(cpus.is_finite() && cpus > 0.0) {
        return Err(CgroupError::InvalidCpus(cpus));
    }
    let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
    Ok(format!("{quota} {CPU_PERIOD_US}"))
}

/// The (file, value) writes that apply `limits`, in order.
pub fn limit_writes(limits: &Limits) -> Result<Vec<(&'static str, String)>, CgroupError> {
    let mut writes = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        writes.push(("memory.max", bytes.to_string()));
        writes.push(("memory.swap.max", "0".to_owned()));
    }
    if let Some(cpus) = limits.cpus {
        writes.push(("cpu.max", cpu_max(cpus)?));
    }
    if let Some(pids) = limits.pids {
        writes.push(("pids.max", pids.to_string()));
    }
    Ok(writes)
}

/// The `oom_kill` counter of a memory.events file.
pub fn oom_kills(memory_events: &str) -> u64 {
    memory_events
        .lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether a cgroup.events file says processes remain.
fn populated(events: &str) -> bool {
    events.lines().any(|l| l.trim() == "populated 1")
}

impl Cgroup {
    /// Create `<root>/<id>` and apply `limits`. `Ok(None)` when `root` is not a
    /// usable cgroup v2 directory and no limits were asked for: the caller then
    /// kills the container through its pid namespace instead.
    pub fn create(root: &Path, id: &str, limits: &Limits) -> Result<Option<Cgroup>, CgroupError> {
        let controllers = root.join("cgroup.controllers");
        let available = match fs::read_to_string(&controllers) {
            Ok(s) => s,
            Err(_) if limits.is_empty() => return Ok(None),
            Err(_) => String::new(),
        };
        let missing = missing_controllers(&available, limits);
        if !missing.is_empty() {
            return Err(CgroupError::LimitsUnsupported {
                missing: missing.join(", "),
                root: root.to_owned(),
            });
        }
        enable_controllers(root, limits)?;
        let dir = root.join(id);
        // A directory left by an earlier agent with this id goes if it is
        // empty; if it still holds processes, creating fails below.
        let _ = fs::remove_dir(&dir);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(_) if limits.is_empty() => return Ok(None),
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        let cgroup = Cgroup { dir };
        if let Err(e) = cgroup.apply(limits) {
            let _ = fs::remove_dir(&cgroup.dir);
            return Err(e);
        }
        Ok(Some(cgroup))
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        for (file, value) in limit_writes(limits)? {
            let path = self.dir.join(file);
            // memory.swap.max exists only with swap accounting; without it
            // there is no swap to turn off.
            if file == "memory.swap.max" && !path.exists() {
                continue;
            }
            fs::write(&path, &value).map_err(io_err("write", &path))?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Move `pid` into this cgroup.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        let procs = self.dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(io_err("write", &procs))
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        fs::read_to_string(self.dir.join("memory.events")).is_ok_and(|s| oom_kills(&s) > 0)
    }

    /// Kill every process in the cgroup, wait until it is empty, remove it.
    pub fn kill_and_remove(self) -> Result<(), CgroupError> {
        let kill = self.dir.join("cgroup.kill");
        if kill.exists() {
            fs::write(&kill, "1").map_err(io_err("write", &kill))?;
        } else {
            self.kill_each()?;
        }
        let events = self.dir.join("cgroup.events");
        let deadline = Instant::now() + KILL_TIMEOUT;
        while fs::read_to_string(&events).is_ok_and(|s| populated(&s)) {
            if Instant::now() > deadline {
                return Err(CgroupError::KillTimeout(self.dir));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        fs::remove_dir(&self.dir).map_err(io_err("remove", &self.dir))
    }

    /// Kernels before 5.14 have no cgroup.kill: SIGKILL each listed process.
    fn kill_each(&self) -> Result<(), CgroupError> {
        let procs = self.dir.join("cgroup.procs");
        let list = fs::read_to_string(&procs).map_err(io_err("read", &procs))?;
        for pid in list.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
        }
        Ok(())
    }
}

/// Enable in `root`'s cgroup.subtree_control the controllers `limits` needs,
/// if they are not already.
fn enable_controllers(root: &Path, limits: &Limits) -> Result<(), CgroupError> {
    let control = root.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    let missing = missing_controllers(&enabled, limits);
    if missing.is_empty() {
        return Ok(());
    }
    let line: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
    fs::write(&control, line.join(" ")).map_err(io_err("write", &control))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(controllers: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("spore-cgroup-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("cgroup.controllers"), controllers).unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        root
    }

    fn all_limits() -> Limits {
        Limits {
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(32),
        }
    }

    #[test]
    fn half_a_cpu_is_fifty_thousand_of_a_hundred_thousand() {
        assert_eq!(cpu_max(0.5).unwrap(), "50000 100000");
        assert_eq!(cpu_max(2.0).unwrap(), "200000 100000");
        assert!(matches!(cpu_max(0.0), Err(CgroupError::InvalidCpus(_))));
        assert!(cpu_max(f64::NAN).is_err());
    }

    #[test]
    fn limits_are_written_to_their_files() {
        let root = temp_root("cpuset cpu io memory pids");
        let cg = Cgroup::create(&root, "c1", &all_limits()).unwrap().unwrap();
        let read = |f: &str| fs::read_to_string(cg.path().join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "32");
        // No swap accounting in the temp dir, so nothing to turn off.
        assert!(!cg.path().join("memory.swap.max").exists());
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn missing_controllers_refuse_the_limits_by_name() {
        let root = temp_root("cpuset io");
        let err = Cgroup::create(&root, "c1", &all_limits()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CgroupError::LimitsUnsupported { .. }));
        assert!(msg.contains("memory, cpu, pids"), "{msg}");
        assert!(!root.join("c1").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn only_the_controllers_asked_for_are_required() {
        let limits = Limits {
            pids: Some(10),
            ..Limits::default()
        };
        assert_eq!(missing_controllers("memory cpu", &limits), vec!["pids"]);
        assert!(missing_controllers("pids", &limits).is_empty());
        assert!(required_controllers(&Limits::default()).is_empty());
    }

    #[test]
    fn no_cgroup_v2_and_no_limits_means_no_cgroup() {
        let root = std::env::temp_dir().join("spore-cgroup-test-absent");
        assert!(Cgroup::create(&root, "c1", &Limits::default())
            .unwrap()
            .is_none());
        let err = Cgroup::create(&root, "c1", &all_limits()).unwrap_err();
        assert!(err.to_string().contains("memory, cpu, pids"));
    }

    #[test]
    fn oom_kill_counter_is_read_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills(events), 1);
        assert_eq!(oom_kills("low 0\noom 0\noom_kill 0\n"), 0);
        let root = temp_root("memory");
        let cg = Cgroup::create(&root, "c1", &Limits::default())
            .unwrap()
            .unwrap();
        fs::write(cg.path().join("memory.events"), events).unwrap();
        assert!(cg.oom_killed());
        fs::write(cg.path().join("memory.events"), "oom_kill 0\n").unwrap();
        assert!(!cg.oom_killed());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn populated_reads_the_events_file() {
        assert!(populated("populated 1\nfrozen 0\n"));
        assert!(!populated("populated 0\nfrozen 0\n"));
    }
}

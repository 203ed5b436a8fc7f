//! Shared harness of the engine's host tests (`engine.rs`,
//! `engine_lifecycle.rs`): the stage 2 hook, the busybox rootfs, one engine
//! per test with its own run dir and cgroup root, and the smallest possible
//! reaper (`waitpid` on the pid the engine reports, handed to
//! `on_child_exit`). Tests run one at a time: descriptor counts and the
//! cgroup root are process-wide.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use spore_agent::engine::{stage2_main, ChildExit, ContainerIo, Engine, EngineConfig, STAGE2_ARG};
use spore_agent::protocol::spec::{ContainerSpec, RootfsSpec};
use spore_agent::sys;

/// The engine re-executes /proc/self/exe — this test binary — as stage 2.
/// libtest would read STAGE2_ARG as a test filter, so divert before `main`.
#[used]
#[link_section = ".init_array"]
static STAGE2_HOOK: extern "C" fn() = stage2_hook;

extern "C" fn stage2_hook() {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    if cmdline.split(|b| *b == 0).nth(1) == Some(STAGE2_ARG.as_bytes()) {
        stage2_main();
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let ws = workspace();
        let status = std::process::Command::new(ws.join("resources/build-rootfs.sh"))
            .status()
            .unwrap();
        assert!(status.success(), "resources/build-rootfs.sh failed");
        ws.join("target/guest/rootfs")
    })
}

pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// A cgroup v2 directory to put containers under: the unified hierarchy of a
/// hybrid host, or the root of a pure cgroup v2 one.
pub fn cgroup_parent() -> PathBuf {
    let v2 = Path::new("/sys/fs/cgroup");
    if v2.join("cgroup.controllers").exists() {
        v2.to_owned()
    } else {
        v2.join("unified")
    }
}

/// One engine with its own run dir and cgroup root, deleted afterwards.
pub struct Harness {
    pub engine: Engine,
    pub cfg: EngineConfig,
    _serial: MutexGuard<'static, ()>,
}

impl Harness {
    pub fn new(name: &str) -> Option<Harness> {
        Harness::with_cgroup_parent(name, Some(&cgroup_parent()))
    }

    /// `parent: None` gives the engine a cgroup root that is no cgroup at all.
    pub fn with_cgroup_parent(name: &str, parent: Option<&Path>) -> Option<Harness> {
        if !is_root() {
            eprintln!("skipping: the engine tests need root");
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let tag = format!("spore-engine-test-{}-{name}", std::process::id());
        let run_dir = std::env::temp_dir().join(&tag);
        let cgroup_root = match parent {
            Some(parent) => parent.join(&tag),
            None => run_dir.join("not-a-cgroup"),
        };
        let _ = std::fs::create_dir(&cgroup_root);
        let cfg = EngineConfig {
            run_dir,
            cgroup_root,
        };
        let engine = Engine::new(cfg.clone()).unwrap();
        Some(Harness {
            engine,
            cfg,
            _serial: serial,
        })
    }

    pub fn spec(&self, argv: &[&str]) -> ContainerSpec {
        ContainerSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            rootfs: RootfsSpec {
                lower: rootfs().to_owned(),
            },
            ..Default::default()
        }
    }

    /// The test's reaper: wait for `pid`, hand its status to the engine.
    pub fn reap(&mut self, pid: u32) -> ChildExit {
        let status = sys::waitpid(pid).unwrap();
        self.engine
            .on_child_exit(pid, status)
            .expect("the engine knows this pid")
    }

    /// create + start + read all output + reap; the container is deleted.
    pub fn run(&mut self, id: &str, spec: &ContainerSpec) -> (ChildExit, String, String) {
        let io = self
            .engine
            .create(id, spec)
            .unwrap_or_else(|e| panic!("create {id}: {}", spore_agent::error_chain(&e)));
        self.engine.start(id).unwrap();
        let pid = self.engine.state(id).unwrap().pid;
        let (out, err) = drain(io);
        let exit = self.reap(pid);
        self.engine.delete(id).unwrap();
        (exit, out, err)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for state in self.engine.list() {
            let _ = self.engine.delete(&state.id);
        }
        let _ = std::fs::remove_dir(&self.cfg.cgroup_root);
        let _ = std::fs::remove_dir_all(&self.cfg.run_dir);
    }
}

pub fn read_all(fd: OwnedFd) -> String {
    let mut buf = Vec::new();
    // A pty master reads EIO once the last slave closes: that is its end.
    let _ = File::from(fd).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Read stdout and stderr to the end, concurrently (either may fill its pipe).
pub fn drain(io: ContainerIo) -> (String, String) {
    drop(io.stdin);
    let err = io.stderr.map(|fd| std::thread::spawn(move || read_all(fd)));
    let out = read_all(io.stdout);
    (out, err.map(|t| t.join().unwrap()).unwrap_or_default())
}

pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

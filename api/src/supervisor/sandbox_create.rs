//! Creating a sandbox: validate → refuse what this host cannot do → directory and
//! log → start the agent (process isolation: a host agent from the pool; vm: a
//! clone of the template, fixed up) → create, attach and start the container,
//! the same steps for both ([`drive_container`]) → hand the output to a pump
//! thread, the agent (or clone) to a watcher, the deadline to a timer.
//!
//! A sandbox that cannot be created leaves nothing behind: its agent is stopped
//! (its clone killed), its cgroup and directory removed, and the error goes back
//! to the caller.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use spore_agent::protocol::client::{Attach, Client};
use spore_agent::protocol::messages::{AttachFrame, Stream};
use spore_agent::protocol::spec::{ContainerSpec, RootfsSpec};

use super::output::OutputLog;
use super::sandbox::{now_ms, Record, Sandbox, SandboxState};
use super::spec::SandboxSpec;
use super::{images, templates, Supervisor, SupervisorError};
use crate::backend::{vm, BackendError, Isolation};
use crate::server::http::{encode_frame, FrameKind};

impl Supervisor {
    /// Creates and starts a sandbox; returns once its process runs.
    pub fn create(
        self: &Arc<Self>,
        spec: &SandboxSpec,
        auto_remove: bool,
    ) -> Result<Arc<Sandbox>, SupervisorError> {
        let t0 = Instant::now();
        // 1. Validate the spec; resolve its image and template.
        let plan = spec.validate(self.config.default_isolation, images::resolve_for_run)?;
        templates::exists(&plan.template)?;
        // 2. Refuse what this host cannot do: vm isolation where microVMs cannot
        //    run (with the reason), limits on a cgroup layout without them.
        match plan.isolation {
            Isolation::Vm => vm::check()?,
            Isolation::Process => self
                .process_backend()?
                .check_limits(&plan.container.limits)?,
        }
        // 3. An id, a directory, an output log.
        let id = super::new_id();
        let dir = self.sandboxes_dir().join(&id);
        let io = |what, source| SupervisorError::Io {
            what,
            path: dir.display().to_string(),
            source,
        };
        fs::create_dir_all(&dir).map_err(|e| io("create", e))?;
        let log =
            OutputLog::create(&dir.join("output.log")).map_err(|e| io("create a log in", e))?;
        let isolation = plan.isolation.to_string();
        let sb = Arc::new(Sandbox::new(
            dir.clone(),
            Record::new(&id, plan, auto_remove),
            log,
        ));
        sb.update(|_| {});
        self.insert(sb.clone());
        // 4. Start the agent (or clone) and the container.
        let started = match sb.record().isolation {
            Isolation::Process => start_process_sandbox(self, &sb),
            Isolation::Vm => start_vm_sandbox(self, &sb),
        };
        let attach = match started {
            Ok(attach) => attach,
            Err(e) => {
                self.discard(&sb);
                return Err(e);
            }
        };
        let elapsed = t0.elapsed();
        sb.update(|r| {
            r.state = match attach {
                Some(_) => SandboxState::Running,
                None => SandboxState::Created,
            };
            r.started_at_ms = attach.as_ref().map(|_| now_ms());
            r.create_ms = Some(elapsed.as_secs_f64() * 1000.0);
        });
        // A default template built on this sandbox's request is not clone time.
        let template_ms = sb.record().create_phases_ms.get("template").copied();
        let booted = Duration::from_secs_f64(template_ms.unwrap_or(0.0) / 1000.0);
        self.metrics
            .observe_create(&isolation, elapsed.saturating_sub(booted));
        // 5. Output, agent death and the deadline each get a thread (an
        //    interactive sandbox's output and deadline start with its attach).
        spawn_named("watch", {
            let (sup, sb) = (self.clone(), sb.clone());
            move || match sb.vm.get() {
                Some(_) => watch_clone(&sup, &sb),
                None => watch_agent(&sup, &sb),
            }
        });
        if let Some(attach) = attach {
            spawn_named("pump", {
                let (sup, sb) = (self.clone(), sb.clone());
                move || pump(&sup, &sb, attach, None)
            });
            start_timeout(&sb);
        }
        Ok(sb)
    }

    /// Removes a sandbox that never ran: agent, cgroup, directory, table entry.
    fn discard(&self, sb: &Sandbox) {
        sb.update(|r| r.state = SandboxState::Deleting);
        super::sandbox_delete::teardown(sb);
        self.forget(&sb.id);
    }
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) {
    // A failed spawn leaves the sandbox without that helper; the others still run.
    let _ = thread::Builder::new()
        .name(format!("sandbox-{name}"))
        .spawn(f);
}

/// Steps 4a–4e under process isolation: agent, hello, then [`drive_container`].
fn start_process_sandbox(
    sup: &Supervisor,
    sb: &Sandbox,
) -> Result<Option<Attach>, SupervisorError> {
    let plan = sb.record().plan;
    let mut phase = Phases::start();
    let agent = sup.agents()?.take()?;
    let (pid, agent_dir) = (agent.pid, agent.dir.clone());
    let agent = sb.agent.get_or_init(|| agent);
    sb.update(|r| {
        r.agent_pid = Some(pid);
        r.agent_dir = Some(agent_dir);
    });
    let mut client = agent.client()?;
    phase.mark("agent_start");
    drive_container(sb, &mut client, &plan.container, phase)
}

/// Steps 4a–4e under vm isolation: the template (the default one is created on
/// first use) → a clone with the sandbox's image in its disk slot, its agent
/// reached and the clone fixup applied → [`drive_container`] with `/dev/vda` as
/// the rootfs lower.
fn start_vm_sandbox(sup: &Supervisor, sb: &Sandbox) -> Result<Option<Attach>, SupervisorError> {
    let plan = sb.record().plan;
    let mut phase = Phases::start();
    let source = templates::source(&sup.config.run_dir, &plan.template)?;
    phase.mark("template");
    let image = vm_disk_image(&plan.image, &plan.container.rootfs.lower)?;
    let (clone, mut client) = vm::clone::start_clone(source, &sb.id, &image, VM_AGENT_TIMEOUT)
        .map_err(BackendError::from)?;
    let (pid, latency) = (clone.pid(), clone.vm.latency);
    sb.vm.get_or_init(|| clone);
    sb.update(|r| r.agent_pid = Some(pid));
    phase.mark("clone_fixup");
    phase.done.insert(
        "clone_order_to_running".into(),
        latency.as_secs_f64() * 1000.0,
    );
    let container = ContainerSpec {
        rootfs: RootfsSpec {
            lower: PathBuf::from(VM_ROOTFS_DEVICE),
        },
        ..plan.container.clone()
    };
    drive_container(sb, &mut client, &container, phase)
}

/// The guest's device for the disk slot holding the sandbox's image.
const VM_ROOTFS_DEVICE: &str = "/dev/vda";
/// How long a fresh clone's agent may take to answer.
const VM_AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The erofs file to put in a clone's disk slot: an imported image's own erofs
/// (its rootfs lower), else the built-in busybox image.
fn vm_disk_image(image: &str, lower: &Path) -> Result<PathBuf, SupervisorError> {
    let file = match lower.is_file() {
        true => lower.to_owned(),
        false => crate::guest_image::default_rootfs(),
    };
    if !file.is_file() {
        let why = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is missing — run `make rootfs`", file.display()),
        );
        return Err(SupervisorError::ImageNotBuilt(image.into(), why));
    }
    Ok(file)
}

/// Steps 4c–4e for both backends: create the container, then (unless it is
/// interactive: its attach and start come with the client, `sandbox_attach`)
/// attach to its stdio, feed its stdin, start it.
fn drive_container(
    sb: &Sandbox,
    client: &mut Client,
    container: &ContainerSpec,
    mut phase: Phases,
) -> Result<Option<Attach>, SupervisorError> {
    let plan = sb.record().plan;
    client
        .create(&sb.id, container)
        .map_err(BackendError::from)?;
    phase.mark("container_create");
    if plan.interactive {
        sb.update(|r| r.create_phases_ms = phase.done);
        return Ok(None);
    }
    let attach = client.attach(&sb.id, None).map_err(BackendError::from)?;
    if let Some(data) = plan.stdin {
        // Written by a helper thread: the process may fill its output pipe before
        // it reads all its input, and the pump must be reading by then.
        let mut input = attach.try_clone().map_err(BackendError::from)?;
        spawn_named("stdin", move || {
            let _ = input.write_stdin(data.as_bytes());
            let _ = input.close_stdin();
        });
    }
    client.start(&sb.id).map_err(BackendError::from)?;
    phase.mark("attach_start");
    sb.update(|r| r.create_phases_ms = phase.done);
    Ok(Some(attach))
}

/// Durations of the steps of a create, for the record and `bench run`.
struct Phases {
    last: Instant,
    done: BTreeMap<String, f64>,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            last: Instant::now(),
            done: BTreeMap::new(),
        }
    }

    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        let ms = (now - self.last).as_secs_f64() * 1000.0;
        self.done.insert(name.to_owned(), ms);
        self.last = now;
    }
}

/// Copies the main process's output into the log (and to `tee`, an attached
/// client, while it listens) until it ends, then records its exit and sends it
/// to `tee` as an exit frame. Removes the sandbox afterwards if it was created
/// with auto-remove.
pub(super) fn pump(
    sup: &Arc<Supervisor>,
    sb: &Arc<Sandbox>,
    mut attach: Attach,
    mut tee: Option<Box<dyn Write + Send>>,
) {
    let mut open = if attach.tty() { 1 } else { 2 };
    let mut broken = None;
    while open > 0 {
        match attach.next_frame() {
            Ok(Some(AttachFrame::Output(stream, data))) => {
                let kind = match stream {
                    Stream::Stdout => FrameKind::Stdout,
                    Stream::Stderr => FrameKind::Stderr,
                };
                if let Err(e) = sb.log.append(kind, &data) {
                    broken = Some(format!("cannot write the output log: {e}"));
                    break;
                }
                if let Some(w) = tee.as_mut() {
                    if w.write_all(&encode_frame(kind, &data)).is_err() {
                        tee = None;
                    }
                }
            }
            Ok(Some(AttachFrame::Eof(_))) => open -= 1,
            Ok(Some(_)) => {}
            Ok(None) => {
                broken = Some("the agent closed the output stream".to_owned());
                break;
            }
            Err(e) => {
                broken = Some(format!("reading output from the agent: {e}"));
                break;
            }
        }
    }
    drop(attach);
    if broken.is_some() && agent_died(sb) {
        // The watcher records the failure once it has cleaned up.
        return;
    }
    let exit = match broken {
        Some(why) => Err(why),
        None => sb
            .agent_client()
            .map_err(|e| e.to_string())
            .and_then(|mut c| c.wait(&sb.id, None).map_err(|e| e.to_string())),
    };
    match exit {
        Ok(exit) => sb.update(|r| r.set_exit(&exit)),
        Err(why) => sb.update(|r| r.set_failed(why)),
    }
    sb.log.close();
    if let Some(mut w) = tee {
        let rec = serde_json::to_vec(&sb.record()).unwrap_or_default();
        let _ = w.write_all(&encode_frame(FrameKind::Exit, &rec));
    }
    if sb.record().auto_remove && sb.state().is_finished() {
        let _ = sup.delete(&sb.id, true);
    }
}

/// Waits for the agent process to end. If that happens while the sandbox is not
/// being deleted, the sandbox failed: record it and clean up what the agent left.
fn watch_agent(sup: &Arc<Supervisor>, sb: &Arc<Sandbox>) {
    let Some(agent) = sb.agent.get() else {
        return;
    };
    let how = agent.wait_exit();
    if sb.state() == SandboxState::Deleting {
        return;
    }
    agent.cleanup_cgroup();
    let _ = fs::remove_file(agent.dir.join("agent.sock"));
    sb.update(|r| {
        r.set_failed(format!(
            "its agent process (pid {}) ended: {how}",
            agent.pid
        ))
    });
    sb.log.close();
    if sb.record().auto_remove {
        let _ = sup.delete(&sb.id, true);
    }
}

/// Waits for the clone's VMM process to end. If that happens while the sandbox
/// is not being deleted, the sandbox failed: record it and release the clone.
fn watch_clone(sup: &Arc<Supervisor>, sb: &Arc<Sandbox>) {
    let Some(clone) = sb.vm.get() else {
        return;
    };
    let how = clone.wait_exit();
    if sb.state() == SandboxState::Deleting {
        return;
    }
    clone.end();
    sb.update(|r| {
        r.set_failed(format!(
            "its clone's VMM process (pid {}) ended: {how}",
            clone.pid()
        ))
    });
    sb.log.close();
    if sb.record().auto_remove {
        let _ = sup.delete(&sb.id, true);
    }
}

/// True if the sandbox's agent (or clone) has ended, or does so within a
/// second: a broken output stream is then its death, which the watcher reports.
fn agent_died(sb: &Sandbox) -> bool {
    let exited = || match (sb.agent.get(), sb.vm.get()) {
        (Some(agent), _) => agent.exited(),
        (None, Some(clone)) => clone.exited(),
        (None, None) => false,
    };
    if sb.agent.get().is_none() && sb.vm.get().is_none() {
        return false;
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        if exited() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Starts the deadline of the sandbox's process, if it has one.
pub(super) fn start_timeout(sb: &Arc<Sandbox>) {
    if let Some(ms) = sb.record().plan.timeout_ms {
        spawn_named("timeout", {
            let sb = sb.clone();
            move || enforce_timeout(&sb, Duration::from_millis(ms))
        });
    }
}

/// Kills the main process if it still runs after `limit`.
fn enforce_timeout(sb: &Sandbox, limit: Duration) {
    let rec = sb.wait_until(Some(limit), |s| {
        s.is_finished() || s == SandboxState::Deleting
    });
    if rec.state != SandboxState::Running {
        return;
    }
    sb.update(|r| r.exit_reason = Some("timeout".into()));
    if let Ok(mut c) = sb.agent_client() {
        let _ = c.signal(&sb.id, libc::SIGKILL);
    }
}

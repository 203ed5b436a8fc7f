//! After a restart: find the sandboxes a previous daemon left in
//! `<run_dir>/sandboxes`, re-adopt those whose agent still answers, and reap the
//! rest (record them as failed, kill what is left in their cgroup).
//!
//! A re-adopted running sandbox keeps the output logged before the restart; what
//! its process writes afterwards is not captured (its stdio was attached to the
//! previous daemon). Its exit is still recorded.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use super::output::OutputLog;
use super::sandbox::{read_record, Record, Sandbox, SandboxState};
use super::Supervisor;
use crate::backend::process::{self, AgentProcess};
use crate::backend::Isolation;

/// Loads every sandbox directory under the state directory.
pub fn adopt_all(sup: &Arc<Supervisor>) {
    let Ok(entries) = fs::read_dir(sup.sandboxes_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(rec) = read_record(&dir) else {
            // Not ours, or never got a record: nothing can be adopted from it.
            let _ = fs::remove_dir_all(&dir);
            continue;
        };
        adopt_one(sup, dir, rec);
    }
}

fn adopt_one(sup: &Arc<Supervisor>, dir: PathBuf, rec: Record) {
    let log = OutputLog::reopen(&dir.join("output.log"), rec.state.is_finished());
    let finished = rec.state.is_finished();
    let auto_remove = rec.auto_remove;
    let cgroup = agent_cgroup(sup, &rec);
    let agent = match (rec.isolation, rec.agent_pid, &rec.agent_dir, &cgroup) {
        (Isolation::Process, Some(pid), Some(agent_dir), Some(cgroup)) => {
            AgentProcess::adopt(pid, agent_dir, cgroup.clone())
        }
        _ => None,
    };
    let deleting = rec.state == SandboxState::Deleting;
    let sb = Arc::new(Sandbox::new(dir, rec, log));
    if deleting {
        // A delete the previous daemon did not finish: finish it.
        if let Some(agent) = agent {
            sb.agent.get_or_init(|| agent);
        }
        super::sandbox_delete::teardown(&sb);
        reap_agent_leftovers(&sb, cgroup.as_deref());
        return;
    }
    sup.insert(sb.clone());
    match agent {
        Some(agent) => {
            sb.agent.get_or_init(|| agent);
            if !finished {
                follow_adopted(sup, &sb);
            }
        }
        None if !finished => {
            // Its agent is gone: the sandbox failed while no daemon watched it.
            sb.update(|r| r.set_failed("its agent was gone when the daemon restarted".into()));
            sb.log.close();
            reap_agent_leftovers(&sb, cgroup.as_deref());
        }
        None => {}
    }
    if auto_remove && sb.state().is_finished() {
        let _ = sup.delete(&sb.id, true);
    }
}

/// The cgroup of the agent a record names.
fn agent_cgroup(sup: &Supervisor, rec: &Record) -> Option<PathBuf> {
    let name = rec.agent_dir.as_ref()?.file_name()?.to_owned();
    let parent = sup
        .process_backend()
        .map(|b| b.cgroup_parent)
        .unwrap_or_else(|_| process::cgroup2_mount().join("spore"));
    Some(parent.join(name))
}

/// What a dead agent left: processes in its cgroup, the cgroup, its directory.
fn reap_agent_leftovers(sb: &Sandbox, cgroup: Option<&Path>) {
    if let Some(cgroup) = cgroup {
        process::cleanup_cgroup(cgroup);
    }
    if let Some(dir) = sb.record().agent_dir {
        let _ = fs::remove_dir_all(dir);
    }
}

/// A re-adopted running sandbox: learn its exit from the agent, and its death
/// from the agent's pidfd.
fn follow_adopted(sup: &Arc<Supervisor>, sb: &Arc<Sandbox>) {
    let waiter = {
        let (sup, sb) = (sup.clone(), sb.clone());
        move || {
            let Some(agent) = sb.agent.get() else { return };
            let exit = agent
                .client()
                .map_err(|e| e.to_string())
                .and_then(|mut c| c.wait(&sb.id, None).map_err(|e| e.to_string()));
            match exit {
                Ok(exit) => sb.update(|r| r.set_exit(&exit)),
                Err(why) => sb.update(|r| r.set_failed(why)),
            }
            sb.log.close();
            if sb.record().auto_remove {
                let _ = sup.delete(&sb.id, true);
            }
        }
    };
    let watcher = {
        let sb = sb.clone();
        move || {
            let Some(agent) = sb.agent.get() else { return };
            let how = agent.wait_exit();
            if sb.state() == SandboxState::Deleting {
                return;
            }
            sb.update(|r| r.set_failed(format!("its agent process ended: {how}")));
            sb.log.close();
            agent.cleanup_cgroup();
        }
    };
    let _ = thread::Builder::new()
        .name("adopt-wait".into())
        .spawn(waiter);
    let _ = thread::Builder::new()
        .name("adopt-watch".into())
        .spawn(watcher);
}

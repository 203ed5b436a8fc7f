//! The container's program: resolve it (user, environment, executable) and
//! become it (cwd, rlimits, credentials, capabilities, no_new_privs, exec).
//!
//! Runs inside the container after pivot_root, so every path and every
//! /etc file read here is the container's. [`prepare`] only reads; the
//! irreversible steps are [`apply_credentials`] and [`exec`].

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::caps::{self, CapsError};
use super::config::ProcessConfig;
use super::seccomp;
use super::user::{self, User, UserError};
use crate::protocol::spec::Rlimit;
use crate::sys;

/// PATH when the spec sets none (docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// rlimit names as the spec writes them, lower-case without `RLIMIT_`.
const RLIMITS: &[(&str, libc::__rlimit_resource_t)] = &[
    ("as", libc::RLIMIT_AS),
    ("core", libc::RLIMIT_CORE),
    ("cpu", libc::RLIMIT_CPU),
    ("data", libc::RLIMIT_DATA),
    ("fsize", libc::RLIMIT_FSIZE),
    ("locks", libc::RLIMIT_LOCKS),
    ("memlock", libc::RLIMIT_MEMLOCK),
    ("msgqueue", libc::RLIMIT_MSGQUEUE),
    ("nice", libc::RLIMIT_NICE),
    ("nofile", libc::RLIMIT_NOFILE),
    ("nproc", libc::RLIMIT_NPROC),
    ("rss", libc::RLIMIT_RSS),
    ("rtprio", libc::RLIMIT_RTPRIO),
    ("rttime", libc::RLIMIT_RTTIME),
    ("sigpending", libc::RLIMIT_SIGPENDING),
    ("stack", libc::RLIMIT_STACK),
];

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no command given")]
    EmptyArgv,
    #[error("executable not found: {0}")]
    NotFound(String),
    #[error("unknown rlimit {0:?}")]
    UnknownRlimit(String),
    #[error("argument, environment or path contains a NUL byte")]
    Nul,
    #[error(transparent)]
    User(#[from] UserError),
    #[error("working directory {0} unusable")]
    Cwd(PathBuf, #[source] std::io::Error),
    #[error("cannot set rlimit {0}")]
    Rlimit(String, #[source] std::io::Error),
    #[error("cannot switch to uid {uid} gid {gid}")]
    Credentials {
        uid: u32,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Caps(#[from] CapsError),
    #[error("cannot set no_new_privs or reset signals")]
    Hardening(#[source] std::io::Error),
    #[error("cannot install the seccomp filter")]
    Seccomp(#[source] std::io::Error),
    #[error("cannot execute {0}")]
    Exec(String, #[source] std::io::Error),
}

/// Everything needed to exec, resolved before the point of no return.
#[derive(Debug)]
pub struct Prepared {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: PathBuf,
    user: User,
    rlimits: Vec<(String, libc::__rlimit_resource_t, Rlimit)>,
}

/// Resolve the user, environment, executable and rlimits of `cfg`.
pub fn prepare(cfg: &ProcessConfig) -> Result<Prepared, ProcessError> {
    let name = cfg.argv.first().ok_or(ProcessError::EmptyArgv)?;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let user = user::resolve(
        cfg.user.as_deref(),
        &read("/etc/passwd"),
        &read("/etc/group"),
    )?;
    let env = environment(&cfg.env, &user.home);
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let path = find_executable(name, path_var, is_executable)
        .ok_or_else(|| ProcessError::NotFound(name.clone()))?;
    let rlimits = cfg
        .rlimits
        .iter()
        .map(|(n, l)| {
            rlimit_resource(n)
                .map(|r| (n.clone(), r, *l))
                .ok_or_else(|| ProcessError::UnknownRlimit(n.clone()))
        })
        .collect::<Result<_, _>>()?;
    let cstrings = |v: Vec<String>| {
        v.into_iter()
            .map(CString::new)
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Prepared {
        path: sys::cpath(&path).map_err(|_| ProcessError::Nul)?,
        argv: cstrings(cfg.argv.clone()).map_err(|_| ProcessError::Nul)?,
        env: cstrings(env).map_err(|_| ProcessError::Nul)?,
        cwd: Path::new("/").join(cfg.cwd.as_deref().unwrap_or("/")),
        user,
        rlimits,
    })
}

/// The spec's environment with PATH and HOME defaulted; for a repeated key
/// the last value wins (an exec's env overrides its container's).
pub fn environment(env: &[String], home: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(env.len() + 2);
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
    for e in env {
        match out.iter_mut().find(|o| key(o) == key(e)) {
            Some(slot) => slot.clone_from(e),
            None => out.push(e.clone()),
        }
    }
    for (k, default) in [("PATH", DEFAULT_PATH), ("HOME", home)] {
        if !out.iter().any(|o| key(o) == k) {
            out.push(format!("{k}={default}"));
        }
    }
    out
}

/// `name` itself when it contains a slash, else the first match in `path_var`.
pub fn find_executable(
    name: &str,
    path_var: &str,
    is_exec: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if name.contains('/') {
        return is_exec(Path::new(name)).then(|| PathBuf::from(name));
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_exec(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    let name = name.to_ascii_lowercase();
    let name = name.strip_prefix("rlimit_").unwrap_or(&name);
    RLIMITS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

/// Become the container's process, in this order: cwd, rlimits, bounding
/// set, uid/gid/groups, capability sets, no_new_privs, default signals,
/// seccomp.
pub fn apply_credentials(p: &Prepared) -> Result<(), ProcessError> {
    std::env::set_current_dir(&p.cwd).map_err(|e| ProcessError::Cwd(p.cwd.clone(), e))?;
    for (name, resource, limit) in &p.rlimits {
        sys::setrlimit(*resource, limit.soft, limit.hard)
            .map_err(|e| ProcessError::Rlimit(name.clone(), e))?;
    }
    caps::limit_bounding_set()?;
    let (uid, gid) = (p.user.uid, p.user.gid);
    let creds = |source| ProcessError::Credentials { uid, gid, source };
    sys::setgroups(&p.user.groups).map_err(creds)?;
    sys::setgid(gid).map_err(creds)?;
    sys::setuid(uid).map_err(creds)?;
    caps::apply_default_set()?;
    sys::set_no_new_privs().map_err(ProcessError::Hardening)?;
    sys::reset_signals().map_err(ProcessError::Hardening)?;
    // Last: from here on the filter applies to us too (it allows what is
    // left: the wait for start and execve).
    sys::install_seccomp(&seccomp::program()).map_err(ProcessError::Seccomp)?;
    sys::umask(0o022);
    Ok(())
}

/// execve the program; returns only on failure.
pub fn exec(p: &Prepared) -> ProcessError {
    let err = sys::execve(&p.path, &p.argv, &p.env);
    ProcessError::Exec(p.path.to_string_lossy().into_owned(), err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_lookup_takes_the_first_match() {
        let exists = |p: &Path| p == Path::new("/usr/bin/sh") || p == Path::new("/bin/sh");
        assert_eq!(
            find_executable("sh", "/nope:/usr/bin:/bin", exists),
            Some(PathBuf::from("/usr/bin/sh"))
        );
        assert_eq!(find_executable("sh", "/nope::", exists), None);
        assert_eq!(
            find_executable("/bin/sh", "", exists),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_executable("./sh", "/bin", exists), None);
    }

    #[test]
    fn environment_defaults_and_overrides() {
        let env = environment(&["A=1".into(), "HOME=/h".into(), "A=2".into()], "/root");
        assert_eq!(env, vec!["A=2", "HOME=/h", &format!("PATH={DEFAULT_PATH}")]);
        let env = environment(&["PATH=/x".into()], "/home/u");
        assert_eq!(env, vec!["PATH=/x", "HOME=/home/u"]);
    }

    #[test]
    fn rlimit_names_are_forgiving() {
        assert_eq!(rlimit_resource("nofile"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("RLIMIT_NPROC"), Some(libc::RLIMIT_NPROC));
        assert_eq!(rlimit_resource("bogus"), None);
    }

    #[test]
    fn a_missing_program_is_named() {
        let cfg = ProcessConfig {
            argv: vec!["no-such-program-xyz".into()],
            ..Default::default()
        };
        assert_eq!(
            prepare(&cfg).unwrap_err().to_string(),
            "executable not found: no-such-program-xyz"
        );
        let empty = ProcessConfig::default();
        assert!(matches!(prepare(&empty), Err(ProcessError::EmptyArgv)));
    }
}

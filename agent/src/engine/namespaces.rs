//! The namespaces a container gets, in the order they are entered.
//!
//! One static table ([`ORDERED_NAMESPACES`]) walked by one function
//! ([`enter`]), for both a new container (unshare) and exec (setns into the
//! container's init). Does not fork: a new pid namespace applies to the
//! children of the caller, so stage 2 forks after this.

use std::fs::File;
use std::os::fd::AsFd;

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot open the {name} namespace of pid {pid}")]
    Open {
        name: &'static str,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a {0} namespace")]
    Unshare(&'static str, #[source] std::io::Error),
    #[error("cannot join the {0} namespace")]
    Join(&'static str, #[source] std::io::Error),
}

/// A namespace type: its clone flag and its name under `/proc/<pid>/ns`.
pub struct Namespace {
    pub flag: libc::c_int,
    pub name: &'static str,
}

/// Entry order. The cgroup namespace comes after the engine moved us into the
/// container's cgroup, so that cgroup becomes the namespace's root. Mount is
/// last: once it is joined, /proc is the container's, whose pids differ.
pub const ORDERED_NAMESPACES: &[Namespace] = &[
    Namespace {
        flag: libc::CLONE_NEWUTS,
        name: "uts",
    },
    Namespace {
        flag: libc::CLONE_NEWIPC,
        name: "ipc",
    },
    Namespace {
        flag: libc::CLONE_NEWNET,
        name: "net",
    },
    Namespace {
        flag: libc::CLONE_NEWPID,
        name: "pid",
    },
    Namespace {
        flag: libc::CLONE_NEWCGROUP,
        name: "cgroup",
    },
    Namespace {
        flag: libc::CLONE_NEWNS,
        name: "mnt",
    },
];

/// How to enter the namespaces.
#[derive(Clone, Copy, Debug)]
pub enum Enter {
    /// Fresh namespaces of every type (a new container).
    Create,
    /// The namespaces of this process (exec into a running container).
    Join(u32),
}

/// Enter every namespace of [`ORDERED_NAMESPACES`], in order.
pub fn enter(how: Enter) -> Result<(), NamespaceError> {
    // Open every namespace file first: after joining the mount namespace,
    // /proc/<pid> would name a different process.
    let mut targets = Vec::with_capacity(ORDERED_NAMESPACES.len());
    for ns in ORDERED_NAMESPACES {
        let file = match how {
            Enter::Create => None,
            Enter::Join(pid) => Some(File::open(format!("/proc/{pid}/ns/{}", ns.name)).map_err(
                |source| NamespaceError::Open {
                    name: ns.name,
                    pid,
                    source,
                },
            )?),
        };
        targets.push((ns, file));
    }
    for (ns, file) in targets {
        match file {
            None => sys::unshare(ns.flag).map_err(|e| NamespaceError::Unshare(ns.name, e))?,
            Some(f) => {
                sys::setns(f.as_fd(), ns.flag).map_err(|e| NamespaceError::Join(ns.name, e))?
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_namespace_but_user_once_with_mount_last() {
        let all = ORDERED_NAMESPACES.iter().fold(0, |acc, ns| {
            assert_eq!(acc & ns.flag, 0, "{} listed twice", ns.name);
            acc | ns.flag
        });
        let expected = libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWNS;
        assert_eq!(all, expected);
        assert_eq!(ORDERED_NAMESPACES.last().unwrap().name, "mnt");
        for ns in ORDERED_NAMESPACES {
            assert!(
                std::path::Path::new("/proc/self/ns").join(ns.name).exists(),
                "{}",
                ns.name
            );
        }
    }

    #[test]
    fn joining_a_missing_process_names_it() {
        let err = enter(Enter::Join(u32::MAX)).unwrap_err();
        assert!(err.to_string().contains(&u32::MAX.to_string()), "{err}");
    }
}

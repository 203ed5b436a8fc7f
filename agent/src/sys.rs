//! Thin safe wrappers over the raw Linux syscalls the agent needs.
//!
//! Every `unsafe` block of the agent lives here, so the container engine above
//! is safe Rust. Each wrapper does one syscall (or one tightly coupled pair),
//! converts paths to C strings and errors to [`std::io::Error`]. No policy here:
//! which flags, in which order, is the engine's business.
//!
//! This file: mounts, namespaces, processes, credentials and capabilities.
//! [`fds`] (re-exported here): pipes, sockets, passed descriptors, ptys.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub mod fds;

pub use self::fds::*;

/// Turn a path into a C string; an interior NUL becomes `InvalidInput`.
pub fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

pub(crate) fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// Map a `-1` return to the thread's errno.
pub(crate) fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// mount(2). `None` arguments are passed as NULL.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cpath).transpose()?;
    let target = cpath(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(ret.into()).map(drop)
}

/// umount2(2).
pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cpath(target)?;
    // SAFETY: `target` is a valid C string for the duration of the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }.into()).map(drop)
}

/// pivot_root(2), which libc does not wrap.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = cpath(new_root)?;
    let put_old = cpath(put_old)?;
    // SAFETY: both arguments are valid C strings for the duration of the call.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

/// chroot(2).
pub fn chroot(path: &Path) -> io::Result<()> {
    let path = cpath(path)?;
    // SAFETY: `path` is a valid C string for the duration of the call.
    check(unsafe { libc::chroot(path.as_ptr()) }.into()).map(drop)
}

/// unshare(2).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes no pointers.
    check(unsafe { libc::unshare(flags) }.into()).map(drop)
}

/// setns(2) on a namespace file.
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor borrowed for the call.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }.into()).map(drop)
}

/// Fork a child whose parent is *our* parent (`CLONE_PARENT`), so the process
/// that started us reaps it. Returns 0 in the child, the child's pid in the caller.
///
/// Only call from a single-threaded process (stage 2): the child continues
/// with a copy of this one thread.
pub fn fork_sibling() -> io::Result<u32> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a raw clone without CLONE_VM and with a NULL stack behaves like
    // fork(2): the child gets a copy-on-write copy of the address space. The
    // caller is single-threaded, so no lock can be held by a vanished thread.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    check(ret).map(|pid| pid as u32)
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }.into()).map(drop)
}

/// mknod(2) for a character device.
pub fn mknod_char(path: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let path = cpath(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `path` is a valid C string for the duration of the call.
    check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | mode, dev) }.into()).map(drop)
}

/// umask(2); returns the previous mask.
pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask cannot fail and takes no pointers.
    unsafe { libc::umask(mask) }
}

/// Bring the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket creation; the result is checked before use.
    let raw = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into(),
    )?;
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags inside `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) }.into())?;
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, which outlives the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }.into()).map(drop)
}

/// setsid(2): a new session, no controlling terminal.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() }.into()).map(drop)
}

/// Make the terminal on `tty` the controlling terminal of our session.
pub fn set_controlling_tty(tty: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument; `tty` is open.
    check(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) }.into()).map(drop)
}

/// Attach `file` to a free loop device, read-only and auto-clearing (the
/// device detaches itself when its last user goes away). Returns the device
/// path and an open descriptor of it: keep that open until the device is
/// mounted, or auto-clear detaches it at once.
pub fn loop_attach_readonly(
    file: BorrowedFd<'_>,
) -> io::Result<(std::path::PathBuf, std::fs::File)> {
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    const LO_FLAGS_READ_ONLY: u32 = 1;
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    /// `struct loop_config` from <linux/loop.h>: fd, block size, then
    /// `struct loop_info64` (232 bytes, lo_flags at offset 52) and reserved words.
    #[repr(C)]
    struct LoopConfig {
        fd: u32,
        block_size: u32,
        info: [u32; 58],
        reserved: [u64; 8],
    }
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = check(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) }.into())?;
        let path = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let dev = std::fs::OpenOptions::new().read(true).open(&path)?;
        let mut config = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info: [0; 58],
            reserved: [0; 8],
        };
        config.info[52 / 4] = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads a loop_config, which `config` lays out
        // exactly and which outlives the call.
        match check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config) }.into()) {
            Ok(_) => return Ok((path, dev)),
            // Another process took this device between GET_FREE and CONFIGURE.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EBUSY))
}

/// setrlimit(2) for one resource.
pub fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit that outlives the call.
    check(unsafe { libc::setrlimit(resource, &lim) }.into()).map(drop)
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: every prctl option used here takes integer arguments only.
    check(
        unsafe {
            libc::prctl(
                option,
                arg,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        }
        .into(),
    )
    .map(drop)
}

/// Install a seccomp filter on the calling thread (needs no_new_privs or
/// CAP_SYS_ADMIN). It survives execve and cannot be removed.
pub fn install_seccomp(filter: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_SECCOMP reads the sock_fprog and the `len` filters it
    // points to; both outlive the call, and the kernel copies them.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret.into()).map(drop)
}

/// PR_SET_NO_NEW_PRIVS = 1: execve can never grant privileges again.
pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

/// PR_SET_KEEPCAPS: keep permitted capabilities across a change away from uid 0.
pub fn set_keep_caps(keep: bool) -> io::Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, keep.into())
}

/// Drop one capability from the bounding set.
pub fn drop_bounding_cap(cap: u32) -> io::Result<()> {
    prctl(libc::PR_CAPBSET_DROP, cap.into())
}

/// Clear the ambient capability set.
pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret.into()).map(drop)
}

/// capset(2), version 3, with 64-bit masks for each set.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| Data {
        effective: (effective >> shift) as u32,
        permitted: (permitted >> shift) as u32,
        inheritable: (inheritable >> shift) as u32,
    };
    let data = [half(0), half(32)];
    // SAFETY: header and the two data words match the kernel's v3 layout and
    // outlive the call.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }).map(drop)
}

/// setgroups(2).
pub fn setgroups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `groups`.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) }.into()).map(drop)
}

/// setresgid(2) with all three ids equal.
pub fn setgid(gid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) }.into()).map(drop)
}

/// setresuid(2) with all three ids equal.
pub fn setuid(uid: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) }.into()).map(drop)
}

/// Reset every catchable signal to its default action and unblock all signals,
/// so an exec'd program does not inherit the agent's dispositions (Rust ignores
/// SIGPIPE, for example, and ignored signals survive execve).
pub fn reset_signals() -> io::Result<()> {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL is always sound; errors (for signals
        // glibc reserves) are ignored on purpose.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for both calls.
    check(
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
        }
        .into(),
    )
    .map(drop)
}

/// execve(2); returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], env: &[CString]) -> io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    // SAFETY: path, argv and env are NUL-terminated strings in NULL-terminated
    // arrays that all outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// kill(2).
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::kill(pid as libc::pid_t, sig) }.into()).map(drop)
}

/// waitpid(2) for one specific child, blocking; returns the raw wait status.
pub fn waitpid(pid: u32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int the kernel writes the status into.
        let ret = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        match check(ret.into()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(status),
        }
    }
}

/// _exit(2): leave at once, without running atexit handlers or destructors
/// (a forked child must not flush state it shares with its parent).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interior_nul_is_rejected() {
        let err = cpath(Path::new("a\0b")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

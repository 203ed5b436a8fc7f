//! The raw system calls of PID 1 and the server: vsock sockets, the SIGCHLD
//! self-pipe, waitpid, mounts, tty resize, and the clone-fixup calls (entropy,
//! clock, hostname, power-off). Everything else in the server is safe Rust.
//!
//! The container engine's own system calls live in the engine's `sys` module.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Errors of this module: which call failed, with the kernel's errno.
#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("{0} failed")]
    Call(&'static str, #[source] io::Error),
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
}

fn check(what: &'static str, rc: libc::c_int) -> Result<libc::c_int, OsError> {
    if rc < 0 {
        Err(OsError::Call(what, io::Error::last_os_error()))
    } else {
        Ok(rc)
    }
}

fn cstring(what: &'static str, s: &str) -> Result<CString, OsError> {
    CString::new(s).map_err(|_| OsError::Nul(what))
}

/// A listening AF_VSOCK stream socket on `port`, any CID.
pub fn vsock_listen(port: u32) -> Result<OwnedFd, OsError> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = check("socket(AF_VSOCK)", unsafe {
        libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: addr is a valid sockaddr_vm and the length passed is its size.
    check("bind(vsock)", unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    // SAFETY: listen(2) on a socket we own.
    check("listen(vsock)", unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
    Ok(fd)
}

/// Accepts one connection on a listening socket (close-on-exec).
pub fn accept(listener: &OwnedFd) -> Result<OwnedFd, OsError> {
    loop {
        // SAFETY: accept4 with null address pointers is allowed; the result is checked.
        let rc = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        match check("accept4", rc) {
            // SAFETY: rc is a new descriptor that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(OsError::Call(_, e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), OsError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    check("pipe2", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Write end of the SIGCHLD self-pipe, read by the signal handler.
static SIGCHLD_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = SIGCHLD_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking, so a
        // full pipe (a wakeup already pending) just drops this byte.
        unsafe { libc::write(fd, [0u8].as_ptr().cast(), 1) };
    }
}

/// Installs a SIGCHLD handler that writes a byte to a pipe and returns the pipe's
/// read end. A handler (not a blocked signal mask) is used because masks are
/// inherited by container processes while handlers are reset by exec.
pub fn sigchld_pipe() -> Result<OwnedFd, OsError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    check("pipe2", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK)
    })?;
    // SAFETY: both descriptors are new and owned by nobody else. The write end is
    // kept open for the life of the process on purpose: the handler uses it.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    SIGCHLD_PIPE.store(fds[1], Ordering::Relaxed);
    // SAFETY: sigaction is plain data; all-zero is a valid starting value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigchld as *const () as libc::sighandler_t;
    sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
    // SAFETY: sa is initialised and the handler only does async-signal-safe work.
    check("sigaction(SIGCHLD)", unsafe {
        libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut())
    })?;
    Ok(read)
}

/// Waits up to `timeout_ms` for `fd` to become readable, then drains it.
pub fn wait_readable_and_drain(fd: &OwnedFd, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    let mut buf = [0u8; 64];
    // SAFETY: buf is writable for its length; the fd is non-blocking.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Reaps one ended child if there is one: `(pid, wait status)`.
pub fn reap_one() -> Option<(u32, i32)> {
    let mut status = 0;
    // SAFETY: waitpid writes only to status.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid as u32, status))
}

/// Makes this process the reaper of its orphaned descendants (host mode).
pub fn set_child_subreaper() -> Result<(), OsError> {
    // SAFETY: prctl with integer arguments only.
    check("prctl(PR_SET_CHILD_SUBREAPER)", unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    })?;
    Ok(())
}

/// Sends `sig` to `pid` (a negative pid is a process group).
pub fn kill(pid: i32, sig: i32) -> Result<(), OsError> {
    // SAFETY: kill(2) with integer arguments only.
    check("kill", unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// mount(2) with string arguments.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), OsError> {
    let (src, tgt) = (cstring("source", source)?, cstring("target", target)?);
    let (fst, dat) = (cstring("fstype", fstype)?, cstring("data", data)?);
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    check("mount", unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ptr(),
            flags,
            dat.as_ptr().cast(),
        )
    })?;
    Ok(())
}

/// chroot(2).
pub fn chroot(path: &str) -> Result<(), OsError> {
    let p = cstring("path", path)?;
    // SAFETY: `p` is a NUL-terminated string that outlives the call.
    check("chroot", unsafe { libc::chroot(p.as_ptr()) })?;
    Ok(())
}

/// The file system type (statfs f_type) of the file system holding `path`.
pub fn fs_type(path: &str) -> Result<i64, OsError> {
    let p = cstring("path", path)?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is NUL-terminated and `st` is a valid, writable statfs.
    check("statfs", unsafe { libc::statfs(p.as_ptr(), &mut st) })?;
    Ok(st.f_type as i64)
}

/// Sets a tty's window size (TIOCSWINSZ) through its master.
pub fn set_winsize(fd: &OwnedFd, rows: u16, cols: u16) -> Result<(), OsError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    check("ioctl(TIOCSWINSZ)", unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws)
    })?;
    Ok(())
}

/// `_IOW('R', 0x03, int[2])`: add entropy to the input pool (linux/random.h).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// The `struct rand_pool_info` RNDADDENTROPY takes: entropy count in bits, buffer
/// size in bytes, then the bytes (padded to whole u32 words).
pub fn rand_pool_info(bytes: &[u8]) -> Vec<u8> {
    let bits = i32::try_from(bytes.len().saturating_mul(8)).unwrap_or(i32::MAX);
    let mut buf = Vec::with_capacity(8 + bytes.len() + 3);
    buf.extend_from_slice(&bits.to_ne_bytes());
    buf.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    buf.extend_from_slice(bytes);
    buf.resize(buf.len().div_ceil(4) * 4, 0);
    buf
}

/// Credits `bytes` to the kernel RNG and reseeds the CRNG from it.
pub fn add_entropy(bytes: &[u8]) -> Result<(), OsError> {
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(|e| OsError::Call("open /dev/random", e))?;
    let info = rand_pool_info(bytes);
    // SAFETY: info is a complete rand_pool_info whose buf_size matches its payload.
    check("ioctl(RNDADDENTROPY)", unsafe {
        libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr())
    })?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    check("ioctl(RNDRESEEDCRNG)", unsafe {
        libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG)
    })?;
    Ok(())
}

/// Sets the wall clock.
pub fn set_realtime(ns_since_epoch: u64) -> Result<(), OsError> {
    let ts = libc::timespec {
        tv_sec: (ns_since_epoch / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns_since_epoch % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: ts is a valid timespec.
    check("clock_settime", unsafe {
        libc::clock_settime(libc::CLOCK_REALTIME, &ts)
    })?;
    Ok(())
}

pub fn set_hostname(name: &str) -> Result<(), OsError> {
    // SAFETY: the pointer and length describe name's bytes.
    check("sethostname", unsafe {
        libc::sethostname(name.as_ptr().cast(), name.len())
    })?;
    Ok(())
}

/// Flushes file systems and powers the machine off. Returns only on failure.
pub fn power_off() -> OsError {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    OsError::Call("reboot(RB_POWER_OFF)", io::Error::last_os_error())
}

/// `uname -r`.
pub fn kernel_release() -> String {
    uname_field(|u| &u.release)
}

/// The hostname of the agent's UTS namespace (`uname -n`).
pub fn hostname() -> String {
    uname_field(|u| &u.nodename)
}

fn uname_field(field: impl Fn(&libc::utsname) -> &[libc::c_char]) -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid utsname to write into.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = field(&u)
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Milliseconds since boot, suspend included.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Whether descriptor `fd` is open.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rand_pool_info_layout() {
        let info = rand_pool_info(&[1, 2, 3, 4, 5]);
        assert_eq!(info.len(), 16);
        assert_eq!(i32::from_ne_bytes(info[0..4].try_into().unwrap()), 40);
        assert_eq!(i32::from_ne_bytes(info[4..8].try_into().unwrap()), 5);
        assert_eq!(&info[8..13], &[1, 2, 3, 4, 5]);
    }

    #[test]
    fn machine_facts() {
        assert!(!kernel_release().is_empty());
        assert!(boottime_ms() > 0);
        assert!(fd_is_open(2));
        assert!(!fd_is_open(9999));
    }

    #[test]
    // The child is reaped with reap_one below, as the agent's reaper does.
    #[allow(clippy::zombie_processes)]
    fn sigchld_pipe_wakes_on_child_exit() {
        let rx = sigchld_pipe().unwrap();
        let child = std::process::Command::new("true").spawn().unwrap();
        let start = std::time::Instant::now();
        wait_readable_and_drain(&rx, 5000);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // Reap it ourselves; other tests' children may show up too.
        let mut found = false;
        for _ in 0..100 {
            if let Some((pid, status)) = reap_one() {
                if pid == child.id() {
                    assert!(libc::WIFEXITED(status));
                    found = true;
                    break;
                }
            } else {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        assert!(found);
    }
}

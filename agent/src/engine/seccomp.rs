//! A seccomp filter for every container process: a deny-list of the kernel
//! interfaces docker's default profile keeps from containers and that
//! capabilities alone do not guard.
//!
//! Owns the list and the BPF program built from it (pure, testable); the
//! installing syscall is in [`crate::sys`]. Not docker's full allow-list:
//! anything not named here is allowed. x86_64 only; other architectures'
//! syscalls (i386 via int 0x80, x32) are refused so the list cannot be
//! bypassed through another syscall table.

use libc::sock_filter;

/// `AUDIT_ARCH_X86_64` from <linux/audit.h>.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// x32 syscalls carry this bit in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0_LOW: u32 = 16;

/// Refused with EPERM: keyrings (not namespaced), io_uring, eBPF, perf,
/// userfaultfd (exploit primitives), file handles (the "shocker" escape),
/// and what needs privileges a container never has (modules, kexec, clock,
/// swap, mounts, reboot, accounting, quotas, port I/O).
const DENIED: &[(i64, &str)] = &[
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_vhangup, "vhangup"),
    (libc::SYS_uselib, "uselib"),
];

/// clone and unshare are allowed, but not with CLONE_NEWUSER: user
/// namespaces would hand the container a full capability set in a new
/// namespace, and with it much of the kernel's attack surface.
const NO_NEW_USERNS: &[i64] = &[libc::SYS_clone, libc::SYS_unshare];

/// clone3 passes its flags in memory a filter cannot read: answer ENOSYS,
/// so that libc falls back to clone (what docker does).
const ENOSYS_SYSCALLS: &[i64] = &[libc::SYS_clone3];

/// Where a jump goes, resolved when the program is assembled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Next,
    CheckUserns,
    Allow,
    Deny,
    Enosys,
}

enum Insn {
    Load(u32),
    Jump {
        op: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    Ret(u32),
}

fn load(offset: u32) -> Insn {
    Insn::Load(offset)
}

fn jeq(k: u32, jt: Target) -> Insn {
    Insn::Jump {
        op: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        k,
        jt,
        jf: Target::Next,
    }
}

/// The filter program, ready for [`crate::sys::install_seccomp`].
pub fn program() -> Vec<sock_filter> {
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | e as u32;
    let mut insns = vec![
        load(OFFSET_ARCH),
        Insn::Jump {
            op: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            k: AUDIT_ARCH_X86_64,
            jt: Target::Next,
            jf: Target::Deny,
        },
        load(OFFSET_NR),
        Insn::Jump {
            op: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            k: X32_SYSCALL_BIT,
            jt: Target::Deny,
            jf: Target::Next,
        },
    ];
    insns.extend(DENIED.iter().map(|&(nr, _)| jeq(nr as u32, Target::Deny)));
    insns.extend(
        ENOSYS_SYSCALLS
            .iter()
            .map(|&nr| jeq(nr as u32, Target::Enosys)),
    );
    insns.extend(
        NO_NEW_USERNS
            .iter()
            .map(|&nr| jeq(nr as u32, Target::CheckUserns)),
    );
    insns.push(Insn::Ret(libc::SECCOMP_RET_ALLOW));
    // Labels, in this order, at the end.
    let labels = [
        (
            Target::CheckUserns,
            vec![
                load(OFFSET_ARG0_LOW),
                Insn::Jump {
                    op: (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16,
                    k: libc::CLONE_NEWUSER as u32,
                    jt: Target::Deny,
                    jf: Target::Allow,
                },
            ],
        ),
        (Target::Allow, vec![Insn::Ret(libc::SECCOMP_RET_ALLOW)]),
        (Target::Deny, vec![Insn::Ret(errno(libc::EPERM))]),
        (Target::Enosys, vec![Insn::Ret(errno(libc::ENOSYS))]),
    ];
    let mut positions = Vec::new();
    for (label, body) in labels {
        positions.push((label, insns.len()));
        insns.extend(body);
    }
    let at = |t: Target| positions.iter().find(|(l, _)| *l == t).map(|(_, p)| *p);
    insns
        .iter()
        .enumerate()
        .map(|(i, insn)| match *insn {
            Insn::Load(k) => stmt((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, k),
            Insn::Ret(k) => stmt((libc::BPF_RET | libc::BPF_K) as u16, k),
            Insn::Jump { op, k, jt, jf } => {
                let offset = |t: Target| match at(t) {
                    None => 0,
                    Some(p) => u8::try_from(p - i - 1).expect("seccomp jump fits in u8"),
                };
                sock_filter {
                    code: op,
                    jt: offset(jt),
                    jf: offset(jf),
                    k,
                }
            }
        })
        .collect()
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the subset of classic BPF the program uses.
    fn run(prog: &[sock_filter], nr: u32, arch: u32, arg0: u32) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let f = prog[pc];
            let class = u32::from(f.code) & 0x07;
            match class {
                c if c == libc::BPF_LD => {
                    acc = match f.k {
                        OFFSET_NR => nr,
                        OFFSET_ARCH => arch,
                        OFFSET_ARG0_LOW => arg0,
                        other => panic!("load of offset {other}"),
                    };
                    pc += 1;
                }
                c if c == libc::BPF_RET => return f.k,
                _ => {
                    let op = u32::from(f.code) & 0xf0;
                    let taken = match op {
                        o if o == libc::BPF_JEQ => acc == f.k,
                        o if o == libc::BPF_JGE => acc >= f.k,
                        o if o == libc::BPF_JSET => acc & f.k != 0,
                        other => panic!("jump op {other:#x}"),
                    };
                    pc += 1 + usize::from(if taken { f.jt } else { f.jf });
                }
            }
        }
    }

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn ordinary_syscalls_pass() {
        let prog = program();
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_openat,
        ] {
            assert_eq!(
                run(&prog, nr as u32, AUDIT_ARCH_X86_64, 0),
                libc::SECCOMP_RET_ALLOW,
                "{nr}"
            );
        }
    }

    #[test]
    fn every_denied_syscall_is_refused() {
        let prog = program();
        for &(nr, name) in DENIED {
            assert_eq!(run(&prog, nr as u32, AUDIT_ARCH_X86_64, 0), EPERM, "{name}");
        }
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        assert_eq!(
            run(&prog, libc::SYS_clone3 as u32, AUDIT_ARCH_X86_64, 0),
            enosys
        );
    }

    #[test]
    fn user_namespaces_are_refused_but_fork_is_not() {
        let prog = program();
        let newuser = libc::CLONE_NEWUSER as u32;
        for nr in [libc::SYS_clone, libc::SYS_unshare] {
            assert_eq!(run(&prog, nr as u32, AUDIT_ARCH_X86_64, newuser), EPERM);
            let fork = libc::SIGCHLD as u32;
            assert_eq!(
                run(&prog, nr as u32, AUDIT_ARCH_X86_64, fork),
                libc::SECCOMP_RET_ALLOW
            );
        }
    }

    #[test]
    fn other_syscall_tables_are_refused() {
        let prog = program();
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        assert_eq!(run(&prog, 0, AUDIT_ARCH_I386, 0), EPERM);
        assert_eq!(run(&prog, X32_SYSCALL_BIT | 1, AUDIT_ARCH_X86_64, 0), EPERM);
    }
}

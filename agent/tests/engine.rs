//! The container engine on the host, as root, against the busybox rootfs
//! from resources/build-rootfs.sh (built on first use): what a container
//! sees from the inside — namespaces, mounts, user, capabilities, stdio.
//! Skips, with a message, when not root. Harness: `engine_harness`.

use std::os::unix::fs::PermissionsExt;

mod engine_harness;

use std::fs::File;
use std::io::Write;

use spore_agent::engine::{default_capability_mask, ContainerIo};
use spore_agent::protocol::spec::Rlimit;

use engine_harness::*;

#[test]
fn container_sees_its_own_pid_hostname_mounts_and_network() {
    let Some(mut h) = Harness::new("isolation") else {
        return;
    };
    let mut spec = h.spec(&[
        "sh",
        "-c",
        "echo $$; hostname; echo $HOSTNAME; cat /etc/hostname; grep -c box /etc/hosts; stat -c %a /etc/hosts; grep ^0:: /proc/self/cgroup; cat /proc/self/mountinfo; echo NET; cat /proc/net/dev",
    ]);
    spec.hostname = Some("box".into());
    let (exit, out, err) = h.run("iso", &spec);
    assert_eq!(exit.exit.code, 0, "stderr: {err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1"), "{out}");
    for _ in ["uname", "$HOSTNAME", "/etc/hostname"] {
        assert_eq!(lines.next(), Some("box"));
    }
    assert_eq!(lines.next(), Some("1"), "box in /etc/hosts");
    assert_eq!(lines.next(), Some("644"), "mode of /etc/hosts");
    assert_eq!(lines.next(), Some("0::/"), "cgroup namespace");
    let (mounts, net) = out.split_once("NET\n").unwrap();
    let allowed = [
        "/",
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
    ];
    for line in mounts.lines().skip(7) {
        let target = line.split_whitespace().nth(4).unwrap();
        // Masked kernel files, and the device nodes bound into /dev.
        let devices = ["null", "zero", "full", "random", "urandom", "tty"];
        let masked = target.starts_with("/proc/")
            || target.starts_with("/sys/")
            || target
                .strip_prefix("/dev/")
                .is_some_and(|d| devices.contains(&d));
        assert!(
            allowed.contains(&target) || masked,
            "host mount {target} visible: {line}"
        );
    }
    let ifaces: Vec<&str> = net
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"]);
}

/// The no-pivot_root path (MS_MOVE + chroot, for an agent running from an
/// initramfs) isolates as well: the isolation test again, in a fresh test
/// process with the engine's knob set.
#[test]
fn without_pivot_root_the_container_is_isolated_too() {
    if !is_root() {
        return;
    }
    let name = "container_sees_its_own_pid_hostname_mounts_and_network";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1"])
        .env(spore_agent::engine::NO_PIVOT_ENV, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
fn user_cwd_and_env_are_honoured() {
    let Some(mut h) = Harness::new("process") else {
        return;
    };
    let mut spec = h.spec(&["sh", "-c", "id -u; id -g; pwd; echo $GREETING; echo $HOME"]);
    spec.user = Some("nobody".into());
    spec.cwd = Some("/tmp".into());
    spec.env = vec!["GREETING=hello".into()];
    let (exit, out, err) = h.run("nobody", &spec);
    assert_eq!(exit.exit.code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["65534", "65534", "/tmp", "hello", "/nonexistent"]
    );

    let mut spec = h.spec(&["id", "-G"]);
    spec.user = Some("spore".into());
    let (_, out, _) = h.run("spore", &spec);
    assert_eq!(out.trim(), "1000 10");

    let mut spec = h.spec(&[
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; stat -c %a /; touch /made-here && echo writable",
    ]);
    spec.rlimits.insert(
        "nofile".into(),
        Rlimit {
            soft: 123,
            hard: 456,
        },
    );
    let (exit, out, err) = h.run("limits", &spec);
    assert_eq!(exit.exit.code, 0, "{err}");
    let root_mode = format!(
        "{:o}",
        std::fs::metadata(rootfs()).unwrap().permissions().mode() & 0o7777
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["123", "456", root_mode.as_str(), "writable"]
    );
    assert!(
        !rootfs().join("made-here").exists(),
        "a write reached the image"
    );
}

#[test]
fn privileges_are_reduced() {
    let Some(mut h) = Harness::new("caps") else {
        return;
    };
    let (exit, out, _) = h.run("caps", &h.spec(&["cat", "/proc/self/status"]));
    assert_eq!(exit.exit.code, 0);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        field("CapEff:"),
        format!("{:016x}", default_capability_mask())
    );
    assert_eq!(field("CapEff:"), "00000000a80425fb");
    assert_eq!(field("CapBnd:"), "00000000a80425fb");
    assert_eq!(field("CapAmb:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");

    // The seccomp filter: no user namespaces, while fork still works.
    let script = "unshare -U true; echo $?; (true) && echo forked";
    let (_, out, err) = h.run("userns", &h.spec(&["sh", "-c", script]));
    assert_eq!(out, "1\nforked\n", "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");

    // CAP_MKNOD stays (docker's set), but a node made in the container opens
    // nothing: the root and /dev are nodev; the real nodes still work.
    let script =
        "mknod /tmp/mem c 1 1 && mknod /dev/mem2 c 1 1 && ls /tmp/mem /dev/mem2 >/dev/null \
                  && ! head -c1 /tmp/mem && ! head -c1 /dev/mem2 && echo hi >/dev/null \
                  && head -c3 /dev/zero | wc -c";
    let (exit, out, err) = h.run("mknod", &h.spec(&["sh", "-c", script]));
    assert_eq!((exit.exit.code, out.trim()), (0, "3"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn large_output_arrives_complete_and_stdin_reaches_the_program() {
    let Some(mut h) = Harness::new("stdio") else {
        return;
    };
    let (exit, out, _) = h.run("big", &h.spec(&["head", "-c", "3145728", "/dev/zero"]));
    assert_eq!(exit.exit.code, 0);
    assert_eq!(out.len(), 3 << 20);

    let mut spec = h.spec(&["sh", "-c", "cat; echo done >&2"]);
    spec.stdin = true;
    let io = h.engine.create("cat", &spec).unwrap();
    h.engine.start("cat").unwrap();
    let pid = h.engine.state("cat").unwrap().pid;
    File::from(io.stdin.unwrap())
        .write_all(b"through the pipe")
        .unwrap();
    let (out, err) = drain(ContainerIo { stdin: None, ..io });
    assert_eq!((out.as_str(), err.as_str()), ("through the pipe", "done\n"));
    assert_eq!(h.reap(pid).exit.code, 0);
}

#[test]
fn tty_mode_gives_a_controlling_terminal() {
    let Some(mut h) = Harness::new("tty") else {
        return;
    };
    let mut spec = h.spec(&["sh", "-c", "tty; test -t 0 && echo interactive"]);
    spec.tty = true;
    let io = h.engine.create("tty", &spec).unwrap();
    assert!(io.stderr.is_none());
    h.engine.start("tty").unwrap();
    let pid = h.engine.state("tty").unwrap().pid;
    let (out, _) = drain(io);
    assert_eq!(h.reap(pid).exit.code, 0);
    assert_eq!(out.replace('\r', ""), "/dev/pts/0\ninteractive\n");
}

#[test]
fn image_files_serve_as_the_lower_layer() {
    let Some(mut h) = Harness::new("images") else {
        return;
    };
    let dir = h.cfg.run_dir.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let builders: [(&str, &[&str]); 2] = [
        ("mkfs.erofs", &["IMG", "ROOT"]),
        ("mkfs.ext4", &["-q", "-F", "-d", "ROOT", "IMG", "32M"]),
    ];
    for (tool, args) in builders {
        let image = dir.join(format!("{tool}.img"));
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "IMG" => image.display().to_string(),
                "ROOT" => rootfs().display().to_string(),
                other => other.to_owned(),
            })
            .collect();
        let built = std::process::Command::new(tool).args(&args).output();
        if !built.is_ok_and(|o| o.status.success()) {
            eprintln!("skipping {tool}: not available");
            continue;
        }
        let mut spec = h.spec(&[
            "sh",
            "-c",
            "test -f /.spore-rootfs && echo image; grep ' / ' /proc/self/mountinfo",
        ]);
        spec.rootfs.lower = image;
        let (exit, out, err) = h.run(tool.trim_start_matches("mkfs."), &spec);
        assert_eq!(exit.exit.code, 0, "{tool}: {err}");
        assert!(
            out.starts_with("image\n") && out.contains("overlay"),
            "{tool}: {out}"
        );
    }

    // A block device as the lower layer: the ext4 image on a loop device.
    let image = dir.join("mkfs.ext4.img");
    let attached = std::process::Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(&image)
        .output();
    let Some(device) = attached
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    else {
        eprintln!("skipping the block device: losetup or the ext4 image missing");
        return;
    };
    let mut spec = h.spec(&["test", "-f", "/.spore-rootfs"]);
    spec.rootfs.lower = std::path::PathBuf::from(&device);
    let (exit, _, err) = h.run("blockdev", &spec);
    let detached = std::process::Command::new("losetup")
        .args(["-d", &device])
        .status();
    assert_eq!(exit.exit.code, 0, "{device}: {err}");
    assert!(detached.is_ok_and(|s| s.success()), "losetup -d {device}");
}

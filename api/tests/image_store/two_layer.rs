//! Point 6 / the end-to-end tree check: the two-layer image imported, its erofs
//! image mounted read-only through a loop device, and the tree exactly as the
//! layers say: whiteouts applied, the opaque /data emptied then refilled, links
//! and modes kept; plus the Env/WorkingDir/User a container would get.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::common::{require_root, test_images, Scratch};
use crate::image::{import, mount_readonly, resolve_process, Source};

/// "path kind mode uid:gid" for everything except busybox's applet symlinks.
fn describe(root: &Path, rel: &Path, out: &mut BTreeSet<String>) {
    for entry in fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(root.join(&rel)).unwrap();
        let kind = if meta.is_dir() {
            "dir"
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(root.join(&rel)).unwrap();
            if rel.starts_with("bin") && target == Path::new("busybox") {
                continue;
            }
            "link"
        } else {
            "file"
        };
        out.insert(format!(
            "{} {kind} {:o} {}:{}",
            rel.display(),
            meta.permissions().mode() & 0o7777,
            meta.uid(),
            meta.gid()
        ));
        if meta.is_dir() {
            describe(root, &rel, out);
        }
    }
}

const EXPECTED: &[&str] = &[
    "app dir 755 1000:1000",
    "app/hello-hard file 755 1000:1000",
    "app/hello-link link 777 0:0",
    "app/hello.sh file 755 1000:1000",
    "bin dir 755 0:0",
    "bin/busybox file 755 0:0",
    "bin/busybox-hard file 755 0:0",
    "bin/suid-file file 4755 0:0",
    "data dir 755 0:0",
    "data/new file 644 0:0",
    "data/sub dir 755 0:0",
    "data/sub/fresh file 644 0:0",
    "etc dir 755 0:0",
    "etc/group file 644 0:0",
    "etc/motd file 644 0:0",
    "etc/passwd file 644 0:0",
    "root dir 700 0:0",
    "secret dir 700 0:0",
    "secret/key file 600 0:0",
    "tmp dir 1777 0:0",
    "usr dir 755 0:0",
    "usr/share dir 755 0:0",
];

#[test]
fn two_layer_image_mounts_with_the_exact_tree() {
    require_root!();
    let scratch = Scratch::new("two-layer");
    let store = scratch.store();
    let record = import(
        &store,
        &Source::Archive(test_images().join("twolayer-docker.tar")),
    )
    .unwrap();
    let digest = record.digest.parse().unwrap();
    let mount = mount_readonly(&store.image_path(&digest)).unwrap();
    let root = mount.target().to_path_buf();

    let mut tree = BTreeSet::new();
    describe(&root, Path::new(""), &mut tree);
    let expected: BTreeSet<String> = EXPECTED.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        tree.symmetric_difference(&expected).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "tree differs (left: unexpected or missing)"
    );

    // Contents: replaced, refilled; links kept as links.
    assert_eq!(fs::read_to_string(root.join("etc/motd")).unwrap(), "two\n");
    assert_eq!(fs::read_to_string(root.join("data/new")).unwrap(), "new\n");
    assert_eq!(
        fs::read_link(root.join("app/hello-link")).unwrap(),
        Path::new("/app/hello.sh")
    );
    let hello = fs::metadata(root.join("app/hello.sh")).unwrap();
    assert_eq!(
        hello.ino(),
        fs::metadata(root.join("app/hello-hard")).unwrap().ino()
    );
    assert_eq!(hello.nlink(), 2);
    let busybox = fs::metadata(root.join("bin/busybox")).unwrap();
    assert_eq!(
        busybox.ino(),
        fs::metadata(root.join("bin/busybox-hard")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );

    // Read-only, and gone when dropped.
    let err = fs::write(root.join("etc/motd"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let device = mount.device().to_path_buf();
    drop(mount);
    assert!(!root.exists(), "mount point left behind");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&root.display().to_string()));
    let backing = Path::new("/sys/block")
        .join(device.file_name().unwrap())
        .join("loop/backing_file");
    // The device may already serve another mount (tests run in parallel); it
    // must no longer be backed by this image.
    let image = store.image_path(&digest);
    let backed_by = fs::read_to_string(&backing).unwrap_or_default();
    assert_ne!(
        backed_by.trim(),
        image.display().to_string(),
        "loop device {} still attached",
        device.display()
    );

    // What the container would be given.
    let cc = store.config(&digest).unwrap().config.unwrap_or_default();
    let p = resolve_process(&cc, None, vec![], vec![], None, None).unwrap();
    assert_eq!(p.env, ["PATH=/bin", "GREETING=hello"]);
    assert_eq!(p.cwd, "/app");
    assert_eq!(p.user.as_deref(), Some("1000:1000"));
}

//! Point 2: one read-only filesystem image per image digest, mountable through a
//! loop device; and the erofs vs ext4 measurement (figures printed, not timed).

use std::path::PathBuf;

use crate::common::{require_root, test_images, Scratch};
use crate::image::fsimage::{self, FsFormat};
use crate::image::measure::{self, read_tree};
use crate::image::{import, mount_readonly, Source};

#[test]
fn each_image_has_one_erofs_file_that_mounts() {
    require_root!();
    let scratch = Scratch::new("fsimage");
    let store = scratch.store();
    let record = import(&store, &Source::Layout(test_images().join("busybox"))).unwrap();
    let digest = record.digest.parse().unwrap();
    let path = store.image_path(&digest);
    assert_eq!(path.file_name().unwrap(), "rootfs.erofs");
    assert_eq!(fsimage::detect(&path).unwrap(), FsFormat::Erofs);
    assert_eq!(record.size, std::fs::metadata(&path).unwrap().len());
    // Two mounts of the same file at once: every sandbox shares the one image.
    let a = mount_readonly(&path).unwrap();
    let b = mount_readonly(&path).unwrap();
    assert_ne!(a.device(), b.device());
    let (files, _) = read_tree(a.target()).unwrap();
    assert_eq!(read_tree(b.target()).unwrap().0, files);
    assert!(a.target().join("bin/busybox").is_file());
}

/// Both formats of the same tree read back the same files. Prints the figures;
/// `SPORE_MEASURE_DIR` picks a bigger tree than the busybox image (e.g. /usr/lib).
#[test]
fn measure_erofs_vs_ext4() {
    require_root!();
    let scratch = Scratch::new("measure");
    let src = match std::env::var_os("SPORE_MEASURE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let store = scratch.store();
            let record = import(&store, &Source::Layout(test_images().join("busybox"))).unwrap();
            let image = store.image_path(&record.digest.parse().unwrap());
            let mounted = mount_readonly(&image).unwrap();
            let copy = scratch.0.join("tree");
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(mounted.target())
                .arg(&copy)
                .status()
                .unwrap();
            assert!(status.success());
            copy
        }
    };
    let (files, bytes) = read_tree(&src).unwrap();
    let results = measure::measure(&src, &scratch.0).unwrap();
    for m in &results {
        eprintln!("{}", m.line());
        assert_eq!(
            (m.files, m.bytes),
            (files, bytes),
            "{:?} read back differently",
            m.format
        );
    }
    assert_eq!(results.len(), 2);
}

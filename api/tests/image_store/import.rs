//! Point 1: import from a layout directory, an OCI archive and a docker-archive;
//! all three give the same image (same config digest), stored once.

use crate::common::{require_root, test_images, Scratch};
use crate::image::{import, Source};

#[test]
fn the_three_formats_import_to_the_same_image() {
    require_root!();
    let images = test_images();
    let scratch = Scratch::new("import");
    let store = scratch.store();
    for name in ["busybox", "twolayer"] {
        let layout = import(&store, &Source::Layout(images.join(name))).unwrap();
        let oci = import(
            &store,
            &Source::Archive(images.join(format!("{name}-oci.tar"))),
        )
        .unwrap();
        let docker = import(
            &store,
            &Source::Archive(images.join(format!("{name}-docker.tar"))),
        )
        .unwrap();
        assert_eq!(layout.digest, oci.digest);
        assert_eq!(layout.digest, docker.digest);
        assert_eq!(layout.tags, vec![format!("spore-test/{name}:latest")]);
        assert!(layout.manifest_digest.is_some());
        assert_eq!(layout.format, "erofs");
        assert!(layout.size > 0);
    }
    let records = store.list().unwrap();
    assert_eq!(records.len(), 2, "each image stored once: {records:?}");
    let two = store.resolve("spore-test/twolayer").unwrap();
    assert_eq!(store.record(&two).unwrap().layers, 2);
    assert!(store.image_path(&two).is_file());
    assert!(store
        .root()
        .join("images")
        .join(two.hex())
        .join("config.json")
        .is_file());
    store.remove(&two).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn a_gzipped_archive_imports_too() {
    require_root!();
    let images = test_images();
    let scratch = Scratch::new("import-gz");
    let tar = std::fs::read(images.join("busybox-oci.tar")).unwrap();
    let gz = scratch.0.join("busybox-oci.tar.gz");
    std::fs::write(&gz, crate::common::gzip(&tar)).unwrap();
    let store = scratch.store();
    let record = import(&store, &Source::Archive(gz)).unwrap();
    assert_eq!(record.layers, 1);
}

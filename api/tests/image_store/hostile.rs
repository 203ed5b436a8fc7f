//! Point 5: hostile input. Each case is rejected with an error naming the
//! problem, nothing is written outside the store, and the store is left exactly
//! as it was (no image, no staging directory).

use std::error::Error;
use std::fs;
use std::path::Path;

use tar::EntryType;

use crate::common::{assert_store_clean, gzip, raw_tar, tar_with_file, write_layout, Scratch};
use crate::image::digest::Digest;
use crate::image::{import, Limits, Source, Store};

/// The whole cause chain, as `spore` prints it.
fn chain(err: &dyn Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Imports a layout made of `layers` (each a tar, stored as given) and returns
/// the error's chain; asserts the store is untouched.
fn rejected(scratch: &Scratch, store: &Store, layers: Vec<Vec<u8>>) -> String {
    let layers = layers
        .into_iter()
        .map(|t| {
            let d = Digest::of(&t);
            (t, d)
        })
        .collect::<Vec<_>>();
    let layout = write_layout(&scratch.0.join("layout"), &layers, "");
    rejected_source(store, &Source::Layout(layout))
}

fn rejected_source(store: &Store, source: &Source) -> String {
    let err = import(store, source).expect_err("hostile image was accepted");
    assert_store_clean(store);
    chain(&err)
}

fn end(mut entries: Vec<u8>) -> Vec<u8> {
    entries.extend_from_slice(&[0u8; 1024]);
    entries
}

#[test]
fn path_traversal_and_absolute_paths() {
    let scratch = Scratch::new("hostile-traversal");
    let store = scratch.store();
    let msg = rejected(
        &scratch,
        &store,
        vec![end(raw_tar(EntryType::Regular, "../../escape", "", b"x"))],
    );
    assert!(msg.contains("leaves the image root"), "{msg}");
    let msg = rejected(
        &scratch,
        &store,
        vec![end(raw_tar(EntryType::Regular, "/abs", "", b"x"))],
    );
    assert!(msg.contains("absolute path"), "{msg}");
    assert!(!scratch.0.join("escape").exists() && !store.root().join("escape").exists());
}

#[test]
fn links_pointing_outside_and_writes_through_symlinks() {
    let scratch = Scratch::new("hostile-links");
    let outside = scratch.0.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let store = scratch.store();
    let target = outside.to_str().unwrap();

    // Within one layer, and across two layers.
    let mut one = raw_tar(EntryType::Symlink, "esc", target, b"");
    one.extend(raw_tar(EntryType::Regular, "esc/owned", "", b"x"));
    let msg = rejected(&scratch, &store, vec![end(one)]);
    assert!(msg.contains("goes through the symlink"), "{msg}");
    let lower = end(raw_tar(EntryType::Symlink, "esc", target, b""));
    let upper = end(raw_tar(EntryType::Regular, "esc/owned", "", b"x"));
    let msg = rejected(&scratch, &store, vec![lower, upper]);
    assert!(msg.contains("goes through the symlink"), "{msg}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the store"
    );

    let msg = rejected(
        &scratch,
        &store,
        vec![end(raw_tar(EntryType::Symlink, "a/up", "../../etc", b""))],
    );
    assert!(msg.contains("points outside the image root"), "{msg}");
    let msg = rejected(
        &scratch,
        &store,
        vec![end(raw_tar(EntryType::Link, "h", "../etc/passwd", b""))],
    );
    assert!(msg.contains("leaves the image root"), "{msg}");
    let msg = rejected(
        &scratch,
        &store,
        vec![end(raw_tar(EntryType::Link, "h", "/etc/passwd", b""))],
    );
    assert!(msg.contains("absolute path"), "{msg}");
}

#[test]
fn digest_mismatch_in_layer_config_and_manifest() {
    let scratch = Scratch::new("hostile-digest");
    let store = scratch.store();
    let tar = tar_with_file("a", b"hello");
    let layout = write_layout(&scratch.0.join("l"), &[(tar.clone(), Digest::of(&tar))], "");
    let layer_blob = layout.join("blobs/sha256").join(Digest::of(&tar).hex());
    let mut tampered = tar.clone();
    tampered[512] ^= 1; // the file's content, not its header
    fs::write(&layer_blob, &tampered).unwrap();
    let msg = rejected_source(&store, &Source::Layout(layout.clone()));
    assert!(msg.contains("digest mismatch"), "{msg}");

    // A layer that matches its blob digest but not the config's diff_id.
    let layout = write_layout(
        &scratch.0.join("d"),
        &[(tar.clone(), Digest::of(b"other"))],
        "",
    );
    let msg = rejected_source(&store, &Source::Layout(layout));
    assert!(msg.contains("digest mismatch"), "{msg}");

    // The config blob edited in place.
    let layout = write_layout(&scratch.0.join("c"), &[(tar.clone(), Digest::of(&tar))], "");
    for entry in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap_or_default();
        if text.contains("diff_ids") {
            fs::write(&path, text.replace("/bin/sh", "/bin/xx")).unwrap();
        }
    }
    let msg = rejected_source(&store, &Source::Layout(layout));
    assert!(msg.contains("digest mismatch"), "{msg}");
}

#[test]
fn truncated_and_corrupt_layers() {
    let scratch = Scratch::new("hostile-corrupt");
    let store = scratch.store();
    let tar = tar_with_file("big", &[7u8; 100_000]);
    let gz = gzip(&tar);
    let cut = gz[..gz.len() / 2].to_vec();
    // Blob digest of the truncated bytes (as a lying registry would serve them).
    let layout = write_layout(&scratch.0.join("t"), &[(cut, Digest::of(&tar))], "");
    let msg = rejected_source(&store, &Source::Layout(layout));
    assert!(msg.contains("corrupt or truncated layer data"), "{msg}");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let msg = rejected(&scratch, &store, vec![garbage]);
    assert!(msg.contains("corrupt or truncated layer data"), "{msg}");
    // An archive cut short.
    let archive = scratch.0.join("cut.tar");
    let images = crate::common::test_images();
    if crate::common::is_root() {
        let full = fs::read(images.join("busybox-oci.tar")).unwrap();
        fs::write(&archive, &full[..full.len() / 2]).unwrap();
        let msg = rejected_source(&store, &Source::Archive(archive));
        assert!(msg.contains("image archive"), "{msg}");
    }
}

#[test]
fn absurd_layer_counts_sizes_and_entry_counts() {
    let scratch = Scratch::new("hostile-counts");
    let store = scratch.store();
    let layers: Vec<Vec<u8>> = (0..129)
        .map(|i| tar_with_file(&format!("f{i}"), b""))
        .collect();
    let msg = rejected(&scratch, &store, layers);
    assert!(
        msg.contains("layers: 129 is over the limit of 128"),
        "{msg}"
    );

    let small = scratch.store().with_limits(Limits {
        max_unpacked_bytes: 1 << 20,
        ..Limits::default()
    });
    let msg = rejected(
        &scratch,
        &small,
        vec![tar_with_file("big", &vec![1u8; 2 << 20])],
    );
    assert!(msg.contains("exceeds the limit of 1048576 bytes"), "{msg}");

    let few = scratch.store().with_limits(Limits {
        max_entries: 10,
        ..Limits::default()
    });
    let mut many = Vec::new();
    for i in 0..20 {
        many.extend(raw_tar(EntryType::Regular, &format!("f{i}"), "", b""));
    }
    let msg = rejected(&scratch, &few, vec![end(many)]);
    assert!(
        msg.contains("entries in image: 11 is over the limit of 10"),
        "{msg}"
    );
}

#[test]
fn decompression_bomb() {
    let scratch = Scratch::new("hostile-bomb");
    let store = scratch.store().with_limits(Limits {
        ratio_floor_bytes: 4 << 20,
        ..Limits::default()
    });
    let bomb = gzip(&tar_with_file("zeros", &vec![0u8; 32 << 20]));
    assert!(bomb.len() < 100_000);
    let msg = rejected(&scratch, &store, vec![bomb]);
    assert!(msg.contains("unpacked layer exceeds the limit"), "{msg}");
}

#[test]
fn oversized_json_documents() {
    let scratch = Scratch::new("hostile-json");
    let store = scratch.store();
    let tar = tar_with_file("a", b"x");
    let pad = format!(r#","pad":"{}""#, "x".repeat(5 << 20));
    let layout = write_layout(
        &scratch.0.join("c"),
        &[(tar.clone(), Digest::of(&tar))],
        &pad,
    );
    let msg = rejected_source(&store, &Source::Layout(layout));
    assert!(msg.contains("over the limit of 4194304"), "{msg}");

    let layout = write_layout(&scratch.0.join("i"), &[(tar.clone(), Digest::of(&tar))], "");
    let index = fs::read_to_string(layout.join("index.json")).unwrap();
    let big = index.replacen('{', &format!(r#"{{"pad":"{}","#, "y".repeat(5 << 20)), 1);
    fs::write(layout.join("index.json"), big).unwrap();
    let msg = rejected_source(&store, &Source::Layout(layout));
    assert!(msg.contains("over the limit of 4194304"), "{msg}");
}

#[test]
fn hostile_archive_paths() {
    let scratch = Scratch::new("hostile-archive");
    let store = scratch.store();
    for (name, link) in [("../evil", ""), ("/evil", "")] {
        let archive = scratch.0.join("evil.tar");
        fs::write(&archive, end(raw_tar(EntryType::Regular, name, link, b"x"))).unwrap();
        let msg = rejected_source(&store, &Source::Archive(archive));
        assert!(msg.contains("unsafe path in image archive"), "{msg}");
    }
    let archive = scratch.0.join("link.tar");
    fs::write(
        &archive,
        end(raw_tar(
            EntryType::Symlink,
            "manifest.json",
            "/etc/passwd",
            b"",
        )),
    )
    .unwrap();
    let msg = rejected_source(&store, &Source::Archive(archive));
    assert!(msg.contains("does not name a file in the archive"), "{msg}");
    assert!(!Path::new(&scratch.0)
        .parent()
        .unwrap()
        .join("evil")
        .exists());
}

#[test]
fn a_layer_that_is_not_a_file_is_refused_without_blocking() {
    let scratch = Scratch::new("hostile-fifo");
    let store = scratch.store();
    let tar = tar_with_file("a", b"x");
    let layout = write_layout(&scratch.0.join("f"), &[(tar.clone(), Digest::of(&tar))], "");
    let blob = layout.join("blobs/sha256").join(Digest::of(&tar).hex());
    fs::remove_file(&blob).unwrap();
    crate::image::sys::mkfifo(&blob, 0o600).unwrap();
    let msg = rejected_source(&store, &Source::Layout(layout));
    assert!(msg.contains("not a regular file"), "{msg}");
}

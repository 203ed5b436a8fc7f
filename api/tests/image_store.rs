//! Integration tests of the image store (issue 6), one file per point under
//! `image_store/`. The store is a module of the `spore` binary crate, so it is
//! compiled into this test crate directly; its unit tests run here too.
//!
//! The tests that mount need root (loop devices); they skip with a message without it.

#[path = "../src/image/mod.rs"]
mod image;

#[path = "image_store/common.rs"]
mod common;
#[path = "image_store/config.rs"]
mod config;
#[path = "image_store/fsimage.rs"]
mod fsimage;
#[path = "image_store/hostile.rs"]
mod hostile;
#[path = "image_store/import.rs"]
mod import;
#[path = "image_store/registry.rs"]
mod registry;
#[path = "image_store/two_layer.rs"]
mod two_layer;

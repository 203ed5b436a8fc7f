//! Integration tests of the image store (issue 6), one file per point under
//! `image_store/`. The store is a module of the `spore` binary crate, so it is
//! compiled into this test crate directly; its unit tests run here too.

#[allow(dead_code, unused_imports)]
#[path = "../src/image/mod.rs"]
mod image;

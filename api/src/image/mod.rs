//! The image store: imports OCI and docker images, unpacks their layers safely,
//! builds one read-only filesystem image per image and mounts it.
#![allow(dead_code)]

pub mod config;
pub mod digest;
pub mod limits;
pub mod safepath;
pub mod spec;
pub mod sys;
pub mod unpack;
pub mod whiteout;
pub mod archive;
pub mod docker;
pub mod fsimage;
pub mod layout;
pub mod mount;

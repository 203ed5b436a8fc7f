//! The image store: imports OCI and docker images, unpacks their layers safely,
//! builds one read-only filesystem image (erofs) per image and mounts it.
//!
//! What the CLI and daemon use:
//! - [`Store`]: `open`, `list`, `resolve` (tag, digest or prefix), `record`,
//!   `config`, `remove`, `image_path(digest)`;
//! - [`import`] with a [`Source`] (layout directory, OCI/docker archive, registry);
//! - [`resolve_process`]: image config + `docker run`-style overrides → argv/env/cwd/user;
//! - [`mount_readonly`]: the loop mount the `process` backend uses as overlay lower;
//! - [`measure::measure`]: erofs vs ext4 figures for `spore bench`.
//!
//! Not here: attaching the image to a VM's virtio-blk slot (the VMM), the overlay
//! itself (the agent), and the REST routes (the control plane).
// The CLI wires these in later; until then not everything has a caller.
#![allow(dead_code, unused_imports)]

pub mod archive;
pub mod config;
pub mod digest;
pub mod docker;
pub mod entries;
pub mod fsimage;
pub mod import;
pub mod layout;
pub mod limits;
pub mod measure;
pub mod mount;
pub mod registry;
pub mod safepath;
pub mod spec;
pub mod store;
pub mod sys;
#[cfg(test)]
mod test_util;
pub mod unpack;
pub mod whiteout;

pub use config::{resolve_process, ConfigError, ProcessSpec};
pub use digest::Digest;
pub use import::{import, ImportError, Source};
pub use limits::Limits;
pub use mount::{mount_readonly, Mount, MountError};
pub use store::{ImageRecord, Store, StoreError};

//! One module per top-level command; each parses its flags and calls into the
//! library modules. Commands return the process exit code.

pub mod bench;
pub mod bench_run;
pub mod clone_bench;
pub mod doctor;
pub mod exec;
pub mod image;
pub mod logs;
pub mod ps;
pub mod rm;
pub mod run;
pub mod serve;
pub mod template;
pub mod template_persist;
pub mod vm;

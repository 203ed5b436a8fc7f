//! What a client asks a sandbox to be ([`SandboxSpec`], the API's JSON) and its
//! validation into what the supervisor runs ([`Plan`]).
//!
//! Validation is pure: it resolves nothing on disk except through the given image
//! resolver, so it is tested without a daemon.

use serde::{Deserialize, Serialize};
use spore_agent::protocol::spec::{ContainerSpec, ExecSpec, Limits, RootfsSpec};

use super::images::{ImagesError, ResolvedImage};
use super::SupervisorError;
use crate::backend::Isolation;
use crate::image::resolve_process;
use crate::image::spec::ContainerConfig;

/// The container spec of `POST /v1/sandboxes` and `POST /v1/run`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// An imported image (tag, digest or digest prefix), or the built-in `busybox`.
    pub image: String,
    /// Replaces the image's Entrypoint and drops its Cmd (docker's
    /// `--entrypoint`); `[""]` means none.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Arguments replacing the image's Cmd; for the built-in busybox, the
    /// program and arguments (default `sh`).
    #[serde(default)]
    pub argv: Vec<String>,
    /// `KEY=VALUE` strings.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// `uid[:gid]`, numbers or names.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Seconds after which the sandbox's process is killed.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// `vm` or `process`; default: the daemon's (`vm` unless configured).
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// The template a vm sandbox is cloned from (default `default`).
    #[serde(default)]
    pub template: Option<String>,
    /// A pseudo-terminal instead of separate stdout and stderr.
    #[serde(default)]
    pub tty: bool,
    /// Bytes for the process's standard input, which is closed after them.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Set up the sandbox but start its process only when a client attaches
    /// (`POST /v1/sandboxes/{id}/attach`), with stdin from that client.
    #[serde(default)]
    pub interactive: bool,
}

/// Resource limits as clients write them.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Bytes as a number, or a string with a unit: `256m`, `1g`, `512k`.
    #[serde(default)]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pids: Option<i64>,
}

/// A memory size: bytes, or text with a binary unit suffix.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Memory {
    Bytes(i64),
    Text(String),
}

/// The process spec of `POST /v1/sandboxes/{id}/exec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tty: bool,
}

/// A validated spec: everything needed to start the sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub image: String,
    pub isolation: Isolation,
    pub template: String,
    pub container: ContainerSpec,
    pub timeout_ms: Option<u64>,
    /// Written to the process's stdin before it is closed.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Started by the first attach rather than at once.
    #[serde(default)]
    pub interactive: bool,
}

/// The one template that exists until templates can be created (issue 4).
pub const DEFAULT_TEMPLATE: &str = "default";

/// Parses `256m`, `1G`, `512k`, `1024` (bytes) or `1.5g`.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        Some((i, 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("memory {text:?}: use a size like 256m, 1g or a byte count"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("memory {text:?} must be positive"));
    }
    Ok((value * mult as f64) as u64)
}

impl LimitsSpec {
    fn validate(&self) -> Result<Limits, SupervisorError> {
        let bad = |m: String| SupervisorError::InvalidSpec(m);
        let memory_bytes = match &self.memory {
            None => None,
            Some(Memory::Bytes(b)) if *b <= 0 => {
                return Err(bad(format!("limits.memory must be positive, got {b}")))
            }
            Some(Memory::Bytes(b)) => Some(*b as u64),
            Some(Memory::Text(t)) => Some(parse_memory(t).map_err(bad)?),
        };
        if let Some(c) = self.cpus {
            if !(c.is_finite() && c > 0.0) {
                return Err(bad(format!("limits.cpus must be positive, got {c}")));
            }
        }
        let pids = match self.pids {
            Some(p) if p <= 0 => return Err(bad(format!("limits.pids must be positive, got {p}"))),
            p => p.map(|p| p as u64),
        };
        Ok(Limits {
            memory_bytes,
            cpus: self.cpus,
            pids,
        })
    }
}

impl SandboxSpec {
    /// Checks the spec and resolves its image; `default_isolation` applies when the
    /// spec names none. Template existence is checked by the caller.
    pub fn validate<R: Into<ResolvedImage>>(
        &self,
        default_isolation: Isolation,
        resolve_image: impl Fn(&str) -> Result<R, SupervisorError>,
    ) -> Result<Plan, SupervisorError> {
        let bad = |m: &str| Err(SupervisorError::InvalidSpec(m.into()));
        if self.image.is_empty() {
            return bad("image is required (e.g. \"busybox\")");
        }
        if self.argv.iter().any(|a| a.contains('\0')) || self.env.iter().any(|e| e.contains('\0')) {
            return bad("argv and env must not contain NUL bytes");
        }
        if let Some(e) = self
            .env
            .iter()
            .find(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(SupervisorError::InvalidSpec(format!(
                "env entry {e:?} is not KEY=VALUE"
            )));
        }
        if self.cwd.as_deref().is_some_and(|c| !c.starts_with('/')) {
            return bad("cwd must be an absolute path");
        }
        let timeout_ms = match self.timeout {
            Some(t) if !(t.is_finite() && t > 0.0) => {
                return bad("timeout must be positive seconds")
            }
            t => t.map(|t| (t * 1000.0).ceil() as u64),
        };
        if self.stdin.is_some() && self.interactive {
            return bad(
                "stdin and interactive exclude each other: an attached client writes stdin",
            );
        }
        let limits = self.limits.validate()?;
        let image = resolve_image(&self.image)?.into();
        let process = self.process(image.config.as_ref())?;
        Ok(Plan {
            image: self.image.clone(),
            isolation: self.isolation.unwrap_or(default_isolation),
            template: self
                .template
                .clone()
                .unwrap_or_else(|| DEFAULT_TEMPLATE.into()),
            container: ContainerSpec {
                argv: process.argv,
                env: process.env,
                cwd: process.cwd,
                user: process.user,
                hostname: self.hostname.clone(),
                rootfs: RootfsSpec { lower: image.lower },
                limits,
                tty: self.tty,
                stdin: self.stdin.is_some() || self.interactive,
                ..ContainerSpec::default()
            },
            timeout_ms,
            stdin: self.stdin.clone(),
            interactive: self.interactive,
        })
    }
}

/// argv, env, cwd and user of a sandbox's process.
struct Process {
    argv: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
    user: Option<String>,
}

impl SandboxSpec {
    /// With an image config: docker's rules (`resolve_process`). Without (the
    /// built-in busybox): the request as given, `sh` by default.
    fn process(&self, config: Option<&ContainerConfig>) -> Result<Process, SupervisorError> {
        let Some(config) = config else {
            let mut argv: Vec<String> = (self.entrypoint.iter().flatten())
                .chain(&self.argv)
                .filter(|a| !a.is_empty())
                .cloned()
                .collect();
            if argv.is_empty() {
                argv.push("sh".to_owned());
            }
            return Ok(Process {
                argv,
                env: with_default_path(&self.env),
                cwd: self.cwd.clone(),
                user: self.user.clone(),
            });
        };
        let p = resolve_process(
            config,
            self.entrypoint.clone(),
            self.argv.clone(),
            self.env.clone(),
            self.cwd.clone(),
            self.user.clone(),
        )
        .map_err(ImagesError::from)?;
        Ok(Process {
            argv: p.argv,
            env: p.env,
            cwd: Some(p.cwd),
            user: p.user,
        })
    }
}

impl ExecRequest {
    pub fn validate(&self) -> Result<ExecSpec, SupervisorError> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(SupervisorError::InvalidSpec(
                "argv must name a program".into(),
            ));
        }
        Ok(ExecSpec {
            argv: self.argv.clone(),
            env: with_default_path(&self.env),
            cwd: self.cwd.clone(),
            user: self.user.clone(),
            tty: self.tty,
            stdin: false,
        })
    }
}

/// Adds a PATH like Docker's default when the client set none.
fn with_default_path(env: &[String]) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    env
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn resolve(name: &str) -> Result<PathBuf, SupervisorError> {
        match name {
            "busybox" => Ok(PathBuf::from("/rootfs")),
            other => Err(SupervisorError::UnknownImage(other.into())),
        }
    }

    fn spec(json: &str) -> SandboxSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256m"), Ok(256 << 20));
        assert_eq!(parse_memory("1G"), Ok(1 << 30));
        assert_eq!(parse_memory("512kb"), Ok(512 << 10));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert_eq!(parse_memory("1.5g"), Ok(3 << 29));
        assert!(parse_memory("-1m").is_err());
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("0").is_err());
    }

    #[test]
    fn valid_spec_becomes_a_plan() {
        let s = spec(
            r#"{"image":"busybox","argv":["echo","hi"],"env":["A=1"],
                "limits":{"memory":"256m","cpus":0.5,"pids":10},"timeout":1.5,
                "isolation":"process"}"#,
        );
        let plan = s.validate(Isolation::Vm, resolve).unwrap();
        assert_eq!(plan.isolation, Isolation::Process);
        assert_eq!(plan.template, DEFAULT_TEMPLATE);
        assert_eq!(plan.timeout_ms, Some(1500));
        assert_eq!(plan.container.argv, ["echo", "hi"]);
        assert_eq!(plan.container.rootfs.lower, PathBuf::from("/rootfs"));
        assert_eq!(plan.container.limits.memory_bytes, Some(256 << 20));
        assert_eq!(plan.container.limits.pids, Some(10));
        assert!(plan.container.env.iter().any(|e| e.starts_with("PATH=")));
        assert!(plan.container.env.contains(&"A=1".to_owned()));
        let default = spec(r#"{"image":"busybox"}"#).validate(Isolation::Vm, resolve);
        assert_eq!(default.unwrap().isolation, Isolation::Vm);
    }

    #[test]
    fn invalid_specs_are_refused() {
        let invalid = [
            r#"{"image":"busybox","limits":{"memory":-5}}"#,
            r#"{"image":"busybox","limits":{"memory":"-5m"}}"#,
            r#"{"image":"busybox","limits":{"cpus":0}}"#,
            r#"{"image":"busybox","limits":{"pids":-1}}"#,
            r#"{"image":"busybox","env":["NOVALUE"]}"#,
            r#"{"image":"busybox","cwd":"relative"}"#,
            r#"{"image":"busybox","timeout":-1}"#,
            r#"{"image":""}"#,
        ];
        for json in invalid {
            let err = spec(json)
                .validate(Isolation::Process, resolve)
                .unwrap_err();
            assert!(
                matches!(err, SupervisorError::InvalidSpec(_)),
                "{json}: {err:?}"
            );
        }
        let err = spec(r#"{"image":"alpine"}"#).validate(Isolation::Process, resolve);
        assert!(matches!(err, Err(SupervisorError::UnknownImage(_))));
        assert!(serde_json::from_str::<SandboxSpec>(r#"{"image":"b","bogus":1}"#).is_err());
    }

    #[test]
    fn image_config_gives_the_process_and_overrides_win() {
        let image = |_: &str| -> Result<ResolvedImage, SupervisorError> {
            Ok(ResolvedImage {
                lower: PathBuf::from("/store/rootfs.erofs"),
                config: Some(ContainerConfig {
                    entrypoint: None,
                    cmd: Some(vec!["/bin/sh".into(), "/app/hello.sh".into()]),
                    env: Some(vec!["PATH=/bin".into(), "GREETING=hello".into()]),
                    working_dir: Some("/app".into()),
                    user: Some("1000:1000".into()),
                }),
            })
        };
        let plan = spec(r#"{"image":"twolayer"}"#)
            .validate(Isolation::Process, image)
            .unwrap();
        let c = &plan.container;
        assert_eq!(c.argv, ["/bin/sh", "/app/hello.sh"]);
        assert_eq!(c.env, ["PATH=/bin", "GREETING=hello"]);
        assert_eq!(c.cwd.as_deref(), Some("/app"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.rootfs.lower, PathBuf::from("/store/rootfs.erofs"));

        let plan = spec(
            r#"{"image":"twolayer","argv":["id"],"env":["GREETING=bye"],
                "cwd":"/tmp","user":"0","entrypoint":["/bin/busybox"]}"#,
        )
        .validate(Isolation::Process, image)
        .unwrap();
        let c = &plan.container;
        assert_eq!(c.argv, ["/bin/busybox", "id"]);
        assert_eq!(c.env, ["PATH=/bin", "GREETING=bye"]);
        assert_eq!(c.cwd.as_deref(), Some("/tmp"));
        assert_eq!(c.user.as_deref(), Some("0"));
    }

    #[test]
    fn exec_needs_a_program() {
        assert!(ExecRequest::default().validate().is_err());
        let ok = ExecRequest {
            argv: vec!["ls".into()],
            ..ExecRequest::default()
        };
        assert_eq!(ok.validate().unwrap().argv, ["ls"]);
    }
}

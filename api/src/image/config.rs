//! The process an image runs: the image config's Entrypoint, Cmd, Env, WorkingDir
//! and User combined with the user's overrides the way `docker run` combines them.
//!
//! A pure function; reading the config from the store is `store.rs`'s job.

use super::spec::ContainerConfig;

/// PATH docker gives a container whose image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why no process could be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "no command: the image has no Entrypoint or Cmd — give a command after the image name"
    )]
    NoCommand,
    #[error("environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("working directory {0:?} is not an absolute path")]
    RelativeWorkdir(String),
}

/// What to run, ready for the agent's `ContainerSpec` (argv, env, cwd, user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    /// `KEY=VALUE`, image values first, each key once.
    pub env: Vec<String>,
    pub cwd: String,
    /// `user[:group]` as the image or user gave it; `None` means root.
    pub user: Option<String>,
}

/// docker's rules:
/// - `--entrypoint` replaces the image's Entrypoint *and* drops its Cmd; an empty
///   `--entrypoint ""` means no entrypoint at all;
/// - command-line arguments replace the image's Cmd;
/// - argv is entrypoint followed by cmd;
/// - `-e KEY=VALUE` wins over the image's value for the same key; PATH defaults to
///   docker's when neither sets it;
/// - `-w` replaces WorkingDir (default `/`); `-u` replaces User (default root).
pub fn resolve_process(
    config: &ContainerConfig,
    user_entrypoint: Option<Vec<String>>,
    user_cmd: Vec<String>,
    user_env: Vec<String>,
    user_workdir: Option<String>,
    user_user: Option<String>,
) -> Result<ProcessSpec, ConfigError> {
    let (entrypoint, image_cmd) = match user_entrypoint {
        Some(ep) => (
            ep.into_iter().filter(|a| !a.is_empty()).collect(),
            Vec::new(),
        ),
        None => (
            config.entrypoint.clone().unwrap_or_default(),
            config.cmd.clone().unwrap_or_default(),
        ),
    };
    let cmd = if user_cmd.is_empty() {
        image_cmd
    } else {
        user_cmd
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(ConfigError::NoCommand);
    }

    let image_env = config.env.clone().unwrap_or_default();
    let env = merge_env(image_env, user_env)?;

    let cwd = user_workdir
        .or_else(|| config.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(ConfigError::RelativeWorkdir(cwd));
    }

    let user = user_user
        .or_else(|| config.user.clone())
        .filter(|u| !u.is_empty());
    Ok(ProcessSpec {
        argv,
        env,
        cwd,
        user,
    })
}

fn merge_env(image: Vec<String>, user: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let mut merged: Vec<String> = Vec::new();
    for entry in image.into_iter().chain(user) {
        let key = env_key(&entry)?;
        match merged.iter_mut().find(|e| env_key(e).ok() == Some(key)) {
            Some(existing) => *existing = entry,
            None => merged.push(entry),
        }
    }
    if !merged.iter().any(|e| e.starts_with("PATH=")) {
        merged.push(DEFAULT_PATH.to_string());
    }
    Ok(merged)
}

fn env_key(entry: &str) -> Result<&str, ConfigError> {
    match entry.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(key),
        _ => Err(ConfigError::BadEnv(entry.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn image() -> ContainerConfig {
        ContainerConfig {
            entrypoint: Some(v(&["/bin/entry"])),
            cmd: Some(v(&["--default"])),
            env: Some(v(&["PATH=/bin", "A=image", "B=image"])),
            working_dir: Some("/srv".into()),
            user: Some("1000:1000".into()),
        }
    }

    #[test]
    fn image_defaults_when_user_gives_nothing() {
        let p = resolve_process(&image(), None, vec![], vec![], None, None).unwrap();
        assert_eq!(p.argv, v(&["/bin/entry", "--default"]));
        assert_eq!(p.env, v(&["PATH=/bin", "A=image", "B=image"]));
        assert_eq!(p.cwd, "/srv");
        assert_eq!(p.user.as_deref(), Some("1000:1000"));
    }

    #[test]
    fn user_args_replace_cmd_and_keep_entrypoint() {
        let p = resolve_process(&image(), None, v(&["x", "y"]), vec![], None, None).unwrap();
        assert_eq!(p.argv, v(&["/bin/entry", "x", "y"]));
    }

    #[test]
    fn entrypoint_override_drops_image_cmd() {
        let p =
            resolve_process(&image(), Some(v(&["/bin/sh"])), vec![], vec![], None, None).unwrap();
        assert_eq!(p.argv, v(&["/bin/sh"]));
        let p = resolve_process(
            &image(),
            Some(v(&["/bin/sh"])),
            v(&["-c", "id"]),
            vec![],
            None,
            None,
        )
        .unwrap();
        assert_eq!(p.argv, v(&["/bin/sh", "-c", "id"]));
    }

    #[test]
    fn empty_entrypoint_override_clears_it() {
        let p = resolve_process(
            &image(),
            Some(v(&[""])),
            v(&["/bin/true"]),
            vec![],
            None,
            None,
        )
        .unwrap();
        assert_eq!(p.argv, v(&["/bin/true"]));
        let err = resolve_process(&image(), Some(v(&[""])), vec![], vec![], None, None);
        assert_eq!(err, Err(ConfigError::NoCommand));
    }

    #[test]
    fn cmd_only_image_runs_cmd_or_user_args() {
        let cfg = ContainerConfig {
            cmd: Some(v(&["/bin/sh"])),
            ..ContainerConfig::default()
        };
        let p = resolve_process(&cfg, None, vec![], vec![], None, None).unwrap();
        assert_eq!(p.argv, v(&["/bin/sh"]));
        let p = resolve_process(&cfg, None, v(&["/bin/ls", "/"]), vec![], None, None).unwrap();
        assert_eq!(p.argv, v(&["/bin/ls", "/"]));
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let err = resolve_process(
            &ContainerConfig::default(),
            None,
            vec![],
            vec![],
            None,
            None,
        );
        assert_eq!(err, Err(ConfigError::NoCommand));
    }

    #[test]
    fn user_env_wins_and_is_appended_in_order() {
        let p = resolve_process(
            &image(),
            None,
            vec![],
            v(&["B=user", "C=user", "A=x=y"]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(p.env, v(&["PATH=/bin", "A=x=y", "B=user", "C=user"]));
    }

    #[test]
    fn default_path_when_none_is_set() {
        let cfg = ContainerConfig {
            cmd: Some(v(&["/bin/sh"])),
            ..ContainerConfig::default()
        };
        let p = resolve_process(&cfg, None, vec![], v(&["A=1"]), None, None).unwrap();
        assert_eq!(p.env, v(&["A=1", DEFAULT_PATH]));
    }

    #[test]
    fn env_without_equals_is_refused() {
        let err = resolve_process(&image(), None, vec![], v(&["JUSTKEY"]), None, None);
        assert_eq!(err, Err(ConfigError::BadEnv("JUSTKEY".into())));
    }

    #[test]
    fn workdir_and_user_overrides() {
        let p = resolve_process(
            &image(),
            None,
            vec![],
            vec![],
            Some("/tmp".into()),
            Some("0".into()),
        )
        .unwrap();
        assert_eq!(p.cwd, "/tmp");
        assert_eq!(p.user.as_deref(), Some("0"));
        let cfg = ContainerConfig {
            cmd: Some(v(&["/bin/sh"])),
            user: Some(String::new()),
            ..ContainerConfig::default()
        };
        let p = resolve_process(&cfg, None, vec![], vec![], None, None).unwrap();
        assert_eq!(p.cwd, "/");
        assert_eq!(p.user, None);
        let err = resolve_process(&cfg, None, vec![], vec![], Some("rel".into()), None);
        assert_eq!(err, Err(ConfigError::RelativeWorkdir("rel".into())));
    }
}

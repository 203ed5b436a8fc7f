//! `spore image import|ls|rm|inspect`: the image store through the daemon's API
//! (`/v1/images`), docker-like tables, `--json` for scripts.
//!
//! Paths are made absolute here (the daemon has its own working directory); what
//! is not a path on this host is sent as a registry reference. Not here: the
//! store itself (`crate::image`) and the routes (`server::routes`).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::run::{error_chain, DaemonArgs};
use crate::client::tty::is_tty;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import an OCI layout directory, OCI archive or docker-archive (a path on
    /// this host), or pull a registry reference.
    Import(ImportArgs),
    /// List imported images.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Remove images (refused while a sandbox uses them).
    #[command(alias = "remove")]
    Rm(NamesArgs),
    /// Show an image's record and config.
    Inspect(NamesArgs),
}

#[derive(Args)]
pub struct ImportArgs {
    /// Print the image's record as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// PATH (layout directory or archive) or registry REF.
    pub source: String,
}

#[derive(Args)]
pub struct ListArgs {
    /// Print the records as a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Only image ids.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Args)]
pub struct NamesArgs {
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Tags, digests or unique digest prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn run(command: ImageCommand) -> anyhow::Result<i32> {
    match command {
        ImageCommand::Import(args) => import(args),
        ImageCommand::Ls(args) => list(args),
        ImageCommand::Rm(args) => remove(args),
        ImageCommand::Inspect(args) => inspect(args),
    }
}

fn import(args: ImportArgs) -> anyhow::Result<i32> {
    let client = args.daemon.client()?;
    // 1. A path on this host, absolute for the daemon; else a reference.
    let path = Path::new(&args.source);
    let source = match path.exists() {
        true => std::path::absolute(path)?.display().to_string(),
        false => args.source.clone(),
    };
    // 2. The import, with a ticking line on a terminal (it can take a while).
    let progress = Progress::start(&source);
    let result = client.call("POST", "/v1/images", Some(&json!({ "source": source })));
    progress.finish();
    let record = match result {
        Ok(record) => record,
        Err(e) => {
            eprintln!("spore: {}", error_chain(&e));
            return Ok(1);
        }
    };
    // 3. What was imported.
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        let tags = strings(&record["tags"]).join(", ");
        println!(
            "Imported {} ({}, {} layer{}, {})",
            if tags.is_empty() { "<none>" } else { &tags },
            str_of(&record["digest"]),
            record["layers"],
            if record["layers"] == 1 { "" } else { "s" },
            human_size(record["size"].as_u64().unwrap_or(0))
        );
    }
    Ok(0)
}

fn list(args: ListArgs) -> anyhow::Result<i32> {
    let client = args.daemon.client()?;
    let images = client.call("GET", "/v1/images", None)?;
    let images = images.as_array().cloned().unwrap_or_default();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(0);
    }
    if args.quiet {
        for image in &images {
            println!("{}", short_id(str_of(&image["digest"])));
        }
        return Ok(0);
    }
    let now = now_secs();
    let mut rows = vec![[
        "REPOSITORY".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "CREATED".into(),
        "SIZE".into(),
    ]];
    for image in &images {
        let id = short_id(str_of(&image["digest"])).to_string();
        let created = ago(now.saturating_sub(image["imported"].as_u64().unwrap_or(now)));
        let size = human_size(image["size"].as_u64().unwrap_or(0));
        let mut tags = strings(&image["tags"]);
        if tags.is_empty() {
            tags.push(String::new());
        }
        for tag in tags {
            let (repo, tag) = split_tag(&tag);
            rows.push([repo, tag, id.clone(), created.clone(), size.clone()]);
        }
    }
    print_table(&rows);
    Ok(0)
}

fn remove(args: NamesArgs) -> anyhow::Result<i32> {
    let client = args.daemon.client()?;
    let mut code = 0;
    for name in &args.images {
        match client.call("DELETE", &format!("/v1/images/{name}"), None) {
            Ok(record) if args.json => println!("{record}"),
            Ok(record) => println!("Deleted: {}", str_of(&record["digest"])),
            Err(e) => {
                eprintln!("spore: {name}: {}", error_chain(&e));
                code = 1;
            }
        }
    }
    Ok(code)
}

fn inspect(args: NamesArgs) -> anyhow::Result<i32> {
    let client = args.daemon.client()?;
    let mut found = Vec::new();
    let mut code = 0;
    for name in &args.images {
        match client.call("GET", &format!("/v1/images/{name}"), None) {
            Ok(details) => found.push(details),
            Err(e) => {
                eprintln!("spore: {name}: {}", error_chain(&e));
                code = 1;
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for details in &found {
            print!("{}", describe(details));
        }
    }
    Ok(code)
}

/// The human form of `GET /v1/images/{name}`.
fn describe(d: &Value) -> String {
    let c = &d["config"]["config"];
    let list = |v: &Value| match v.as_array() {
        Some(_) => format!("{v}"),
        None => "-".to_string(),
    };
    let lines = [
        ("Id", str_of(&d["digest"]).to_string()),
        ("Tags", strings(&d["tags"]).join(", ")),
        ("Source", str_of(&d["source"]).to_string()),
        ("Layers", d["layers"].to_string()),
        ("Size", human_size(d["size"].as_u64().unwrap_or(0))),
        ("Format", str_of(&d["format"]).to_string()),
        ("Path", str_of(&d["path"]).to_string()),
        (
            "Platform",
            format!(
                "{}/{}",
                str_of(&d["config"]["os"]),
                str_of(&d["config"]["architecture"])
            ),
        ),
        ("Entrypoint", list(&c["Entrypoint"])),
        ("Cmd", list(&c["Cmd"])),
        ("Env", strings(&c["Env"]).join(" ")),
        ("WorkingDir", str_of(&c["WorkingDir"]).to_string()),
        ("User", str_of(&c["User"]).to_string()),
    ];
    let mut out = String::new();
    for (key, value) in lines {
        out.push_str(&format!("{:<11} {value}\n", format!("{key}:")));
    }
    out
}

/// A line on stderr saying the import still runs, redrawn while it does.
struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Progress {
    fn start(source: &str) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        if !is_tty(2) {
            eprintln!("importing {source}");
            return Progress { done, thread: None };
        }
        let (flag, source) = (done.clone(), source.to_string());
        let thread = thread::spawn(move || {
            let (t0, spinner) = (Instant::now(), ['|', '/', '-', '\\']);
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let secs = t0.elapsed().as_secs_f64();
                eprint!("\r{} importing {source} ({secs:.0}s)", spinner[i % 4]);
                let _ = std::io::stderr().flush();
                i += 1;
                thread::sleep(Duration::from_millis(200));
            }
            eprint!("\r\x1b[2K");
        });
        Progress {
            done,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// docker's 12-digit image id.
fn short_id(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// `docker.io/library/busybox:1.36` → (`docker.io/library/busybox`, `1.36`);
/// no tag → `<none>`.
fn split_tag(tag: &str) -> (String, String) {
    let slash = tag.rfind('/').map_or(0, |i| i + 1);
    match tag[slash..].rfind(':') {
        Some(i) => (tag[..slash + i].into(), tag[slash + i + 1..].into()),
        None if tag.is_empty() => ("<none>".into(), "<none>".into()),
        None => (tag.into(), "latest".into()),
    }
}

/// Decimal units, as docker prints sizes.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes}B"),
        _ => {
            format!("{value:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
                + UNITS[unit]
        }
    }
}

/// `3 minutes ago`, docker style.
fn ago(secs: u64) -> String {
    const STEPS: [(u64, &str); 5] = [
        (86400 * 365, "year"),
        (86400 * 7, "week"),
        (86400, "day"),
        (3600, "hour"),
        (60, "minute"),
    ];
    for (size, name) in STEPS {
        if secs >= size {
            let n = secs / size;
            return format!("{n} {name}{} ago", if n == 1 { "" } else { "s" });
        }
    }
    "Less than a minute ago".into()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn print_table(rows: &[[String; 5]]) {
    let mut widths = [0; 5];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_like_docker() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(split_tag("busybox:latest"), s("busybox", "latest"));
        assert_eq!(
            split_tag("localhost:5000/app/x:1.2"),
            s("localhost:5000/app/x", "1.2")
        );
        assert_eq!(
            split_tag("localhost:5000/app"),
            s("localhost:5000/app", "latest")
        );
        assert_eq!(split_tag(""), s("<none>", "<none>"));
    }

    #[test]
    fn sizes_and_ages() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_500_000), "1.5MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
        assert_eq!(ago(30), "Less than a minute ago");
        assert_eq!(ago(60), "1 minute ago");
        assert_eq!(ago(7200), "2 hours ago");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn inspect_shows_the_config() {
        let d = json!({
            "digest": "sha256:ab", "tags": ["t:latest"], "layers": 2, "size": 2000,
            "config": {"os": "linux", "architecture": "amd64",
                "config": {"Cmd": ["/bin/sh"], "Env": ["A=1"], "WorkingDir": "/app",
                           "User": "1000"}}
        });
        let text = describe(&d);
        assert!(text.contains("Cmd:        [\"/bin/sh\"]"), "{text}");
        assert!(text.contains("WorkingDir: /app"), "{text}");
        assert!(text.contains("Platform:   linux/amd64"), "{text}");
        assert!(text.contains("Size:       2kB"), "{text}");
    }
}

//! `spore ps`: list sandboxes, docker style — running ones, or all with `-a`.
//! Every row says the sandbox's isolation.

use clap::Args;
use serde_json::Value;

use super::run::DaemonArgs;
use crate::supervisor::sandbox::now_ms;

#[derive(Args)]
pub struct PsArgs {
    /// Show all sandboxes (default: running ones).
    #[arg(short, long)]
    pub all: bool,
    /// Only print ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

pub fn run(args: PsArgs) -> anyhow::Result<i32> {
    let client = args.daemon.client()?;
    let list = client.call("GET", "/v1/sandboxes", None)?;
    let rows: Vec<&Value> = list
        .as_array()
        .map(|a| a.iter().filter(|s| args.all || is_live(s)).collect())
        .unwrap_or_default();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if args.quiet {
        for r in rows {
            println!("{}", r["id"].as_str().unwrap_or(""));
        }
    } else {
        print!("{}", table(&rows, now_ms()));
    }
    Ok(0)
}

fn is_live(s: &Value) -> bool {
    matches!(s["state"].as_str(), Some("running" | "creating"))
}

/// The `ps` table.
fn table(rows: &[&Value], now: u64) -> String {
    let mut out = format!(
        "{:<14}{:<10}{:<24}{:<11}{:<28}{}\n",
        "SANDBOX ID", "IMAGE", "COMMAND", "ISOLATION", "STATUS", "CREATED"
    );
    for r in rows {
        let argv: Vec<&str> = r["argv"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let joined = argv.join(" ");
        let command = if joined.chars().count() > 20 {
            format!("\"{}…\"", joined.chars().take(19).collect::<String>())
        } else {
            format!("\"{joined}\"")
        };
        let created = ago(now, r["created_at_ms"].as_u64().unwrap_or(now)) + " ago";
        out.push_str(&format!(
            "{:<14}{:<10}{:<24}{:<11}{:<28}{}\n",
            r["id"].as_str().unwrap_or(""),
            r["image"].as_str().unwrap_or(""),
            command,
            r["isolation"].as_str().unwrap_or(""),
            status(r, now),
            created,
        ));
    }
    out
}

/// "Up 5 seconds", "Exited (0) 2 minutes ago", "Failed 3 seconds ago".
fn status(r: &Value, now: u64) -> String {
    let since = |key: &str| ago(now, r[key].as_u64().unwrap_or(now));
    match r["state"].as_str().unwrap_or("") {
        "running" => format!("Up {}", since("started_at_ms")),
        "exited" => format!(
            "Exited ({}) {} ago",
            r["exit_code"].as_i64().unwrap_or(-1),
            since("finished_at_ms")
        ),
        "failed" => format!("Failed {} ago", since("finished_at_ms")),
        other => capitalise(other),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..=1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=3599 => format!("{} minutes", s / 60),
        _ => format!("{} hours", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn table_rows() {
        let running = json!({"id":"abc123","image":"busybox","argv":["sleep","10"],
            "isolation":"process","state":"running","created_at_ms":1000,"started_at_ms":1000});
        let exited = json!({"id":"def456","image":"busybox","argv":["sh","-c","exit 3"],
            "isolation":"process","state":"exited","exit_code":3,"created_at_ms":0,
            "finished_at_ms":0});
        assert!(is_live(&running));
        assert!(!is_live(&exited));
        let t = table(&[&running, &exited], 121_000);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SANDBOX ID"));
        assert!(lines[1].contains("Up 2 minutes") && lines[1].contains("process"));
        assert!(
            lines[2].contains("Exited (3) 2 minutes ago"),
            "{}",
            lines[2]
        );
        assert_eq!(ago(10_000, 5_000), "5 seconds");
    }
}

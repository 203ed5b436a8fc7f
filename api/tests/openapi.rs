//! api/openapi.yaml matches the server: every documented route answers with each
//! of its documented status codes (for good and bad input), and every case here is
//! documented. Error bodies carry `code` and `message`.
//!
//! The document is read by its layout (paths at two spaces, methods at four,
//! quoted status codes at eight), which the document itself states.

mod common;

use std::collections::BTreeSet;

use common::{request, skip_unless_root, spec, test_images, Daemon};
use serde_json::{json, Value};

/// (method, path template, status) triples the document declares.
fn documented() -> BTreeSet<(String, String, u16)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("api/openapi.yaml");
    let mut out = BTreeSet::new();
    let (mut in_paths, mut path, mut method) = (false, String::new(), String::new());
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            if p.starts_with('/') {
                path = p.to_owned();
                continue;
            }
        }
        if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                method = m.to_uppercase();
                continue;
            }
        }
        if let Some(code) = line
            .strip_prefix("        '")
            .and_then(|l| l.strip_suffix("':"))
            .and_then(|c| c.parse::<u16>().ok())
        {
            out.insert((method.clone(), path.clone(), code));
        }
    }
    out
}

struct Case {
    method: &'static str,
    template: &'static str,
    path: String,
    body: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
    status: u16,
}

fn case(
    method: &'static str,
    template: &'static str,
    path: &str,
    body: Option<&str>,
    status: u16,
) -> Case {
    Case {
        method,
        template,
        path: path.to_owned(),
        body: body.map(|b| b.as_bytes().to_vec()),
        headers: vec![],
        status,
    }
}

#[test]
fn every_documented_route_and_status_is_served() {
    let doc = documented();
    assert!(doc.len() > 30, "parsed only {} entries", doc.len());
    if skip_unless_root() {
        return;
    }
    // A private image store (only this test of the binary imports images).
    let images = common::temp_dir("openapi-images");
    std::env::set_var("SPORE_IMAGE_DIR", &images);
    let d = Daemon::start("openapi");
    // Fixtures: one running and one exited sandbox.
    let (_, running) = d.json("POST", "/v1/sandboxes", Some(&spec(&["sleep", "300"])));
    let running = running["id"].as_str().expect("running sandbox").to_owned();
    let (_, exited) = d.json("POST", "/v1/sandboxes", Some(&spec(&["true"])));
    let exited = exited["id"].as_str().expect("exited sandbox").to_owned();
    d.json("POST", &format!("/v1/sandboxes/{exited}/wait"), None);

    let interactive = json!({"image":"busybox","argv":["true"],"interactive":true,
        "isolation":"process"});
    let (_, waiting) = d.json("POST", "/v1/sandboxes", Some(&interactive.to_string()));
    let waiting = waiting["id"]
        .as_str()
        .expect("interactive sandbox")
        .to_owned();
    let mut upgrade = case(
        "POST",
        "/v1/sandboxes/{id}/attach",
        &format!("/v1/sandboxes/{waiting}/attach"),
        None,
        101,
    );
    upgrade.headers.push(("Upgrade", "spore-stream".into()));
    // An imported image and a sandbox running on it.
    let twolayer = test_images().join("twolayer-docker.tar");
    let import = json!({ "source": twolayer }).to_string();
    let (status, _) = d.json("POST", "/v1/images", Some(&import));
    assert_eq!(status, 201);
    let on_image = json!({"image":"spore-test/twolayer","argv":["sleep","300"],
        "isolation":"process"});
    let (_, on_image) = d.json("POST", "/v1/sandboxes", Some(&on_image.to_string()));
    let on_image = on_image["id"]
        .as_str()
        .expect("sandbox on image")
        .to_owned();
    let no_source = json!({"source": "/nonexistent/image.tar"}).to_string();
    let img = "/v1/images/{name}";
    let twolayer = "/v1/images/spore-test/twolayer";
    let huge = "x".repeat(2 << 20);
    let vm = json!({"image":"busybox","argv":["true"],"isolation":"vm"}).to_string();
    // A vm sandbox runs where this host runs microVMs, else 422 with the reason.
    let host = spore_vmm::HostKvm::detect();
    let vm_runs = host.usable && host.can_run_guest_user_space();
    let (vm_created, vm_ran) = if vm_runs { (201, 200) } else { (422, 422) };
    let unknown_image = json!({"image":"nosuch","isolation":"process"}).to_string();
    let good = spec(&["echo", "hi"]);
    let exec = r#"{"argv":["echo","x"]}"#;
    let sb = "/v1/sandboxes/{id}";
    let mut big_header = case("POST", "/v1/sandboxes", "/v1/sandboxes", Some(&good), 431);
    big_header.headers.push(("X-Big", "y".repeat(20_000)));
    let mut cases = vec![
        case("GET", "/v1/health", "/v1/health", None, 200),
        case("GET", "/metrics", "/metrics", None, 200),
        case("GET", "/v1/templates", "/v1/templates", None, 200),
        case("POST", "/v1/templates", "/v1/templates", Some("{"), 400),
        case(
            "POST",
            "/v1/templates",
            "/v1/templates",
            Some(r#"{"name":"t","memory_mib":0}"#),
            400,
        ),
        case(
            "GET",
            "/v1/templates/{name}",
            "/v1/templates/default",
            None,
            200,
        ),
        case(
            "GET",
            "/v1/templates/{name}",
            "/v1/templates/nope",
            None,
            404,
        ),
        case(
            "DELETE",
            "/v1/templates/{name}",
            "/v1/templates/nope",
            None,
            404,
        ),
        case(
            "DELETE",
            "/v1/templates/{name}",
            "/v1/templates/default",
            None,
            204,
        ),
        case("GET", "/v1/sandboxes", "/v1/sandboxes", None, 200),
        case(
            "POST",
            "/v1/sandboxes",
            "/v1/sandboxes",
            Some(&spec(&["true"])),
            201,
        ),
        case("POST", "/v1/sandboxes", "/v1/sandboxes", Some("{bad"), 400),
        case(
            "POST",
            "/v1/sandboxes",
            "/v1/sandboxes",
            Some(&unknown_image),
            404,
        ),
        case("POST", "/v1/sandboxes", "/v1/sandboxes", Some(&huge), 413),
        case(
            "POST",
            "/v1/sandboxes",
            "/v1/sandboxes",
            Some(&vm),
            vm_created,
        ),
        big_header,
        case("GET", sb, &format!("/v1/sandboxes/{running}"), None, 200),
        case("GET", sb, "/v1/sandboxes/nosuch", None, 404),
        case(
            "POST",
            "/v1/sandboxes/{id}/wait",
            &format!("/v1/sandboxes/{exited}/wait"),
            None,
            200,
        ),
        case(
            "POST",
            "/v1/sandboxes/{id}/wait",
            "/v1/sandboxes/nosuch/wait",
            None,
            404,
        ),
        case(
            "GET",
            "/v1/sandboxes/{id}/logs",
            &format!("/v1/sandboxes/{exited}/logs"),
            None,
            200,
        ),
        case(
            "GET",
            "/v1/sandboxes/{id}/logs",
            "/v1/sandboxes/nosuch/logs",
            None,
            404,
        ),
        case(
            "POST",
            "/v1/sandboxes/{id}/exec",
            &format!("/v1/sandboxes/{running}/exec"),
            Some(exec),
            200,
        ),
        case(
            "POST",
            "/v1/sandboxes/{id}/exec",
            &format!("/v1/sandboxes/{running}/exec"),
            Some("{"),
            400,
        ),
        case(
            "POST",
            "/v1/sandboxes/{id}/exec",
            "/v1/sandboxes/nosuch/exec",
            Some(exec),
            404,
        ),
        case(
            "POST",
            "/v1/sandboxes/{id}/exec",
            &format!("/v1/sandboxes/{exited}/exec"),
            Some(exec),
            409,
        ),
        upgrade,
        case(
            "POST",
            "/v1/sandboxes/{id}/attach",
            &format!("/v1/sandboxes/{waiting}/attach"),
            None,
            409,
        ),
        case(
            "POST",
            "/v1/sandboxes/{id}/attach",
            "/v1/sandboxes/nosuch/attach",
            None,
            404,
        ),
        case("DELETE", sb, &format!("/v1/sandboxes/{running}"), None, 409),
        case(
            "DELETE",
            sb,
            &format!("/v1/sandboxes/{running}?force=1"),
            None,
            204,
        ),
        case("DELETE", sb, &format!("/v1/sandboxes/{running}"), None, 404),
        case("POST", "/v1/run", "/v1/run", Some(&good), 200),
        case("POST", "/v1/run", "/v1/run", Some("nope"), 400),
        case("POST", "/v1/run", "/v1/run", Some(&unknown_image), 404),
        case("POST", "/v1/run", "/v1/run", Some(&huge), 413),
        case("POST", "/v1/run", "/v1/run", Some(&vm), vm_ran),
        case("GET", "/v1/images", "/v1/images", None, 200),
        case("POST", "/v1/images", "/v1/images", Some(&import), 201),
        case("POST", "/v1/images", "/v1/images", Some(&no_source), 400),
        case("GET", img, twolayer, None, 200),
        case("GET", img, "/v1/images/nosuch", None, 404),
        case("DELETE", img, twolayer, None, 409),
        case(
            "DELETE",
            sb,
            &format!("/v1/sandboxes/{on_image}?force=1"),
            None,
            204,
        ),
        case("DELETE", img, twolayer, None, 200),
        case("DELETE", img, twolayer, None, 404),
    ];
    // Creating a template boots a microVM: 201, then 409 for the same name, where
    // this host runs them; 422 with the reason where it cannot. The statuses of
    // the other kind of host are not served here.
    let tpl = r#"{"name":"openapi"}"#;
    let create = |status| case("POST", "/v1/templates", "/v1/templates", Some(tpl), status);
    let (here, elsewhere) = match vm_runs {
        true => (vec![201, 409], vec![422]),
        false => (vec![422], vec![201, 409]),
    };
    cases.extend(here.into_iter().map(create));
    let mut other_host: BTreeSet<(String, String, u16)> = elsewhere
        .into_iter()
        .map(|s| ("POST".to_owned(), "/v1/templates".to_owned(), s))
        .collect();
    if vm_runs {
        for route in ["/v1/sandboxes", "/v1/run"] {
            other_host.insert(("POST".to_owned(), route.to_owned(), 422));
        }
    }
    let mut served = BTreeSet::new();
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = request(&d.socket, c.method, &c.path, &headers, c.body.as_deref());
        assert_eq!(
            status,
            c.status,
            "{} {}: {}",
            c.method,
            c.path,
            String::from_utf8_lossy(&body)
        );
        if status >= 400 {
            let v: Value = serde_json::from_slice(&body).expect("JSON error body");
            assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
        }
        served.insert((c.method.to_owned(), c.template.to_owned(), c.status));
    }
    let _ = std::fs::remove_dir_all(&images);
    let undocumented: Vec<_> = served.difference(&doc).collect();
    let untested: Vec<_> = doc
        .difference(&served)
        .filter(|t| !other_host.contains(*t))
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in openapi.yaml: {undocumented:?}"
    );
    assert!(
        untested.is_empty(),
        "in openapi.yaml but not served here: {untested:?}"
    );
}

#[test]
fn tcp_needs_the_bearer_token() {
    let dir = common::temp_dir("tcp");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_in(dir, &["--tcp", &addr, "--token", "s3cret"]);
    let get = |auth: Option<&str>| {
        use std::io::{BufReader, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let auth = auth
            .map(|a| format!("Authorization: Bearer {a}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /v1/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\r\n"
        )
        .unwrap();
        common::read_response(BufReader::new(s))
    };
    assert_eq!(get(Some("s3cret")).0, 200);
    let (status, body) = get(Some("wrong"));
    assert_eq!(status, 401);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "unauthorized");
    assert_eq!(get(None).0, 401);
    // The unix socket needs no token; its mode keeps others out.
    assert_eq!(d.json("GET", "/v1/health", None).0, 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

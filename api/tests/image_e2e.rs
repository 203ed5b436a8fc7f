//! OCI images end to end through a real daemon (process isolation, as root):
//! `spore image import|ls|inspect|rm` and `/v1/images`, then `spore run IMAGE`
//! on the two-layer test image (resources/build-test-images.sh): the container
//! sees exactly the layered tree (whiteouts applied, opaque /data replaced) and
//! the image's Env, WorkingDir and User; CLI overrides win; an image in use cannot
//! be removed; a corrupt archive is refused with the store unchanged; nothing of
//! the image stays mounted or loop-attached once its sandbox is gone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{agent_bin, skip_unless_root, spore_bin, temp_dir, test_images, Daemon};
use serde_json::{json, Value};

const TAG: &str = "spore-test/twolayer:latest";

/// A daemon whose image store is private to the test (`<dir>/images`).
fn start_daemon(tag: &str) -> Daemon {
    let dir = temp_dir(tag);
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    // The harness's Drop stops it (it kills what mentions `dir`); this thread
    // reaps it then.
    let mut child = Command::new(spore_bin())
        .args(["serve", "--isolation", "process", "--socket"])
        .arg(dir.join("spore.sock"))
        .env("SPORE_RUN_DIR", &dir)
        .env("SPORE_AGENT", agent_bin())
        .env("SPORE_IMAGE_DIR", dir.join("images"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting spore serve");
    std::thread::spawn(move || child.wait());
    Daemon::adopt_running(dir)
}

/// `spore ARGS --socket <daemon's>`, run in `cwd`.
fn cli_in(d: &Daemon, cwd: &Path, args: &[&str]) -> Output {
    let (sub, rest) = args.split_at(if args[0] == "image" { 2 } else { 1 });
    Command::new(spore_bin())
        .args(sub)
        .arg("--socket")
        .arg(&d.socket)
        .args(rest)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("running spore")
}

fn cli(d: &Daemon, args: &[&str]) -> Output {
    cli_in(d, Path::new("/"), args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `POST /v1/run` of `image` with extra spec fields; (exit code, stdout, stderr).
fn run(d: &Daemon, image: &str, extra: Value) -> (i64, String, String) {
    let mut spec = json!({"image": image, "isolation": "process"});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let (status, v) = d.json("POST", "/v1/run", Some(&spec.to_string()));
    assert_eq!(status, 200, "{v}");
    let out = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    (
        v["exit_code"].as_i64().unwrap_or(-1),
        out("stdout"),
        out("stderr"),
    )
}

/// Loop devices whose backing file is `image`.
fn loops_backed_by(image: &Path) -> Vec<String> {
    let want = image.display().to_string();
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| b.trim() == want)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Mount lines, in any mount namespace on the host, naming `needle`.
fn mounts_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let info = std::fs::read_to_string(entry.path().join("mountinfo")).unwrap_or_default();
        found.extend(
            info.lines()
                .filter(|l| l.contains(needle))
                .map(String::from),
        );
    }
    found
}

/// Every file under the directories a layer touched, as `path type mode uid:gid`
/// (busybox's applet symlinks left out; /etc/hostname and /etc/hosts are the
/// agent's, written into the upper layer).
const TREE_SCRIPT: &str = "find /app /bin /data /etc /root /secret /tmp /usr \
    ! -path '/etc/hostname' ! -path '/etc/hosts' \
    -exec stat -c '%n %F %a %u:%g' {} + | grep -v 'symbolic link 777 0:0$' | sort; \
    readlink /app/hello-link";

/// The two-layer image's tree (cf. api/tests/image_store/two_layer.rs).
const EXPECTED_TREE: &str = "\
/app directory 755 1000:1000
/app/hello-hard regular file 755 1000:1000
/app/hello.sh regular file 755 1000:1000
/bin directory 755 0:0
/bin/busybox regular file 755 0:0
/bin/busybox-hard regular file 755 0:0
/bin/suid-file regular file 4755 0:0
/data directory 755 0:0
/data/new regular file 644 0:0
/data/sub directory 755 0:0
/data/sub/fresh regular file 644 0:0
/etc directory 755 0:0
/etc/group regular file 644 0:0
/etc/motd regular file 644 0:0
/etc/passwd regular file 644 0:0
/root directory 700 0:0
/secret directory 700 0:0
/secret/key regular file 600 0:0
/tmp directory 1777 0:0
/usr directory 755 0:0
/usr/share directory 755 0:0
/app/hello.sh
";

#[test]
fn import_run_and_remove_the_two_layer_image() {
    if skip_unless_root() {
        return;
    }
    let images = test_images();
    let d = start_daemon("img-e2e");

    // 1. Import through the CLI (docker-archive), then again from the OCI layout
    //    by a relative path: the same image, stored once.
    let out = cli(
        &d,
        &[
            "image",
            "import",
            images.join("twolayer-docker.tar").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(TAG), "{}", text(&out.stdout));
    let out = cli_in(&d, images, &["image", "import", "--json", "twolayer"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["layers"], 2);
    let (status, list) = d.json("GET", "/v1/images", None);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["digest"], record["digest"]);
    let digest = record["digest"].as_str().unwrap().to_owned();
    let short = &digest["sha256:".len().."sha256:".len() + 12];

    // 2. ls and inspect, human and JSON.
    let out = cli(&d, &["image", "ls"]);
    let ls = text(&out.stdout);
    assert!(ls.starts_with("REPOSITORY"), "{ls}");
    let row = ls.lines().find(|l| l.contains(short)).expect("image row");
    assert!(
        row.starts_with("spore-test/twolayer") && row.contains("latest"),
        "{ls}"
    );
    let out = cli(&d, &["image", "inspect", "spore-test/twolayer"]);
    let shown = text(&out.stdout);
    assert!(shown.contains("WorkingDir: /app"), "{shown}");
    assert!(shown.contains("User:       1000:1000"), "{shown}");
    let out = cli(&d, &["image", "inspect", "--json", short]);
    let details: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(details[0]["config"]["config"]["Env"][1], "GREETING=hello");
    let image_file = PathBuf::from(details[0]["path"].as_str().unwrap());
    assert!(image_file.ends_with("rootfs.erofs"), "{image_file:?}");

    // 3. Run it: the image's Cmd, Env, WorkingDir and User.
    let (code, stdout, stderr) = run(&d, TAG, json!({}));
    assert_eq!(
        (code, stdout.as_str()),
        (0, "hello from /app as 1000\n"),
        "{stderr}"
    );
    let probe = json!({"argv": ["sh", "-c", "pwd; id -u; id -g; echo $GREETING; ls /data"]});
    let (code, stdout, _) = run(&d, "spore-test/twolayer", probe);
    assert_eq!(
        (code, stdout.as_str()),
        (0, "/app\n1000\n1000\nhello\nnew\nsub\n")
    );

    // 4. Exactly the layered tree: whiteouts applied, opaque /data replaced.
    let tree = json!({"argv": ["sh", "-c", TREE_SCRIPT], "user": "0"});
    let (code, stdout, stderr) = run(&d, TAG, tree);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, EXPECTED_TREE);
    let contents = json!({"argv": ["cat", "/etc/motd", "/data/new", "/data/sub/fresh"]});
    assert_eq!(run(&d, TAG, contents).1, "two\nnew\nfresh\n");

    // 5. CLI overrides win: -e, -w, -u, --entrypoint, CMD args.
    let base = ["run", "--rm", "--isolation", "process"];
    let out = cli(
        &d,
        &[
            &base[..],
            &["-e", "GREETING=bye", "-w", "/tmp", "-u", "0:0", TAG],
        ]
        .concat(),
    );
    assert_eq!(
        text(&out.stdout),
        "bye from /tmp as 0\n",
        "{}",
        text(&out.stderr)
    );
    let out = cli(
        &d,
        &[&base[..], &["--entrypoint", "/bin/echo", TAG, "hi"]].concat(),
    );
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    assert!(out.status.success());

    // 6. Writes stay in the sandbox's upper layer; the image is untouched.
    let write =
        json!({"argv": ["sh", "-c", "echo changed > /etc/motd; rm /data/new"], "user": "0"});
    assert_eq!(run(&d, TAG, write).0, 0);
    assert_eq!(
        run(&d, TAG, json!({"argv": ["cat", "/etc/motd", "/data/new"]})).1,
        "two\nnew\n"
    );

    // 7. In use: removal refused (API and CLI) while a sandbox runs on it; the
    //    image file is loop-mounted read-only, not copied.
    let spec = json!({"image": TAG, "argv": ["sleep", "300"], "isolation": "process"});
    let (status, sb) = d.json("POST", "/v1/sandboxes", Some(&spec.to_string()));
    assert_eq!(status, 201, "{sb}");
    let id = sb["id"].as_str().unwrap().to_owned();
    assert_eq!(
        sb["plan"]["container"]["rootfs"]["lower"],
        json!(image_file)
    );
    assert_eq!(loops_backed_by(&image_file).len(), 1, "one loop device");
    let (status, err) = d.json("DELETE", "/v1/images/spore-test/twolayer", None);
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["code"], "image_in_use");
    assert!(err["message"].as_str().unwrap().contains(&id), "{err}");
    let out = cli(&d, &["image", "rm", TAG]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("used by sandbox"),
        "{}",
        text(&out.stderr)
    );
    assert!(image_file.is_file());

    // 8. Sandbox gone: no loop device or mount of the image remains.
    let (status, _) = d.request("DELETE", &format!("/v1/sandboxes/{id}?force=1"), None);
    assert_eq!(status, 204);
    let t0 = Instant::now();
    while !loops_backed_by(&image_file).is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(loops_backed_by(&image_file), Vec::<String>::new());
    let store = d.dir.join("images");
    assert_eq!(mounts_naming(store.to_str().unwrap()), Vec::<String>::new());

    // 9. Removed: gone from the list and from disk.
    let out = cli(&d, &["image", "rm", TAG]);
    assert_eq!(
        text(&out.stdout),
        format!("Deleted: {digest}\n"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(d.json("GET", "/v1/images", None).1, json!([]));
    assert!(!image_file.exists());
    let (status, err) = d.json("GET", &format!("/v1/images/{TAG}"), None);
    assert_eq!((status, err["code"].as_str()), (404, Some("unknown_image")));
    let (status, err) = d.json("POST", "/v1/run", Some(&json!({"image": TAG}).to_string()));
    assert_eq!(status, 404, "{err}");
}

#[test]
fn busybox_falls_back_to_the_built_in_tree() {
    if skip_unless_root() {
        return;
    }
    let d = start_daemon("img-busybox");
    // Nothing imported: "busybox" is the built-in directory tree.
    let spec = json!({"image": "busybox", "argv": ["echo", "hi"], "isolation": "process"});
    let (status, sb) = d.json("POST", "/v1/sandboxes", Some(&spec.to_string()));
    assert_eq!(status, 201, "{sb}");
    let lower = PathBuf::from(sb["plan"]["container"]["rootfs"]["lower"].as_str().unwrap());
    assert!(
        lower.is_dir() && lower.join("bin/busybox").exists(),
        "{lower:?}"
    );
    let (code, stdout, _) = run(&d, "busybox", json!({"argv": ["echo", "hi"]}));
    assert_eq!((code, stdout.as_str()), (0, "hi\n"));

    // An imported image beside it changes nothing for "busybox".
    let source = test_images().join("busybox-docker.tar");
    let body = json!({ "source": source }).to_string();
    let (status, rec) = d.json("POST", "/v1/images", Some(&body));
    assert_eq!(status, 201, "{rec}");
    assert_eq!(rec["tags"], json!(["spore-test/busybox:latest"]));
    let (status, sb) = d.json("POST", "/v1/sandboxes", Some(&spec.to_string()));
    assert_eq!(status, 201, "{sb}");
    assert_eq!(sb["plan"]["container"]["rootfs"]["lower"], json!(lower));
    let (code, stdout, _) = run(
        &d,
        "spore-test/busybox",
        json!({"argv": ["cat", "/etc/passwd"]}),
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("app:x:1000"), "{stdout}");
}

#[test]
fn a_corrupt_archive_is_refused_and_the_store_is_unchanged() {
    if skip_unless_root() {
        return;
    }
    let images = test_images();
    let d = start_daemon("img-corrupt");
    let import = |source: &Path| {
        let body = json!({"source": source}).to_string();
        d.json("POST", "/v1/images", Some(&body))
    };
    let (status, _) = import(&images.join("busybox-oci.tar"));
    assert_eq!(status, 201);
    let store = d.dir.join("images");
    let before = listing(&store);

    // Truncated mid-layer, and bytes flipped inside a layer.
    let whole = std::fs::read(images.join("twolayer-docker.tar")).unwrap();
    let truncated = d.dir.join("truncated.tar");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let flipped = d.dir.join("flipped.tar");
    let mut bytes = whole.clone();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&flipped, &bytes).unwrap();
    for bad in [&truncated, &flipped] {
        let (status, err) = import(bad);
        assert_eq!(status, 400, "{}: {err}", bad.display());
        assert_eq!(err["code"], "invalid_image", "{err}");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("cannot import {}", bad.display())),
            "{message}"
        );
        assert_eq!(
            listing(&store),
            before,
            "store changed by {}",
            bad.display()
        );
    }

    // A path that is not there, and a body that is not an import request.
    let (status, err) = import(Path::new("/nonexistent/image.tar"));
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_source")),
        "{err}"
    );
    let (status, _) = d.json("POST", "/v1/images", Some(r#"{"path":"/x"}"#));
    assert_eq!(status, 400);
    // Through the CLI: a clear message, exit code 1.
    let out = cli(&d, &["image", "import", truncated.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot import"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(listing(&store), before);
    assert_eq!(
        d.json("GET", "/v1/images", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Every path under `dir` with its size, sorted (staging in tmp/ included).
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.push((entry.path().display().to_string(), meta.len()));
        }
    }
    out.sort();
    out
}

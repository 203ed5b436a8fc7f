//! Point 3: the image config honoured — Entrypoint/Cmd/Env/WorkingDir/User from
//! the stored config, with docker's override rules.

use crate::common::{require_root, test_images, Scratch};
use crate::image::config::DEFAULT_PATH;
use crate::image::{import, resolve_process, Source};

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn stored_config_resolves_like_docker_run() {
    require_root!();
    let scratch = Scratch::new("config");
    let store = scratch.store();
    let record = import(&store, &Source::Layout(test_images().join("twolayer"))).unwrap();
    let config = store.config(&record.digest.parse().unwrap()).unwrap();
    let cc = config.config.unwrap_or_default();

    // docker run IMAGE
    let p = resolve_process(&cc, None, vec![], vec![], None, None).unwrap();
    assert_eq!(p.argv, v(&["/bin/sh", "/app/hello.sh"]));
    assert_eq!(p.env, v(&["PATH=/bin", "GREETING=hello"]));
    assert_eq!(p.cwd, "/app");
    assert_eq!(p.user.as_deref(), Some("1000:1000"));

    // docker run -e GREETING=hi -w /tmp -u 0 IMAGE id
    let p = resolve_process(
        &cc,
        None,
        v(&["id"]),
        v(&["GREETING=hi"]),
        Some("/tmp".into()),
        Some("0".into()),
    )
    .unwrap();
    assert_eq!(p.argv, v(&["id"]));
    assert_eq!(p.env, v(&["PATH=/bin", "GREETING=hi"]));
    assert_eq!((p.cwd.as_str(), p.user.as_deref()), ("/tmp", Some("0")));

    // docker run --entrypoint /bin/echo IMAGE   (the image's Cmd is dropped)
    let p = resolve_process(&cc, Some(v(&["/bin/echo"])), vec![], vec![], None, None).unwrap();
    assert_eq!(p.argv, v(&["/bin/echo"]));

    // The busybox image sets no Env: docker's default PATH.
    let record = import(&store, &Source::Layout(test_images().join("busybox"))).unwrap();
    let cc = store
        .config(&record.digest.parse().unwrap())
        .unwrap()
        .config
        .unwrap_or_default();
    let p = resolve_process(&cc, None, vec![], vec![], None, None).unwrap();
    assert_eq!(p.env, v(&[DEFAULT_PATH]));
    assert_eq!((p.cwd.as_str(), p.user.as_deref()), ("/", None));
}

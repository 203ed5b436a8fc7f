//! Point 4: registry pull over the OCI distribution API from a tiny HTTP server
//! run by the test on 127.0.0.1: a bearer-token challenge first, an index that
//! must be resolved to linux/amd64, then manifest, config and layer blobs.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::{assert_store_clean, require_root, test_images, Scratch};
use crate::image::digest::Digest;
use crate::image::{import, Source};

const TOKEN: &str = "t0ken";

/// Serves `layout` as repository `test/twolayer`; blobs and manifests need the
/// token, which /token hands out. Returns the port and a request counter.
struct Registry {
    port: u16,
    token_requests: Arc<AtomicUsize>,
}

fn serve(layout: PathBuf, corrupt_blobs: bool) -> Registry {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let token_requests = Arc::new(AtomicUsize::new(0));
    let counter = token_requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            handle(stream, &layout, port, corrupt_blobs, &counter);
        }
    });
    Registry {
        port,
        token_requests,
    }
}

fn handle(mut stream: TcpStream, layout: &Path, port: u16, corrupt: bool, tokens: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let authorized =
        headers.get("authorization").map(String::as_str) == Some(&*format!("Bearer {TOKEN}"));
    let (status, content_type, body, extra) = if path.starts_with("/token?") {
        tokens.fetch_add(1, Ordering::Relaxed);
        assert!(
            path.contains("scope=repository%3Atest%2Ftwolayer%3Apull"),
            "{path}"
        );
        (
            200,
            "application/json",
            format!(r#"{{"token":"{TOKEN}"}}"#).into_bytes(),
            String::new(),
        )
    } else if !authorized {
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test\",scope=\"repository:test/twolayer:pull\"\r\n"
        );
        (401, "application/json", b"{}".to_vec(), challenge)
    } else if path == "/v2/test/twolayer/manifests/latest" {
        // An index with an arm64 decoy in front of the amd64 manifest.
        let index = fs::read_to_string(layout.join("index.json")).unwrap();
        let decoy = format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},"#,
            "0".repeat(64)
        );
        let index = index.replacen(r#""manifests":["#, &format!(r#""manifests":[{decoy}"#), 1);
        (
            200,
            "application/vnd.oci.image.index.v1+json",
            index.into_bytes(),
            String::new(),
        )
    } else if let Some(digest) = path
        .strip_prefix("/v2/test/twolayer/manifests/")
        .or_else(|| path.strip_prefix("/v2/test/twolayer/blobs/"))
    {
        let digest: Digest = digest.parse().unwrap();
        match fs::read(layout.join("blobs/sha256").join(digest.hex())) {
            Ok(mut bytes) => {
                let is_layer = path.contains("/blobs/") && bytes.len() > 10_000;
                if corrupt && is_layer {
                    let last = bytes.len() - 1;
                    bytes[last] ^= 0xff;
                }
                (200, "application/octet-stream", bytes, String::new())
            }
            Err(_) => (404, "text/plain", b"not found".to_vec(), String::new()),
        }
    } else {
        (404, "text/plain", b"not found".to_vec(), String::new())
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

#[test]
fn pulls_through_token_auth_and_an_index() {
    require_root!();
    let layout = test_images().join("twolayer");
    let registry = serve(layout.clone(), false);
    let scratch = Scratch::new("registry");
    let store = scratch.store();
    let reference = format!("127.0.0.1:{}/test/twolayer:latest", registry.port);
    let pulled = import(&store, &Source::Registry(reference)).unwrap();
    assert!(
        registry.token_requests.load(Ordering::Relaxed) >= 1,
        "token flow not used"
    );
    let name = format!("127.0.0.1:{}/test/twolayer:latest", registry.port);
    assert_eq!(pulled.tags, vec![name.clone()]);
    assert_eq!(store.resolve(&name).unwrap().to_string(), pulled.digest);
    assert_eq!(pulled.layers, 2);
    // The same image as importing the layout directly.
    let direct = import(&store, &Source::Layout(layout)).unwrap();
    assert_eq!(pulled.digest, direct.digest);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn a_registry_serving_a_corrupt_blob_is_refused() {
    require_root!();
    let registry = serve(test_images().join("twolayer"), true);
    let scratch = Scratch::new("registry-corrupt");
    let store = scratch.store();
    let reference = format!("127.0.0.1:{}/test/twolayer", registry.port);
    let err = import(&store, &Source::Registry(reference)).unwrap_err();
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        msg.push_str(&format!(": {e}"));
        source = e.source();
    }
    assert!(msg.contains("digest mismatch"), "{msg}");
    assert_store_clean(&store);
}

#[test]
fn a_missing_repository_is_a_clear_error() {
    let registry = serve(PathBuf::from("/nonexistent"), false);
    let scratch = Scratch::new("registry-404");
    let store = scratch.store();
    let reference = format!("127.0.0.1:{}/other/repo:v1", registry.port);
    let err = import(&store, &Source::Registry(reference)).unwrap_err();
    let source = std::error::Error::source(&err)
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(source.contains("answered HTTP 404"), "{source}");
    assert_store_clean(&store);
}

//! `start_clone` against a test double of the template process: each "clone" is
//! a `sleep` process (its VMM stand-in) and a fake guest agent on a unix socket
//! that answers `hello` and records the fixup it is sent.

use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::sync::Mutex;

use spore_agent::protocol::frame::{read_frame, write_frame};
use spore_agent::protocol::messages::{
    ErrorCode, ErrorReply, HelloInfo, Outcome, Reply, Request, RequestBody, Response,
    PROTOCOL_VERSION,
};

use super::*;

/// How the fake agent behaves.
#[derive(Clone, Copy, PartialEq)]
enum Agent {
    /// Answers hello and accepts the fixup.
    Good,
    /// Answers hello, refuses the fixup.
    RefusesFixup,
    /// Never listens.
    Absent,
}

struct FakeSource {
    dir: PathBuf,
    agent: Agent,
    /// Every fixup the fake agents received.
    fixups: Arc<Mutex<Vec<CloneFixup>>>,
    /// (pid, the process) of every clone not released yet.
    clones: Mutex<Vec<(u32, Child)>>,
    released: Mutex<Vec<u32>>,
    /// Images the clones were ordered with.
    images: Mutex<Vec<PathBuf>>,
}

impl FakeSource {
    fn new(name: &str, agent: Agent) -> Arc<FakeSource> {
        let dir = std::env::temp_dir().join(format!("spore-fake-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Arc::new(FakeSource {
            dir,
            agent,
            fixups: Arc::default(),
            clones: Mutex::default(),
            released: Mutex::default(),
            images: Mutex::default(),
        })
    }

    fn live(&self) -> usize {
        self.clones.lock().unwrap().len()
    }
}

impl CloneSource for FakeSource {
    fn order(&self, image: &Path) -> Result<ClonedVm, VmError> {
        self.images.lock().unwrap().push(image.to_owned());
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        let uds = self.dir.join(format!("clone-{pid}.sock"));
        if self.agent != Agent::Absent {
            let listener = UnixListener::bind(&uds).unwrap();
            let (fixups, agent) = (self.fixups.clone(), self.agent);
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let (fixups, agent) = (fixups.clone(), agent);
                    std::thread::spawn(move || serve(conn, &fixups, agent));
                }
            });
        }
        self.clones.lock().unwrap().push((pid, child));
        Ok(ClonedVm {
            pid,
            endpoint: Endpoint::Unix(uds),
            latency: Duration::from_micros(500),
        })
    }

    fn release(&self, pid: u32) {
        self.released.lock().unwrap().push(pid);
        let mut clones = self.clones.lock().unwrap();
        if let Some(i) = clones.iter().position(|(p, _)| *p == pid) {
            let (_, mut child) = clones.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for FakeSource {
    fn drop(&mut self) {
        for (_, child) in self.clones.get_mut().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The fake guest agent's side of one connection.
fn serve(mut conn: UnixStream, fixups: &Mutex<Vec<CloneFixup>>, agent: Agent) {
    while let Ok(frame) = read_frame(&mut conn) {
        let req: Request = serde_json::from_slice(&frame).unwrap();
        let outcome = match req.body {
            RequestBody::Hello { .. } => Outcome::Ok(Reply::Hello(HelloInfo {
                protocol_version: PROTOCOL_VERSION,
                agent_version: "fake".into(),
                kernel_release: "fake".into(),
                hostname: "fake".into(),
                uptime_ms: 1,
                pid1: true,
                sandbox_id: None,
            })),
            RequestBody::Fixup(f) if agent == Agent::Good => {
                fixups.lock().unwrap().push(f);
                Outcome::Ok(Reply::Done)
            }
            _ => Outcome::Error(ErrorReply::new(ErrorCode::Unsupported, "fake refuses")),
        };
        let resp = serde_json::to_vec(&Response {
            id: req.id,
            outcome,
        })
        .unwrap();
        write_frame(&mut conn, &resp).unwrap();
    }
}

/// The error of a `start_clone` expected to fail.
fn failed(r: Result<(VmClone, Client), VmError>) -> VmError {
    r.err().expect("start_clone succeeded")
}

#[test]
fn two_clones_get_their_own_identity_and_the_image() {
    let source = FakeSource::new("good", Agent::Good);
    let image = PathBuf::from("/images/busybox.erofs");
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let (a, mut client_a) = start_clone(
        source.clone(),
        "0123456789abcdef",
        &image,
        Duration::from_secs(5),
    )
    .unwrap();
    let (b, _client_b) = start_clone(
        source.clone(),
        "fedcba987654",
        &image,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_ne!(a.pid(), b.pid());
    assert_eq!(*source.images.lock().unwrap(), vec![image.clone(), image]);
    let fixups = source.fixups.lock().unwrap().clone();
    assert_eq!(fixups.len(), 2);
    // Hostname = the sandbox id's prefix; the id itself.
    assert_eq!(fixups[0].hostname.as_deref(), Some("0123456789ab"));
    assert_eq!(fixups[0].sandbox_id.as_deref(), Some("0123456789abcdef"));
    assert_eq!(fixups[1].hostname.as_deref(), Some("fedcba987654"));
    // Fresh host entropy for each clone, and the wall clock.
    assert_eq!(fixups[0].entropy.len(), FIXUP_ENTROPY);
    assert_ne!(fixups[0].entropy, fixups[1].entropy);
    let clock = fixups[0].realtime_ns.unwrap();
    assert!(clock >= before.as_nanos() as u64, "{clock}");
    // The connection handed back is live.
    assert!(client_a.hello().is_ok());
    assert!(a.client().is_ok());
    // Ending a clone kills its process and releases it at the source.
    assert!(!a.exited());
    a.end();
    assert_eq!(a.wait_exit(), "exited");
    assert!(a.exited());
    assert_eq!(*source.released.lock().unwrap(), vec![a.pid()]);
    assert_eq!(source.live(), 1);
    b.end();
}

#[test]
fn a_refused_fixup_ends_the_clone() {
    let source = FakeSource::new("refuse", Agent::RefusesFixup);
    let err = failed(start_clone(
        source.clone(),
        "abc",
        Path::new("/i.erofs"),
        Duration::from_secs(5),
    ));
    assert!(matches!(err, VmError::Fixup(..)), "{err:?}");
    assert_eq!(source.released.lock().unwrap().len(), 1);
    assert_eq!(source.live(), 0);
}

#[test]
fn a_clone_that_dies_before_its_agent_answers_is_reported() {
    let source = FakeSource::new("dies", Agent::Absent);
    // Kill the "VMM" as soon as it exists: start_clone must notice, not wait.
    let killer = {
        let source = source.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Some((_, child)) = source.clones.lock().unwrap().first_mut() {
                    child.kill().unwrap();
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let t = Instant::now();
    let err = failed(start_clone(
        source.clone(),
        "abc",
        Path::new("/i.erofs"),
        Duration::from_secs(30),
    ));
    killer.join().unwrap();
    assert!(matches!(err, VmError::CloneDied(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(source.live(), 0);
}

#[test]
fn an_agent_that_never_answers_times_out() {
    let source = FakeSource::new("absent", Agent::Absent);
    let err = failed(start_clone(
        source.clone(),
        "abc",
        Path::new("/i.erofs"),
        Duration::from_millis(200),
    ));
    assert!(matches!(err, VmError::AgentTimeout(_, 200)), "{err:?}");
    assert_eq!(source.live(), 0);
}

//! Templates and clones of a tiny counting guest (needs /dev/kvm).
//!
//! The guest increments a u64 at `COUNTER`; every 1024 increments it reports the
//! counter on report slot 0 and the u64 at `MARK` on slot 1; if `LIMIT` is
//! non-zero it halts once the counter reaches it. A template is captured while it
//! counts; each clone runs in its own process (`clone::Worker`).
//!
//! Forking is only safe while no other thread holds a lock the child needs, so
//! the tests of this file run one at a time (`ONE_AT_A_TIME`).

use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spore_vmm::builder::{start_raw, ExtraDevice};
use spore_vmm::clone::{
    clone_in_process, CloneOptions, CloneOrder, Template, TemplateError, Worker, WorkerOptions,
    MEMORY_FILE, STATE_FILE,
};
use spore_vmm::config::Console;
use spore_vmm::devices::report::{ReportPort, REPORT_PORT};
use spore_vmm::snapshot::StateFileError;
use spore_vmm::test_guests::{self, COUNTER, MARK, MARK_VALUE};

/// The template is captured once its counter passed this.
const CAPTURE_AFTER: u32 = 8 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm is not usable by this user");
    }
    ok
}

/// Boots the counter, waits until it counted past `CAPTURE_AFTER`, captures it.
fn counting_template() -> Template {
    let report = ReportPort::shared();
    let guest = test_guests::counter(16, 0, &report);
    let vm = start_raw(guest).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while report.lock().unwrap().slot(0).last.unwrap_or(0) < CAPTURE_AFTER {
        assert!(
            Instant::now() < deadline,
            "the template guest does not count"
        );
        assert!(vm.wait_timeout(Duration::from_millis(5)).is_none());
    }
    Template::capture(vm).unwrap()
}

fn read_u64(template: &Template, addr: u64) -> u64 {
    let mut b = [0u8; 8];
    template.memory().read_exact_at(&mut b, addr).unwrap();
    u64::from_le_bytes(b)
}

fn workers(template: &Template, n: usize) -> Vec<Worker> {
    let options = WorkerOptions {
        report_port: true,
        ..WorkerOptions::default()
    };
    let mut out: Vec<Worker> = (0..n)
        .map(|_| Worker::spawn(template, &options).unwrap())
        .collect();
    for w in &mut out {
        w.wait_ready().unwrap();
    }
    out
}

/// Waits until slot `n` of `w` satisfies `ok`; returns (first, last, count).
fn wait_slot(
    w: &mut Worker,
    n: usize,
    ok: impl Fn(Option<u32>, Option<u32>, u64) -> bool,
) -> (Option<u32>, Option<u32>, u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (first, last, count) = w.report(n).unwrap();
        if ok(first, last, count) {
            return (first, last, count);
        }
        assert!(
            Instant::now() < deadline,
            "slot {n}: {first:?} {last:?} {count}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every clone's first report is the template's next multiple of 1024: it goes
/// on from the captured counter instead of starting again.
fn check_continues(w: &mut Worker, captured: u64) {
    let (first, _, _) = wait_slot(w, 0, |f, _, _| f.is_some());
    let first = first.unwrap() as u64;
    assert_eq!(first % 1024, 0);
    assert!(
        first >= captured && first <= captured + 1024,
        "clone started at {first}, template was captured at {captured}"
    );
}

#[test]
fn clones_continue_from_the_captured_counter_and_stay_isolated() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !kvm_available() {
        return;
    }
    let template = counting_template();
    let captured = read_u64(&template, COUNTER);
    assert!(captured >= CAPTURE_AFTER as u64);
    let mut clones = workers(&template, 3);
    for w in &mut clones {
        let started = w.start(&CloneOrder::default()).unwrap();
        assert!(started.running >= started.order, "{started:?}");
        check_continues(w, captured);
    }
    // A write in clone 0 is seen by clone 0's guest only.
    clones[0].poke(MARK, 0xaa).unwrap();
    wait_slot(&mut clones[0], 1, |_, last, _| last == Some(0xaa));
    for w in &mut clones[1..] {
        assert_eq!(w.peek(MARK).unwrap(), MARK_VALUE);
        let (_, last, _) = wait_slot(w, 1, |_, last, _| last.is_some());
        assert_eq!(last, Some(MARK_VALUE as u32));
    }
    // The clones' own counting went to their private pages.
    assert_eq!(read_u64(&template, MARK), MARK_VALUE);
    assert_eq!(read_u64(&template, COUNTER), captured);
    let counts: Vec<u64> = clones
        .iter_mut()
        .map(|w| w.peek(COUNTER).unwrap())
        .collect();
    assert!(counts.iter().all(|&c| c > captured), "{counts:?}");
    // A parked clone stops counting and goes on when resumed.
    clones[2].park().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let parked = clones[2].peek(COUNTER).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(clones[2].peek(COUNTER).unwrap(), parked);
    clones[2].resume().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while clones[2].peek(COUNTER).unwrap() == parked {
        assert!(
            Instant::now() < deadline,
            "the resumed clone does not count"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Killing clone 1's process leaves the others counting.
    clones[1].kill();
    for i in [0, 2] {
        let (_, _, before) = clones[i].report(0).unwrap();
        wait_slot(&mut clones[i], 0, |_, _, count| count > before + 2);
    }
}

#[test]
fn saved_then_loaded_template_clones_the_same() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !kvm_available() {
        return;
    }
    let template = counting_template();
    let captured = read_u64(&template, COUNTER);
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let written = template.save(dir.as_path()).unwrap();
    assert!(written > 0 && written < template.mem_size());
    drop(template);
    let loaded = Template::load(dir.as_path()).unwrap();
    assert_eq!(read_u64(&loaded, COUNTER), captured);
    let mut clones = workers(&loaded, 2);
    for w in &mut clones {
        w.start(&CloneOrder::default()).unwrap();
        check_continues(w, captured);
    }
    clones[0].poke(MARK, 0xbb).unwrap();
    assert_eq!(clones[1].peek(MARK).unwrap(), MARK_VALUE);
    assert_eq!(read_u64(&loaded, MARK), MARK_VALUE);
}

#[test]
fn damaged_templates_are_refused_clearly() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !kvm_available() {
        return;
    }
    let template = counting_template();
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    template.save(dir.as_path()).unwrap();
    let state = dir.as_path().join(STATE_FILE);
    let good = std::fs::read(&state).unwrap();
    // Corrupt: one payload byte flipped.
    let mut bad = good.clone();
    let i = bad.len() - 3;
    bad[i] ^= 1;
    std::fs::write(&state, &bad).unwrap();
    let err = Template::load(dir.as_path()).err().unwrap();
    assert!(matches!(
        err,
        TemplateError::State(StateFileError::Checksum { .. })
    ));
    // Version mismatch.
    let mut bad = good.clone();
    bad[8] = bad[8].wrapping_add(1);
    std::fs::write(&state, &bad).unwrap();
    let err = Template::load(dir.as_path()).err().unwrap();
    let TemplateError::State(inner) = &err else {
        panic!("{err:?}")
    };
    assert!(
        inner.to_string().contains("recreate the template"),
        "{inner}"
    );
    // Truncated memory file.
    std::fs::write(&state, &good).unwrap();
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.as_path().join(MEMORY_FILE))
        .unwrap();
    memory.set_len(4096).unwrap();
    let err = Template::load(dir.as_path()).err().unwrap();
    assert!(matches!(err, TemplateError::MemoryFile(_)), "{err:?}");
}

#[test]
fn sealed_template_memory_refuses_writes_and_clones_in_process() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !kvm_available() {
        return;
    }
    let template = counting_template();
    let err = template.memory().write_at(&[1], COUNTER).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    assert!(template.memory().set_len(1 << 30).is_err());
    // A clone in this process runs on a private mapping of the sealed memfd.
    let report = ReportPort::shared();
    let options = CloneOptions {
        console: Console::Null,
        vsock: None,
        vsock_listener: None,
        io_devices: vec![ExtraDevice {
            base: REPORT_PORT as u64,
            len: ReportPort::len(),
            device: report.clone(),
        }],
    };
    let captured = read_u64(&template, COUNTER);
    let vm = clone_in_process(&template, options).unwrap();
    assert!(vm.wait_running(TIMEOUT).is_some());
    let deadline = Instant::now() + TIMEOUT;
    while report.lock().unwrap().slot(0).count < 3 {
        assert!(
            Instant::now() < deadline,
            "the in-process clone does not count"
        );
        assert!(vm.wait_timeout(Duration::from_millis(5)).is_none());
    }
    let first = report.lock().unwrap().slot(0).first.unwrap() as u64;
    assert!(first >= captured && first <= captured + 1024);
    assert_eq!(read_u64(&template, COUNTER), captured);
}

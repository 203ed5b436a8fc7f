//! Prerequisites: skip a test with a reason when one is missing — except in CI.
//!
//! A missing prerequisite is either *environmental* (not root, a kvm_pvm host, no
//! `/dev/kvm`): the test skips everywhere with a message naming the reason; or
//! *provided*: something `resources/install-deps.sh` or a build script makes (QEMU,
//! vhost-device-vsock, the guest kernel, the initramfs). In CI (`CI=true`) a
//! provided prerequisite must be there, so its absence fails the test instead of
//! hiding it behind a skip.
//!
//! ```ignore
//! let tools = skip_unless!(spore_tests::qemu::TcgTools::find());
//! skip_unless!(spore_tests::skip::require_root());
//! ```

use std::path::Path;

use crate::host::{host_kvm_kind, is_root};

/// Why a test cannot run here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// What is missing and what to do about it.
    pub reason: String,
    /// Whether the install/build scripts provide it (then CI must have it).
    pub provided: bool,
}

impl Missing {
    /// A property of the machine: skipped even in CI.
    pub fn environment(reason: impl Into<String>) -> Missing {
        Missing {
            reason: reason.into(),
            provided: false,
        }
    }

    /// Something the install or build scripts provide: a failure in CI.
    pub fn provided(reason: impl Into<String>) -> Missing {
        Missing {
            reason: reason.into(),
            provided: true,
        }
    }
}

/// What to do about a missing prerequisite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Skip,
    Fail,
}

/// The verdict for `missing`, given whether we run in CI.
pub fn verdict(missing: &Missing, ci: bool) -> Verdict {
    if ci && missing.provided {
        Verdict::Fail
    } else {
        Verdict::Skip
    }
}

/// Whether the tests run in CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Prints the skip message, or panics when CI must have the prerequisite. Used by
/// [`skip_unless!`]; call it directly only to build a similar macro.
pub fn report(missing: &Missing) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    match verdict(missing, in_ci()) {
        Verdict::Skip => eprintln!("SKIPPED {test}: {}", missing.reason),
        Verdict::Fail => panic!(
            "{test}: prerequisite missing in CI (CI=true): {}",
            missing.reason
        ),
    }
}

/// Evaluates a `Result<T, Missing>`: yields `T`, or reports the missing
/// prerequisite and returns from the enclosing test (which must return `()`).
#[macro_export]
macro_rules! skip_unless {
    ($check:expr) => {
        match $check {
            Ok(value) => value,
            Err(missing) => {
                $crate::skip::report(&missing);
                return;
            }
        }
    };
}

/// The test process must run as root.
pub fn require_root() -> Result<(), Missing> {
    if is_root() {
        Ok(())
    } else {
        Err(Missing::environment("needs root (run the tests as root)"))
    }
}

/// The host's KVM must run a standard guest's user space (hardware VMX/SVM).
pub fn require_user_space_kvm() -> Result<(), Missing> {
    let kind = host_kvm_kind();
    if kind.runs_guest_user_space() {
        return Ok(());
    }
    Err(Missing::environment(format!(
        "host KVM is {}: a standard guest's user space cannot run under spore's VMM here \
         (see notes/kvm-pvm.md); this test runs on hardware KVM (vmx/svm)",
        kind.as_str()
    )))
}

/// `path` must exist; `hint` says which script makes it.
pub fn require_file(path: &Path, hint: &str) -> Result<(), Missing> {
    if path.exists() {
        Ok(())
    } else {
        Err(Missing::provided(format!(
            "{} not found — {hint}",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_fails_only_for_provided_prerequisites() {
        let tool = Missing::provided("qemu missing");
        let env = Missing::environment("not root");
        assert_eq!(verdict(&tool, false), Verdict::Skip);
        assert_eq!(verdict(&tool, true), Verdict::Fail);
        assert_eq!(verdict(&env, false), Verdict::Skip);
        assert_eq!(verdict(&env, true), Verdict::Skip);
    }

    #[test]
    fn require_file_names_the_fix() {
        let err = require_file(Path::new("/no/such/file"), "run make-it.sh").unwrap_err();
        assert!(err.provided);
        assert!(err.reason.contains("/no/such/file") && err.reason.contains("make-it.sh"));
        assert!(require_file(Path::new("/"), "").is_ok());
    }

    fn skipping_test(ran: &mut bool) {
        skip_unless!(Err::<(), _>(Missing::environment("always missing")));
        *ran = true;
    }

    fn passing_test(ran: &mut bool) {
        let v = skip_unless!(Ok::<u32, Missing>(5));
        assert_eq!(v, 5);
        *ran = true;
    }

    #[test]
    fn macro_returns_early_only_on_missing() {
        let mut ran = false;
        skipping_test(&mut ran);
        assert!(!ran);
        passing_test(&mut ran);
        assert!(ran);
    }
}

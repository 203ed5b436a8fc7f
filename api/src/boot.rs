//! Booting spore's guest image in a microVM and watching how far it gets.
//!
//! Shared by `spore vm run`, `spore doctor --boot` and `spore bench boot`: one
//! boot procedure, one report. The VM runs in this process (this process *is* the
//! VM's VMM process).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use spore_agent::protocol::client::{Client, ClientError, Endpoint};
use spore_agent::protocol::messages::HelloInfo;
use spore_agent::protocol::AGENT_VSOCK_PORT;
use spore_vmm::config::{Console, DiskConfig, VmConfig, VsockConfig};
use spore_vmm::{VmExit, VmHandle};

use crate::console::ConsoleWatch;
use crate::guest_image::{self, ImageError};

/// The guest CID of a VM started by `spore vm`/`doctor`/`bench`.
const GUEST_CID: u32 = 3;
/// Size of the scratch disk attached so the guest's virtio-blk driver probes.
const SCRATCH_DISK_BYTES: u64 = 1 << 20;

/// Errors from booting the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot prepare the VM's run directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the VM")]
    Start(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the agent did not answer within {0:?}; last console lines:\n{1}")]
    NoHello(Duration, String),
    #[error("the VM ended before the agent answered ({0}); last console lines:\n{1}")]
    EndedEarly(String, String),
    #[error("agent")]
    Agent(#[from] ClientError),
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootOptions {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub mem_mib: u32,
    pub vcpus: u8,
    /// Copy the guest console to stderr.
    pub echo_console: bool,
    /// A read-only disk for the guest (`/dev/vda`), e.g. a container rootfs
    /// image; without one a small scratch disk is attached so the guest's
    /// virtio-blk driver still probes.
    pub disk: Option<PathBuf>,
}

/// A directory for one VM's sockets and scratch files, removed on drop.
pub struct RunDir(PathBuf);

impl RunDir {
    fn create() -> Result<RunDir, BootError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!("spore-vm-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| BootError::RunDir {
            path: path.clone(),
            source,
        })?;
        Ok(RunDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates an empty scratch disk in `dir`.
fn scratch_disk(dir: &Path) -> Result<PathBuf, BootError> {
    let disk = dir.join("scratch.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(SCRATCH_DISK_BYTES))
        .map_err(|source| BootError::RunDir {
            path: disk.clone(),
            source,
        })?;
    Ok(disk)
}

/// A booted guest.
pub struct Guest {
    pub vm: VmHandle,
    pub console: ConsoleWatch,
    pub started: Instant,
    vsock_path: PathBuf,
    // Dropped last: the VM's sockets and disk live here.
    _run_dir: RunDir,
}

impl Guest {
    /// Boots the guest image with every spore device attached: serial console,
    /// vsock, a read-only scratch disk, rng.
    pub fn boot(opts: &BootOptions) -> Result<Guest, BootError> {
        // 1. Check the image files before creating anything.
        guest_image::check_kernel(&opts.kernel)?;
        guest_image::check_initrd(&opts.initrd)?;
        // 2. A run directory for the vsock socket (and the scratch disk).
        let run_dir = RunDir::create()?;
        let vsock_path = run_dir.path().join("vsock.sock");
        let disk = match &opts.disk {
            Some(disk) => disk.clone(),
            None => scratch_disk(run_dir.path())?,
        };
        // 3. The console, watched for milestones.
        let console = ConsoleWatch::new(opts.echo_console);
        // 4. The VM.
        let config = VmConfig {
            kernel: opts.kernel.clone(),
            initrd: Some(opts.initrd.clone()),
            cmdline_extra: String::new(),
            mem_mib: opts.mem_mib,
            vcpus: opts.vcpus,
            console: Console::Writer(Box::new(console.clone())),
            vsock: Some(VsockConfig {
                cid: GUEST_CID,
                uds_path: vsock_path.clone(),
            }),
            disks: vec![DiskConfig {
                path: disk,
                read_only: true,
            }],
            rng: true,
        };
        let started = Instant::now();
        let vm = spore_vmm::start(config).map_err(|e| BootError::Start(Box::new(e)))?;
        Ok(Guest {
            vm,
            console,
            started,
            vsock_path,
            _run_dir: run_dir,
        })
    }

    /// Milliseconds from VM start to `t`.
    pub fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    /// The virtio devices whose guest driver has set DRIVER_OK, with the time.
    pub fn devices_probed(&self) -> Vec<(String, u64)> {
        let mut probed = self
            .vm
            .devices()
            .iter()
            .filter_map(|d| d.driver_ok_at().map(|t| (d.name.to_string(), self.ms(t))))
            .collect::<Vec<_>>();
        probed.sort_by_key(|(_, ms)| *ms);
        probed
    }

    /// The guest agent's endpoint: its vsock port behind the VMM's unix socket.
    pub fn agent_endpoint(&self) -> Endpoint {
        Endpoint::HybridVsock {
            path: self.vsock_path.clone(),
            port: AGENT_VSOCK_PORT,
        }
    }

    /// How the VM ended, if it has.
    pub fn exit(&self) -> Option<VmExit> {
        self.vm.wait_timeout(Duration::ZERO)
    }

    /// Retries connecting to the agent until it answers or `timeout` passes.
    pub fn wait_for_agent(&self, timeout: Duration) -> Result<Client, BootError> {
        let deadline = self.started + timeout;
        loop {
            if let Some(exit) = self.exit() {
                return Err(BootError::EndedEarly(
                    exit.to_string(),
                    self.console.tail(20),
                ));
            }
            match Client::connect(self.agent_endpoint()) {
                Ok(client) => return Ok(client),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return Err(BootError::NoHello(timeout, self.console.tail(20))),
            }
        }
    }
}

/// How far a boot got. Times are milliseconds from VM start.
#[derive(Default, Serialize)]
pub struct BootProgress {
    pub kernel_running: bool,
    pub ms_to_console: Option<u64>,
    pub reached_init: bool,
    pub ms_to_init: Option<u64>,
    /// Virtio devices whose guest driver finished probing (set DRIVER_OK).
    pub devices_probed: Vec<String>,
    pub ms_to_devices: Vec<(String, u64)>,
    pub agent_hello: Option<HelloInfo>,
    pub ms_to_hello: Option<u64>,
    /// Why the boot stopped where it did.
    pub outcome: String,
    /// How the VM ended.
    pub exit: String,
    /// This VMM process's resident memory outside guest RAM, sampled at the end.
    pub vmm_overhead_kib: u64,
}

/// Boots the guest and polls its milestones until the furthest one this host
/// allows is reached (agent hello; on a host without guest user space, init with
/// every device probed), the VM ends, or the timeout passes.
pub fn boot_and_watch(
    opts: &BootOptions,
    timeout: Duration,
    user_space: bool,
) -> Result<BootProgress, BootError> {
    let guest = Guest::boot(opts)?;
    let deadline = Instant::now() + timeout;
    let wanted = guest.vm.devices().len();
    let mut progress = BootProgress::default();
    let mut agent = None;
    let outcome = loop {
        progress.ms_to_console = guest.console.seen("console").map(|t| guest.ms(t));
        progress.ms_to_init = guest.console.seen("init").map(|t| guest.ms(t));
        progress.ms_to_devices = guest.devices_probed();
        if let Some(exit) = guest.exit() {
            break format!("VM ended: {exit}");
        }
        if user_space && progress.ms_to_init.is_some() {
            if let Ok(mut client) = Client::connect(guest.agent_endpoint()) {
                progress.agent_hello = Some(client.hello()?);
                progress.ms_to_hello = Some(guest.ms(Instant::now()));
                agent = Some(client);
                break "agent answered".into();
            }
        }
        if !user_space && progress.ms_to_init.is_some() && progress.ms_to_devices.len() == wanted {
            break "reached init with every device probed; this host cannot run guest user space, \
                   so no agent hello"
                .into();
        }
        if Instant::now() > deadline {
            break format!("timed out after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    progress.vmm_overhead_kib = vmm_overhead_kib();
    progress.kernel_running = progress.ms_to_console.is_some();
    progress.reached_init = progress.ms_to_init.is_some();
    progress.devices_probed = progress
        .ms_to_devices
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    progress.outcome = outcome;
    match agent {
        Some(client) => progress.exit = shutdown(guest, client).to_string(),
        None => progress.exit = stop(guest).to_string(),
    }
    Ok(progress)
}

/// How long a guest gets to power off after the agent was asked to.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Asks the agent to power the guest off and waits for the VM to end; stops it
/// if it does not end in time.
pub fn shutdown(guest: Guest, mut agent: Client) -> VmExit {
    if agent.shutdown().is_ok() {
        if let Some(exit) = guest.vm.wait_timeout(SHUTDOWN_GRACE) {
            return exit;
        }
    }
    stop(guest)
}

/// Stops the VM from the host and waits for it.
pub fn stop(guest: Guest) -> VmExit {
    guest.vm.stop();
    guest.vm.wait()
}

/// Resident memory of this process outside guest RAM (guest RAM is a memfd
/// mapping, named `/memfd:...` in smaps), in KiB.
pub fn vmm_overhead_kib() -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    overhead_from_smaps(&smaps)
}

fn overhead_from_smaps(smaps: &str) -> u64 {
    let mut total = 0;
    let mut guest_ram = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first == "Rss:" {
            if !guest_ram {
                total += fields
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        } else if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            guest_ram = fields
                .nth(4)
                .is_some_and(|path| path.starts_with("/memfd:"));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_excludes_memfd_mappings() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fd:01 123 /usr/bin/spore
Size:               1024 kB
Rss:                 300 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 77 /memfd:spore-guest-ram (deleted)
Size:             262144 kB
Rss:              100000 kB
7f0020000000-7f0020021000 rw-p 00000000 00:00 0
Rss:                  40 kB
";
        assert_eq!(overhead_from_smaps(smaps), 340);
    }
}

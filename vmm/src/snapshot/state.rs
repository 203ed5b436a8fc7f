//! The in-memory template state: what a clone needs besides the guest's memory.
//! Every vCPU's registers, the VM-wide interrupt controllers, PIT and clock, the
//! devices, and where the guest's RAM regions sit in the memory file.
//!
//! Owns the data types and the device capture/restore entry points. It does not
//! issue KVM ioctls: the VMM's capture and clone code fills and applies the KVM
//! structures. On-disk encoding is `file.rs`.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::FORMAT_VERSION;
use crate::devices::serial::{SerialDevice, SerialSnapshot};
use crate::devices::virtio::{
    self, PersistError, VirtioDeviceState, VirtioMmioDevice, VsockIdentity,
};

/// A paused VM's complete state, minus its memory's contents.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmState {
    /// `FORMAT_VERSION` of the spore that captured it.
    pub format_version: u32,
    /// In vCPU index order.
    pub vcpus: Vec<VcpuState>,
    pub vm: VmArchState,
    pub devices: DevicesState,
    pub memory: MemoryLayout,
}

impl VmState {
    /// A state of this spore's format version.
    pub fn new(
        vcpus: Vec<VcpuState>,
        vm: VmArchState,
        devices: DevicesState,
        memory: MemoryLayout,
    ) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            vcpus,
            vm,
            devices,
            memory,
        }
    }
}

/// One vCPU, as KVM's GET ioctls return it; restore with the matching SETs
/// (CPUID first, then sregs, regs, fpu/xsave, xcrs, msrs, lapic, debugregs,
/// vcpu_events, mp_state).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VcpuState {
    /// KVM_GET_CPUID2: what the guest saw at boot, restored as is.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    /// KVM_GET_XSAVE(2); `None` where the host or the guest's CPUID hides XSAVE.
    pub xsave: Option<XsaveState>,
    /// KVM_GET_XCRS; `None` where XSAVE is hidden.
    pub xcrs: Option<kvm_xcrs>,
    /// KVM_GET_MSRS for every saved MSR (kvmclock's system time included).
    pub msrs: Vec<kvm_msr_entry>,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
    pub debugregs: kvm_debugregs,
    /// KVM_GET_TSC_KHZ, to refuse or scale on a host with another TSC frequency.
    pub tsc_khz: Option<u32>,
}

/// VM-wide KVM state (KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_GET_CLOCK).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmArchState {
    /// KVM_IRQCHIP_PIC_MASTER.
    pub pic_master: kvm_irqchip,
    /// KVM_IRQCHIP_PIC_SLAVE.
    pub pic_slave: kvm_irqchip,
    /// KVM_IRQCHIP_IOAPIC.
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// `kvm_fpu`, which kvm-bindings does not make serializable, field for field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// The XSAVE area as 32-bit words: 1024 from KVM_GET_XSAVE, more from
/// KVM_GET_XSAVE2 on hosts with larger state (AMX).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XsaveState {
    pub region: Vec<u32>,
}

impl From<&kvm_xsave> for XsaveState {
    fn from(x: &kvm_xsave) -> Self {
        Self {
            region: x.region.to_vec(),
        }
    }
}

impl XsaveState {
    /// The legacy 4 KiB `kvm_xsave` for KVM_SET_XSAVE (extra words are dropped:
    /// use KVM_SET_XSAVE with a `kvm_xsave2` built from `region` for those).
    pub fn to_kvm(&self) -> kvm_xsave {
        let mut x = kvm_xsave::default();
        let n = self.region.len().min(x.region.len());
        x.region[..n].copy_from_slice(&self.region[..n]);
        x
    }
}

/// The devices' state. `virtio[i]` is the device in virtio-mmio slot `i`
/// (`devices::virtio_slot(i)`); restore keeps the order, so each device gets its
/// old MMIO window and GSI back, as the guest's kernel command line says.
///
/// Legacy devices: COM1's registers are here; the i8042 and the exit port hold no
/// state (the i8042's output buffer is always empty, a reset command acts at once).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    pub virtio: Vec<VirtioDeviceState>,
    /// COM1 (added in format version 2).
    pub serial: SerialSnapshot,
}

impl DevicesState {
    /// Captures every virtio device, in slot order, and the serial port. Call it
    /// with the vCPUs and the event loop stopped.
    pub fn capture(virtio: &[VirtioMmioDevice], serial: &SerialDevice) -> Self {
        Self {
            virtio: virtio.iter().map(VirtioMmioDevice::save).collect(),
            serial: serial.save(),
        }
    }

    /// Recreates the virtio devices on `mem`, in slot order, for the builder to
    /// wire like new ones. `vsock` gives the vsock device (spore has at most one)
    /// its new identity; see `devices::virtio::restore`.
    pub fn restore(
        &self,
        mem: &GuestMemoryMmap,
        vsock: Option<VsockIdentity>,
    ) -> Result<Vec<VirtioMmioDevice>, PersistError> {
        self.virtio
            .iter()
            .map(|state| virtio::restore(mem, state, vsock))
            .collect()
    }
}

/// One guest RAM region and where its bytes are in the memory file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// Guest RAM regions, in guest address order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    pub regions: Vec<MemoryRegion>,
}

impl MemoryLayout {
    /// The layout of `mem`; `None` if a region is not backed by a file (only
    /// file-backed RAM can be saved and mapped by a clone).
    pub fn of(mem: &GuestMemoryMmap) -> Option<Self> {
        let regions = mem
            .iter()
            .map(|r| {
                Some(MemoryRegion {
                    guest_addr: r.start_addr().0,
                    size: r.len(),
                    file_offset: r.file_offset()?.start(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { regions })
    }

    /// The smallest memory file that holds every region.
    pub fn file_size(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.file_offset + r.size)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};

    use super::*;
    use crate::devices::virtio::rng;

    #[test]
    fn fpu_converts_both_ways() {
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            last_ip: 0xdead,
            ..Default::default()
        };
        fpu.xmm[3][7] = 9;
        fpu.fpr[7][0] = 1;
        let state = FpuState::from(&fpu);
        assert_eq!(kvm_fpu::from(&state), fpu);
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<FpuState>(&json).unwrap(), state);
    }

    #[test]
    fn xsave_keeps_its_words() {
        let mut x = kvm_xsave::default();
        x.region[0] = 1;
        x.region[1023] = 0xffff_ffff;
        let state = XsaveState::from(&x);
        assert_eq!(state.region.len(), 1024);
        assert_eq!(state.to_kvm().region, x.region);
        let short = XsaveState { region: vec![5] };
        assert_eq!(short.to_kvm().region[..2], [5, 0]);
    }

    #[test]
    fn kvm_structures_survive_json() {
        let mut vcpu = VcpuState::default();
        vcpu.regs.rip = 0x10_0000;
        vcpu.sregs.cr3 = 0x9000;
        vcpu.lapic.regs[0x20] = 0x42;
        vcpu.msrs.push(kvm_msr_entry {
            index: 0x4b56_4d01,
            data: 0x1234_5001,
            ..Default::default()
        });
        vcpu.xsave = Some(XsaveState {
            region: vec![7; 1024],
        });
        let mut vm = VmArchState::default();
        vm.ioapic.chip_id = 2;
        vm.clock.clock = 123_456_789;
        vm.pit.channels[0].count = 0xffff;
        let state = VmState::new(
            vec![vcpu],
            vm,
            DevicesState::default(),
            MemoryLayout::default(),
        );
        let json = serde_json::to_vec(&state).unwrap();
        let back: VmState = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.format_version, FORMAT_VERSION);
        let v = &back.vcpus[0];
        assert_eq!(
            (v.regs.rip, v.sregs.cr3, v.lapic.regs[0x20]),
            (0x10_0000, 0x9000, 0x42)
        );
        assert_eq!(
            (v.msrs[0].index, v.msrs[0].data),
            (0x4b56_4d01, 0x1234_5001)
        );
        assert_eq!(v.xsave.as_ref().unwrap().region[1023], 7);
        assert_eq!(back.vm.ioapic.chip_id, 2);
        assert_eq!(back.vm.clock.clock, 123_456_789);
        assert_eq!(back.vm.pit.channels[0].count, 0xffff);
        assert_eq!(serde_json::to_vec(&back).unwrap(), json);
    }

    #[test]
    fn layout_of_file_backed_memory() {
        let file = vmm_sys_util::tempfile::TempFile::new().unwrap();
        file.as_file().set_len(0x3000).unwrap();
        let region = |off: u64, addr: u64, len: usize| {
            let f: File = file.as_file().try_clone().unwrap();
            let m = MmapRegion::from_file(FileOffset::new(f, off), len).unwrap();
            GuestRegionMmap::new(m, GuestAddress(addr)).unwrap()
        };
        let mem = GuestMemoryMmap::from_regions(vec![
            region(0, 0, 0x1000),
            region(0x1000, 0x10_0000, 0x2000),
        ])
        .unwrap();
        let layout = MemoryLayout::of(&mem).unwrap();
        assert_eq!(
            layout.regions,
            vec![
                MemoryRegion {
                    guest_addr: 0,
                    size: 0x1000,
                    file_offset: 0
                },
                MemoryRegion {
                    guest_addr: 0x10_0000,
                    size: 0x2000,
                    file_offset: 0x1000
                },
            ]
        );
        assert_eq!(layout.file_size(), 0x3000);
        let anonymous = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(MemoryLayout::of(&anonymous).is_none());
    }

    #[test]
    fn devices_capture_and_restore_in_slot_order() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let devices = vec![rng(&mem).unwrap(), rng(&mem).unwrap()];
        let (mut serial, _irq) = SerialDevice::new(Box::new(std::io::sink())).unwrap();
        crate::bus::BusDevice::write(&mut serial, 7, &[0x77]);
        let state = DevicesState::capture(&devices, &serial);
        assert_eq!(state.virtio.len(), 2);
        assert_eq!(state.serial.scratch, 0x77);
        // Through the state file, as a template saved to disk and loaded again.
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("state");
        let vm_state = VmState::new(
            vec![VcpuState::default()],
            VmArchState::default(),
            state.clone(),
            MemoryLayout::default(),
        );
        vm_state.save(&path).unwrap();
        let loaded = VmState::load(&path).unwrap();
        assert_eq!(loaded.devices, state);
        let restored = loaded.devices.restore(&mem, None).unwrap();
        assert_eq!(restored.len(), 2);
        assert_eq!(DevicesState::capture(&restored, &serial), state);
    }
}

//! Links the guest as a static, non-PIE ELF at the address its linker script names.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    // The `qemu` build adds the PVH note QEMU boots from (see src/pvh.rs).
    let script = if std::env::var_os("CARGO_FEATURE_QEMU").is_some() {
        "link-qemu.ld"
    } else {
        "link.ld"
    };
    println!("cargo:rerun-if-changed=link-qemu.ld");
    println!("cargo:rustc-link-arg-bins=-T{dir}/{script}");
}

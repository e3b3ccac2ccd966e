//! Compiles `ebpf/programs` for the BPF target (the pinned nightly,
//! `-Z build-std=core`, bpf-linker) and leaves the object in
//! `$OUT_DIR/strait` for `lib.rs` to embed.
fn main() -> aya_build::Result<()> {
    let programs = aya_build::Package {
        name: "strait-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/programs"),
        ..Default::default()
    };
    aya_build::build_ebpf(
        [programs],
        aya_build::Toolchain::Custom(strait_ebpf_common::BPF_TOOLCHAIN),
    )
}

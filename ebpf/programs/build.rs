//! The object is linked by `bpf-linker`, which cargo does not know about:
//! rebuild when it changes so a new linker is picked up.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}

//! What setup cannot install: the kernel and the rights strait needs. Each
//! missing piece stops the run with one sentence naming it, before anything
//! is installed or built.
use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};

/// The oldest kernel strait supports: BTF, sk_lookup, cgroup getpeername
/// hooks and bounded loops are all there.
const MIN_KERNEL: (u32, u32) = (5, 15);
const BTF: &str = "/sys/kernel/btf/vmlinux";

/// The program types the capture object holds (`ebpf/programs`).
const PROGRAM_TYPES: &[(ProgramType, &str)] = &[
    (
        ProgramType::CgroupSockAddr,
        "cgroup/connect, sendmsg, recvmsg and getpeername",
    ),
    (ProgramType::SockOps, "sock_ops"),
    (ProgramType::SkLookup, "sk_lookup"),
];

/// The map types it declares.
const MAP_TYPES: &[(MapType, &str)] = &[
    (MapType::Hash, "hash"),
    (MapType::LruHash, "LRU hash"),
    (MapType::PerCpuArray, "per-CPU array"),
    (MapType::SockHash, "sockhash"),
];

pub fn check() -> Result<()> {
    root()?;
    let release = kernel()?;
    cgroup2()?;
    if !Path::new(BTF).exists() {
        bail!(
            "this kernel ({release}) has no BTF ({BTF} is missing): strait's eBPF programs need a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    for (program, what) in PROGRAM_TYPES {
        let supported = is_program_supported(*program)
            .with_context(|| format!("probing the kernel for {what} programs"))?;
        if !supported {
            bail!(
                "this kernel ({release}) cannot load {what} eBPF programs, which strait's capture uses"
            );
        }
    }
    for (map, what) in MAP_TYPES {
        let supported = is_map_supported(*map)
            .with_context(|| format!("probing the kernel for {what} maps"))?;
        if !supported {
            bail!(
                "this kernel ({release}) cannot create {what} eBPF maps, which strait's capture uses"
            );
        }
    }
    eprintln!(
        "host: kernel {release} with BTF; {} program and {} map types strait loads are supported",
        PROGRAM_TYPES.len(),
        MAP_TYPES.len()
    );
    Ok(())
}

fn root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "not running as root: strait's setup installs packages, and its demo and tests create network namespaces and load eBPF"
        );
    }
    Ok(())
}

/// The kernel release, once it is known to be new enough.
fn kernel() -> Result<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    match parse_release(&release) {
        Some(version) if version >= MIN_KERNEL => Ok(release),
        Some(_) => bail!(
            "this kernel ({release}) is older than {}.{}, the oldest strait supports",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        ),
        None => bail!("cannot tell the kernel's version from its release string {release:?}"),
    }
}

/// `6.1.0-27-cloud-amd64` -> (6, 1).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn cgroup2() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    match mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
    {
        Some(line) => {
            let at = line.split_whitespace().nth(1).unwrap_or("?");
            eprintln!("host: cgroup v2 mounted at {at}");
            Ok(())
        }
        None => bail!(
            "no cgroup v2 filesystem is mounted: strait attaches its capture programs to a cgroup v2 subtree"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.1.0-27-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("5.4"), Some((5, 4)));
        assert!(parse_release("5.4") < Some(MIN_KERNEL));
        assert!(parse_release("6.1.0") >= Some(MIN_KERNEL));
        assert_eq!(parse_release("linux"), None);
    }
}

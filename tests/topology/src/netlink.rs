//! Changes to links, addresses and routes, made with iproute2's `ip`, the
//! tool whose semantics everyone debugging a topology already knows.
use std::{process::Command, time::Duration};

use crate::{Error, process};

const TIMEOUT: Duration = Duration::from_secs(10);

/// `ip <args>`; a failure carries the command line and `ip`'s message.
pub fn ip(args: &[&str]) -> Result<(), Error> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = process::run(cmd, TIMEOUT)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip -n <netns> <args>`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<(), Error> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Sets sysctls inside `netns` (`/proc/sys/net` is per namespace).
/// Runs a program inside `netns`.
pub fn ip_in_exec(netns: &str, command: &[&str]) -> Result<(), Error> {
    let mut args = vec!["netns", "exec", netns];
    args.extend_from_slice(command);
    ip(&args)
}

pub fn sysctl_in(netns: &str, settings: &[&str]) -> Result<(), Error> {
    let mut args = vec!["netns", "exec", netns, "sysctl", "-qw"];
    args.extend_from_slice(settings);
    ip(&args)
}

/// A veth pair created straight into two namespaces, so no interface ever
/// appears in the host's own namespace.
pub fn veth(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> Result<(), Error> {
    ip(&[
        "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b, "netns", ns_b,
    ])
}

pub fn netns_add(name: &str) -> Result<(), Error> {
    ip(&["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])?;
    // New interfaces inherit `default`: skip IPv6 duplicate address detection
    // so addresses are usable at once.
    sysctl_in(
        name,
        &[
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_dad=0",
        ],
    )
}

pub fn netns_del(name: &str) -> Result<(), Error> {
    ip(&["netns", "del", name])
}

/// Names in `/run/netns`.
pub fn netns_list() -> Vec<String> {
    std::fs::read_dir(crate::NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn bridge(netns: &str, name: &str) -> Result<(), Error> {
    ip_in(netns, &["link", "add", name, "type", "bridge"])?;
    ip_in(netns, &["link", "set", name, "up"])
}

pub fn enslave(netns: &str, port: &str, bridge: &str) -> Result<(), Error> {
    ip_in(netns, &["link", "set", port, "master", bridge, "up"])
}

pub fn addr(netns: &str, dev: &str, cidr: &str) -> Result<(), Error> {
    ip_in(netns, &["addr", "add", cidr, "dev", dev, "nodad"])
}

pub fn up(netns: &str, dev: &str) -> Result<(), Error> {
    ip_in(netns, &["link", "set", dev, "up"])
}

pub fn down(netns: &str, dev: &str) -> Result<(), Error> {
    ip_in(netns, &["link", "set", dev, "down"])
}

pub fn route(netns: &str, dest: &str, via: &str) -> Result<(), Error> {
    let family = if via.contains(':') { "-6" } else { "-4" };
    ip_in(netns, &[family, "route", "add", dest, "via", via])
}

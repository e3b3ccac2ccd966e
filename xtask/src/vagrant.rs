//! `cargo xtask vagrant`: strait on two VMs, each with its own kernel,
//! under QEMU's emulation (no KVM here). The box is built locally
//! (`vagrant/build-box.sh`: debootstrap and qemu-img) and cached; each VM
//! boots its kernel directly into `strait-vm-init`, which runs
//! `vagrant/scenario.sh` from a 9p share holding the static binaries, the
//! config and the node's credential. The VMs' link is a QEMU socket pair on
//! loopback, captured by QEMU itself: the host's network is not touched.
//!
//! Vagrant's libvirt provider is not driven here: it needs libvirtd, whose
//! management network is a bridge with NAT rules in the host's own
//! namespace. `vagrant/Vagrantfile` is for machines with KVM.
use std::{
    io::{BufRead, BufReader, Seek},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use strait_topology::Pcap;

use crate::{
    apt::{Package, Provides::Program, package},
    cmd::{self, root, section, target_dir},
    image,
};

const CACHE: &str = "/var/cache/strait/vagrant";
/// What the box build and the VMs run.
pub const PACKAGES: &[Package] = &[
    package("debootstrap", &[Program("debootstrap")]),
    package("qemu-system-x86", &[Program("qemu-system-x86_64")]),
    package("qemu-utils", &[Program("qemu-img")]),
    package("e2fsprogs", &[Program("mkfs.ext4")]),
    package("openssh-client", &[Program("ssh-keygen")]),
];
/// The whole run: two emulated boots and the scenario.
const LIMIT: Duration = Duration::from_secs(900);

struct Vm {
    name: &'static str,
    addr: &'static str,
    pod: &'static str,
    gateway: &'static str,
    role: &'static str,
}

const VMS: [Vm; 2] = [
    Vm {
        name: "vm1",
        addr: "192.168.50.1",
        pod: "10.1.0.10",
        gateway: "10.1.0.1",
        role: "client",
    },
    Vm {
        name: "vm2",
        addr: "192.168.50.2",
        pod: "10.2.0.10",
        gateway: "10.2.0.1",
        role: "server",
    },
];
const CA_ADDR: &str = "192.168.50.1:15012";

/// QEMU processes, killed (by PID) when dropped.
struct Qemu(Vec<Child>);

impl Drop for Qemu {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    let cache = Path::new(CACHE);
    if !cache.join("box.img").exists() || !cache.join("vmlinuz").exists() {
        section("box (debootstrap, once)");
        let built = Instant::now();
        std::fs::create_dir_all(cache)?;
        eprintln!("box: debootstrap of Debian 12 into {CACHE} (a few minutes, once)");
        cmd::run_logged(
            Command::new("bash")
                .arg(root().join("vagrant/build-box.sh"))
                .arg(cache),
            "box",
        )?;
        crate::cmd::took("box", built.elapsed());
    }
    image::build()?;
    section("two VMs under QEMU (TCG)");
    let work = target_dir().join("vagrant-run");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let result = scenario(&work, cache);
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    result?;
    println!(
        "cargo xtask vagrant: done in {:.0} s (VMs removed)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn scenario(work: &Path, cache: &Path) -> Result<()> {
    let config = work.join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::write(config.join("mesh.yaml"), mesh_yaml())?;
    let ca_dir = work.join("ca");
    let strait_ca = image::staged_bin_dir().join("strait-ca");
    for (i, vm) in VMS.iter().enumerate() {
        let share = work.join(vm.name).join("share");
        std::fs::create_dir_all(&share)?;
        cmd::run(
            Command::new(&strait_ca)
                .args(["node-credential", "--node", vm.name, "--ca-dir"])
                .arg(&ca_dir)
                .arg("--out")
                .arg(share.join("credential"))
                .stdout(Stdio::null()),
        )?;
        copy_dir(&image::staged_bin_dir(), &share.join("bin"))?;
        copy_dir(&config, &share.join("config"))?;
        std::fs::copy(
            root().join("vagrant/scenario.sh"),
            share.join("scenario.sh"),
        )?;
        let peer = &VMS[1 - i];
        std::fs::write(
            share.join("vm.env"),
            format!(
                "NAME={}\nADDR={}\nPEER={}\nPOD_IP={}\nPOD_GW={}\nPEER_POD_IP={}\nPEER_POD_NET={}/24\nROLE={}\nCA_ADDR={CA_ADDR}\nRUN_CA={}\n",
                vm.name,
                vm.addr,
                peer.addr,
                vm.pod,
                vm.gateway,
                peer.pod,
                peer.gateway.trim_end_matches(".1").to_owned() + ".0",
                vm.role,
                u8::from(i == 0),
            ),
        )?;
    }
    copy_dir(&ca_dir, &work.join("vm1/share/ca"))?;

    let port = free_port()?;
    let pcap = work.join("link.pcap");
    let mut qemu = Qemu(Vec::new());
    for (i, vm) in VMS.iter().enumerate() {
        let dir = work.join(vm.name);
        let disk = dir.join("disk.qcow2");
        cmd::run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(cache.join("box.img"))
                .arg(&disk),
        )?;
        let mut q = Command::new("qemu-system-x86_64");
        q.args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "1024"])
            .args(["-display", "none", "-no-reboot", "-kernel"])
            .arg(cache.join("vmlinuz"))
            .arg("-initrd")
            .arg(cache.join("initrd.img"))
            .args([
                "-append",
                "root=/dev/vda rw console=ttyS0 net.ifnames=0 init=/usr/local/sbin/strait-vm-init",
            ])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=share,security_model=none",
                dir.join("share").display()
            ))
            .arg("-netdev")
            .arg(if i == 0 {
                format!("socket,id=n0,listen=127.0.0.1:{port}")
            } else {
                format!("socket,id=n0,connect=127.0.0.1:{port}")
            })
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:0{}",
                i + 1
            ))
            .arg("-serial")
            .arg(format!("file:{}", dir.join("console.log").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.log"))?);
        if i == 0 {
            q.arg("-object").arg(format!(
                "filter-dump,id=dump,netdev=n0,file={}",
                pcap.display()
            ));
        }
        eprintln!("{}: booting ({} {})", vm.name, vm.role, vm.addr);
        qemu.0
            .push(q.spawn().context("starting qemu-system-x86_64")?);
        if i == 0 {
            // The second VM connects to the first one's socket.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let booted = Instant::now();
    let console = work.join("vm1/console.log");
    let mut seen = 0;
    loop {
        seen = print_new(&console, seen)?;
        if let Some(status) = qemu.0[0].try_wait()? {
            seen = print_new(&console, seen)?;
            let _ = seen;
            eprintln!(
                "vm1 powered off ({status}) {:.0} s after boot",
                booted.elapsed().as_secs_f64()
            );
            break;
        }
        if booted.elapsed() > LIMIT {
            bail!("the scenario did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(qemu);
    let server = std::fs::read_to_string(work.join("vm2/console.log")).unwrap_or_default();
    for line in server.lines().filter(|l| l.contains("strait-vm")) {
        println!("{line}");
    }
    let client = std::fs::read_to_string(&console)?;
    if !client.contains("served by vm2") {
        bail!(
            "the client VM's curl did not reach the server VM's pod:\n{client}\n--- vm2 ---\n{server}"
        );
    }
    let capture = Pcap::read(&pcap)?;
    let ports = capture.tcp_ports();
    println!(
        "capture of the link between the VMs: {} packets, TCP ports {ports:?}, {} TLS handshakes, plaintext {}",
        capture.len(),
        capture.tls_handshakes(),
        if capture.contains(b"served by") {
            "SEEN"
        } else {
            "absent"
        }
    );
    if !ports.contains(&15008) || ports.contains(&8080) || capture.contains(b"served by") {
        bail!("the link carried more than mTLS on 15008: ports {ports:?}");
    }
    Ok(())
}

/// Prints the lines of `path` after the first `seen` bytes that the
/// scenario marked; returns how far it read.
fn print_new(path: &Path, seen: u64) -> Result<u64> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(seen);
    };
    file.seek(std::io::SeekFrom::Start(seen))?;
    let mut read = seen;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        read += line.len() as u64 + 1;
        let text = String::from_utf8_lossy(&line);
        if text.contains("strait-vm") {
            println!("{}", text.trim_end());
        }
    }
    Ok(read)
}

fn mesh_yaml() -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    istio.io/dataplane-mode: ambient\n---\n",
    );
    for (vm, name) in VMS.iter().zip(["client", "server"]) {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels:\n    topology.kubernetes.io/region: lab\n    topology.kubernetes.io/zone: lab-{node}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\n  namespace: demo\n  annotations:\n    strait.dev/node: {node}\nspec:\n  address: {ip}\n  serviceAccount: {name}\n  labels:\n    app: {name}\n---\n",
            node = vm.name,
            ip = vm.pod,
        ));
    }
    yaml
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A loopback port nothing listens on now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

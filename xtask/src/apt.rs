//! Debian packages, judged by what setup runs from them: a package counts
//! as present only when dpkg has it installed *and* every program or file
//! setup needs from it is there. Whatever a job lacks is installed in one
//! apt transaction that may not remove anything, and checked again after.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Result, bail};

use crate::cmd::{self, stdout};

/// A Debian package and what setup runs from it.
#[derive(Debug)]
pub struct Package {
    pub name: &'static str,
    pub provides: &'static [Provides],
}

/// Something a package puts on the machine that a job uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provides {
    /// An executable found on `PATH`, as the jobs run it.
    Program(&'static str),
    /// A file at this absolute path.
    File(&'static str),
    /// A module the `python3` on `PATH` imports.
    PythonModule(&'static str),
}

impl Provides {
    fn is_there(self) -> bool {
        match self {
            Provides::Program(name) => on_path(name).is_some(),
            Provides::File(path) => Path::new(path).is_file(),
            Provides::PythonModule(module) => {
                cmd::succeeds(Command::new("python3").args(["-c", &format!("import {module}")]))
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Provides::Program(name) | Provides::File(name) | Provides::PythonModule(name) => name,
        }
    }
}

pub const fn package(name: &'static str, provides: &'static [Provides]) -> Package {
    Package { name, provides }
}

/// What apt has to do for every wanted package to be present.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Not installed at all.
    pub install: Vec<&'static str>,
    /// Installed by dpkg's record, yet missing these programs or files.
    pub reinstall: Vec<(&'static str, Vec<&'static str>)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.reinstall.is_empty()
    }

    fn names(&self) -> Vec<&'static str> {
        self.install
            .iter()
            .copied()
            .chain(self.reinstall.iter().map(|(name, _)| *name))
            .collect()
    }
}

/// The decision, apart from the machine: `installed` is dpkg's record,
/// `there` whether a program or file is on the machine. Packages named
/// twice count once.
pub fn plan(
    wanted: &[&Package],
    installed: impl Fn(&str) -> bool,
    there: impl Fn(Provides) -> bool,
) -> Plan {
    let mut plan = Plan::default();
    let mut seen = Vec::new();
    for package in wanted {
        if seen.contains(&package.name) {
            continue;
        }
        seen.push(package.name);
        if !installed(package.name) {
            plan.install.push(package.name);
            continue;
        }
        let missing: Vec<&'static str> = package
            .provides
            .iter()
            .filter(|p| !there(**p))
            .map(|p| p.name())
            .collect();
        if !missing.is_empty() {
            plan.reinstall.push((package.name, missing));
        }
    }
    plan
}

/// Installs what `wanted` lacks, in one transaction, then checks all of
/// `wanted` again.
pub fn ensure(wanted: &[&Package]) -> Result<()> {
    let todo = plan(wanted, is_installed, Provides::is_there);
    let programs: usize = wanted.iter().map(|p| p.provides.len()).sum();
    if todo.is_empty() {
        eprintln!(
            "apt: all {} packages present, with the {programs} programs and files used from them",
            wanted.len()
        );
        return Ok(());
    }
    let mut what = Vec::new();
    if !todo.install.is_empty() {
        what.push(format!(
            "installing {} package(s) and their dependencies: {}",
            todo.install.len(),
            todo.install.join(" ")
        ));
    }
    for (name, missing) in &todo.reinstall {
        what.push(format!(
            "reinstalling {name} (installed, but {} missing)",
            missing.join(" and ")
        ));
    }
    eprintln!("apt: {} (about a minute)", what.join("; "));
    let started = Instant::now();
    cmd::run_logged(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-update",
    )?;
    let transaction = transaction(wanted, &todo)?;
    cmd::run_logged(&mut transaction.command(false), "apt-install")?;
    crate::cmd::took("apt", started.elapsed());

    let after = plan(wanted, is_installed, Provides::is_there);
    if !after.is_empty() {
        bail!(
            "apt finished, but {} still missing",
            describe_missing(&after)
        );
    }
    Ok(())
}

/// `qemu-img (from qemu-utils) is` / `a, b (from x) are`.
fn describe_missing(plan: &Plan) -> String {
    let mut parts: Vec<String> = plan
        .install
        .iter()
        .map(|name| format!("the package {name}"))
        .collect();
    parts.extend(
        plan.reinstall
            .iter()
            .map(|(name, missing)| format!("{} (from {name})", missing.join(", "))),
    );
    let one = parts.len() == 1 && plan.reinstall.first().is_none_or(|(_, m)| m.len() == 1);
    format!("{} {}", parts.join(", "), if one { "is" } else { "are" })
}

/// One `apt-get install` that may not remove anything.
struct Transaction {
    names: Vec<String>,
    reinstall: bool,
    downgrade: bool,
}

impl Transaction {
    fn command(&self, simulate: bool) -> Command {
        let mut apt = Command::new("apt-get");
        apt.args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "--no-remove",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive");
        if simulate {
            apt.arg("--simulate");
        }
        if self.reinstall {
            apt.arg("--reinstall");
        }
        if self.downgrade {
            apt.arg("--allow-downgrades");
        }
        apt.args(&self.names);
        apt
    }

    /// Installs each of `replaced` at its archive's version, whatever is
    /// installed now.
    fn pin(&mut self, replaced: &[(&str, Foreign, String)]) {
        for (name, f, _) in replaced {
            let pinned = format!("{name}={}", f.archive);
            if !self.names.contains(&pinned) {
                self.names.push(pinned);
            }
            self.downgrade = true;
        }
    }

    /// apt's complaint when it would not go through, else `None`.
    fn refused(&self) -> Result<Option<String>> {
        let out = self.command(true).output()?;
        if out.status.success() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        Ok(Some(apt_complaint(&text)))
    }
}

/// The transaction for `todo`. A wanted package installed at a version no
/// configured archive carries (a backport installed by hand, say) can
/// block it: Debian's qemu-system-x86 cannot be installed beside
/// bookworm-backports' qemu-utils, and apt's own answer is to remove
/// qemu-utils. Setup never lets apt remove anything; instead such a package
/// is brought to its archive's version in the same transaction. Anything
/// else apt would remove stops setup, named.
fn transaction(wanted: &[&Package], todo: &Plan) -> Result<Transaction> {
    let planned = todo.names().join(" ");
    let mut transaction = Transaction {
        names: todo.install.iter().map(|n| (*n).to_owned()).collect(),
        reinstall: false,
        downgrade: false,
    };
    // (package, its versions, why it moves to its archive's version)
    let mut replaced: Vec<(&'static str, Foreign, String)> = Vec::new();
    for (name, _) in &todo.reinstall {
        // What no archive carries cannot be downloaded again.
        match foreign(name) {
            Some(f) => replaced.push((name, f, "cannot be downloaded again".to_owned())),
            None => {
                transaction.names.push((*name).to_owned());
                transaction.reinstall = true;
            }
        }
    }
    transaction.pin(&replaced);
    if transaction.refused()?.is_some() {
        // What apt would remove, were it allowed to (simulated only).
        let mut removing = transaction.command(true);
        removing.args(["-o", "APT::Get::Remove=true"]);
        let out = removing.output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("apt cannot install {planned}: {}", apt_complaint(&text));
        }
        let mut kept = Vec::new();
        for name in removals(&text) {
            let ours = wanted.iter().find(|p| p.name == name);
            match (ours, foreign(&name)) {
                (Some(package), Some(f)) => replaced.push((
                    package.name,
                    f,
                    format!("apt would remove it to install {planned}"),
                )),
                _ => kept.push(name),
            }
        }
        if !kept.is_empty() {
            bail!(
                "apt would remove {} to install {planned}, and setup removes nothing: install them by hand, or remove {} yourself",
                kept.join(" "),
                if kept.len() == 1 { "it" } else { "them" }
            );
        }
        transaction.pin(&replaced);
        if let Some(still) = transaction.refused()? {
            bail!(
                "apt cannot install {planned} without removing installed packages, even with {} at its archive's version: {still}",
                replaced
                    .iter()
                    .map(|(name, _, _)| *name)
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
        }
    }
    for (name, f, why) in &replaced {
        eprintln!(
            "apt: {name} {} is from no configured archive and {why}; the archive's {} takes its place",
            f.installed, f.archive
        );
    }
    Ok(transaction)
}

fn foreign(package: &str) -> Option<Foreign> {
    foreign_version(&stdout(Command::new("apt-cache").args(["policy", package])))
}

/// The packages a simulated transaction removes: `Remv NAME [VERSION]`.
fn removals(simulated: &str) -> Vec<String> {
    simulated
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The lines of apt's output that say why it refused.
fn apt_complaint(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("E:")
                || [" Breaks: ", " Depends: ", " Conflicts: "]
                    .iter()
                    .any(|k| l.contains(k))
        })
        .collect();
    if lines.is_empty() {
        output.trim().to_owned()
    } else {
        lines.join("; ")
    }
}

/// An installed version that only dpkg's status file knows of.
#[derive(Debug, PartialEq, Eq)]
struct Foreign {
    installed: String,
    /// The newest version a configured archive offers.
    archive: String,
}

/// Reads `apt-cache policy PACKAGE`:
///
/// ```text
///   Version table:
///  *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100
///         100 /var/lib/dpkg/status
///      1:7.2+dfsg-7+deb12u18+b2 500
///         500 http://deb.debian.org/debian bookworm/main amd64 Packages
/// ```
fn foreign_version(policy: &str) -> Option<Foreign> {
    // (version, installed, its sources)
    let mut table: Vec<(&str, bool, Vec<&str>)> = Vec::new();
    let mut lines = policy.lines().skip_while(|l| !l.contains("Version table:"));
    lines.next();
    for line in lines {
        let (installed, rest) = match line.trim_start().strip_prefix("***") {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line.trim_start()),
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let is_version = words.len() == 2 && words[1].bytes().all(|b| b.is_ascii_digit());
        if is_version {
            table.push((words[0], installed, Vec::new()));
        } else if let (Some(last), Some(source)) = (table.last_mut(), words.get(1)) {
            last.2.push(source);
        }
    }
    let is_archive = |sources: &Vec<&str>| sources.iter().any(|s| *s != "/var/lib/dpkg/status");
    let (installed, _, sources) = table.iter().find(|(_, installed, _)| *installed)?;
    if is_archive(sources) {
        return None;
    }
    let (archive, _, _) = table.iter().find(|(_, _, s)| is_archive(s))?;
    Some(Foreign {
        installed: (*installed).to_owned(),
        archive: (*archive).to_owned(),
    })
}

fn is_installed(package: &str) -> bool {
    stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .contains("install ok installed")
}

/// Where `PATH` finds `program`, as a job running it by name would.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_UTILS: Package = package("qemu-utils", &[Provides::Program("qemu-img")]);
    const QEMU_X86: Package = package(
        "qemu-system-x86",
        &[Provides::Program("qemu-system-x86_64")],
    );
    const DEBOOTSTRAP: Package = package("debootstrap", &[Provides::Program("debootstrap")]);

    #[test]
    fn a_package_whose_program_is_gone_is_installed_again() {
        // dpkg records all three; qemu-img was deleted, or apt took it.
        let plan = plan(
            &[&DEBOOTSTRAP, &QEMU_X86, &QEMU_UTILS],
            |_| true,
            |p| p != Provides::Program("qemu-img"),
        );
        assert_eq!(
            plan,
            Plan {
                install: vec![],
                reinstall: vec![("qemu-utils", vec!["qemu-img"])],
            }
        );
        assert_eq!(describe_missing(&plan), "qemu-img (from qemu-utils) is");
    }

    #[test]
    fn missing_packages_are_installed_and_present_ones_left_alone() {
        let plan = plan(
            &[&DEBOOTSTRAP, &QEMU_X86, &QEMU_UTILS, &QEMU_UTILS],
            |name| name == "qemu-utils",
            |p| p == Provides::Program("qemu-img"),
        );
        assert_eq!(plan.install, ["debootstrap", "qemu-system-x86"]);
        assert!(plan.reinstall.is_empty());
        assert_eq!(plan.names(), ["debootstrap", "qemu-system-x86"]);
    }

    #[test]
    fn everything_there_means_nothing_to_do() {
        assert!(plan(&[&DEBOOTSTRAP, &QEMU_UTILS], |_| true, |_| true).is_empty());
    }

    #[test]
    fn a_program_that_is_there_without_its_package_is_still_installed() {
        // The package list is what apt can put right; a stray binary is not.
        let plan = plan(&[&QEMU_UTILS], |_| false, |_| true);
        assert_eq!(plan.install, ["qemu-utils"]);
    }

    #[test]
    fn a_backport_installed_by_hand_is_foreign() {
        let policy = "qemu-utils:
  Installed: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Candidate: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Version table:
 *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100
        100 /var/lib/dpkg/status
     1:7.2+dfsg-7+deb12u18+b2 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
     1:7.2+dfsg-7+deb12u15 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
";
        assert_eq!(
            foreign_version(policy),
            Some(Foreign {
                installed: "1:10.0.2+ds-2+deb13u1~bpo12+1".into(),
                archive: "1:7.2+dfsg-7+deb12u18+b2".into(),
            })
        );
    }

    #[test]
    fn an_archive_version_is_not_foreign() {
        let policy = "qemu-utils:
  Installed: 1:7.2+dfsg-7+deb12u18+b2
  Candidate: 1:7.2+dfsg-7+deb12u18+b2
  Version table:
 *** 1:7.2+dfsg-7+deb12u18+b2 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
     1:7.2+dfsg-7+deb12u15 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
";
        assert_eq!(foreign_version(policy), None);
        assert_eq!(foreign_version(""), None);
    }

    #[test]
    fn removals_are_read_from_a_simulation() {
        let out = "Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b2 Debian:12.14/oldstable [amd64])
Conf qemu-system-common (1:7.2+dfsg-7+deb12u18+b2 Debian:12.14/oldstable [amd64])
";
        assert_eq!(removals(out), ["qemu-utils"]);
        assert!(removals("Inst a (1 x)\n").is_empty());
    }

    #[test]
    fn apt_refusals_are_told_in_its_own_words() {
        let out = "Reading package lists...
The following packages have unmet dependencies:
 qemu-utils : Breaks: qemu-system-common (< 1:8.0+dfsg-5~) but 1:7.2+dfsg-7+deb12u18+b2 is to be installed
E: Unable to correct problems, you have held broken packages.
";
        assert_eq!(
            apt_complaint(out),
            "qemu-utils : Breaks: qemu-system-common (< 1:8.0+dfsg-5~) but 1:7.2+dfsg-7+deb12u18+b2 is to be installed; E: Unable to correct problems, you have held broken packages."
        );
    }
}

//! Builds a small topology, starts a process in a pod, reports what it made
//! on stdout, waits for a line on stdin, then dies the way it is told:
//!
//! - `panic`: a panic, as a failed assertion would (unwinding runs drops);
//! - `abort`: an abort, as a crash or SIGKILL would (nothing runs).
//!
//! The cleanup tests run it and check what is left.
use strait_topology::{Locality, Spec, Topology};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let spec = Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("p1", "n1");
    let topo = match Topology::create(spec) {
        Ok(topo) => topo,
        Err(err) => {
            eprintln!("creating the topology: {err}");
            std::process::exit(2);
        }
    };
    let sleeper = match topo.pod("p1").and_then(|p| p.spawn(&["sleep", "300"])) {
        Ok(p) => p,
        Err(err) => {
            eprintln!("starting a process in the pod: {err}");
            std::process::exit(2);
        }
    };
    println!("run {}", topo.run_id().name());
    println!("pid {}", sleeper.pid());
    let pins = topo
        .node("n1")
        .map(|n| n.pin_dir.clone())
        .unwrap_or_default();
    println!("pins {}", pins.display());
    println!("ready");
    // The parent says when: it may want to hold sweeps off first.
    let mut go = String::new();
    let _ = std::io::stdin().read_line(&mut go);
    match mode.as_str() {
        "panic" => panic!("deliberate panic while holding a topology"),
        "abort" => std::process::abort(),
        other => {
            eprintln!("usage: topology-crash-child panic|abort (got {other:?})");
            std::process::exit(2);
        }
    }
}

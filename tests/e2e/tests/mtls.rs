//! Transparent mutual TLS: unmodified programs in enrolled pods talk across
//! nodes, and every byte between the nodes is TLS under the pods' SPIFFE
//! identities.
use std::net::IpAddr;

use strait_e2e::{
    Mesh, Result, curl, http_server, iperf_reverse, marker_url, namespace_yaml, require_root,
    workload_yaml,
};
use strait_topology::{Locality, Process, Spec, Topology};

const MARKER: &str = "secret-payload-7f3a";

/// Pod `a` on n1 and pod `b` on n2, both in the mesh, agents running.
fn mesh_of_two(topo: &Topology) -> Result<(Mesh<'_>, [Process; 2])> {
    let mesh = Mesh::new(topo)?;
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("frontend", true),
            namespace_yaml("backend", true),
            workload_yaml(topo.pod("a")?, "frontend", "web", &[]),
            workload_yaml(topo.pod("b")?, "backend", "db", &[]),
        ]
        .concat(),
    )?;
    let agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    Ok((mesh, agents))
}

fn two_nodes() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
        .pod("a", "n1")
        .pod("b", "n2")
}

#[test]
fn curl_to_http_server_across_nodes_is_mutual_tls() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes())?;
    let (_mesh, _agents) = mesh_of_two(&topo)?;
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    let server = http_server(b, 8080, MARKER)?;

    let capture = topo.node("n1")?.capture("eth0", &["tcp"])?;
    for ip in [IpAddr::V4(b.ipv4), IpAddr::V6(b.ipv6)] {
        let out = curl(a, &marker_url(ip, 8080))?;
        assert!(
            out.status.success(),
            "a -> b {ip}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), MARKER);
    }
    let pcap = capture.finish()?;
    assert!(!pcap.is_empty(), "nothing captured between the nodes");
    assert!(
        pcap.tls_handshakes() >= 1,
        "no TLS handshake on the wire ({} packets)",
        pcap.len()
    );
    assert!(
        !pcap.contains(b"GET /marker"),
        "the HTTP request crossed the wire in the clear"
    );
    assert!(
        !pcap.contains(MARKER.as_bytes()),
        "the response crossed the wire in the clear"
    );
    assert!(
        pcap.tcp_ports().contains(&15008),
        "no traffic to HBONE port 15008: {:?}",
        pcap.tcp_ports()
    );
    assert!(
        !pcap.tcp_ports().contains(&8080),
        "port 8080 seen on the wire: {:?}",
        pcap.tcp_ports()
    );

    // The server saw pod a's own addresses as the client.
    let log = server.log();
    assert!(
        log.contains(&format!("{} - -", a.ipv4)),
        "server log lacks {}:\n{log}",
        a.ipv4
    );
    assert!(
        log.contains(&format!("{} - -", a.ipv6)),
        "server log lacks {}:\n{log}",
        a.ipv6
    );
    Ok(())
}

#[test]
fn iperf3_moves_a_gibibyte_and_both_ends_agree() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes())?;
    let (_mesh, _agents) = mesh_of_two(&topo)?;
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    let (sent, received) = iperf_reverse(a, b, b.ipv4.into(), &["-n", "1G"])?;
    assert!(
        sent >= 1 << 30,
        "b sent {sent} bytes, wanted at least 1 GiB"
    );
    assert_eq!(sent, received, "the ends disagree on the byte count");
    Ok(())
}

/// A server that, for each connection, sends `partial` and then resets it
/// (SO_LINGER 0), or (`watch`) reads until the client's end and prints
/// `reset` or `eof` for how it ended.
const RESET_SERVER: &str = r#"
import socket, struct, sys
mode, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(16)
print("listening", flush=True)
for _ in range(5):
    conn, _ = srv.accept()
    if mode == "reset":
        conn.sendall(b"partial")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    else:
        conn.settimeout(10)
        try:
            while conn.recv(4096):
                pass
            print("eof", flush=True)
        except ConnectionResetError:
            print("reset", flush=True)
        except OSError as e:
            print("error", e, flush=True)
        conn.close()
"#;

/// The client side: `read` reads until the end and prints `reset` or
/// `eof:<bytes>`; `reset` sends a line, then resets the connection.
const RESET_CLIENT: &str = r#"
import socket, struct, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.create_connection((host, port), timeout=10)
if mode == "read":
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        print("eof:" + data.decode(), flush=True)
    except ConnectionResetError:
        print("reset", flush=True)
else:
    s.sendall(b"hello\n")
    time.sleep(0.3)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    print("sent reset", flush=True)
"#;

/// A reset on one side reaches the other side as a reset, both ways: a cut
/// stream never passes for a complete one.
#[test]
fn a_reset_on_either_side_is_a_reset_on_the_other() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes())?;
    let (_mesh, _agents) = mesh_of_two(&topo)?;
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    let b_ip = b.ipv4.to_string();

    // The server resets after a partial answer: the client sees a reset.
    let mut server = b.spawn(&["python3", "-c", RESET_SERVER, "reset", "9000"])?;
    server.wait_listening(9000, std::time::Duration::from_secs(10))?;
    for _ in 0..3 {
        let out = a.run_ok(
            &["python3", "-c", RESET_CLIENT, "read", &b_ip, "9000"],
            std::time::Duration::from_secs(20),
        )?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("client after the server's reset: {said}");
        assert_eq!(
            said, "reset",
            "the server's reset reached the client as {said:?}"
        );
    }

    // The client resets: the server sees a reset.
    let mut watcher = b.spawn(&["python3", "-c", RESET_SERVER, "watch", "9001"])?;
    watcher.wait_listening(9001, std::time::Duration::from_secs(10))?;
    for _ in 0..3 {
        a.run_ok(
            &["python3", "-c", RESET_CLIENT, "reset", &b_ip, "9001"],
            std::time::Duration::from_secs(20),
        )?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let ended = |log: &str| log.lines().filter(|l| *l != "listening").count();
    while ended(&watcher.log()) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = watcher.log();
    println!("server after the clients' resets:\n{log}");
    assert_eq!(
        log.lines().filter(|l| *l == "reset").count(),
        3,
        "the clients' resets reached the server otherwise:\n{log}"
    );
    let _ = (server.kill(), watcher.kill());
    Ok(())
}

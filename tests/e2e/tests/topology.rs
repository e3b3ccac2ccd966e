//! The topology library builds what it promises: pods reach pods across the
//! nodes of one network, networks are isolated from each other except through
//! their gateways' internet segment, and nothing is left after drop.
use std::{collections::BTreeSet, net::IpAddr, process::Command};

use strait_e2e::{Result, curl, http_server, marker_url, require_root, two_networks};
use strait_topology::Topology;

/// Interface names in the host's own network namespace.
fn host_links() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect()
}

#[test]
fn two_networks_route_inside_and_not_across() -> Result<()> {
    require_root();
    let links_before = host_links();
    let topo = Topology::create(two_networks())?;
    let resources = topo.resources();
    assert_eq!(
        resources.netns.len(),
        2 + 1 + 4 + 8,
        "2 networks, internet, 4 nodes, 8 pods: {:?}",
        resources.netns
    );
    assert_eq!(
        host_links(),
        links_before,
        "a topology must not add links to the host namespace"
    );

    // A server in pod a2x (node a2); clients elsewhere.
    let server_pod = topo.pod("a2x")?;
    let server = http_server(server_pod, 8080, "hello from a2x")?;

    // Across nodes of one network, over IPv4 and IPv6: a real TCP exchange.
    let client = topo.pod("a1x")?;
    for ip in [IpAddr::V4(server_pod.ipv4), IpAddr::V6(server_pod.ipv6)] {
        let out = curl(client, &marker_url(ip, 8080))?;
        assert!(
            out.status.success(),
            "a1x -> a2x {ip}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from a2x");
    }
    // The server saw the client's own addresses: no NAT on the way.
    let log = server.log();
    assert!(
        log.contains(&client.ipv4.to_string()),
        "server log lacks {}: {log}",
        client.ipv4
    );
    assert!(
        log.contains(&client.ipv6.to_string()),
        "server log lacks {}: {log}",
        client.ipv6
    );

    // Across networks: pods of net2, gateway node's pods included, get nowhere.
    for from in ["b1x", "b2y"] {
        for ip in [IpAddr::V4(server_pod.ipv4), IpAddr::V6(server_pod.ipv6)] {
            let out = curl(topo.pod(from)?, &marker_url(ip, 8080))?;
            assert!(
                !out.status.success(),
                "{from} reached a2x at {ip} across networks"
            );
        }
    }
    let log_after = server.log();
    assert_eq!(
        log_after.lines().count(),
        log.lines().count(),
        "the server saw cross-network requests:\n{log_after}"
    );

    // Gateways meet on the internet segment.
    let (b1_inet4, b1_inet6) = topo.node("b1")?.addrs.internet.expect("b1 is a gateway");
    let gateway_server = http_server(topo.node("b1")?, 9090, "hello from gateway b1")?;
    for ip in [IpAddr::V4(b1_inet4), IpAddr::V6(b1_inet6)] {
        let out = curl(topo.node("a1")?, &marker_url(ip, 9090))?;
        assert!(
            out.status.success(),
            "gateway a1 -> gateway b1 {ip}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from gateway b1"
        );
        // Everyone else gets there through their network's edge, which
        // hides their addresses (a cloud's NAT): replies come back.
        for place in [&topo.node("a2")?.place, &topo.pod("a1x")?.place] {
            let out = curl(place, &marker_url(ip, 9090))?;
            assert!(
                out.status.success(),
                "{ip} through net1's edge: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let log = gateway_server.log();
    for hidden in ["172.16.", "10.1.", "fd00:172:", "fd00:10:"] {
        assert!(
            !log.contains(hidden),
            "an inside address ({hidden}) reached the segment:\n{log}"
        );
    }
    drop(gateway_server);
    drop(server);

    drop(topo);
    let left = resources.remaining();
    assert!(left.is_empty(), "left after drop: {left:?}");
    assert_eq!(
        host_links(),
        links_before,
        "links left in the host namespace"
    );
    Ok(())
}

#[test]
fn cutting_a_node_isolates_it_until_restored() -> Result<()> {
    require_root();
    let topo = Topology::create(two_networks())?;
    let server_pod = topo.pod("a2x")?;
    let _server = http_server(server_pod, 8080, "up")?;
    let url = marker_url(IpAddr::V4(server_pod.ipv4), 8080);
    let client = topo.pod("a1x")?;

    assert!(curl(client, &url)?.status.success(), "before the cut");
    topo.cut_node("a2")?;
    assert!(
        !curl(client, &url)?.status.success(),
        "a2 answered while cut off"
    );
    // The pods of the cut node still reach each other.
    let out = curl(topo.pod("a2y")?, &url)?;
    assert!(
        out.status.success(),
        "same-node traffic during the cut: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    topo.restore_node("a2")?;
    assert!(curl(client, &url)?.status.success(), "after restore");

    // Cutting a network takes its gateway off the internet segment.
    let (b1_inet, _) = topo.node("b1")?.addrs.internet.expect("b1 is a gateway");
    let _gw = http_server(topo.node("b1")?, 9090, "gw")?;
    let gw_url = marker_url(IpAddr::V4(b1_inet), 9090);
    assert!(curl(topo.node("a1")?, &gw_url)?.status.success());
    topo.cut_network("net2")?;
    assert!(
        !curl(topo.node("a1")?, &gw_url)?.status.success(),
        "net2 reachable while cut"
    );
    topo.restore_network("net2")?;
    assert!(
        curl(topo.node("a1")?, &gw_url)?.status.success(),
        "net2 after restore"
    );

    let resources = topo.resources();
    topo.destroy()?;
    assert!(
        resources.remaining().is_empty(),
        "{:?}",
        resources.remaining()
    );
    Ok(())
}

#[test]
fn bad_specs_fail_before_touching_the_host() {
    require_root();
    let err = Topology::create(two_networks().pod("a1x", "b1"))
        .err()
        .expect("duplicate pod accepted");
    assert!(
        err.to_string().contains("pod a1x is declared twice"),
        "{err}"
    );
}

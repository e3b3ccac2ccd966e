//! DestinationRule and PeerAuthentication fields that act at L4:
//! `connectionPool.tcp.maxConnections` refuses connections past the limit
//! (Envoy's overflow), and PeerAuthentication `DISABLE` makes clients talk
//! to that workload in plaintext.
use std::{net::IpAddr, time::Duration};

use strait_e2e::{
    Mesh, Result, curl, echo_client, echo_server, http_server, marker_url, metric_sum,
    namespace_yaml, require_root, two_nodes, wait_for_line, workload_yaml,
};
use strait_topology::Topology;

const MARKER: &str = "disable-marker-91d0";

#[test]
fn max_connections_refuses_the_overflow_and_disable_speaks_plaintext() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes(&[("web", "n1"), ("api", "n2"), ("plain", "n2")]))?;
    let mesh = Mesh::new(&topo)?;
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("shop", true),
            workload_yaml(topo.pod("web")?, "shop", "web", &[]),
            workload_yaml(topo.pod("api")?, "shop", "api", &[("service", "api")]),
            workload_yaml(topo.pod("plain")?, "shop", "plain", &[("mtls", "off")]),
            "apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
spec:
  clusterIP: 10.96.0.70
  selector:
    service: api
  ports:
  - port: 9000
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: api
  namespace: shop
spec:
  host: api.shop.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 2
        connectTimeout: 500ms
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: plain
  namespace: shop
spec:
  selector:
    matchLabels:
      mtls: \"off\"
  mtls:
    mode: DISABLE
---
"
            .to_string(),
        ]
        .concat(),
    )?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let (web, api, plain) = (topo.pod("web")?, topo.pod("api")?, topo.pod("plain")?);
    let _echo = echo_server(api, 9000)?;
    let vip: IpAddr = "10.96.0.70".parse()?;

    // Two connections are the pool; the third overflows and is refused.
    let mut first = echo_client(&web.place, vip, 9000, 30)?;
    let mut second = echo_client(&web.place, vip, 9000, 30)?;
    wait_for_line(&mut first, "connected", Duration::from_secs(10))?;
    wait_for_line(&mut second, "connected", Duration::from_secs(10))?;
    let mut third = echo_client(&web.place, vip, 9000, 1)?;
    let status = third
        .wait_timeout(Duration::from_secs(15))?
        .ok_or("the third connection hung")?;
    println!("third connection: {status}: {}", third.log().trim());
    assert!(
        !status.success(),
        "a third connection got through a pool of 2"
    );
    let overflow = metric_sum(
        &mesh.metrics("n1")?,
        "strait_connection_failures_total",
        &["reason=\"overflow\""],
    );
    assert_eq!(overflow, 1);
    // Once one of the two ends, there is room again.
    first.kill()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = echo_client(&web.place, vip, 9000, 1)?;
        let ok = again
            .wait_timeout(Duration::from_secs(15))?
            .is_some_and(|s| s.success());
        if ok {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err("no room in the pool after a connection ended".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    second.kill()?;

    // DISABLE: web talks to `plain` in plaintext (the workload asked for
    // it), while `api` still gets mTLS.
    let _plain_http = http_server(plain, 8080, MARKER)?;
    let capture = topo.node("n1")?.capture("eth0", &["tcp"])?;
    let out = curl(web, &marker_url(IpAddr::V4(plain.ipv4), 8080))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pcap = capture.finish()?;
    assert!(
        pcap.contains(MARKER.as_bytes()) && pcap.tcp_ports().contains(&8080),
        "DISABLE did not turn mTLS off: ports {:?}",
        pcap.tcp_ports()
    );
    let metrics = mesh.metrics("n2")?;
    assert!(
        metric_sum(
            &metrics,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "destination_workload=\"plain\"",
                "connection_security_policy=\"unknown\""
            ]
        ) >= 1,
        "{metrics}"
    );
    Ok(())
}

//! L4 AuthorizationPolicy at the destination's agent, and hot reload of
//! the config directory: policies take effect and go away within a second,
//! connections already open are left alone, and a broken edit changes
//! nothing.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use strait_e2e::{
    Mesh, Result, curl, echo_client, echo_server, http_server, marker_url, metric_sum,
    namespace_yaml, require_root, wait_for_line, workload_yaml,
};
use strait_topology::{Locality, Pod, Process, Spec, Topology};

const MARKER: &str = "authz-marker-51c2";

const ALLOW_WEB: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: web-only
  namespace: backend
spec:
  selector:
    matchLabels:
      app: api
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/frontend/sa/web\"]
";

const DENY_WEB_8080: &str = "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: no-web-on-8080
  namespace: backend
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: [\"frontend\"]
        notPrincipals: [\"*/sa/other\"]
    to:
    - operation:
        ports: [\"8080\"]
";

/// `web` and `other` (namespace frontend) on n1; `api` (backend) on n2
/// serving HTTP on 8080 and echo on 9000.
fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z2", ""))
        .pod("web", "n1")
        .pod("other", "n1")
        .pod("api", "n2")
}

struct Setup<'t> {
    mesh: Mesh<'t>,
    _agents: [Process; 2],
    _servers: [Process; 2],
}

fn setup(topo: &Topology) -> Result<Setup<'_>> {
    let mesh = Mesh::new(topo)?;
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("frontend", true),
            namespace_yaml("backend", true),
            workload_yaml(topo.pod("web")?, "frontend", "web", &[]),
            workload_yaml(topo.pod("other")?, "frontend", "other", &[]),
            workload_yaml(topo.pod("api")?, "backend", "api", &[]),
        ]
        .concat(),
    )?;
    let agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let api = topo.pod("api")?;
    let servers = [http_server(api, 8080, MARKER)?, echo_server(api, 9000)?];
    Ok(Setup {
        mesh,
        _agents: agents,
        _servers: servers,
    })
}

fn reaches(client: &Pod, server: &Pod) -> Result<bool> {
    let out = curl(client, &marker_url(IpAddr::V4(server.ipv4), 8080))?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout) == MARKER)
}

/// Polls until `client` reaching `server` is `want`; the time it took.
fn until_reach(client: &Pod, server: &Pod, want: bool) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if reaches(client, server)? == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "{} -> {}: still {} after 5 s",
                client.name,
                server.name,
                if want { "refused" } else { "allowed" }
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn allow_admits_its_principal_deny_wins_and_deleting_restores_access() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let s = setup(&topo)?;
    let (web, other, api) = (topo.pod("web")?, topo.pod("other")?, topo.pod("api")?);
    assert!(reaches(web, api)?, "web -> api without policy");
    assert!(reaches(other, api)?, "other -> api without policy");

    s.mesh.write("policy-allow.yaml", ALLOW_WEB)?;
    let took = until_reach(other, api, false)?;
    println!("ALLOW web-only in force after {took:?}");
    assert!(reaches(web, api)?, "web is the allowed principal");
    assert!(!reaches(other, api)?, "other is not allowed");
    let denied = metric_sum(
        &s.mesh.metrics("n2")?,
        "strait_connection_failures_total",
        &["reason=\"denied\""],
    );
    assert!(denied >= 1, "no denial counted on n2");

    s.mesh.write("policy-deny.yaml", DENY_WEB_8080)?;
    let took = until_reach(web, api, false)?;
    println!("DENY over ALLOW in force after {took:?}");

    // A long-lived connection allowed under the current rules (port 9000
    // is outside the DENY), then the policies go away under it.
    let mut long = echo_client(&web.place, IpAddr::V4(api.ipv4), 9000, 3)?;
    wait_for_line(&mut long, "connected", Duration::from_secs(10))?;
    let removed = Instant::now();
    std::fs::remove_file(s.mesh.config_dir.join("policy-deny.yaml"))?;
    std::fs::remove_file(s.mesh.config_dir.join("policy-allow.yaml"))?;
    until_reach(other, api, true)?;
    println!("access restored after {:?}", removed.elapsed());
    assert!(reaches(web, api)?, "web again");

    let status = long
        .wait_timeout(Duration::from_secs(10))?
        .ok_or("the echo client did not finish")?;
    let log = long.log();
    assert!(status.success(), "the long-lived connection broke:\n{log}");
    let echoed: u32 = log
        .split_whitespace()
        .skip_while(|w| *w != "echoed")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no count in {log:?}"))?;
    println!("{echoed} lines echoed over the connection while the policies went away");
    assert!(echoed >= 1);
    Ok(())
}

#[test]
fn malformed_edit_keeps_the_last_good_config() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let s = setup(&topo)?;
    let (web, other, api) = (topo.pod("web")?, topo.pod("other")?, topo.pod("api")?);
    s.mesh.write("policy.yaml", ALLOW_WEB)?;
    until_reach(other, api, false)?;

    // A typo that would allow everyone if it were read leniently.
    let broken = ALLOW_WEB.replace("principals:", "principal:");
    s.mesh.write("policy.yaml", &broken)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let dump = loop {
        let dump = s.mesh.admin("n2", "/config_dump")?;
        if !dump["reload"]["last_error"].is_null() {
            break dump;
        }
        if Instant::now() > deadline {
            return Err("the broken edit was not noticed within 3 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = &dump["reload"]["last_error"];
    assert!(
        err["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("policy.yaml")),
        "{err}"
    );
    assert_eq!(
        err["object"], "AuthorizationPolicy backend/web-only",
        "{err}"
    );
    assert_eq!(
        err["field"], "spec.rules[0].from[0].source.principal",
        "{err}"
    );
    assert!(
        err["reason"]
            .as_str()
            .is_some_and(|r| r.contains("principals")),
        "no suggestion in {err}"
    );
    assert!(
        !reaches(other, api)?,
        "the last good policy must still hold"
    );
    assert!(reaches(web, api)?, "traffic keeps flowing");
    let metrics = s.mesh.metrics("n2")?;
    assert_eq!(
        metric_sum(&metrics, "strait_config_last_reload_success", &[]),
        0
    );
    assert!(
        metric_sum(
            &metrics,
            "strait_config_reloads_total",
            &["result=\"failure\""]
        ) >= 1
    );

    let dir = s.mesh.config_dir.display().to_string();
    let (code, out) = s.mesh.straitctl_local(&["validate", "-f", &dir])?;
    assert_eq!(code, 1, "validate must fail:\n{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("rejected"))
        .ok_or_else(|| format!("no rejected line:\n{out}"))?;
    for want in [
        "policy.yaml:",
        "AuthorizationPolicy backend/web-only",
        "spec.rules[0].from[0].source.principal",
        "did you mean `principals`",
    ] {
        assert!(line.contains(want), "{want:?} missing from {line:?}");
    }

    // Fixing it applies again.
    s.mesh.write("policy.yaml", ALLOW_WEB)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !s.mesh.admin("n2", "/config_dump")?["reload"]["last_error"].is_null() {
        if Instant::now() > deadline {
            return Err("the fixed file was not applied within 3 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric_sum(
            &s.mesh.metrics("n2")?,
            "strait_config_last_reload_success",
            &[]
        ),
        1
    );
    assert!(!reaches(other, api)?);
    Ok(())
}

/// A config Istio accepts with warnings (here a route to a subset no
/// DestinationRule defines) applies whole: the policy beside it acts, and
/// `/config_dump` lists the warning.
#[test]
fn a_config_with_warnings_applies_and_lists_them() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let s = setup(&topo)?;
    let (web, other, api) = (topo.pod("web")?, topo.pod("other")?, topo.pod("api")?);
    let route = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: api-canary
  namespace: backend
spec:
  hosts: [api]
  http:
  - route:
    - destination: {host: api, subset: canary}
";
    s.mesh
        .write("policy.yaml", &format!("{ALLOW_WEB}---\n{route}"))?;
    until_reach(other, api, false)?;
    assert!(reaches(web, api)?, "the policy beside the warning acts");
    let dump = s.mesh.admin("n2", "/config_dump")?;
    assert!(dump["reload"]["last_error"].is_null(), "{}", dump["reload"]);
    let warnings: Vec<&str> = dump["config"]["warnings"]
        .as_array()
        .ok_or("no warnings in /config_dump")?
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    let subset = warnings
        .iter()
        .find(|w| {
            w.contains(
                "VirtualService backend/api-canary: field spec.http[0].route[0].destination.subset",
            )
        })
        .ok_or_else(|| format!("the subset warning is not listed: {warnings:#?}"))?;
    println!(
        "/config_dump lists {} warning(s), among them: {subset}",
        warnings.len()
    );
    assert!(subset.contains("policy.yaml:"), "{subset}");
    Ok(())
}

/// Connections `n2` counted as opened (destination side) with `labels`.
fn opened_at_n2(mesh: &Mesh<'_>, labels: &[&str]) -> Result<u64> {
    Ok(metric_sum(
        &mesh.metrics("n2")?,
        "istio_tcp_connections_opened_total",
        &[&["reporter=\"destination\""], labels].concat(),
    ))
}

#[test]
fn pods_join_and_leave_the_mesh_without_a_restart() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let s = setup(&topo)?;
    let (web, other, api) = (topo.pod("web")?, topo.pod("other")?, topo.pod("api")?);
    let other_mtls = [
        "source_principal=\"spiffe://cluster.local/ns/frontend/sa/other\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let plaintext = ["connection_security_policy=\"unknown\""];
    let mut long = echo_client(&web.place, IpAddr::V4(api.ipv4), 9000, 4)?;

    // `other` leaves the mesh: its WorkloadEntry is gone.
    let without_other = [
        namespace_yaml("frontend", true),
        namespace_yaml("backend", true),
        workload_yaml(web, "frontend", "web", &[]),
        workload_yaml(api, "backend", "api", &[]),
    ]
    .concat();
    s.mesh.write("mesh.yaml", &without_other)?;
    let start = Instant::now();
    while s.mesh.straitctl("n1", &["workloads"])?.contains("other") {
        if start.elapsed() > Duration::from_secs(3) {
            return Err("other still enrolled after 3 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("other released after {:?}", start.elapsed());
    let before = opened_at_n2(&s.mesh, &plaintext)?;
    assert!(reaches(other, api)?, "other -> api in plaintext");
    let after = opened_at_n2(&s.mesh, &plaintext)?;
    assert!(
        after > before,
        "n2 saw no plaintext connection ({before} -> {after})"
    );

    // And joins again.
    s.mesh.write(
        "mesh.yaml",
        &[
            without_other,
            workload_yaml(other, "frontend", "other", &[]),
        ]
        .concat(),
    )?;
    let start = Instant::now();
    loop {
        let listed = s.mesh.straitctl("n1", &["workloads"])?;
        if listed
            .lines()
            .any(|l| l.contains("other") && l.contains("captured"))
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(3) {
            return Err(format!("other not enrolled after 3 s:\n{listed}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("other enrolled after {:?}", start.elapsed());
    let before = opened_at_n2(&s.mesh, &other_mtls)?;
    assert!(reaches(other, api)?, "other -> api over the mesh");
    let after = opened_at_n2(&s.mesh, &other_mtls)?;
    assert!(
        after > before,
        "no mTLS connection from other ({before} -> {after})"
    );

    let status = long
        .wait_timeout(Duration::from_secs(10))?
        .ok_or("the echo client did not finish")?;
    assert!(status.success(), "web's connection broke:\n{}", long.log());
    Ok(())
}

/// A DENY written while a connection is open closes it, as in ztunnel: a
/// policy against a principal must not spare what it already holds. A
/// connection the policy does not match goes on.
#[test]
fn a_new_deny_closes_the_open_connections_it_denies() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let s = setup(&topo)?;
    let (web, other, api) = (topo.pod("web")?, topo.pod("other")?, topo.pod("api")?);
    let mut denied = echo_client(&web.place, IpAddr::V4(api.ipv4), 9000, 20)?;
    let mut spared = echo_client(&other.place, IpAddr::V4(api.ipv4), 9000, 6)?;
    wait_for_line(&mut denied, "connected", Duration::from_secs(10))?;
    wait_for_line(&mut spared, "connected", Duration::from_secs(10))?;

    let written = Instant::now();
    s.mesh.write(
        "deny-web.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-web
  namespace: backend
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/frontend/sa/web\"]
",
    )?;
    let status = denied
        .wait_timeout(Duration::from_secs(15))?
        .ok_or("web's connection was still open 15 s after the DENY")?;
    println!(
        "web's open connection closed {:?} after the DENY was written: {}",
        written.elapsed(),
        denied.log().trim()
    );
    assert!(
        !status.success(),
        "web's connection ran to its end:\n{}",
        denied.log()
    );
    let status = spared
        .wait_timeout(Duration::from_secs(15))?
        .ok_or("the echo client did not finish")?;
    assert!(
        status.success(),
        "other's connection broke:\n{}",
        spared.log()
    );
    assert!(
        !reaches(web, api)?,
        "new connections from web are denied too"
    );
    Ok(())
}

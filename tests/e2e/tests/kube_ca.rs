//! The CA in the cluster: agents authenticate with their pods' projected
//! ServiceAccount tokens, which the CA checks by TokenReview; it signs an
//! identity only for a pod with that service account on the asking
//! agent's node. Tokens of another audience, of another service account,
//! or expired are refused, and every refusal is counted. An east-west
//! gateway's instance, a pod of its own, gets its own identity with its own
//! token and nothing else; another pod's token gets nothing. Two replicas
//! behind one address list: one is killed before the 60 s certificates'
//! rotation, and every agent still rotates and new pods still get theirs.
//! With both away, agents keep their certificates and say so.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use strait_e2e::{
    CA_PORT, Mesh, Result,
    ca::{Auth, ask_ca, sign_body},
    curl, http_server,
    kube::{AGENT_SERVICE_ACCOUNT, ApiServer, CA_AUDIENCE as AUDIENCE, GATEWAY_CRD, pod_yaml},
    marker_url, metric_sum, namespace_yaml, require_root, two_nodes, wait_for_line_prefix,
};
use strait_topology::{Place, Topology};

const WAIT: Duration = Duration::from_secs(90);

/// The generation of `node`'s certificate for `identity`, 0 if none.
fn generation(mesh: &Mesh<'_>, node: &str, identity: &str) -> Result<u64> {
    let certs = mesh.admin(node, "/certs")?;
    Ok(certs
        .as_array()
        .and_then(|all| all.iter().find(|c| c["identity"] == identity))
        .and_then(|c| c["generation"].as_u64())
        .unwrap_or(0))
}

fn wait_generation(mesh: &Mesh<'_>, node: &str, identity: &str, at_least: u64) -> Result<Duration> {
    let started = Instant::now();
    while generation(mesh, node, identity)? < at_least {
        if started.elapsed() > WAIT {
            return Err(format!(
                "{node}: {identity} not at generation {at_least}: {}",
                mesh.admin(node, "/certs")?
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(started.elapsed())
}

#[test]
fn the_ca_signs_by_token_for_pods_on_the_askers_node_and_survives_a_replica() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes(&[
        ("a", "n1"),
        ("b", "n2"),
        ("c", "n2"),
        ("d", "n1"),
        ("gw", "n1"),
    ]))?;
    let n1 = topo.node("n1")?;
    let (a, b, c, d) = (
        topo.pod("a")?,
        topo.pod("b")?,
        topo.pod("c")?,
        topo.pod("d")?,
    );
    let api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    api.apply(GATEWAY_CRD)?;
    api.apply(&format!(
        "{}{}{}",
        namespace_yaml("shop", true),
        pod_yaml(a, "shop", &a.name, &[("app", &a.name)]),
        pod_yaml(b, "shop", &b.name, &[("app", &b.name)]),
    ))?;
    let mesh = Mesh::with_cluster(&topo, api.strait_kubeconfig()?)?.with_ca(
        api.ca_kubeconfig()?,
        &[
            "--agent-service-account",
            AGENT_SERVICE_ACCOUNT,
            "--max-cert-lifetime",
            "60s",
        ],
    );

    // The agents hold the roots only, and their pods' tokens, as a
    // DaemonSet would mount them.
    let scratch = topo.scratch_dir();
    let roots = mesh.roots_dir()?;
    let (t1, t1_file) = api.agent_token("n1", &scratch)?;
    let (_, t2_file) = api.agent_token("n2", &scratch)?;

    // Two replicas; the agents know both.
    let first = mesh.ca_addr("net1")?;
    let second = mesh.start_ca("n2", &mesh.ca_dir, CA_PORT, &[])?;
    let replicas = format!("{first},{}", second.addr);
    let (roots_dir, lifetime) = (roots.display().to_string(), "60s");
    let (t1_path, t2_path) = (t1_file.display().to_string(), t2_file.display().to_string());
    let start = |node: &str, token: &str| {
        mesh.start_agent(
            node,
            &[
                ("--ca-token", token),
                ("--credential-dir", roots_dir.as_str()),
                ("--ca-addr", replicas.as_str()),
                ("--cert-lifetime", lifetime),
            ],
        )
    };
    let _agents = [start("n1", &t1_path)?, start("n2", &t2_path)?];
    api.make_ready("shop", a)?;
    api.make_ready("shop", b)?;
    mesh.wait_state("n1", "a", WAIT, |s| s == "captured")?;
    mesh.wait_state("n2", "b", WAIT, |s| s == "captured")?;
    let (id_a, id_b) = (
        "spiffe://cluster.local/ns/shop/sa/a",
        "spiffe://cluster.local/ns/shop/sa/b",
    );
    wait_generation(&mesh, "n1", id_a, 1)?;
    wait_generation(&mesh, "n2", id_b, 1)?;
    let _server = http_server(b, 8080, "from-b")?;
    let url = marker_url(IpAddr::V4(b.ipv4), 8080);
    let out = curl(a, &url)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // On the wire: what the CA signs, and what it refuses.
    let count = |result: &str| -> Result<u64> {
        Ok(metric_sum(
            &mesh.ca_metrics("net1")?,
            "strait_ca_requests_total",
            &[&format!("result=\"{result}\"")],
        ))
    };
    let ask = |token: &str, body: &str| ask_ca(&n1.place, first, &roots, Auth::Token(token), body);
    let dir = n1.scratch_dir()?;
    let for_a = sign_body(&n1.place, &dir, "a", id_a, 60)?;
    let for_b = sign_body(&n1.place, &dir, "b", id_b, 60)?;
    let (_, status, answer) = ask(&t1, &for_a)?;
    assert_eq!(status, "200", "n1's token, a pod on n1: {answer}");

    let refused = count("refused")?;
    let (_, status, answer) = ask(&t1, &for_b)?;
    println!("n1 asking for b (on n2): {status} {answer}");
    assert_eq!(status, "403", "{answer}");
    assert!(
        answer.contains("on node n1 runs as service account shop/b"),
        "{answer}"
    );
    assert_eq!(count("refused")?, refused + 1);

    let unauthenticated = count("unauthenticated")?;
    let other_audience = api.token(
        "kube-system",
        "strait-agent",
        Some("agent-n1"),
        "elsewhere",
        3600,
    )?;
    let not_agent = api.token("shop", "a", None, AUDIENCE, 3600)?;
    let expired = api.resign(&t1, -7200)?;
    // The same re-signing, keeping the times: taken, so the expired
    // copy is refused for its time alone.
    let resigned = api.resign(&t1, 0)?;
    let (_, status, answer) = ask(&resigned, &for_a)?;
    assert_eq!(status, "200", "the re-signed token: {answer}");
    for (what, token, reason) in [
        ("another audience", other_audience.as_str(), "audience"),
        (
            "a token bound to no pod",
            not_agent.as_str(),
            "not bound to a pod",
        ),
        ("expired", expired.as_str(), "expired"),
        ("garbage", "not-a-token", "the token"),
    ] {
        let (_, status, answer) = ask(token, &for_a)?;
        println!("{what}: {status} {answer}");
        assert_eq!(status, "401", "{what}: {answer}");
        assert!(answer.to_lowercase().contains(reason), "{what}: {answer}");
    }
    assert_eq!(count("unauthenticated")?, unauthenticated + 4);

    // An east-west gateway's instance: its own identity with its own token
    // (once the CA's view of the cluster has it), nothing else.
    let gw = topo.pod("gw")?;
    let gateway_sa = "eastwest-istio-east-west";
    api.apply(&format!(
        "{}apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: eastwest
  namespace: istio-system
  labels: {{topology.istio.io/network: net1}}
spec:
  gatewayClassName: istio-east-west
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
  addresses: [{{type: IPAddress, value: 100.64.0.1}}]
---
{}",
        namespace_yaml("istio-system", false),
        pod_yaml(
            gw,
            "istio-system",
            gateway_sa,
            &[("gateway.networking.k8s.io/gateway-name", "eastwest")]
        ),
    ))?;
    api.make_ready("istio-system", gw)?;
    let gateway_token = api.token("istio-system", gateway_sa, Some("gw"), AUDIENCE, 3600)?;
    let id_gw = format!("spiffe://cluster.local/ns/istio-system/sa/{gateway_sa}");
    let for_gw = sign_body(&n1.place, &dir, "gw", &id_gw, 60)?;
    let applied = Instant::now();
    loop {
        let (_, status, answer) = ask(&gateway_token, &for_gw)?;
        if status == "200" {
            break;
        }
        if applied.elapsed() > WAIT {
            return Err(format!("the gateway's instance never got its identity: {answer}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "the gateway's instance, with its own token: its identity signed {:.1} s after the Gateway was applied",
        applied.elapsed().as_secs_f64()
    );
    let refused = count("refused")?;
    let a_token = api.token("shop", "a", Some("a"), AUDIENCE, 3600)?;
    for (what, token, body, reason) in [
        (
            "the gateway's token for a",
            gateway_token.as_str(),
            for_a.as_str(),
            "good for no other identity",
        ),
        (
            "a's own token",
            a_token.as_str(),
            for_a.as_str(),
            "not an instance of an east-west gateway",
        ),
    ] {
        let (_, status, answer) = ask(token, body)?;
        println!("{what}: {status} {answer}");
        assert_eq!(status, "403", "{what}: {answer}");
        assert!(answer.contains(reason), "{what}: {answer}");
    }
    assert_eq!(count("refused")?, refused + 2);

    // One replica dies before the rotation (at half of 60 s): every agent
    // still rotates, and a new pod gets its first certificate.
    let before = (
        generation(&mesh, "n1", id_a)?,
        generation(&mesh, "n2", id_b)?,
    );
    mesh.stop_ca("net1")?;
    let killed = Instant::now();
    api.apply(&pod_yaml(c, "shop", &c.name, &[("app", &c.name)]))?;
    api.make_ready("shop", c)?;
    mesh.wait_state("n2", "c", WAIT, |s| s == "captured")?;
    wait_generation(&mesh, "n2", "spiffe://cluster.local/ns/shop/sa/c", 1)?;
    println!(
        "c, created after a replica was killed, holds its certificate {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    wait_generation(&mesh, "n1", id_a, before.0 + 1)?;
    wait_generation(&mesh, "n2", id_b, before.1 + 1)?;
    println!(
        "both agents rotated {:.1} s after a replica was killed",
        killed.elapsed().as_secs_f64()
    );
    let out = curl(a, &url)?;
    assert!(
        out.status.success(),
        "after rotation: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Both away: the agents keep what they hold, say so, and retry.
    let mut second = second;
    second.process.kill()?;
    api.apply(&pod_yaml(d, "shop", &d.name, &[("app", &d.name)]))?;
    api.make_ready("shop", d)?;
    let id_d = "spiffe://cluster.local/ns/shop/sa/d";
    let started = Instant::now();
    let ready = loop {
        let ready = mesh.readiness("n1")?;
        if ready.contains(&format!("certificate {id_d}: the CA request fails")) {
            break ready;
        }
        if started.elapsed() > WAIT {
            return Err(format!("n1 does not report the CA away:\n{ready}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("{}", ready.trim());
    assert!(
        metric_sum(
            &mesh.metrics("n1")?,
            "strait_certificate_requests_failing",
            &[]
        ) >= 1
    );
    assert!(
        generation(&mesh, "n1", id_a)? >= 1,
        "a's certificate is kept"
    );
    let out = curl(a, &url)?;
    assert!(
        out.status.success(),
        "with the CA away: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A replica back: the retries reach it.
    mesh.ca_addr("net1")?;
    let back = Instant::now();
    wait_generation(&mesh, "n1", id_d, 1)?;
    println!(
        "d got its certificate {:.1} s after a replica came back",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(
        metric_sum(
            &mesh.metrics("n1")?,
            "strait_certificate_requests_failing",
            &[]
        ),
        0
    );
    Ok(())
}

/// Opens `n` TLS connections to the CA at `addr` (no certificate, no
/// request: each waits for the CA to close it, then is opened again, 50 ms
/// later) and, on another connection each, sends `tokens` signing requests
/// with one forged token (of the CA's audience, not signed by the cluster),
/// for `seconds`. Prints `hammering` once all are open, `asked` once the
/// requests are done.
const HAMMER: &str = r#"
import base64, json, socket, ssl, sys, threading, time
host, port, n, tokens, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
end = time.monotonic() + seconds
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
opened = threading.Semaphore(0)
def hold():
    first = True
    while time.monotonic() < end:
        try:
            s = ctx.wrap_socket(socket.create_connection((host, port), timeout=5))
            s.settimeout(max(0.1, end - time.monotonic()))
            if first:
                opened.release(); first = False
            s.recv(1)
        except OSError:
            if first:
                opened.release(); first = False
        time.sleep(0.05)
b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
forged = b64({"alg": "RS256"}) + "." + b64({"aud": ["strait-ca"], "exp": int(time.time()) + 3600, "sub": "system:serviceaccount:kube-system:strait-agent"}) + ".Zm9yZ2Vk"
def ask():
    for _ in range(tokens):
        try:
            s = ctx.wrap_socket(socket.create_connection((host, port), timeout=5))
            s.sendall(("POST /v1/sign HTTP/1.1\r\nhost: strait-ca\r\nauthorization: Bearer " + forged + "\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}").encode())
            s.settimeout(5)
            while s.recv(4096):
                pass
        except OSError:
            time.sleep(0.05)
said = threading.Lock()
def say(line):
    # One write per line, under a lock: two threads' prints interleave
    # ("askedhammering") otherwise.
    with said:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
def asking():
    ask()
    say("asked")
threads = [threading.Thread(target=hold, daemon=True) for _ in range(n)] + [threading.Thread(target=asking, daemon=True)]
for t in threads:
    t.start()
for _ in range(n):
    opened.acquire()
say("hammering")
while time.monotonic() < end:
    time.sleep(0.5)
"#;

/// One pod hammers the CA (600 silent TLS connections, each opened again as
/// soon as the CA closes it) and another sends it a stream of requests with
/// a forged token, while a new pod on another node gets its certificate:
/// the CA keeps one address to a few connections and answers a token it
/// was just asked about from memory.
#[test]
fn one_pod_hammering_the_ca_keeps_no_node_from_its_certificates() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes(&[
        ("hammer", "n1"),
        ("forger", "n1"),
        ("b", "n2"),
    ]))?;
    let n1 = topo.node("n1")?;
    let (hammer, forger, b) = (topo.pod("hammer")?, topo.pod("forger")?, topo.pod("b")?);
    let api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    api.apply(&format!(
        "{}{}",
        namespace_yaml("shop", true),
        namespace_yaml("outside", false),
    ))?;
    let mesh = Mesh::with_cluster(&topo, api.strait_kubeconfig()?)?.with_ca(
        api.ca_kubeconfig()?,
        &["--agent-service-account", AGENT_SERVICE_ACCOUNT],
    );
    let scratch = topo.scratch_dir();
    let roots = mesh.roots_dir()?.display().to_string();
    let (_, t2_file) = api.agent_token("n2", &scratch)?;
    let token = t2_file.display().to_string();
    let ca = mesh.ca_addr("net1")?;
    let _agent = mesh.start_agent(
        "n2",
        &[
            ("--ca-token", token.as_str()),
            ("--credential-dir", roots.as_str()),
        ],
    )?;

    let (ca_ip, ca_port) = (ca.ip().to_string(), ca.port().to_string());
    let attack = |place: &Place, holders: &str, tokens: &str| {
        place.spawn(&[
            "python3", "-c", HAMMER, &ca_ip, &ca_port, holders, tokens, "120",
        ])
    };
    let mut hammering = attack(hammer, "600", "0")?;
    let mut forging = attack(forger, "0", "400")?;
    wait_for_line_prefix(&mut hammering, "hammering", WAIT)?;
    wait_for_line_prefix(&mut forging, "hammering", WAIT)?;
    let started = Instant::now();
    api.apply(&pod_yaml(b, "shop", &b.name, &[("app", &b.name)]))?;
    api.make_ready("shop", b)?;
    let took = wait_generation(&mesh, "n2", "spiffe://cluster.local/ns/shop/sa/b", 1)?;
    let still = hammering.wait_timeout(Duration::ZERO)?.is_none();
    println!(
        "b (on n2) got its certificate {:.1} s after it was created, {:.1} s after the pods on n1 \
         started hammering",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    wait_for_line_prefix(&mut forging, "asked", WAIT)?;
    let metrics = mesh.ca_metrics("net1")?;
    let checks = |how: &str| {
        metric_sum(
            &metrics,
            "strait_ca_token_checks_total",
            &[&format!("how=\"{how}\"")],
        )
    };
    let refused = metric_sum(&metrics, "strait_ca_connections_refused_total", &[]);
    println!(
        "the CA closed {refused} of the hammer's connections at once; tokens checked: \
         {} by TokenReview, {} from memory, {} refused before asking",
        checks("reviewed"),
        checks("cached"),
        checks("refused_early"),
    );
    assert!(still, "the hammer stopped before b got its certificate");
    assert!(refused > 0, "the CA let one address take every place");
    assert!(
        checks("cached") > checks("reviewed"),
        "the forged token was reviewed again and again"
    );
    drop((hammering, forging));
    Ok(())
}

//! Routes from the seeds, as written: 003-03 (header routing across
//! clusters' namespaces) with 003-04's distribute rule beside it, applied
//! by a waypoint unchanged; a route's rewrite, redirect, direct response,
//! header operations, mirror and CORS policy, seen by the client and the
//! servers; an HTTPRoute doing the same; session affinity; tcp and tls
//! routes; TLS originated to a destination outside the mesh.
use strait_e2e::{
    Mesh, Result, http_app, namespace_yaml, require_root, waypoint_yaml, workload_yaml,
};
use strait_topology::{Locality, Place, Spec, Topology};

const REVIEWS: &str = "10.96.0.100";
const EAST: &str = "10.96.0.101";
const WEST: &str = "10.96.0.102";
const SHOP: &str = "10.96.0.103";

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("east-cluster", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("west-cluster", "z1", ""))
        .pod("client", "n1")
        .pod("wp", "n1")
        .pod("reviews-east", "n1")
        .pod("reviews-west", "n2")
        .pod("app", "n2")
        .pod("shadow", "n2")
}

fn service(name: &str, namespace: &str, vip: &str, selector: &str, waypoint: bool) -> String {
    let label = if waypoint {
        "\n  labels: {istio.io/use-waypoint: waypoint}"
    } else {
        ""
    };
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}{label}
spec:
  clusterIP: {vip}
  selector: {{app: {selector}}}
  ports:
  - port: 9080
    targetPort: 8080
---
"
    )
}

/// The seeds' files, unchanged (copied into `tests/e2e/seeds/`), and what
/// they need around them.
fn config(topo: &Topology) -> Result<String> {
    let seed = |name: &str| -> Result<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(name);
        Ok(format!("{}\n---\n", std::fs::read_to_string(path)?))
    };
    Ok([
        namespace_yaml("default", true),
        namespace_yaml("east-cluster", true),
        namespace_yaml("west-cluster", true),
        workload_yaml(topo.pod("client")?, "default", "client", &[]),
        workload_yaml(topo.pod("reviews-east")?, "east-cluster", "reviews", &[]),
        workload_yaml(topo.pod("reviews-west")?, "west-cluster", "reviews", &[]),
        workload_yaml(topo.pod("app")?, "default", "app", &[]),
        workload_yaml(topo.pod("shadow")?, "default", "shadow", &[]),
        waypoint_yaml("waypoint", "default", topo.pod("wp")?, &[]),
        service("shadow", "default", "10.96.0.106", "shadow", false),
        service("reviews", "default", REVIEWS, "reviews-east", true),
        service("reviews", "east-cluster", EAST, "reviews-east", false),
        service("reviews", "west-cluster", WEST, "reviews-west", false),
        service("shop", "default", SHOP, "app", true),
        seed("003-03.yaml")?,
        seed("003-04.yaml")?,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: default}
spec:
  hosts: [shop]
  http:
  - name: delegated
    match:
    - uri: {prefix: /delegated/}
    delegate: {name: shop-delegate}
  - name: mirrored
    match:
    - uri: {prefix: /mirrored/}
    corsPolicy:
      allowOrigins: [{exact: 'https://shop.example'}]
      allowMethods: [GET, POST]
      exposeHeaders: [x-trace]
      maxAge: 1h
    mirror: {host: shadow}
    mirrorPercentage: {value: 50}
    route:
    - destination: {host: shop}
  - name: moved
    match:
    - uri: {prefix: /old/}
    redirect: {uri: /new/place, redirectCode: 308}
  - name: gone
    match:
    - uri: {exact: /gone}
    directResponse:
      status: 410
      body: {string: gone for good}
  - name: api
    match:
    - uri: {prefix: /api/}
    rewrite: {uri: /v2/, authority: shop.internal}
    headers:
      request:
        set: {x-route: api}
      response:
        add: {x-served-by: strait-waypoint}
    route:
    - destination: {host: shop}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop-delegate, namespace: default}
spec:
  http:
  - name: hello
    match:
    - headers: {x-hello: {exact: 'yes'}}
    directResponse:
      status: 200
      body: {string: from the delegate}
---
"
        .to_string(),
    ]
    .concat())
}

/// curl's view: status, then the named response header, then the body.
fn get(place: &Place, url: &str, headers: &[&str]) -> Result<String> {
    let mut argv = vec![
        "curl",
        "-s",
        "-w",
        " [%{http_code} %header{location}%header{x-served-by}]",
    ];
    for h in headers {
        argv.extend(["-H", h]);
    }
    argv.push(url);
    let out = place.run_ok(&argv, std::time::Duration::from_secs(30))?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn the_seeds_routes_and_a_routes_actions_take_effect() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "default/waypoint")?;
    let client = topo.pod("client")?;
    let _apps = [
        http_app(
            topo.pod("reviews-east")?,
            8080,
            "ok",
            "reviews in east-cluster",
        )?,
        http_app(
            topo.pod("reviews-west")?,
            8080,
            "ok",
            "reviews in west-cluster",
        )?,
        http_app(topo.pod("app")?, 8080, "echo", "app:")?,
    ];
    let shadow = http_app(topo.pod("shadow")?, 8080, "log", "shadow")?;
    let reviews = format!("http://{REVIEWS}:9080/reviews/1");

    // 003-03: the cluster header picks the namespace's service.
    for cluster in ["east", "west"] {
        let got = get(&client.place, &reviews, &[&format!("cluster: {cluster}")])?;
        println!("003-03, cluster: {cluster}: {got}");
        assert_eq!(got, format!("reviews in {cluster}-cluster [200 ]"));
    }
    // No route for a request without the header: 404, as in Istio.
    let got = get(&client.place, &reviews, &[])?;
    println!("003-03, no cluster header: {got}");
    assert!(got.ends_with("[404 ]"), "{got}");

    // Rewrite and header operations: the server sees the new path,
    // authority and header; the client sees the added header.
    let got = get(
        &client.place,
        &format!("http://{SHOP}:9080/api/items?id=7"),
        &[],
    )?;
    println!("rewrite: {got}");
    assert_eq!(
        got,
        "app: /v2/items?id=7 host=shop.internal x-route=api [200 strait-waypoint]"
    );
    // Redirect: the client is sent elsewhere, the server never asked.
    let got = get(&client.place, &format!("http://{SHOP}:9080/old/thing"), &[])?;
    println!("redirect: {got}");
    assert_eq!(got, format!(" [308 http://{SHOP}:9080/new/place]"));
    // Delegation: the delegate's route, narrowed by its parent's match;
    // what it does not take goes on to the next routes (here none: 404).
    let got = get(
        &client.place,
        &format!("http://{SHOP}:9080/delegated/x"),
        &["x-hello: yes"],
    )?;
    println!("delegate: {got}");
    assert_eq!(got, "from the delegate [200 ]");
    let got = get(
        &client.place,
        &format!("http://{SHOP}:9080/elsewhere"),
        &["x-hello: yes"],
    )?;
    assert!(got.ends_with("[404 ]"), "outside the parent's match: {got}");
    let got = get(
        &client.place,
        &format!("http://{SHOP}:9080/delegated/x"),
        &[],
    )?;
    assert!(
        got.ends_with("[404 ]"),
        "without the delegate's header: {got}"
    );
    // Direct response.
    let got = get(&client.place, &format!("http://{SHOP}:9080/gone"), &[])?;
    println!("direct response: {got}");
    assert_eq!(got, "gone for good [410 ]");

    // Mirroring: half the requests copied to `shadow`, its authority
    // suffixed `-shadow`; the client sees only the primary's answers.
    let wp = topo.pod("wp")?;
    let count = 400;
    let out = client.place.run_ok(
        &[
            "curl",
            "-sS",
            "--max-time",
            "120",
            &format!("http://{SHOP}:9080/mirrored/[1-{count}]"),
        ],
        std::time::Duration::from_secs(150),
    )?;
    let primary = String::from_utf8_lossy(&out.stdout)
        .matches("app: /mirrored/")
        .count();
    let stats = || -> Result<String> {
        strait_e2e::curl_body(&wp.place, &format!("http://{}:15020/metrics", wp.ipv4))
    };
    // Every copy was started before its request was answered; the shadow
    // writes its log line after answering, so its count may trail a little.
    let seen_in = |log: &str| {
        log.lines()
            .filter(|l| l.starts_with("request /mirrored/"))
            .count()
    };
    let agreed = strait_e2e::wait_for(
        "mirror copies done and seen by the shadow",
        std::time::Duration::from_secs(30),
        || {
            let metrics = stats().ok()?;
            if strait_e2e::metric_sum(&metrics, "strait_waypoint_mirrors_in_flight", &[]) != 0 {
                return None;
            }
            let sent = strait_e2e::metric_sum(
                &metrics,
                "strait_waypoint_mirrored_requests_total",
                &["result=\"sent\""],
            );
            let log = shadow.log();
            (seen_in(&log) as u64 == sent).then_some((sent, log))
        },
    );
    let (sent, log) = match agreed {
        Ok(agreed) => agreed,
        Err(e) => {
            let metrics = stats()?;
            return Err(format!(
                "{e}: {} copies seen by shadow, metrics:\n{}",
                seen_in(&shadow.log()),
                metrics
                    .lines()
                    .filter(|l| l.starts_with("strait_waypoint_mirror"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
            .into());
        }
    };
    let seen = seen_in(&log);
    let share = seen as f64 * 100.0 / f64::from(count);
    println!(
        "mirror 50%: {count} requests, {primary} answered by the primary, {seen} copies seen by shadow ({share:.1}%), {sent} counted sent"
    );
    assert_eq!(primary, count as usize);
    assert!((42.5..=57.5).contains(&share), "{share}%");
    assert!(
        log.lines()
            .filter(|l| l.starts_with("request /mirrored/"))
            .all(|l| l.ends_with(&format!("host={SHOP}-shadow:9080"))),
        "{log:.500}"
    );

    // CORS: an allowed origin's preflight is answered by the waypoint; an
    // actual request gets the allow headers; another origin gets none.
    let cors = |method: &str, origin: &str| -> Result<String> {
        let out = client.place.run_ok(
            &[
                "curl", "-s", "-o", "/dev/null", "-X", method, "-H", &format!("origin: {origin}"),
                "-H", "access-control-request-method: POST",
                "-w", "%{http_code} %header{access-control-allow-origin} %header{access-control-allow-methods} %header{access-control-max-age} %header{access-control-expose-headers}",
                &format!("http://{SHOP}:9080/mirrored/cors"),
            ],
            std::time::Duration::from_secs(30),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let preflight = cors("OPTIONS", "https://shop.example")?;
    println!("CORS preflight: {preflight}");
    assert_eq!(preflight, "200 https://shop.example GET,POST 3600");
    let actual = cors("GET", "https://shop.example")?;
    println!("CORS actual request: {actual}");
    assert_eq!(actual, "200 https://shop.example   x-trace");
    let other = cors("GET", "https://evil.example")?;
    println!("CORS from another origin: {other}");
    assert_eq!(other, "200");
    Ok(())
}

const STORE: &str = "10.96.0.104";

/// An HTTPRoute attached to a Service (GAMMA) instead of a
/// VirtualService: a header match, a prefix rewrite with header filters,
/// and an 80/20 split between two Services, applied by the same waypoint;
/// and two services over the same endpoints with `consistentHash` on a
/// header and on a cookie.
fn gateway_api_config(topo: &Topology) -> Result<String> {
    Ok([
        namespace_yaml("default", true),
        workload_yaml(topo.pod("client")?, "default", "client", &[]),
        workload_yaml(topo.pod("app")?, "default", "app", &[("tier", "web")]),
        workload_yaml(
            topo.pod("reviews-west")?,
            "default",
            "canary",
            &[("tier", "web")],
        ),
        waypoint_yaml("waypoint", "default", topo.pod("wp")?, &[]),
        service("store", "default", STORE, "app", true),
        service(
            "store-canary",
            "default",
            "10.96.0.105",
            "reviews-west",
            false,
        ),
        "apiVersion: v1
kind: Service
metadata:
  name: sticky
  namespace: default
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.107
  selector: {tier: web}
  ports: [{port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: cookie
  namespace: default
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.108
  selector: {tier: web}
  ports: [{port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: tcpsvc
  namespace: default
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.109
  selector: {tier: web}
  ports: [{name: tcp, port: 7000}]
---
apiVersion: v1
kind: Service
metadata: {name: tcp-canary, namespace: default}
spec:
  clusterIP: 10.96.0.110
  selector: {app: reviews-west}
  ports: [{name: tcp, port: 7000}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcpsvc, namespace: default}
spec:
  hosts: [tcpsvc]
  tcp:
  - match: [{port: 7000}]
    route: [{destination: {host: tcp-canary, port: {number: 7000}}}]
---
apiVersion: v1
kind: Service
metadata:
  name: tlssvc
  namespace: default
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.111
  selector: {tier: web}
  ports: [{name: tls, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Service
metadata: {name: tls-app, namespace: default}
spec:
  clusterIP: 10.96.0.112
  selector: {app: app}
  ports: [{name: tls, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Service
metadata: {name: tls-canary, namespace: default}
spec:
  clusterIP: 10.96.0.113
  selector: {app: reviews-west}
  ports: [{name: tls, port: 443, targetPort: 8443}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tlssvc, namespace: default}
spec:
  hosts: [tlssvc, a.shop.example, '*.shop.example']
  tls:
  - match: [{sniHosts: [a.shop.example], port: 443}]
    route: [{destination: {host: tls-app, port: {number: 443}}}]
  - match: [{sniHosts: ['*.shop.example']}]
    route: [{destination: {host: tls-canary, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky, namespace: default}
spec:
  host: sticky
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cookie, namespace: default}
spec:
  host: cookie
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: affinity, path: /, ttl: 1h}
---
"
        .to_string(),
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: store, namespace: default}
spec:
  parentRefs:
  - {group: '', kind: Service, name: store, port: 9080}
  rules:
  - name: canary
    matches:
    - headers: [{name: x-canary, value: 'yes'}]
    backendRefs: [{name: store-canary, port: 9080}]
  - name: api
    matches:
    - path: {type: PathPrefix, value: /api}
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: store.internal
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: gateway-api}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: httproute}]}
    backendRefs: [{name: store, port: 9080}]
  - name: split
    backendRefs:
    - {name: store, port: 9080, weight: 80}
    - {name: store-canary, port: 9080, weight: 20}
---
"
        .to_string(),
    ]
    .concat())
}

#[test]
fn an_httproute_and_session_affinity_take_effect() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &gateway_api_config(&topo)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "default/waypoint")?;
    let client = topo.pod("client")?;
    let _apps = [
        http_app(topo.pod("reviews-west")?, 8080, "ok", "canary;")?,
        http_app(topo.pod("app")?, 8080, "echo", "app:")?,
    ];
    let got = get(
        &client.place,
        &format!("http://{STORE}:9080/anything"),
        &["x-canary: yes"],
    )?;
    println!("HTTPRoute header match: {got}");
    assert_eq!(got, "canary; [200 ]");
    let got = get(
        &client.place,
        &format!("http://{STORE}:9080/api/items?id=7"),
        &[],
    )?;
    println!("HTTPRoute prefix rewrite: {got}");
    assert_eq!(
        got,
        "app: /v2/items?id=7 host=store.internal x-route=gateway-api [200 httproute]"
    );
    // A prefix matches whole path elements: `/apix` is not under `/api`.
    let got = get(&client.place, &format!("http://{STORE}:9080/apix"), &[])?;
    println!("HTTPRoute, /apix: {got}");
    assert!(!got.contains("/v2"), "{got}");

    // The split, over 2000 requests on one connection.
    let count = 2000;
    let url = format!("http://{STORE}:9080/split?[1-{count}]");
    let started = std::time::Instant::now();
    let out = client.place.run_ok(
        &["curl", "-sS", "--max-time", "300", &url],
        std::time::Duration::from_secs(320),
    )?;
    let body = String::from_utf8_lossy(&out.stdout);
    let (app, canary) = (
        body.matches("app:").count(),
        body.matches("canary;").count(),
    );
    let share = app as f64 * 100.0 / count as f64;
    println!(
        "HTTPRoute split: store {app}, store-canary {canary}: {share:.1}% to store ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(app + canary, count);
    assert!((77.0..=83.0).contains(&share), "{share}% to store");

    // Session affinity by header: each user's requests all reach one
    // endpoint; users are spread over both.
    let answers = |url: &str, headers: &[&str]| -> Result<Vec<String>> {
        let mut argv = vec!["curl", "-sS", "-D", "-", "--max-time", "60"];
        for h in headers {
            argv.extend(["-H", h]);
        }
        argv.push(url);
        let out = client
            .place
            .run_ok(&argv, std::time::Duration::from_secs(90))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    };
    let mut reached = std::collections::BTreeSet::new();
    for user in 1..=16 {
        let lines = answers(
            "http://10.96.0.107:9080/user/[1-10]",
            &[&format!("x-user: u{user}")],
        )?;
        let app = lines.iter().filter(|l| l.contains("app: /user/")).count();
        let canary = lines.iter().filter(|l| l.contains("canary;")).count();
        assert!(
            (app, canary) == (10, 0) || (app, canary) == (0, 10),
            "user u{user}: app {app}, canary {canary}"
        );
        reached.insert(if app > 0 { "app" } else { "canary" });
    }
    println!(
        "consistentHash httpHeaderName: 16 users x 10 requests, each user on one endpoint; endpoints used: {reached:?}"
    );
    assert_eq!(reached.len(), 2);

    // By cookie: the first answer sets it, and requests that carry it stay.
    let first = answers("http://10.96.0.108:9080/first", &[])?;
    let cookie = first
        .iter()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("set-cookie: ")
                .map(str::to_string)
        })
        .ok_or_else(|| format!("no cookie set: {first:?}"))?;
    let value = cookie
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    println!("consistentHash httpCookie: set-cookie {cookie}");
    assert!(cookie.contains("max-age=3600"), "{cookie}");
    let lines = answers(
        "http://10.96.0.108:9080/again/[1-20]",
        &[&format!("cookie: {value}")],
    )?;
    let app = lines.iter().filter(|l| l.contains("app: /again/")).count();
    let canary = lines.iter().filter(|l| l.contains("canary;")).count();
    println!("with the cookie: app {app}, canary {canary}");
    assert!((app, canary) == (20, 0) || (app, canary) == (0, 20));

    // A VirtualService tcp route: every connection to tcpsvc goes to
    // tcp-canary, though tcpsvc's own endpoints include app.
    let marker = |place: &Place, name: &str| -> Result<strait_topology::Process> {
        let mut server = place.spawn(&[
            "socat",
            "TCP-LISTEN:7000,fork,reuseaddr",
            &format!("SYSTEM:read line; echo {name}"),
        ])?;
        server.wait_listening(7000, std::time::Duration::from_secs(10))?;
        Ok(server)
    };
    let _tcp = [
        marker(&topo.pod("app")?.place, "tcp-app")?,
        marker(&topo.pod("reviews-west")?.place, "tcp-canary")?,
    ];
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let out = client.place.run_ok(
            &["sh", "-c", "echo hello | socat -t 5 - TCP:10.96.0.109:7000"],
            std::time::Duration::from_secs(30),
        )?;
        *answers
            .entry(String::from_utf8_lossy(&out.stdout).trim().to_string())
            .or_insert(0) += 1;
    }
    println!("tcp route: 20 connections to tcpsvc answered by {answers:?}");
    assert_eq!(answers.get("tcp-canary"), Some(&20), "{answers:?}");

    // VirtualService tls routes, by the ClientHello's server name (TLS is
    // not terminated: the servers' own certificate answers): a.shop.example
    // to tls-app, any other *.shop.example to tls-canary; a name no route
    // takes goes to tlssvc's own endpoints (both).
    let dir = topo.scratch_dir().join("tls");
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = strait_e2e::self_signed(&client.place, &dir, "origin", None)?;
    let tls_marker = |place: &Place, name: &str| -> Result<strait_topology::Process> {
        let mut server = place.spawn(&[
            "socat",
            &format!("OPENSSL-LISTEN:8443,fork,reuseaddr,cert={cert},key={key},verify=0"),
            &format!("SYSTEM:read line; echo {name}"),
        ])?;
        server.wait_listening(8443, std::time::Duration::from_secs(10))?;
        Ok(server)
    };
    let _tls = [
        tls_marker(&topo.pod("app")?.place, "tls-app")?,
        tls_marker(&topo.pod("reviews-west")?.place, "tls-canary")?,
    ];
    for (name, expect) in [
        ("a.shop.example", Some("tls-app")),
        ("b.shop.example", Some("tls-canary")),
        ("other.example", None),
    ] {
        let mut answers = std::collections::BTreeMap::new();
        for _ in 0..10 {
            let out = client.place.run_ok(
                &[
                    "sh",
                    "-c",
                    &format!(
                        "echo hello | socat -t 5 - OPENSSL:10.96.0.111:443,verify=0,snihost={name}"
                    ),
                ],
                std::time::Duration::from_secs(30),
            )?;
            *answers
                .entry(String::from_utf8_lossy(&out.stdout).trim().to_string())
                .or_insert(0) += 1;
        }
        println!("tls route: 10 connections for {name} answered by {answers:?}");
        match expect {
            Some(server) => assert_eq!(answers.get(server), Some(&10), "{answers:?}"),
            None => assert_eq!(
                answers.get("tls-app").unwrap_or(&0) + answers.get("tls-canary").unwrap_or(&0),
                10,
                "{answers:?}"
            ),
        }
    }
    Ok(())
}

/// TLS origination: a ServiceEntry for a host outside the mesh, bound to
/// the waypoint, and a DestinationRule with `tls.mode: SIMPLE`. The client
/// speaks plain HTTP; the waypoint speaks TLS to the origin (python's
/// http.server behind `ssl`), checking its certificate against the rule's
/// CA for the request's host, and the wire between them carries no
/// plaintext. A rule whose CA does not sign the origin's certificate gets
/// 503 and the origin no request.
#[test]
fn tls_is_originated_to_a_destination_outside_the_mesh() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    let origin = topo.pod("shadow")?;
    let dir = topo.scratch_dir().join("origin");
    std::fs::create_dir_all(&dir)?;
    let (ca, cert, key) = strait_e2e::server_cert(&origin.place, &dir, "api.external.example")?;
    let other = dir.join("other");
    std::fs::create_dir_all(&other)?;
    let (other_ca, _, _) = strait_e2e::server_cert(&origin.place, &other, "api.external.example")?;
    let entry = |name: &str, host: &str, vip: &str, ca: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: default
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  hosts: [{host}]
  addresses: [{vip}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8443}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {origin}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {host}
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}}}
---
",
            origin = origin.ipv4
        )
    };
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("default", true),
            workload_yaml(topo.pod("client")?, "default", "client", &[]),
            waypoint_yaml("waypoint", "default", topo.pod("wp")?, &[]),
            entry("external", "api.external.example", "240.240.0.10", &ca),
            entry(
                "mistrusted",
                "bad.external.example",
                "240.240.0.11",
                &other_ca,
            ),
        ]
        .concat(),
    )?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "default/waypoint")?;
    let origin_app = strait_e2e::https_app(&origin.place, 8443, "log", "origin-ok", (&cert, &key))?;
    let client = topo.pod("client")?;
    let n1 = topo.node("n1")?;
    let wire = n1.capture("eth0", &["tcp", "port", "8443"])?;
    // No DNS here: the entry's address, with its host.
    let got = get(
        &client.place,
        "http://240.240.0.10/hello",
        &["Host: api.external.example"],
    )?;
    let pcap = wire.finish()?;
    println!(
        "plain HTTP in, TLS out: {got}; between the waypoint and the origin: {} TLS handshakes, ports {:?}",
        pcap.tls_handshakes(),
        pcap.tcp_ports()
    );
    assert_eq!(got, "origin-ok [200 ]");
    assert!(pcap.tls_handshakes() >= 1, "{:?}", pcap.tcp_ports());
    assert!(
        !pcap.contains(b"origin-ok") && !pcap.contains(b"/hello"),
        "plaintext between the waypoint and the origin"
    );
    let bad = get(
        &client.place,
        "http://240.240.0.11/hello",
        &["Host: bad.external.example"],
    )?;
    println!("with a CA that did not sign the origin's certificate: {bad}");
    assert!(bad.ends_with("[503 ]"), "{bad}");
    let log = origin_app.log();
    assert_eq!(
        log.matches("request /hello").count(),
        1,
        "the origin got only the verified request: {log}"
    );
    Ok(())
}

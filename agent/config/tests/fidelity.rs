//! strait judges Istio YAML as Istio does: one test per class of
//! misjudgement, each with a manifest Istio accepts and one it refuses,
//! asserting the verdict and the field named.
use std::path::Path;

use strait_config::{Report, Verdict, check_text};

fn judge(text: &str) -> Report {
    check_text(Path::new("t.yaml"), text).0
}

/// Every object accepted (warnings allowed); returns the report.
fn accepted(text: &str) -> Report {
    let report = judge(text);
    assert_eq!(
        report.rejected(),
        0,
        "refused what Istio accepts:\n{report}"
    );
    report
}

/// Refused, with a finding at `field` whose reason contains `why`.
fn rejected(text: &str, field: &str, why: &str) {
    let report = judge(text);
    let found = report.objects.iter().any(|o| match &o.verdict {
        Verdict::Rejected(findings) => findings
            .iter()
            .any(|f| f.field == field && f.reason.contains(why)),
        _ => false,
    });
    assert!(found, "no rejection at {field} ({why:?}) in:\n{report}");
}

/// Accepted with a warning at `field` whose reason contains `why`.
fn warned(text: &str, field: &str, why: &str) {
    let report = accepted(text);
    let found = report
        .objects
        .iter()
        .flat_map(|o| &o.warnings)
        .any(|w| w.field == field && w.reason.contains(why));
    assert!(found, "no warning at {field} ({why:?}) in:\n{report}");
}

const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
";

fn vs(route: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route:
{route}"
    )
}

#[test]
fn references_to_other_objects_are_warnings() {
    let text = format!(
        "{DR}  subsets: [{{name: v1, labels: {{version: v1}}}}]\n---\n{}",
        vs("    - destination: {host: reviews, subset: v2}\n")
    );
    let (report, config) = check_text(Path::new("t.yaml"), &text);
    assert!(
        config.is_some(),
        "the rest of the config applies:\n{report}"
    );
    warned(
        &text,
        "spec.http[0].route[0].destination.subset",
        "subset \"v2\" is not defined by any DestinationRule for reviews.shop.svc.cluster.local",
    );
    accepted(&format!(
        "{DR}  subsets: [{{name: v2, labels: {{version: v2}}}}]\n---\n{}",
        vs("    - destination: {host: reviews, subset: v2}\n")
    ));
}

#[test]
fn route_weights_are_shares() {
    accepted(&vs("    - {destination: {host: reviews}, weight: 70}
    - {destination: {host: ratings}, weight: 20}
"));
    accepted(&vs("    - {destination: {host: reviews}, weight: 250}\n"));
    rejected(
        &vs("    - {destination: {host: reviews}, weight: 70}
    - {destination: {host: ratings}, weight: -5}
"),
        "spec.http[0].route[1].weight",
        "negative",
    );
    rejected(
        &vs("    - {destination: {host: reviews}, weight: 0}
    - {destination: {host: ratings}}
"),
        "spec.http[0].route",
        "sum to 0",
    );
    // Locality weights are percentages still.
    rejected(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: shop}
spec:
  host: r
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute: [{from: r1/*, to: {r1/*: 70, r2/*: 20}}]
",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        "weights sum to 90, not 100",
    );
}

#[test]
fn every_field_of_the_current_api_is_known() {
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-web, namespace: shop}
spec:
  rules:
  - from: [{source: {serviceAccounts: [shop/web], notServiceAccounts: [shop/admin]}}]
";
    let report = accepted(policy);
    assert!(report.objects[0].warnings.is_empty(), "{report}");
    warned(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  jwtRules:
  - issuer: https://issuer.example
    spaceDelimitedClaims: [roles]
",
        "spec",
        "only through targetRefs",
    );
    let rule = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: shop}
spec:
  host: r
  trafficPolicy:
    connectionPool:
      http: {http2KeepAlive: {interval: 30s, timeout: 5s}}
    loadBalancer:
      simple: LEAST_REQUEST
      warmup: {duration: 60s, minimumPercent: 10, aggression: 2}
";
    warned(
        rule,
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive",
        "does not apply it yet",
    );
    warned(
        rule,
        "spec.trafficPolicy.loadBalancer.warmup",
        "has no effect",
    );
    // What acts is not warned about.
    let report = accepted(rule);
    assert!(
        !report.objects[0]
            .warnings
            .iter()
            .any(|w| w.field.contains("simple")),
        "{report}"
    );
    rejected(
        &rule.replace("interval: 30s", "intervl: 30s"),
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive.intervl",
        "did you mean `interval`?",
    );
}

const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
";

#[test]
fn values_istio_allows_are_accepted() {
    // No ports, and each form of leading wildcard.
    accepted(&format!(
        "{SE}  hosts: ['*.example.com', '*bar.example.org']\n"
    ));
    warned(
        &format!("{SE}  hosts: ['*bar.example.org']\n"),
        "spec.hosts[0]",
        "partial wildcard",
    );
    let entry = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: shop}
spec:
";
    warned(
        &format!("{entry}  address: vm1.example.internal\n"),
        "spec.address",
        "host name",
    );
    warned(
        &format!("{entry}  address: unix:///var/run/app.sock\n"),
        "spec.address",
        "Unix socket",
    );
    warned(
        &format!("{entry}  network: west\n"),
        "spec.address",
        "on network \"west\"",
    );
    rejected(
        &format!("{entry}  labels: {{app: vm}}\n"),
        "spec.address",
        "is required",
    );
    rejected(
        &format!("{entry}  address: unix://relative.sock\n"),
        "spec.address",
        "absolute path",
    );
}

#[test]
fn nulls_are_absent_and_errors_keep_the_object() {
    accepted(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
  annotations:
spec:
  hosts: [reviews]
  http:
  tcp:
  - route: [{destination: {host: reviews}}]
",
    );
    // Kubernetes refuses a label that is not a string; the report still
    // names the object.
    let report = judge(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
  labels: {version: 2}
spec:
  host: reviews
",
    );
    let shown = report.to_string();
    assert!(
        shown.contains(
            "rejected t.yaml:6 DestinationRule shop/reviews: field metadata.labels.version: must be a string"
        ),
        "{shown}"
    );
    rejected(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
",
        "spec",
        "is required",
    );
}

#[test]
fn other_api_groups_have_their_own_kinds() {
    let report = accepted(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec: {parentRefs: [{name: reviews, kind: Service, group: ''}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: reviews, namespace: shop}
spec: {}
",
    );
    // The Gateway API's Gateway is read (east-west gateways, waypoints),
    // and its HTTPRoute (waypoints); one of another class is accepted and
    // said to have no effect; a kind strait does not read is ignored.
    let (ingress, route, tcp) = (&report.objects[0], &report.objects[1], &report.objects[2]);
    assert!(
        matches!(ingress.verdict, Verdict::Accepted)
            && ingress.warnings[0].reason.contains("no effect"),
        "{report}"
    );
    assert!(matches!(route.verdict, Verdict::Accepted), "{report}");
    assert!(matches!(tcp.verdict, Verdict::Ignored(_)), "{report}");
    rejected(
        "apiVersion: v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec: {hosts: [reviews]}
",
        "apiVersion",
        "belongs to networking.istio.io",
    );
}

#[test]
fn json_manifests_are_judged_like_yaml() {
    let json = r#"{
  "apiVersion": "security.istio.io/v1",
  "kind": "PeerAuthentication",
  "metadata": {"name": "strict", "namespace": "shop", "annotations": null},
  "spec": {"mtls": {"mode": "STRICT"}}
}"#;
    let (report, config) = check_text(Path::new("pa.json"), json);
    assert_eq!(report.rejected(), 0, "{report}");
    assert_eq!(config.map(|c| c.peer_authentications.len()), Some(1));
    rejected(
        &json.replace("STRICT", "STRICTER"),
        "spec.mtls.mode",
        "STRICTER",
    );
    // What `kubectl get -o json` prints: a List.
    let list = format!(r#"{{"apiVersion": "v1", "kind": "List", "items": [{json}]}}"#);
    let (report, config) = check_text(Path::new("list.json"), &list);
    assert_eq!(report.objects.len(), 1, "{report}");
    assert_eq!(config.map(|c| c.peer_authentications.len()), Some(1));
}

#[test]
fn regular_expressions_are_re2() {
    let route = |re: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{regex: '{re}'}}}}]
    route: [{{destination: {{host: reviews}}}}]
"
        )
    };
    accepted(&route("^/api/v[0-9]+/(users|orders)$"));
    rejected(
        &route("^/(?!admin).*"),
        "spec.http[0].match[0].uri.regex",
        "look-around",
    );
    rejected(
        &route("^/(a)\\1$"),
        "spec.http[0].match[0].uri.regex",
        "not an RE2 regular expression",
    );
}

#[test]
fn names_labels_ports_and_headers_are_checked() {
    let dr = |labels: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop, labels: {labels}}}
spec:
  host: reviews
"
        )
    };
    accepted(&dr("{app.kubernetes.io/name: reviews, tier: ''}"));
    let many = |n: usize| {
        let pairs: Vec<String> = (0..n).map(|i| format!("l{i}: v")).collect();
        format!("{{{}}}", pairs.join(", "))
    };
    accepted(&dr(&many(strait_config::MAX_LABELS)));
    rejected(
        &dr(&many(strait_config::MAX_LABELS + 1)),
        "metadata.labels",
        "has 129 labels; at most 128",
    );
    rejected(
        &dr("{'bad key!': x}"),
        "metadata.labels.bad key!",
        "label key",
    );
    rejected(
        &dr("{app: 'has space'}"),
        "metadata.labels.app",
        "label value",
    );
    rejected(
        &format!(
            "{SE}  hosts: [ext.example.com]
  ports: [{{number: 80, name: HTTP_1}}]
"
        ),
        "spec.ports[0].name",
        "DNS-1123 label",
    );
    rejected(
        &format!(
            "{SE}  hosts: [ext..example.com]
"
        ),
        "spec.hosts[0]",
        "not a host name",
    );
    rejected(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {'x user': {exact: a}}}]
    route: [{destination: {host: reviews}}]
",
        "spec.http[0].match[0].headers.x user",
        "not a valid HTTP header name",
    );
    rejected(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: Reviews, namespace: shop}
spec:
  host: reviews
",
        "metadata.name",
        "DNS-1123 subdomain",
    );
}

#[test]
fn unknown_top_level_fields_are_refused() {
    rejected(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
specs: {mtls: {mode: DISABLE}}
",
        "specs",
        "did you mean `spec`?",
    );
    accepted(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: shop}
spec: {address: 10.0.0.9}
status: {conditions: [{type: Healthy, status: 'True'}]}
",
    );
}

#[test]
fn empty_and_missing_content_is_refused() {
    let pa = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
";
    accepted(&format!(
        "{pa}  portLevelMtls: {{5432: {{mode: STRICT}}}}
"
    ));
    rejected(
        &format!(
            "{pa}  portLevelMtls: {{}}
"
        ),
        "spec.portLevelMtls",
        "is empty",
    );
    rejected(
        &format!(
            "{SE}  hosts: [ext.example.com]
  ports: [{{number: 80, name: a}}, {{number: 80, name: b}}]
"
        ),
        "spec.ports[1].number",
        "defined twice",
    );
    let ra = |rule: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - {rule}
"
        )
    };
    accepted(&ra(
        "{issuer: https://issuer.example, audiences: [shop], jwksUri: 'https://issuer.example/keys'}",
    ));
    accepted(&ra("{jwksUri: 'https://issuer.example/keys'}"));
    rejected(
        &ra("{issuer: i, audiences: ['']}"),
        "spec.jwtRules[0].audiences[0]",
        "must not be empty",
    );
    rejected(
        &ra("{issuer: i, fromHeaders: [{name: ''}]}"),
        "spec.jwtRules[0].fromHeaders[0].name",
        "is required",
    );
    rejected(
        &ra("{issuer: i, fromParams: ['']}"),
        "spec.jwtRules[0].fromParams[0]",
        "must not be empty",
    );
    rejected(
        &ra("{issuer: i, jwksUri: issuer.example/keys}"),
        "spec.jwtRules[0].jwksUri",
        "http:// or https://",
    );
    rejected(
        &ra("{audiences: [shop]}"),
        "spec.jwtRules[0].issuer",
        "unless jwksUri",
    );
    let ap = |target: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: shop}}
spec:
{target}  action: DENY
  rules: [{{}}]
"
        )
    };
    accepted(&ap(
        "  targetRefs: [{kind: Service, group: '', name: reviews}]
",
    ));
    rejected(
        &ap("  targetRef: {kind: Service, name: a}
  targetRefs: [{kind: Service, name: b}]
"),
        "spec",
        "only one of selector, targetRef and targetRefs",
    );
    rejected(
        &ap("  targetRef: {kind: Service, name: a, namespace: other}
"),
        "spec.targetRef.namespace",
        "its own namespace",
    );
    rejected(
        &ap("  targetRef: {kind: Service}
"),
        "spec.targetRef.name",
        "is required",
    );
    rejected(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: DENY
",
        "spec.rules",
        "is required for action DENY",
    );
    rejected(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  rules: [{from: [{source: {}}]}]
",
        "spec.rules[0].from[0].source",
        "is empty",
    );
}

#[test]
fn documented_ranges_are_enforced() {
    let lb = |settings: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: r, namespace: shop}}
spec:
  host: r
  trafficPolicy:
    loadBalancer: {settings}
"
        )
    };
    accepted(&lb(
        "{warmup: {duration: 30s, minimumPercent: 10, aggression: 1.5}}",
    ));
    rejected(
        &lb("{warmup: {minimumPercent: 10}}"),
        "spec.trafficPolicy.loadBalancer.warmup.duration",
        "is required",
    );
    rejected(
        &lb("{warmup: {duration: 30s, minimumPercent: 150}}"),
        "spec.trafficPolicy.loadBalancer.warmup.minimumPercent",
        "not a percentage",
    );
    rejected(
        &lb("{warmup: {duration: 30s, aggression: 0.5}}"),
        "spec.trafficPolicy.loadBalancer.warmup.aggression",
        "less than 1",
    );
    accepted(&lb(
        "{consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}}",
    ));
    rejected(
        &lb("{consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65536}}}"),
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        "not a prime",
    );
    rejected(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: shop}
spec:
  host: r
  trafficPolicy:
    outlierDetection: {maxEjectionPercent: 101}
",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "not a percentage",
    );
    rejected(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - fault: {abort: {httpStatus: 700, percentage: {value: 50}}}
    route: [{destination: {host: reviews}}]
",
        "spec.http[0].fault.abort.httpStatus",
        "not an HTTP status",
    );
}

#[test]
fn service_entry_combinations_istio_refuses() {
    let se = |spec: &str| format!("{SE}{spec}");
    accepted(&se("  hosts: [db.example.com]
  addresses: [10.1.0.0/16]
  resolution: STATIC
  ports: [{number: 5432, name: tcp-db, protocol: TCP}]
  endpoints: [{address: 10.1.0.5}]
"));
    rejected(
        &se("  hosts: ['*']
"),
        "spec.hosts[0]",
        "full wildcard",
    );
    rejected(
        &se("  hosts: [db.example.com]
  addresses: [10.1.0.0/16]
  resolution: DNS
"),
        "spec.addresses[0]",
        "only with resolution NONE or STATIC",
    );
    rejected(
        &se("  hosts: [db.example.com]
  resolution: NONE
  endpoints: [{address: 10.1.0.5}]
"),
        "spec.endpoints",
        "resolution NONE takes no endpoints",
    );
    rejected(
        &se("  hosts: [db.example.com]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{address: a.example.com}, {address: b.example.com}]
"),
        "spec.endpoints",
        "at most one endpoint",
    );
    rejected(
        &se("  hosts: [db.example.com]
  resolution: STATIC
  workloadSelector: {labels: {app: '*'}}
"),
        "spec.workloadSelector.labels.app",
        "no wildcard",
    );
}

#[test]
fn virtual_service_routes_are_judged_as_istio_does() {
    let vs = |http: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews, '*.example.com']
  http:
{http}"
        )
    };
    // An empty URI prefix matches every path; a delegate root route.
    accepted(&vs("  - match: [{uri: {prefix: ''}}]
    route: [{destination: {host: reviews}}]
"));
    accepted(&vs(
        "  - delegate: {name: reviews-delegate, namespace: shop}\n",
    ));
    rejected(
        &vs("  - redirect: {uri: /v2}\n    route: [{destination: {host: reviews}}]\n"),
        "spec.http[0].route",
        "cannot be set with redirect",
    );
    rejected(
        &vs("  - match: [{method: {prefix: ''}}]\n    route: [{destination: {host: reviews}}]\n"),
        "spec.http[0].match[0].method.prefix",
        "must not be empty",
    );
    rejected(
        &vs("  - route: [{destination: {host: reviews}}]
    headers: {request: {set: {host: a.example}}}
    rewrite: {authority: b.example}
"),
        "spec.http[0].headers.request",
        "more than once",
    );
    warned(
        &vs("  - route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: reviews}}]
"),
        "spec.http[1]",
        "never used",
    );
    let tls = |sni: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ext, namespace: shop}}
spec:
  hosts: ['*.example.com']
  tls:
  - match: [{{port: 443, sniHosts: ['{sni}']}}]
    route: [{{destination: {{host: api.example.com}}}}]
"
        )
    };
    accepted(&tls("api.example.com"));
    rejected(
        &tls("api.example.org"),
        "spec.tls[0].match[0].sniHosts[0]",
        "not among the VirtualService's hosts",
    );
}

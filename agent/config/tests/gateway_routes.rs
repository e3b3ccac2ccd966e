//! HTTPRoute and GRPCRoute in the mesh: which services a route attaches
//! to (a Service parent in its own namespace, or the waypoint the service
//! is bound to, narrowed by hostnames), how its rules become Istio http
//! routes, in the Gateway API's precedence, and what the checks say of
//! what cannot be applied.
use std::path::Path;

use strait_config::{Config, check_text};

const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: v1
kind: Namespace
metadata:
  name: other
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: other}
spec:
  clusterIP: 10.96.0.12
  ports: [{port: 9080}]
---
";

fn config(text: &str) -> Config {
    let (report, config) = check_text(Path::new("mesh.yaml"), text);
    config.unwrap_or_else(|| panic!("{report:?}"))
}

fn report(text: &str) -> String {
    let (report, _) = check_text(Path::new("mesh.yaml"), text);
    format!("{report:?}")
}

fn service<'a>(config: &'a Config, namespace: &str, name: &str) -> &'a strait_config::Service {
    config
        .services
        .iter()
        .find(|s| s.name == name && s.namespace == namespace)
        .unwrap()
}

#[test]
fn a_producer_route_and_a_waypoint_route_attach_to_their_services_only() {
    let text = format!(
        "{MESH}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews, namespace: shop}}
spec:
  parentRefs: [{{group: '', kind: Service, name: reviews, port: 9080}}]
  rules:
  - backendRefs: [{{name: reviews, port: 9080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: via-waypoint, namespace: shop}}
spec:
  parentRefs: [{{name: waypoint}}]
  hostnames: [ratings.shop.svc.cluster.local]
  rules:
  - backendRefs: [{{name: ratings}}]
---
# A consumer route (another namespace's Service): not applied.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: consumer, namespace: other}}
spec:
  parentRefs: [{{group: '', kind: Service, name: reviews, namespace: shop}}]
  rules:
  - backendRefs: [{{name: reviews}}]
"
    );
    let config = config(&text);
    let reviews = config.gateway_routes(service(&config, "shop", "reviews"));
    let names: Vec<&str> = reviews.iter().filter_map(|r| r.name.as_deref()).collect();
    assert_eq!(names, ["HTTPRoute/shop/reviews/0"]);
    // The parent's port narrows the match.
    assert_eq!(reviews[0].matches[0].port, Some(9080));
    assert_eq!(
        reviews[0].route[0].destination.host,
        "reviews.shop.svc.cluster.local"
    );
    let ratings = config.gateway_routes(service(&config, "shop", "ratings"));
    let names: Vec<&str> = ratings.iter().filter_map(|r| r.name.as_deref()).collect();
    assert_eq!(names, ["HTTPRoute/shop/via-waypoint/0"]);
    assert!(
        config
            .gateway_routes(service(&config, "other", "reviews"))
            .is_empty()
    );
}

#[test]
fn rules_translate_with_whole_path_elements_and_the_gateway_apis_precedence() {
    let text = format!(
        "{MESH}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, group: '', name: reviews}}]
  rules:
  - name: catch-all
    backendRefs: [{{name: reviews, port: 9080}}]
  - name: api
    matches: [{{path: {{type: PathPrefix, value: /api/}}}}]
    filters:
    - type: URLRewrite
      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}, hostname: internal}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-route, value: api}}], remove: [x-debug]}}
    backendRefs:
    - {{name: reviews, port: 9080, weight: 80}}
    - {{name: ratings, port: 9080, weight: 20}}
    timeouts: {{request: 3s, backendRequest: 1s}}
  - name: exact
    matches:
    - path: {{type: Exact, value: /api/health}}
      headers: [{{name: X-Env, value: prod}}, {{type: RegularExpression, name: x-user, value: 'a.*'}}]
    backendRefs: [{{name: ratings, port: 9080}}]
    retry: {{attempts: 3, codes: [500, 503]}}
  - name: moved
    matches: [{{path: {{value: /old}}, method: GET}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /new}}, statusCode: 301}}
"
    );
    let config = config(&text);
    let routes = config.gateway_routes(service(&config, "shop", "reviews"));
    let names: Vec<&str> = routes
        .iter()
        .filter_map(|r| r.name.as_deref()?.rsplit('/').next())
        .collect();
    // Exact first, then the longer prefix, then the method, then `/`.
    assert_eq!(names, ["exact", "api", "moved", "catch-all"]);
    let exact = &routes[0];
    let m = &exact.matches[0];
    assert_eq!(
        m.uri.as_ref().unwrap().exact.as_deref(),
        Some("/api/health")
    );
    assert_eq!(m.headers["x-env"].exact.as_deref(), Some("prod"));
    assert_eq!(m.headers["x-user"].regex.as_deref(), Some("a.*"));
    let retries = exact.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, Some(3));
    assert_eq!(
        retries.retry_on.as_deref(),
        Some("connect-failure,refused-stream,500,503")
    );
    let api = &routes[1];
    // `/api/` matches `/api` and what is under it, not `/apix`.
    assert_eq!(
        api.matches[0].uri.as_ref().unwrap().regex.as_deref(),
        Some("/api(/.*)?")
    );
    let rewrite = api.rewrite.as_ref().unwrap();
    assert_eq!(rewrite.authority.as_deref(), Some("internal"));
    let regex = rewrite.uri_regex_rewrite.as_ref().unwrap();
    assert_eq!(
        (regex.matches.as_str(), regex.rewrite.as_str()),
        ("^/api(/.*)?$", "/v2\\1")
    );
    let weights: Vec<Option<i64>> = api.route.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [Some(80), Some(20)]);
    assert_eq!(api.timeout.as_deref(), Some("3s"));
    assert_eq!(
        api.retries.as_ref().unwrap().per_try_timeout.as_deref(),
        Some("1s")
    );
    let request = api.headers.as_ref().unwrap().request.as_ref().unwrap();
    assert_eq!(request.set["x-route"], "api");
    assert_eq!(request.remove, ["x-debug"]);
    let moved = &routes[2];
    let redirect = moved.redirect.as_ref().unwrap();
    assert_eq!(
        (redirect.uri.as_deref(), redirect.redirect_code),
        (Some("/new"), Some(301))
    );
    assert!(moved.route.is_empty());
}

#[test]
fn grpc_methods_become_paths() {
    let text = format!(
        "{MESH}
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: greeter, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, group: '', name: reviews}}]
  rules:
  - matches: [{{method: {{service: helloworld.Greeter}}}}]
    backendRefs: [{{name: ratings, port: 9080}}]
  - matches: [{{method: {{service: helloworld.Greeter, method: SayHello}}}}]
    backendRefs: [{{name: reviews, port: 9080}}]
  - matches: [{{method: {{type: RegularExpression, method: 'Say.*'}}}}]
    backendRefs: [{{name: reviews, port: 9080}}]
"
    );
    let config = config(&text);
    let routes = config.gateway_routes(service(&config, "shop", "reviews"));
    let uris: Vec<String> = routes
        .iter()
        .map(|r| format!("{:?}", r.matches[0].uri.as_ref().unwrap()))
        .collect();
    // Service and method first, then the service alone, then the regex.
    assert!(uris[0].contains("/helloworld.Greeter/SayHello"), "{uris:?}");
    assert!(
        uris[1].contains("prefix: Some(\"/helloworld.Greeter/\")"),
        "{uris:?}"
    );
    assert!(uris[2].contains("/[^/]+/Say.*"), "{uris:?}");
}

#[test]
fn what_cannot_be_applied_is_refused_or_named() {
    let bad = format!(
        "{MESH}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bad, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, group: '', name: reviews}}]
  rules:
  - matches: [{{path: {{type: RegularExpression, value: '(unclosed'}}}}]
    backendRefs: [{{name: reviews}}]
"
    );
    let said = report(&bad);
    assert!(
        said.contains("spec.rules[0].matches[0].path.value"),
        "{said}"
    );
    assert!(said.contains("not an RE2 regular expression"), "{said}");

    let bad = format!(
        "{MESH}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bad, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, group: '', name: reviews}}]
  rules:
  - matches: [{{path: {{type: Exact, value: /a}}}}]
    filters:
    - type: URLRewrite
      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /b}}}}
    backendRefs: [{{name: reviews}}]
"
    );
    let said = report(&bad);
    assert!(
        said.contains("ReplacePrefixMatch needs the rule's matches to be PathPrefix"),
        "{said}"
    );

    let warned = format!(
        "{MESH}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mirror, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, group: '', name: reviews}}]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: ratings, port: 9080}}, percent: 25}}
    - type: CORS
      cors: {{allowOrigins: ['https://shop.example']}}
    backendRefs:
    - {{name: reviews}}
    - {{name: reviews, namespace: other}}
"
    );
    let said = report(&warned);
    assert!(said.contains("spec.rules[0].filters[1].cors"), "{said}");
    assert!(said.contains("does not answer CORS"), "{said}");
    assert!(said.contains("needs a ReferenceGrant"), "{said}");
    // Warnings do not refuse the route: the backend in this namespace stays.
    let config = config(&warned);
    let routes = config.gateway_routes(service(&config, "shop", "reviews"));
    assert_eq!(routes[0].route.len(), 1);
    // The mirror filter is applied: a quarter of requests copied.
    let mirror = &routes[0].mirrors[0];
    assert_eq!(
        mirror.destination.as_ref().unwrap().host,
        "ratings.shop.svc.cluster.local"
    );
    assert_eq!(mirror.percentage.as_ref().unwrap().value, 25.0);
}

#[test]
fn a_delegates_routes_take_its_parents_place_narrowed_by_its_match() {
    let text = format!(
        "{MESH}
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - name: api
    match: [{{uri: {{prefix: /api/}}}}]
    delegate: {{name: api-routes, namespace: other}}
  - name: missing
    delegate: {{name: nowhere}}
  - name: rest
    route: [{{destination: {{host: reviews}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api-routes, namespace: other}}
spec:
  http:
  - name: v2
    match: [{{headers: {{x-v: {{exact: '2'}}}}}}]
    route: [{{destination: {{host: reviews}}}}]
  - name: all
    route: [{{destination: {{host: reviews.shop.svc.cluster.local}}}}]
"
    );
    let said = report(&text);
    assert!(
        said.contains("shop/nowhere is no delegate VirtualService"),
        "{said}"
    );
    let config = config(&text);
    let vs = config
        .virtual_service_for(service(&config, "shop", "reviews"))
        .unwrap();
    let routes = config.http_routes_of(vs);
    let names: Vec<&str> = routes.iter().filter_map(|r| r.name.as_deref()).collect();
    assert_eq!(names, ["api/v2", "api/all", "rest"]);
    let m = &routes[0].matches[0];
    assert_eq!(m.uri.as_ref().unwrap().prefix.as_deref(), Some("/api/"));
    assert_eq!(m.headers["x-v"].exact.as_deref(), Some("2"));
    // A delegate's destinations are in its own namespace.
    assert_eq!(
        routes[0].route[0].destination.host,
        "reviews.other.svc.cluster.local"
    );
    assert_eq!(
        routes[1].route[0].destination.host,
        "reviews.shop.svc.cluster.local"
    );
}

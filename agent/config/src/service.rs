//! Services at L4: which service a virtual address belongs to, the
//! addresses a service name resolves to (including addresses allocated for
//! ServiceEntries that declare none), and a service's endpoints for one port.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use crate::{
    Config, Endpoints, Labels, Service, ServicePort, TargetPort, Workload,
    check::{CLUSTER_DOMAIN, qualify},
    manifest::networking::DestinationRuleSpec,
};

/// Where auto-allocated service addresses come from (Istio's range for
/// ServiceEntries without addresses).
const ALLOCATION_BASE: Ipv4Addr = Ipv4Addr::new(240, 240, 0, 0);
const ALLOCATION_SIZE: u32 = 1 << 16;

/// A service reached by one of its addresses.
#[derive(Clone, Copy, Debug)]
pub struct ServiceAt<'a> {
    pub service: &'a Service,
    /// The host the address stands for (the first host when the address is
    /// declared for all of them).
    pub host: &'a str,
}

/// Where a connection to a service port goes.
#[derive(Clone, Debug)]
pub enum Backends<'a> {
    /// These endpoints (workloads and the address to reach on each).
    Endpoints(Vec<Endpoint<'a>>),
    /// Resolve these names and connect to what they give.
    Dns { hosts: Vec<String>, port: u16 },
    /// The address stands for itself (ServiceEntry resolution NONE).
    Original,
}

#[derive(Clone, Copy, Debug)]
pub struct Endpoint<'a> {
    pub addr: SocketAddr,
    pub workload: &'a Workload,
}

/// Why a service address leads nowhere.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoBackends {
    #[error("service {service} has no port {port}")]
    NoPort { service: String, port: u16 },
    #[error("service {service} has no endpoints for port {port}")]
    NoEndpoints { service: String, port: u16 },
    #[error("{dst} is bound to waypoint {waypoint}, which has no instance on this network")]
    NoWaypoint {
        waypoint: String,
        dst: std::net::SocketAddr,
    },
}

/// Built by [`Config::reindex`].
#[derive(Clone, Debug, Default)]
pub(crate) struct ServiceIndex {
    /// Address -> (service, host) indices.
    by_address: HashMap<IpAddr, (usize, usize)>,
    /// Exact host -> service indices.
    by_host: HashMap<String, Vec<usize>>,
    /// Services with a wildcard host.
    wildcard: Vec<usize>,
}

impl Config {
    /// The service at a virtual address, declared or allocated.
    pub fn service_at(&self, ip: IpAddr) -> Option<ServiceAt<'_>> {
        let (s, h) = *self.services_index.by_address.get(&ip)?;
        let service = self.services.get(s)?;
        Some(ServiceAt {
            service,
            host: service.hosts.get(h)?,
        })
    }

    /// A service by what a user types: a host (`reviews.default.svc.cluster.local`,
    /// `user-service.production.global`), `name.namespace[.svc]`, or
    /// `namespace/name`.
    pub fn find_service(&self, name: &str) -> Option<ServiceAt<'_>> {
        let wanted = name.trim_end_matches('.').to_ascii_lowercase();
        let by_name = wanted.split_once('/');
        let qualified = match wanted.split('.').count() {
            2 => Some(format!("{wanted}.svc.{CLUSTER_DOMAIN}")),
            3 if wanted.ends_with(".svc") => Some(format!("{wanted}.{CLUSTER_DOMAIN}")),
            _ => None,
        };
        self.services.iter().find_map(|s| {
            let named = by_name.is_some_and(|(ns, n)| s.namespace == ns && s.name == n);
            let host = s
                .hosts
                .iter()
                .find(|h| **h == wanted || qualified.as_deref() == Some(h.as_str()));
            match (named, host) {
                (_, Some(host)) => Some(ServiceAt { service: s, host }),
                (true, None) => s.hosts.first().map(|host| ServiceAt { service: s, host }),
                _ => None,
            }
        })
    }

    /// The addresses `name` resolves to in the mesh, if the mesh knows it:
    /// a service's declared addresses, or the one allocated for that host.
    /// `None` for names the mesh does not know (ask upstream); an empty
    /// list for known names without addresses (headless, wildcard).
    pub fn resolve(&self, name: &str, client_namespace: &str) -> Option<Vec<IpAddr>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let index = &self.services_index;
        let exact = index.by_host.get(&name).into_iter().flatten();
        let wild = index
            .wildcard
            .iter()
            .filter(|&&i| {
                self.services[i]
                    .hosts
                    .iter()
                    .any(|h| crate::host_matches(h, &name))
            })
            .collect::<Vec<_>>();
        let mut found = false;
        let mut addresses = Vec::new();
        for &i in exact.chain(wild) {
            let service = &self.services[i];
            // A service not exported to the client's namespace is not
            // there for it.
            if !crate::exported_to(&service.export_to, &service.namespace, client_namespace) {
                continue;
            }
            found = true;
            if service.addresses.is_empty() {
                addresses.extend(self.allocated.get(&name));
            }
            for a in &service.addresses {
                if !addresses.contains(a) {
                    addresses.push(*a);
                }
            }
        }
        found.then_some(addresses)
    }

    /// Where a connection to `port` of `service` may go. Endpoint order is
    /// the config's; choosing among them is the caller's (the balancer's).
    pub fn backends<'a>(
        &'a self,
        at: ServiceAt<'a>,
        port: u16,
    ) -> Result<Backends<'a>, NoBackends> {
        let service = at.service;
        let id = || format!("{}/{}", service.namespace, service.name);
        let Some(sp) = service.ports.iter().find(|p| p.port == port) else {
            return Err(NoBackends::NoPort {
                service: id(),
                port,
            });
        };
        let target = |w: &Workload| target_port(service, sp, w);
        let endpoints: Vec<Endpoint<'a>> = match &service.endpoints {
            Endpoints::Selector(labels) => self
                .selected(&service.namespace, labels)
                .filter_map(|w| endpoint(w, target(w)?))
                .collect(),
            Endpoints::Static(workloads) => workloads
                .iter()
                .filter_map(|w| endpoint(w, target(w)?))
                .collect(),
            Endpoints::Dns(hosts) => {
                let hosts = if hosts.is_empty() {
                    vec![at.host.to_string()]
                } else {
                    hosts.clone()
                };
                let port = match sp.target {
                    TargetPort::Number(n) => n,
                    TargetPort::Name(_) => port,
                };
                return Ok(Backends::Dns { hosts, port });
            }
            Endpoints::Unset => return Ok(Backends::Original),
        };
        if endpoints.is_empty() {
            return Err(NoBackends::NoEndpoints {
                service: id(),
                port,
            });
        }
        Ok(Backends::Endpoints(endpoints))
    }

    /// The DestinationRule for `host` as a client in `client_namespace`
    /// (labelled `client_labels`) sees it: of the rules exported to the
    /// client's namespace (`exportTo`) and selecting the client
    /// (`workloadSelector`, for rules of its own namespace), an exact host
    /// before a wildcard, and among equals the client's namespace, then the
    /// service's, then any other.
    pub fn destination_rule(
        &self,
        at: ServiceAt<'_>,
        client_namespace: &str,
        client_labels: &Labels,
    ) -> Option<&DestinationRuleSpec> {
        self.destination_rules
            .iter()
            .filter(|dr| crate::exported_to(&dr.spec.export_to, &dr.namespace, client_namespace))
            .filter(|dr| match &dr.spec.workload_selector {
                None => true,
                Some(sel) => {
                    dr.namespace == client_namespace
                        && sel
                            .match_labels
                            .iter()
                            .all(|(k, v)| client_labels.get(k) == Some(v))
                }
            })
            .filter_map(|dr| {
                let host = qualify(&dr.spec.host, &dr.namespace);
                let exact = host == at.host;
                (exact || crate::host_matches(&host, at.host)).then(|| {
                    let scope = if dr.namespace == client_namespace {
                        0
                    } else if dr.namespace == at.service.namespace {
                        1
                    } else {
                        2
                    };
                    ((!exact, scope), &dr.spec)
                })
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, spec)| spec)
    }

    /// Whether `port` of `w` is a port of a service exported to other
    /// networks (`istio.io/global`) that `w` is an endpoint of: what other
    /// networks may reach of a workload, and nothing else.
    pub fn exported_port(&self, w: &Workload, port: u16) -> bool {
        self.services.iter().any(|s| {
            endpoint_of(s, w)
                .is_some_and(|e| s.ports.iter().any(|sp| target_port(s, sp, e) == Some(port)))
                && self.global(s)
        })
    }

    /// The service a connection to `w` at `port` most likely came through,
    /// for metrics when nothing else says (the client dialled the pod, or
    /// a waypoint sent it): one `w` is an endpoint of whose port leads to
    /// `port`, the first by namespace and name.
    pub fn service_for(&self, w: &Workload, port: u16) -> Option<&Service> {
        self.services
            .iter()
            .filter(|s| {
                endpoint_of(s, w)
                    .is_some_and(|e| s.ports.iter().any(|sp| target_port(s, sp, e) == Some(port)))
            })
            .min_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    }

    /// The services `w` is an endpoint of.
    pub fn services_of<'a>(&'a self, w: &'a Workload) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .iter()
            .filter(move |s| endpoint_of(s, w).is_some())
    }

    /// Workloads of `namespace` whose labels include `labels`.
    fn selected<'a>(
        &'a self,
        namespace: &'a str,
        labels: &'a Labels,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads.iter().filter(move |w| {
            w.namespace == namespace && labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
        })
    }

    /// Rebuilds the service lookups and allocates addresses for the hosts
    /// of ServiceEntries that declare none (not wildcards, not resolution
    /// NONE). An allocation depends only on the host and the hosts that
    /// collide with it, so it survives unrelated config changes.
    pub(crate) fn index_services(&mut self) {
        let mut index = ServiceIndex::default();
        let mut allocated = BTreeMap::new();
        let mut taken: HashMap<u32, String> = HashMap::new();
        let mut wanting: Vec<(&str, usize, usize)> = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            for a in &s.addresses {
                index.by_address.entry(*a).or_insert((i, 0));
            }
            for (h, host) in s.hosts.iter().enumerate() {
                if host.starts_with('*') {
                    if !index.wildcard.contains(&i) {
                        index.wildcard.push(i);
                    }
                    continue;
                }
                index.by_host.entry(host.clone()).or_default().push(i);
                let allocates = s.addresses.is_empty()
                    && s.origin != crate::ServiceOrigin::Kubernetes
                    && !matches!(s.endpoints, Endpoints::Unset);
                if allocates {
                    wanting.push((host, i, h));
                }
            }
        }
        wanting.sort();
        for (host, i, h) in wanting {
            if allocated.contains_key(host) {
                continue;
            }
            let mut slot = fnv1a(host) % (ALLOCATION_SIZE - 2) + 1;
            while taken.contains_key(&slot) {
                slot = slot % (ALLOCATION_SIZE - 2) + 1;
            }
            taken.insert(slot, host.to_string());
            let ip = IpAddr::V4(Ipv4Addr::from(u32::from(ALLOCATION_BASE) + slot));
            allocated.insert(host.to_string(), ip);
            index.by_address.entry(ip).or_insert((i, h));
        }
        self.allocated = allocated;
        self.services_index = index;
    }
}

/// Where `sp` of `service` leads on `w`. A ServiceEntry endpoint's `ports`
/// (by port name) override the target; a Service's named targetPort must
/// be a port of the pod.
fn target_port(service: &Service, sp: &ServicePort, w: &Workload) -> Option<u16> {
    match &sp.target {
        TargetPort::Number(n) => Some(
            w.ports
                .get(&sp.name)
                .copied()
                .filter(|_| service.origin != crate::ServiceOrigin::Kubernetes)
                .unwrap_or(*n),
        ),
        TargetPort::Name(name) => w.ports.get(name).copied(),
    }
}

/// The endpoint of `w` at `port`: its first address (one per workload; the
/// caller's family preference is the balancer's business).
fn endpoint(w: &Workload, port: u16) -> Option<Endpoint<'_>> {
    let ip = *w.addresses.first()?;
    Some(Endpoint {
        addr: SocketAddr::new(ip, port),
        workload: w,
    })
}

/// A stable hash for address allocation (the same host gets the same
/// address on every node and every run).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `w` as `service` has it among its endpoints: itself (selected by
/// labels), or the ServiceEntry's entry at its address (with its own
/// ports); `None` when it is not one.
pub(crate) fn endpoint_of<'a>(service: &'a Service, w: &'a Workload) -> Option<&'a Workload> {
    match &service.endpoints {
        Endpoints::Selector(labels) => (w.namespace == service.namespace
            && labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
        .then_some(w),
        Endpoints::Static(entries) => entries
            .iter()
            .find(|e| e.addresses.iter().any(|a| w.addresses.contains(a))),
        Endpoints::Dns(_) | Endpoints::Unset => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_text;

    fn config(yaml: &str) -> Config {
        let (report, config) = check_text(std::path::Path::new("t.yaml"), yaml);
        config.unwrap_or_else(|| panic!("{report}"))
    }

    const MESH: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: web}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1, namespace: default}
spec: {address: 10.1.0.5, labels: {app: reviews}, ports: {web: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-2, namespace: default}
spec: {address: 10.1.0.6, labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: users, namespace: production}
spec:
  hosts: [user-service.production.global]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, targetPort: 8080}]
  endpoints: [{address: 10.2.0.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: default}
spec:
  hosts: [external.example.com]
  resolution: DNS
  ports: [{number: 443, name: tls}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec:
  hosts: ['*.corp.example']
  addresses: [10.99.0.1]
  resolution: NONE
  ports: [{number: 25, name: smtp}]
";

    #[test]
    fn vips_resolve_to_services_and_endpoints() {
        let cfg = config(MESH);
        let at = cfg.service_at("10.96.0.20".parse().unwrap()).unwrap();
        assert_eq!(at.service.name, "reviews");
        let Ok(Backends::Endpoints(eps)) = cfg.backends(at, 9080) else {
            panic!("endpoints")
        };
        // Only reviews-1 has the named target port.
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].addr, "10.1.0.5:8080".parse().unwrap());
        assert_eq!(
            cfg.backends(at, 80).unwrap_err(),
            NoBackends::NoPort {
                service: "default/reviews".into(),
                port: 80
            }
        );
    }

    #[test]
    fn service_entries_get_allocated_addresses() {
        let cfg = config(MESH);
        let ips = cfg.resolve("user-service.production.global.", "x").unwrap();
        assert_eq!(ips.len(), 1);
        let IpAddr::V4(v4) = ips[0] else { panic!("v4") };
        assert_eq!(v4.octets()[..2], [240, 240]);
        let at = cfg.service_at(ips[0]).unwrap();
        assert_eq!(at.host, "user-service.production.global");
        let Ok(Backends::Endpoints(eps)) = cfg.backends(at, 80) else {
            panic!("endpoints")
        };
        assert_eq!(eps[0].addr, "10.2.0.7:8080".parse().unwrap());

        let ext = cfg.resolve("external.example.com", "x").unwrap()[0];
        let at = cfg.service_at(ext).unwrap();
        assert!(matches!(
            cfg.backends(at, 443),
            Ok(Backends::Dns { ref hosts, port: 443 }) if hosts == &["external.example.com"]
        ));
        // Same host, same address, whatever else the config holds.
        let smaller = config(&MESH.replace("hosts: [external.example.com]", "hosts: [x.example]"));
        assert_eq!(
            smaller.resolve("user-service.production.global", "x"),
            Some(ips)
        );
    }

    #[test]
    fn wildcards_and_unknown_names() {
        let cfg = config(MESH);
        assert_eq!(
            cfg.resolve("mail.corp.example", "x"),
            Some(vec!["10.99.0.1".parse().unwrap()])
        );
        let at = cfg.service_at("10.99.0.1".parse().unwrap()).unwrap();
        assert!(matches!(cfg.backends(at, 25), Ok(Backends::Original)));
        assert_eq!(cfg.resolve("example.org", "x"), None);
        assert_eq!(
            cfg.resolve("reviews.default.svc.cluster.local", "x"),
            Some(vec!["10.96.0.20".parse().unwrap()])
        );
    }

    #[test]
    fn named_target_port_no_selected_workload_has_is_a_warning() {
        let yaml = MESH.replace("targetPort: web", "targetPort: grpc");
        let (report, config) = check_text(std::path::Path::new("t.yaml"), &yaml);
        assert!(config.is_some(), "a warning does not refuse the config");
        let warnings: Vec<String> = report
            .objects
            .iter()
            .flat_map(|o| {
                o.warnings
                    .iter()
                    .map(|w| format!("{} {}", w.field, w.reason))
            })
            .collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("spec.ports[0].targetPort") && w.contains("\"grpc\"")),
            "{warnings:?}"
        );
        let (report, _) = check_text(std::path::Path::new("t.yaml"), MESH);
        assert_eq!(report.warnings(), 0, "reviews-1 has the port named web");
    }

    #[test]
    fn services_are_found_by_what_users_type() {
        let cfg = config(MESH);
        for name in [
            "reviews.default.svc.cluster.local",
            "reviews.default.svc",
            "reviews.default",
            "default/reviews",
        ] {
            assert_eq!(
                cfg.find_service(name).map(|at| at.service.name.as_str()),
                Some("reviews"),
                "{name}"
            );
        }
        assert_eq!(
            cfg.find_service("user-service.production.global")
                .map(|at| at.host),
            Some("user-service.production.global")
        );
        assert!(cfg.find_service("nothing.here").is_none());
    }
}

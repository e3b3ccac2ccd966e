//! A real Kubernetes control plane for the tests: etcd and kube-apiserver
//! (built by `cargo xtask setup` from Debian's source package) inside a
//! topology node's network namespace, with an admin token, a service
//! account signing key, and `kubectl` pointed at it. There is no
//! controller-manager, scheduler or kubelet: tests create the objects a
//! cluster would have (Pods with `spec.nodeName`, their status) themselves.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use strait_topology::{Place, Pod, Process, process};

use crate::Result;

/// The Kubernetes version setup builds.
pub const VERSION: &str = "1.20.2";
/// Where setup keeps `kube-apiserver` and `kubectl`.
pub const BIN_DIR: &str = "/var/cache/strait/kube/v1.20.2";
/// The audience of the tokens strait's agents present.
pub const AUDIENCE: &str = "strait";
const PORT: u16 = 6443;
const ETCD_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;

/// `kube-apiserver` or `kubectl` as built by setup.
pub fn bin(name: &str) -> PathBuf {
    Path::new(BIN_DIR).join(name)
}

/// One cluster's control plane. Dropping it stops both processes.
/// The agents' ServiceAccount, as the CA's `--agent-service-account`
/// names it.
pub const AGENT_SERVICE_ACCOUNT: &str = "kube-system/strait-agent";
/// The audience of the tokens agents send the CA.
pub const CA_AUDIENCE: &str = "strait-ca";

/// A ServiceAccount and a Pod object for a topology pod, scheduled on its
/// node, running as `service_account`, with `labels`.
/// The Gateway API's `Gateway` kind as a CRD that keeps whatever it is
/// given: the tests check strait's reading of Gateways, not the upstream
/// CRD's schema.
pub const GATEWAY_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gateways.gateway.networking.k8s.io
  # *.k8s.io groups need it, as the upstream CRD carries it.
  annotations: {api-approved.kubernetes.io: \"https://github.com/kubernetes-sigs/gateway-api/pull/891\"}
spec:
  group: gateway.networking.k8s.io
  names: {kind: Gateway, listKind: GatewayList, plural: gateways, singular: gateway}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
    subresources: {status: {}}
";

pub fn pod_yaml(
    pod: &Pod,
    namespace: &str,
    service_account: &str,
    labels: &[(&str, &str)],
) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "apiVersion: v1
kind: ServiceAccount
metadata: {{name: {service_account}, namespace: {namespace}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}
spec:
  nodeName: {node}
  serviceAccountName: {service_account}
  automountServiceAccountToken: false
  containers: [{{name: app, image: none}}]
---
",
        name = pod.name,
        node = pod.node,
        labels = labels.join(", "),
    )
}

/// A directory holding one kubeconfig, named after its cluster: what
/// `--remote-kubeconfigs` reads.
pub fn remote_dir(dir: &Path, cluster: &str, kubeconfig: &Path) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(kubeconfig, dir.join(cluster))?;
    Ok(dir.display().to_string())
}

/// strait's CRDs on `api`, as `straitctl crds | kubectl apply -f -`, and
/// established.
pub fn apply_crds(api: &ApiServer) -> Result<()> {
    let out = std::process::Command::new(crate::strait_bin("straitctl"))
        .arg("crds")
        .output()?;
    if !out.status.success() {
        return Err(format!("straitctl crds: {}", out.status).into());
    }
    api.apply(&String::from_utf8_lossy(&out.stdout))?;
    api.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout",
        "60s",
        "crd",
        "--all",
    ])?;
    Ok(())
}

pub struct ApiServer {
    place: Place,
    dir: PathBuf,
    etcd: Process,
    server: Option<Process>,
    args: Vec<String>,
    pub address: SocketAddr,
    /// A `system:masters` bearer token.
    pub admin_token: String,
}

impl ApiServer {
    /// Starts etcd and the API server at `place` (a node's namespace),
    /// serving on `ip`:6443, and waits until it is ready.
    pub fn start(place: &Place, ip: std::net::IpAddr, name: &str) -> Result<Self> {
        let dir = place.scratch_dir()?.join(format!("kube-{name}"));
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("sa.key");
        let public = dir.join("sa.pub");
        run_ok(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(&key)
                .arg("2048"),
        )?;
        run_ok(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(&public),
        )?;
        let admin_token = random_token()?;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},admin,admin,\"system:masters\"\n"),
        )?;
        let mut etcd = place.command("etcd")?;
        etcd.arg("--data-dir").arg(dir.join("etcd")).args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{ETCD_PORT}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{ETCD_PORT}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{ETCD_PEER_PORT}"),
        ]);
        let mut etcd = Process::spawn_logged(etcd, &format!("etcd-{name}"), &dir)?;
        etcd.wait_listening(ETCD_PORT, Duration::from_secs(30))?;
        let address = SocketAddr::new(ip, PORT);
        let args = vec![
            format!("--etcd-servers=http://127.0.0.1:{ETCD_PORT}"),
            format!("--bind-address={ip}"),
            format!("--advertise-address={ip}"),
            format!("--secure-port={PORT}"),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-signing-key-file={}", key.display()),
            format!("--service-account-key-file={}", public.display()),
            format!("--api-audiences={AUDIENCE}"),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            // No controller-manager makes ServiceAccounts' token Secrets.
            "--disable-admission-plugins=ServiceAccount".into(),
        ];
        let mut api = Self {
            place: place.clone(),
            dir,
            etcd,
            server: None,
            args,
            address,
            admin_token,
        };
        api.restart()?;
        Ok(api)
    }

    /// Starts the API server (again, after [`ApiServer::stop`]) on the same
    /// etcd, and waits until it answers `/readyz`.
    pub fn restart(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let mut cmd = self.place.command(bin("kube-apiserver"))?;
        cmd.args(&self.args);
        self.server = Some(Process::spawn_logged(cmd, "kube-apiserver", &self.dir)?);
        let deadline = started + Duration::from_secs(60);
        loop {
            let ready = self.kubectl(&["get", "--raw", "/readyz"])?;
            if ready.status.success() {
                return Ok(started.elapsed());
            }
            if let Some(server) = &mut self.server
                && let Some(status) = server.wait_timeout(Duration::ZERO)?
            {
                return Err(format!("kube-apiserver exited ({status}):\n{}", server.log()).into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver not ready after 60 s:\n{}",
                    String::from_utf8_lossy(&ready.stderr)
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Where the control plane runs: clients of it run there too.
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// Stops the API server; etcd keeps the cluster's state.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut server) = self.server.take() {
            server.stop(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// The serving certificate, to trust (it is self-signed).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs/apiserver.crt")
    }

    /// A kubeconfig of the cluster's admin (`system:masters`): a user's.
    pub fn admin_kubeconfig(&self) -> Result<PathBuf> {
        self.kubeconfig("admin", &self.admin_token)
    }

    /// Writes the status a kubelet would for its Node: its address and
    /// where its kubelet listens (what the API server's pod proxies,
    /// port-forward among them, dial).
    pub fn node_status(&self, node: &str, ip: std::net::IpAddr, kubelet_port: u16) -> Result<()> {
        self.request(
            "PATCH",
            &format!("/api/v1/nodes/{node}/status"),
            &serde_json::json!({"status": {
                "addresses": [{"type": "InternalIP", "address": ip.to_string()}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            }}),
        )?;
        Ok(())
    }

    /// A kubeconfig with `token`, for an agent or a CA.
    pub fn kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        self.write_kubeconfig(name, &format!("token: {token}"))
    }

    /// A kubeconfig whose token is read from `token_file` (as a projected
    /// token is mounted, and rotated, in a pod).
    pub fn kubeconfig_with_token_file(&self, name: &str, token_file: &Path) -> Result<PathBuf> {
        self.write_kubeconfig(name, &format!("tokenFile: {}", token_file.display()))
    }

    fn write_kubeconfig(&self, name: &str, user: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: https://{}
    certificate-authority: {}
users:
- name: {name}
  user:
    {user}
contexts:
- name: {name}
  context: {{cluster: {name}, user: {name}}}
current-context: {name}
",
            self.address,
            self.ca_file().display(),
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// A kubeconfig for strait's agents and CAs: the ServiceAccount
    /// `kube-system/strait`, allowed only to read what strait watches
    /// (RBAC), with a token for [`AUDIENCE`] from the TokenRequest API.
    pub fn strait_kubeconfig(&self) -> Result<PathBuf> {
        let token = self.strait_token()?;
        self.kubeconfig("strait", &token)
    }

    /// The token of [`ApiServer::strait_kubeconfig`].
    pub fn strait_token(&self) -> Result<String> {
        self.apply(
            "apiVersion: v1
kind: ServiceAccount
metadata: {name: strait, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: strait}
rules:
- apiGroups: ['']
  resources: [namespaces, nodes, pods, services]
  verbs: [get, list, watch]
- apiGroups: [networking.istio.io, security.istio.io]
  resources: ['*']
  verbs: [get, list, watch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: strait}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: strait}
subjects: [{kind: ServiceAccount, name: strait, namespace: kube-system}]
",
        )?;
        let issued = self.request(
            "POST",
            "/api/v1/namespaces/kube-system/serviceaccounts/strait/token",
            &serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [AUDIENCE], "expirationSeconds": 3600}}),
        )?;
        Ok(issued["status"]["token"]
            .as_str()
            .ok_or_else(|| format!("no token in {issued}"))?
            .to_string())
    }

    /// A kubeconfig for the CA: the ServiceAccount `kube-system/strait-ca`,
    /// allowed to read what strait watches and to create TokenReviews.
    pub fn ca_kubeconfig(&self) -> Result<PathBuf> {
        self.strait_token()?;
        self.apply(
            "apiVersion: v1
kind: ServiceAccount
metadata: {name: strait-ca, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: strait-ca}
rules:
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: strait-ca}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: strait-ca}
subjects: [{kind: ServiceAccount, name: strait-ca, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: strait-ca-reads}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: strait}
subjects: [{kind: ServiceAccount, name: strait-ca, namespace: kube-system}]
",
        )?;
        let token = self.token("kube-system", "strait-ca", None, AUDIENCE, 3600)?;
        self.kubeconfig("strait-ca", &token)
    }

    /// A token of ServiceAccount `namespace/account` for `audience`, bound
    /// to pod `namespace/pod` when given (as the kubelet projects it).
    pub fn token(
        &self,
        namespace: &str,
        account: &str,
        pod: Option<&str>,
        audience: &str,
        seconds: u64,
    ) -> Result<String> {
        let mut spec = serde_json::json!({"audiences": [audience], "expirationSeconds": seconds});
        if let Some(pod) = pod {
            let object = self.request(
                "GET",
                &format!("/api/v1/namespaces/{namespace}/pods/{pod}"),
                &serde_json::Value::Null,
            );
            let uid = object?["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            spec["boundObjectRef"] =
                serde_json::json!({"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid});
        }
        let issued = self.request(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"),
            &serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
        )?;
        Ok(issued["status"]["token"]
            .as_str()
            .ok_or_else(|| format!("no token in {issued}"))?
            .to_string())
    }

    /// `token` re-signed with the ServiceAccount key after its times are
    /// moved by `shift` seconds (negative: an expired copy), as only the
    /// API server could sign it.
    pub fn resign(&self, token: &str, shift: i64) -> Result<String> {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
        let mut parts = token.split('.');
        let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
            return Err("not a JWT".into());
        };
        let mut claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload)?)?;
        for field in ["exp", "iat", "nbf"] {
            if let Some(t) = claims[field].as_i64() {
                claims[field] = serde_json::json!(t + shift);
            }
        }
        let signed = format!("{header}.{}", B64.encode(claims.to_string()));
        let input = self.dir.join(format!("{}-jwt", random_token()?));
        std::fs::write(&input, &signed)?;
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(self.dir.join("sa.key"))
            .arg(&input)
            .output()?;
        std::fs::remove_file(&input)?;
        if !out.status.success() {
            return Err(format!("openssl: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(format!("{signed}.{}", B64.encode(out.stdout)))
    }

    /// `kubectl` as the admin, run at the control plane's place.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_as(&self.admin_token, args)
    }

    /// `kubectl` with another bearer token.
    pub fn kubectl_as(&self, token: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.place.command(bin("kubectl"))?;
        cmd.arg(format!("--server=https://{}", self.address))
            .arg(format!("--token={token}"))
            .arg(format!(
                "--certificate-authority={}",
                self.ca_file().display()
            ))
            .args(args);
        Ok(process::run(cmd, Duration::from_secs(30))?)
    }

    /// `kubectl`, failing with its stderr unless it succeeds; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The agent of `node` as a DaemonSet runs it: a running pod
    /// `kube-system/agent-<node>` of [`AGENT_SERVICE_ACCOUNT`] on that node,
    /// and its projected token for the CA, written to `dir/<node>.token`.
    /// The token and its file.
    pub fn agent_token(&self, node: &str, dir: &Path) -> Result<(String, PathBuf)> {
        self.apply(&format!(
            "apiVersion: v1
kind: ServiceAccount
metadata: {{name: strait-agent, namespace: kube-system}}
---
apiVersion: v1
kind: Pod
metadata: {{name: agent-{node}, namespace: kube-system}}
spec:
  nodeName: {node}
  hostNetwork: true
  serviceAccountName: strait-agent
  automountServiceAccountToken: false
  containers: [{{name: agent, image: none}}]
"
        ))?;
        self.request(
            "PATCH",
            &format!("/api/v1/namespaces/kube-system/pods/agent-{node}/status"),
            &serde_json::json!({"status": {"phase": "Running"}}),
        )?;
        let pod = format!("agent-{node}");
        let token = self.token("kube-system", "strait-agent", Some(&pod), CA_AUDIENCE, 3600)?;
        let path = dir.join(format!("{node}.token"));
        std::fs::write(&path, &token)?;
        Ok((token, path))
    }

    /// Writes the status a kubelet would once `pod`'s network is up:
    /// running, its addresses, ready.
    pub fn make_ready(&self, namespace: &str, pod: &Pod) -> Result<()> {
        self.request(
            "PATCH",
            &format!("/api/v1/namespaces/{namespace}/pods/{}/status", pod.name),
            &serde_json::json!({"status": {
                "phase": "Running",
                "podIP": pod.ipv4.to_string(),
                "podIPs": [{"ip": pod.ipv4.to_string()}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }}),
        )?;
        Ok(())
    }

    /// Writes `text` to a new file of this control plane's directory; its
    /// path.
    pub fn scratch_file(&self, name: &str, text: &str) -> Result<String> {
        let file = self.dir.join(format!("{}-{name}", random_token()?));
        std::fs::write(&file, text)?;
        Ok(file.display().to_string())
    }

    /// The cluster IP the API server gave Service `namespace/name`.
    pub fn cluster_ip(&self, namespace: &str, name: &str) -> Result<std::net::IpAddr> {
        let ip = self.kubectl_ok(&[
            "-n",
            namespace,
            "get",
            "service",
            name,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        Ok(ip.trim().parse()?)
    }

    /// `kubectl apply -f` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        let file = self.dir.join(format!("apply-{}.yaml", random_token()?));
        std::fs::write(&file, yaml)?;
        let file = file.display().to_string();
        self.kubectl_ok(&["apply", "-f", &file])
    }

    /// A raw request as the admin (`POST` with a JSON body, `PATCH` with a
    /// merge patch): what kubectl 1.20 cannot do, such as writing a Pod's
    /// status as a kubelet would.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let content_type = match method {
            "PATCH" => "application/merge-patch+json",
            _ => "application/json",
        };
        let data = match body {
            serde_json::Value::Null => Vec::new(),
            _ => vec!["--data-binary".to_string(), body.to_string()],
        };
        let mut cmd = self.place.command("curl")?;
        cmd.args(["-sS", "--fail-with-body", "-X", method])
            .arg("--cacert")
            .arg(self.ca_file())
            .args(["-H", &format!("Authorization: Bearer {}", self.admin_token)])
            .args(["-H", &format!("Content-Type: {content_type}")])
            .args(&data)
            .arg(format!("https://{}{path}", self.address));
        let out = process::run(cmd, Duration::from_secs(30))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{method} {path}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Many raw requests as the admin, `parallel` at a time (one curl):
    /// (method, path, JSON body). Returns how many succeeded (2xx).
    pub fn requests(
        &self,
        requests: &[(&str, String, serde_json::Value)],
        parallel: usize,
    ) -> Result<usize> {
        // curl's config syntax: double-quoted, backslash escapes.
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut config = String::new();
        for (i, (method, path, body)) in requests.iter().enumerate() {
            if i > 0 {
                config.push_str("next\n");
            }
            let content_type = match *method {
                "PATCH" => "application/merge-patch+json",
                _ => "application/json",
            };
            for (key, value) in [
                ("url", format!("https://{}{path}", self.address)),
                ("request", method.to_string()),
                ("cacert", self.ca_file().display().to_string()),
                (
                    "header",
                    format!("Authorization: Bearer {}", self.admin_token),
                ),
                ("header", format!("Content-Type: {content_type}")),
                ("data-binary", body.to_string()),
                ("output", "/dev/null".to_string()),
                ("write-out", "%{http_code}\\n".to_string()),
            ] {
                writeln!(config, "{key} = {}", quote(&value))?;
            }
            config.push_str("silent\n");
        }
        let file = self
            .dir
            .join(format!("{}-requests.curlrc", random_token()?));
        std::fs::write(&file, config)?;
        let mut cmd = self.place.command("curl")?;
        cmd.args(["--parallel", "--parallel-max", &parallel.to_string(), "-K"])
            .arg(&file);
        let out = process::run(cmd, Duration::from_secs(600))?;
        std::fs::remove_file(&file)?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|code| code.starts_with('2'))
            .count())
    }

    /// The API server's log so far.
    pub fn log(&self) -> String {
        self.server.as_ref().map(Process::log).unwrap_or_default()
    }

    /// etcd's log so far.
    pub fn etcd_log(&self) -> String {
        self.etcd.log()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

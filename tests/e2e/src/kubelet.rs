//! A kubelet for the install tests: it runs a pod template exactly as the
//! API server holds it (after `helm install`) with podman on a topology
//! node, the way a kubelet and its container runtime would: the Pod
//! object created and its status written, volumes made from what the API
//! server has (ConfigMaps, Secrets, projected ServiceAccount tokens bound
//! to the pod, the downward API), the node's host paths, the container's
//! command, arguments, environment, capabilities and security settings.
//!
//! Nothing is added that the template does not say, and a field this
//! kubelet does not know fails the run instead of being ignored, so a
//! wrong chart fails the test. What it adds is what every kubelet adds:
//! `KUBERNETES_SERVICE_HOST`/`_PORT` (the API server's own address here,
//! as there is no kube-proxy), and this machine's own needs: the `runc`
//! runtime (crun refuses the hybrid cgroup layout) and rlimits no higher
//! than the host's hard limits (root here lacks CAP_SYS_RESOURCE).
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value as Json, json};
use strait_topology::{Node, Pod, Process, RunId, Topology, process};

use crate::{
    Result,
    install::IMAGE_NAME,
    kube::{AUDIENCE, ApiServer},
};

/// Pod template fields this kubelet acts on, or that need nothing on one
/// node (scheduling, pulling, priority).
const POD_FIELDS: &[&str] = &[
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "hostNetwork",
    "dnsPolicy",
    "priorityClassName",
    "terminationGracePeriodSeconds",
    "imagePullSecrets",
    "nodeSelector",
    "tolerations",
    "affinity",
    "securityContext",
    "containers",
    "volumes",
    "restartPolicy",
    "schedulerName",
];
const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "ports",
    "readinessProbe",
    "resources",
    "securityContext",
    "volumeMounts",
    "terminationMessagePath",
    "terminationMessagePolicy",
];

/// How a node's host paths look from the node: its own cgroup subtree is
/// its cgroup v2 root, its own pin directory its bpffs, the topology's
/// namespaces its `/run/netns`.
pub struct NodeFs {
    map: Vec<(PathBuf, PathBuf)>,
}

impl NodeFs {
    pub fn of(topo: &Topology, node: &Node) -> Result<Self> {
        Ok(Self {
            map: vec![
                (topo.host().cgroup_root.clone(), node.pods_cgroup.clone()),
                (topo.host().bpffs.clone(), node.pin_dir.clone()),
                (
                    PathBuf::from("/run/netns"),
                    topo.node_netns_dir(node.name())?,
                ),
            ],
        })
    }

    /// Where `path` on the node is on this machine.
    pub fn resolve(&self, path: &str) -> Result<PathBuf> {
        let path = Path::new(path);
        self.map
            .iter()
            .filter_map(|(on_node, here)| Some((on_node, here, path.strip_prefix(on_node).ok()?)))
            .max_by_key(|(on_node, _, _)| on_node.as_os_str().len())
            .map(|(_, here, rest)| here.join(rest))
            .ok_or_else(|| {
                format!(
                    "hostPath {}: not a path this test kubelet maps to a node",
                    path.display()
                )
                .into()
            })
    }
}

/// Where a pod runs: on the node's network (hostNetwork), or in a
/// topology pod's namespace.
pub enum Network<'a> {
    Host,
    Pod(&'a Pod),
}

pub struct Kubelet<'a> {
    pub api: &'a ApiServer,
    pub topo: &'a Topology,
    pub node: &'a Node,
}

/// A pod this kubelet runs; its containers are removed on drop.
pub struct RunningPod {
    pub name: String,
    pub namespace: String,
    pub ip: IpAddr,
    pub containers: Vec<Container>,
}

pub struct Container {
    /// podman's name for it.
    pub name: String,
    pub process: Process,
    /// The readiness probe's URL, if it has one.
    ready_url: Option<String>,
    grace: u64,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}

impl Container {
    /// Stops it as a kubelet does: SIGTERM, then SIGKILL after the pod's
    /// grace period. How long it took.
    pub fn stop(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let out = Command::new("podman")
            .args(["stop", "--time", &self.grace.to_string(), &self.name])
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "podman stop {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        self.process.wait_timeout(Duration::from_secs(10))?;
        Ok(started.elapsed())
    }

    /// What the container wrote.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

impl<'a> Kubelet<'a> {
    /// Runs `template` (a Deployment's or DaemonSet's `spec.template`) as
    /// pod `namespace/name` on this node, and waits until every container
    /// with a readiness probe passes it; the pod is then marked ready.
    pub fn run(
        &self,
        namespace: &str,
        name: &str,
        template: &Json,
        network: Network<'_>,
    ) -> Result<RunningPod> {
        let spec = &template["spec"];
        check_fields(spec, POD_FIELDS, &format!("pod {name}: spec"))?;
        if spec["automountServiceAccountToken"] != false {
            return Err(format!(
                "pod {name}: the ServiceAccount token must be declared as a volume (automountServiceAccountToken: false)"
            )
            .into());
        }
        let host_network = spec["hostNetwork"] == true;
        let (ip, netns) = match (&network, host_network) {
            (Network::Host, true) => (IpAddr::V4(self.node.addrs.ipv4), self.node.netns_path()),
            (Network::Pod(pod), false) => (IpAddr::V4(pod.ipv4), pod.netns_path()),
            _ => {
                return Err(format!(
                    "pod {name}: hostNetwork is {host_network}, but the test gave the other kind of network"
                )
                .into());
            }
        };
        let mut pod_spec = spec.clone();
        pod_spec["nodeName"] = json!(self.node.name());
        self.api.request(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/pods"),
            &json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": template["metadata"]["labels"],
                    "annotations": template["metadata"]["annotations"],
                },
                "spec": pod_spec,
            }),
        )?;
        self.set_status(namespace, name, ip, false)?;
        let dir = self
            .topo
            .scratch_dir()
            .join("kubelet")
            .join(format!("{namespace}-{name}"));
        let volumes = self.volumes(namespace, name, spec, &dir)?;
        let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        let mut containers = Vec::new();
        for container in spec["containers"].as_array().into_iter().flatten() {
            containers.push(self.start(
                namespace, name, spec, container, &volumes, &netns, ip, grace, &dir,
            )?);
        }
        for container in &mut containers {
            self.wait_ready(container)?;
        }
        self.set_status(namespace, name, ip, true)?;
        Ok(RunningPod {
            name: name.into(),
            namespace: namespace.into(),
            ip,
            containers,
        })
    }

    fn set_status(&self, namespace: &str, name: &str, ip: IpAddr, ready: bool) -> Result<()> {
        let ready = if ready { "True" } else { "False" };
        self.api.request(
            "PATCH",
            &format!("/api/v1/namespaces/{namespace}/pods/{name}/status"),
            &json!({"status": {
                "phase": "Running",
                "hostIP": self.node.addrs.ipv4.to_string(),
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}],
                "conditions": [{"type": "Ready", "status": ready}],
            }}),
        )?;
        Ok(())
    }

    /// Each volume of `spec` as a directory on this machine.
    fn volumes(
        &self,
        namespace: &str,
        pod: &str,
        spec: &Json,
        dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>> {
        let account = spec["serviceAccountName"].as_str().unwrap_or("default");
        let fs = NodeFs::of(self.topo, self.node)?;
        let mut made = Vec::new();
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or_default().to_string();
            let what = format!("pod {pod}: volume {name}");
            let out = dir.join("volumes").join(&name);
            let keys: Vec<&str> = volume
                .as_object()
                .map(|o| {
                    o.keys()
                        .map(String::as_str)
                        .filter(|k| *k != "name")
                        .collect()
                })
                .unwrap_or_default();
            let path = match keys.as_slice() {
                ["hostPath"] => {
                    let host = &volume["hostPath"];
                    let path = fs.resolve(host["path"].as_str().unwrap_or_default())?;
                    match host["type"].as_str().unwrap_or_default() {
                        "DirectoryOrCreate" => std::fs::create_dir_all(&path)?,
                        "Directory" if path.is_dir() => {}
                        "Directory" => {
                            return Err(
                                format!("{what}: {} is no directory", path.display()).into()
                            );
                        }
                        other => return Err(format!("{what}: hostPath type {other:?}").into()),
                    }
                    path
                }
                ["emptyDir"] => {
                    // A kubelet makes them writable by any user.
                    std::fs::create_dir_all(&out)?;
                    std::fs::set_permissions(
                        &out,
                        std::os::unix::fs::PermissionsExt::from_mode(0o777),
                    )?;
                    out
                }
                ["configMap"] => {
                    std::fs::create_dir_all(&out)?;
                    self.config_map_files(namespace, &volume["configMap"], &out, &what)?;
                    out
                }
                ["secret"] => {
                    std::fs::create_dir_all(&out)?;
                    let data = self.wait_object(
                        &format!(
                            "/api/v1/namespaces/{namespace}/secrets/{}",
                            volume["secret"]["secretName"].as_str().unwrap_or_default()
                        ),
                        &what,
                    )?;
                    for (key, value) in data["data"].as_object().into_iter().flatten() {
                        use base64::{Engine, engine::general_purpose::STANDARD};
                        let bytes = STANDARD.decode(value.as_str().unwrap_or_default())?;
                        std::fs::write(out.join(key), bytes)?;
                    }
                    out
                }
                ["projected"] => {
                    std::fs::create_dir_all(&out)?;
                    for source in volume["projected"]["sources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        self.project(namespace, pod, account, source, &out, &what)?;
                    }
                    out
                }
                other => return Err(format!("{what}: kind {other:?} not emulated").into()),
            };
            made.push((name, path));
        }
        Ok(made)
    }

    fn project(
        &self,
        namespace: &str,
        pod: &str,
        account: &str,
        source: &Json,
        out: &Path,
        what: &str,
    ) -> Result<()> {
        if let Some(token) = source.get("serviceAccountToken") {
            let audience = token["audience"].as_str().unwrap_or(AUDIENCE);
            let seconds = token["expirationSeconds"].as_u64().unwrap_or(3600);
            let token_text = self
                .api
                .token(namespace, account, Some(pod), audience, seconds)?;
            let path = token["path"]
                .as_str()
                .ok_or(format!("{what}: token path"))?;
            std::fs::write(out.join(path), token_text)?;
        } else if let Some(map) = source.get("configMap") {
            if map["name"] == "kube-root-ca.crt" {
                // What the controller-manager publishes in every namespace.
                let ca = std::fs::read_to_string(self.api.ca_file())?;
                self.api
                    .request(
                        "POST",
                        &format!("/api/v1/namespaces/{namespace}/configmaps"),
                        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": ca}}),
                    )
                    .or_else(|e| {
                        if e.to_string().contains("AlreadyExists") {
                            Ok(Json::Null)
                        } else {
                            Err(e)
                        }
                    })?;
            }
            self.config_map_files(namespace, map, out, what)?;
        } else if let Some(api) = source.get("downwardAPI") {
            for item in api["items"].as_array().into_iter().flatten() {
                let value = match item["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.namespace") => namespace.to_string(),
                    Some("metadata.name") => pod.to_string(),
                    other => return Err(format!("{what}: downwardAPI field {other:?}").into()),
                };
                let path = item["path"].as_str().ok_or(format!("{what}: item path"))?;
                std::fs::write(out.join(path), value)?;
            }
        } else {
            return Err(format!("{what}: projected source {source} not emulated").into());
        }
        Ok(())
    }

    /// A ConfigMap's keys (or the listed items) as files, once it exists
    /// (a kubelet holds the pod until then).
    fn config_map_files(&self, namespace: &str, map: &Json, out: &Path, what: &str) -> Result<()> {
        let name = map["name"].as_str().ok_or(format!("{what}: no name"))?;
        let object = self.wait_object(
            &format!("/api/v1/namespaces/{namespace}/configmaps/{name}"),
            what,
        )?;
        let data = &object["data"];
        match map["items"].as_array() {
            Some(items) => {
                for item in items {
                    let key = item["key"].as_str().unwrap_or_default();
                    let text = data[key]
                        .as_str()
                        .ok_or(format!("{what}: ConfigMap {name} has no key {key}"))?;
                    std::fs::write(out.join(item["path"].as_str().unwrap_or(key)), text)?;
                }
            }
            None => {
                for (key, text) in data.as_object().into_iter().flatten() {
                    std::fs::write(out.join(key), text.as_str().unwrap_or_default())?;
                }
            }
        }
        Ok(())
    }

    fn wait_object(&self, path: &str, what: &str) -> Result<Json> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.api.request("GET", path, &Json::Null) {
                Ok(object) => return Ok(object),
                Err(err) if Instant::now() > deadline => {
                    return Err(format!("{what}: {path} never appeared: {err}").into());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        namespace: &str,
        pod: &str,
        spec: &Json,
        container: &Json,
        volumes: &[(String, PathBuf)],
        netns: &Path,
        ip: IpAddr,
        grace: u64,
        dir: &Path,
    ) -> Result<Container> {
        let cname = container["name"].as_str().unwrap_or_default();
        let what = format!("pod {pod}: container {cname}");
        check_fields(container, CONTAINER_FIELDS, &what)?;
        if container["image"] != IMAGE_NAME {
            return Err(format!("{what}: image {} is not {IMAGE_NAME}", container["image"]).into());
        }
        let name = format!("{}-{pod}-{cname}", self.topo.run_id().name());
        let (nofile, nproc) = rlimits();
        let mut cmd = Command::new("podman");
        cmd.args([
            "run",
            "--rm",
            "--name",
            &name,
            "--runtime",
            "runc",
            "--pull",
            "never",
        ])
        .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
        .arg(format!("--ulimit=nproc={nproc}:{nproc}"))
        .arg(format!("--network=ns:{}", netns.display()))
        // Kubernetes mounts no /etc/hosts entries of its own making.
        .arg("--no-hosts");
        // Environment: the kubelet's own, then the container's.
        let mut env: Vec<(String, String)> = vec![
            (
                "KUBERNETES_SERVICE_HOST".into(),
                self.api.address.ip().to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                self.api.address.port().to_string(),
            ),
        ];
        for var in container["env"].as_array().into_iter().flatten() {
            let key = var["name"].as_str().unwrap_or_default().to_string();
            let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Json::String(v), _) => v.clone(),
                (_, Json::String(field)) => match field.as_str() {
                    "spec.nodeName" => self.node.name().to_string(),
                    "metadata.namespace" => namespace.to_string(),
                    "metadata.name" => pod.to_string(),
                    "status.podIP" => ip.to_string(),
                    other => return Err(format!("{what}: env {key} from {other}").into()),
                },
                _ => return Err(format!("{what}: env {key}: {var}").into()),
            };
            env.push((key, value));
        }
        for (key, value) in &env {
            cmd.arg(format!("--env={key}={value}"));
        }
        security(
            &mut cmd,
            &spec["securityContext"],
            &container["securityContext"],
            &what,
        )?;
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume = mount["name"].as_str().unwrap_or_default();
            let source = volumes
                .iter()
                .find(|(n, _)| n == volume)
                .map(|(_, p)| p)
                .ok_or(format!("{what}: no volume {volume}"))?;
            if mount.get("subPath").is_some() {
                return Err(format!("{what}: subPath not emulated").into());
            }
            let mut options = vec![if mount["readOnly"] == true {
                "ro"
            } else {
                "rw"
            }];
            match mount["mountPropagation"].as_str() {
                None | Some("None") => {}
                Some("HostToContainer") => options.push("rslave"),
                Some("Bidirectional") => options.push("rshared"),
                Some(other) => return Err(format!("{what}: mountPropagation {other}").into()),
            }
            cmd.arg(format!(
                "--volume={}:{}:{}",
                source.display(),
                mount["mountPath"].as_str().unwrap_or_default(),
                options.join(",")
            ));
        }
        let expand = |arg: &Json| -> String {
            let mut text = arg.as_str().unwrap_or_default().to_string();
            for (key, value) in &env {
                text = text.replace(&format!("$({key})"), value);
            }
            text
        };
        if let Some(command) = container["command"].as_array() {
            let command: Vec<String> = command.iter().map(expand).collect();
            cmd.arg(format!("--entrypoint={}", serde_json::to_string(&command)?));
        }
        cmd.arg(IMAGE_NAME);
        cmd.args(
            container["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(expand),
        );
        let process = Process::spawn_logged(cmd, &format!("podman {name}"), dir)?;
        let probe = &container["readinessProbe"]["httpGet"];
        let ready_url = probe.is_object().then(|| {
            format!(
                "http://{}:{}{}",
                match ip {
                    IpAddr::V6(v6) => format!("[{v6}]"),
                    IpAddr::V4(v4) => v4.to_string(),
                },
                probe["port"],
                probe["path"].as_str().unwrap_or("/")
            )
        });
        Ok(Container {
            name,
            process,
            ready_url,
            grace,
        })
    }

    /// Runs the readiness probe from the node until it passes.
    pub fn wait_ready(&self, container: &mut Container) -> Result<()> {
        let Some(url) = container.ready_url.clone() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.node.run(
                &["curl", "-sf", "--max-time", "2", &url],
                Duration::from_secs(5),
            )?;
            if out.status.success() {
                return Ok(());
            }
            if let Some(status) = container.process.wait_timeout(Duration::ZERO)? {
                return Err(format!(
                    "container {} exited ({status}):\n{}",
                    container.name,
                    container.log()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "container {} not ready at {url} after 90 s:\n{}",
                    container.name,
                    container.log()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The pod's and the container's security settings as podman flags.
fn security(cmd: &mut Command, pod: &Json, container: &Json, what: &str) -> Result<()> {
    let field = |name: &str| -> &Json {
        match &container[name] {
            Json::Null => &pod[name],
            set => set,
        }
    };
    if let Some(user) = field("runAsUser").as_u64() {
        let group = field("runAsGroup").as_u64().unwrap_or(user);
        cmd.arg(format!("--user={user}:{group}"));
    }
    if field("runAsNonRoot") == true && field("runAsUser").as_u64().unwrap_or(0) == 0 {
        return Err(format!("{what}: runAsNonRoot without a non-zero runAsUser").into());
    }
    if container["privileged"] == true {
        cmd.arg("--privileged");
    }
    if container["readOnlyRootFilesystem"] == true {
        cmd.arg("--read-only");
    }
    if container["allowPrivilegeEscalation"] == false {
        cmd.arg("--security-opt=no-new-privileges");
    }
    match field("seccompProfile")["type"].as_str() {
        None | Some("RuntimeDefault") => {}
        Some("Unconfined") => {
            cmd.arg("--security-opt=seccomp=unconfined");
        }
        Some(other) => return Err(format!("{what}: seccompProfile {other}").into()),
    }
    let caps = &container["capabilities"];
    for cap in caps["drop"].as_array().into_iter().flatten() {
        cmd.arg(format!("--cap-drop={}", cap.as_str().unwrap_or_default()));
    }
    for cap in caps["add"].as_array().into_iter().flatten() {
        cmd.arg(format!(
            "--cap-add=CAP_{}",
            cap.as_str().unwrap_or_default()
        ));
    }
    Ok(())
}

fn check_fields(object: &Json, known: &[&str], what: &str) -> Result<()> {
    for key in object.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !known.contains(&key.as_str()) {
            return Err(format!("{what}: field {key} is not emulated by the test kubelet").into());
        }
    }
    Ok(())
}

/// podman's rlimits: the host's hard limits, and no more than runc
/// manages to set here without CAP_SYS_RESOURCE.
fn rlimits() -> (u64, u64) {
    let hard = |resource| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        unsafe { libc::getrlimit(resource, &mut limit) };
        limit.rlim_max
    };
    (
        hard(libc::RLIMIT_NOFILE).min(1 << 20),
        hard(libc::RLIMIT_NPROC).min(32768),
    )
}

/// Loads the image archive into podman's store (idempotent), and removes
/// the containers of test runs whose process died without removing them.
pub fn load_image(archive: &Path) -> Result<()> {
    let names = Command::new("podman")
        .args(["ps", "--all", "--format", "{{.Names}}"])
        .output()?;
    for name in String::from_utf8_lossy(&names.stdout).lines() {
        if RunId::parse(name).is_some_and(|(run, _)| !run.owner_alive()) {
            let _ = Command::new("podman")
                .args(["rm", "--force", "--time", "0", name])
                .output();
        }
    }
    if !archive.exists() {
        return Err(format!(
            "{} is missing: run `cargo xtask image` (or `cargo xtask test`)",
            archive.display()
        )
        .into());
    }
    let mut cmd = Command::new("podman");
    cmd.args(["load", "--quiet", "--input"]).arg(archive);
    let out = process::run(cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!("podman load: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

//! Keeps each waypoint Gateway's objects as [`crate::objects`] renders
//! them (server-side apply, so a hand edit is put back and nothing else of
//! the object is touched) and writes the Gateway's status; the sweep
//! removes what belonged to Gateways that are gone.
use std::{collections::HashSet, fmt::Debug, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service, ServiceAccount},
        rbac::v1::ClusterRoleBinding,
    },
    jiff,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        watcher::{self, Config as WatchConfig},
    },
};
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};
use tracing::{info, warn};

use crate::{
    metrics::Metrics,
    objects::{
        MANAGED, MANAGER, MESH, ROOTS, WAYPOINT_LABEL, WAYPOINT_NAMESPACE_LABEL, Waypoint,
        is_waypoint,
    },
    settings::{ObjectRef, Settings},
};

/// How often a programmed waypoint is looked at again without a change.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a failed or waiting one is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How often objects of Gateways that are gone are looked for: a deleted
/// Gateway is never reconciled, and a Gateway that changed class leaves
/// what it had. (In a cluster the garbage collector removes the owned
/// ones first; the ClusterRoleBinding, cluster-scoped, only the sweep.)
const SWEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

pub struct Context {
    pub client: Client,
    pub gateways: ApiResource,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
}

/// Runs the controller and the sweep until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let managed = WatchConfig::default().labels(&format!("{}={}", MANAGED.0, MANAGED.1));
    // Every waypoint is brought up to date when the CA's roots or the mesh
    // config change.
    let changed = |source: &ObjectRef| {
        watcher::watcher(
            Api::<ConfigMap>::namespaced(client.clone(), &source.namespace),
            WatchConfig::default().fields(&format!("metadata.name={}", source.name)),
        )
        .filter_map(|event| async move { event.ok().map(|_| ()) })
        .boxed()
    };
    let mut sources = vec![changed(&ctx.settings.roots_config_map)];
    if let Some(mesh) = &ctx.settings.mesh_config_map {
        sources.push(changed(mesh));
    }
    let roots_changed = futures::stream::select_all(sources);
    let controller = Controller::new_with(
        Api::<DynamicObject>::all_with(client.clone(), &ctx.gateways),
        WatchConfig::default(),
        ctx.gateways.clone(),
    )
    .owns(Api::<Deployment>::all(client.clone()), managed.clone())
    .owns(Api::<Service>::all(client.clone()), managed.clone())
    .owns(Api::<ServiceAccount>::all(client.clone()), managed)
    .reconcile_all_on(roots_changed);
    tokio::spawn(sweep(ctx.clone()));
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The ConfigMap a waypoint's pods mount for `source`: `source` itself in
/// its own namespace, else a copy named `copy` (made or brought up to
/// date); and its data. `None` while `source` does not exist.
async fn copied(
    client: &Client,
    source: &ObjectRef,
    waypoint: &Waypoint,
    copy: &str,
    at: &str,
) -> Result<Option<(String, Json)>, Error> {
    let found = Api::<ConfigMap>::namespaced(client.clone(), &source.namespace)
        .get_opt(&source.name)
        .await
        .map_err(kube(format!(
            "reading ConfigMap {}/{}",
            source.namespace, source.name
        )))?;
    let Some(found) = found else {
        return Ok(None);
    };
    let data = serde_json::to_value(&found.data).unwrap_or_default();
    if source.namespace == waypoint.namespace {
        return Ok(Some((source.name.clone(), data)));
    }
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &waypoint.namespace),
        copy,
        &waypoint.copy(copy, &data),
        at,
    )
    .await?;
    Ok(Some((copy.to_string(), data)))
}

/// Accepted, not yet programmed: `why`; tried again later.
async fn pending(
    gateways: &Api<DynamicObject>,
    waypoint: &Waypoint,
    old: &Json,
    generation: i64,
    why: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let status = json!({"conditions": [
        condition(old, generation, "Accepted", true, "Accepted", "Resource accepted"),
        condition(old, generation, "Programmed", false, "Pending", why),
    ]});
    write_status(gateways, &waypoint.name, old, status).await?;
    ctx.metrics.reconciled("waiting");
    Ok(Action::requeue(RETRY))
}

fn error_policy(gateway: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconciled("error");
    warn!(gateway = %format!("{}/{}", gateway.namespace().unwrap_or_default(), gateway.name_any()), %error, "reconciling the waypoint failed; trying again");
    Action::requeue(RETRY)
}

async fn reconcile(gateway: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let object = serde_json::to_value(gateway.as_ref()).unwrap_or_default();
    if !is_waypoint(&object) {
        return Ok(Action::await_change());
    }
    let namespace = gateway.namespace().unwrap_or_default();
    let gateways =
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &namespace, &ctx.gateways);
    let generation = gateway.meta().generation.unwrap_or_default();
    let old = &object["status"];
    let waypoint = match Waypoint::read(&object) {
        Ok(w) => w,
        Err(why) => {
            // What it had stays as it was (the last good); the status says
            // why the change is not taken.
            ctx.metrics.reconciled("invalid");
            let status = json!({"conditions": [
                condition(old, generation, "Accepted", false, "Invalid", &why),
                condition(old, generation, "Programmed", false, "Invalid", &why),
            ]});
            write_status(&gateways, &gateway.name_any(), old, status).await?;
            return Ok(Action::await_change());
        }
    };
    let client = &ctx.client;
    let settings = &ctx.settings;
    let at = format!("waypoint {namespace}/{}", waypoint.name);
    let roots = &settings.roots_config_map;
    let Some((mount, _)) = copied(client, roots, &waypoint, ROOTS, &at).await? else {
        let why = format!(
            "the CA has not published its roots yet (ConfigMap {}/{})",
            roots.namespace, roots.name
        );
        return pending(&gateways, &waypoint, old, generation, &why, &ctx).await;
    };
    let mesh = match &settings.mesh_config_map {
        None => None,
        Some(source) => match copied(client, source, &waypoint, MESH, &at).await? {
            Some((name, data)) => {
                // A mesh config the waypoint would refuse keeps it from
                // starting: say so here, naming the field.
                let text = data["mesh"].as_str().unwrap_or_default();
                if let Err(why) = strait_config::mesh_config::MeshConfig::parse(text) {
                    let why = format!(
                        "ConfigMap {}/{} key mesh: {why}",
                        source.namespace, source.name
                    );
                    return pending(&gateways, &waypoint, old, generation, &why, &ctx).await;
                }
                Some(name)
            }
            None => {
                let why = format!(
                    "the mesh config is not published yet (ConfigMap {}/{})",
                    source.namespace, source.name
                );
                return pending(&gateways, &waypoint, old, generation, &why, &ctx).await;
            }
        },
    };
    if waypoint.own_account {
        apply(
            &Api::<ServiceAccount>::namespaced(client.clone(), &namespace),
            &waypoint.service_account,
            &waypoint.service_account(),
            &at,
        )
        .await?;
    }
    apply(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        &waypoint.binding_name(settings),
        &waypoint.cluster_role_binding(settings),
        &at,
    )
    .await?;
    let service = apply(
        &Api::<Service>::namespaced(client.clone(), &namespace),
        &waypoint.name,
        &waypoint.service(),
        &at,
    )
    .await?;
    apply(
        &Api::<Deployment>::namespaced(client.clone(), &namespace),
        &waypoint.name,
        &waypoint.deployment(settings, &mount, mesh.as_deref()),
        &at,
    )
    .await?;
    let cluster_ips: Vec<String> = service
        .spec
        .and_then(|s| s.cluster_ips.or(s.cluster_ip.map(|ip| vec![ip])))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect();
    let host = format!(
        "{}.{namespace}.svc.{}:{}",
        waypoint.name,
        strait_config::CLUSTER_DOMAIN,
        waypoint.port
    );
    let programmed = if cluster_ips.is_empty() {
        condition(
            old,
            generation,
            "Programmed",
            false,
            "AddressNotAssigned",
            &format!("Service {host} has no cluster IP yet"),
        )
    } else {
        condition(
            old,
            generation,
            "Programmed",
            true,
            "Programmed",
            &format!("Resource programmed, assigned to service(s) {host}"),
        )
    };
    let addresses: Vec<Json> = cluster_ips
        .iter()
        .map(|ip| json!({"type": "IPAddress", "value": ip}))
        .collect();
    let status = json!({
        "addresses": addresses,
        "conditions": [
            condition(old, generation, "Accepted", true, "Accepted", "Resource accepted"),
            programmed,
        ],
    });
    if write_status(&gateways, &waypoint.name, old, status).await? {
        info!(waypoint = %format!("{namespace}/{}", waypoint.name), addresses = ?cluster_ips, "waypoint deployed");
    }
    ctx.metrics.reconciled("applied");
    Ok(if cluster_ips.is_empty() {
        Action::requeue(RETRY)
    } else {
        Action::requeue(RESYNC)
    })
}

async fn apply<K>(api: &Api<K>, name: &str, object: &Json, at: &str) -> Result<K, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(kube(format!(
        "{at}: applying {} {name}",
        K::kind(&K::DynamicType::default())
    )))
}

/// A Gateway API condition; its transition time is kept while its status
/// stays what it was.
fn condition(
    old: &Json,
    generation: i64,
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
) -> Json {
    let status = if ok { "True" } else { "False" };
    let since = old["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
        .unwrap_or_else(now);
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    })
}

fn now() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

/// Writes `status` unless it is what the Gateway has (a write is a change
/// the controller would be woken by). Whether it wrote.
async fn write_status(
    gateways: &Api<DynamicObject>,
    name: &str,
    old: &Json,
    status: Json,
) -> Result<bool, Error> {
    let same =
        |key: &str| old[key] == status[key] || (old[key].is_null() && status[key] == json!([]));
    if same("conditions") && same("addresses") {
        return Ok(false);
    }
    gateways
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .map_err(kube(format!("writing the status of Gateway {name}")))?;
    Ok(true)
}

/// Removes, every [`SWEEP`], what the controller made for Gateways that are
/// no longer waypoints (deleted, or of another class now). The Gateways are
/// listed afresh each time: what is removed is decided on a complete list,
/// never on a watch that has not caught up.
async fn sweep(ctx: Arc<Context>) {
    let gateways = Api::<DynamicObject>::all_with(ctx.client.clone(), &ctx.gateways);
    loop {
        let listed = gateways
            .list(&ListParams::default())
            .await
            .map_err(kube("listing Gateways"));
        let swept = match listed {
            Ok(list) => {
                let waypoints: HashSet<(String, String)> = list
                    .items
                    .iter()
                    .filter(|g| serde_json::to_value(g).is_ok_and(|g| is_waypoint(&g)))
                    .map(|g| (g.namespace().unwrap_or_default(), g.name_any()))
                    .collect();
                sweep_once(&ctx, &waypoints).await
            }
            Err(e) => Err(e),
        };
        if let Err(error) = swept {
            warn!(%error, "sweeping the objects of removed waypoints");
        }
        tokio::time::sleep(SWEEP).await;
    }
}

async fn sweep_once(ctx: &Context, waypoints: &HashSet<(String, String)>) -> Result<(), Error> {
    let client = &ctx.client;
    let gone = |namespace: &str, labels: &std::collections::BTreeMap<String, String>| {
        labels
            .get(WAYPOINT_LABEL)
            .is_some_and(|name| !waypoints.contains(&(namespace.to_string(), name.clone())))
    };
    let has_waypoint = |namespace: &str| waypoints.iter().any(|(ns, _)| ns == namespace);
    let managed = ListParams::default().labels(&format!("{}={}", MANAGED.0, MANAGED.1));
    for binding in Api::<ClusterRoleBinding>::all(client.clone())
        .list_metadata(&managed)
        .await
        .map_err(kube("listing ClusterRoleBindings"))?
    {
        let labels = binding.labels();
        let namespace = labels
            .get(WAYPOINT_NAMESPACE_LABEL)
            .cloned()
            .unwrap_or_default();
        if gone(&namespace, labels) {
            remove(
                &Api::<ClusterRoleBinding>::all(client.clone()),
                &binding.name_any(),
                ctx,
            )
            .await?;
        }
    }
    macro_rules! namespaced {
        ($kind:ty, $keep:expr) => {
            for object in Api::<$kind>::all(client.clone())
                .list_metadata(&managed)
                .await
                .map_err(kube(concat!("listing ", stringify!($kind))))?
            {
                let namespace = object.namespace().unwrap_or_default();
                let keep: &dyn Fn(&str, &std::collections::BTreeMap<String, String>) -> bool =
                    &$keep;
                if !keep(&namespace, object.labels()) {
                    remove(
                        &Api::<$kind>::namespaced(client.clone(), &namespace),
                        &object.name_any(),
                        ctx,
                    )
                    .await?;
                }
            }
        };
    }
    namespaced!(Deployment, |ns, labels| !gone(ns, labels));
    namespaced!(Service, |ns, labels| !gone(ns, labels));
    namespaced!(ServiceAccount, |ns, labels| !gone(ns, labels));
    namespaced!(ConfigMap, |ns, _| has_waypoint(ns));
    Ok(())
}

async fn remove<K>(api: &Api<K>, name: &str, ctx: &Context) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            ctx.metrics.swept(&kind);
            info!(kind, name, "removed: its waypoint is gone");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            what: format!("deleting {kind} {name}"),
            source,
        }),
    }
}

//! The checks every provisioner passes (the fake here; `docker` and the
//! shipped `exec` example against the real engine and processes in the
//! binary's integration tests).

use crate::{MachineRequest, ProviderMachine, Provisioner};
use shepherd_core::MachineShape;
use std::collections::BTreeMap;

/// A request for a small machine `machine_id` of cluster `cluster`, whose
/// agent joins a server that is not there (it keeps trying, harmlessly).
pub fn request(cluster: &str, machine_id: &str) -> MachineRequest {
    MachineRequest {
        cluster: cluster.into(),
        machine_id: machine_id.into(),
        pool: "conformance".into(),
        shape: MachineShape { cpu_millicores: 500, memory_mib: 256, max_tasks: 2, labels: BTreeMap::new() },
        labels: BTreeMap::from([("pool".to_string(), "conformance".to_string()), ("machine".to_string(), machine_id.to_string())]),
        join_urls: vec!["http://127.0.0.1:9".into()],
        join_token: "conformance-token".into(),
    }
}

fn ids(mut machines: Vec<ProviderMachine>) -> Vec<String> {
    machines.sort_by(|a, b| a.machine_id.cmp(&b.machine_id));
    machines.into_iter().map(|m| m.machine_id).collect()
}

/// Create, repeat a create, list, destroy, destroy again, and clusters
/// kept apart. Leaves nothing behind when it passes.
pub async fn check(p: &dyn Provisioner, cluster: &str) {
    let other = format!("{cluster}-other");
    assert!(p.list(cluster).await.expect("list").is_empty(), "{cluster} starts empty");
    let a = p.create(&request(cluster, "m-a")).await.expect("create m-a");
    let b = p.create(&request(cluster, "m-b")).await.expect("create m-b");
    assert!(!a.is_empty() && a != b, "provider ids {a:?} {b:?}");
    // Repeated (a server that crashed mid-create asks again): the same machine.
    assert_eq!(p.create(&request(cluster, "m-a")).await.expect("create m-a again"), a);
    let listed = p.list(cluster).await.expect("list");
    assert_eq!(ids(listed.clone()), ["m-a", "m-b"]);
    assert!(listed.iter().any(|m| m.machine_id == "m-a" && m.provider_id == a), "{listed:?}");
    assert!(p.list(&other).await.expect("list another cluster").is_empty(), "another cluster's list is its own");

    let machine_a = listed.iter().find(|m| m.machine_id == "m-a").cloned().expect("m-a listed");
    p.destroy(cluster, &machine_a).await.expect("destroy m-a");
    p.destroy(cluster, &machine_a).await.expect("destroying a gone machine succeeds");
    assert_eq!(ids(p.list(cluster).await.expect("list")), ["m-b"]);
    for m in p.list(cluster).await.expect("list") {
        p.destroy(cluster, &m).await.expect("destroy");
    }
    assert!(p.list(cluster).await.expect("list").is_empty());
}

//! The committed CRDs under deploy/crds/ are exactly what the types generate, and the
//! kustomization there installs exactly those files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use dnsfence_k8s::crd_files;

#[test]
fn committed_crds_match_the_types() {
    let dir = common::repo_root().join("deploy/crds");
    let files = crd_files().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f.file_name.as_str()).collect();
    assert_eq!(names, [common::ANP_CRD, common::CNP_CRD]);
    for file in &files {
        let path = dir.join(&file.file_name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != file.yaml {
            let first_difference = committed
                .lines()
                .zip(file.yaml.lines())
                .position(|(a, b)| a != b)
                .map_or_else(
                    || "one file is a prefix of the other".to_string(),
                    |n| format!("first difference at line {}", n + 1),
                );
            panic!(
                "deploy/crds/{} is not what the types in crates/k8s generate ({first_difference}): \
                 run `cargo run -p dnsfence-k8s --bin crdgen` and commit the result",
                file.file_name
            );
        }
    }
}

#[test]
fn the_crd_kustomization_lists_exactly_the_generated_files() {
    let kustomization =
        common::documents(&common::repo_root().join("deploy/crds/kustomization.yaml"));
    let resources: Vec<String> = kustomization[0]["resources"]
        .as_array()
        .expect("deploy/crds/kustomization.yaml has resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let generated: Vec<String> = crd_files()
        .unwrap()
        .into_iter()
        .map(|f| f.file_name)
        .collect();
    assert_eq!(resources, generated);
}

#[test]
fn crds_keep_the_eks_identity() {
    // Same group, kinds, scopes and short names as the EKS CRDs, or EKS manifests and
    // `kubectl get anp` would not work unchanged.
    let anp = common::documents(
        &common::repo_root()
            .join("deploy/crds")
            .join(common::ANP_CRD),
    );
    let cnp = common::documents(
        &common::repo_root()
            .join("deploy/crds")
            .join(common::CNP_CRD),
    );
    for (crd, name, kind, scope, short) in [
        (
            &anp[0],
            "applicationnetworkpolicies.networking.k8s.aws",
            "ApplicationNetworkPolicy",
            "Namespaced",
            "anp",
        ),
        (
            &cnp[0],
            "clusternetworkpolicies.networking.k8s.aws",
            "ClusterNetworkPolicy",
            "Cluster",
            "cnp",
        ),
    ] {
        assert_eq!(crd["metadata"]["name"], name);
        assert_eq!(crd["spec"]["group"], "networking.k8s.aws");
        assert_eq!(crd["spec"]["names"]["kind"], kind);
        assert_eq!(crd["spec"]["scope"], scope);
        assert_eq!(crd["spec"]["names"]["shortNames"][0], short);
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    }
}

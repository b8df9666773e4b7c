//! The custom resources shipped in deploy/ (the cluster overlay's own ClusterNetworkPolicy)
//! pass the CRDs' schemas and CEL rules, and the store's parser. scripts/validate-deploy.sh
//! checks the rendered overlays' schemas too, but cannot evaluate CEL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Crd, documents, parser_accepts};

fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            found.push(path);
        }
    }
}

#[test]
fn custom_resources_in_deploy_are_admitted_and_enforceable() {
    let deploy = common::repo_root().join("deploy");
    let mut files = Vec::new();
    yaml_files(&deploy, &mut files);
    files.sort();
    let anp = Crd::load(common::ANP_CRD);
    let cnp = Crd::load(common::CNP_CRD);
    let mut checked = 0;
    for file in files.iter().filter(|f| !f.starts_with(deploy.join("crds"))) {
        for document in documents(file) {
            if document["apiVersion"] != "networking.k8s.aws/v1alpha1" {
                continue;
            }
            let what = format!("{} ({})", file.display(), document["metadata"]["name"]);
            match document["kind"].as_str() {
                Some("ApplicationNetworkPolicy") => anp.assert_valid(&what, &document),
                Some("ClusterNetworkPolicy") => cnp.assert_valid(&what, &document),
                other => panic!("{what}: no CRD for kind {other:?}"),
            }
            parser_accepts(&document).unwrap_or_else(|e| panic!("{what}: {e}"));
            checked += 1;
        }
    }
    assert!(
        checked >= 1,
        "deploy/overlays/cluster ships a ClusterNetworkPolicy"
    );
}

#!/usr/bin/env bash
# Renders every kustomization under deploy/ with Debian 12's kubectl and validates the output
# offline: Kubernetes objects against the published schemas (PyPI kubernetes-validate, strict,
# for the oldest and newest Kubernetes versions we target), custom resources against the CRDs
# in deploy/crds (their CEL rules are checked by crates/k8s/tests/deploy_resources.rs).
#
# Installs what it needs, idempotently, under target/ (nothing system-wide but, as root, apt
# index updates and python3-venv if missing):
# - Debian's kubectl (package kubernetes-client: kubectl 1.20 with kustomize v2.0.3) is
#   downloaded with apt and unpacked into target/deploy-tools rather than installed: the
#   package would clash with another kubectl on the machine (/usr/bin/kubectl), and the
#   render must not depend on which one is there. If it cannot be had (no apt index, not
#   root), a kubectl on PATH is used instead.
# - kubernetes-validate (pinned) in the virtualenv target/deploy-venv.
# If a kubectl other than Debian's is on PATH, every kustomization is rendered with it too and
# the two renders must hold the same objects (the kustomizations are written for both).
#
# Works as root on a fresh Debian 12, and as any user once target/deploy-tools and
# target/deploy-venv exist (or a kubectl is on PATH and the venv can be created).
set -euo pipefail
cd "$(dirname "$0")/.."

# Kubernetes versions to validate against: the oldest we support (the EKS network policy APIs
# need 1.29) and the one the workspace's k8s-openapi is built for (Cargo.toml).
K8S_VERSIONS=(1.29.0 1.35.0)
KUBERNETES_VALIDATE_VERSION=1.37.0
TOOLS=target/deploy-tools
VENV=target/deploy-venv
RENDER=target/deploy-render
mkdir -p target

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---- Debian's kubectl --------------------------------------------------------------------
debian_kubectl="$TOOLS/usr/bin/kubectl"
if ! "$debian_kubectl" version --client >/dev/null 2>&1; then
  echo "==> fetching Debian's kubectl (package kubernetes-client) into $TOOLS"
  download=$(mktemp -d)
  fetch() { (cd "$download" && apt-get download -qq kubernetes-client >/dev/null 2>&1); }
  if ! fetch && is_root; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    fetch || true
  fi
  if ls "$download"/kubernetes-client_*.deb >/dev/null 2>&1; then
    rm -rf "$TOOLS"
    dpkg-deb -x "$download"/kubernetes-client_*.deb "$TOOLS"
  fi
  rm -rf "$download"
fi
path_kubectl=$(command -v kubectl || true)
if "$debian_kubectl" version --client >/dev/null 2>&1; then
  kubectl_main="$debian_kubectl"
elif [ -n "$path_kubectl" ]; then
  echo "note: Debian's kubectl could not be fetched (run once as root); using $path_kubectl"
  kubectl_main="$path_kubectl"
  path_kubectl=""
else
  echo "no kubectl: run this once as root (it fetches Debian's kubernetes-client), or install kubectl" >&2
  exit 1
fi
# A second, different kubectl to compare renders with.
if [ -n "$path_kubectl" ] && [ "$(realpath "$path_kubectl")" = "$(realpath "$kubectl_main")" ]; then
  path_kubectl=""
fi
version_of() { "$1" version --client 2>/dev/null | grep -o 'v[0-9][0-9.]*' | head -1; }

# ---- kubernetes-validate -------------------------------------------------------------------
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE_VERSION"; then
  echo "==> creating $VENV with kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    if is_root; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    else
      echo "python3 venv support missing: install python3-venv (as root)" >&2
      exit 1
    fi
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# ---- render and validate -------------------------------------------------------------------
rm -rf "$RENDER"
mkdir -p "$RENDER"
targets=(deploy/base)
for overlay in deploy/overlays/*/; do
  targets+=("${overlay%/}")
done
echo "==> rendering ${targets[*]} with kubectl $(version_of "$kubectl_main") ($kubectl_main)"
for target in "${targets[@]}"; do
  name=$(basename "$target")
  "$kubectl_main" kustomize "$target" >"$RENDER/$name.yaml"
  if [ -n "$path_kubectl" ]; then
    # Newer kubectl warns (on stderr) about the kustomize v2.0 fields; the objects count.
    "$path_kubectl" kustomize "$target" 2>/dev/null >"$RENDER/$name.other-kubectl.yaml"
  fi
done

other_version=""
[ -n "$path_kubectl" ] && other_version=$(version_of "$path_kubectl")
"$VENV/bin/python" - "$RENDER" "$other_version" "${targets[@]}" <<'PY'
"""Splits each render into Kubernetes objects and custom resources, validates the custom
resources against deploy/crds, compares with the other kubectl's render if there is one."""
import copy
import glob
import os
import sys

import jsonschema
import yaml

render_dir, other_version, targets = sys.argv[1], sys.argv[2], sys.argv[3:]


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def key(obj):
    meta = obj.get("metadata", {})
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def strict(schema):
    """What the API server makes of a CRD schema with strict field validation: unknown fields
    are errors, `set` lists have no duplicates; apiVersion/kind/metadata are implied."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict) and not node.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                node.setdefault("additionalProperties", False)
            if node.get("x-kubernetes-list-type") == "set":
                node["uniqueItems"] = True
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    schema["properties"].update(
        apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
    )
    return schema


crd_schemas = {}
for path in sorted(glob.glob("deploy/crds/*.yaml")):
    for crd in documents(path):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            api_version = f"{spec['group']}/{version['name']}"
            schema = strict(version["schema"]["openAPIV3Schema"])
            crd_schemas[(api_version, spec["names"]["kind"])] = jsonschema.Draft4Validator(schema)
custom_groups = {api_version.split("/")[0] for api_version, _ in crd_schemas}

failures = 0
for target in targets:
    name = os.path.basename(target)
    objects = documents(os.path.join(render_dir, f"{name}.yaml"))
    native, custom = [], []
    for obj in objects:
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        (custom if group in custom_groups else native).append(obj)
    with open(os.path.join(render_dir, f"{name}.native.yaml"), "w") as f:
        yaml.safe_dump_all(native, f, sort_keys=False)
    for obj in custom:
        validator = crd_schemas.get((obj["apiVersion"], obj["kind"]))
        label = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if validator is None:
            print(f"FAIL {label}: no CRD in deploy/crds for {obj['apiVersion']} {obj['kind']}")
            failures += 1
            continue
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
        for error in errors:
            path = ".".join(str(p) for p in error.path)
            print(f"FAIL {label}: {path}: {error.message}")
        failures += bool(errors)
        if not errors:
            print(f"ok   {label} against deploy/crds")
    print(f"ok   {name}: rendered {len(native)} Kubernetes objects, {len(custom)} custom resource(s)")
    other = os.path.join(render_dir, f"{name}.other-kubectl.yaml")
    if other_version and os.path.exists(other):
        mine = {key(o): o for o in objects}
        theirs = {key(o): o for o in documents(other)}
        differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        for k in differing:
            print(f"FAIL {name}: {k} differs between the kubectl {other_version} render and Debian's")
        failures += bool(differing)
        if not differing:
            print(f"ok   {name}: kubectl {other_version} renders the same {len(mine)} objects")
sys.exit(1 if failures else 0)
PY

for target in "${targets[@]}"; do
  name=$(basename "$target")
  for version in "${K8S_VERSIONS[@]}"; do
    # Strict: unknown fields are errors. A warning (an object whose kind has no schema) fails
    # too: custom resources were taken out above, so it can only be a typo.
    out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$RENDER/$name.native.yaml" 2>&1) || {
      echo "$out"
      echo "FAIL $name: kubernetes-validate $version" >&2
      exit 1
    }
    if [ -n "$out" ]; then
      echo "$out"
      echo "FAIL $name: kubernetes-validate $version reported warnings" >&2
      exit 1
    fi
    count=$(grep -c '^kind:' "$RENDER/$name.native.yaml" || true)
    echo "ok   $name: $count objects valid for Kubernetes $version (kubernetes-validate --strict)"
  done
done
echo "deploy manifests: every kustomization renders and validates"

"""deploy/k8s against real schemas. Every manifest, and what `kubectl kustomize` renders from
them, is valid Kubernetes 1.32 with unknown fields refused (as `kubectl apply` refuses them:
its field validation is strict), through kubernetes-validate's offline schemas. The KEDA
ScaledObject is checked against the schema in KEDA's own CRD (a fixture: KEDA is not part
of Kubernetes, so no Kubernetes schema knows it)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.services import unavailable
from tests.unit.deploy_checks import ROOT

try:
    import kubernetes_validate
except ImportError:  # an environment installed before it joined the dev extras
    unavailable("kubernetes-validate is not installed (pip install -e '.[dev]')")

K8S = ROOT / "deploy" / "k8s"
KEDA_CRD = ROOT / "tests" / "fixtures" / "keda-scaledobject-v2.20.2.yaml"
#: The Kubernetes release the manifests are written for (kubectl on our machines is 1.32).
KUBERNETES = "1.32.0"
#: The CEL rules in KEDA's CRD that JSON Schema cannot express, each checked by hand below.
KEDA_CEL_RULES = {"minReplicaCount must be less than or equal to maxReplicaCount"}

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kubernetes_manifests() -> list[Path]:
    skip = {"kustomization.yaml", "worker-keda.yaml"}
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in skip)


def kubernetes_errors(docs: list[Doc]) -> list[str]:
    """Why each document is not a valid Kubernetes object (strict), one line per document."""
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")
    return errors


def strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as the API server applies it under strict field validation: an
    object that declares its properties takes no others, unless it keeps unknown fields."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    return out


def keda() -> Doc:
    return load(KEDA_CRD)[0]


def keda_errors(doc: Doc) -> list[str]:
    """Why ``doc`` is not a ScaledObject KEDA's API server would accept."""
    crd = keda()
    errors = []
    if (
        doc.get("apiVersion") != f"{crd['group']}/{crd['version']}"
        or doc.get("kind") != crd["kind"]
    ):
        errors.append(f"not a {crd['group']}/{crd['version']} {crd['kind']}")
    schema = strict(crd["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
        errors.append(f"{'/'.join(str(p) for p in error.path)}: {error.message}")
    # KEDA_CEL_RULES, evaluated as the CRD's CEL does (a missing max counts as 100).
    spec = doc.get("spec", {})
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        errors.append("spec: minReplicaCount must be less than or equal to maxReplicaCount")
    return errors


@pytest.mark.parametrize("path", kubernetes_manifests(), ids=lambda p: p.name)
def test_every_manifest_is_valid_kubernetes(path: Path) -> None:
    """Catches: a misspelled or misplaced field (`terminationGracePeriodSecond`, a `replicas`
    under the pod spec), a number written as a string where Kubernetes wants an integer, a
    required field left out: any of which `kubectl apply` refuses."""
    assert kubernetes_errors(load(path)) == []


def test_kustomize_renders_every_listed_manifest_valid_and_in_the_namespace() -> None:
    """Catches: a kustomization.yaml that does not render (a resource listed that is missing
    or misspelled, a bad field), an object rendered outside the namespace `inferq`, and an
    object kustomize renders differently from its file into something Kubernetes refuses."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl is not installed (.ci/run installs kubernetes-client)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    listed = load(K8S / "kustomization.yaml")[0]["resources"]
    from_files = [doc for name in listed for doc in load(K8S / name)]
    names = lambda docs: sorted((d["kind"], d["metadata"]["name"]) for d in docs)  # noqa: E731
    assert names(rendered) == names(from_files)
    assert kubernetes_errors(rendered) == []
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "inferq", (doc["kind"], doc["metadata"])


def test_the_scaled_object_is_valid_against_kedas_crd() -> None:
    """Catches: a field KEDA does not have (`minReplicas`, `activationThreshold` at the wrong
    level), a trigger metadata value that is not a string (KEDA's CRD wants `"200"`, not
    200), a negative minReplicaCount, a minimum above the maximum."""
    spec_schema = keda()["openAPIV3Schema"]["properties"]["spec"]
    assert {rule["message"] for rule in spec_schema["x-kubernetes-validations"]} == (
        KEDA_CEL_RULES
    ), "the KEDA fixture has CEL rules keda_errors() does not check"
    (doc,) = load(K8S / "worker-keda.yaml")
    assert keda_errors(doc) == []


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        *parents, last = path.split(".")
        for part in parents:
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        doc[last] = value

    return change


@pytest.mark.parametrize(
    "change",
    [
        _set("spec.minReplicas", 0),
        _set("spec.triggers.0.metadata.listLength", 200),
        _set("spec.minReplicaCount", -1),
        _set("spec.minReplicaCount", 11),
        _set("spec.pollingInterval", "5"),
        _set("apiVersion", "keda.sh/v2"),
    ],
    ids=["unknown-field", "int-metadata", "negative-min", "min-above-max", "string-int", "api"],
)
def test_the_keda_check_refuses_a_broken_scaled_object(change: Callable[[Doc], None]) -> None:
    """Catches: a KEDA check that passes anything (a schema made lax, unknown fields let
    through, the CEL rule or the apiVersion not checked)."""
    (doc,) = load(K8S / "worker-keda.yaml")
    broken = copy.deepcopy(doc)
    change(broken)
    assert keda_errors(broken) != []


def test_the_kubernetes_check_refuses_a_misspelled_field() -> None:
    """Catches: a validation that is not strict (kubernetes-validate without strict=True lets
    an unknown field through, which `kubectl apply` refuses)."""
    (worker,) = load(K8S / "worker.yaml")
    broken = copy.deepcopy(worker)
    pod = broken["spec"]["template"]["spec"]
    pod["terminationGracePeriodSecond"] = pod.pop("terminationGracePeriodSeconds")
    assert kubernetes_errors([worker]) == []
    assert kubernetes_errors([broken]) == [
        "Deployment inferq-worker: spec/template/spec: Additional properties are not allowed "
        "('terminationGracePeriodSecond' was unexpected)"
    ]

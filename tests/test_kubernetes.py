"""deploy/kubernetes/: every manifest is valid for the Kubernetes version the README documents
(kubernetes-validate's schemas, strict: unknown fields are errors), the two custom resources
(PodMonitor, cert-manager's Certificate) against the parts of their CRD schemas they use, and
the pieces fit together (the TOML is a valid tlstrace configuration, probes and ports match
it, the securityContext is locked down)."""

from __future__ import annotations

import base64
import copy
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

from tlstrace.config.load import validate as validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
#: the Kubernetes version the README documents
KUBERNETES = "1.34.0"
README = (ROOT / "README.md").read_text()

#: The parts of the CRDs' openAPIV3Schema the manifests use (transcribed from the Prometheus
#: Operator's monitoring.coreos.com_podmonitors.yaml and cert-manager's
#: cert-manager.io_certificates.yaml, v1 both): kubernetes-validate has no schema for a custom
#: resource, so without these they would go unchecked. Unknown fields are errors here too.
_OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_SECRET_KEY = {
    "type": "object",
    "required": ["key"],
    "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
    "additionalProperties": False,
}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PodMonitor"},
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "required": ["selector"],
                "additionalProperties": False,
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matchLabels": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            }
                        },
                    },
                    "podMetricsEndpoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {
                                    "type": "string",
                                    "pattern": r"^(0|(([0-9]+)s)|(([0-9]+)m)|(([0-9]+)h))+$",
                                },
                                "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                                "authorization": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "type": {"type": "string"},
                                        "credentials": _SECRET_KEY,
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("cert-manager.io/v1", "Certificate"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Certificate"},
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "required": ["issuerRef", "secretName"],
                "additionalProperties": False,
                "properties": {
                    "secretName": {"type": "string"},
                    "dnsNames": {"type": "array", "items": {"type": "string"}},
                    "duration": {"type": "string"},
                    "renewBefore": {"type": "string"},
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        },
                    },
                    "usages": {
                        "type": "array",
                        "items": {
                            "enum": [
                                "signing",
                                "digital signature",
                                "content commitment",
                                "key encipherment",
                                "key agreement",
                                "data encipherment",
                                "cert sign",
                                "crl sign",
                                "encipher only",
                                "decipher only",
                                "any",
                                "server auth",
                                "client auth",
                                "code signing",
                                "email protection",
                                "s/mime",
                                "ipsec end system",
                                "ipsec tunnel",
                                "ipsec user",
                                "timestamping",
                                "ocsp signing",
                                "microsoft sgc",
                                "netscape sgc",
                            ]
                        },
                    },
                    "issuerRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string"},
                            "group": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def by_kind(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in manifests() if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def test_the_readme_documents_the_version_validated() -> None:
    assert f"Kubernetes {KUBERNETES.rsplit('.', 1)[0]}" in README


@pytest.mark.parametrize(
    ("name", "doc"), manifests(), ids=[f"{n}:{d['kind']}" for n, d in manifests()]
)
def test_every_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is None:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        return
    # kubernetes-validate knows no custom resource: it says so, and our schema checks it
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    jsonschema.validate(doc, crd)


def test_the_validation_catches_a_mistake() -> None:
    """The strict schemas refuse an unknown field and a wrong type (the test can fail)."""
    bad = copy.deepcopy(by_kind("Deployment"))
    bad["spec"]["template"]["spec"]["containers"][1]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)
    bad = copy.deepcopy(by_kind("Service"))
    bad["spec"]["ports"][0]["port"] = "5061"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)
    bad = copy.deepcopy(by_kind("PodMonitor"))
    bad["spec"]["podMetricsEndpoints"][0]["bearerTokenFile"] = "/x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, CRD_SCHEMAS["monitoring.coreos.com/v1", "PodMonitor"])


def test_the_kustomization_lists_the_manifests() -> None:
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed <= files
    # optional: the TLS secret (kubectl create secret tls, or cert-manager) and the Certificate
    assert files - listed == {"secret-tls.yaml", "certificate.yaml"}


def test_no_api_token_is_shipped() -> None:
    """The API token's Secret is generated from a file the operator writes (kept out of git):
    no placeholder token can be applied; the deployment and the PodMonitor name it."""
    for name, doc in manifests():
        assert doc["kind"] != "Secret" or doc.get("type") == "kubernetes.io/tls", name
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    (gen,) = kust["secretGenerator"]
    assert gen["files"] == ["token=api-token"] and "literals" not in gen
    assert gen["options"]["disableNameSuffixHash"] is True
    ref = {e["name"]: e for e in tlstrace_container()["env"]}["TLSTRACE_API_TOKEN"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": gen["name"], "key": "token"}
    assert "deploy/kubernetes/api-token" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_kustomization_renders_with_the_operators_token(tmp_path: Path) -> None:
    """`kubectl kustomize` with the token file written: a valid Secret named as the
    deployment and the PodMonitor expect, and nothing else changed in name."""
    shutil.copytree(DEPLOY, tmp_path / "k", ignore=shutil.ignore_patterns("api-token"))
    (tmp_path / "k" / "api-token").write_text("s3cret-token")
    out = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / "k")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "tlstrace-api"
    assert base64.b64decode(secret["data"]["token"]) == b"s3cret-token"
    kubernetes_validate.validate(secret, KUBERNETES, strict=True)
    assert {d["kind"] for d in docs} == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodMonitor",
    }


def tlstrace_container() -> dict[str, Any]:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "tlstrace")


def test_the_configmap_is_a_valid_tlstrace_configuration() -> None:
    data = tomllib.loads(by_kind("ConfigMap")["data"]["tlstrace.toml"])
    config = validate_config(data, "configmap.yaml")
    assert config.config_watch
    container = tlstrace_container()
    limit = float(container["resources"]["limits"]["cpu"])
    assert config.workers != "auto", "auto counts the node's cores, not the pod's quota"
    assert config.workers <= limit
    # the API port is the one the probes and the PodMonitor use
    api = next(p for p in container["ports"] if p["name"] == "api")
    assert config.api_address == ("0.0.0.0", api["containerPort"])
    sips = next(p for p in container["ports"] if p["name"] == "sips")
    assert config.listener[0].listen.port == sips["containerPort"]
    assert config.listener[0].backend is not None
    assert config.listener[0].backend.host == "127.0.0.1"
    # the certificate files are where the Secret is mounted
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    cert = config.server_domain[0].certificate
    assert cert is not None and str(cert).startswith(mounts["tls"]["mountPath"] + "/")
    assert str(config.state_dir).startswith(mounts["state"]["mountPath"])
    # shutdown fits in the grace period
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert config.shutdown_timeout + 5 < pod["terminationGracePeriodSeconds"]


def test_the_config_is_mounted_so_that_updates_arrive() -> None:
    container = tlstrace_container()
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    args = container["args"]
    assert args[args.index("--config") + 1] == mount["mountPath"] + "/tlstrace.toml"


def test_probes_resources_and_security() -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["runAsUser"] != 0, c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
    t = tlstrace_container()
    assert t["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # longer than the 2 s the supervisor gives a stuck worker (the default is 1 s)
    assert 3 <= t["readinessProbe"]["timeoutSeconds"] <= 5
    assert t["readinessProbe"]["periodSeconds"] > t["readinessProbe"]["timeoutSeconds"]
    assert t["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in t["env"]}
    ref = env["TLSTRACE_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    monitor = by_kind("PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert monitor["authorization"]["credentials"] == {"name": ref["name"], "key": ref["key"]}
    assert monitor["port"] == "api" and monitor["path"] == "/metrics"
    service = by_kind("Service")["spec"]
    assert service["ports"][0]["port"] == 5061 and service["ports"][0]["targetPort"] == "sips"
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert by_kind("PodMonitor")["spec"]["selector"]["matchLabels"].items() <= labels.items()

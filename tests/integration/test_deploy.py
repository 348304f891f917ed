"""The Helm chart renders, lints and validates; the rendered YAML says what matters; the Dockerfile lints."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository
CHART = ROOT / "deploy" / "helm" / "specdec"
VALUES = {
    "default": [],
    "split": ["--set", "topology=split"],
    "paired": ["--set", "topology=paired"],
    "shared": ["--set", "topology=shared"],
    "tls": ["--set", "tls.enabled=true", "--set", "tls.secretName=specdec-tls", "--set", "auth.enabled=true",
            "--set", "auth.secretName=specdec-tokens"],
    "metrics": ["--set", "metrics.serviceMonitor.enabled=true", "--set", "tracing.otlpEndpoint=http://jaeger:4317"],
}


@pytest.fixture(scope="module")
def helm() -> str:
    out = subprocess.run([str(ROOT / "scripts" / "fetch-helm")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def render(helm: str, *args: str) -> list[dict]:
    out = subprocess.run([helm, "template", "rel", str(CHART), "--namespace", "llm", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs: list[dict], kind: str, suffix: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix))


def containers(deployment: dict) -> dict:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def config(docs: list[dict], role: str) -> dict:
    return json.loads(find(docs, "ConfigMap", "-config")["data"][f"{role}.json"])


def test_lint_strict(helm):
    out = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", VALUES)
def test_renders_and_validates_against_kubernetes_schemas(helm, name, tmp_path):
    docs = render(helm, *VALUES[name])
    standard = [d for d in docs if d["apiVersion"] != "monitoring.coreos.com/v1"]  # CRDs have no upstream schema
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(standard))
    out = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for d in docs:
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "specdec" and labels["app.kubernetes.io/instance"] == "rel"


def test_gpu_requests_and_probes_on_every_container(helm):
    for name in ("split", "paired"):
        docs = render(helm, *VALUES[name])
        for d in (d for d in docs if d["kind"] == "Deployment"):
            for c in containers(d).values():
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert "grpc" in c[probe], (name, c["name"], probe)
                assert c["image"] == "ghcr.io/specdec/specdec:0.1.0"
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
                if c["name"] in ("target", "draft"):
                    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
                    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300
            assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_split_topology_routes_to_headless_services(helm):
    docs = render(helm, *VALUES["split"])
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"} == {
        "rel-specdec-orchestrator", "rel-specdec-target", "rel-specdec-draft"}
    for component in ("target", "draft"):
        assert find(docs, "Service", f"{component}-headless")["spec"]["clusterIP"] == "None"
    orch = config(docs, "orchestrator")
    assert orch["targets"] == ["dns:///rel-specdec-target-headless.llm.svc.cluster.local:50052"]
    assert orch["drafts"] == ["dns:///rel-specdec-draft-headless.llm.svc.cluster.local:50053"]
    assert "paired_draft" not in orch


def test_paired_topology_runs_the_draft_beside_the_target(helm):
    docs = render(helm, *VALUES["paired"])
    assert not [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-draft")]
    pod = containers(find(docs, "Deployment", "-target"))
    assert set(pod) == {"target", "draft"}
    gpus = sum(c["resources"]["limits"]["nvidia.com/gpu"] for c in pod.values())
    assert gpus == 2
    orch = config(docs, "orchestrator")
    assert orch["paired_draft"] == "127.0.0.1:50053" and "drafts" not in orch


def test_shared_topology_runs_the_draft_inside_the_target(helm):
    docs = render(helm, *VALUES["shared"])
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"} == {
        "rel-specdec-orchestrator", "rel-specdec-target"}
    assert not [d for d in docs if d["kind"] == "Service" and "draft" in d["metadata"]["name"]]
    pod = containers(find(docs, "Deployment", "-target"))
    assert set(pod) == {"target"} and pod["target"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert config(docs, "target")["own_draft"] == config(render(helm), "draft")["draft"]
    orch = config(docs, "orchestrator")
    assert "drafts" not in orch and "paired_draft" not in orch


def test_otlp_endpoint_and_service_monitor(helm):
    docs = render(helm, *VALUES["metrics"])
    for d in (d for d in docs if d["kind"] == "Deployment"):
        for c in containers(d).values():
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
            assert env["OTEL_SERVICE_NAME"] == f"specdec-{c['name']}"
    monitor = find(docs, "ServiceMonitor", "specdec")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert config(docs, "target")["metrics_port"] == 9102


def test_tls_and_token_secrets_are_mounted(helm):
    docs = render(helm, *VALUES["tls"])
    for d in (d for d in docs if d["kind"] == "Deployment"):
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "specdec-tls"
        for c in containers(d).values():
            assert "--tls-cert-file=/etc/specdec/tls/tls.crt" in c["args"]
            assert {"name": "tls", "mountPath": "/etc/specdec/tls", "readOnly": True} in c["volumeMounts"]
    orch = find(docs, "Deployment", "-orchestrator")
    assert {v["name"]: v for v in orch["spec"]["template"]["spec"]["volumes"]}["auth"]["secret"]["secretName"] == \
        "specdec-tokens"
    assert config(docs, "orchestrator")["api_token_file"] == "/etc/specdec/auth/tokens"
    test_pod = find(docs, "Pod", "test-client")
    assert "--api-token-file=/etc/specdec/auth/tokens" in test_pod["spec"]["containers"][0]["args"]


def test_pdbs_and_helm_test_pod(helm):
    docs = render(helm)
    pdbs = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert pdbs["rel-specdec-orchestrator"]["minAvailable"] == 1
    assert pdbs["rel-specdec-target"]["maxUnavailable"] == 1 and "rel-specdec-draft" in pdbs
    test_pod = find(docs, "Pod", "test-client")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["containers"][0]["args"][:1] == ["client"]
    assert "--address=rel-specdec-orchestrator:50051" in test_pod["spec"]["containers"][0]["args"]


def test_compiled_kernels_have_a_writable_cache_under_a_read_only_root(helm):
    """torch.compile and Triton write generated kernels at start: their caches, and /tmp, are writable mounts
    (an emptyDir by default, a PVC kept across pods when compileCache.pvc names one)."""
    for args, cache in (([], {"emptyDir": {"sizeLimit": "8Gi"}}),
                        (["--set", "compileCache.pvc=kernels"], {"persistentVolumeClaim": {"claimName": "kernels"}})):
        for topology in ("split", "paired", "shared"):
            docs = render(helm, *VALUES[topology], *args)
            for d in (d for d in docs if d["kind"] == "Deployment"):
                volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
                assert {k: v for k, v in volumes["compile-cache"].items() if k != "name"} == cache
                assert "emptyDir" in volumes["tmp"]
                for c in containers(d).values():
                    assert c["securityContext"]["readOnlyRootFilesystem"] is True
                    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
                    assert "/tmp" in writable, (topology, c["name"])
                    env = {e["name"]: e.get("value") for e in c["env"]}
                    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
                        assert any(env[var].startswith(path + "/") for path in writable - {"/tmp"}), (var, env[var])


@pytest.mark.parametrize("bad, message", [
    (["--set", "topology=mesh"], "topology"),
    (["--set", "target.replicas=two"], "replicas"),
    (["--set", "image.tag=latest"], "tag"),
    (["--set", "draft.proposer=magic"], "proposer"),
    (["--set", "orchestrator.k=99"], "k"),
    (["--set", "target.engineProcess=sometimes"], "engineProcess"),
    (["--set", "compileCache.sizeLimit=lots"], "sizeLimit"),
])
def test_schema_rejects_bad_values(helm, bad, message):
    out = subprocess.run([helm, "template", "rel", str(CHART), *bad], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_rendered_configs_are_accepted_by_specdec_serve(helm, tmp_path):
    """Every key the chart writes into the ConfigMap is a real `specdec serve` setting."""
    from specdec.cli import build_parser

    for values in ("tls", "shared"):
        docs = render(helm, *VALUES[values])
        for role in ("orchestrator", "target", "draft"):
            settings = config(docs, role)
            args = build_parser()[0].parse_args(["serve", role])
            assert not [k for k in settings if not hasattr(args, k)], (values, role)
    engine_process = {setting: config(render(helm, "--set", f"target.engineProcess={setting}"), "target")["engine_process"]
                      for setting in ("auto", "on", "off", "true", "false")}
    assert config(render(helm), "target")["engine_process"] == "auto"
    assert engine_process == {"auto": "auto", "on": "on", "off": "off", "true": "on", "false": "off"}


def test_dockerfile_lints_and_is_sane():
    dockerfile = ROOT / "deploy" / "docker" / "Dockerfile"
    hadolint = shutil.which("hadolint") or str(pathlib.Path(sys.executable).parent / "hadolint")
    out = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    text = dockerfile.read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert all(":" in f and not f.endswith(":latest") for f in froms if not f.startswith("base-"))
    assert "USER 10001" in text and 'ENTRYPOINT ["specdec"]' in text
    assert not [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    assert "COPY --from=build /wheels" in text  # installed as a wheel
    assert (ROOT / ".dockerignore").read_text().count("*.gguf") == 1  # models never go into the image

"""The shipped Kubernetes manifests and Dockerfile: valid against the Kubernetes schemas, probes on
grpc.health.v1, a termination grace that covers the server's drain, settings that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from grpcstack import server as server_module
from platform_services.settings import PlatformSettings

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# grpc probes are GA from 1.27; check the oldest supported and the newest schemas we have
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name} in {K8S}")


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    docs = manifests()
    kinds = {doc["kind"] for _, doc in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
    } <= kinds
    for _name, doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any schema error


def test_the_validator_catches_a_broken_manifest() -> None:
    deployment = find("Deployment", "platform")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    shipped = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == shipped
    kubectl = shutil.which("kubectl")
    if kubectl is not None:  # renders offline
        out = subprocess.run(
            [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("\nkind: ") + out.stdout.startswith("kind: ") >= len(shipped)


def container() -> dict[str, Any]:
    (c,) = find("Deployment", "platform")["spec"]["template"]["spec"]["containers"]
    return c


def config() -> dict[str, str]:
    return find("ConfigMap", "platform-config")["data"]


def test_probes_are_native_grpc_health_checks() -> None:
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    grpc_port = int(config()["GRPC_SERVER_PORT"])
    assert ports["grpc"] == grpc_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port
    # readiness follows the OCR service's health (engine present, not draining)
    assert c["readinessProbe"]["grpc"]["service"] == "ocr.v1.OCRService"
    # liveness must not kill a pod while it drains (health is NOT_SERVING for the whole drain)
    live = c["livenessProbe"]
    drain = float(config()["GRPC_SERVER_GRACE_PERIOD_SECONDS"])
    assert live["periodSeconds"] * live["failureThreshold"] > drain + server_drain_overhead()


def server_drain_overhead() -> float:
    """Seconds a stop takes beyond the grace period: the cancel wait, the GOAWAY linger and the
    close timeout of grpcstack.server (issue 12 may rename them: then update this test)."""
    linger = server_module.GOAWAY_LINGER_SECONDS
    close = server_module.CLOSE_TIMEOUT_SECONDS
    cancel_wait = 1.0  # AsyncBaseServer._stop waits this long for cancelled calls
    return float(linger + close + cancel_wait)


def test_termination_grace_covers_prestop_and_the_whole_drain() -> None:
    pod = find("Deployment", "platform")["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    grace = float(config()["GRPC_SERVER_GRACE_PERIOD_SECONDS"])
    needed = pre_stop + grace + server_drain_overhead()
    assert pod["terminationGracePeriodSeconds"] >= needed + 2, (
        f"kubelet would SIGKILL mid-drain: {pod['terminationGracePeriodSeconds']}s < {needed}s"
    )
    # and the default grace of the settings is what the ConfigMap says (no silent drift)
    assert PlatformSettings.model_fields["GRPC_SERVER_GRACE_PERIOD_SECONDS"].default == grace


def test_configmap_names_only_real_settings_and_loads() -> None:
    data = config()
    fields = set(PlatformSettings.model_fields)
    unknown = [k for k in data if k not in fields and not k.startswith("OTEL_")]
    assert not unknown, f"ConfigMap keys that are no setting: {unknown}"
    settings = PlatformSettings(_env_file=None, **{k: v for k, v in data.items() if k in fields})  # type: ignore[call-arg]
    assert settings.GRPC_SERVER_PORT == 50051
    assert settings.GRPC_RATE_LIMIT_BACKEND == "redis"


def test_scaling_objects_target_the_deployment() -> None:
    deployment = find("Deployment", "platform")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = find("HorizontalPodAutoscaler", "platform")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "platform",
    }
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] >= 2  # the PDB below can then always leave one pod serving
    pdb = find("PodDisruptionBudget", "platform")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    service = find("Service", "platform")["spec"]
    assert service["clusterIP"] == "None"  # headless: clients balance over pods themselves
    assert service["selector"].items() <= labels.items()
    c = container()
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_dockerfile_is_multi_stage_and_not_root() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, flags=re.MULTILINE)
    assert stages == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    assert "COPY --from=build /opt/venv" in runtime
    user = re.findall(r"^USER (\S+)$", runtime, flags=re.MULTILINE)
    assert user and not user[-1].startswith(("0", "root"))
    pod_user = find("Deployment", "platform")["spec"]["template"]["spec"]["securityContext"]
    assert user[-1].split(":")[0] == str(pod_user["runAsUser"])
    assert "pip" not in runtime  # nothing is built in the runtime stage
    assert 'ENTRYPOINT ["grpcstack", "serve"]' in runtime
    # the module the image serves exists
    cmd = re.search(r'^CMD \["([\w.]+):(\w+)"\]$', runtime, flags=re.MULTILINE)
    assert cmd is not None
    assert (ROOT / "src" / Path(*cmd.group(1).split("."))).with_suffix(".py").exists()


def image_env() -> dict[str, str]:
    """The runtime stage's ENV settings (continued lines joined)."""
    runtime = DOCKERFILE.read_text().split("AS runtime", 1)[1].replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", runtime, flags=re.MULTILINE):
        env.update(pair.split("=", 1) for pair in line.split())
    return env


def test_the_image_writes_only_to_tmp_and_installs_what_the_defaults_use() -> None:
    """uid 10001 cannot write the app directory, and the pod's root filesystem is read-only with
    an emptyDir on /tmp: every path the platform writes must be set under /tmp in the image."""
    env = image_env()
    written = {
        "PLATFORM_DATA_DIR",
        "DUCKDB_PATH",
        "PLATFORM_MONGO_STORAGE",
        "MARKET_DATA_PARQUET_ROOT",
    }
    relative = {
        name
        for name, field in PlatformSettings.model_fields.items()
        if str(field.default).startswith("data/")
    }
    assert relative == written | {"OCR_DATA_ROOT"}  # a new one must be placed here too
    for name in written:
        assert env[name].startswith("/tmp/"), name
    assert env["OCR_DATA_ROOT"].startswith("/data/")  # read only, mounted
    pod = find("Deployment", "platform")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    # the extras the platform's defaults import at start
    install = re.search(r"pip install '\.\[([\w,]+)\]'", DOCKERFILE.read_text())
    assert install is not None
    extras = set(install.group(1).split(","))
    if "all" in extras:
        extras |= {"redis", "mongo", "duckdb", "uvloop"}
    defaults = PlatformSettings(_env_file=None)  # type: ignore[call-arg]
    needed = {"platform", "redis", "mongo"}  # RapidOCR + embedded MongoDB; REDIS_URL in the pods
    if defaults.GRPC_CACHE_L3_ENABLED:
        needed.add("duckdb")
    if defaults.GRPC_HTTP_PORT is not None:
        needed.add("web")
    assert needed <= extras, needed - extras
    assert "opencv-python-headless" in DOCKERFILE.read_text()  # no libGL in a slim image


def docker_daemon() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    info = subprocess.run([docker, "info"], capture_output=True, timeout=20)
    return info.returncode == 0


@pytest.mark.skipif(not docker_daemon(), reason="no Docker daemon on this machine")
@pytest.mark.timeout(1800)
def test_dockerfile_builds() -> None:
    build = subprocess.run(
        ["docker", "build", "-f", str(DOCKERFILE), "-t", "grpcstack-platform:test", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    whoami = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "id", "grpcstack-platform:test", "-u"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert whoami.stdout.strip() == "10001"

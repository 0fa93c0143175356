"""What the packaging files say agrees with the gateway: the shutdown budget, ports, probes, selectors, the offline
profile's emulator URLs and keys, Prometheus' targets, and the image's health check (run against a real gateway)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from sttgate.config import Settings
from sttgate.emulators.app import EMULATORS, EmulatorConfig
from sttgate.providers import PROVIDERS
from sttgate.pull.manager import SHUTDOWN_WEBHOOK_SECONDS
from sttgate.store import Store
from tests.support.gateway import gateway_settings, running_gateway
from tests.support.servers import serve_app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(kind: str, name: str = "sttgate") -> dict[str, Any]:
    for path in K8S.glob("*.yaml"):
        for doc in load_all(path):
            if doc.get("kind") == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def configured(name: str) -> float:
    """A setting as the manifests run it: the ConfigMap's value, else the default in config.py."""
    data = resource("ConfigMap")["data"]
    value = data.get(f"STTGATE_{name.upper()}")
    default = Settings.model_fields[name].default
    return float(default if value is None else value)


def shutdown_budget() -> float:
    """The longest a gateway takes from SIGTERM to exit (docs/operations.md#kubernetes): the drain, each provider's
    graceful end and both hops' close, then the pull tasks' last webhooks and, in a database outage, the pending
    session ends."""
    drain = configured("drain_seconds")
    finish = configured("finish_timeout_seconds")
    close = configured("close_timeout_seconds")
    return drain + finish + close + SHUTDOWN_WEBHOOK_SECONDS + configured("shutdown_write_seconds")


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return dict(only)


def test_the_grace_period_outlasts_drain_finish_and_close() -> None:
    grace = pod_spec()["terminationGracePeriodSeconds"]
    drain, finish, close = (configured(n) for n in ("drain_seconds", "finish_timeout_seconds", "close_timeout_seconds"))
    assert (drain, finish, close) == (30, 2, 5)  # the defaults the comments in deployment.yaml spell out
    assert grace > drain + finish + close
    assert grace >= shutdown_budget() + 5, "5 s of margin for the process to flush and exit"


def test_compose_waits_as_long_as_kubernetes() -> None:
    grace = pod_spec()["terminationGracePeriodSeconds"]
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for name in ("gateway", "gateway-offline"):
        assert services[name]["stop_grace_period"] == f"{grace}s"
    assert f"-t {grace}" in (DEPLOY / "Dockerfile").read_text()


def test_probes_ports_and_selectors_agree() -> None:
    data = resource("ConfigMap")["data"]
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"http": int(data["STTGATE_PORT"]), "admin": int(data["STTGATE_ADMIN_PORT"])}
    assert data["STTGATE_HOST"] == data["STTGATE_ADMIN_HOST"] == "0.0.0.0"
    probes = container()
    assert probes["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert probes["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert probes["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    deployment = resource("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service, port in (("sttgate", "http"), ("sttgate-admin", "admin")):
        spec = resource("Service", service)["spec"]
        assert spec["selector"].items() <= labels.items()
        assert [p["targetPort"] for p in spec["ports"]] == [port]
    pdb = resource("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] < deployment["spec"]["replicas"]
    env_from = {next(iter(e)) + ":" + next(iter(e.values()))["name"] for e in container()["envFrom"]}
    assert env_from == {"configMapRef:sttgate", "secretRef:sttgate"}


def test_the_pod_runs_as_the_images_non_root_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user is not None and int(user.group(1)) != 0
    context = pod_spec()["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == int(user.group(1))
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml"}


def test_the_offline_profile_points_every_provider_at_the_emulators() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    emulate = services["emulators"]["command"]
    assert emulate[:1] == ["emulate"] and emulate[emulate.index("--host") + 1] == "0.0.0.0"
    port = emulate[emulate.index("--port") + 1]
    env = services["gateway-offline"]["environment"]
    assert set(services["emulators"]["profiles"]) == set(services["gateway-offline"]["profiles"]) == {"offline"}
    for name, provider in PROVIDERS.items():
        emulator = EMULATORS[name]
        assert env[f"STTGATE_{name.upper()}_URL"] == f"ws://emulators:{port}{emulator.ws_path}"
        assert env[provider.api_key_env] == emulator.api_keys(EmulatorConfig())[0]
    assert "profiles" not in services["gateway"]  # the plain `up` runs the real-provider gateway


def test_prometheus_scrapes_every_gateways_admin_listener() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    (job,) = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert job["metrics_path"] == "/metrics"
    gateways = {name for name, svc in compose.items() if svc.get("command") == ["serve"]}
    assert set(discovery["names"]) == gateways == {"gateway", "gateway-offline"}
    for name in gateways:
        env = compose[name]["environment"]
        assert (env["STTGATE_ADMIN_HOST"], int(env["STTGATE_ADMIN_PORT"])) == ("0.0.0.0", discovery["port"])


def test_the_image_context_holds_what_the_dockerfile_copies() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    sources = {source.rstrip("/") for line in copied for source in line.split()}
    assert sources == {"pyproject.toml", "README.md", "src", "deploy/healthcheck.py"}
    assert ignore[0] == "*" and {f"!{s}" if s != "src" else "!src/" for s in sources} <= set(ignore)


async def healthcheck(port: int) -> tuple[int, str]:
    """Run deploy/healthcheck.py as the image does, with ``STTGATE_PORT``; its exit status and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(DEPLOY / "healthcheck.py"), env={"STTGATE_PORT": str(port)}, stderr=subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


async def test_the_image_health_check_asks_healthz(store: Store) -> None:
    """deploy/healthcheck.py (the image's HEALTHCHECK) against a real gateway, and against a port nobody serves."""
    async with running_gateway(gateway_settings("ws://127.0.0.1:9"), store) as gateway:
        assert await healthcheck(gateway.port) == (0, "")
    async with serve_app(web.Application()) as base:
        pass
    status, stderr = await healthcheck(int(base.rsplit(":", 1)[1]))
    assert status == 1 and stderr.startswith("healthz: ")

"""The packaging, checked statically (nothing is built or run here: there is no container engine on the development
or CI machines; docs/operations.md#packaging): hadolint on the Dockerfile, the Kubernetes manifests against the
Kubernetes schemas shipped in ``kubernetes-validate``, the compose file against the compose-spec schema shipped in
``check-jsonschema``. All three run offline: the linter and the schemas come from the installed packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BIN = Path(sys.executable).parent
# Every file in deploy/k8s is a Kubernetes resource except kustomize's own (checked in test_manifests.py).
MANIFESTS = sorted(p for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")


def run(tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    executable = BIN / tool
    assert executable.exists(), f"{tool} is missing: it is a dev dependency (pip install -e '.[dev]')"
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=120, cwd=DEPLOY)


def test_the_dockerfile_passes_hadolint() -> None:
    result = run("hadolint", "--failure-threshold", "info", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kubernetes_manifests_match_the_kubernetes_schemas() -> None:
    assert {p.name for p in MANIFESTS} >= {
        "deployment.yaml",
        "service.yaml",
        "configmap.yaml",
        "poddisruptionbudget.yaml",
    }
    result = run("kubernetes-validate", "--strict", *MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout and "ERROR" not in result.stdout


def test_the_compose_file_matches_the_compose_spec() -> None:
    result = run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("tool", "args", "broken"),
    [
        ("hadolint", ("-",), "FROM python:latest\nRUN apt-get install curl\n"),
        (
            "kubernetes-validate",
            ("--strict",),
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: []}\n",
        ),
        ("check-jsonschema", ("--builtin-schema", "vendor.compose-spec"), "services:\n  x:\n    imagez: y\n"),
    ],
)
def test_each_check_fails_on_a_broken_file(tool: str, args: tuple[str, ...], broken: str, tmp_path: Path) -> None:
    """A check that passes everything proves nothing: each one refuses an obviously broken file."""
    if args == ("-",):
        executable = BIN / tool
        result = subprocess.run([executable, "-"], input=broken, capture_output=True, text=True, timeout=60)
    else:
        (path := tmp_path / "broken.yaml").write_text(broken)
        result = run(tool, *args, path)
    assert result.returncode != 0, result.stdout


def compose_command() -> list[str] | None:
    """``docker compose`` (the plugin) where it works, else the standalone ``docker-compose``; None without either."""
    for command in (["docker", "compose"], ["docker-compose"]):
        try:
            subprocess.run([*command, "version"], capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            continue
        return command
    return None


@pytest.mark.parametrize("profile", [[], ["--profile", "offline"]], ids=["default", "offline"])
def test_compose_resolves_the_file(profile: list[str]) -> None:
    """``compose config``: what ``up`` would run, resolved without a daemon (anchors, profiles, interpolation)."""
    command = compose_command()
    if command is None:
        pytest.skip("no `docker compose` plugin and no docker-compose (Debian: apt-get install docker-compose)")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        [*command, "-f", "compose.yaml", *profile, "config", "--services"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DEPLOY,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    everything = {"postgres", "gateway", "prometheus", "emulators", "gateway-offline"}
    # The plugin leaves out services of profiles not asked for; the standalone docker-compose 1.x lists them all.
    listed = set(result.stdout.split())
    assert listed == everything if profile else {"postgres", "gateway", "prometheus"} <= listed <= everything

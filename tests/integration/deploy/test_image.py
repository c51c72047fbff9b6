"""deploy/image/Dockerfile: what the chart expects of the image, and the wheel it installs.

No container engine runs on the test machines, so the image is not built here; these tests
pin everything the chart relies on (user, port, entrypoint, config path) and build the very
wheel the Dockerfile installs, checking it carries the whole package.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.deploy.chart import KubeTarget, render
from tests.support.tiers import tool_missing

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "deploy/image/Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_the_image_runs_as_the_charts_user_on_its_port(helm: str) -> None:
    final = dict(final_stage())
    pod = render(helm, {}).one("Deployment")["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert final["USER"] == f"{security['runAsUser']}:{security['runAsGroup']}"
    container = pod["containers"][0]
    ports = [p["containerPort"] for p in container["ports"]]
    assert int(final["EXPOSE"]) in ports
    assert final["ENTRYPOINT"] == '["vgate"]' and "command" not in container
    cmd = shlex.split(final["CMD"].strip("[]").replace(",", " "))
    assert cmd == container["args"]  # `docker run vgate` does what the pod does


def test_the_image_has_the_sleep_the_pre_stop_hook_runs_before_kubernetes_1_30(helm: str) -> None:
    """Before 1.30 the kubelet has no preStop sleep action, so the chart execs /bin/sleep in the
    container. The final stage is Debian slim, where coreutils (and so /bin/sleep) is an
    Essential package, and nothing in the Dockerfile removes it."""
    container = render(helm, {}, target=KubeTarget("1.29.0")).one("Deployment")["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "/bin/sleep"
    final = final_stage()
    base = final[0][1].split()[0]
    assert re.fullmatch(r"python:3\.\d+-slim-(bookworm|trixie)", base), base
    runs = " ".join(rest for word, rest in final if word == "RUN")
    assert not re.search(r"coreutils|/bin/sleep|\brm\b[^&]*/(usr/)?bin\b", runs), runs


def test_the_base_image_is_the_python_the_package_needs() -> None:
    bases = [rest.split()[0] for word, rest in instructions() if word == "FROM"]
    assert bases and all(b.startswith("python:3.11-") for b in bases)
    assert 'requires-python = ">=3.11"' in (ROOT / "pyproject.toml").read_text()


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    rules = [
        r
        for r in (ROOT / ".dockerignore").read_text().splitlines()
        if r.strip() and not r.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.removeprefix("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    copied = [
        rest.split()[:-1]
        for word, rest in instructions()
        if word == "COPY" and not rest.startswith("--from")
    ]
    sources = [s for group in copied for s in group]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert included(source), f"{source} is copied but .dockerignore leaves it out"
    assert not included("tests/conftest.py") and not included(".git/config")
    assert not included("deploy/dev-idp/node_modules/x.js")


def test_helm_in_the_image_is_the_pinned_one() -> None:
    text = DOCKERFILE.read_text()
    assert "python /tmp/install_helm.py /out" in text
    assert "HELM_SHA256 = " in (ROOT / ".ci/install_helm.py").read_text()


@pytest.mark.slow
def test_the_wheel_carries_the_whole_package_with_its_request_path_compiled(
    tmp_path: Path,
) -> None:
    """The build stage's wheel, built as it builds it (`pip wheel` with `VGATE_COMPILE=1`,
    the build the bench and the compiled e2e tests share): every file of gateway/, the
    request path also as mypyc extension modules, and installed on its own it runs the
    compiled request path."""
    from loadtests.bench import compiled

    why = compiled.missing_toolchain()
    if why:
        tool_missing(why)
    try:
        wheel = compiled.wheel(compiled.build(log=lambda _: None))
    except RuntimeError as failed:
        pytest.fail(str(failed), pytrace=False)
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        entry_points = next(whl.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    sources = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "gateway").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sources - names == set(), "files of gateway/ missing from the wheel"
    assert not any(n.startswith("tests/") for n in names)
    assert "vgate = gateway.cli:main" in entry_points
    native = {n.split(".cpython")[0] for n in names if n.endswith(".so")}
    assert {"gateway/pipeline", "gateway/http/connection", "gateway/forward/connection"} <= native
    assert any(n.endswith("__mypyc") for n in native), native  # mypyc's shared runtime
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    version = subprocess.run(
        [sys.executable, "-P", "-m", "gateway", "--version"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.stdout.strip() == "vgate 0.1.0 (request path compiled)", version

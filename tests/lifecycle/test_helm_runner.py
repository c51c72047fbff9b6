"""The helm runner: a missing binary is a clear error; arguments and results are parsed."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from gateway.lifecycle.helm_runner import HelmError, HelmNotFound, HelmRunner


async def test_missing_binary_is_a_clear_error():
    runner = HelmRunner("vgate-no-such-helm")
    with pytest.raises(HelmNotFound, match="'vgate-no-such-helm' was not found on PATH"):
        await runner.status("t1", "vcluster-t1")


@pytest.fixture
def recording_helm(tmp_path):
    """An executable standing in for helm that logs argv and answers like helm 3."""
    log = tmp_path / "calls.jsonl"
    script = tmp_path / "helm"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys, pathlib
        args = sys.argv[1:]
        rec = {{"args": args}}
        if "--values" in args:
            rec["values"] = pathlib.Path(args[args.index("--values") + 1]).read_text()
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps(rec) + "\\n")
        if args[0] == "status" and args[1] == "missing":
            sys.stderr.write("Error: release: not found\\n"); sys.exit(1)
        if args[0] == "status":
            print(json.dumps({{"info": {{"status": "deployed"}},
                               "chart": {{"metadata": {{"version": "0.26.0"}}}}}}))
        elif args[0] == "get":
            print(json.dumps({{"a": 1}}))
        elif args[0] == "upgrade" and args[2] == "broken":
            sys.stderr.write("Error: chart not found\\n"); sys.exit(1)
        """))
    script.chmod(0o755)
    return script, log


async def test_runner_arguments_and_parsing(recording_helm):
    script, log = recording_helm
    runner = HelmRunner(str(script), kubeconfig="/k/config")
    assert await runner.status("missing", "ns") is None
    assert await runner.status("t1", "ns") == {"status": "deployed", "chart_version": "0.26.0",
                                               "values": {"a": 1}}
    await runner.upgrade_install("t1", "ns", "vcluster", "0.26.0", {"x": {"y": 2}},
                                 "https://charts.loft.sh")
    with pytest.raises(HelmError, match="chart not found"):
        await runner.upgrade_install("broken", "ns", "vcluster", None, {}, None)
    await runner.uninstall("t1", "ns")
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    upgrade = calls[3]
    assert upgrade["args"][:6] == ["upgrade", "--install", "t1", "vcluster", "-n", "ns"]
    assert "--reset-values" in upgrade["args"]
    assert upgrade["args"][-2:] == ["--kubeconfig", "/k/config"]
    assert "x:\n  y: 2" in upgrade["values"]
    assert calls[-1]["args"][:4] == ["uninstall", "t1", "-n", "ns"]

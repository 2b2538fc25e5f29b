"""`lddm-fast info` and `python -m lddm_fast`."""

import json
import subprocess
import sys

from lddm_fast import cli, ops


def test_info_lists_versions_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch:" in out and "lddm_fast:" in out
    for name, status in ops.available_backends().items():
        assert f"{name:<10} {status}" in out
    assert "group_norm cpu float32" in out


def test_info_json_via_module():
    proc = subprocess.run(
        [sys.executable, "-m", "lddm_fast", "info", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["backends"]["reference"] == "ok"
    assert data["environment"]["torch"]
    assert data["defaults"]["group_norm cpu float32"] in data["backends"]


def test_the_parser_is_built_once_and_calls_share_no_arguments(capsys, monkeypatch):
    builds = []
    build = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: builds.append(1) or build())
    cli._parser.cache_clear()
    try:
        assert cli.main(["info", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["backends"]
        assert cli.main(["info"]) == 0  # --json is not remembered
        assert "torch:" in capsys.readouterr().out
        assert builds == [1]
    finally:
        cli._parser.cache_clear()


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: lddm-fast" in capsys.readouterr().out

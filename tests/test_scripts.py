"""Short CI runs of the crash and load scripts against a real server (the full runs are in the
closing notes: 20 kills, and 64 clients for 60 s)."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(240)
def test_sigkill_under_write_load_loses_no_acknowledged_write(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert script("crash_test").main(["--trials", "3", "--seed", "1"]) == 0
    assert "3 kills" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_64_concurrent_clients_count_every_hit(capsys: pytest.CaptureFixture[str]) -> None:
    assert script("load_test").main(["--clients", "64", "--seconds", "8", "--prefill", "500"]) == 0
    out = capsys.readouterr().out
    assert "errors none" in out and "FAIL" not in out

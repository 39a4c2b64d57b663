"""`pip install .` gives a working `mergemix`: the wheel carries the Hydra configs, and its console script composes
them from the installed package (not from this checkout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, timeout=600, **kw
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for tree in ("mergemix", "conf"):  # the configs live at the top, shipped as mergemix.conf
        shutil.copytree(ROOT / tree, src / tree, ignore=shutil.ignore_patterns("__pycache__"))
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        tmp_path / "dist",
        src,
    )
    wheel = next((tmp_path / "dist").glob("mergemix-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    expected = {"mergemix/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped == expected and "mergemix/conf/config.yaml" in shipped

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # this environment's dependencies, after the venv's own site-packages (so mergemix comes from the wheel)
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "deps.pth").write_text("\n".join(deps) + "\n")
    _run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run(py, "-c", "import mergemix; print(mergemix.__file__)", cwd=tmp_path, env=env).stdout.strip()
    assert Path(where).is_relative_to(site)
    info = json.loads(
        _run(
            venv / "bin" / "mergemix",
            "info",
            "model=micro",
            f"paths.root={tmp_path}/home",
            cwd=tmp_path,
            env=env,
        ).stdout
    )
    assert info["name"] == "micro" and info["total_params"] > 0

"""Figures quoted in committed reports match the JSON they come from."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _row(text: str, head: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {head}"))
    return [c.strip() for c in line.strip("|").split("|")[1:]]


def _numbers(cell: str) -> list[float]:
    return [float(x.replace("−", "-")) for x in re.findall(r"[−-]?\d+\.\d+", cell)]


def test_lora_report_rank_figures_are_those_of_its_json():
    data = json.loads((ROOT / "reports" / "lora" / "frontier-variants.json").read_text())["testbeds"]
    text = (ROOT / "reports" / "lora" / "README.md").read_text()
    columns = [("embedded", "merge"), ("embedded", "lora"), ("files", "merge"), ("files", "lora")]
    rho_u = _row(text, "merged-vs-trained ρ(U)")
    per_cap = _row(text, "ρ per capability")
    for (testbed, variant), cell, caps in zip(columns, rho_u, per_cap):
        c = data[testbed]["consistency"][variant]
        assert _numbers(cell) == [round(c["rho_U"], 2), *(round(x, 2) for x in c["ci_U"])], (testbed, variant)
        assert _numbers(caps) == [round(v, 2) for v in c["rho"].values()], (testbed, variant)
    n = {s["consistency"]["n_points"] for s in data.values()}
    assert f"({n.pop()} trained points on each testbed" in text

"""Progress where no bar can draw: in a log file (no terminal) training and evaluation write progress lines with
their rate and ETA through the `mergemix` logger; on a terminal, Lightning's bar as before and no lines."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_resume import STEPS, train

LINE = r"\[{}\] (\d+)/{} {} \(\d+%\), [\d.e+-]+ {}/s, ETA (\d+:\d\d:\d\d|\?)"


def test_training_in_a_log_file_logs_steps_rate_and_eta(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MERGEMIX_PROGRESS_S", "0")  # a line per step (default: one every 30 s)
    train(tmp_path / "out")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[t] ") and "steps/s" in ln]
    pattern = re.compile(LINE.format("t", STEPS, "steps", "steps") + r", loss [\d.]+, [\d.e+]+ tokens/s$")
    assert len(lines) == STEPS and all(pattern.match(ln) for ln in lines), lines
    assert [int(pattern.match(ln).group(1)) for ln in lines] == list(range(1, STEPS + 1))
    assert lines[-1].split("ETA ")[1].startswith("0:00:00")


def test_training_on_a_terminal_keeps_the_bar(tmp_path, monkeypatch, capsys):
    from mergemix import training

    seen = {}
    real = training.pl.Trainer

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**{**kwargs, "enable_progress_bar": False})

    monkeypatch.setenv("MERGEMIX_PROGRESS_S", "0")
    monkeypatch.setattr(training, "interactive", lambda: True)
    monkeypatch.setattr(training.pl, "Trainer", spy)
    train(tmp_path / "out")
    assert not [ln for ln in capsys.readouterr().out.splitlines() if "steps/s" in ln]
    assert "enable_progress_bar" in seen  # the caller's setting (False in this test) passes as given


def test_evaluation_in_a_log_file_logs_items_rate_and_eta(monkeypatch, capsys):
    from mergemix.benchmarks.evaluator import Evaluator
    from mergemix.benchmarks.tasks import Task
    from mergemix.models import build_model

    class Tok:  # one id per character
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1 + ord(c) % 120 for c in text]}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    rng = np.random.default_rng(0)
    mc = [
        {"context": f"q{i} ", "choices": ["a", "bb", "c"], "label": int(rng.integers(3))} for i in range(12)
    ]
    gen = [{"prompt": f"p{i}", "answer": "x"} for i in range(6)]
    tasks = {"m": Task("m", "mc", mc), "g": Task("g", "gen", gen, max_new_tokens=2)}
    model = build_model(
        {
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 2,
            "num_kv_heads": 1,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
        },
        128,
        seed=0,
    )
    monkeypatch.setenv("MERGEMIX_PROGRESS_S", "0")
    Evaluator(Tok(), tasks, batch_size=4).per_item(model)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[evaluate] ")]
    pattern = re.compile(LINE.format("evaluate", 18, "items", "items") + "$")
    assert lines and all(pattern.match(ln) for ln in lines), lines
    assert int(pattern.match(lines[-1]).group(1)) == 18


def test_progress_lines_are_spaced_and_absent_on_a_terminal(monkeypatch, capsys):
    from mergemix import log as mlog

    quiet = mlog.Progress("x", 100, "items", every_s=3600)
    for _ in range(100):
        quiet.advance()
    assert capsys.readouterr().out == ""  # faster than the interval: no line, not even the last one
    monkeypatch.setattr(mlog, "interactive", lambda: True)
    tty = mlog.Progress("x", 3, "items", every_s=0)
    tty.update(3)
    assert capsys.readouterr().out == ""
    assert pytest.approx(3) == tty.done

"""Optuna search workers sharing one study on a real PostgreSQL server (slow tier; `make test-postgres`).

A throw-away server from the Debian package runs on loopback (initdb + pg_ctl in a temporary directory, a free
port); the test skips with the reason when the server binaries or psycopg2 are missing."""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Like the SQLite test's worker (tests/test_backends.py), plus the worker's pid on each evaluation.
WORKER = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    from mergemix.search.evalcache import EvalCache
    from mergemix.search.optuna_backend import optuna_search
    url, log, budget, workers, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    cache = EvalCache(log + ".cache")

    def evaluate(alpha):
        def run():
            time.sleep(delay)
            with open(log, "a") as fh:
                fh.write(json.dumps({"pid": os.getpid(), "alpha": list(map(float, alpha))}) + "\\n")
            return {"U": float(-np.sum((np.asarray(alpha) - 1 / 3) ** 2)), "capabilities": {}}
        return cache.get_or_eval(alpha, run)

    cfg = {"budget": budget, "n_workers": workers, "storage": url, "study_name": "s", "sampler": "random"}
    optuna_search(evaluate, ["a", "b", "c"], cfg, int(sys.argv[6]), [], lambda r: r["U"])
""")


def _server_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """postgresql://... of a fresh server on 127.0.0.1, stopped and deleted afterwards."""
    initdb, pg_ctl = _server_bin("initdb"), _server_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install -y postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2 not installed (pip install -e .[postgres])")
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="mergemix-pg-"))  # not under pytest's root-only tmp dir
    if as_user:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, port = root / "data", _free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "mergemix", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w", "start"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"postgresql+psycopg2://mergemix@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_workers_on_two_machines_share_one_postgres_study(postgres_url, tmp_path):
    """One `search.n_workers=2` process and a second process (another node) fill one study's budget together."""
    import optuna

    budget, log = 16, tmp_path / "calls.jsonl"

    def start(workers, seed):
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                postgres_url,
                str(log),
                str(budget),
                str(workers),
                "1.0",
                str(seed),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = start(2, 0)
    deadline = time.time() + 120
    while time.time() < deadline and not log.exists():  # the study exists and its first trials run
        assert first.poll() is None, first.stderr.read()[-2000:]
        time.sleep(0.1)
    second = start(1, 1000)  # another machine samples with its own seed (see mergemix/search/join.py)
    for proc in (first, second):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="s", storage=postgres_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert budget <= len(done) <= budget + 2  # MaxTrialsCallback: only trials already running may overshoot
    assert len({t.number for t in done}) == len(done)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    alphas = [tuple(c["alpha"]) for c in calls]
    assert len(alphas) == len(set(alphas))  # no mixture evaluated twice
    assert len({c["pid"] for c in calls}) == 3  # two forked workers and the second process all took trials
    assert study.best_value == pytest.approx(
        0.0, abs=1e-9
    )  # the enqueued uniform point (U's optimum) ran once


def test_search_worker_joins_the_search_of_another_process(postgres_url, micro_run, micro_root):
    """`mergemix search-worker` (another node) and `mergemix search` share the study; the search writes the result."""
    import optuna

    pipe, _ = micro_run  # base and experts are cached under micro_root for both processes
    args = [
        "experiment=micro",
        "logger=none",
        f"paths.root={micro_root}",
        "search=tpe",
        f"search.storage={postgres_url}",
        "search.study_name=joined",
        "search.budget=24",
    ]

    def start(command, *extra):
        return subprocess.Popen(
            [sys.executable, "-m", "mergemix.cli", command, *args, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    worker = start("search-worker")  # first, so that it surely takes trials before the budget is reached
    deadline = time.time() + 180
    while time.time() < deadline and not _complete_trials(postgres_url, "joined-"):
        assert worker.poll() is None, worker.communicate()[1][-2000:]
        time.sleep(0.5)
    search = start("search", f"paths.run_dir={micro_root}/joined-run")
    outs = {}
    for name, proc in (("worker", worker), ("search", search)):
        outs[name], err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    joined = json.loads(outs["worker"][outs["worker"].index("{") : outs["worker"].index("}") + 1])
    assert joined["complete_trials"] >= 24 and joined["budget"] == 24
    mixture = Path(outs["search"].split("mixture file: ")[1].split()[0])
    result = json.loads((mixture.parent / "search.json").read_text())
    assert joined["study"] == result["info"]["study_name"] and joined["study"].startswith(
        "joined-"
    )  # one study
    study = optuna.load_study(study_name=joined["study"], storage=postgres_url)
    assert result["info"]["n_trials"] >= 24 and len(study.trials) >= 24
    best = max(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert result["verified"]["U"] == pytest.approx(best, abs=1e-6)  # alpha* = the study's best, re-scored
    keys = [json.loads(line)["key"] for line in pipe.merge_cache_path.read_text().splitlines()]
    assert len(keys) == len(set(keys))  # the shared evaluation cache holds each mixture once


def _complete_trials(url: str, prefix: str) -> int:
    """Complete trials in the studies whose names start with `prefix` (none before the first is created)."""
    import optuna

    names = [n for n in optuna.get_all_study_names(storage=url) if n.startswith(prefix)]
    return sum(
        t.state == optuna.trial.TrialState.COMPLETE
        for n in names
        for t in optuna.load_study(study_name=n, storage=url).trials
    )

"""The MLflow store on disk: commands started together on a new store all get it."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

CONNECT = "import sys; from tune.tracking import connect; connect(sys.argv[1]).search_experiments(); print('ok')"


def test_commands_started_together_on_a_new_sqlite_store_all_get_it(tmp_path):
    """MLflow makes a SQLite store's tables as a process's first client starts: three at once on a new file (a
    study in one terminal, `tune train` in another) raced to, and two of three failed in a migration."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    started = [subprocess.Popen([sys.executable, "-c", CONNECT, uri], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    ended = [p.communicate(timeout=120) for p in started]
    assert [out for out, _ in ended] == ["ok\n"] * 3, [err.strip().splitlines()[-1:] for _, err in ended]

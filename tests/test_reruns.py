"""Reruns never mix one fit's files with another's: one train_basis run per results folder at a time, a
killed sweep resumes from its finished fits, and a run's V, W, JSON and tables are written together."""
import json
import os
import subprocess
import sys

import pytest
import torch

import harness
import reports
import utils
from offline.planted import random_population, simulate_comparisons


def small_groups():
    population = random_population(30, 8, 2, seed=5)
    rows = lambda part: type(population)(population.directions, population.user_weights[part])  # noqa: E731
    seen, unseen = rows(slice(0, 20)), rows(slice(20, None))
    groups = [simulate_comparisons(seen, 10, seed=s)[0] for s in (1, 2)]
    groups += [simulate_comparisons(unseen, 6, seed=s)[0] for s in (3, 4)]
    return torch.tensor(population.directions[:, :1], dtype=torch.float32) / 400, groups


# --- the lock -------------------------------------------------------------------------------------

def test_a_live_runs_lock_stops_a_second_run_naming_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".train_basis.lock").write_text(json.dumps({
            "pid": holder.pid, "host": os.uname().nodename, "command": "python train_basis.py --offline",
            "started": "2026-12-06 10:00:00"}))
        with pytest.raises(SystemExit, match=rf"in use by another train_basis run \(pid {holder.pid}.*"
                                             r"python train_basis.py --offline.*another --results_dir"):
            harness.hold_lock(tmp_path, "train_basis")
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone now: its lock is stale and taken over
    assert harness.hold_lock(tmp_path, "train_basis") == tmp_path / ".train_basis.lock"
    assert json.loads((tmp_path / ".train_basis.lock").read_text())["pid"] == os.getpid()


def test_the_lock_is_released_when_the_run_ends(tmp_path):
    script = f"import sys; sys.path.insert(0, {str(utils.__file__.rsplit('/', 1)[0])!r}); import harness; " \
             f"harness.hold_lock({str(tmp_path)!r}, 'train_basis')"
    for _ in range(2):                         # the second run finds no lock: the first released it
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert not (tmp_path / ".train_basis.lock").exists()


# --- resume ---------------------------------------------------------------------------------------

def count_fits(monkeypatch):
    calls = []
    real = utils.solve_regularized

    def counted(V_sft, alpha, X, K, *args, **kwargs):
        calls.append(K)
        if K in fail_at:
            raise KeyboardInterrupt("killed")
        return real(V_sft, alpha, X, K, *args, **kwargs)
    fail_at = set()
    monkeypatch.setattr(utils, "solve_regularized", counted)
    return calls, fail_at


def test_a_killed_sweep_resumes_from_its_finished_fits(tmp_path, monkeypatch):
    V_ref, groups = small_groups()
    calls, fail_at = count_fits(monkeypatch)
    options = dict(num_iterations=30, fewshot_iterations=20, progress=False, checkpoint_dir=tmp_path / "fits",
                   dataset_name="toy")
    fail_at.add(3)
    with pytest.raises(KeyboardInterrupt):
        utils.run([0, 2, 3], [0.0], V_ref, *groups, 20, 10, "cpu", **options)
    assert calls == [2, 3] and len(list((tmp_path / "fits").glob("*.pt"))) == 2     # ref and K = 2 kept
    fail_at.clear()
    calls.clear()
    resumed = utils.run([0, 2, 3], [0.0], V_ref, *groups, 20, 10, "cpu", **options)
    assert calls == [3]                                            # only the fit that was cut short
    calls.clear()
    fresh = utils.run([0, 2, 3], [0.0], V_ref, *groups, 20, 10, "cpu", num_iterations=30, fewshot_iterations=20,
                      progress=False)
    assert list(resumed) == list(fresh)                            # the same figures as an uninterrupted run
    for a, b in zip(resumed.records, fresh.records):
        assert all(torch.equal(a["per_user"][g], b["per_user"][g]) for g in utils.GROUP_NAMES)
    # other settings or other data: every fit again, never a finished fit of another run
    calls.clear()
    utils.run([0, 2, 3], [0.0], V_ref, *groups, 20, 10, "cpu", **{**options, "fewshot_iterations": 21})
    assert calls == [2, 3]
    calls.clear()
    utils.run([0, 2, 3], [0.0], V_ref, groups[0], groups[1], groups[2], groups[2], 20, 10, "cpu", **options)
    assert calls == [2, 3]


def test_a_runs_bases_and_tables_are_written_together_at_the_end(tmp_path):
    V_ref, groups = small_groups()
    checkpoints = tmp_path / ".train_basis_fits"
    records = utils.run([0, 2], [0.0], V_ref, *groups, 20, 10, "cpu", num_iterations=30, fewshot_iterations=20,
                        progress=False, results_dir=tmp_path, dataset_name="toy", checkpoint_dir=checkpoints,
                        save_bases=False).records
    assert not list(tmp_path.glob("toy_*.pt"))                    # nothing published before the end
    reports.save_train_basis(tmp_path, "toy", {"seed": 0}, records, {}, bases="toy", checkpoints=checkpoints)
    V = torch.load(tmp_path / "toy_V_lore_K_2_alpha_0.0.pt", weights_only=True)
    assert torch.equal(V, records[1]["basis"]["V"]) and (tmp_path / "train_basis.json").exists()
    assert harness.recorded_fit(tmp_path / "toy_W_lore_seen_2_0.0.pt")["K"] == 2
    assert not checkpoints.exists()

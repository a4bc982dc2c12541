"""The train_basis and vary_fewshot steps every dataset folder runs, once its data are loaded: folders differ
in their data, not in this machinery.

    experiment.train_basis(settings, results_path, "Reddit TLDR", "TLDR", groups, V_ref, extra, user_ids=users)
    experiment.vary_fewshot(settings, results_path, "Reddit TLDR: ...", groups, V_ref, extra)

`settings` is the script's configure() snapshot; the names read from it are every train_basis.py's
(K_list, alpha_list, num_iterations, learning_rate, fewshot_iterations, fewshot_learning_rate, seed, seeds,
baselines, baseline_settings, device, overwrite) or vary_fewshot.py's (trials, num_shots, ...).
"""
from __future__ import annotations

import time

import baselines
import harness
import reports
import utils

CHECKPOINTS = ".train_basis_fits"    # under the results folder: the finished fits of a run in progress


def check_baselines(settings) -> dict | None:
    """The baselines' hyperparameters (--baseline_settings), checked with their names before any work."""
    hyper = harness.json_setting("baseline_settings", settings["baseline_settings"])
    baselines.check_methods(settings["baselines"], hyper)
    return hyper


def train_basis(settings, results_path, dataset: str, prefix: str, groups: dict, V_ref, extra: dict, *,
                user_ids=None, regularized: bool = False) -> dict:
    """LoRe over K_list x alpha_list for `seeds` seeds (seed, seed + 1, ...; run, or run_regularized when
    `regularized`), resumable from the finished fits of a killed run; the baselines on the same groups and
    seeds; then every result file of the run at once (reports.save_train_basis; the bases as
    <prefix>_V_lore_K_{K}_alpha_{alpha}.pt of the first seed). One run per results folder at a time.
    Returns what save_train_basis returns."""
    hyper = check_baselines(settings)                  # a bad name stops here, not after the fits
    harness.hold_lock(results_path, "train_basis")
    checkpoints = results_path / CHECKPOINTS
    N, N_unseen = groups["seen_train"].n_users, groups["unseen_train"].n_users
    sweep = utils.run_regularized if regularized else utils.run
    seed_list = [settings["seed"] + i for i in range(settings["seeds"])]
    start = time.time()
    records = [record for s in seed_list for record in sweep(
        settings["K_list"], settings["alpha_list"], V_ref, *(groups[g] for g in utils.GROUP_NAMES), N, N_unseen,
        settings["device"], num_iterations=settings["num_iterations"], learning_rate=settings["learning_rate"],
        fewshot_iterations=settings["fewshot_iterations"], fewshot_learning_rate=settings["fewshot_learning_rate"],
        seed=s, results_dir=results_path if s == seed_list[0] else None, dataset_name=prefix,
        overwrite=settings["overwrite"], checkpoint_dir=checkpoints, save_bases=False).records]
    methods = baselines.evaluate_methods(settings["baselines"], groups, seed_list, V_ref=V_ref, hyper=hyper,
                                         device=settings["device"], dataset=dataset) if settings["baselines"] else []
    extra = {**extra, "seconds": round(time.time() - start, 1)}
    return reports.save_train_basis(results_path, dataset, settings, records, extra, user_ids=user_ids,
                                    methods=methods, bases=prefix, checkpoints=checkpoints)


def vary_fewshot(settings, results_path, title: str, groups: dict, V_ref, extra: dict, *,
                 regularized: bool = False) -> dict:
    """New users' accuracy against the number of few-shot comparisons (utils.run_few_shot_vary_shots), into
    vary_fewshot.{json,md} and fewshot_accuracy_vs_shots.png. Returns the files."""
    start = time.time()
    results = utils.run_few_shot_vary_shots(
        settings["trials"], settings["alpha_list"], settings["K_list"], settings["num_shots"], groups["seen_train"],
        groups["unseen_train"], groups["unseen_test"], V_ref, groups["seen_train"].n_users,
        groups["unseen_train"].n_users, settings["device"], seed=settings["seed"],
        num_iterations=settings["num_iterations"], learning_rate=settings["learning_rate"],
        fewshot_iterations=settings["fewshot_iterations"], fewshot_learning_rate=settings["fewshot_learning_rate"],
        regularized=regularized)
    extra = {**extra, "seconds": round(time.time() - start, 1)}
    files = reports.save_fewshot_results(results_path, "vary_fewshot", settings, settings["num_shots"],
                                         settings["K_list"], settings["alpha_list"], results,
                                         plot_name="fewshot_accuracy_vs_shots.png", title=title, extra=extra)
    print(files["markdown"].read_text())
    print(f"wrote {files['json']}, {files['markdown']}, {files['plots'][0]} ({extra['seconds']} s)")
    return files

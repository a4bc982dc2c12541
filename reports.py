"""The reports of the sweeps: result JSON (settings, seed, means and raw stds), markdown tables, plots and
the paper table (methods as rows). utils.py computes; this module only summarises and writes.

Every figure is a mean over users of per-user accuracy (a comparison is correct iff the user's margin is
> 0: a tie is wrong). With one seed the std is over users; with several, each seed's mean over users is
averaged and the std is over seeds. Plots shade ± STD_BAND_FACTOR (0.25) std, as the original's.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

import evidence
import utils
from harness import atomic_path, atomic_paths, json_text
from utils import GROUP_NAMES, STD_BAND_FACTOR, choose_K, derived_seed, mean_and_std

GROUP_LABELS = {"seen_train": "seen users: train", "seen_test": "seen users: unseen prompts",
                "unseen_train": "unseen users: few-shot train", "unseen_test": "unseen users: test"}
TABLE_GROUPS = ("seen_test", "unseen_test")     # the paper table's accuracy columns


def percent(mean, std) -> str:
    """"mean ± std" in % (one decimal), or "n/a"."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def rank_label(K) -> str:
    return "ref" if K == 0 else str(K)


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def _write_json_and_markdown(results_dir: Path, name: str, payload: dict, markdown_lines: list[str]):
    """`<name>.json` and `<name>.md` in results_dir, written as one set (neither replaces its file until both
    are written: a table never describes another run than the JSON beside it). Returns their paths."""
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    with atomic_paths(json_path, md_path) as (json_tmp, md_tmp):
        json_tmp.write_text(json_text(payload), encoding="utf-8")
        md_tmp.write_text("\n".join(markdown_lines) + "\n", encoding="utf-8")
    return json_path, md_path


# =============================================================================
# a sweep over seeds: one row per (alpha, K)


EVIDENCE_GROUPS = ("seen_test", "unseen_test")   # the held-out groups every gain is measured on
GAINS = ("gain_vs_ref", "gain_vs_K1", "gain_vs_shared", "gain_vs_other")
GAIN_LABELS = {"gain_vs_ref": "vs ref", "gain_vs_K1": "vs K = 1", "gain_vs_shared": "personal vs shared",
               "gain_vs_other": "personal vs another user's"}


def _seed_mean(per_seed: list) -> np.ndarray:
    """Each user's value averaged over seeds ([seeds][C] -> [C]); NaN where a user has none."""
    stacked = np.array([np.asarray(v, dtype=np.float64) for v in per_seed])
    finite = ~np.isnan(stacked)
    total = np.where(finite, stacked, 0.0).sum(0)
    return np.divide(total, finite.sum(0), out=np.full(total.shape, np.nan), where=finite.sum(0) > 0)


def paired_gain(mine: list, theirs: list, seed: int) -> dict:
    """evidence.paired_bootstrap of the per-user differences mine - theirs ([seeds][C] each, same users
    and seeds), each user's difference averaged over the seeds first."""
    return evidence.paired_bootstrap(_seed_mean([np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
                                                 for a, b in zip(mine, theirs)]), seed)


def bootstrap_seed(seed: int, group: str, gain: str) -> int:
    """The resampling seed of a gain: the same users resampled the same way for every method and K (common
    random numbers: one difference gets one interval wherever it is shown)."""
    return derived_seed(seed, 5, EVIDENCE_GROUPS.index(group), GAINS.index(gain))


def sweep_gains(records: list, alpha, K: int) -> dict:
    """{group: {gain: evidence interval}} for LoRe at (alpha, K >= 1) on the held-out groups, over the
    records' seeds: each user's accuracy with its own weights minus with the reference head (K = 0),
    with one shared reward (K = 1), with the mean of the seen users' weights (shared) and with another
    user's weights (other). A gain whose comparison run is missing (no K = 0 in K_list) is left out."""
    runs = {r["seed"]: r for r in records if r["alpha"] == alpha and r["K"] == K}
    seeds = list(runs)
    baseline = {k: {r["seed"]: r for r in records if r["alpha"] == alpha and r["K"] == k} for k in (0, 1)}
    out = {}
    for group in EVIDENCE_GROUPS:
        mine = [runs[s]["per_user"][group] for s in seeds]
        theirs = {"gain_vs_ref": baseline[0], "gain_vs_K1": baseline[1]}
        gains = {}
        for name in GAINS:
            if name in theirs:
                if not all(s in theirs[name] for s in seeds):
                    continue
                other = [theirs[name][s]["per_user"][group] for s in seeds]
            else:
                other = [runs[s]["contrasts"][group][name.split("_")[-1]] for s in seeds]
                if any(o is None for o in other):
                    continue
            gains[name] = paired_gain(mine, other, bootstrap_seed(seeds[0], group, name))
        out[group] = gains
    return out


def summarize(records: list) -> list[dict]:
    """One row per (alpha, K), in the records' order, over the seeds the records hold:
    {"alpha", "K", "seeds", group: {"mean", "std", "per_seed": [means]} ..., "std_over": "users" | "seeds",
    "per_user": the first seed's {group: [C]} (the seed whose bases are saved), and for K >= 1
    "basis_size", "cosine_to_ref", "mean_cosine_to_ref" and the collapse diagnostics (the keys of
    evidence.basis_diagnostics) of the first seed's basis and,
    in the held-out groups, the paired gains (sweep_gains: "gain_vs_ref", "gain_vs_K1", "gain_vs_shared",
    "gain_vs_other", each {"mean", "ci95", "users"} in points)}. With one seed the std is over users;
    with several, the std over seeds of each seed's mean over users."""
    by_fit = {}
    for record in records:
        by_fit.setdefault((record["alpha"], record["K"]), []).append(record)
    rows = []
    for (alpha, K), runs in by_fit.items():
        first, several = runs[0], len(runs) > 1
        row = {"alpha": alpha, "K": K, "seeds": [r["seed"] for r in runs], "std_over": "seeds" if several else "users"}
        for group in GROUP_NAMES:
            means = [r["groups"][group]["mean"] for r in runs]
            row[group] = {"mean": float(np.mean(means)),
                          "std": float(np.std(means)) if several else first["groups"][group]["std"],
                          "per_seed": means}
        row["per_user"] = first["per_user"]
        if K >= 1 and first.get("cosine_to_ref") is not None:
            row.update(basis_size=first["basis_size"], cosine_to_ref=first["cosine_to_ref"],
                       mean_cosine_to_ref=float(np.mean(first["cosine_to_ref"])))
        if K >= 1 and "contrasts" in first:
            row.update(first["diagnostics"])
            for group, gains in sweep_gains(records, alpha, K).items():
                row[group].update(gains)
        rows.append(row)
    return rows


def gain_cell(interval: dict | None) -> str:
    """"+1.2 [+0.3, +2.1] gain": mean in points, 95% interval, verdict ("-" when not measured)."""
    if not interval or interval["mean"] is None:
        return "-"
    lo, hi = interval["ci95"]
    word = evidence.verdict(interval)
    return f"{interval['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}]" + ("" if word == evidence.NO_CLEAR_DIFFERENCE else f" {word}")


def _number(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _evidence_tables(rows: list) -> list[str]:
    """Markdown of a sweep's evidence at one alpha: the paired gains per K >= 1 and held-out group, and
    the collapse diagnostics of each basis."""
    fitted = [r for r in rows if "numerical_rank" in r]
    if not fitted:
        return []
    lines = ["Paired per-user differences in points, 95% bootstrap interval over users (a gain or a loss only "
             "when the interval excludes 0; otherwise no clear difference):", "",
             "| K | group | " + " | ".join(GAIN_LABELS.values()) + " |", "|---" * (len(GAINS) + 2) + "|"]
    for row in fitted:
        for group in EVIDENCE_GROUPS:
            lines.append(f"| {row['K']} | {GROUP_LABELS[group]} | "
                         + " | ".join(gain_cell(row[group].get(gain)) for gain in GAINS) + " |")
    lines += ["", "Collapse diagnostics of each basis (the first seed's): numerical rank (singular values above "
              f"{evidence.RANK_TOLERANCE:g} x the largest), s2/s1, mean |cos| between columns, cos to V_ref (mean, "
              "min), columns that are some seen user's largest weight, and the seen users' weights:", "",
              "| K | columns | numerical rank | s2/s1 | mean abs cos between columns | cos to V_ref (mean / min) | "
              "bases used | mean top weight | weight entropy / ln B |", "|---" * 9 + "|"]
    for row in fitted:
        ref = "-" if row["mean_cos_ref"] is None else f"{row['mean_cos_ref']:.5f} / {row['min_cos_ref']:.5f}"
        lines.append(f"| {row['K']} | {row['basis_size']} | {row['numerical_rank']} | {_number(row['s2_s1'])} | "
                     f"{_number(row['mean_abs_basis_cos'])} | {ref} | {row['bases_used']} | "
                     f"{row['mean_top1_weight']:.3f} | {row['mean_weight_entropy']:.3f} / "
                     f"{row['max_weight_entropy']:.3f} |")
    return lines + [""]


def save_results(results_dir, name, settings, records, *, plot_name=None, title=None, extra=None,
                 reference_lines=None, user_ids=None, methods=()) -> dict:
    """Write the result files of a sweep (the records of run / run_regularized, over one or more seeds).

    settings: the script's `configure` snapshot (with seed). reference_lines: {label: accuracy} drawn as
    horizontal lines (e.g. the planted Bayes-optimal accuracy). user_ids {"seen": [...], "unseen": [...]}:
    the groups' users, to record every user's accuracy per (alpha, K) and group. methods: paper_row rows
    of other methods, added under every alpha's K rows. Writes
      `<name>.json`: settings, seed, per (alpha, K) the mean and RAW std (over users, or over seeds with
                     several) of the four accuracies, the basis size and cosines to V_ref, the K chosen on
                     seen users per alpha, + `extra`;
      `<name>.md`:   per alpha a table, rows K ("ref" for K = 0), columns the four groups, "mean ± std" %;
      a PNG per alpha: accuracy vs rank (4 lines, x tick "ref" for K = 0, shaded ± 0.25 std as the
                     original), named plot_name.format(alpha=alpha) (default "<name>_alpha_{alpha}.png").
    Returns {"json": Path, "markdown": Path, "plots": [Path, ...], "rows": [...]}.
    """
    results_dir = Path(results_dir)
    rows = summarize(records)
    if not rows:
        raise ValueError("no records to write")
    alpha_list, K_list = _ordered(r["alpha"] for r in rows), _ordered(r["K"] for r in rows)
    over = rows[0]["std_over"]
    seeds = rows[0]["seeds"]
    for row in rows:
        per_user = row.pop("per_user")
        if user_ids is not None:
            row["per_user"] = {group: dict(zip(user_ids[group.split("_")[0]], per_user[group].tolist()))
                               for group in GROUP_NAMES}
    chosen = {alpha: choose_K(records, alpha) for alpha in alpha_list}
    markdown = [f"# {title or name}", ""]
    for alpha in alpha_list:
        show_cosine = any("mean_cosine_to_ref" in r for r in rows if r["alpha"] == alpha)
        markdown += [f"## alpha = {alpha}", "", "| K | " + " | ".join(GROUP_LABELS.values()) + " |"
                     + (" mean cos(V_b, V_ref) |" if show_cosine else ""),
                     "|---" * (len(GROUP_LABELS) + 1 + show_cosine) + "|"]
        for row in (r for r in rows if r["alpha"] == alpha):
            cells = [percent(row[key]["mean"], row[key]["std"]) for key in GROUP_NAMES]
            if show_cosine:
                # 5 decimals: at alpha = 1e4 the basis sits within 1e-4 of the head, which .3f shows as 1
                cells.append(f"{row['mean_cosine_to_ref']:.5f}" if "mean_cosine_to_ref" in row else "1")
            label = rank_label(row["K"]) + (" (chosen on seen users)" if row["K"] == chosen[alpha] else "")
            markdown.append(f"| {label} | " + " | ".join(cells) + " |")
        for method in methods:
            cells = [percent(method["groups"][key]["mean"], method["groups"][key]["std"]) for key in GROUP_NAMES]
            markdown.append(f"| {method['label']} | " + " | ".join(cells) + " |" + (" |" if show_cosine else ""))
        markdown.append("")
        markdown += _evidence_tables([r for r in rows if r["alpha"] == alpha])
    markdown.append(f"Accuracy in %, mean ± std over {over}" + (f" ({len(seeds)} seeds) of the mean over users"
                    if over == "seeds" else "")
                    + f" (plots shade ± {STD_BAND_FACTOR} std, as the original). The chosen K is the best on "
                    "seen users / unseen prompts.")
    payload = {"name": name, "settings": settings, "seed": settings.get("seed"), "K_list": K_list,
               "alpha_list": alpha_list, "std_band_factor": STD_BAND_FACTOR, "std_over": over, "results": rows,
               "K_chosen_on_seen_users": {str(a): k for a, k in chosen.items()},
               **({"methods": list(methods)} if methods else {}), **(extra or {})}
    json_path, md_path = _write_json_and_markdown(results_dir, name, payload, markdown)
    plots = []
    for alpha in alpha_list:
        section = [r for r in rows if r["alpha"] == alpha]
        path = results_dir / (plot_name or f"{name}_alpha_{{alpha}}.png").format(alpha=alpha)
        _plot_lines(path, [rank_label(r["K"]) for r in section],
                    [(label, [r[group]["mean"] for r in section], [STD_BAND_FACTOR * r[group]["std"] for r in section])
                     for group, label in GROUP_LABELS.items()],
                    xlabel="rank K", title=f"{title or name} (alpha = {alpha})",
                    band=f"± {STD_BAND_FACTOR} std over {over}", reference_lines=reference_lines)
        plots.append(path)
    return {"json": json_path, "markdown": md_path, "plots": plots, "rows": rows}


def save_train_basis(results_dir, dataset: str, settings, records, extra: dict, *, user_ids=None,
                     methods=(), bases: str | None = None, checkpoints=None) -> dict:
    """Every folder's train_basis.py outputs under the same names, written together at the end of the run:
    with `bases` (the file prefix, e.g. "PRISM"), the V and W files of the first seed's fits
    (utils.write_bases); save_results as train_basis.{json,md} and
    generalization_accuracy_vs_rank_lore_alpha_{alpha}.png, with the planted rate on unseen users as a
    line when `extra` has the offline data's "planted_accuracy"; with baselines (`methods`: their results,
    baselines.evaluate_methods) or several seeds, also the paper table (save_paper_table, at the first
    alpha). Then the run's `checkpoints` folder is removed. Prints the planted rate, the tables and the
    files."""
    if bases is not None:
        first = records[0]["seed"]
        utils.write_bases(results_dir, bases, [r for r in records if r["seed"] == first])
    planted = extra.get("planted_accuracy")
    if planted:
        print("planted (true) user rewards: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in planted.items()))
    alpha = records[0]["alpha"]
    method_rows = [paper_row(**result, reference=reference_results(records, alpha, result["seeds"]))
                   for result in methods]
    if methods or len({r["seed"] for r in records}) > 1:
        table = save_paper_table(results_dir, "paper_table", lore_rows(records, alpha) + method_rows, settings,
                                 extra={"alpha": alpha, "K_chosen_on_seen_users": choose_K(records, alpha)},
                                 title=f"{dataset}: LoRe and the baselines (alpha = {alpha})")
        print(table["markdown"].read_text())
    files = save_results(results_dir, "train_basis", settings, records,
                         plot_name="generalization_accuracy_vs_rank_lore_alpha_{alpha}.png",
                         title=f"{dataset}: LoRe accuracy vs rank", extra=extra, user_ids=user_ids,
                         methods=method_rows,
                         reference_lines={"planted reward, unseen users": (planted or {}).get("unseen_test")})
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)      # the run is complete: its pieces are in the files
    print(files["markdown"].read_text())
    print(f"wrote {files['json']}, {files['markdown']}, {', '.join(str(p) for p in files['plots'])} and the bases "
          f"per K in {results_dir}")
    return files


def save_fewshot_results(results_dir, name, settings, num_shots, K_list, alpha_list, results, *, plot_name=None,
                         title=None, extra=None, reference_lines=None) -> dict:
    """Write the result files of `run_few_shot_vary_shots` (its FewShotCurves) into results_dir.

    Writes `<name>.json` (settings, seed, per (alpha, K, shots) the mean, the original's std over
    trials and the std over users of both accuracies, + `extra`), `<name>.md` (per (alpha, K) a table,
    rows = shots, a shot count beyond every user's pool marked as capped) and one PNG of accuracy vs
    number of shots (a line pair per (alpha, K), shaded ± the std over trials), named plot_name
    (default "<name>.png"). Returns {"json": Path, "markdown": Path, "plots": [Path]}.
    """
    results_dir = Path(results_dir)
    num_shots, K_list, alpha_list = list(num_shots), list(K_list), list(alpha_list)
    runs = getattr(results, "runs", None)
    if runs is None or len(runs) != len(alpha_list) * len(K_list) or list(results.num_shots) != num_shots:
        raise ValueError("results must be what run_few_shot_vary_shots() returned for these num_shots, "
                         "K_list and alpha_list")
    capped = set(results.capped)
    groups = (("fewshot_train", "unseen users: few-shot train"), ("unseen_test", "unseen users: test"))
    rows, lines, markdown = [], [], [f"# {title or name}", ""]
    for run in runs:
        alpha, K = run["alpha"], run["K"]
        markdown += [f"## alpha = {alpha}, K = {rank_label(K)}", "",
                     "| shots | " + " | ".join(label for _, label in groups) + " |", "|---|---|---|"]
        for j, s in enumerate(num_shots):
            entry = {"alpha": alpha, "K": K, "shots": s, "capped": s in capped}
            cells = []
            for key, _ in groups:
                figures = {k: run[key][k][j] for k in ("mean", "std_trials", "std_users")}
                entry[key] = figures
                cells.append(f"{percent(figures['mean'], figures['std_trials'])} ({100 * figures['std_users']:.1f})")
            rows.append(entry)
            markdown.append(f"| {s}{' (capped)' if s in capped else ''} | " + " | ".join(cells) + " |")
        markdown.append("")
        tag = f"K={rank_label(K)}" + (f", alpha={alpha}" if len(alpha_list) > 1 else "")
        lines += [(f"{label.split(': ')[1]} ({tag})", run[key]["mean"], run[key]["std_trials"])
                  for key, label in groups]
    markdown.append("Accuracy in %: mean over trials of the mean over users ± the std over trials (the "
                    "original's figure), then in parentheses the std over users."
                    + (" Capped: more shots than any user has; every trial then uses a user's whole pool."
                       if capped else ""))
    payload = {"name": name, "settings": settings, "seed": settings.get("seed"), "num_shots": num_shots,
               "K_list": K_list, "alpha_list": alpha_list, "capped_shots": sorted(capped), "results": rows,
               **(extra or {})}
    json_path, md_path = _write_json_and_markdown(results_dir, name, payload, markdown)
    plot_path = results_dir / (plot_name or f"{name}.png")
    _plot_lines(plot_path, [f"{s}*" if s in capped else str(s) for s in num_shots], lines,
                xlabel="shots per unseen user" + (" (* capped: the whole pool)" if capped else ""),
                title=title or name, band="± std over trials", reference_lines=reference_lines)
    return {"json": json_path, "markdown": md_path, "plots": [plot_path]}


def _plot_lines(path: Path, x_labels, lines, xlabel: str, title: str, band: str, reference_lines=None) -> None:
    """Accuracy lines with shaded bands (lines = [(label, means, band half-widths)]) over the x_labels,
    dashed horizontal reference lines ({label: accuracy}), the legend outside the axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(x_labels))
    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    for label, mean, half in lines:
        mean, half = np.asarray(mean, dtype=float), np.asarray(half, dtype=float)
        ax.plot(x, 100 * mean, marker="o", label=label)
        ax.fill_between(x, 100 * (mean - half), 100 * (mean + half), alpha=0.2)
    for label, value in (reference_lines or {}).items():
        if value is not None and math.isfinite(value):
            ax.axhline(100 * value, linestyle="--", color="grey", linewidth=1)
            ax.annotate(label, (x[-1], 100 * value), textcoords="offset points", xytext=(0, 3), ha="right",
                        fontsize=7, color="grey")
    ax.set_xticks(x, [str(v) for v in x_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=f"bands: {band}",
              title_fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


# =============================================================================
# the paper table: methods as rows; seen users / unseen prompts, unseen users, parameters as columns


def lore_parameter_counts(d: int, B: int, n_users: int) -> dict:
    """Parameters of a LoRe row: B = 0 is the reference head (d numbers, no user parameter), B = 1 a single
    Bradley-Terry reward (d; every user weight is 1), B >= 2 the basis V [d, B] plus B simplex weights
    per user (B = the kept columns)."""
    d, B, n_users = int(d), int(B), int(n_users)
    if B <= 1:
        return {"per_user": 0, "shared": d, "total": d, "note": "one reward direction shared by all users"}
    return {"per_user": B, "shared": d * B, "total": d * B + n_users * B,
            "note": f"LoRe: basis V [d, {B}]; per user {B} simplex weights"}


def parameter_cell(row: dict, key: str) -> str:
    """A paper-table row's parameter count; "a/b" when its seeds selected models of different sizes."""
    counts = [p[key] for p in row.get("parameters_per_seed") or [row["parameters"]]]
    return "/".join(f"{int(c):,}" for c in dict.fromkeys(counts))


def paper_row(method: str, per_seed: list, counts: dict, parameters: dict, *, K=None, seeds=None,
              hyperparameters=None, seconds=None, label: str | None = None, reference=None, **details) -> dict:
    """One row of the paper table (every row uses it: LoRe's, the reference's and the baselines').

    per_seed: one dict per seed, {group: per-user accuracy [C] (NaN for a user without comparisons)}, for
    any of the four groups (the table needs "seen_test" and "unseen_test"). counts: {group: {"users",
    "comparisons"}} of the groups the accuracies were computed on. parameters: {"per_user", "total", ...}.
    label: the row label (default: method, with " (K = K)" when K is given). reference: the reference
    head's per_seed results on the same groups and seeds: each group then gets "gain_vs_ref" (paired_gain:
    the row's per-user accuracy minus the head's, averaged over seeds, with its interval). details:
    anything else to record (e.g. a baseline's optimizer_steps). Returns
      {"method", "label", "K", "seeds", "parameters", "hyperparameters", "seconds", **details,
       "groups": {group: {"mean": mean over seeds of the mean over users,
                          "std": std over seeds (population form) with >= 2 seeds, else the std over users,
                          "std_over": "seeds" | "users",
                          "per_seed": [mean over users, one per seed], "std_users": [one per seed],
                          "users", "comparisons"}}}
    """
    seeds = list(range(len(per_seed))) if seeds is None else list(seeds)
    if len(seeds) != len(per_seed):
        raise ValueError(f"{len(per_seed)} per-seed results for {len(seeds)} seeds")
    entries = {}
    for name in GROUP_NAMES:
        if not per_seed or not all(name in result for result in per_seed):
            continue
        summaries = [mean_and_std(result[name]) for result in per_seed]
        means = [m for m, _ in summaries]
        several = len(means) > 1
        entries[name] = {"mean": float(np.mean(means)),
                         "std": float(np.std(means)) if several else summaries[0][1],
                         "std_over": "seeds" if several else "users",
                         "per_seed": means, "std_users": [s for _, s in summaries], **counts[name]}
        if reference is not None and name in EVIDENCE_GROUPS:
            entries[name]["gain_vs_ref"] = paired_gain([r[name] for r in per_seed], [r[name] for r in reference],
                                                       bootstrap_seed(seeds[0], name, "gain_vs_ref"))
    if label is None:
        label = method if K is None else f"{method} (K = {K})"
    return {"method": method, "label": label, "K": K, "seeds": seeds, "groups": entries,
            "parameters": {k: (int(v) if k in ("per_user", "shared", "total") else v)
                           for k, v in parameters.items()},
            "hyperparameters": dict(hyperparameters or {}), "seconds": seconds, **details}


def reference_results(records: list, alpha, seeds) -> list | None:
    """The reference head's (K = 0) per-user results per seed at alpha, in the order of `seeds` (None when
    the sweep has no K = 0 for one of them)."""
    by_seed = {r["seed"]: r["per_user"] for r in records if r["alpha"] == alpha and r["K"] == 0}
    return [by_seed[s] for s in seeds] if all(s in by_seed for s in seeds) else None


def lore_rows(records: list, alpha) -> list[dict]:
    """The paper table's LoRe rows at `alpha`: ref (K = 0), K = 1 and LoRe at the K chosen on seen users
    (choose_K; left out when that is K = 1), each over the records' seeds, with their gains over ref."""
    chosen = choose_K(records, alpha)
    rows = []
    candidates = [(0, "ref (the backbone's head)"), (1, "K = 1 (one Bradley-Terry reward)")]
    if chosen not in (None, 1):     # a LoRe that chose K = 1 is the K = 1 row; None: no K >= 1 was fitted
        candidates.append((chosen, f"LoRe (K = {chosen}, chosen on seen users)"))
    for K, label in candidates:
        runs = [r for r in records if r["alpha"] == alpha and r["K"] == K]
        if not runs:
            continue
        n_seen = len(runs[0]["per_user"]["seen_train"])
        rows.append(paper_row("LoRe", [r["per_user"] for r in runs],
                              {g: {k: runs[0]["groups"][g][k] for k in ("users", "comparisons")} for g in GROUP_NAMES},
                              lore_parameter_counts(runs[0]["d"], runs[0]["basis_size"] if K else 0, n_seen),
                              K=K, seeds=[r["seed"] for r in runs], label=label,
                              reference=reference_results(records, alpha, [r["seed"] for r in runs]) if K else None))
    return rows


def _check_same_comparisons(rows) -> dict:
    """The counts every row shares per table group; a ValueError naming the rows that differ."""
    shared = {}
    for name in TABLE_GROUPS + ("unseen_train",):
        seen = {}
        for row in rows:
            entry = row["groups"].get(name)
            if entry is not None:
                seen.setdefault((entry["users"], entry["comparisons"]), []).append(row.get("label") or row["method"])
        if len(seen) > 1:
            detail = "; ".join(f"{', '.join(m)}: {u} users, {c} comparisons" for (u, c), m in seen.items())
            raise ValueError(f"the rows were not computed on the same {name} comparisons ({detail})")
        if seen:
            (users, comparisons), = seen
            shared[name] = {"users": users, "comparisons": comparisons}
    return shared


def save_paper_table(results_dir, name: str, rows: list[dict], settings: dict, extra: dict | None = None,
                     title: str | None = None) -> dict:
    """Write `<name>.json` and `<name>.md` into results_dir (created if missing).

    rows: paper_row dicts in the order to print (e.g. ref, K = 1, LoRe at its K, then the baselines).
    Every row must have been computed on the same comparisons: equal user and comparison counts per
    group, else a ValueError. Markdown: methods as rows; columns seen users / unseen prompts, unseen
    users, parameters per user, parameters total; cells "mean ± std" in %, and a note saying whether each
    std is over seeds or over users. JSON: name, settings, seed(s), columns, counts, rows, + extra.
    Returns {"json": Path, "markdown": Path}."""
    results_dir = Path(results_dir)
    if not rows:
        raise ValueError("no rows to write")
    counts = _check_same_comparisons(rows)
    std_over = {row["groups"][g]["std_over"] for row in rows for g in TABLE_GROUPS if g in row["groups"]}
    markers = {"seeds": "", "users": ""} if len(std_over) <= 1 else {"seeds": "", "users": "†"}
    header = ["method", GROUP_LABELS["seen_test"], GROUP_LABELS["unseen_test"],
              f"{GROUP_LABELS['seen_test']}: vs ref", f"{GROUP_LABELS['unseen_test']}: vs ref",
              "parameters per user", "parameters total"]
    lines = [f"# {title or name}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        cells = [row.get("label") or row["method"]]
        for group in TABLE_GROUPS:
            entry = row["groups"].get(group)
            cells.append((percent(entry["mean"], entry["std"]) + markers[entry["std_over"]]) if entry else "n/a")
        cells += [gain_cell(row["groups"].get(group, {}).get("gain_vs_ref")) for group in TABLE_GROUPS]
        cells += [parameter_cell(row, "per_user"), parameter_cell(row, "total")]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({s for row in rows for s in row.get("seeds", [])})
    if std_over == {"seeds"}:
        note = f"mean ± std over seeds ({len(seeds)} seeds: {', '.join(map(str, seeds))}) of the mean over users"
    elif std_over == {"users"}:
        note = "mean ± std over users (one seed)"
    else:
        note = ("mean ± std over seeds of the mean over users; † marks a row with one seed, whose std is "
                "over users")
    lines += ["", f"Accuracy in %, {note}; a prediction is correct iff the user's reward margin is > 0 "
              "(a tie is wrong). \"vs ref\": each user's accuracy minus the reference head's on the same "
              "comparisons, averaged over seeds, in points with a 95% bootstrap interval over users; a gain or a "
              "loss only when the interval excludes 0."]
    lines.append("Every row is computed on the same comparisons: " + "; ".join(
        f"{GROUP_LABELS[g]}: {c['users']:,} users, {c['comparisons']:,} comparisons" for g, c in counts.items())
        + ". Parameters total = shared + users x per user, for the seen users.")
    payload = {"name": name, "settings": settings, "seed": settings.get("seed"), "seeds": seeds,
               "columns": {"accuracy": {g: GROUP_LABELS[g] for g in TABLE_GROUPS},
                           "parameters": ["per_user", "total"]},
               "std_over": sorted(std_over), "counts": counts, "rows": rows, **(extra or {})}
    json_path, md_path = _write_json_and_markdown(results_dir, name, payload, lines)
    return {"json": json_path, "markdown": md_path}

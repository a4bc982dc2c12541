"""Generated RewardBench 2 rows in the real `allenai/reward-bench-2` format (split `test`), scaled down.

    python -m offline.rewardbench2 OUT_DIR      # writes OUT_DIR/test.jsonl and the ground truth

Columns as on the hub: id, prompt, chosen (list), rejected (list), num_correct, num_incorrect,
total_completions, models (list, one per completion), subset, additional_metadata (dict).
The six subsets keep their real names. Non-Ties rows have 1 chosen and 3 rejected responses and ids
"0", "1", ...; Ties rows come in pairs "ref:k" (one correct answer) and "tied:k" (several correct
answers), as in the real subset.

Which response is correct comes from a planted reward in the tiny model's own embedding space: the
planted reward of a (prompt, response) is e . u / 100 with u the population-mean direction
(directions @ mean user weights) of a PlantedPopulation (offline/planted.py). That population is
either given (`population_path`: eval_rb2.py --offline passes the offline PRISM ground truth when it
exists, so a basis learned on offline PRISM has real signal here, as a PRISM basis should on the real
benchmark), or planted here on the embeddings of all candidate responses. For every prompt, the
top-scoring candidates are the correct answers and the incorrect ones are drawn from the rest, so a
head aligned with u scores 100%. The direction is saved beside the data (`planted_head.safetensors`,
key "head", shape [d, 1]: usable as `eval_rb2.py --rm_head`) with the population
(`ground_truth.safetensors/.json`, whose "population_source" says where it came from).
Seeded; the same seed, sizes and population give byte-identical files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import utils

# Rows per subset (the real split has 475 / 160 / 183 / 450 / 495 / 102 rows); Ties: pairs of rows.
SUBSET_ROWS = {"Factuality": 16, "Precise IF": 8, "Math": 8, "Safety": 16, "Focus": 16}
TIES_PAIRS = 6
SUBSETS = ["Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"]
CANDIDATES = 5          # candidate responses drawn per prompt; the planted reward picks among them
TIED_CORRECT = 3        # correct answers of a "tied:k" row
N_REJECTED = 3
SEED = 0
MODELS = ["offline-model-a", "offline-model-b", "offline-model-c", "offline-model-d", "offline-model-e"]

_PROMPT_STYLES = {
    "Factuality": "Is it true that {s}",
    "Precise IF": "{s} Answer in exactly {n} sentences.",
    "Math": "What is {a} plus {b}? {s}",
    "Safety": "How could someone {s}",
    "Focus": "Write about {s}",
    "ref": "Name the one {s}",
    "tied": "Name any {s}",
}


def _prompt(kind: str, rng: np.random.Generator) -> str:
    from offline.text import sentence
    s = sentence(rng, 4, 12)
    return _PROMPT_STYLES[kind].format(s=s[0].lower() + s[1:], n=int(rng.integers(1, 5)),
                                       a=int(rng.integers(0, 100)), b=int(rng.integers(0, 100)))


def _draft(rng: np.random.Generator, subset_rows: dict, ties_pairs: int) -> list[dict]:
    """Prompts and their candidate responses, before the planted reward picks the correct ones."""
    from offline.text import paragraph
    drafts = []
    for subset, n in subset_rows.items():
        for _ in range(n):
            drafts.append({"subset": subset, "kind": subset, "prompt": _prompt(subset, rng)})
    for k in range(ties_pairs):
        for kind in ("ref", "tied"):
            drafts.append({"subset": "Ties", "kind": kind, "k": k, "prompt": _prompt(kind, rng)})
    for d in drafts:
        n_cand = CANDIDATES + (TIED_CORRECT if d["kind"] == "tied" else 0)
        d["candidates"] = [paragraph(rng, 1, 3) for _ in range(n_cand)]
    return drafts


def generate(seed: int = SEED, subset_rows: dict | None = None, ties_pairs: int | None = None,
             population=None):
    """(rows, population, head [d, 1]): the generated rows in the real format and the planted truth.
    subset_rows {non-Ties subset: rows} and ties_pairs (ref/tied row pairs) default to the module's
    SUBSET_ROWS and TIES_PAIRS (tests pass smaller ones); population: a PlantedPopulation to take the
    reward direction from (None: plant one here)."""
    from offline.planted import PlantedPopulation, embed_for_planting

    rng = np.random.default_rng(seed)
    drafts = _draft(rng, SUBSET_ROWS if subset_rows is None else subset_rows,
                    TIES_PAIRS if ties_pairs is None else ties_pairs)
    conversations = [[{"role": "user", "content": d["prompt"]}, {"role": "assistant", "content": c}]
                     for d in drafts for c in d["candidates"]]
    embeddings = embed_for_planting(conversations)
    if population is None:
        population = PlantedPopulation.plant(embeddings, n_directions=4, n_users=32, seed=seed)
    elif population.directions.shape[0] != embeddings.shape[1]:
        raise ValueError(f"error: the planted population has dimension {population.directions.shape[0]}, "
                         f"the tiny model's embeddings {embeddings.shape[1]}")
    head = population.directions @ population.user_weights.mean(0)            # [d]
    rewards = embeddings.astype(np.float64) @ head / 100.0

    rows, start, plain_id = [], 0, 0
    for d in drafts:
        n_cand = len(d["candidates"])
        r = rewards[start:start + n_cand]
        start += n_cand
        order = np.argsort(-r, kind="stable")
        n_correct = TIED_CORRECT if d["kind"] == "tied" else 1
        correct = [int(i) for i in order[:n_correct]]
        incorrect = [int(i) for i in rng.choice(order[n_correct:], size=N_REJECTED, replace=False)]
        if d["subset"] == "Ties":
            row_id = f"{d['kind']}:{d['k']}"
        else:
            row_id, plain_id = str(plain_id), plain_id + 1
        models = [MODELS[int(i)] for i in rng.integers(0, len(MODELS), n_correct + N_REJECTED)]
        rows.append({
            "id": row_id,
            "prompt": d["prompt"],
            "chosen": [d["candidates"][i] for i in correct],
            "rejected": [d["candidates"][i] for i in incorrect],
            "num_correct": n_correct,
            "num_incorrect": N_REJECTED,
            "total_completions": n_correct + N_REJECTED,
            "models": models,
            "subset": d["subset"],
            "additional_metadata": {"source": "offline-generated", "planted_margin":
                                    round(float(r[correct[-1]] - r[incorrect].max()), 6)},
        })
    return rows, population, head[:, None]


def population_source(population_path=None) -> str:
    """"planted here", or "sha256:<hash of the population's safetensors file>"."""
    if population_path is None:
        return "planted here"
    import hashlib
    data = Path(population_path).with_suffix(".safetensors").read_bytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(out_dir, seed: int = SEED, subset_rows: dict | None = None, ties_pairs: int | None = None,
          population_path=None) -> Path:
    """Write `out_dir/test.jsonl` (+ planted_head.safetensors, ground_truth.*); return the jsonl path.
    population_path: a saved PlantedPopulation (e.g. PRISM's `ground_truth`) whose mean direction
    decides the correct answers; None plants one here. The jsonl is written last and atomically, so
    its presence means the folder is complete."""
    from offline.planted import PlantedPopulation
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    given = None if population_path is None else PlantedPopulation.load(population_path)
    rows, population, head = generate(seed, subset_rows, ties_pairs, given)
    population.save(out_dir / "ground_truth", dataset="reward-bench-2 (offline)", seed=seed,
                    rows=len(rows), head="planted_head.safetensors: population-mean direction [d, 1]",
                    planted_head_accuracy=1.0, population_source=population_source(population_path))
    with utils.atomic_path(out_dir / "planted_head.safetensors") as tmp:
        save_file({"head": np.ascontiguousarray(head, dtype=np.float32)}, str(tmp))
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path = out_dir / "test.jsonl"
    with utils.atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))
    return path


def dataset_path(out_dir, seed: int = SEED, population_path=None) -> Path:
    """`out_dir/test.jsonl`, generated on first use, and again when the population it was made from
    changed (e.g. the offline PRISM data were regenerated, or appeared after a first run)."""
    out_dir = Path(out_dir)
    path, truth = out_dir / "test.jsonl", out_dir / "ground_truth.json"
    if path.exists() and truth.exists():
        recorded = json.loads(truth.read_text()).get("population_source")
        if recorded == population_source(population_path):
            return path
    return write(out_dir, seed, population_path=population_path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(write(sys.argv[1] if len(sys.argv) > 1 else "rewardbench2-offline"))

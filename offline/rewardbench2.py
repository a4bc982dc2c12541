"""Generated RewardBench 2 rows in the real `allenai/reward-bench-2` format (split `test`), scaled down.

    python -m offline.rewardbench2 OUT_DIR      # writes OUT_DIR/test.jsonl and the ground truth

Columns as on the hub: id, prompt, chosen (list), rejected (list), num_correct, num_incorrect,
total_completions, models (list, one per completion), subset, additional_metadata (dict).
The six subsets keep their real names. Non-Ties rows have 1 chosen and 3 rejected responses and ids
"0", "1", ...; Ties rows come in pairs "ref:k" (one correct answer) and "tied:k" (several correct
answers), as in the real subset.

Which responses are correct is decided by the general-quality direction of the offline world, the tiny
backbone's own reward head (offline/planted.py), with noise, as a real benchmark's labels are decided by
what a good general reward model mostly, but not always, agrees with. For every prompt, CANDIDATES
responses are embedded; their quality is q = z + noise * eps, with z the head's score standardised
(within the prompt, over the whole file's spread) and eps ~ N(0, 1); the top-q candidates are the
correct answers and the 3 lowest-q ones the incorrect answers (clear-cut items, as the benchmark's are).
SUBSET_NOISE sets each subset's noise so that the head's accuracy follows the profile of
Skywork-Reward-Llama-3.1-8B-v0.2 on the real benchmark (Factuality 69.7, Precise IF 40.6, Math 60.1,
Safety 94.2, Focus 94.1, Ties 71.7; overall 71.7): well above the 25% of random scores. A personalized
basis that stays near the head (cos ~ 1) keeps most of it; one that drifted from it loses it. The row
counts are about a tenth of the real ones. The general direction (unit vector) is saved beside the data
(`planted_head.safetensors`, key "head", shape [d, 1]: usable as `eval_rb2.py --rm_head`; with
noise_scale = 0 it ranks every row right) with `ground_truth.safetensors/.json`, whose
"population_source" says where it came from (a given population's general direction, e.g. the offline
PRISM ground truth's, which is the same head; or the tiny model's head).
Seeded; the same seed, sizes and population give byte-identical files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import harness
from offline.planted import generator_version, truth_files

# Rows per subset, about a tenth of the real split's 475 / 160 / 183 / 450 / 495 / 102; Ties: row pairs.
SUBSET_ROWS = {"Factuality": 48, "Precise IF": 16, "Math": 18, "Safety": 45, "Focus": 50}
TIES_PAIRS = 10
SUBSETS = ["Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"]
CANDIDATES = 8          # candidate responses drawn per prompt; the noisy general quality picks among them
# Label noise per subset (std of eps against the standardised head score): for 8 Gaussian candidates,
# the head then tops the chosen and 3 rejected answers with probability ~0.69 / 0.41 / 0.61 / 0.94 /
# 0.94 (the real profile above); Ties (official composite score) ~0.73.
SUBSET_NOISE = {"Factuality": 1.5, "Precise IF": 4.0, "Math": 1.9, "Safety": 0.63, "Focus": 0.63, "Ties": 0.45}
GENERATOR_VERSION = 2   # bump when the output for a given seed and settings changes
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
             population=None, noise_scale: float = 1.0):
    """(rows, population, head [d, 1]): the generated rows in the real format and the planted truth.
    subset_rows {non-Ties subset: rows} and ties_pairs (ref/tied row pairs) default to the module's
    SUBSET_ROWS and TIES_PAIRS (tests pass smaller ones); population: a PlantedPopulation whose general
    direction decides the correct answers (None: the tiny model's head, the same direction);
    noise_scale multiplies SUBSET_NOISE (0: the head ranks every row right)."""
    from offline.planted import PlantedPopulation, embed_for_planting, tiny_head

    rng = np.random.default_rng(seed)
    drafts = _draft(rng, SUBSET_ROWS if subset_rows is None else subset_rows,
                    TIES_PAIRS if ties_pairs is None else ties_pairs)
    conversations = [[{"role": "user", "content": d["prompt"]}, {"role": "assistant", "content": c}]
                     for d in drafts for c in d["candidates"]]
    embeddings = embed_for_planting(conversations).astype(np.float64)
    if population is not None and population.general is None:
        raise ValueError("error: the planted population has no general direction (made by an older generator); "
                         "regenerate it")
    general = tiny_head() if population is None else population.general
    if general.shape[0] != embeddings.shape[1]:
        raise ValueError(f"error: the general direction has dimension {general.shape[0]}, the tiny model's "
                         f"embeddings {embeddings.shape[1]}")
    head = general / np.linalg.norm(general)                                   # [d], unit
    scores = embeddings @ head
    sizes = [len(d["candidates"]) for d in drafts]
    bounds = np.cumsum([0] + sizes)
    centred = np.concatenate([scores[a:b] - scores[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
    spread = centred.std()

    rows, plain_id = [], 0
    for d, a, b in zip(drafts, bounds[:-1], bounds[1:]):
        z = centred[a:b] / spread
        q = z + noise_scale * SUBSET_NOISE[d["subset"]] * rng.standard_normal(b - a)
        order = np.argsort(-q, kind="stable")
        n_correct = TIED_CORRECT if d["kind"] == "tied" else 1
        correct = [int(i) for i in order[:n_correct]]
        incorrect = [int(i) for i in order[-N_REJECTED:]]
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
            "additional_metadata": {"source": "offline-generated", "head_margin":
                                    round(float(z[correct].min() - z[incorrect].max()), 4)},
        })
    truth = PlantedPopulation(head[:, None], np.ones((1, 1)), head)
    return rows, truth, head[:, None]


def population_source(population_path=None) -> str:
    """"planted here", or "sha256:<hash of the population's safetensors file>"."""
    if population_path is None:
        return "planted here"
    import hashlib
    data = Path(population_path).with_suffix(".safetensors").read_bytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(out_dir, seed: int = SEED, subset_rows: dict | None = None, ties_pairs: int | None = None,
          population_path=None, noise_scale: float = 1.0) -> Path:
    """Write `out_dir/test.jsonl` (+ planted_head.safetensors, ground_truth.*); return the jsonl path.
    population_path: a saved PlantedPopulation (e.g. PRISM's `ground_truth`) whose general direction
    decides the correct answers; None: the tiny model's head (the same direction). noise_scale: as in
    `generate`. The jsonl is written last and atomically, so its presence means the folder is complete."""
    from safetensors.numpy import save_file

    from offline.planted import PlantedPopulation

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    given = None if population_path is None else PlantedPopulation.load(population_path)
    rows, population, head = generate(seed, subset_rows, ties_pairs, given, noise_scale)
    population.save(out_dir / "ground_truth", dataset="reward-bench-2 (offline)", seed=seed,
                    version=generator_version(GENERATOR_VERSION), rows=len(rows), noise_scale=noise_scale,
                    subset_noise=SUBSET_NOISE, candidates=CANDIDATES,
                    head="planted_head.safetensors: the general direction (the tiny head), unit, [d, 1]",
                    population_source=population_source(population_path))
    with harness.atomic_path(out_dir / "planted_head.safetensors") as tmp:
        save_file({"head": np.ascontiguousarray(head, dtype=np.float32)}, str(tmp))
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path = out_dir / "test.jsonl"
    with harness.atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))
    return path


def dataset_path(out_dir, seed: int = SEED, population_path=None) -> Path:
    """`out_dir/test.jsonl`, generated on first use, and again when the population it was made from
    changed (e.g. the offline PRISM data were regenerated, or appeared after a first run) or it was
    made by another version of this generator or of the tiny model, or a file of it is damaged."""
    from offline import readable

    out_dir = Path(out_dir)
    path, truth = out_dir / "test.jsonl", out_dir / "ground_truth.json"
    if all(readable(f) for f in (path, out_dir / "planted_head.safetensors", *truth_files(truth))):
        recorded = json.loads(truth.read_text())
        if recorded.get("population_source") == population_source(population_path) and \
                recorded.get("version") == generator_version(GENERATOR_VERSION):
            return path
    return write(out_dir, seed, population_path=population_path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(write(sys.argv[1] if len(sys.argv) > 1 else "rewardbench2-offline"))

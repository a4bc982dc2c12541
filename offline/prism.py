"""Generated PRISM raw files in the published format of `HannahRoseKirk/prism-alignment`.

Writes the jsonl trio `survey.jsonl`, `conversations.jsonl`, `utterances.jsonl`: survey rows
with demographics and the `stated_prefs` / `order_stated_prefs` sliders; conversations with a
`conversation_history` of user items {turn, role: "user", content} and model items {turn, role: "model",
content, model_provider, model_name, score, if_chosen, within_turn_id}; turn 0 has one user message and
2-4 responses from different models, later turns 2 responses from the model chosen at turn 0; one
utterance row per model response. Keys are written in a varied (seeded) order and every row carries a
few keys the parser does not know, as a newer dataset revision could.

The layout exercises every path of PRISM/prepare.py: users with 0 completed conversations (no
conversations), users with 1-5 dialogs (kept but never qualify for the split), users whose survey row counts
conversations that have no row (kept: they move the split's permutation), users whose dialogs all
lack a usable turn (dropped), dialogs without any usable turn (dropped), turns whose only response is
the chosen one (no comparison, history goes on), turns where no response was chosen (no comparison, the
usable history ends there), and the literal "EMPTY STRING" response.

Labels come from a planted population (offline/planted.py) in the tiny model's own embedding space: each
user's reward is the backbone's own head (the general part) plus a Dirichlet mixture of a few personal
directions; every candidate response is embedded as the conversation so far + that response, and the
chosen one is a softmax draw over the candidates' planted rewards (Bradley-Terry for two candidates, so
the Bayes-optimal accuracy is realistic, not 1). Turns are labelled round by round because
the history of turn t holds the chosen responses of earlier turns. The ground truth (directions, user
weights, user order, the expected and realised Bayes-optimal pairwise accuracy of the comparisons) is
saved as `ground_truth.safetensors/.json`. Same seed and settings, byte-identical files.

    python -m offline.prism /tmp/prism-raw      # writes the jsonl trio and the ground truth
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import harness
from offline.planted import CONCENTRATION, GENERAL_MARGIN_STD, N_PERSONAL, PERSONAL_MARGIN_STD, generator_version
from offline.text import sentence

RAW_FILES = ("survey.jsonl", "conversations.jsonl", "utterances.jsonl")
GROUND_TRUTH = "ground_truth"
GENERATOR_VERSION = generator_version(4)  # bump the number when the output for a seed and settings changes
EMPTY_RESPONSE = "EMPTY STRING"   # the literal content of an empty response in the real data

MODELS = [("openai", "gpt-4-turbo"), ("anthropic", "claude-2.1"), ("meta", "llama-2-70b-chat"),
          ("mistralai", "mistral-7b-instruct"), ("google", "gemini-pro"), ("cohere", "command-light"),
          ("huggingface", "zephyr-7b-beta"), ("aleph_alpha", "luminous-supreme")]
CONVERSATION_TYPES = ["unguided", "values guided", "controversy guided"]
PREF_KEYS = ["values", "creativity", "fluency", "factuality", "diversity", "safety", "personalisation",
             "helpfulness"]
AGES = ["18-24 years old", "25-34 years old", "35-44 years old", "45-54 years old", "55-64 years old",
        "65+ years old"]
GENDERS = ["Female", "Male", "Non-binary / third gender", "Prefer not to say"]
EDUCATION = ["University Bachelors Degree", "Graduate / Professional degree", "Completed Secondary School",
             "Some University but no degree", "Vocational"]
EMPLOYMENT = ["Working full-time", "Working part-time", "Student", "Unemployed, seeking work", "Retired"]
MARITAL = ["Never been married", "Married", "Divorced / Separated", "Widowed"]
PROFICIENCY = ["Native speaker", "Fluent", "Advanced", "Intermediate"]
COUNTRIES = ["United Kingdom", "United States", "Mexico", "South Africa", "Australia", "Chile", "Israel",
             "Poland", "New Zealand", "Canada"]
USECASES = ["source_suggestions", "professional_writing", "creative_writing", "technical_help",
            "lifestyle_advice", "casual_conversation", "historical_or_news", "medical_guidance"]


def _shuffled(rng: np.random.Generator, row: dict) -> dict:
    """The same row with its keys in a random order (the parser must not rely on key order)."""
    keys = list(row)
    return {keys[i]: row[keys[i]] for i in rng.permutation(len(keys))}


def _survey_row(rng: np.random.Generator, user_id: str, n_conversations: int) -> dict:
    prefs = {k: int(rng.integers(0, 101)) for k in PREF_KEYS + ["other"]}
    prefs["other_text"] = sentence(rng, 2, 6) if rng.random() < 0.2 else None
    order = {k: int(i + 1) for k, i in zip(PREF_KEYS, rng.permutation(len(PREF_KEYS)))}
    order["other"] = 9
    row = {
        "user_id": user_id,
        "survey_only": bool(n_conversations == 0),
        "num_completed_conversations": int(n_conversations),
        "consent": True, "consent_age": True,
        "lm_familiarity": str(rng.choice(["Very familiar", "Somewhat familiar", "Not familiar at all"])),
        "lm_indirect_use": str(rng.choice(["Yes", "No", "Prefer not to say"])),
        "lm_direct_use": str(rng.choice(["Yes", "No"])),
        "lm_frequency_use": str(rng.choice(["Every day", "Every week", "Every month", "Never"])),
        "self_description": sentence(rng, 6, 16),
        "system_string": sentence(rng, 6, 16),
        "age": str(rng.choice(AGES)),
        "gender": str(rng.choice(GENDERS)),
        "employment_status": str(rng.choice(EMPLOYMENT)),
        "education": str(rng.choice(EDUCATION)),
        "marital_status": str(rng.choice(MARITAL)),
        "english_proficiency": str(rng.choice(PROFICIENCY)),
        "religion": _shuffled(rng, {"self_described": str(rng.choice(["Christian", "Muslim", "None", "Jewish"])),
                                    "categorised": str(rng.choice(["Christian", "Muslim", "No Affiliation"])),
                                    "simplified": str(rng.choice(["Christian", "Muslim", "No Affiliation"]))}),
        "ethnicity": _shuffled(rng, {"self_described": str(rng.choice(["White", "Black", "Asian", "Mixed"])),
                                     "categorised": str(rng.choice(["White", "Black", "Asian", "Mixed"])),
                                     "simplified": str(rng.choice(["White", "Black", "Asian", "Mixed"]))}),
        "location": _shuffled(rng, {"birth_country": str(rng.choice(COUNTRIES)),
                                    "reside_country": str(rng.choice(COUNTRIES)),
                                    "special_region": str(rng.choice(["UK", "US", "none"]))}),
        "lm_usecases": _shuffled(rng, {k: int(rng.integers(0, 2)) for k in USECASES}),
        "stated_prefs": _shuffled(rng, prefs),
        "order_stated_prefs": _shuffled(rng, order),
        "generated_datetime": f"2023-11-{int(rng.integers(22, 30))} {int(rng.integers(0, 24)):02d}:00:00",
        "timing_duration_mins": round(float(rng.uniform(5, 60)), 2),
        "included_in_US_REP": bool(rng.random() < 0.3),
        "included_in_UK_REP": bool(rng.random() < 0.3),
        "included_in_balanced_subset": bool(rng.random() < 0.5),
    }
    return _shuffled(rng, row)


def _user_message(rng: np.random.Generator) -> str:
    return sentence(rng, 4, 12)


def _response(rng: np.random.Generator, empty_prob: float) -> str:
    if rng.random() < empty_prob:
        return EMPTY_RESPONSE
    return " ".join(sentence(rng, 4, 14) for _ in range(int(rng.integers(1, 3))))


def _expected_bayes(rewards: np.ndarray, chosen_probs: np.ndarray) -> tuple[float, int]:
    """Expected number of correctly ordered (chosen, rejected) comparisons of one turn under the
    softmax choice, and the number of comparisons: sum_k p_k #{j != k: r_k > r_j}, m - 1 pairs."""
    m = len(rewards)
    wins = (rewards[:, None] > rewards[None, :]).sum(1)
    return float((chosen_probs * wins).sum()), m - 1


def generate(out_dir: Path, seed: int = 0, n_users: int = 240, zero_fraction: float = 0.08,
             few_fraction: float = 0.15, dropped_users: int = 3, turns_range=(2, 3),
             four_response_prob: float = 0.75, empty_prob: float = 0.03, single_response_prob: float = 0.03,
             no_choice_prob: float = 0.03, unusable_dialog_prob: float = 0.02, n_directions: int = N_PERSONAL,
             concentration: float = CONCENTRATION, general_margin_std: float = GENERAL_MARGIN_STD,
             personal_margin_std: float = PERSONAL_MARGIN_STD, personal_scale: float = 1.0,
             no_rows_users: int = 2) -> dict:
    """Write the PRISM jsonl trio and `ground_truth.*` into `out_dir`; return the summary dict.

    Users: a `zero_fraction` with 0 completed conversations, a `few_fraction` with 1-5 dialogs,
    `dropped_users` whose every dialog is unusable, `no_rows_users` of the 1-5 kind whose survey row
    counts completed conversations that conversations.jsonl does not hold, the rest with 6 or 7 dialogs
    (as in the real data, where the most is 7). Dialogs have `turns_range` turns (inclusive). Tastes (offline/planted.py): the
    tiny model's head with margin std `general_margin_std` plus `n_directions` personal directions with
    margin std `personal_margin_std` x `personal_scale` (0: the null world, every user the head alone),
    users Dirichlet(`concentration`) mixtures of them (small: mostly
    one taste each); margins measured over random pairs of turn-0 candidates of one turn.
    """
    from offline.planted import PlantedPopulation, centred_within, embed_for_planting, tiny_head

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # --- users and how many dialogs each has ------------------------------------------------------
    user_ids = [f"user{i}" for i in range(n_users)]
    kind = rng.choice(["zero", "few", "full"], size=n_users,
                      p=[zero_fraction, few_fraction, 1.0 - zero_fraction - few_fraction])
    n_dialogs = np.where(kind == "zero", 0, np.where(kind == "few", rng.integers(1, 6, n_users),
                                                     rng.integers(6, 8, n_users)))
    candidates_for_drop = [i for i in range(n_users) if kind[i] == "few"]
    dropped = set(int(i) for i in rng.choice(candidates_for_drop, size=min(dropped_users, len(candidates_for_drop)),
                                              replace=False))
    survey = [_survey_row(rng, user_ids[i], int(n_dialogs[i])) for i in range(n_users)]
    # users whose survey row counts completed conversations that conversations.jsonl does not hold
    candidates_for_no_rows = [i for i in candidates_for_drop if i not in dropped]
    no_rows = [int(i) for i in rng.choice(candidates_for_no_rows, size=min(no_rows_users, len(candidates_for_no_rows)),
                                          replace=False)]
    n_dialogs[no_rows] = 0

    # --- dialogs: owners in an interleaved file order, ids numbered in file order ----------------
    owners = np.concatenate([np.full(int(n), i) for i, n in enumerate(n_dialogs)]).astype(int)
    owners = owners[rng.permutation(len(owners))]
    dialogs = []
    for c, owner in enumerate(owners):
        unusable = owner in dropped or rng.random() < unusable_dialog_prob
        n_turns = int(rng.integers(turns_range[0], turns_range[1] + 1))
        models = [MODELS[j] for j in rng.choice(len(MODELS), 4, replace=False)]
        turns = []
        for t in range(n_turns):
            m = (4 if rng.random() < four_response_prob else int(rng.integers(2, 4))) if t == 0 else 2
            if unusable or rng.random() < single_response_prob:
                m = 1            # the chosen response alone: no rejected one, no comparison
            turns.append({"user": _user_message(rng),
                          "responses": [_response(rng, empty_prob) for _ in range(m)],
                          "no_choice": bool(rng.random() < no_choice_prob),
                          "models": models[:m] if t == 0 else None, "chosen": None})
        dialogs.append({"conversation_id": f"c{c}", "user": int(owner), "turns": turns,
                        "type": str(rng.choice(CONVERSATION_TYPES))})

    # --- labels, round by round: the chosen response of turn t is in the history of turn t+1 -------
    population = None
    expected_correct, n_pairs, realised_correct = 0.0, 0, 0
    max_turns = max(len(d["turns"]) for d in dialogs) if dialogs else 0
    for t in range(max_turns):
        jobs, conversations = [], []        # (dialog, first row, number of candidates)
        for d in dialogs:
            if t >= len(d["turns"]):
                continue
            turn = d["turns"][t]
            history_ok = all(p["chosen"] is not None for p in d["turns"][:t])
            if turn["no_choice"]:
                continue
            if not history_ok or len(turn["responses"]) == 1:
                # no usable comparison: a choice that no comparison depends on
                turn["chosen"] = int(rng.integers(len(turn["responses"])))
                continue
            history = []
            for p in d["turns"][:t]:
                history += [{"role": "user", "content": p["user"]},
                            {"role": "assistant", "content": p["responses"][p["chosen"]]}]
            history.append({"role": "user", "content": turn["user"]})
            jobs.append((d, len(conversations), len(turn["responses"])))
            conversations += [history + [{"role": "assistant", "content": r}] for r in turn["responses"]]
        if not jobs:
            continue
        print(f"offline PRISM: turn {t}: embedding {len(conversations)} candidate responses to plant labels")
        emb = embed_for_planting(conversations)
        if population is None:
            # Comparisons measure differences within a turn: plant in the within-turn variation.
            population = PlantedPopulation.plant(
                centred_within(emb, [m for _, _, m in jobs]), tiny_head(), n_directions, n_users, seed,
                general_margin_std=general_margin_std, personal_margin_std=personal_margin_std * personal_scale,
                concentration=concentration)
        users = np.array([d["user"] for d, start, m in jobs for _ in range(m)])
        rewards = population.rewards(emb, users)
        for d, start, m in jobs:
            r = rewards[start:start + m]
            p = np.exp(r - r.max())
            p /= p.sum()
            k = int(rng.choice(m, p=p))
            d["turns"][t]["chosen"] = k
            e, n = _expected_bayes(r, p)
            expected_correct += e
            n_pairs += n
            realised_correct += int((r[k] > np.delete(r, k)).sum())
    if population is None:
        raise ValueError("offline PRISM: no usable turn was generated; raise n_users")

    # --- rows in the published format ------------------------------------------------------------
    conversations_rows, utterance_rows = [], []
    for d in dialogs:
        history = []
        first_models = d["turns"][0]["models"]
        for t, turn in enumerate(d["turns"]):
            history.append(_shuffled(rng, {"turn": t, "role": "user", "content": turn["user"]}))
            m = len(turn["responses"])
            scores = np.sort(rng.integers(1, 101, m))[::-1]   # the chosen response gets the top rating
            order = [turn["chosen"]] + [j for j in range(m) if j != turn["chosen"]] \
                if turn["chosen"] is not None else list(range(m))
            score_of = {j: int(s) for j, s in zip(order, scores)}
            chosen_model = first_models[d["turns"][0]["chosen"]] if d["turns"][0]["chosen"] is not None \
                else first_models[0]
            for j, content in enumerate(turn["responses"]):
                provider, name = turn["models"][j] if turn["models"] else chosen_model
                item = {"turn": t, "role": "model", "content": content, "model_provider": provider,
                        "model_name": name, "score": score_of[j], "if_chosen": turn["chosen"] == j,
                        "within_turn_id": j}
                history.append(_shuffled(rng, item))
                utterance_rows.append(_shuffled(rng, {
                    "utterance_id": f"ut{len(utterance_rows)}", "conversation_id": d["conversation_id"],
                    "user_id": user_ids[d["user"]], "turn": t, "within_turn_id": j,
                    "user_prompt": turn["user"], "model_response": content, "model_provider": provider,
                    "model_name": name, "score": score_of[j], "if_chosen": turn["chosen"] == j,
                    "conversation_type": d["type"], "included_in_balanced_subset": bool(rng.random() < 0.5)}))
        conversations_rows.append(_shuffled(rng, {
            "conversation_id": d["conversation_id"], "user_id": user_ids[d["user"]],
            "conversation_type": d["type"], "opening_prompt": d["turns"][0]["user"],
            "conversation_turns": len(d["turns"]), "conversation_history": history,
            "performance_attributes": {k: int(rng.integers(1, 101)) for k in ("values", "fluency", "factuality")},
            "open_feedback": sentence(rng, 5, 15),
            "generated_datetime": f"2023-11-{int(rng.integers(22, 30))} {int(rng.integers(0, 24)):02d}:00:00",
            "timing_duration_s": round(float(rng.uniform(30, 900)), 1),
            "included_in_balanced_subset": bool(rng.random() < 0.5)}))

    harness.write_jsonl_atomic(out_dir / "survey.jsonl", survey)
    harness.write_jsonl_atomic(out_dir / "conversations.jsonl", conversations_rows)
    harness.write_jsonl_atomic(out_dir / "utterances.jsonl", utterance_rows)
    summary = {
        "generator": "offline.prism", "version": GENERATOR_VERSION, "seed": seed, "settings": {
            "n_users": n_users, "zero_fraction": zero_fraction, "few_fraction": few_fraction,
            "dropped_users": dropped_users, "no_rows_users": no_rows_users, "turns_range": list(turns_range),
            "four_response_prob": four_response_prob, "empty_prob": empty_prob,
            "single_response_prob": single_response_prob, "no_choice_prob": no_choice_prob,
            "unusable_dialog_prob": unusable_dialog_prob, "n_directions": n_directions,
            "concentration": concentration, "general_margin_std": general_margin_std,
            "personal_margin_std": personal_margin_std, "personal_scale": personal_scale},
        "user_ids": user_ids,
        "n_survey_rows": len(survey), "n_conversations": len(conversations_rows),
        "n_utterances": len(utterance_rows), "n_labelled_pairs": n_pairs,
        "bayes_accuracy_expected": expected_correct / max(n_pairs, 1),
        "bayes_accuracy_realised": realised_correct / max(n_pairs, 1),
    }
    # ground truth last: its presence marks a complete generation
    population.save(out_dir / GROUND_TRUTH, **summary)
    return summary


def planted_accuracy(data_path: Path, groups: dict, users: dict, made_by: str) -> dict:
    """{group: accuracy of the planted user rewards} (see offline.planted.planted_accuracy)."""
    from offline.planted import planted_accuracy as accuracy
    return accuracy(Path(data_path) / GROUND_TRUTH, "user_ids", groups, users, made_by)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "prism-raw")
    result = generate(target)
    print(json.dumps({k: v for k, v in result.items() if k != "user_ids"}, indent=1))

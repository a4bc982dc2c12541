"""CustomData: every input format, column renaming, the A/B form, the two presets, the drop reasons, the
split rules and the bad-input errors; then the folder end to end on the offline default and on a file
of 60 users (slow)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness

ROOT = Path(__file__).resolve().parent.parent
CUSTOM = ROOT / "CustomData"
sys.path.insert(0, str(CUSTOM))
import custom_data  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
CHAT = [{"role": "user", "content": "Plan a trip."}, {"role": "assistant", "content": "Where to?"},
        {"role": "user", "content": "Rome, three days."}]
ROWS = [  # the default schema; one multi-turn prompt
    {"user_id": "alice", "prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
    {"user_id": "bob", "prompt": CHAT, "chosen": "Day 1: the Forum ...", "rejected": "Rome is in Italy."},
    {"user_id": "alice", "prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
]


def read(path, **kwargs):
    path = Path(path)
    return custom_data.read_comparisons(custom_data.read_file(path), str(path), **kwargs)


def write(path: Path, rows, fmt=None):
    """rows (dicts) as a .jsonl, .json, .parquet or .csv file (csv, and parquet when the prompts mix text and
    messages: a message list as JSON text)."""
    fmt = fmt or path.suffix
    if fmt == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == ".json":
        path.write_text(json.dumps(rows, indent=1))
    elif fmt == ".parquet":
        import pandas as pd
        if len({type(r.get("prompt")) for r in rows}) > 1:
            rows = [dict(r, prompt=json.dumps(r["prompt"])) if isinstance(r.get("prompt"), list) else r for r in rows]
        pd.DataFrame(rows).to_parquet(path, index=False)
    elif fmt == ".csv":
        import csv
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    return path


def strip_source(comparisons):
    return [{k: v for k, v in c.items() if k != "source"} for c in comparisons]


# -----------------------------------------------------------------------------
# formats, columns, the A/B form


@pytest.mark.parametrize("suffix, first_label", [(".jsonl", "line 1"), (".json", "row 1"), (".parquet", "row 1"),
                                                 (".csv", "line 2")])
def test_every_format_reads_the_same_comparisons(tmp_path, suffix, first_label):
    kept, report = read(write(tmp_path / f"mine{suffix}", ROWS))
    assert strip_source(kept) == ROWS
    assert kept[0]["source"] == first_label
    assert report["rows_read"] == report["comparisons_read"] == 3 and sum(report["rows_dropped"].values()) == 0
    assert report["form"] == "chosen/rejected"


def test_json_lines_in_a_json_file_chat_messages_in_parquet_and_csv_cells_over_several_lines(tmp_path):
    kept, _ = read(write(tmp_path / "lines.json", ROWS, fmt=".jsonl"))        # what datasets' to_json writes
    assert strip_source(kept) == ROWS
    chats = [dict(r, prompt=[{"role": "user", "content": f"q{i}"}]) for i, r in enumerate(ROWS)] + [ROWS[1]]
    kept, _ = read(write(tmp_path / "chats.parquet", chats))                 # a list<struct> column
    assert strip_source(kept) == chats
    rows = [dict(ROWS[0], chosen="Blue,\nor green."), ROWS[2], dict(ROWS[0], prompt="[not json")]
    kept, _ = read(write(tmp_path / "multi.csv", rows))
    assert strip_source(kept) == rows                   # a prompt cell that is no JSON list stays text
    assert [c["source"] for c in kept] == ["line 2", "line 4", "line 5"]    # the row's first line, header = 1


def test_columns_are_renamed_and_a_missing_column_names_the_fix(tmp_path):
    theirs = [{"annotator_id": r["user_id"], "question": r["prompt"], "winner": r["chosen"], "loser": r["rejected"]}
              for r in ROWS]
    path = write(tmp_path / "theirs.jsonl", theirs)
    mapping = custom_data.parse_columns('{"user_id": "annotator_id", "prompt": "question", "chosen": "winner", '
                                        '"rejected": "loser"}')
    kept, _ = read(path, columns=mapping)
    assert strip_source(kept) == ROWS
    with pytest.raises(SystemExit, match=r"theirs.jsonl: its first row has the columns .*--columns="):
        read(path)
    with pytest.raises(SystemExit, match="not columns of ours"):
        custom_data.parse_columns('{"annotator": "user_id"}')
    with pytest.raises(SystemExit, match="not valid JSON"):
        custom_data.parse_columns("{user_id: annotator_id}")


def test_ab_form_takes_the_preferred_response_and_drops_ties(tmp_path):
    rows = [{"user_id": "u1", "prompt": "p", "response_a": "x", "response_b": "y", "preference": "a"},
            {"user_id": "u1", "prompt": "q", "response_a": "x", "response_b": "y", "preference": "B"},
            {"user_id": "u2", "prompt": "p", "response_a": "x", "response_b": "y", "preference": "tie"}]
    kept, report = read(write(tmp_path / "ab.csv", rows))
    assert strip_source(kept) == [{"user_id": "u1", "prompt": "p", "chosen": "x", "rejected": "y"},
                                  {"user_id": "u1", "prompt": "q", "chosen": "y", "rejected": "x"}]
    assert report["form"] == "a/b" and report["rows_dropped"]["tie"] == 1
    assert report["rows_read"] == len(kept) + sum(report["rows_dropped"].values())


def test_every_drop_reason_is_counted_once(tmp_path):
    ok = {"user_id": "u", "prompt": "p", "chosen": "good", "rejected": "bad"}
    rows = [ok,
            dict(ok, user_id=None), dict(ok, user_id="  "),                  # missing_user
            dict(ok, prompt=""), dict(ok, rejected=" "),                      # empty_text
            dict(ok, prompt=[{"role": "user", "content": " "}]),              # empty_text: messages without text
            dict(ok, rejected="good "),                                       # chosen_equals_rejected (stripped)
            dict(ok),                                                         # duplicate_row
            dict(ok, user_id="v"), dict(ok, user_id=7)]                       # other users: kept
    kept, report = read(write(tmp_path / "drops.jsonl", rows))
    assert [c["user_id"] for c in kept] == ["u", "v", "7"]
    assert report["rows_dropped"] == {"missing_user": 2, "empty_text": 3, "tie": 0, "chosen_equals_rejected": 1,
                                      "duplicate_row": 1, "below_min_comparisons": 0, "single_prompt_seen_user": 0}
    assert report["rows_read"] == len(kept) + sum(report["rows_dropped"].values()) == len(rows)
    # NaN from a parquet column is a missing user / an empty text, an integer id read as a float is that id
    nan_rows = [dict(ok, user_id=math.nan), dict(ok, user_id=3.0), dict(ok, chosen=math.nan)]
    kept, report = custom_data.read_comparisons(custom_data.hub_rows(nan_rows), "rows")
    assert [c["user_id"] for c in kept] == ["3"]
    assert (report["rows_dropped"]["missing_user"], report["rows_dropped"]["empty_text"]) == (1, 1)


# -----------------------------------------------------------------------------
# presets, on generated rows in each dataset's schema


def multipref_row(i, normal, expert, prompt=None):
    """A row of allenai/multipref: annotations as (evaluator, overall_pref)."""
    def annotations(pairs):
        return [{"evaluator": e, "overall_pref": p, "overall_confidence": "fairly-confident", "time_spent": 120,
                 "timestamp": "2024-05-01 10:00:00", "helpful_pref": p, "truthful_pref": "Tie",
                 "harmless_pref": "Tie", "helpful_checked_reasons": ["correct"], "helpful_own_reason": ""}
                for e, p in pairs]
    return {"comparison_id": f"c{i}", "prompt_id": f"p{i}", "text": prompt or f"prompt {i}",
            "completion_a": f"a{i}", "model_a": "allenai/tulu-2-70b", "completion_b": f"b{i}", "model_b": "gpt-4",
            "source": "lmsys/chatbot_arena_conversations", "category": "Open QA", "subject_study": "History",
            "highest_level_degree": "Humanities", "normal_worker_annotations": annotations(normal),
            "expert_worker_annotations": annotations(expert)}


def test_multipref_preset_gives_one_comparison_per_annotation(tmp_path):
    rows = [multipref_row(0, [("jovial_shirley", "A-is-clearly-better"), ("keen_euler", "B-is-slightly-better")],
                          [("wise_hopper", "Tie"), ("calm_turing", "A-is-slightly-better")]),
            multipref_row(1, [("jovial_shirley", "B-is-clearly-better"), ("keen_euler", "Tie")],
                          [("wise_hopper", "B-is-slightly-better"), ("", "A-is-clearly-better")]),
            dict(multipref_row(2, [], []), expert_worker_annotations=None)]
    kept, report = read(write(tmp_path / "multipref.parquet", rows), preset="multipref")
    assert strip_source(kept) == [
        {"user_id": "jovial_shirley", "prompt": "prompt 0", "chosen": "a0", "rejected": "b0"},
        {"user_id": "keen_euler", "prompt": "prompt 0", "chosen": "b0", "rejected": "a0"},
        {"user_id": "calm_turing", "prompt": "prompt 0", "chosen": "a0", "rejected": "b0"},
        {"user_id": "jovial_shirley", "prompt": "prompt 1", "chosen": "b1", "rejected": "a1"},
        {"user_id": "wise_hopper", "prompt": "prompt 1", "chosen": "b1", "rejected": "a1"}]
    assert (report["rows_read"], report["comparisons_read"]) == (3, 8)
    assert report["rows_dropped"]["tie"] == 2 and report["rows_dropped"]["missing_user"] == 1
    assert report["preset_counts"] == {"annotations": 8, "rows_without_annotations": 1}
    assert report["comparisons_read"] == len(kept) + sum(report["rows_dropped"].values())
    bad = [multipref_row(0, [("x", "A-is-better")], [])]
    with pytest.raises(SystemExit, match=r"bad.jsonl, line 1: .*'A-is-better'"):
        read(write(tmp_path / "bad.jsonl", bad), preset="multipref")
    with pytest.raises(SystemExit, match="lacks the column"):
        read(write(tmp_path / "plain.jsonl", ROWS), preset="multipref")
    with pytest.raises(SystemExit, match="cannot be combined"):
        read(write(tmp_path / "plain.jsonl", ROWS), preset="multipref", columns={"user_id": "x"})


def community_row(annotator, turns):
    """A row of facebook/community-alignment-dataset: turns as (prompt, [responses a-d], preferred)."""
    row = {"conversation_id": f"conv-{annotator}", "annotator_id": annotator, "assigned_lang": "en",
           "is_pregenerated_first_prompt": False, "in_balanced_subset": True, "annotator_age": "25-34"}
    for t, name in enumerate(custom_data.CA_TURNS):
        prompt, responses, preferred = turns[t] if t < len(turns) else (None, [None] * 4, None)
        row[f"{name}_turn_prompt"] = prompt
        for letter, text in zip("abcd", responses):
            row[f"{name}_turn_response_{letter}"] = text
        row[f"{name}_turn_preferred_response"] = preferred
        row[f"{name}_turn_feedback"] = "fine" if prompt else None
    return row


def test_community_alignment_preset_builds_the_chat_so_far_from_preferred_responses(tmp_path):
    rows = [community_row("ann1", [("Hi?", ["A1", "B1", "C1", "D1"], "response_b"),
                                   ("More?", ["A2", "", "C2", "D2"], "response_d"),       # one empty response
                                   ("", ["x", "y", "z", "w"], "response_a")]),            # a missing turn ends it
            community_row("ann2", [("Q?", ["a", "b", "c", "d"], None)]),                 # no preference
            community_row("ann2", [("Same?", ["same", "same ", "other", ""], "response_a")])]
    kept, report = read(write(tmp_path / "ca.jsonl", rows), preset="community_alignment")
    first = [{"role": "user", "content": "Hi?"}]
    second = first + [{"role": "assistant", "content": "B1"}, {"role": "user", "content": "More?"}]
    assert strip_source(kept) == (
        [{"user_id": "ann1", "prompt": first, "chosen": "B1", "rejected": r} for r in ("A1", "C1", "D1")]
        + [{"user_id": "ann1", "prompt": second, "chosen": "D2", "rejected": r} for r in ("A2", "C2")]
        + [{"user_id": "ann2", "prompt": [{"role": "user", "content": "Same?"}], "chosen": "same",
            "rejected": "other"}])
    assert (report["rows_read"], report["comparisons_read"]) == (3, 7)
    assert report["rows_dropped"]["chosen_equals_rejected"] == 1
    assert report["preset_counts"] == {"turns": 3, "turns_without_preference": 1, "rows_without_comparisons": 1}
    bad = [community_row("ann1", [("Hi?", ["A1", "B1", "C1", "D1"], "response_e")])]
    with pytest.raises(SystemExit, match=r"ca_bad.csv, line 2: first_turn_preferred_response is 'response_e'"):
        read(write(tmp_path / "ca_bad.csv", bad), preset="community_alignment")


def test_hub_inputs_take_the_presets_defaults_and_fail_fast_offline(monkeypatch):
    assert custom_data.hub_source(None, None, None, "multipref") == \
        {"kind": "hub", "dataset": "allenai/multipref", "config": "default", "split": "train"}
    assert custom_data.hub_source(None, None, "filtered", "community_alignment") == \
        {"kind": "hub", "dataset": "facebook/community-alignment-dataset", "config": None, "split": "filtered"}
    assert custom_data.hub_source("me/prefs", None, None, None)["split"] == "train"
    import datasets
    calls = []
    monkeypatch.setattr(harness, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or ROWS)
    loaded, _ = custom_data.load_hub("allenai/multipref", "default", "train", "python prepare.py --offline")
    assert calls == [(("allenai/multipref", "default"), {"split": "train"})]
    kept, _ = custom_data.read_comparisons(custom_data.hub_rows(loaded), "me/prefs")
    assert strip_source(kept) == ROWS and kept[0]["source"] == "row 1"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(harness, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(SystemExit, match="(?s)allenai/multipref.*--offline"):
        custom_data.load_hub("allenai/multipref", "default", "train", "python prepare.py --offline")


# -----------------------------------------------------------------------------
# the split


def population(counts: dict, prompts_per_user=None):
    """Comparisons of users {id: m}, user-major; user u's k-th comparison has prompt k // 2 (two per prompt)."""
    out = []
    for u, m in counts.items():
        for k in range(m):
            prompt = f"{u} prompt {k // 2}" if prompts_per_user is None or u not in prompts_per_user else "one prompt"
            out.append({"user_id": u, "prompt": prompt, "chosen": f"c{k}", "rejected": f"r{k}", "source": f"{u}{k}"})
    return out


COUNTS = {f"user{i:02d}": 20 + i for i in range(10)} | {"few1": 5, "few2": 19}


def test_split_rules():
    comparisons = population(COUNTS)
    rows, report = custom_data.split_population(comparisons, seed=0, min_comparisons=20, unseen_fraction=0.3,
                                                seen_test_fraction=0.5, num_shots=8)
    assert report["dropped"] == {"below_min_comparisons": 24, "single_prompt_seen_user": 0}
    assert report["users"] == {"with_a_kept_comparison": 12, "kept": 10, "seen": 7, "unseen": 3}  # round(0.3 * 10)
    assert all(report[k] == sorted(report[k]) for k in ("seen_users", "unseen_users"))
    kept_sources = sorted(c["source"] for c in comparisons if c["user_id"].startswith("user"))
    assert sorted(r["source"] for r in rows) == kept_sources
    for u in report["seen_users"]:
        mine = [r for r in rows if r["user_id"] == u]
        assert all(r["seen"] for r in mine)
        train, test = ({r["prompt"] for r in mine if r["split"] == s} for s in ("train", "test"))
        assert train and test and not train & test                       # a prompt never on both sides
        assert len(test) == int(0.5 * len(train | test) + 0.5)
    for u in report["unseen_users"]:
        mine = [r for r in rows if r["user_id"] == u]
        assert sum(r["split"] == "train" for r in mine) == 8 and not any(r["seen"] for r in mine)
    assert report["comparisons"]["kept"] == len(rows) == sum(COUNTS[u] for u in COUNTS if u.startswith("user"))
    # seeded: the same with the same seed, whatever the order of the rows (across and within users); another
    # seed differs
    shuffled = sorted(comparisons, key=lambda c: (c["user_id"][::-1], c["source"]))
    again, _ = custom_data.split_population(shuffled, seed=0, min_comparisons=20, unseen_fraction=0.3,
                                            seen_test_fraction=0.5, num_shots=8)
    assert sorted((r["source"], r["split"], r["seen"]) for r in again) == sorted((r["source"], r["split"], r["seen"])
                                                                               for r in rows)
    other, _ = custom_data.split_population(comparisons, seed=1, min_comparisons=20, unseen_fraction=0.3,
                                            seen_test_fraction=0.5, num_shots=8)
    assert sorted((r["source"], r["split"], r["seen"]) for r in other) != sorted((r["source"], r["split"], r["seen"])
                                                                               for r in rows)


def test_split_edge_cases_new_users_keep_a_test_part_and_single_prompt_seen_users_are_dropped():
    counts = {f"u{i}": 4 for i in range(8)}
    rows, report = custom_data.split_population(population(counts, prompts_per_user={"u0", "u1", "u2", "u3"}),
                                                seed=0, min_comparisons=4, unseen_fraction=0.5, num_shots=10)
    for u in report["unseen_users"]:          # min(10, m - 1) = 3 shots, 1 test comparison
        assert [r["split"] for r in rows if r["user_id"] == u].count("test") == 1
    single = [u for u in ("u0", "u1", "u2", "u3") if u not in report["unseen_users"]]
    assert not set(single) & set(report["seen_users"])
    assert report["dropped"]["single_prompt_seen_user"] == 4 * len(single) > 0


def test_too_few_users_is_an_error_naming_the_counts():
    with pytest.raises(SystemExit, match=r"mine.jsonl: too few users to split \(3 users with a kept comparison, 1 of "
                                         r"them below min_comparisons = 20, 2 left\)"):
        custom_data.split_population(population({"a": 20, "b": 35, "c": 19}), source="mine.jsonl")


# -----------------------------------------------------------------------------
# bad input: the file and the row, never a traceback, nothing written


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"user_id": "u", "prompt": "p", "chosen": "a", "rejected": "b"}\n\n{"user_id": "u", "prompt": 3, '
     '"chosen": "a", "rejected": "b"}\n', r"bad.jsonl, line 3: the prompt must be text or a list"),
    ("bad.jsonl", '{"user_id": "u", "prompt": "p", "chosen": "a", "rejected": "b"}\n{"user_id": \n',
     r"bad.jsonl, line 2, is not valid JSON"),
    ("bad.jsonl", '{"user_id": "u", "prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}\n',
     r"bad.jsonl, line 1: the prompt must be"),
    ("bad.csv", 'user_id,prompt,response_a,response_b,preference\nu,p,a,b,a\nu,p,a,b,maybe\n',
     r"bad.csv, line 3: the preference is 'maybe', not a, b or tie"),
    ("bad.csv", 'user_id,prompt,chosen,rejected\nu,p,a\n', r"bad.csv, line 2, has 3 cells, the header 4"),
    ("bad.json", '[{"user_id": "u", "prompt": "p", "chosen": "a", "rejected": "b"}, 5]', r"bad.json, row 2, is not"),
    ("bad.json", '{"data": []}', r"bad.json holds a JSON dict, not a list"),
    ("bad.jsonl", '{"user_id": "u", "prompt": "p", "chosen": ["a"], "rejected": "b"}\n',
     r"bad.jsonl, line 1: chosen must be text"),
    ("bad.parquet", "not parquet at all", r"bad.parquet is not a readable parquet file"),
    ("bad.txt", "whatever", r"bad.txt: unknown format '.txt'"),
    ("empty.jsonl", "", r"empty.jsonl is empty"),
])
def test_bad_inputs_name_the_file_and_the_row(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(SystemExit, match=message):
        read(tmp_path / name)


def test_prepare_refuses_bad_input_cleanly_and_writes_nothing(tmp_path):
    bad = tmp_path / "mine.csv"
    bad.write_text("user_id,prompt,chosen,rejected\n" + "u,p,a,b\n" * 2 + 'v,"[{""role"": ""user""}]",a,b\n')
    data = tmp_path / "data"
    done = subprocess.run([sys.executable, str(CUSTOM / "prepare.py"), "--comparisons=mine.csv", f"--data_dir={data}"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{bad}, line 4: the prompt must be" in done.stderr
    small = tmp_path / "small.jsonl"
    write(small, [{"user_id": u, "prompt": f"p{k}", "chosen": "a", "rejected": "b"} for u in "ab" for k in range(30)])
    done = subprocess.run([sys.executable, str(CUSTOM / "prepare.py"), f"--comparisons={small}", f"--data_dir={data}"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "too few users to split (2 users with a kept comparison, 0 of them below min_comparisons = 20, 2 left)" \
        in done.stderr
    assert not data.exists()
    done = subprocess.run([sys.executable, str(CUSTOM / "prepare.py"), f"--data_dir={data}"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "--comparisons=FILE" in done.stderr and "--offline" in done.stderr


# -----------------------------------------------------------------------------
# the folder end to end (slow)


def run_step(script, *args, cwd):
    done = subprocess.run([sys.executable, str(CUSTOM / script), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_folder_runs_end_to_end_on_the_generated_population(tmp_path):
    data, results = tmp_path / "data", tmp_path / "results"
    common = ["--offline", f"--data_dir={data}"]
    run_step("prepare.py", *common, cwd=tmp_path)
    run_step("generate-custom-embeddings.py", *common, cwd=tmp_path)
    run_step("train_basis.py", *common, "--K_list=[0,1,3]", f"--results_dir={results}", cwd=tmp_path)
    run_step("vary_fewshot.py", *common, "--trials=2", "--num_shots=[2,5]", "--num_iterations=200",
             f"--results_dir={results}", cwd=tmp_path)
    from offline import custom as offline_custom
    prepared = json.loads((data / "prepare.json").read_text())
    truth = json.loads((data / "raw" / "ground_truth.json").read_text())
    assert prepared["rows_read"] == truth["rows"] == len((data / "raw" / "comparisons.jsonl").read_text().splitlines())
    assert {k: v for k, v in prepared["rows_dropped"].items() if v} == offline_custom.EXTRA_ROWS
    assert prepared["input"]["generated"] and prepared["input"]["sha256"] == harness.file_sha256(data / "raw" /
                                                                                             "comparisons.jsonl")
    assert prepared["users"]["kept"] == 60 and prepared["users"]["seen"] == prepared["users"]["unseen"] == 30
    # What the generated world guarantees on new users (generator seed 0, deterministic): the head reads only
    # the shared part, so it is below the planted rewards (gaps 0.10-0.23 over generator seeds 0-3; margin
    # about half). Whether LoRe beats one shared reward here is measured, not asserted: over those seeds its
    # rank 3 was no better on new users (own weights over the mean weights: no clear difference or a loss).
    basis = json.loads((results / "train_basis.json").read_text())
    figure = {r["K"]: r["unseen_test"]["mean"] for r in basis["results"]}
    planted = basis["planted_accuracy"]["unseen_test"]
    assert 0.55 < figure[0] < planted - 0.05, figure
    three = next(r for r in basis["results"] if r["K"] == 3)
    assert {"gain_vs_ref", "gain_vs_K1", "gain_vs_shared", "gain_vs_other"} <= set(three["unseen_test"])
    assert three["numerical_rank"] >= 1 and three["unseen_test"]["gain_vs_shared"]["users"] == 30
    fewshot = json.loads((results / "vary_fewshot.json").read_text())
    assert [r["shots"] for r in fewshot["results"]] == [2, 5]
    for name in ("train_basis.md", "generalization_accuracy_vs_rank_lore_alpha_0.0.png", "vary_fewshot.md",
                 "fewshot_accuracy_vs_shots.png", "Custom_V_lore_K_3_alpha_0.0.pt"):
        assert (results / name).exists(), name
    # the paper table beside LoRe, every method on the same comparisons (VPL narrower and PAL's grid one K, as
    # in test_tldr.py: the table's shape is what is checked here, the cited values in test_baselines.py)
    run_step("train_basis.py", *common, "--K_list=[0,1,3]", "--num_iterations=100", "--fewshot_iterations=50",
             "--seeds=2", "--baselines=['PAL','VPL']", f"--results_dir={tmp_path / 'comparison'}",
             '--baseline_settings={"VPL": {"hidden_dim": 64, "latent_dim": 64}, "PAL": {"grid": {"K": [2]}}}',
             cwd=tmp_path)
    paper = json.loads((tmp_path / "comparison" / "paper_table.json").read_text())
    assert [row["method"] for row in paper["rows"]][-4:] == ["PAL", "PAL+ref", "VPL", "VPL+ref"]
    assert paper["seeds"] == [0, 1] and all(row["optimizer_steps"] for row in paper["rows"][-4:])
    # the same seed gives byte-identical generated data; personal_scale = 0 plants the shared reward alone
    again = offline_custom.generate(tmp_path / "again", **truth["generator_args"])
    assert (tmp_path / "again" / "comparisons.jsonl").read_bytes() == (data / "raw" / "comparisons.jsonl").read_bytes()
    assert again["rows"] == truth["rows"]
    from offline.planted import PlantedPopulation
    shared = offline_custom.generate(tmp_path / "shared", personal_scale=0.0, n_users=3, n_prompts=20,
                                     comparisons_range=(5, 5))
    directions = PlantedPopulation.load(tmp_path / "shared" / "ground_truth").directions
    assert shared["rows"] == 15 + 3 + 4 and abs(directions - directions[:, :1]).max() == 0


def sixty_users(path: Path) -> dict:
    """A file of 60 users (30-49 comparisons each, random labels, a quarter of the prompts multi-turn) plus one
    row of each drop reason and a user below min_comparisons; returns the drop counts prepare must report."""
    import numpy as np
    rng = np.random.default_rng(7)
    prompts = [f"Question {i}: what about {i}?" if i % 4 else [{"role": "user", "content": f"Start {i}"},
                                                               {"role": "assistant", "content": "Go on."},
                                                               {"role": "user", "content": f"Then {i}?"}]
               for i in range(200)]
    rows = []
    for u in range(60):
        for p in rng.choice(200, int(rng.integers(30, 50)), replace=False):
            a, b = f"answer {p}-{rng.integers(3)}", f"reply {p}-{rng.integers(3)}"
            a, b = (a, b) if rng.random() < 0.5 else (b, a)          # a random label
            rows.append({"user_id": f"person{u:02d}", "prompt": prompts[p], "chosen": a, "rejected": b})
    rows += [dict(rows[0]), dict(rows[1], user_id=""), dict(rows[2], chosen=""),
             dict(rows[3], rejected=rows[3]["chosen"])]
    rows += [{"user_id": "latecomer", "prompt": prompts[k], "chosen": "x", "rejected": "y"} for k in range(4)]
    write(path, rows)
    return {"duplicate_row": 1, "missing_user": 1, "empty_text": 1, "chosen_equals_rejected": 1,
            "below_min_comparisons": 4}


@pytest.mark.slow
def test_the_check_command_on_a_file_of_sixty_users(tmp_path):
    folder = tmp_path / "CustomData"          # the README's command from a folder holding mine.jsonl
    folder.mkdir()
    expected = sixty_users(folder / "mine.jsonl")
    data = tmp_path / "data"
    run_step("prepare.py", "--offline", "--comparisons=mine.jsonl", f"--data_dir={data}", cwd=folder)
    run_step("generate-custom-embeddings.py", "--offline", f"--data_dir={data}", cwd=folder)
    done = run_step("train_basis.py", "--offline", f"--data_dir={data}", "--K_list=[0,1,2]",
                    f"--results_dir={tmp_path / 'results'}", cwd=folder)
    prepared = json.loads((data / "prepare.json").read_text())
    lines = (folder / "mine.jsonl").read_text().splitlines()
    assert prepared["rows_read"] == prepared["comparisons_read"] == len(lines)
    assert {k: v for k, v in prepared["rows_dropped"].items() if v} == expected
    assert prepared["comparisons"]["kept"] == len(lines) - sum(expected.values())
    assert prepared["users"] == {"with_a_kept_comparison": 61, "kept": 60, "seen": 30, "unseen": 30}
    assert prepared["input"]["path"] == str(folder / "mine.jsonl") and not prepared["input"].get("generated")
    basis = json.loads((tmp_path / "results" / "train_basis.json").read_text())
    assert [r["K"] for r in basis["results"]] == [0, 1, 2] and "planted_accuracy" not in basis
    assert "| 2 " in done.stdout

"""personalize.py: fit new users against a frozen basis, export a user's reward model, score many users.

Everything runs on the built-in tiny model with a random basis V [d, K] made here (d read from the
tiny model's config), a few generated conversations and 3 users."""
import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import embedding
import harness
import personalize
import utils
from offline import tiny_model_path
from offline.text import sentence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "PRISM"))
import prism_data  # noqa: E402

USERS = ("alice", "bob", "carol")
K = 3
# The exported model's logit and e . V . w / 100 differ only by float32 rounding: the engine's batched,
# prefix-shared forward equals a plain forward to ~1e-6 (tests/test_embedding.py holds it to 1e-5), and
# the head (V @ w / 100) is summed in another order than (e @ V) @ w / 100, a few ulps of the ~1-10 logits.
LOGIT_TOL = dict(atol=1e-5, rtol=1e-5)


def _text(rng, n):
    return " ".join(sentence(rng) for _ in range(n))


def make_comparisons(seed=0, per_user=5, users=USERS):
    """Comparison rows: string and chat-message prompts, two rejected answers sharing a prompt."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in users:
        for k in range(per_user):
            prompt = _text(rng, 1)
            if k % 2:
                prompt = [{"role": "user", "content": prompt}, {"role": "assistant", "content": sentence(rng)},
                          {"role": "user", "content": sentence(rng)}]
            rows.append({"user_id": u, "prompt": prompt, "chosen": _text(rng, 2),
                         "rejected": _text(rng, int(rng.integers(1, 4)))})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def conversations(rows):
    return [embedding.conversation(r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")]


@pytest.fixture(scope="module")
def backbone():
    return embedding.load_reward_model(tiny_model_path())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A basis V [d, K] (d = the tiny model's hidden size), comparisons and responses files."""
    folder = tmp_path_factory.mktemp("personalize")
    d = json.loads((Path(tiny_model_path()) / "config.json").read_text())["hidden_size"]
    # a scale that gives logits of a few units, as a trained basis does
    V = torch.randn(d, K, generator=torch.Generator().manual_seed(0)) * 30
    torch.save(V, folder / "V.pt")
    rows = make_comparisons()
    write_jsonl(folder / "comparisons.jsonl", rows)
    responses = [{"id": f"r{k}", "prompt": r["prompt"], "response": r[side]}
                 for k, r in enumerate(rows[:6]) for side in ("chosen", "rejected")]
    write_jsonl(folder / "responses.jsonl", responses)
    return {"dir": folder, "V": V, "basis": folder / "V.pt", "comparisons": folder / "comparisons.jsonl",
            "responses": folder / "responses.jsonl", "rows": rows}


def fit(files, backbone, out, comparisons=None, basis=None, **kwargs):
    kwargs = {"num_iterations": 200, "learning_rate": 0.1, "seed": 0, **kwargs}
    return personalize.fit(comparisons or files["comparisons"], basis or files["basis"], out,
                           model_name=tiny_model_path(), backbone=backbone, **kwargs)


@pytest.fixture(scope="module")
def fitted(files, backbone, tmp_path_factory):
    return fit(files, backbone, tmp_path_factory.mktemp("fitted"))


def weights_of(path):
    return personalize.load_user_weights(path)["weights"]


# -----------------------------------------------------------------------------
# fit


def test_fit_writes_weights_with_ids_hash_and_backbone(files, fitted):
    record = personalize.load_user_weights(fitted)
    assert record["user_ids"] == list(USERS) and record["weights"].shape == (len(USERS), K)
    torch.testing.assert_close(record["weights"].sum(1), torch.ones(len(USERS)))    # on the simplex
    assert torch.equal(record["basis"], files["V"])
    assert record["basis_sha256"] == harness.file_sha256(files["basis"])
    assert record["model_name"] == tiny_model_path()
    summary = json.loads((fitted.parent / personalize.WEIGHTS_JSON).read_text())
    assert [u["comparisons"] for u in summary["users"]] == [5, 5, 5]
    assert summary["seed"] == 0 and summary["skipped_rows"]["chosen_equals_rejected"] == 0


def test_fit_twice_with_the_same_seed_gives_the_same_weights(files, backbone, fitted, tmp_path):
    assert torch.equal(weights_of(fit(files, backbone, tmp_path)), weights_of(fitted))
    assert not torch.equal(weights_of(fit(files, backbone, tmp_path / "s1", seed=1)), weights_of(fitted))  # seed used


def test_appending_a_user_leaves_the_others_weights(files, backbone, fitted, tmp_path):
    rows = files["rows"] + make_comparisons(seed=5, per_user=4, users=("dave",))
    more = personalize.load_user_weights(fit(files, backbone, tmp_path, write_jsonl(tmp_path / "more.jsonl", rows)))
    assert more["user_ids"] == [*USERS, "dave"]
    # each user's loss and Adam step involve only its own row: equal up to float rounding of shared ops
    torch.testing.assert_close(more["weights"][:3], weights_of(fitted), atol=1e-6, rtol=0)


def test_fit_is_the_pipelines_personalize_batch(files, backbone, fitted):
    """The same weights as PersonalizeBatch on features x = e(chosen) - e(rejected), each side embedded on
    its own (as a dataset's embedding script does), same users, seed and settings."""
    E = embedding.embed_conversations(*backbone, conversations(files["rows"]), share_prefixes=False)
    data = utils.Comparisons.from_features(torch.repeat_interleave(torch.arange(3), 5), 3, E[0::2] - E[1::2])
    W = utils.PersonalizeBatch(3, E.shape[1], K, 200, 0.1, seed=0, device="cpu", progress=False).train_weights(
        data, files["V"])
    # the features differ by engine rounding (~1e-6); 200 Adam steps carry that to ~1e-6 in the weights
    torch.testing.assert_close(weights_of(fitted), W, atol=1e-4, rtol=0)


def test_a_one_column_basis_needs_no_fit(files, backbone, tmp_path):
    torch.save(files["V"][:, :1].clone(), tmp_path / "V1.pt")
    assert torch.equal(weights_of(fit(files, backbone, tmp_path, basis=tmp_path / "V1.pt")), torch.ones(3, 1))


def test_fewshot_settings_default_to_the_pipelines(tmp_path):
    assert personalize.fewshot_settings(tmp_path / "V.pt") == (500, 0.5)
    (tmp_path / "train_basis.json").write_text(json.dumps({"settings": {"fewshot_iterations": 30,
                                                                        "fewshot_learning_rate": 0.1}}))
    assert personalize.fewshot_settings(tmp_path / "V.pt") == (30, 0.1)
    assert personalize.fewshot_settings(tmp_path / "V.pt", 7, 0.3) == (7, 0.3)


# -----------------------------------------------------------------------------
# export


@pytest.fixture(scope="module")
def exported(fitted, backbone, tmp_path_factory):
    return personalize.export_model(fitted, "bob", tmp_path_factory.mktemp("export") / "bob_model", backbone=backbone)


def test_exported_logits_equal_embedding_at_V_w(files, backbone, fitted, exported):
    w = weights_of(fitted)[USERS.index("bob")]
    convs = conversations(files["rows"][:6])
    expected = embedding.embed_conversations(*backbone, convs) @ files["V"] @ w / 100
    torch.testing.assert_close(personalize.reloaded_logits(exported, convs), expected, **LOGIT_TOL)
    # the caller's backbone keeps its own head after the export
    torch.testing.assert_close(backbone[0].score.weight, embedding.load_reward_model(tiny_model_path())[0].score.weight)


def test_exported_folder_loads_with_from_pretrained_and_nothing_else(files, fitted, exported, tmp_path):
    """A fresh interpreter in an empty folder, isolated (-I: no project modules on its path), with only
    transformers: the folder loads with no missing or unexpected weights, and its logits are bob's."""
    convs = conversations(files["rows"][:2])
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "m, info = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], output_loading_info=True)\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    out = [m(**t.apply_chat_template(c, return_dict=True, return_tensors='pt')).logits.item()\n"
        "           for c in json.loads(sys.argv[2])]\n"
        "print(json.dumps({'missing': list(info['missing_keys']), 'unexpected': list(info['unexpected_keys']),"
        " 'logits': out}))\n")
    result = subprocess.run([sys.executable, "-I", "-c", script, str(exported), json.dumps(convs)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["missing"] == [] and got["unexpected"] == []
    E = embedding.embed_conversations(*embedding.load_reward_model(tiny_model_path()), convs)
    torch.testing.assert_close(torch.tensor(got["logits"]), E @ files["V"] @ weights_of(fitted)[1] / 100, **LOGIT_TOL)
    assert json.loads((exported / personalize.PERSONALIZATION_FILE).read_text())["user_id"] == "bob"
    assert all(f.stat().st_mode & 0o044 for f in exported.iterdir())        # readable to others (umask 022)


def test_head_only_export_and_swap_head(files, fitted, exported, tmp_path):
    paths = personalize.export_heads(fitted, [], tmp_path)
    assert [p.name for p in paths] == [f"reward_head_{u}.safetensors" for u in USERS]
    model, tokenizer = embedding.load_reward_model(tiny_model_path())
    backbone_weight = model.model.layers[0].self_attn.q_proj.weight
    convs = conversations(files["rows"][:4])
    personalize.swap_head(model, tmp_path / "reward_head_bob.safetensors")
    assert model.model.layers[0].self_attn.q_proj.weight is backbone_weight      # not copied
    torch.testing.assert_close(embedding.score_conversations(model, tokenizer, convs)[:, 0],
                               personalize.reloaded_logits(exported, convs), **LOGIT_TOL)
    personalize.swap_head(model, tmp_path / "reward_head_alice.safetensors")
    E = embedding.embed_conversations(model, tokenizer, convs)
    torch.testing.assert_close(embedding.score_conversations(model, tokenizer, convs)[:, 0],
                               E @ files["V"] @ weights_of(fitted)[0] / 100, **LOGIT_TOL)


def test_export_refuses_a_path_holding_a_different_model(fitted, exported, backbone, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in exported.iterdir()}
    with pytest.raises(SystemExit, match=r"bob_model already holds the personalized model of user 'bob'.*--overwrite"):
        personalize.export_model(fitted, "alice", exported, backbone=backbone)
    assert {p.name: p.stat().st_mtime_ns for p in exported.iterdir()} == before          # nothing written
    other = tmp_path / "other"                                    # something else (no personalization.json)
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"already holds something else.*--overwrite"):
        personalize.export_model(fitted, "alice", other, backbone=backbone)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    # the same model again is fine; --overwrite replaces a different one
    personalize.export_model(fitted, "bob", exported, backbone=backbone)
    personalize.export_model(fitted, "alice", other, backbone=backbone, overwrite=True)
    assert json.loads((other / personalize.PERSONALIZATION_FILE).read_text())["user_id"] == "alice"
    assert not (other / "notes.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["other"]
    # head files: the same rule
    personalize.export_heads(fitted, ["bob"], tmp_path / "heads")
    (tmp_path / "heads" / "reward_head_bob.safetensors").rename(tmp_path / "heads" / "reward_head_alice.safetensors")
    with pytest.raises(SystemExit, match=r"reward_head_alice.safetensors already holds the personalized model of "
                                         r"user 'bob'"):
        personalize.export_heads(fitted, ["alice"], tmp_path / "heads")
    personalize.export_heads(fitted, ["alice"], tmp_path / "heads", overwrite=True)


# -----------------------------------------------------------------------------
# score


def test_score_many_users_equals_one_user_at_a_time(files, backbone, fitted, exported):
    rows, ids, table, _ = personalize.score(files["responses"], fitted, backbone=backbone)
    assert ids == list(USERS) and table.shape == (12, len(USERS))
    for j, u in enumerate(USERS):
        _, one_id, one, _ = personalize.score(files["responses"], fitted, [u], backbone=backbone)
        # the same embeddings; a column of (E @ V) @ W.T against a one-column product: a few ulps
        assert one_id == [u]
        torch.testing.assert_close(one[:, 0], table[:, j], atol=1e-6, rtol=1e-6)
    # and a user's column is what its exported model says
    convs = [embedding.conversation(r["prompt"], r["response"]) for r in rows]
    torch.testing.assert_close(table[:, 1], personalize.reloaded_logits(exported, convs), **LOGIT_TOL)


def test_write_scores_table(files, backbone, fitted, tmp_path):
    rows, ids, table, _ = personalize.score(files["responses"], fitted, ["carol", "alice"], backbone=backbone)
    out = personalize.write_scores(rows, ids, table, tmp_path, {"seed": 0})
    lines = out.read_text().splitlines()
    assert lines[0] == "row,id,carol,alice" and len(lines) == len(rows) + 1 and lines[1].split(",")[1] == "r0"
    assert json.loads((tmp_path / personalize.SCORES_JSON).read_text())["users"] == ["carol", "alice"]
    with pytest.raises(SystemExit, match=r"user\(s\) 'zoe' are not in .*user_weights.safetensors"):
        personalize.score(files["responses"], fitted, ["zoe"], backbone=backbone)


# -----------------------------------------------------------------------------
# bad input: a clear error naming the file, and nothing written


def fit_fails(files, tmp_path, match, comparisons=None, basis=None, backbone=None):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=match):
        personalize.fit(comparisons or files["comparisons"], basis or files["basis"], out,
                        model_name=tiny_model_path(), backbone=backbone)
    assert not out.exists()


def test_basis_of_another_hidden_size(files, tmp_path):
    torch.save(torch.randn(64, K), tmp_path / "V64.pt")
    fit_fails(files, tmp_path, r"V64.pt has d = 64 rows but the backbone .* hidden size 128", basis=tmp_path / "V64.pt")
    torch.save(torch.randn(K, 128), tmp_path / "Vt.pt")
    fit_fails(files, tmp_path, r"Vt.pt has d = 3 rows .* hidden size 128 \(it looks transposed", basis=tmp_path / "Vt.pt")


def test_a_backbone_that_cannot_be_reached(files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"(?s)cannot get the model .no-org/no-model.*python personalize.py --offline"):
        personalize.fit(files["comparisons"], files["basis"], out, model_name="no-org/no-model")
    assert not out.exists()


def test_basis_that_is_not_a_tensor_or_has_three_dimensions(files, tmp_path):
    torch.save({"V": torch.randn(128, K)}, tmp_path / "dict.pt")
    fit_fails(files, tmp_path, r"dict.pt holds a dict, not a basis", basis=tmp_path / "dict.pt")
    torch.save(torch.randn(128, K, 2), tmp_path / "V3.pt")
    fit_fails(files, tmp_path, r"V3.pt holds shape \(128, 3, 2\) .*not a basis: finite floats \[d, K\]",
              basis=tmp_path / "V3.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    fit_fails(files, tmp_path, r"cannot read the basis file .*junk.pt", basis=tmp_path / "junk.pt")
    fit_fails(files, tmp_path, r"basis file .*missing.pt does not exist", basis=tmp_path / "missing.pt")


def test_bad_comparisons_files(files, tmp_path):
    good = make_comparisons(per_user=2)
    (tmp_path / "empty.jsonl").write_text("\n")
    fit_fails(files, tmp_path, r"empty.jsonl is empty", comparisons=tmp_path / "empty.jsonl")
    for key in ("chosen", "rejected", "user_id"):
        rows = [dict(r) for r in good]
        del rows[2][key]
        fit_fails(files, tmp_path, rf"no_{key}.jsonl, line 3, has no '{key}'",
                  comparisons=write_jsonl(tmp_path / f"no_{key}.jsonl", rows))
    fit_fails(files, tmp_path, r"bad_prompt.jsonl, line 1, 'prompt' must be",
              comparisons=write_jsonl(tmp_path / "bad_prompt.jsonl", [dict(good[0], prompt=[{"role": "user"}])]))
    (tmp_path / "not_json.jsonl").write_text(json.dumps(good[0]) + "\n{oops\n")
    fit_fails(files, tmp_path, r"not_json.jsonl, line 2, is not valid JSON", comparisons=tmp_path / "not_json.jsonl")
    # a user whose every row has chosen == rejected is a user with no comparisons
    rows = good + [dict(good[0], user_id="dave", rejected=good[0]["chosen"])]
    fit_fails(files, tmp_path, r"dave.jsonl: user\(s\) 'dave' have no comparisons left",
              comparisons=write_jsonl(tmp_path / "dave.jsonl", rows))


def test_chosen_equal_to_rejected_is_skipped_and_counted(files, backbone, tmp_path, capsys):
    rows = make_comparisons(per_user=3)
    rows.insert(1, dict(rows[0], rejected=rows[0]["chosen"]))
    path = fit(files, backbone, tmp_path, write_jsonl(tmp_path / "tie.jsonl", rows), num_iterations=20)
    assert "skipped 1 row(s) whose chosen response equals the rejected one" in capsys.readouterr().err
    summary = json.loads((path.parent / personalize.WEIGHTS_JSON).read_text())
    assert summary["skipped_rows"] == {"chosen_equals_rejected": 1, "lines": [2]}
    assert [u["comparisons"] for u in summary["users"]] == [3, 3, 3]


# -----------------------------------------------------------------------------
# the command line (run in this process as `python personalize.py ...` in the folder cwd) and the demo


def run_script(monkeypatch, cwd, *args, script=ROOT / "personalize.py"):
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [script.name, *args])
    runpy.run_path(str(script), run_name="__main__")


def test_command_line_fit_export_score(files, tmp_path, monkeypatch):
    for name in ("V.pt", "comparisons.jsonl", "responses.jsonl"):
        (tmp_path / name).write_bytes((files["dir"] / name).read_bytes())
    run = (lambda *args: run_script(monkeypatch, tmp_path, "--offline", "--results_dir=out", *args))
    run("--command=fit", "--basis=V.pt", "--comparisons=comparisons.jsonl", "--num_iterations=50")
    out = tmp_path / "out"
    assert personalize.load_user_weights(out / "user_weights.safetensors")["user_ids"] == list(USERS)
    run("--command=export", "--user=carol")
    assert json.loads((out / "reward_model_carol" / "personalization.json").read_text())["user_id"] == "carol"
    run("--command=export", "--head_only", "--export_dir=heads")
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == [f"reward_head_{u}.safetensors" for u in USERS]
    run("--command=score", "--responses=responses.jsonl", "--users=bob,alice")
    assert (out / "scores.csv").read_text().splitlines()[0] == "row,id,bob,alice"
    with pytest.raises(SystemExit, match="holds 3 users; name the one to export with --user"):
        run("--command=export")
    with pytest.raises(SystemExit, match="fit needs --comparisons"):
        run("--command=fit")
    with pytest.raises(SystemExit, match="--command must be fit, export or score.*personalize_demo.py"):
        run("--command=train")


def test_a_local_model_folder_and_the_recorded_backbone(files, tmp_path, monkeypatch):
    """Without --offline: fit on a local checkpoint folder; export and score default to the backbone
    and dtype fit recorded (not the Skywork/bf16 defaults)."""
    for name in ("V.pt", "comparisons.jsonl", "responses.jsonl"):
        (tmp_path / name).write_bytes((files["dir"] / name).read_bytes())
    run = (lambda *args: run_script(monkeypatch, tmp_path, "--results_dir=out", *args))
    run(f"--model_name={tiny_model_path()}", "--dtype=float32", "--command=fit", "--basis=V.pt",
        "--comparisons=comparisons.jsonl", "--num_iterations=20")
    run("--command=export", "--user=alice")
    folder = tmp_path / "out" / "reward_model_alice"
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((folder / personalize.PERSONALIZATION_FILE).read_text())["backbone"] == tiny_model_path()
    run("--command=score", "--responses=responses.jsonl")
    assert (tmp_path / "out" / "scores.csv").read_text().splitlines()[0] == "row,id,alice,bob,carol"
    # scores.json records what was in force, not the defaults (Skywork in bfloat16, every user as None)
    about = json.loads((tmp_path / "out" / personalize.SCORES_JSON).read_text())
    assert about["settings"]["model_name"] == about["backbone"] == tiny_model_path()
    assert about["settings"]["dtype"] == about["dtype"] == "float32"
    assert about["settings"]["users"] == about["users"] == list(USERS)
    assert about["settings"]["basis"] == str(tmp_path / "V.pt") and about["truncated_to_positions"] == 0


def test_demo_on_new_prism_users(files, tmp_path, monkeypatch):
    """The demo on prepared PRISM rows written here (two new users and a seen one) and a basis whose
    train_basis.json carries the pipeline's per-user figures: the exported model, reloaded, agrees with
    `score` for its user, and the pipeline's figure is the one train_basis.json gives."""
    rows = {split: [] for split in prism_data.SPLITS}
    for k, (u, seen) in enumerate([("u1", False), ("u0", True), ("u2", False)]):
        for split, (start, count) in zip(prism_data.SPLITS, ((0, 4), (4, 3))):
            rows[split] += [dict(r, split=split, seen=seen, user_id=u, dialog_id=f"{u}-{i}", turn_nb=0, total_turn_nb=1,
                                 prompt=embedding.conversation(r["prompt"], "")[:-1])
                            for i, r in enumerate(make_comparisons(k, 7, [u])[start:start + count])]
    # a held-out tie: the same response on both sides scores exactly equal, and a tie counts as wrong
    rows["test"].append(dict(rows["test"][0], chosen=rows["test"][0]["rejected"]))
    data, results = tmp_path / "prism", tmp_path / "results-PRISM"
    for split in prism_data.SPLITS:
        prism_data.write_comparisons(rows[split], data / prism_data.COMPARISONS_FILE.format(split=split))
    results.mkdir()
    for alpha in ("0.0", "1.0"):                   # train_basis.json has a row for alpha = 0 only
        torch.save(files["V"], results / f"PRISM_V_lore_K_3_alpha_{alpha}.pt")
    harness.write_json_atomic(results / "train_basis.json", {"settings": {"fewshot_iterations": 40}, "results": [
        {"K": 3, "alpha": 0.0, "per_user": {"unseen_test": {"u1": 0.25, "u2": None, "u3": 1.0}}}]})
    demo_script = ROOT / "PRISM" / "personalize_demo.py"
    run_script(monkeypatch, tmp_path, "--offline", f"--data_dir={data}", "--results_dir=out",
               f"--basis={results / 'PRISM_V_lore_K_3_alpha_0.0.pt'}", script=demo_script)
    demo = json.loads((tmp_path / "out" / "personalize_demo.json").read_text())
    (first,) = demo["users"]                       # u2 has no pipeline figure, u3 no rows: neither is fitted
    assert (first["user_id"], first["fewshot_comparisons"], first["heldout_comparisons"]) == ("u1", 4, 4)
    assert first["score_accuracy"] <= 3 / 4                 # the tie is wrong whatever the other three give
    assert first["pipeline_accuracy"] == 0.25
    assert json.loads((tmp_path / "out" / personalize.WEIGHTS_JSON).read_text())["num_iterations"] == 40  # pipeline's
    assert first["exported_model_accuracy"] == first["score_accuracy"]
    assert "| u1 | 4 | 4 | 25.0 |" in (tmp_path / "out" / "personalize_demo.md").read_text()
    with pytest.raises(SystemExit, match=r"per-user figures for PRISM_V_lore_K_3_alpha_1.0.pt .*train_basis.py"):
        run_script(monkeypatch, tmp_path, "--offline", f"--data_dir={data}", "--results_dir=out2",
                   f"--basis={results / 'PRISM_V_lore_K_3_alpha_1.0.pt'}", script=demo_script)
    with pytest.raises(SystemExit, match="--demo_users=0: the demo needs at least one user"):
        run_script(monkeypatch, tmp_path, "--offline", "--demo_users=0", script=demo_script)
    assert not (tmp_path / "out2").exists()


# -----------------------------------------------------------------------------
# nothing lost: a file is never replaced by one of other users, another basis or another fit


def weights_file(folder, user_ids, V, **info):
    """A user_weights.safetensors as fit writes it, for the given users (uniform weights), without a fit."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / personalize.WEIGHTS_FILE
    W = torch.full((len(user_ids), V.shape[1]), 1.0 / V.shape[1])
    personalize.save_safetensors({"weights": W, "basis": V}, path, {
        "user_ids": list(user_ids), "model_name": tiny_model_path(), "dtype": "float32", "basis_sha256": "0" * 64,
        **info}, personalize.WEIGHTS_FORMAT)
    return path


def test_head_files_of_two_users_with_one_file_name_are_refused(files, tmp_path):
    """'a/b' and 'a_b' both become reward_head_a_b.safetensors: the second replaced the first silently."""
    path = weights_file(tmp_path / "w", ["a/b", "a_b", "c"], files["V"])
    with pytest.raises(SystemExit, match=r"users 'a/b' and 'a_b' both map to the head file reward_head_a_b.safetensors"
                                         r".*one at a time .*--user=\.\.\. --export_dir="):
        personalize.export_heads(path, [], tmp_path / "heads")
    assert not (tmp_path / "heads").exists()                                       # refused before any write
    assert [p.name for p in personalize.export_heads(path, ["a/b", "c"], tmp_path / "heads")] == [
        "reward_head_a_b.safetensors", "reward_head_c.safetensors"]


def test_fit_refuses_to_replace_the_weights_of_other_users_basis_or_backbone(files, backbone, tmp_path):
    """Exported folders and scores.csv name the users of the weights file they came from: a fit of other
    users, against another basis or backbone, replaced it without asking."""
    out = tmp_path / "out"
    path = fit(files, backbone, out, num_iterations=5)
    fit(files, backbone, out, num_iterations=6)                           # the same users, basis, backbone: a refit
    saved = path.read_bytes()
    others = write_jsonl(tmp_path / "others.jsonl", make_comparisons(per_user=2, users=("alice", "dave")))
    with pytest.raises(SystemExit, match=r"user_weights.safetensors already holds the weights of another fit \(users "
                                         r"added: 'dave'; users removed: 'bob', 'carol'\).*--overwrite.*--results_dir"):
        fit(files, backbone, out, comparisons=others)
    torch.save(files["V"] * 2, tmp_path / "V2.pt")
    with pytest.raises(SystemExit, match=r"another fit \(basis sha256 [0-9a-f]{12}\.\.\. -> [0-9a-f]{12}\.\.\.\)"):
        fit(files, backbone, out, basis=tmp_path / "V2.pt")
    assert path.read_bytes() == saved                                     # refused before any work
    weights_file(out, USERS, files["V"], model_name="another/backbone", basis_sha256=harness.file_sha256(files["basis"]))
    with pytest.raises(SystemExit, match=r"another fit \(backbone 'another/backbone' -> "):
        fit(files, backbone, out)
    path.write_bytes(b"garbage")
    with pytest.raises(SystemExit, match=r"already holds something else .*--overwrite"):
        fit(files, backbone, out)
    fit(files, backbone, out, comparisons=others, overwrite=True, num_iterations=5)
    assert personalize.load_user_weights(path)["user_ids"] == ["alice", "dave"]


def test_export_and_score_refuse_a_basis_other_than_the_weights_files(files, fitted, tmp_path, monkeypatch):
    """--basis was silently ignored by export and score (they use the weights file's basis): another one is
    refused naming both; the basis fitted with (or the same tensor in another file) is accepted."""
    torch.save(files["V"] * 2, tmp_path / "V2.pt")
    args = ("--offline", f"--weights={fitted}", "--results_dir=out")
    for command in (["--command=export", "--user=bob"], ["--command=score", f"--responses={files['responses']}"]):
        with pytest.raises(SystemExit, match=r"--basis=.*V2.pt \(sha256 [0-9a-f]{12}\.\.\.\) is not the basis .*"
                                             r"user_weights.safetensors was fitted on \(.*V.pt, sha256"):
            run_script(monkeypatch, tmp_path, *args, "--basis=V2.pt", *command)
    assert not (tmp_path / "out").exists()
    from safetensors.torch import save_file
    save_file({"V": files["V"]}, str(tmp_path / "V.safetensors"))
    for basis in (files["basis"], tmp_path / "V.safetensors"):
        run_script(monkeypatch, tmp_path, *args, f"--basis={basis}", "--command=export", "--head_only", "--user=bob")


def test_a_full_disk_during_fit_and_export_is_clear_and_leaves_nothing(files, fitted, backbone, tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    with pytest.raises(SystemExit, match=r"no space left on the device while writing .*out/user_weights.safetensors"):
        fit(files, backbone, tmp_path / "out", num_iterations=5)
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(Path, "write_text", no_space)          # user_weights.json: the weights are not left alone
    with pytest.raises(SystemExit, match=r"no space left .*user_weights.safetensors and .*user_weights.json"):
        fit(files, backbone, tmp_path / "out", num_iterations=5)
    assert list((tmp_path / "out").iterdir()) == []
    rows, ids, table, _ = personalize.score(files["responses"], fitted, backbone=backbone)
    with pytest.raises(SystemExit, match=r"no space left .*scores.csv and .*scores.json"):   # one set, too
        personalize.write_scores(rows, ids, table, tmp_path / "out", {})
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(backbone[0], "save_pretrained", no_space)
    with pytest.raises(SystemExit, match=r"no space left on the device while writing .*bob_model; it was not "
                                         r"replaced\. Free space"):
        personalize.export_model(fitted, "bob", tmp_path / "bob_model", backbone=backbone)
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]                   # no folder, no temporary folder


def test_numeric_user_ids_and_repeated_rows(files, backbone, tmp_path, capsys):
    """A numeric user_id was refused as "no user_id": it is its string. A row repeating an earlier one of the
    same user is kept (real data may repeat a judgement), warned and counted in user_weights.json."""
    rows = make_comparisons(per_user=2, users=("alice", "7"))
    rows[2]["user_id"] = rows[3]["user_id"] = 7                      # a JSON number
    rows.append(dict(rows[0]))                                        # line 5 repeats line 1
    rows.append(dict(rows[0], user_id="bob"))                         # the same pair judged by another user
    path = fit(files, backbone, tmp_path, write_jsonl(tmp_path / "c.jsonl", rows), num_iterations=5)
    assert "1 row(s) repeat an earlier row of the same user (same prompt, chosen and rejected), line(s) 5; kept" \
        in capsys.readouterr().err
    summary = json.loads((path.parent / personalize.WEIGHTS_JSON).read_text())
    assert summary["user_ids"] == ["alice", "7", "bob"] and summary["duplicate_rows"]["count"] == 1
    assert [u["comparisons"] for u in summary["users"]] == [3, 2, 1]


def test_users_with_commas_are_chosen_with_a_json_list_or_a_file(files, tmp_path, monkeypatch):
    assert personalize.parse_users(" alice, bob") == ["alice", "bob"]
    assert personalize.parse_users('["a,b", "c", 7]') == ["a,b", "c", "7"]
    (tmp_path / "ids.txt").write_text("a,b\n\n c \n")
    assert personalize.parse_users(f"@{tmp_path / 'ids.txt'}") == ["a,b", "c"]
    for bad, why in (('["a", ', "is not a JSON list of ids"), ("a,,b", "names no user, or an empty one"),
                     (f"@{tmp_path / 'none.txt'}", r"cannot read .*none.txt \(FileNotFoundError\)")):
        with pytest.raises(SystemExit, match=rf"--users=.* {why}; give ids as alice,bob, a JSON list"):
            personalize.parse_users(bad)
    weights = weights_file(tmp_path / "w", ["a,b", "c", "d"], files["V"])
    run_script(monkeypatch, tmp_path, "--offline", "--command=score", f"--weights={weights}", "--results_dir=out",
               f"--responses={files['responses']}", '--users=["a,b","c"]')
    assert (tmp_path / "out" / "scores.csv").read_text().splitlines()[0] == 'row,id,"a,b",c'
    run_script(monkeypatch, tmp_path, "--offline", "--command=score", f"--weights={weights}", "--results_dir=out",
               f"--responses={files['responses']}", "--users=@ids.txt")
    assert (tmp_path / "out" / "scores.csv").read_text().splitlines()[0] == 'row,id,"a,b",c'


def test_the_model_card_recipe_gives_the_users_score_and_double_bos_does_not(files, fitted, exported, backbone,
                                                                          tmp_path):
    """The exported folder's README.md says whose model it is, its basis and backbone, and how to score with
    transformers alone: its python block, run as it stands beside the folder, prints the score personalize.py
    gives that user; rendering the template to text and tokenizing it again (a second BOS) does not."""
    import re
    card = (exported / personalize.MODEL_CARD).read_text()
    record = personalize.load_user_weights(fitted)
    assert "user 'bob'" in card and record["basis_sha256"] in card and tiny_model_path() in card
    (code,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert f'folder = "{exported.name}"' in code
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=exported.parent, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    reward = float(result.stdout.strip().splitlines()[-1])
    responses = write_jsonl(tmp_path / "card.jsonl", [{"prompt": personalize.CARD_EXAMPLE[:-1],
                                                        "response": personalize.CARD_EXAMPLE[-1]["content"]}])
    _, _, table, _ = personalize.score(responses, fitted, ["bob"], backbone=backbone)
    torch.testing.assert_close(torch.tensor([reward]), table[0], **LOGIT_TOL)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    model = AutoModelForSequenceClassification.from_pretrained(str(exported)).eval()
    text = tokenizer.apply_chat_template(personalize.CARD_EXAMPLE, tokenize=False)
    twice = tokenizer(text, return_tensors="pt")
    assert (twice["input_ids"][0, :2] == tokenizer.bos_token_id).all()                     # two BOS tokens
    with torch.no_grad():
        assert abs(model(**twice).logits[0, 0].item() - reward) > 0.1                  # 2.27 vs 0.70 here


def test_a_missing_or_damaged_weights_file_names_the_fit_with_the_overrides(files, fitted, tmp_path, monkeypatch,
                                                                             capsys):
    fit_command = "`python personalize.py --offline --results_dir=out --command=fit --comparisons=<file.jsonl>`"
    args = ("--offline", "--results_dir=out", "--command=score", f"--responses={files['responses']}")
    with pytest.raises(SystemExit, match=rf"out/user_weights.safetensors does not exist; run {fit_command} first"):
        run_script(monkeypatch, tmp_path, *args)
    (tmp_path / "out").mkdir()
    for damage in (fitted.read_bytes()[:200], b"\x00garbage"):
        (tmp_path / "out" / personalize.WEIGHTS_FILE).write_bytes(damage)
        with pytest.raises(SystemExit, match=rf"user_weights.safetensors is damaged or not a file of {fit_command} "
                                             rf"\(unreadable: SafetensorError\); run that again"):
            run_script(monkeypatch, tmp_path, *args)
    # a damaged train_basis.json beside the basis: not silently replaced by the defaults
    (tmp_path / "train_basis.json").write_text('{"settings": ')
    assert personalize.fewshot_settings(tmp_path / "V.pt") == (500, 0.5)
    assert "cannot read the pipeline's few-shot settings from" in capsys.readouterr().err

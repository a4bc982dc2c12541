"""personalize.py: fit new users against a frozen basis, export a user's reward model, score many users.

Everything runs on the built-in tiny model with a random basis V [d, K] made here (d read from the
tiny model's config), a few generated conversations and 3 users."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import embedding
import personalize
import utils
from offline import tiny_model_path
from offline.text import sentence

ROOT = Path(__file__).resolve().parent.parent
USERS = ("alice", "bob", "carol")
K = 3
# The exported model's logit and e . V . w / 100 differ only by float32 rounding: the engine's batched,
# prefix-shared forward equals a plain forward to ~1e-6 (tests/test_embedding.py holds it to 1e-5), and
# the head (V @ w / 100) is summed in another order than (e @ V) @ w / 100, a few ulps of the ~1-10 logits.
LOGIT_TOL = dict(atol=1e-5, rtol=1e-5)


def _conversation_text(rng, n):
    return " ".join(sentence(rng) for _ in range(n))


def make_comparisons(seed=0, per_user=5, users=USERS):
    """Comparison rows: string and chat-message prompts, two rejected answers sharing a prompt."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in users:
        for k in range(per_user):
            prompt = _conversation_text(rng, 1)
            if k % 2:
                prompt = [{"role": "user", "content": prompt}, {"role": "assistant", "content": sentence(rng)},
                          {"role": "user", "content": sentence(rng)}]
            rows.append({"user_id": u, "prompt": prompt, "chosen": _conversation_text(rng, 2),
                         "rejected": _conversation_text(rng, int(rng.integers(1, 4)))})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
            "responses": folder / "responses.jsonl", "rows": rows, "response_rows": responses}


@pytest.fixture(scope="module")
def fitted(files, backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("fitted")
    path = personalize.fit(files["comparisons"], files["basis"], tiny_model_path(), out, backbone=backbone,
                           num_iterations=200, learning_rate=0.1, seed=0)
    return path


def _conversations(rows):
    return [personalize.conversation(personalize._messages(r["prompt"], "", ""), r[side])
            for r in rows for side in ("chosen", "rejected")]


def _plain_logits(folder, conversations):
    """Logits of a folder loaded with from_pretrained, one conversation per forward (no engine)."""
    return personalize.reloaded_logits(folder, conversations)


# -----------------------------------------------------------------------------
# fit


def test_fit_writes_weights_with_ids_hash_and_backbone(files, fitted):
    record = personalize.load_user_weights(fitted)
    assert record["user_ids"] == list(USERS)
    assert record["weights"].shape == (len(USERS), K)
    torch.testing.assert_close(record["weights"].sum(1), torch.ones(len(USERS)))    # on the simplex
    assert torch.equal(record["basis"], files["V"])
    meta = record["meta"]
    assert meta["basis_sha256"] == utils.file_sha256(files["basis"])
    assert meta["model_name"] == tiny_model_path()
    summary = json.loads((fitted.parent / personalize.WEIGHTS_JSON).read_text())
    assert [u["comparisons"] for u in summary["users"]] == [5, 5, 5]
    assert summary["seed"] == 0 and summary["skipped_rows"]["chosen_equals_rejected"] == 0


def test_fit_twice_with_the_same_seed_gives_the_same_weights(files, backbone, fitted, tmp_path):
    again = personalize.fit(files["comparisons"], files["basis"], tiny_model_path(), tmp_path, backbone=backbone,
                            num_iterations=200, learning_rate=0.1, seed=0)
    assert torch.equal(personalize.load_user_weights(again)["weights"],
                       personalize.load_user_weights(fitted)["weights"])
    other = personalize.fit(files["comparisons"], files["basis"], tiny_model_path(), tmp_path / "s1",
                            backbone=backbone, num_iterations=200, learning_rate=0.1, seed=1)
    assert not torch.equal(personalize.load_user_weights(other)["weights"],
                           personalize.load_user_weights(fitted)["weights"])    # the seed is used


def test_appending_a_user_leaves_the_others_weights(files, backbone, fitted, tmp_path):
    rows = files["rows"] + make_comparisons(seed=5, per_user=4, users=("dave",))
    path = personalize.fit(write_jsonl(tmp_path / "more.jsonl", rows), files["basis"], tiny_model_path(),
                           tmp_path, backbone=backbone, num_iterations=200, learning_rate=0.1, seed=0)
    more = personalize.load_user_weights(path)
    assert more["user_ids"] == [*USERS, "dave"]
    # each user's loss and Adam step involve only its own row: equal up to float rounding of shared ops
    torch.testing.assert_close(more["weights"][:3], personalize.load_user_weights(fitted)["weights"],
                               atol=1e-6, rtol=0)


def test_fit_is_the_pipelines_personalize_batch(files, backbone, fitted):
    """The same weights as PersonalizeBatch on dense features x = e(chosen) - e(rejected), each side
    embedded on its own (as a dataset's embedding script does), same users, seed and settings."""
    model, tokenizer = backbone
    convs = _conversations(files["rows"])
    E = embedding.embed_conversations(model, tokenizer, convs, share_prefixes=False)
    X = E[0::2] - E[1::2]
    users = torch.repeat_interleave(torch.arange(3), 5)
    W = utils.PersonalizeBatch(3, X.shape[1], K, 200, 0.1, seed=0, device="cpu", progress=False).train_weights(
        utils.Comparisons(users, 3, features=X), files["V"])
    # the features differ by engine rounding (~1e-6); 200 Adam steps carry that to ~1e-6 in the weights
    torch.testing.assert_close(personalize.load_user_weights(fitted)["weights"], W, atol=1e-4, rtol=0)


def test_a_one_column_basis_needs_no_fit(files, backbone, tmp_path):
    torch.save(files["V"][:, :1].clone(), tmp_path / "V1.pt")
    path = personalize.fit(files["comparisons"], tmp_path / "V1.pt", tiny_model_path(), tmp_path, backbone=backbone)
    assert torch.equal(personalize.load_user_weights(path)["weights"], torch.ones(3, 1))


def test_learning_rate_follows_the_basis_origin():
    assert personalize.fewshot_learning_rate("x/PRISM_V_lore_K_5_alpha_10000.0.pt") == 0.5
    assert personalize.fewshot_learning_rate("x/TLDR_V_lore_K_5_alpha_0.pt") == 0.1
    assert personalize.fewshot_learning_rate("x/PRISM_V_lore_K_5_alpha_0.pt", 0.3) == 0.3


# -----------------------------------------------------------------------------
# export


@pytest.fixture(scope="module")
def exported(fitted, backbone, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "bob_model"
    return personalize.export_model(fitted, "bob", folder, backbone=backbone)


def test_exported_logits_equal_embedding_at_V_w(files, backbone, fitted, exported):
    record = personalize.load_user_weights(fitted)
    w = record["weights"][USERS.index("bob")]
    convs = _conversations(files["rows"][:6])
    E = embedding.embed_conversations(*backbone, convs)
    expected = (E @ files["V"] @ w) / 100
    torch.testing.assert_close(_plain_logits(exported, convs), expected, **LOGIT_TOL)
    # and the caller's backbone keeps its own head after the export
    torch.testing.assert_close(backbone[0].score.weight, embedding.load_reward_model(tiny_model_path())[0].score.weight)


def test_exported_folder_loads_with_from_pretrained_and_nothing_else(files, fitted, exported, tmp_path):
    """A fresh interpreter in an empty folder, isolated (-I: no project modules on its path), with only
    transformers: the folder loads with no missing or unexpected weights, and its logits are bob's."""
    convs = _conversations(files["rows"][:2])
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "m, info = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], output_loading_info=True)\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "convs = json.loads(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    out = [m(**t.apply_chat_template(c, return_dict=True, return_tensors='pt')).logits.item()\n"
        "           for c in convs]\n"
        "print(json.dumps({'missing': list(info['missing_keys']), 'unexpected': list(info['unexpected_keys']),"
        " 'logits': out}))\n")
    result = subprocess.run([sys.executable, "-I", "-c", script, str(exported), json.dumps(convs)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["missing"] == [] and got["unexpected"] == []
    w = personalize.load_user_weights(fitted)["weights"][USERS.index("bob")]
    E = embedding.embed_conversations(*embedding.load_reward_model(tiny_model_path()), convs)
    torch.testing.assert_close(torch.tensor(got["logits"]), (E @ files["V"] @ w) / 100, **LOGIT_TOL)
    assert json.loads((exported / personalize.PERSONALIZATION_FILE).read_text())["user_id"] == "bob"


def test_head_only_export_and_swap_head(files, backbone, fitted, exported, tmp_path):
    paths = personalize.export_heads(fitted, [], tmp_path)
    assert [p.name for p in paths] == [f"reward_head_{u}.safetensors" for u in USERS]
    head, meta = personalize.load_head_file(tmp_path / "reward_head_bob.safetensors")
    assert head.shape == (1, files["V"].shape[0]) and meta["user_id"] == "bob"
    model, tokenizer = embedding.load_reward_model(tiny_model_path())
    backbone_weight = model.model.layers[0].self_attn.q_proj.weight
    convs = _conversations(files["rows"][:4])
    personalize.swap_head(model, tmp_path / "reward_head_bob.safetensors")
    assert model.model.layers[0].self_attn.q_proj.weight is backbone_weight      # not copied
    torch.testing.assert_close(embedding.score_conversations(model, tokenizer, convs)[:, 0],
                               _plain_logits(exported, convs), **LOGIT_TOL)
    personalize.swap_head(model, tmp_path / "reward_head_alice.safetensors")
    w = personalize.load_user_weights(fitted)["weights"][0]
    E = embedding.embed_conversations(model, tokenizer, convs)
    torch.testing.assert_close(embedding.score_conversations(model, tokenizer, convs)[:, 0],
                               (E @ files["V"] @ w) / 100, **LOGIT_TOL)


def test_export_refuses_a_path_holding_a_different_model(fitted, exported, backbone, tmp_path):
    before = sorted(p.name for p in exported.iterdir())
    stamp = (exported / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(SystemExit, match=r"already holds the personalized model of user 'bob'.*--overwrite"):
        personalize.export_model(fitted, "alice", exported, backbone=backbone)
    assert sorted(p.name for p in exported.iterdir()) == before
    assert (exported / "model.safetensors").stat().st_mtime_ns == stamp           # nothing written
    # a folder with something else in it (no personalization.json)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"already holds something else.*--overwrite"):
        personalize.export_model(fitted, "alice", other, backbone=backbone)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    # the same model again is fine; --overwrite replaces a different one
    personalize.export_model(fitted, "bob", exported, backbone=backbone)
    personalize.export_model(fitted, "alice", other, backbone=backbone, overwrite=True)
    assert json.loads((other / personalize.PERSONALIZATION_FILE).read_text())["user_id"] == "alice"
    assert not (other / "notes.txt").exists()
    # head files: the same rule
    personalize.export_heads(fitted, ["bob"], tmp_path / "heads")
    (tmp_path / "heads" / "reward_head_bob.safetensors").rename(tmp_path / "heads" / "reward_head_alice.safetensors")
    with pytest.raises(SystemExit, match=r"reward_head_alice.safetensors already holds another head \(user 'bob'\)"):
        personalize.export_heads(fitted, ["alice"], tmp_path / "heads")


def test_export_refuses_the_backbone_folder(fitted, backbone):
    with pytest.raises(SystemExit, match="backbone's own folder"):
        personalize.export_model(fitted, "bob", Path(tiny_model_path()), backbone=backbone, overwrite=True)


# -----------------------------------------------------------------------------
# score


def test_score_many_users_equals_one_user_at_a_time(files, backbone, fitted, exported):
    rows, ids, table = personalize.score(files["responses"], fitted, backbone=backbone)
    assert ids == list(USERS) and table.shape == (len(files["response_rows"]), len(USERS))
    for j, u in enumerate(USERS):
        _, one_id, one = personalize.score(files["responses"], fitted, [u], backbone=backbone)
        assert one_id == [u]
        # the same embeddings; a column of (E @ V) @ W.T against a one-column product: a few ulps
        torch.testing.assert_close(one[:, 0], table[:, j], atol=1e-6, rtol=1e-6)
    # and a user's column is what its exported model says
    convs = [personalize.conversation(r["prompt"], r["response"]) for r in rows]
    torch.testing.assert_close(table[:, USERS.index("bob")], _plain_logits(exported, convs), **LOGIT_TOL)


def test_write_scores_table(files, backbone, fitted, tmp_path):
    rows, ids, table = personalize.score(files["responses"], fitted, ["carol", "alice"], backbone=backbone)
    out = personalize.write_scores(rows, ids, table, tmp_path, {"seed": 0})
    lines = out.read_text().splitlines()
    assert lines[0] == "row,id,carol,alice" and len(lines) == len(rows) + 1
    assert lines[1].split(",")[1] == "r0"
    assert json.loads((tmp_path / personalize.SCORES_JSON).read_text())["users"] == ["carol", "alice"]


def test_score_unknown_user_is_clear(files, backbone, fitted):
    with pytest.raises(SystemExit, match=r"user\(s\) 'zoe' are not in .*user_weights.safetensors"):
        personalize.score(files["responses"], fitted, ["zoe"], backbone=backbone)


# -----------------------------------------------------------------------------
# bad input: a clear error naming the file, and nothing written


def _fit_fails(files, tmp_path, match, comparisons=None, basis=None, backbone=None):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=match):
        personalize.fit(comparisons or files["comparisons"], basis or files["basis"], tiny_model_path(), out,
                        backbone=backbone)
    assert not out.exists()


def test_basis_of_another_hidden_size(files, tmp_path):
    torch.save(torch.randn(64, K), tmp_path / "V64.pt")
    _fit_fails(files, tmp_path, r"V64.pt has d = 64 rows .* hidden size 128", basis=tmp_path / "V64.pt")
    torch.save(torch.randn(K, 128), tmp_path / "Vt.pt")
    _fit_fails(files, tmp_path, r"Vt.pt has d = 3 rows .* hidden size 128 \(it looks transposed",
               basis=tmp_path / "Vt.pt")


def test_basis_that_is_not_a_tensor_or_has_three_dimensions(files, tmp_path):
    torch.save({"V": torch.randn(128, K), "W": torch.randn(4, K)}, tmp_path / "dict.pt")
    _fit_fails(files, tmp_path, r"dict.pt holds a dict, not a tensor", basis=tmp_path / "dict.pt")
    torch.save(torch.randn(128, K, 2), tmp_path / "V3.pt")
    _fit_fails(files, tmp_path, r"V3.pt has shape \(128, 3, 2\); a basis is \[d, K\]", basis=tmp_path / "V3.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    _fit_fails(files, tmp_path, r"cannot read the basis file .*junk.pt", basis=tmp_path / "junk.pt")
    _fit_fails(files, tmp_path, r"basis file .*missing.pt does not exist", basis=tmp_path / "missing.pt")


def test_bad_comparisons_files(files, tmp_path):
    good = make_comparisons(per_user=2)
    (tmp_path / "empty.jsonl").write_text("\n")
    _fit_fails(files, tmp_path, r"empty.jsonl is empty", comparisons=tmp_path / "empty.jsonl")
    for key in ("chosen", "rejected"):
        rows = [dict(r) for r in good]
        del rows[2][key]
        path = write_jsonl(tmp_path / f"no_{key}.jsonl", rows)
        _fit_fails(files, tmp_path, rf"no_{key}.jsonl line 3 has no '{key}' response", comparisons=path)
    path = write_jsonl(tmp_path / "no_user.jsonl", [{k: v for k, v in good[0].items() if k != "user_id"}])
    _fit_fails(files, tmp_path, r"no_user.jsonl line 1 has no 'user_id'", comparisons=path)
    path = write_jsonl(tmp_path / "bad_prompt.jsonl", [dict(good[0], prompt=[{"role": "user"}])])
    _fit_fails(files, tmp_path, r"bad_prompt.jsonl line 1: 'prompt' must be", comparisons=path)
    (tmp_path / "not_json.jsonl").write_text(json.dumps(good[0]) + "\n{oops\n")
    _fit_fails(files, tmp_path, r"not_json.jsonl line 2 is not valid JSON", comparisons=tmp_path / "not_json.jsonl")
    # a user whose every row has chosen == rejected is a user with no comparisons
    rows = good + [dict(good[0], user_id="dave", rejected=good[0]["chosen"])]
    path = write_jsonl(tmp_path / "dave.jsonl", rows)
    _fit_fails(files, tmp_path, r"dave.jsonl: user\(s\) 'dave' have no comparisons left", comparisons=path)


def test_chosen_equal_to_rejected_is_skipped_and_counted(files, backbone, tmp_path, capsys):
    rows = make_comparisons(per_user=3)
    rows.insert(1, dict(rows[0], rejected=rows[0]["chosen"]))
    path = personalize.fit(write_jsonl(tmp_path / "tie.jsonl", rows), files["basis"], tiny_model_path(), tmp_path,
                           backbone=backbone, num_iterations=20)
    assert "skipped 1 row(s) whose chosen response equals the rejected one" in capsys.readouterr().err
    summary = json.loads((path.parent / personalize.WEIGHTS_JSON).read_text())
    assert summary["skipped_rows"] == {"chosen_equals_rejected": 1, "lines": [2]}
    assert [u["comparisons"] for u in summary["users"]] == [3, 3, 3]


def test_weights_file_of_another_backbone_size_is_refused(files, backbone, tmp_path):
    torch.save(torch.randn(64, K), tmp_path / "V64.pt")
    record = {"weights": torch.full((1, K), 1 / K), "basis": torch.randn(64, K)}
    meta = {"format": personalize.WEIGHTS_FORMAT, "user_ids": ["x"], "model_name": "elsewhere",
            "basis_sha256": "0", "basis_path": "V64.pt"}
    personalize._save_safetensors(record, tmp_path / "w.safetensors", personalize._encode(meta))
    with pytest.raises(SystemExit, match=r"has d = 64 rows .* hidden size 128"):
        personalize.export_model(tmp_path / "w.safetensors", "x", tmp_path / "m", backbone=backbone)
    assert not (tmp_path / "m").exists()


# -----------------------------------------------------------------------------
# the command line: relative paths from the current folder


def run_main(monkeypatch, cwd, *args):
    """personalize.main() in this process, as `python personalize.py *args` run in cwd (its settings are
    restored afterwards: configure() sets them as module globals)."""
    saved = utils.script_settings(vars(personalize))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["personalize.py", *args])
    try:
        personalize.main()
    finally:
        vars(personalize).update(saved)


def test_command_line_fit_export_score(files, tmp_path, monkeypatch):
    import shutil
    for name in ("V.pt", "comparisons.jsonl", "responses.jsonl"):
        shutil.copy(files["dir"] / name, tmp_path / name)
    # fit as its own process: the script starts from any folder
    fit = [sys.executable, str(ROOT / "personalize.py"), "--offline", "--results_dir=out", "--command=fit",
           "--basis=V.pt", "--comparisons=comparisons.jsonl", "--num_iterations=50"]
    result = subprocess.run(fit, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    out = tmp_path / "out"
    assert personalize.load_user_weights(out / "user_weights.safetensors")["user_ids"] == list(USERS)
    run_main(monkeypatch, tmp_path, "--offline", "--results_dir=out", "--command=export", "--user=carol")
    assert json.loads((out / "reward_model_carol" / "personalization.json").read_text())["user_id"] == "carol"
    run_main(monkeypatch, tmp_path, "--offline", "--results_dir=out", "--command=export", "--head_only",
             "--export_dir=heads")
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == [f"reward_head_{u}.safetensors"
                                                                      for u in sorted(USERS)]
    run_main(monkeypatch, tmp_path, "--offline", "--results_dir=out", "--command=score",
             "--responses=responses.jsonl", "--users=bob,alice")
    assert (out / "scores.csv").read_text().splitlines()[0] == "row,id,bob,alice"
    with pytest.raises(SystemExit, match="holds 3 users; name the one to export with --user"):
        run_main(monkeypatch, tmp_path, "--offline", "--results_dir=out", "--command=export")
    with pytest.raises(SystemExit, match="fit needs --comparisons"):
        run_main(monkeypatch, tmp_path, "--offline", "--command=fit")
    with pytest.raises(SystemExit, match="--command must be fit, export, score or demo"):
        run_main(monkeypatch, tmp_path, "--command=train")
    assert personalize.command == "demo" and personalize.offline is False         # settings restored


def test_a_local_model_folder_and_the_recorded_backbone(files, tmp_path, monkeypatch):
    """Without --offline: fit on a local checkpoint folder; export and score default to the backbone
    and dtype fit recorded (not the Skywork/bf16 defaults)."""
    import shutil
    for name in ("V.pt", "comparisons.jsonl", "responses.jsonl"):
        shutil.copy(files["dir"] / name, tmp_path / name)
    run_main(monkeypatch, tmp_path, f"--model_name={tiny_model_path()}", "--dtype=float32", "--results_dir=out",
             "--command=fit", "--basis=V.pt", "--comparisons=comparisons.jsonl", "--num_iterations=20")
    run_main(monkeypatch, tmp_path, "--results_dir=out", "--command=export", "--user=alice")
    folder = tmp_path / "out" / "reward_model_alice"
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((folder / personalize.PERSONALIZATION_FILE).read_text())["backbone"] == tiny_model_path()
    run_main(monkeypatch, tmp_path, "--results_dir=out", "--command=score", "--responses=responses.jsonl")
    assert (tmp_path / "out" / "scores.csv").read_text().splitlines()[0] == "row,id,alice,bob,carol"

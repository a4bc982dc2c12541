"""The shared embedding engine (embedding.py) on the built-in tiny reward model."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import embedding
from embedding import (
    REWARD_HEAD_FILE,
    ModelNotAvailable,
    embed_conversations,
    embed_to_file,
    export_reward_head,
    load_embeddings,
    load_reward_head,
    load_reward_model,
    render_ids,
    reward_head,
    score_conversations,
)
from offline import tiny_model_path
from offline.text import sentence

ROOT = Path(__file__).resolve().parent.parent


def make_conversations(n, seed=0):
    """Single- and multi-turn dialogs of varied length (so batches need padding)."""
    rng = np.random.default_rng(seed)
    convs = []
    for _ in range(n):
        conv = []
        for _ in range(int(rng.integers(1, 3))):
            conv.append({"role": "user", "content": " ".join(sentence(rng) for _ in range(rng.integers(1, 4)))})
            conv.append({"role": "assistant", "content": " ".join(sentence(rng) for _ in range(rng.integers(1, 5)))})
        convs.append(conv)
    return convs



@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_reward_model(tiny_model_path())
    return model, tokenizer


@pytest.fixture(scope="module")
def convs():
    return make_conversations(9)


def one_at_a_time_logits(model, tokenizer, conversations):
    """The reference: the model's own forward, one unpadded conversation at a time."""
    out = []
    with torch.inference_mode():
        for c in conversations:
            enc = tokenizer.apply_chat_template(c, tokenize=True, return_dict=True, return_tensors="pt")
            out.append(model(input_ids=enc["input_ids"]).logits.float())
    return torch.cat(out)


def assert_same(a, b, tolerance=1e-5):
    """Scores a == b to float32 rounding, relative to the largest of them (the tiny model's loud channels
    make its logits ~100, not ~1)."""
    scale = float(b.abs().max().clamp(min=1e-6))
    torch.testing.assert_close(a / scale, b / scale, atol=tolerance, rtol=tolerance)


def assert_same_embeddings(a, b, tolerance=5e-5):
    """Embeddings a == b to float32 rounding in the normalised coordinates: divided by the final norm's
    gain (0.6 to 16.5 over the tiny model's channels, offline/tiny_model.py), so float32's rounding is
    measured alike on every channel. Measured with the gains of 1 and 100 it had before: batched against
    one at a time 8e-6, float32 against float64 1.4e-5; 5e-5 leaves room for another CPU's summation
    order."""
    from offline.tiny_model import final_norm_gains
    gain = final_norm_gains()
    torch.testing.assert_close(a / gain, b / gain, atol=tolerance, rtol=tolerance)


def test_exactly_one_bos(tiny, convs):
    _, tok = tiny
    bos = tok.bos_token_id
    ids = render_ids(tok, convs[0])
    assert ids[0] == bos and ids.count(bos) == 1
    text = tok.apply_chat_template(convs[0], tokenize=False)
    assert tok(text)["input_ids"][:2] == [bos, bos]  # the pitfall the engine avoids
    assert render_ids(tok, text) == ids               # rendered text: same ids, one BOS
    left = render_ids(tok, convs[0], max_length=10)
    right = render_ids(tok, convs[0], max_length=10, truncation_side="right")
    assert len(left) == len(right) == 10 and left[0] == right[0] == bos and left.count(bos) == 1
    assert left[1:] == ids[-9:] and right == ids[:10]


def test_embedding_at_exported_head_equals_logits(tiny, convs, tmp_path):
    model, tok = tiny
    head = load_reward_head(export_reward_head(model, tmp_path / "head.safetensors"))
    assert head.shape == (model.config.hidden_size, 1) and head.dtype == torch.float32
    assert torch.equal(head, model.score.weight.detach().T)
    E = embed_conversations(model, tok, convs, batch_size=4)
    assert E.shape == (len(convs), model.config.hidden_size) and E.dtype == torch.float32
    assert_same(E @ head, one_at_a_time_logits(model, tok, convs))


@pytest.fixture(scope="module")
def tiny_eager():
    return load_reward_model(tiny_model_path(), attn_implementation="eager")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_one_at_a_time(tiny, tiny_eager, convs, side, attention):
    model, tok = tiny if attention == "sdpa" else tiny_eager
    assert model.config._attn_implementation == attention
    old = tok.padding_side
    tok.padding_side = side
    try:
        single = embed_conversations(model, tok, convs, batch_size=1, share_prefixes=False)
        batched = embed_conversations(model, tok, convs, batch_size=5)
        budget = embed_conversations(model, tok, convs, batch_size=64, max_tokens=300)
        scores = score_conversations(model, tok, convs, batch_size=6)
    finally:
        tok.padding_side = old
    assert_same_embeddings(batched, single)
    assert_same_embeddings(budget, single)
    assert_same(scores, one_at_a_time_logits(model, tok, convs))


def dialog_tree(seed=0):
    """Conversations that share prompts as the datasets' do: a prompt with four responses, a second
    turn continuing one of them (so a whole conversation is the prefix of two others), an exact
    duplicate, a longer second prompt with two responses, and unrelated single conversations."""
    rng = np.random.default_rng(seed)

    def text(k):
        return " ".join(sentence(rng) for _ in range(k))

    first = [{"role": "user", "content": text(3)}]
    answers = [[{"role": "assistant", "content": text(int(k))}] for k in (1, 4, 2, 6)]
    convs = [first + a for a in answers]
    follow = first + answers[1] + [{"role": "user", "content": text(2)}]
    convs += [follow + [{"role": "assistant", "content": text(k)}] for k in (1, 3)]
    convs.append(list(convs[2]))  # the same conversation twice
    second = [{"role": "user", "content": text(8)}]
    convs += [second + [{"role": "assistant", "content": text(k)}] for k in (2, 5)]
    return convs + make_conversations(3, seed=seed + 1)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompts_equal_whole_conversations(tiny, tiny_eager, attention, monkeypatch):
    model, tok = tiny if attention == "sdpa" else tiny_eager
    convs = dialog_tree()
    ids = embedding.render_all_ids(tok, convs)
    groups = embedding.shared_prefix_groups(ids)
    assert len(groups) >= 3 and any(len(members) >= 3 for _, members in groups)
    processed = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: processed.append(i[0].numel()))
    try:
        shared = embed_conversations(model, tok, convs, batch_size=4)
        monkeypatch.setattr(embedding, "PREFIX_WINDOW", 2)  # members of prefixes of different widths batched together
        windows = embed_conversations(model, tok, convs, batch_size=3, max_tokens=120)
    finally:
        hook.remove()
    single = embed_conversations(model, tok, convs, batch_size=1, share_prefixes=False)
    assert_same_embeddings(shared, single)
    assert_same_embeddings(windows, single)
    assert_same_embeddings(shared[2][None], shared[6][None])  # the duplicate
    # the prefixes really ran once: fewer tokens (pads included) went through the model, in both runs,
    # than the conversations hold
    assert sum(processed) < 2 * sum(len(x) for x in ids)
    scores = score_conversations(model, tok, convs, batch_size=4)
    assert_same(scores, one_at_a_time_logits(model, tok, convs))


def test_shared_prefix_groups_save_the_most_tokens():
    """Against brute force over every cut of the sorted order into contiguous groups."""
    import itertools

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 8))
        stems = [list(rng.integers(0, 3, size=int(rng.integers(0, 12)))) for _ in range(2)]
        ids = [stems[int(rng.integers(0, 2))] + list(rng.integers(0, 3, size=int(rng.integers(1, 10))))
               for _ in range(n)]
        min_prefix, overhead = int(rng.integers(1, 4)), float(rng.choice([0.0, 0.25, 0.5]))

        def gain(part):  # tokens saved by running `part` as one group (None: not a valid group)
            p = min(len(os.path.commonprefix(part)), min(len(x) for x in part) - 1)
            if not 2 <= len(part) <= 4 or p < min_prefix:
                return None
            return (len(part) - 1) * p - overhead * sum(len(x) - p for x in part)

        groups = embedding.shared_prefix_groups(ids, min_prefix=min_prefix, max_group=4,
                                                suffix_overhead=overhead)
        members = [i for _, m in groups for i in m]
        assert len(members) == len(set(members)) and all(0 <= i < n for i in members)
        for p, m in groups:
            part = [ids[i] for i in m]
            assert gain(part) is not None and gain(part) > 0
            assert p == min(len(os.path.commonprefix(part)), min(len(x) for x in part) - 1)
        found = sum(gain([ids[i] for i in m]) for _, m in groups)

        seqs, best = sorted(ids), 0.0
        for cuts in itertools.product([False, True], repeat=max(n - 1, 0)):
            bounds = [0] + [k + 1 for k, cut in enumerate(cuts) if cut] + [n]
            total = 0.0
            for a, b in zip(bounds, bounds[1:]):
                if b - a >= 2:
                    g = gain(seqs[a:b])
                    if g is None:
                        break
                    total += g
            else:
                best = max(best, total)
        assert found == best, (trial, ids, groups)


def test_a_shared_header_alone_forms_no_group():
    """Long, different messages behind a common template header are embedded whole."""
    header = list(range(10))
    ids = [header + [100 + k] * 200 for k in range(5)]
    assert embedding.shared_prefix_groups(ids) == []
    assert embedding.shared_prefix_groups(ids, suffix_overhead=0.0) == [(10, [0, 1, 2, 3, 4])]


def test_render_all_ids_equals_apply_chat_template(tiny):
    _, tok = tiny
    convs = dialog_tree(3)
    expected = [tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in convs]
    assert embedding.render_all_ids(tok, convs) == expected
    assert [render_ids(tok, c) for c in convs] == expected


def test_length_batches_respect_caps():
    lengths = [5, 50, 7, 50, 9, 30, 1]
    batches = embedding.length_batches(lengths, batch_size=3, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 100)
    assert batches[0][0] in (1, 3)  # longest first


def test_score_conversations_heads(tiny, convs):
    model, tok = tiny
    logits = one_at_a_time_logits(model, tok, convs)
    own = score_conversations(model, tok, convs, batch_size=4)
    assert own.shape == (len(convs), 1) and own.dtype == torch.float32
    assert_same(own, logits)
    E = embed_conversations(model, tok, convs)
    V_ref = reward_head(model)
    assert_same(score_conversations(model, tok, convs, head=V_ref), own)
    assert_same(score_conversations(model, tok, convs, head=V_ref[:, 0].numpy(), bias=2.0), own + 2.0)
    V = torch.randn(model.config.hidden_size, 3, generator=torch.Generator().manual_seed(0))
    bias = torch.tensor([1.0, -2.0, 0.5])
    assert_same(score_conversations(model, tok, convs, head=V, bias=bias), E @ V + bias)
    with pytest.raises(ValueError, match="head must have shape"):
        score_conversations(model, tok, convs, head=torch.zeros(7, 2))


def test_score_conversations_peft_model(tiny, convs):
    from peft import LoraConfig, TaskType, get_peft_model

    model, tok = load_reward_model(tiny_model_path())  # a fresh copy: PEFT modifies it in place
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                  target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():  # the adapter's own copy of the head (modules_to_save) differs from the base head
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name and name.endswith("score.modules_to_save.default.weight"):
                p.mul_(-0.5)
    peft_model.eval()
    expected = one_at_a_time_logits(peft_model, tok, convs)
    for side in ("left", "right"):
        tok.padding_side = side
        got = score_conversations(peft_model, tok, convs, batch_size=5)
        assert_same(got, expected)
    tok.padding_side = "right"
    E = embed_conversations(peft_model, tok, convs)
    assert_same(E @ reward_head(peft_model), expected)
    base_scores = one_at_a_time_logits(tiny[0], tiny[1], convs)
    assert not torch.allclose(expected, base_scores, atol=1e-3)  # the adapter really changed the scores


def test_embed_to_file_resumes_after_kill(tiny, convs, tmp_path, monkeypatch, capsys):
    model_path = tiny_model_path()
    reference = embed_to_file(model_path, convs, tmp_path / "ref" / "emb.safetensors", shard_size=4,
                              batch_size=3, progress=False)
    ref = load_embeddings(reference)
    model, tok = tiny
    assert_same_embeddings(ref, embed_conversations(model, tok, convs))

    out = tmp_path / "run" / "emb.safetensors"
    done = []

    def killed_after_second_shard(k):
        done.append(k)
        if len(done) == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(embedding, "_after_shard_hook", killed_after_second_shard)
    with pytest.raises(KeyboardInterrupt):
        embed_to_file(model_path, convs, out, shard_size=4, batch_size=3, progress=False)
    shards = out.with_name(out.name + ".shards")
    assert not out.exists() and len(list(shards.glob("shard-*.safetensors"))) == 2
    assert not list(shards.glob("*.tmp"))
    with pytest.raises(SystemExit, match="resumes"):
        load_embeddings(out)

    # other inputs must not be mixed with the old shards, nor replace them unless asked
    with pytest.raises(SystemExit, match=r"conversations: 9 -> 8.*--overwrite=True"):
        embed_to_file(model_path, convs[:-1], out, shard_size=4, batch_size=3, progress=False)
    assert len(list(shards.glob("shard-*.safetensors"))) == 2

    # a damaged shard is embedded again; the run resumes with one progress bar over all its work
    (shards / "shard-00001.safetensors").write_bytes(b"not a safetensors file")
    done.clear()
    monkeypatch.setattr(embedding, "_after_shard_hook", done.append)
    capsys.readouterr()
    import harness
    monkeypatch.setattr(harness, "PLAIN_PROGRESS_SECONDS", 0.0)        # a line at every update (not a terminal)
    embed_to_file(model_path, convs, out, shard_size=4, batch_size=3, progress=True)
    captured = capsys.readouterr()
    assert "resuming: 1 of 3 shards done" in captured.out
    assert "5/5 (100%)" in captured.out                              # one counter to the end, not 4/5
    assert done == [1, 2]
    assert torch.equal(load_embeddings(out), ref)  # identical to the uninterrupted run
    assert embedding._metadata(out)["manifest"] == embedding._metadata(reference)["manifest"]
    assert not shards.exists()
    done.clear()
    embed_to_file(model_path, convs, out, shard_size=4, batch_size=3, progress=False)
    assert done == []  # complete: nothing recomputed

    # a finished file made with other settings is kept unless overwrite
    with pytest.raises(SystemExit, match=r"max_length: None -> 16.*--overwrite=True"):
        embed_to_file(model_path, convs, out, shard_size=4, batch_size=3, max_length=16, progress=False)
    assert torch.equal(load_embeddings(out), ref)
    embed_to_file(model_path, convs, out, shard_size=4, batch_size=3, max_length=16, progress=False, overwrite=True)
    assert not torch.equal(load_embeddings(out), ref)


@pytest.mark.slow
def test_accelerate_two_processes_equal_one(convs, tmp_path):
    import json

    script = tmp_path / "embed_job.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import json
        from embedding import embed_to_file
        from offline import tiny_model_path
        convs = json.load(open({str(tmp_path / 'convs.json')!r}))
        embed_to_file(tiny_model_path(), convs, sys.argv[1], shard_size=3, batch_size=2, progress=False)
    """))
    (tmp_path / "convs.json").write_text(json.dumps(convs))
    # CPU processes even on a GPU machine (the engine then asks accelerate for the gloo backend).
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
               ACCELERATE_USE_CPU="1")
    one = embed_to_file(tiny_model_path(), convs, tmp_path / "one.safetensors", shard_size=3, batch_size=2,
                        progress=False, device="cpu")
    two = tmp_path / "two.safetensors"
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    # On a CPU machine the torchrun launcher (--multi_gpu) starts the processes; the engine picks gloo.
    result = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                             str(script), str(two)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(load_embeddings(one), load_embeddings(two))


def test_bad_model_path_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ["no-such-org/no-such-reward-model", str(tmp_path / "missing-folder")]:
        with pytest.raises(ModelNotAvailable, match="--offline") as err:
            load_reward_model(name)
        assert "neither a local folder nor a reachable hub id" in str(err.value)
    with pytest.raises(OSError, match="--offline"):
        embed_to_file("no-such-org/no-such-reward-model", [[{"role": "user", "content": "hi"}]],
                      tmp_path / "e.safetensors", progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing left behind that a corrected re-run would refuse
    with pytest.raises(ModelNotAvailable, match="--offline"):
        embedding.load_config(str(tmp_path / "missing-folder"))
    assert embedding.load_config(tiny_model_path()).hidden_size == 128


def test_distinct_conversations_in_first_seen_order():
    a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    same_as_a = [{"content": "a", "role": "user"}]                # the same content, keys in another order
    assert embedding.distinct_conversations([b, a, same_as_a, b, "text"]) == ([b, a, "text"], [0, 1, 1, 0, 2])


def test_dtype_and_attention_selectable(tiny, convs):
    model, tok = tiny
    reference = embed_conversations(model, tok, convs)
    bf16, tok16 = load_reward_model(tiny_model_path(), dtype="bfloat16", attn_implementation="eager")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    assert bf16.config._attn_implementation == "eager"
    E = embed_conversations(bf16, tok16, convs, batch_size=4)
    assert E.dtype == torch.float32
    # bf16 rounds each operation by up to 2^-9 relative; through two layers and the loud final norm
    # (gain 100 on a few channels) the embeddings differ from float32 by ~5% (measured 0.050): bound 0.1
    assert (E - reference).norm() / reference.norm() < 0.1
    assert_same(score_conversations(bf16, tok16, convs, batch_size=4), one_at_a_time_logits(bf16, tok16, convs),
                tolerance=0.05)


def test_missing_input_file_is_clear(tmp_path):
    with pytest.raises(SystemExit, match="embed.py"):
        load_embeddings(tmp_path / "nope.safetensors", made_by="python embed.py")
    with pytest.raises(SystemExit, match="embed.py"):
        load_reward_head(tmp_path / REWARD_HEAD_FILE, made_by="python embed.py")


def test_tiny_model_builds_byte_identical(tmp_path):
    from offline.tiny_model import build

    a, b = build(tmp_path / "a"), build(tmp_path / "b")
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and "model.safetensors" in files
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_head_exported_from_another_model_or_unreadable_is_replaced(tmp_path):
    """The head beside the embeddings must come from the model that made them."""
    from safetensors.torch import save_file
    model_path = tiny_model_path()
    head_file = tmp_path / REWARD_HEAD_FILE
    save_file({"reward_head": torch.zeros(8, 1)}, str(head_file), metadata={"model": "another/model"})
    export_reward_head(model_path, head_file)
    assert embedding._metadata(head_file)["model"] == model_path
    assert load_reward_head(head_file).shape[0] != 8
    head_file.write_bytes(b"")
    with pytest.raises(SystemExit, match="empty"):
        load_reward_head(head_file, "python make_it.py")
    export_reward_head(model_path, head_file)
    assert load_reward_head(head_file).shape[1] == 1


def test_conversations_longer_than_the_backbones_positions_are_truncated_and_counted(convs, tmp_path, capsys):
    """A text longer than config.max_position_embeddings was embedded anyway (minutes, a library warning):
    it is truncated to the positions as max_length does (BOS and the end kept), counted, printed and
    recorded. The tiny model with 100 positions stands in for a backbone's limit."""
    import json
    import shutil
    folder = tmp_path / "tiny-100"
    shutil.copytree(tiny_model_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 100}))
    model, tokenizer = load_reward_model(str(folder))
    lengths = [len(ids) for ids in embedding.render_all_ids(tokenizer, convs)]
    long = sum(n > 100 for n in lengths)
    assert 0 < long < len(convs)
    E, cut = embed_conversations(model, tokenizer, convs, return_truncated=True)
    assert cut == long and f"warning: {long} conversation(s) longer than the backbone's 100 positions" in \
        capsys.readouterr().err
    assert_same_embeddings(E, embed_conversations(model, tokenizer, convs, max_length=100))
    assert embed_conversations(model, tokenizer, convs, max_length=10, return_truncated=True)[1] == 0  # max_length cut
    out = embed_to_file(str(folder), convs, tmp_path / "e.safetensors", shard_size=4, progress=False)
    assert embedding._metadata(out)["truncated_to_positions"] == str(long)
    assert_same_embeddings(load_embeddings(out), E)


def test_embedding_progress_in_a_log_is_plain_lines(tiny, convs, tmp_path, monkeypatch, capsys):
    """Output that is not a terminal (nohup, CI, the main job's logs) got tqdm's carriage-return bar:
    the engine reports through harness.progress, plain periodic lines."""
    import harness
    monkeypatch.setattr(harness, "PLAIN_PROGRESS_SECONDS", 0.0)        # every update of this short loop prints
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    embed_conversations(*tiny, convs, batch_size=4, progress=True)
    out, err = capsys.readouterr()
    assert f"embedding: {len(convs)}/{len(convs)} (100%)," in out and "\r" not in out + err
    embed_to_file(tiny_model_path(), convs, tmp_path / "e.safetensors", batch_size=4, progress=True)
    assert f"embedding e.safetensors: {len(convs)}/{len(convs)} (100%)," in capsys.readouterr().out

"""debias_lora/: GSM8K pairs, forget-LoRA training, subtraction (scaled and merged) and the lambda sweep.

All offline with the built-in tiny model and a handful of generated or hand-written GSM8K rows.
"""
import json
import os

import numpy as np
import pytest
import torch

from debias_lora import evaluate_lambdas, lora_math, train_forget_lora
from debias_lora import pairs as P
from offline import tiny_model_path
from offline.gsm8k import generate_rows

# GSM8K-format answers written for the tests (the real data set is not copied into the repo): calculator
# marks after a "$", a mark result reused two steps later, comma-grouped numbers, a line without a mark.
ANSWER_A = ("Each box costs 12/4 = $<<12/4=3>>3.\n"
            "Five boxes cost 5 * 3 = $<<5*3=15>>15.\n"
            "With the 15 dollar bag she pays 15 + 15 = $<<15+15=30>>30 in all.\n"
            "#### 30")
ANSWER_B = ("The farm has 1,200 * 2 = <<1200*2=2400>>2,400 hens.\n"
            "It sells half, so 2,400 / 2 = <<2400/2=1200>>1,200 are left.\n"
            "#### 1,200")
ANSWER_NO_MARKS = "She reads 10 pages a day for 3 days, so 30 pages.\n#### 30"

CONVERSATIONS = [
    [{"role": "user", "content": "What is 7 x 8?"}, {"role": "assistant", "content": "7 x 8 = 56."}],
    [{"role": "user", "content": "Add 120 and 40."}, {"role": "assistant", "content": "## Sum\n\n**160**"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, how can I help?"}],
]



def _marks_consistent_after(solution, start_mark: int) -> bool:
    """Every calculator mark from `start_mark` on evaluates to its written result."""
    index = -1
    for step in solution.steps:
        for mark in P.MARK.findall(step):
            index += 1
            expression, _, result = mark.rpartition("=")
            if index > start_mark and abs(P.safe_eval(expression) - P.parse_number(result)) > 1e-6:
                return False
    return True


# -----------------------------------------------------------------------------
# pairs


def test_parse_real_gsm8k_format():
    sol = P.parse_answer(ANSWER_A)
    assert len(sol.steps) == 3 and sol.final == "30"
    assert P.clean(sol.steps[0]) == "Each box costs 12/4 = $3."
    assert "<<" not in P.clean(sol.steps[2]) and P.clean(sol.steps[2]).endswith("$30 in all.")
    sol_b = P.parse_answer(ANSWER_B)
    assert sol_b.final == "1,200" and P.parse_number(sol_b.final) == 1200
    with pytest.raises(ValueError, match="####"):
        P.parse_answer("no final line here")


@pytest.mark.parametrize("answer", [ANSWER_A, ANSWER_B, ANSWER_NO_MARKS])
def test_incorrect_variant_slip_is_carried_through(answer):
    sol = P.parse_answer(answer)
    for seed in range(8):
        wrong = P.make_incorrect(sol, np.random.default_rng(seed))
        assert P.parse_number(wrong.final) != P.parse_number(sol.final)
        assert len(wrong.steps) == len(sol.steps)
        if "<<" not in answer:
            assert wrong.final in wrong.steps[-1]  # the slipped answer shows in the last line
            continue
        # exactly one mark is off (the slip); every later mark is recomputed from the slipped values
        marks = [m for s in wrong.steps for m in P.MARK.findall(s)]
        off = [i for i, m in enumerate(marks)
               if abs(P.safe_eval(m.rpartition("=")[0]) - P.parse_number(m.rpartition("=")[2])) > 1e-6]
        assert len(off) == 1
        assert _marks_consistent_after(wrong, off[0])
        # the displayed numbers follow the marks: the final answer is the last mark's result
        assert P.parse_number(marks[-1].rpartition("=")[2]) == P.parse_number(wrong.final)


def test_slip_propagates_into_prose_and_reused_values():
    sol = P.parse_answer(ANSWER_A)
    rng = np.random.default_rng(0)
    wrong = P._slip_at(sol, 1, rng)           # slip "5*3=15": 15 + 15 in the last step both change
    new = P.parse_number(P.MARK.findall(wrong.steps[1])[0].rpartition("=")[2])
    assert new != 15
    last = P.MARK.findall(wrong.steps[2])[0]
    assert P.safe_eval(last.rpartition("=")[0]) == P.parse_number(last.rpartition("=")[2])
    assert P.clean(wrong.steps[1]).endswith(f"${P.format_number(new)}.")
    assert wrong.steps[0] == sol.steps[0]     # steps before the slip are untouched


def test_render_styles():
    sol = P.parse_answer(ANSWER_A)
    concise, plain, markdown = (P.render(sol, s) for s in P.STYLES)
    assert concise.endswith("The answer is 30.") and "Each box" not in concise   # the final lines only
    assert "Each box costs 12/4 = $3." in plain or "each box costs 12/4 = $3." in plain
    for text in (concise, plain):
        assert "**" not in text and "##" not in text and "\n- " not in text
    assert "## " in markdown and "- **Step 1:**" in markdown and "**30**" in markdown
    assert len(concise) < len(plain) < len(markdown) or len(concise) < len(markdown)


def test_pair_counts_and_labels_per_mode():
    rows = generate_rows(5, seed=3)
    variants, pairs, skipped = P.build(rows, "fixture")
    assert not skipped and len(variants) == 30
    by_mode = {m: [p for p in pairs if p["mode"] == m] for m in P.MODES}
    assert {m: len(v) for m, v in by_mode.items()} == {"style": 15, "correctness": 15, "cross": 15}
    order = {s: i for i, s in enumerate(P.STYLES)}
    for p in by_mode["style"]:
        assert p["chosen_correct"] == p["rejected_correct"]
        assert order[p["chosen_style"]] < order[p["rejected_style"]]
    assert sum(p["chosen_correct"] for p in by_mode["style"]) in (7, 8)   # alternating correctness
    for p in by_mode["correctness"]:
        assert p["chosen_style"] == p["rejected_style"]
        assert p["chosen_correct"] and not p["rejected_correct"]
    for p in by_mode["cross"]:
        assert p["chosen_correct"] and not p["rejected_correct"]
        assert order[p["chosen_style"]] < order[p["rejected_style"]]
    text = {(v["question_id"], v["style"], v["correct"]): v["response"] for v in variants}
    for p in pairs:
        assert p["chosen"] == text[(p["question_id"], p["chosen_style"], p["chosen_correct"])]
        assert p["rejected"] == text[(p["question_id"], p["rejected_style"], p["rejected_correct"])]
        assert p["prompt"] == rows[int(p["question_id"].split("-")[1])]["question"]


def test_offline_generator_format():
    for row in generate_rows(20, seed=1):
        sol = P.parse_answer(row["answer"])
        marks = [m for s in sol.steps for m in P.MARK.findall(s)]
        assert marks and all(P.safe_eval(m.rpartition("=")[0]) == P.parse_number(m.rpartition("=")[2])
                             for m in marks)
        assert P.parse_number(marks[-1].rpartition("=")[2]) == P.parse_number(sol.final)


def test_build_pairs_script_local_and_hub_hint(tmp_path, monkeypatch):
    from debias_lora import build_pairs
    src = tmp_path / "gsm8k"
    src.mkdir()
    (src / "train.jsonl").write_text("".join(json.dumps({"question": f"Q{i}?", "answer": a}) + "\n"
                                             for i, a in enumerate([ANSWER_A, ANSWER_B, ANSWER_NO_MARKS])))
    out = tmp_path / "out"
    summary = build_pairs.main(["--source", str(src), "--splits", "train", "--data_dir", str(out)])
    assert summary["splits"]["train"]["pairs"] == {"style": 9, "correctness": 9, "cross": 9}
    assert len(P.load_pairs(out / "pairs_train.jsonl", "cross")) == 9
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")      # as on a machine without network
    with pytest.raises(SystemExit, match="--offline"):
        build_pairs.main(["--source", "openai/gsm8k", "--data_dir", str(out)])


# -----------------------------------------------------------------------------
# models: fixtures


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return lora_math.load_base_model(tiny_model_path(), device="cpu")


def _random_lora(model, seed: int, **config):
    """A forget LoRA over `model` with non-zero B (so it changes the outputs)."""
    peft_model = lora_math.new_forget_lora(model, **config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in lora_math.lora_layers(peft_model):
            for adapter in module.lora_B:
                module.lora_B[adapter].weight.copy_(0.3 * torch.randn(module.lora_B[adapter].weight.shape,
                                                                       generator=gen))
    return peft_model


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    model, _ = lora_math.load_base_model(tiny_model_path(), device="cpu")
    out = tmp_path_factory.mktemp("forget_lora")
    lora_math.save_forget_lora(_random_lora(model, seed=1), out)
    return out


def _scores(model, tokenizer):
    import embedding
    return embedding.score_conversations(model, tokenizer, CONVERSATIONS, batch_size=2)


# Merged and scaled models are compared in float64: their float32 forwards differ by summation order
# (which made the comparison fail by chance). In float64 only the float32 rounding of the merged weights
# is left: at most 2^-24 relative per entry, a deterministic gap of ~1e-6 of the scores' size (measured
# 7e-7). The comparison allows 2e-5 of the largest score: 20x that gap, and far below any real change.
MERGED_TOLERANCE = 2e-5


def _close_to(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=MERGED_TOLERANCE * float(b.abs().max()), rtol=0)


def _scores_float64(model, tokenizer):
    return _scores(model.double(), tokenizer)


# -----------------------------------------------------------------------------
# models: subtraction


def test_adapter_has_no_head_and_right_config(adapter_dir):
    keys = lora_math.adapter_state_keys(adapter_dir)
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    assert not any("score" in k for k in keys)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 16, 0.05)
    assert sorted(config["target_modules"]) == sorted(lora_math.TARGET_MODULES)
    assert not config.get("modules_to_save") and config.get("task_type") is None


def test_lambda_zero_leaves_outputs_unchanged_and_head_is_base(tiny, adapter_dir):
    base, tokenizer = tiny
    base_scores = _scores(base, tokenizer)
    head = base.score.weight.detach().clone()
    model, _ = lora_math.load_base_model(tiny_model_path(), device="cpu")
    peft_model = lora_math.apply_forget_lora(model, str(adapter_dir))
    assert len(lora_math.lora_layers(peft_model)) == 8        # q/k/v/o in 2 layers
    lora_math.set_lambda(peft_model, 0.0)
    assert torch.equal(_scores(peft_model, tokenizer), base_scores)
    lora_math.set_lambda(peft_model, 1.0)
    changed = _scores(peft_model, tokenizer)
    assert not torch.allclose(changed, base_scores)
    for _, module in lora_math.lora_layers(peft_model):
        assert module.scaling["default"] == -1.0 * 16 / 8
    _, score = lora_math.reward_parts(peft_model)
    assert type(score) is torch.nn.Linear and torch.equal(score.weight, head)
    assert not any("modules_to_save" in n for n, _ in peft_model.named_modules())


def test_merged_weights_exact_and_scores_match_scaled(tiny, adapter_dir):
    from safetensors.torch import load_file
    base, tokenizer = tiny
    lam = 0.7
    model, _ = lora_math.load_base_model(tiny_model_path(), device="cpu")
    scaled = lora_math.apply_forget_lora(model, str(adapter_dir))
    lora_math.set_lambda(scaled, lam)

    model2, _ = lora_math.load_base_model(tiny_model_path(), device="cpu")
    merged = lora_math.merge_subtracted(lora_math.apply_forget_lora(model2, str(adapter_dir)), lam)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapter = load_file(str(adapter_dir / "adapter_model.safetensors"))
    base_weights = dict(base.named_parameters())
    n_checked = 0
    for name, weight in merged.named_parameters():
        prefix = "base_model.model." + name[: -len(".weight")]
        if prefix + ".lora_A.weight" in adapter:
            A, B = adapter[prefix + ".lora_A.weight"], adapter[prefix + ".lora_B.weight"]
            expected = base_weights[name].float() - (lam * (16 / 8)) * (B.float() @ A.float())
            assert torch.equal(weight, expected), name
            n_checked += 1
        else:
            assert torch.equal(weight, base_weights[name]), name   # everything else, head included
    assert n_checked == 8
    assert _close_to(_scores_float64(merged, tokenizer), _scores_float64(scaled, tokenizer))


def test_subtract_script_saves_plain_model(tmp_path, tiny, adapter_dir):
    from debias_lora import subtract_lora
    base, tokenizer = tiny
    umask = os.umask(0o022)
    try:
        out = subtract_lora.main(["--base_model", tiny_model_path(), "--lora_path", str(adapter_dir),
                                  "--lambda", "0.5", "--output_dir", str(tmp_path / "merged"), "--device", "cpu"])
    finally:
        os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}     # save_pretrained alone: 0600 weights
    assert not (out / "adapter_config.json").exists()
    merged, tok = lora_math.load_base_model(str(out), device="cpu")
    model, _ = lora_math.load_base_model(tiny_model_path(), device="cpu")
    scaled = lora_math.apply_forget_lora(model, str(adapter_dir))
    lora_math.set_lambda(scaled, 0.5)
    assert _close_to(_scores_float64(merged, tok), _scores_float64(scaled, tokenizer))
    assert json.loads((out / "debias.json").read_text())["lambda"] == 0.5


def test_unreadable_adapter_weights_are_a_clear_error(tmp_path, adapter_dir):
    """A damaged adapter_model.safetensors: an error naming the folder and the remedy, no traceback."""
    import shutil

    from debias_lora import subtract_lora
    broken = tmp_path / "adapter"
    shutil.copytree(adapter_dir, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SystemExit, match="adapter weights in .* are unreadable.*train_forget_lora.py"):
        subtract_lora.main(["--base_model", tiny_model_path(), "--lora_path", str(broken), "--lambda", "0.5",
                            "--output_dir", str(tmp_path / "merged"), "--device", "cpu"])
    assert not (tmp_path / "merged").exists()


def test_base_that_is_a_lora_adapter_is_merged_first(tmp_path, tiny, adapter_dir):
    from peft import LoraConfig, PeftModel, get_peft_model
    base, tokenizer = tiny
    # a "margin_reg_baseline"-like base: a SEQ_CLS LoRA over the tiny model with a trained head copy
    model, _ = lora_math.load_base_model(tiny_model_path(), device="cpu")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], task_type="SEQ_CLS")
    base_adapter = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, param in base_adapter.named_parameters():
            if "lora_B" in name or ("modules_to_save" in name and "score" in name):
                param.add_(0.2 * torch.randn_like(param))
    base_dir = tmp_path / "base_adapter"
    base_adapter.save_pretrained(str(base_dir))
    tokenizer.save_pretrained(str(base_dir))
    assert json.loads((base_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_path()

    reference = PeftModel.from_pretrained(lora_math.load_base_model(tiny_model_path(), device="cpu")[0],
                                          str(base_dir)).eval()
    expected = _scores_float64(reference, tokenizer)
    merged_base, tok = lora_math.load_base_model(str(base_dir), device="cpu")
    assert _close_to(_scores_float64(merged_base, tok), expected)
    assert not torch.allclose(expected, _scores_float64(lora_math.load_base_model(tiny_model_path(), device="cpu")[0],
                                                        tokenizer), atol=1e-3)
    # the forget LoRA then attaches to the merged base, and lambda 0 is that base exactly (the LoRA
    # term is multiplied by a scaling of 0.0: the same float32 operations, plus an exact zero)
    merged_base, tok = lora_math.load_base_model(str(base_dir), device="cpu")
    base_scores = _scores(merged_base, tok)
    peft_model = lora_math.apply_forget_lora(merged_base, str(adapter_dir))
    lora_math.set_lambda(peft_model, 0.0)
    assert torch.equal(_scores(peft_model, tok), base_scores)


def test_dora_and_other_adapters_refused(tmp_path):
    from peft import LoraConfig, get_peft_model
    model, _ = lora_math.load_base_model(tiny_model_path(), device="cpu")
    dora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    dora.save_pretrained(str(tmp_path / "dora"))
    fresh, _ = lora_math.load_base_model(tiny_model_path(), device="cpu")
    with pytest.raises(lora_math.NotNegatable, match="DoRA"):
        lora_math.apply_forget_lora(fresh, str(tmp_path / "dora"))
    with pytest.raises(lora_math.NotNegatable, match="LOHA"):
        lora_math.check_negatable({"peft_type": "LOHA"})
    with pytest.raises(lora_math.NotNegatable, match="pissa"):
        lora_math.check_negatable({"peft_type": "LORA", "init_lora_weights": "pissa"})


def test_foreign_adapter_head_copy_is_ignored(tmp_path, tiny):
    from peft import LoraConfig, get_peft_model
    base, tokenizer = tiny
    model, _ = lora_math.load_base_model(tiny_model_path(), device="cpu")
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=list(lora_math.TARGET_MODULES), task_type="SEQ_CLS")
    foreign = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, param in foreign.named_parameters():
            if "modules_to_save" in name and "score" in name:
                param.add_(1.0)
    foreign.save_pretrained(str(tmp_path / "foreign"))
    fresh, _ = lora_math.load_base_model(tiny_model_path(), device="cpu")
    with pytest.warns(UserWarning, match="head"):
        peft_model = lora_math.apply_forget_lora(fresh, str(tmp_path / "foreign"))
    assert torch.equal(lora_math.reward_parts(peft_model)[1].weight, base.score.weight)
    lora_math.set_lambda(peft_model, 0.0)
    assert torch.equal(_scores(peft_model, tokenizer), _scores(base, tokenizer))


# -----------------------------------------------------------------------------
# training and evaluation


def test_undesired_swaps_chosen_and_rejected(tiny):
    _, tokenizer = tiny
    pair = {"prompt": "Q?", "chosen": "plain answer 10.", "rejected": "## Answer\n\n**11**"}
    desired = train_forget_lora.tokenize_pairs([pair], tokenizer, 64, swap=False)[0]
    undesired = train_forget_lora.tokenize_pairs([pair], tokenizer, 64, swap=True)[0]
    assert undesired == (desired[1], desired[0])
    assert tokenizer.decode(undesired[0]).endswith("**11**<|eot_id|>")


def test_train_forget_lora_learns_the_undesired_direction(tmp_path):
    rows = generate_rows(4, seed=5)
    _, pairs, _ = P.build(rows, "t")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    umask = os.umask(0o022)
    try:
        out = train_forget_lora.main([
            "--model", tiny_model_path(), "--data", str(data), "--pair-mode", "style", "--direction", "undesired",
            "--epochs", "3", "--learning-rate", "1e-2", "--batch-size", "6", "--max-length", "48",
            "--output", str(tmp_path / "lora"), "--log-every", "1", "--warmup-ratio", "0"])
    finally:
        os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}
    keys = lora_math.adapter_state_keys(out)
    assert keys and not any("score" in k for k in keys)
    args = json.loads((out / "training_args.json").read_text())
    assert args["direction"] == "undesired" and args["pair_mode"] == "style" and args["n_pairs"] == 12
    log = json.loads((out / "training_log.json").read_text())
    assert len(log) == 6 and log[-1]["loss"] < log[0]["loss"]
    # the trained adapter (lambda = -1: base + LoRA) prefers the stylish response more than the base
    model, tokenizer = lora_math.load_base_model(tiny_model_path(), device="cpu")
    peft_model = lora_math.apply_forget_lora(model, str(out))
    style = [p for p in pairs if p["mode"] == "style"]
    chosen = [[{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}] for p in style]
    rejected = [[{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["rejected"]}] for p in style]
    import embedding

    def margin(lam):
        lora_math.set_lambda(peft_model, lam)
        s = embedding.score_conversations(peft_model, tokenizer, rejected + chosen, max_length=48)[:, 0]
        return float((s[: len(style)] - s[len(style):]).mean())     # stylish minus plain
    assert margin(-1.0) > margin(0.0) > margin(1.0)


def test_style_matrix_convention():
    # 2 questions; scores[q, style, 0=correct / 1=incorrect]
    table = np.array([[[1.0, 0.0], [2.0, 1.5], [3.0, 2.5]],
                      [[0.0, 1.0], [1.0, 0.5], [2.0, 2.0]]])
    m = evaluate_lambdas.style_matrix(table)
    acc = np.array(m["matrix"])
    # acc[i][j] = P(correct in style i > incorrect in style j); a tie (q1: 2.0 vs 2.0) is wrong
    assert acc[0, 0] == 0.5 and acc[2, 2] == 0.5 and acc[1, 1] == 1.0
    assert acc[0, 2] == 0.0 and acc[2, 0] == 1.0 and acc[0, 1] == 0.0 and acc[1, 2] == 0.0
    assert m["hard"] == pytest.approx(acc[[0, 0, 1], [1, 2, 2]].mean())
    assert m["normal"] == pytest.approx(np.diag(acc).mean())
    assert m["easy"] == pytest.approx(acc[[1, 2, 2], [0, 0, 1]].mean())


def test_evaluate_lambdas_writes_sweep(tmp_path, adapter_dir):
    variants, _, _ = P.build(generate_rows(3, seed=7), "test")
    vpath = tmp_path / "variants.jsonl"
    vpath.write_text("".join(json.dumps(v) + "\n" for v in variants))
    rb2 = tmp_path / "rb2.jsonl"
    rows = [{"id": str(i), "prompt": f"What is {i} plus {i}?", "chosen": [f"{2 * i}"],
             "rejected": [f"{2 * i + 1}", "no idea", f"## {i}"], "num_correct": 1, "num_incorrect": 3,
             "total_completions": 4, "models": ["a"] * 4, "subset": s, "additional_metadata": {}}
            for i, s in enumerate(["Math", "Math", "Focus"])]
    rb2.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sweep.json"
    result = evaluate_lambdas.main(["--base_model", tiny_model_path(), "--lora_path", str(adapter_dir),
                                    "--output_path", str(out), "--lambdas", "0", "1", "-1",
                                    "--variants", str(vpath), "--rb2_dataset", str(rb2), "--device", "cpu"])
    assert [r["lambda"] for r in result["results"]] == [0.0, 1.0, -1.0]
    saved = json.loads(out.read_text())
    assert saved["results"][0]["n_questions"] == 3 and len(saved["results"][0]["matrix"]) == 3
    assert 0.0 <= saved["results"][1]["rb2_overall"] <= 1.0
    assert out.with_suffix(".png").exists() and "| +1.00 |" in out.with_suffix(".md").read_text()


def test_demo_bias_mix_and_claim_check():
    from debias_lora import demo_offline
    _, pairs, _ = P.build(generate_rows(4, seed=2), "t")
    mix = demo_offline.biased_pairs(pairs, label_noise=0.0, seed=0)
    order = {s: i for i, s in enumerate(P.STYLES)}
    for p in mix:
        if p["mode"] == "correctness":
            assert p["chosen_correct"] and not p["rejected_correct"]
        else:   # the stylish response wins, in cross pairs even when it is wrong
            assert order[p["chosen_style"]] > order[p["rejected_style"]]
    rows = [{"lambda": 0.0, "hard": 0.05, "normal": 0.87, "easy": 1.0},
            {"lambda": 1.0, "hard": 0.8, "normal": 0.78, "easy": 0.7},
            {"lambda": 1.5, "hard": 0.2, "normal": 0.88, "easy": 0.7},
            {"lambda": 2.0, "hard": 0.85, "normal": 0.6, "easy": 0.6}]
    claim = demo_offline.check_claim(rows)
    assert claim["claim_lambda"] == 1.0 and claim["hard_rises"] and claim["normal_holds"]   # 0.87 -> 0.78
    assert not demo_offline.check_claim(rows, at_lambda=1.5)["hard_rises"]       # 0.05 -> 0.2
    assert not demo_offline.check_claim(rows, at_lambda=2.0)["normal_holds"]     # 0.87 -> 0.6
    with pytest.raises(SystemExit, match="Add both to --lambdas"):
        demo_offline.check_claim(rows[1:])


@pytest.mark.slow
def test_demo_debiases_a_reward_model_that_is_still_a_reasonable_one(tmp_path):
    """The whole offline demonstration (seed 0): subtracting the style forget LoRA raises the hard
    accuracy while the normal one holds (check_claim's margins, justified by the spread over seeds and
    CPUs in demo_offline), and the biased base stays a reasonable reward model on RewardBench 2 (official
    overall above the 0.25 of random scores; 0.36-0.47 over seeds 0-7: fine-tuning only
    its token embeddings keeps the head's general preferences)."""
    from debias_lora import demo_offline
    summary = demo_offline.main(["--data_dir", str(tmp_path / "data"), "--results_dir", str(tmp_path / "results")])
    assert summary["claim"]["hard_rises"] and summary["claim"]["normal_holds"], summary["claim"]
    base = next(r for r in summary["results"] if r["lambda"] == 0.0)
    assert base["rb2_overall"] > 0.25
    assert (tmp_path / "results" / "demo_offline.md").exists() and (tmp_path / "results" / "biased_base").is_dir()

"""A hostile pass: every input file a script reads, damaged once. Each run must stop with a message that
names the file and the command that remakes it (never a raw traceback), or rebuild what it owns, and it
must not replace good results with bad ones."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
GARBAGE = b"\x00\x17 this is not what the file should hold \xff\n"


def run(folder: str, script: str, *args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / folder / script), *map(str, args)], cwd=cwd or ROOT / folder,
                          env=ENV, capture_output=True, text=True, timeout=300)


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def refused(result, *words):
    """A clean refusal: non-zero exit, no traceback, every word in the message."""
    message = result.stderr + result.stdout
    assert result.returncode != 0, message[-2000:]
    assert "Traceback" not in message, message[-3000:]
    for word in words:
        assert str(word) in message, (word, message[-2000:])
    return message


@pytest.fixture(scope="module")
def prism(tmp_path_factory):
    data = tmp_path_factory.mktemp("prism") / "data"
    ok(run("PRISM", "prepare.py", "--offline", f"--data_dir={data}", "--offline_users=60"))
    ok(run("PRISM", "generate-prism-embeddings.py", "--offline", f"--data_dir={data}"))
    return data


def damaged_copy(data: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / name).write_bytes(content)
    return copy


SCRIPT_ARGS = {   # what each script needs besides its data folder (small and fast)
    "generate-prism-embeddings.py": [],
    "train_basis.py": ["--num_iterations=5", "--fewshot_iterations=5", "--K_list=[0,1]"],
    "vary_fewshot.py": ["--num_iterations=5", "--fewshot_iterations=5", "--K_list=[0]", "--trials=1",
                        "--num_shots=[1]"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name, content, script, remade_by", [
    ("train.parquet", GARBAGE, "train_basis.py", "prepare.py"),
    ("test.parquet", b"", "generate-prism-embeddings.py", "prepare.py"),
    ("prism_split_ids_50.json", b"{not json", "vary_fewshot.py", "prepare.py"),
    ("conversation_embeddings.safetensors", GARBAGE, "train_basis.py", "generate-prism-embeddings.py"),
    ("reward_head.safetensors", b"", "train_basis.py", "generate-prism-embeddings.py"),
])
def test_prism_damaged_inputs_are_named_with_the_command_that_remakes_them(prism, tmp_path, name, content, script,
                                                                             remade_by):
    copy = damaged_copy(prism, tmp_path, name, content)
    results = [] if script.startswith("generate") else [f"--results_dir={tmp_path / 'results'}"]
    refused(run("PRISM", script, "--offline", f"--data_dir={copy}", *results, *SCRIPT_ARGS[script]),
            name, remade_by, f"--data_dir={copy}")
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.json"))


@pytest.mark.slow
def test_prism_raw_files_a_bad_row_is_named_and_a_damaged_one_rebuilt(prism, tmp_path):
    copy = damaged_copy(prism, tmp_path, "survey.jsonl", (prism / "survey.jsonl").read_bytes() + b'{"user_id": 3}\n')
    lines = len((prism / "survey.jsonl").read_text().splitlines())
    refused(run("PRISM", "prepare.py", "--offline", f"--data_dir={copy}", "--offline_users=60"),
            "survey.jsonl", f"line {lines + 1}")                      # valid JSON, not a survey row: named
    for damage in (b"", GARBAGE):                                    # an emptied or damaged built-in file: rebuilt
        (copy / "survey.jsonl").write_bytes(damage)
        ok(run("PRISM", "prepare.py", "--offline", f"--data_dir={copy}", "--offline_users=60"))
        assert (copy / "survey.jsonl").read_bytes() == (prism / "survey.jsonl").read_bytes()


@pytest.mark.slow
def test_rewardbench2_bad_heads_and_rows(tmp_path):
    import torch
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "garbage.safetensors").write_bytes(GARBAGE)
    torch.save({"V": torch.zeros(5, 2)}, tmp_path / "wrong.pt")
    for head, words in (("empty.pt", ["empty.pt", "cannot read"]), ("garbage.safetensors", ["garbage.safetensors"]),
                        ("wrong.pt", ["wrong.pt", "hidden size"])):
        refused(run("PRISM", "eval_rb2.py", "--offline", "--rm_head", tmp_path / head, "--limit", "2",
                    "--results_dir", tmp_path / "results", "--data_dir", tmp_path / "rb2"), *words)  # not the checkout
    rows = tmp_path / "rb2.jsonl"
    rows.write_text('{"id": "0", "prompt": "p", "chosen": ["a"], "rejected": ["b"], "subset": "Math"}\n{"id": 1,\n')
    refused(run("PRISM", "eval_rb2.py", "--offline", "--dataset", rows, "--results_dir", tmp_path / "results"),
            "rb2.jsonl", "line 2")
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_personalllm_inputs_of_another_prepare_and_damaged_rewards(tmp_path):
    data = tmp_path / "data"
    small = ["--offline", f"--data_dir={data}", "--offline_train_prompts=40", "--offline_test_prompts=10"]
    ok(run("PersonalLLM", "prepare.py", *small))
    ok(run("PersonalLLM", "generate-personalllm-embeddings.py", "--offline", f"--data_dir={data}"))
    train = ["--offline", f"--data_dir={data}", f"--results_dir={tmp_path / 'results'}", "--seen_prompt_fraction=0.5",
             "--unseen_prompt_fraction=0.2", "--n_seen_users=20", "--n_unseen_users=10", "--num_iterations=5",
             "--fewshot_iterations=5", "--K_list=[0,1]"]
    ok(run("PersonalLLM", "train_basis.py", *train))
    # other prompts prepared since: the old embeddings are refused (only shapes matched before)
    ok(run("PersonalLLM", "prepare.py", *small, "--seed=1"))
    refused(run("PersonalLLM", "train_basis.py", *train), "made from other inputs",
            "generate-personalllm-embeddings.py", "--overwrite=True")
    (data / "rewards.safetensors").write_bytes(GARBAGE)
    refused(run("PersonalLLM", "train_basis.py", *train), "rewards.safetensors", "prepare.py")


@pytest.mark.slow
def test_tldr_missing_prepared_data_names_prepare_with_the_overrides(tmp_path):
    refused(run("RedditTLDR", "train_basis.py", "--offline", f"--data_dir={tmp_path / 'nothing'}"),
            "comparisons_train.parquet", f"python prepare.py --offline --data_dir={tmp_path / 'nothing'}")


@pytest.mark.slow
def test_debias_bad_pairs_and_empty_variants_write_nothing(tmp_path):
    ok(run("debias_lora", "build_pairs.py", "--offline", "--offline_questions", "12", "6", "--data_dir", tmp_path))
    pairs = tmp_path / "pairs_train.jsonl"
    pairs.write_text(pairs.read_text() + "{broken\n")
    lines = len(pairs.read_text().splitlines())
    refused(run("debias_lora", "train_forget_lora.py", "--offline", "--model", ROOT / "offline", "--data", pairs,
                "--output", tmp_path / "lora"), "pairs_train.jsonl", f"line {lines}")
    (tmp_path / "variants_test.jsonl").write_text("")
    out = tmp_path / "sweep.json"
    refused(run("debias_lora", "evaluate_lambdas.py", "--offline", "--variants", tmp_path / "variants_test.jsonl",
                "--output_path", out, "--skip_rb2", "--base_model", ROOT / "offline", "--lora_path", tmp_path),
            "variants_test.jsonl", "nothing was written")
    assert not out.exists() and not (tmp_path / "lora").exists()


def test_every_json_lines_reader_names_the_bad_line(tmp_path):
    """harness.read_jsonl, which every JSON-lines input goes through: blank lines skipped, rows numbered by
    their line; a line that is not JSON, not UTF-8 or not an object stops naming the file and the line."""
    sys.path.insert(0, str(ROOT))
    import harness
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"b": "é"}\n')
    assert list(harness.read_jsonl(path, "hint")) == [(1, {"a": 1}), (3, {"b": "é"})]
    for content, why in ((b'{"a": 1}\n{"a": \n', "line 2, is not valid JSON"),
                         (b'{"a": 1}\n\n' + GARBAGE, "line 3, is not valid JSON"),
                         (b'{"a": 1}\n[1, 2]\n', "line 2, is not a JSON object")):
        path.write_bytes(content)
        with pytest.raises(SystemExit, match=f"{path}, {why}.*; run this"):
            list(harness.read_jsonl(path, "run this"))
    # the GSM8K source of build_pairs.py, which had no check (a traceback)
    path.write_bytes(b'{"question": "q", "answer": "a #### 1"}\n{"question": \n')
    refused(run("debias_lora", "build_pairs.py", "--source", path, "--splits", "train", "--data_dir", tmp_path / "out"),
            str(path), "line 2", "GSM8K")

"""The built-in offline default: a tiny reward model and generators of every dataset's raw format.

The generated world measures; it never argues. Nothing in it exists to make a method or a setting win:
every choice below copies a measured property of a real backbone or dataset (with its source) or is an
assumption (said so), and whatever the pipelines then find, they report with its interval. The dial
`personal_scale` of every offline prepare.py sets the strength of the personal part; 0 is the null world.

The backbone (offline/tiny_model.py)
- A seeded 2-layer LlamaForSequenceClassification, hidden size 128, with a Llama-3-style tokenizer and
  chat template: the class, head and template of Skywork-Reward-Llama-3.1-8B-v0.2, at a size that runs
  every offline pipeline and the tests on 2 CPU cores (the size is a practical choice).
- Its final-norm gains copy a measured property of a real backbone: the per-channel spread of embedding
  differences of SmolLM2-135M-Instruct (one channel ~16x the median, a handful ~3-4x, the 90th percentile
  1.4x; offline/experiments/backbone_profile.py measures both models).
- Its head is its seeded random initialisation: where a trained reward head points relative to the loud
  channels is not known here (an assumption).

The population (offline/planted.py), shared by PRISM, Reddit TLDR, PersonalLLM and RewardBench 2
- Every user's reward = the general direction (the backbone's head) + a personal part in the span of
  N_PERSONAL = 3 directions: the method's premise, low-rank personal deviations from a general reward
  (an assumption; personal_scale = 0 removes the personal part).
- Personal directions drawn at random in R^d (isotropic), orthogonal to the head: an assumption (no
  preferred subspace; where real users' tastes lie in an embedding is not known here).
- Balance: over pairs of responses to one prompt, the general margin has std GENERAL_MARGIN_STD = 2.5 and a
  pure user's personal margin PERSONAL_MARGIN_STD = 3.0 (x personal_scale): an assumption.
- Users' weights Dirichlet(0.1): the concentration PersonalLLM's own simulation gives its users (the
  original's `w ~ Dirichlet(0.1 * ones(10))`).
- Labels are Bradley-Terry draws from the planted rewards (PRISM: a softmax over a turn's candidates),
  so the Bayes-optimal accuracy is known and below 1: the model every LoRe analysis assumes.

The datasets
- PRISM (offline/prism.py), TLDR (offline/tldr.py), PersonalLLM (offline/personalllm.py), RewardBench 2
  (offline/rewardbench2.py) and GSM8K (offline/gsm8k.py) are written in their published raw formats with
  every layout case the parsers must handle (users without conversations, turns without a choice, rows
  without a post, ties of scores, ...); their sizes are scaled down to run on a CPU (a practical choice,
  each module gives the real size beside its own).
- PersonalLLM's 10 reward models = the head + their own deviation in the span of the personal directions
  with random signs (real reward models disagree in both directions: an assumption), each with its own
  scale and offset (raw scores of real reward models differ in both) and score noise std 0.05 (an
  assumption).
- RewardBench 2's correct answers are the head's top candidates with per-subset noise set so the head's
  accuracy follows Skywork-Reward-Llama-3.1-8B-v0.2's published profile (Factuality 69.7, Precise IF 40.6,
  Math 60.1, Safety 94.2, Focus 94.1, Ties 71.7).
- GSM8K questions use three-digit multiples of 10 so that an arithmetic slip shows as a final-digit token
  the tiny tokenizer writes on its own: the stand-in for a real reward model's arithmetic check (the
  debias demo's world, a demonstration of the subtraction's mechanism, not a measurement of LoRe).

Every generator records a version that includes the tiny model's, so data made by an older version are
rebuilt, never mixed.
"""
from __future__ import annotations

import json
from pathlib import Path

from offline.tiny_model import tiny_model_path  # noqa: F401


def script_model(settings) -> tuple[str, str]:
    """(model, dtype) of a script with the settings `model_name` and `dtype`: as set, or with `offline`
    the built-in tiny model in float32 (a model or dtype given on the command line still wins)."""
    model_name, dtype = settings["model_name"], settings["dtype"]
    if settings.get("offline"):
        model_name = model_name if "model_name" in settings.overridden else tiny_model_path()
        dtype = dtype if "dtype" in settings.overridden else "float32"
    return str(model_name), dtype


STAMP = "generated.json"   # written last into a generated folder: which generator, version and settings


def ensure_generated(folder, generator: str, version, settings: dict, files, generate) -> bool:
    """Make `folder` hold what `generate()` writes for these settings, generating it only when needed.

    The stamp `folder/generated.json` ({generator, version, settings}) is written after `generate()`
    returns; the folder is reused when the stamp matches and every one of `files` (paths relative to
    `folder`, or absolute; the ground truth too: train_basis reads it) is there, not empty and readable, and generated again otherwise (an older generator
    version, other settings, an interrupted or damaged generation: never a mix). Returns True when it
    generated.
    """
    folder = Path(folder)
    stamp = {"generator": generator, "version": version, "settings": settings}
    try:
        current = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        current = None
    if current == stamp and all(readable(folder / f) for f in files):
        print(f"offline {generator}: reusing the generated files in {folder}")
        return False
    print(f"offline {generator}: generating into {folder}" + (" (a file was missing, empty or damaged)"
                                                                if current == stamp else ""))
    (folder / STAMP).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    generate()
    import harness
    harness.write_json_atomic(folder / STAMP, stamp)
    return True


def readable(path: Path) -> bool:
    """A generated file is there, not empty and parses (parquet metadata, safetensors header, JSON lines)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet
            pyarrow.parquet.read_metadata(path)
        elif path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt"):
                pass
        elif path.suffix in (".json", ".jsonl"):
            with open(path) as lines:
                for line in lines if path.suffix == ".jsonl" else [lines.read()]:
                    if line.strip():
                        json.loads(line)
    except Exception:       # any parse error: the file is damaged, so the folder is generated again
        return False
    return True

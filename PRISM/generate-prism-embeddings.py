"""PRISM: embed the chosen and rejected conversations of train and test with the reward model, in one run.

    cd PRISM && python generate-prism-embeddings.py              # Skywork-Reward-Llama-3.1-8B-v0.2, bf16, eager
    cd PRISM && python generate-prism-embeddings.py --offline    # the built-in tiny model, float32
    cd PRISM && accelerate launch generate-prism-embeddings.py   # data parallel over the GPUs

Reads: train.parquet, test.parquet (prepare.py). Each comparison has two conversations, prompt +
chosen response and prompt + rejected response; every distinct conversation is embedded once (the
chosen response of a turn is shared by all its comparisons) through the shared engine
(embedding.embed_to_file: batched by length, sharded, resumable, accelerate-aware).
Writes (data folder): conversation_embeddings.safetensors ("embeddings" [U, d] float32, one row per
distinct conversation), comparison_index.safetensors ({train,test}_{chosen,rejected} [N] int64 rows into
the embeddings, with the sha256 of the parquet files they index in the metadata) and
reward_head.safetensors (the model's score.weight.T [d, 1], V_ref of train_basis.py). No pickle.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402
import prism_data  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False             # True: the built-in tiny model and the generated data, no network
model_name = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
data_dir = "data/prism"
dtype = "bfloat16"          # offline default: float32
attn_implementation = "eager"  # as the original for PRISM; keep it the same for every PRISM embedding
batch_size = 16             # rows per forward pass (at most)
max_tokens = 32768          # padded tokens per forward pass (at most); None: rows only
max_length = None           # tokens per conversation, oldest dropped (keeps the BOS and the end); None: all
shard_size = 2048           # conversations per resumable shard
# -----------------------------------------------------------------------------
settings = utils.configure(globals())
data_path, _ = utils.script_dirs(__file__, data_dir, "results", offline)
if offline:
    from offline import tiny_model_path
    if "model_name" not in settings.overridden:
        model_name = tiny_model_path()
    if "dtype" not in settings.overridden:
        dtype = "float32"

from safetensors.torch import save_file  # noqa: E402

import embedding  # noqa: E402

rows = prism_data.load_prepared(data_path)
conversations, index = prism_data.embedding_inputs(rows)  # distinct conversations: train then test
n_comparisons = sum(len(rows[s]) for s in prism_data.SPLITS)
print(f"{n_comparisons} comparisons ({', '.join(f'{s} {len(rows[s])}' for s in prism_data.SPLITS)}): "
      f"{len(conversations)} distinct conversations to embed (of {2 * n_comparisons} sides) with {model_name} "
      f"({dtype}, attention {attn_implementation})")

# embed_to_file writes the reward head only when absent: set aside one exported from another model
# (restored if this run fails, removed once the new head is written)
from accelerate import PartialState  # noqa: E402

is_main = PartialState().is_main_process
head_path = data_path / embedding.REWARD_HEAD_FILE
stale_head = None
if is_main and head_path.exists():
    from safetensors import safe_open
    with safe_open(str(head_path), "pt") as f:
        if (f.metadata() or {}).get("model") != str(model_name):
            stale_head = head_path.with_name(head_path.name + ".stale")
            head_path.replace(stale_head)
try:
    out = embedding.embed_to_file(model_name, conversations, data_path / prism_data.EMBEDDINGS_FILE, dtype=dtype,
                                  attn_implementation=attn_implementation, batch_size=batch_size,
                                  max_tokens=max_tokens, max_length=max_length, shard_size=shard_size)
except BaseException as e:
    if stale_head is not None and not head_path.exists():
        stale_head.replace(head_path)
    if isinstance(e, embedding.ModelNotAvailable):
        raise SystemExit(str(e))
    raise
if stale_head is not None:
    stale_head.unlink(missing_ok=True)

if is_main:
    metadata = {f"{s}_sha256": utils.file_sha256(data_path / prism_data.COMPARISONS_FILE.format(split=s))
                for s in prism_data.SPLITS}
    metadata.update(model=str(model_name), dtype=dtype, attn_implementation=str(attn_implementation),
                    embeddings=prism_data.EMBEDDINGS_FILE,
                    conversations_sha256=embedding.conversations_sha256(conversations))
    tmp = data_path / f".{prism_data.INDEX_FILE}.tmp"
    save_file(index, str(tmp), metadata=metadata)
    tmp.replace(data_path / prism_data.INDEX_FILE)
    head = embedding.load_reward_head(data_path / embedding.REWARD_HEAD_FILE)
    print(f"wrote {out} ({len(conversations)} x {head.shape[0]}), {prism_data.INDEX_FILE} and "
          f"{embedding.REWARD_HEAD_FILE} ({tuple(head.shape)})")

"""Reddit TLDR: embed every (post, summary) conversation of BOTH splits in one run, and export the reward head.

    cd RedditTLDR && python generate-tldr-embeddings.py              # Skywork-Reward-Llama-3.1-8B-v0.2
    cd RedditTLDR && python generate-tldr-embeddings.py --offline    # the built-in tiny model
    cd RedditTLDR && accelerate launch generate-tldr-embeddings.py   # data parallel over the GPUs

Reads: comparisons_{train,validation}.parquet (from prepare.py).
Writes (data folder): conversation_embeddings.safetensors ("embeddings" [U, d] float32, one row per
distinct (post, summary) conversation, user = post, assistant = summary; sharded and resumable
through the shared engine), reward_head.safetensors (score.weight.T [d, 1]) and
comparison_index.safetensors (per split "{split}_winning" / "{split}_losing" [N] int64 rows into the
embeddings, in the comparisons' row order, with the sha256 of the comparison files they index).
A comparison's feature is embeddings[winning] - embeddings[losing]. A summary compared several times
(by several workers, or against several others) is embedded once.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402
import tldr_data  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False              # True: the built-in tiny model and the generated data
model_name = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
data_dir = "data/tldr"
dtype = "bfloat16"           # offline default: float32
attn_implementation = ""     # "" = the library default (sdpa); or "eager", "flash_attention_2"
batch_size = 32              # rows per forward pass
max_tokens = 0               # 0 = no cap; else rows x longest length per batch (e.g. 32768 on 80 GB)
max_length = 0               # 0 = no truncation; else keep the last max_length tokens
device = ""                  # "" = cuda if available, else cpu
# -----------------------------------------------------------------------------
settings = utils.configure(globals())
data_path, _ = utils.script_dirs(__file__, data_dir, "results", offline)
if offline:
    from offline import tiny_model_path
    model_name = model_name if "model_name" in settings.overridden else tiny_model_path()
    dtype = dtype if "dtype" in settings.overridden else "float32"

import embedding  # noqa: E402

frames = tldr_data.load_comparisons(data_path)

conversations, index = tldr_data.embedding_inputs(frames)  # distinct, first seen: train, then validation
for split in tldr_data.HF_SPLITS:
    print(f"{split}: {len(frames[split])} comparisons")
print(f"{len(conversations)} distinct (post, summary) conversations to embed with {model_name}")

out_path = data_path / tldr_data.EMBEDDINGS_FILE
head_path = data_path / embedding.REWARD_HEAD_FILE
embedding.embed_to_file(model_name, conversations, out_path, dtype=dtype,
                        attn_implementation=attn_implementation or None, batch_size=batch_size,
                        max_tokens=max_tokens or None, max_length=max_length or None, device=device or None)

from accelerate import PartialState  # noqa: E402
if PartialState().is_main_process:
    from safetensors.torch import save_file
    metadata = {"model": str(model_name), "embeddings": out_path.name, "conversations": str(len(conversations))}
    for split in tldr_data.HF_SPLITS:
        metadata[f"{split}_sha256"] = utils.file_sha256(data_path / tldr_data.COMPARISONS_FILE.format(split=split))
    tmp = data_path / f".{tldr_data.INDEX_FILE}.tmp"
    save_file(index, str(tmp), metadata=metadata)
    tmp.replace(data_path / tldr_data.INDEX_FILE)
    table = embedding.load_embeddings(out_path)
    head = embedding.load_reward_head(head_path)
    print(f"wrote {out_path} {tuple(table.shape)}, {head_path.name} {tuple(head.shape)} and "
          f"{tldr_data.INDEX_FILE}")

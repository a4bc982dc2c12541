"""Reddit TLDR: embed every (post, summary) conversation of BOTH splits in one run, and export the reward head.

    cd RedditTLDR && python generate-tldr-embeddings.py              # Skywork-Reward-Llama-3.1-8B-v0.2
    cd RedditTLDR && python generate-tldr-embeddings.py --offline    # the built-in tiny model
    cd RedditTLDR && accelerate launch generate-tldr-embeddings.py   # data parallel over the GPUs

Reads: comparisons_{train,validation}.parquet (prepare.py).
Writes (data folder): conversation_embeddings.safetensors ("embeddings" [U, d] float32, one row per
distinct (post, summary) conversation, user = post, assistant = summary, train then validation in
first-seen order, with the hash of those conversations; sharded and resumable) and
reward_head.safetensors (score.weight.T [d, 1]). A summary compared several times (by several workers,
or against several others) is embedded once. A run with other settings does not replace existing
embeddings unless --overwrite=True.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedding  # noqa: E402
import harness  # noqa: E402
import tldr_data  # noqa: E402
from offline import script_model  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False              # True: the built-in tiny model and the generated data
model_name = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
data_dir = "data/tldr"
dtype = "bfloat16"           # bfloat16 | float16 | float32 (offline: float32 unless given)
attn_implementation: str | None = None  # None: the library default (sdpa); or "eager", "flash_attention_2"
batch_size = 32              # rows per forward pass
max_tokens: int | None = None  # padded tokens per forward pass (e.g. 32768 on 80 GB); None: rows only
max_length: int | None = None  # tokens per conversation, oldest dropped (BOS and the end kept); None: all
shard_size = 2048            # conversations per resumable shard
device: str | None = None    # None: cuda if available, else cpu
overwrite = False            # True: replace embeddings made with other settings or from other data
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, _ = harness.script_dirs(__file__, settings)

frames = tldr_data.load_comparisons(data_path, harness.command_line("prepare.py", settings))
conversations, _ = tldr_data.embedding_inputs(frames)
print(", ".join(f"{split}: {len(frame)} comparisons" for split, frame in frames.items()))
embedding.embed_dataset("generate-tldr-embeddings.py", settings, data_path, conversations,
                        *script_model(settings))

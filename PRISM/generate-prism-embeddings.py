"""PRISM: embed the chosen and rejected conversations of train and test with the reward model, in one run.

    cd PRISM && python generate-prism-embeddings.py              # Skywork-Reward-Llama-3.1-8B-v0.2, bf16, eager
    cd PRISM && python generate-prism-embeddings.py --offline    # the built-in tiny model, float32
    cd PRISM && accelerate launch generate-prism-embeddings.py   # data parallel over the GPUs

Reads: train.parquet, test.parquet (prepare.py). Each comparison has two conversations, prompt +
chosen response and prompt + rejected response; every distinct conversation is embedded once (the
chosen response of a turn is shared by all its comparisons), batched by length, each shared prompt run
once, in resumable shards (a killed run, started again, resumes).
Writes (data folder): conversation_embeddings.safetensors ("embeddings" [U, d] float32, one row per
distinct conversation, train then test in first-seen order, with the hash of those conversations) and
reward_head.safetensors (the model's score.weight.T [d, 1], V_ref of train_basis.py). No pickle. A run
with other settings does not replace existing embeddings unless --overwrite=True.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedding  # noqa: E402
import harness  # noqa: E402
import prism_data  # noqa: E402
from offline import script_model  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False             # True: the built-in tiny model and the generated data, no network
model_name = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
data_dir = "data/prism"
dtype = "bfloat16"          # bfloat16 | float16 | float32 (offline: float32 unless given)
attn_implementation: str | None = "eager"  # as the original for PRISM; None: the library default (sdpa)
batch_size = 16             # rows per forward pass (at most)
max_tokens: int | None = 32768  # padded tokens per forward pass (at most); None: rows only
max_length: int | None = None   # tokens per conversation, oldest dropped (BOS and the end kept); None: all
shard_size = 2048           # conversations per resumable shard
device: str | None = None   # None: cuda if available, else cpu
overwrite = False           # True: replace embeddings made with other settings or from other data
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, _ = harness.script_dirs(__file__, settings)

rows = prism_data.load_prepared(data_path, harness.command_line("prepare.py", settings))
conversations, _ = prism_data.embedding_inputs(rows)
print(f"{sum(len(r) for r in rows.values())} comparisons ({', '.join(f'{s} {len(rows[s])}' for s in rows)})")
embedding.embed_dataset("generate-prism-embeddings.py", settings, data_path, conversations,
                        *script_model(settings))

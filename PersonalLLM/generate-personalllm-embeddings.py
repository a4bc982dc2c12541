"""Embed every (prompt, response_j) of PersonalLLM with the reward model: one table of train then test rows.

    cd PersonalLLM && python generate-personalllm-embeddings.py             # Skywork (after prepare.py)
    cd PersonalLLM && python generate-personalllm-embeddings.py --offline   # the built-in tiny model
    cd PersonalLLM && accelerate launch generate-personalllm-embeddings.py  # data parallel over the GPUs

Reads: <data>/train.parquet, <data>/test.parquet (prepare.py).
Writes, inside <data> (data/personalllm or data/personalllm-offline; the original wrote to the
filesystem root by a path-join slip):
  conversation_embeddings.safetensors   "embeddings" [(P_train + P_test) * 8, d] float32: row p * 8 + j is
      the conversation [user: prompt p, assistant: response j + 1] of the train split, then the test
      split's rows likewise (dataset order), with the hash of those conversations;
  reward_head.safetensors               the backbone's head score.weight.T [d, 1].
The engine writes shards and resumes an interrupted run; under `accelerate launch` each process embeds
its own shards. A run with other settings does not replace existing embeddings unless --overwrite=True.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedding  # noqa: E402
import harness  # noqa: E402
import personalllm_simulation as sim  # noqa: E402
from offline import script_model  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False                  # True: the built-in tiny model and the generated data
model_name = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
data_dir = "data/personalllm"
dtype = "bfloat16"               # bfloat16 | float16 | float32 (offline: float32 unless given)
attn_implementation: str | None = None  # None: the library default (sdpa)
batch_size = 32                  # rows per forward pass
max_tokens: int | None = None    # padded tokens per forward pass (e.g. 32768 on 80 GB); None: rows only
max_length: int | None = 4096    # tokens per conversation; longer ones lose their oldest tokens (BOS kept)
shard_size = 2048                # conversations per resumable shard
device: str | None = None        # None: cuda if available, else cpu
overwrite = False                # True: replace embeddings made with other settings or from other data
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, _ = harness.script_dirs(__file__, settings)

conversations, offsets = sim.embedding_inputs(data_path, harness.command_line("prepare.py", settings))
print(f"train: {offsets['test'] // 8} prompts, test: {(len(conversations) - offsets['test']) // 8} prompts, "
      f"8 responses each")
embedding.embed_dataset("generate-personalllm-embeddings.py", settings, data_path, conversations,
                        *script_model(settings))

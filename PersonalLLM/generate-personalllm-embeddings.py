"""Embed every (prompt, response_j) of PersonalLLM with the reward model: one table [P * 8, d] per split.

    cd PersonalLLM && python generate-personalllm-embeddings.py             # Skywork (after prepare.py)
    cd PersonalLLM && python generate-personalllm-embeddings.py --offline   # the built-in tiny model

Reads: <data>/train.parquet, <data>/test.parquet (from prepare.py).
Writes, inside <data> (data/personalllm or data/personalllm-offline; the original wrote to the
filesystem root by a path-join slip):
  train_embeddings.safetensors, test_embeddings.safetensors   "embeddings" [P * 8, d] float32, row
      p * 8 + j = the conversation [user: prompt_p, assistant: response_{j+1} of p] (dataset order);
  reward_head.safetensors                                     the backbone's head score.weight.T [d, 1].
The engine (embedding.embed_to_file) writes shards and resumes an interrupted run; under
`accelerate launch` each process embeds its own shards.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False                  # True: the built-in tiny model and the generated data
model_name = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
dtype = "bfloat16"               # the 8B backbone in bf16 on a GPU (offline: float32 unless given)
attn_implementation = None       # None: the library default (sdpa)
data_dir = "data/personalllm"
results_dir = "results"          # unused here; kept so every script resolves the same folders
batch_size = 32                  # rows per forward pass
max_tokens = None                # optional cap on rows x longest length per batch (e.g. 32768 on 80 GB)
max_length = 4096                # tokens per conversation; longer ones lose their oldest tokens (BOS kept)
device = None                    # None: cuda if available, else cpu
# -----------------------------------------------------------------------------
settings = utils.configure(globals())
data_path, _ = utils.script_dirs(__file__, data_dir, results_dir, offline)
if offline and "model_name" not in settings.overridden:
    from offline.tiny_model import tiny_model_path
    model_name = str(tiny_model_path())
if offline and "dtype" not in settings.overridden:
    dtype = "float32"


def main() -> None:
    from embedding import embed_to_file
    from personalllm_simulation import embedding_inputs

    for split in ("train", "test"):
        convs = embedding_inputs(data_path, split)
        out = data_path / f"{split}_embeddings.safetensors"
        print(f"{split}: embedding {len(convs)} (prompt, response) conversations with {model_name}")
        embed_to_file(model_name, convs, out, dtype=dtype, attn_implementation=attn_implementation,
                      batch_size=batch_size, max_tokens=max_tokens, max_length=max_length, device=device)
        print(f"  wrote {out}")
    print(f"reward head: {data_path / 'reward_head.safetensors'}")


if __name__ == "__main__":
    main()

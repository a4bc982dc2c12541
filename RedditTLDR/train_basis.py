"""Reddit TLDR: learn a LoRe basis on seen workers and personalise it for unseen workers (accuracy vs rank).

    cd RedditTLDR && python train_basis.py              # real data (after prepare.py and the embeddings)
    cd RedditTLDR && python train_basis.py --offline    # built-in tiny model and generated data

Reads (data folder): comparisons_{train,validation}.parquet (prepare.py), conversation_embeddings,
comparison_index and reward_head .safetensors (generate-tldr-embeddings.py).
Split (SPEC 2.2): per split, workers sorted by count and the `drop_smallest` smallest dropped; the
workers present in both splits, sorted by id, shuffled with random seed `seed` and halved into seen and
unseen (workers lacking a side are skipped and counted). Seen worker: min(len, seen_train_size) random
train comparisons, test = all its validation comparisons; unseen worker: min(len, unseen_train_size)
random train comparisons as few-shot data, test = all its validation comparisons. Then utils.run over
K_list x alpha_list (K = 0: the backbone's own reward head).
Writes (results folder): train_basis.json (settings, seed, split counts and worker ids, per-K means
and raw stds), train_basis.md (table), accuracy_vs_rank_alpha_{alpha}.png, and the fitted bases
TLDR_V_lore_K_{K}_alpha_{alpha}.pt / TLDR_W_lore_seen_{K}_{alpha}.pt for K >= 1.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402
import tldr_data  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False               # True: built-in tiny model and generated data, no network
data_dir = "data/tldr"
results_dir = "results"
seed = 0                      # worker split and comparison draws (random.Random), and the fits
K_list = [0, 1, 2, 3, 4, 5, 6]
alpha_list = [0]
drop_smallest = 2             # workers dropped per split (the smallest by count)
seen_train_size = 150         # train comparisons per seen worker (at most)
unseen_train_size = 50        # few-shot comparisons per unseen worker (at most)
num_iterations = 1000         # joint fit (LoRe)
learning_rate = 0.5
fewshot_iterations = 500      # unseen users' weights (PersonalizeBatch)
fewshot_learning_rate = 0.1
device = ""                   # "" = cuda if available, else cpu
# -----------------------------------------------------------------------------
settings = utils.configure(globals())
data_path, results_path = utils.script_dirs(__file__, data_dir, results_dir, offline)

table, pairs, reward_head, meta = tldr_data.load_embedded(data_path)
split = tldr_data.load_split(data_path, seed=seed, drop_smallest=drop_smallest,
                             seen_train_size=seen_train_size, unseen_train_size=unseen_train_size)

features = {}
for group, hf_split in (("seen_train", "train"), ("seen_test", "validation"), ("unseen_train", "train"),
                        ("unseen_test", "validation")):
    features[group] = tldr_data.features_by_user(table, *pairs[hf_split], split[group])
N, N_unseen = len(split["seen"]), len(split["unseen"])
results = utils.run(K_list, alpha_list, reward_head, features["seen_train"], features["seen_test"],
                    features["unseen_train"], features["unseen_test"], N, N_unseen,
                    device or utils.get_device(), num_iterations=num_iterations, learning_rate=learning_rate,
                    fewshot_iterations=fewshot_iterations, fewshot_learning_rate=fewshot_learning_rate, seed=seed,
                    results_dir=results_path, dataset_name="TLDR")

extra = {"split": {k: split["counts"][k] for k in split["counts"]}, "seen_workers": split["seen"],
         "unseen_workers": split["unseen"], "embedding_model": meta.get("model")}
truth = data_path / "raw" / "ground_truth.json"
if offline and truth.exists():  # the planted population's Bayes-optimal accuracy on the same test sets
    bayes = json.loads(truth.read_text())["bayes_accuracy_by_worker"]["validation"]
    extra["bayes_optimal"] = {"seen_test": sum(bayes[w] for w in split["seen"]) / N,
                              "unseen_test": sum(bayes[w] for w in split["unseen"]) / N_unseen}
files = utils.save_results(results_path, "train_basis", settings, K_list, alpha_list,
                           results, plot_name="accuracy_vs_rank_alpha_{alpha}.png",
                           title="Reddit TLDR: LoRe accuracy vs rank", extra=extra)
print(files["markdown"].read_text())
if "bayes_optimal" in extra:
    print(f"planted Bayes-optimal accuracy: seen test {100 * extra['bayes_optimal']['seen_test']:.1f}%, "
          f"unseen test {100 * extra['bayes_optimal']['unseen_test']:.1f}%")
print(f"wrote {files['json']}, {files['markdown']}, {', '.join(str(p) for p in files['plots'])}")

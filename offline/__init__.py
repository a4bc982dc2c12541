"""The built-in offline default: a tiny reward model and generators of every dataset's raw format.

The generated world is built on the method's premise (offline/planted.py has the details): a good
general reward model exists, the tiny backbone's own head, and every planted user's reward is that
head plus a low-rank personal part (a Dirichlet mixture of a few personal directions, with a
documented balance between the two). PRISM, Reddit TLDR and PersonalLLM labels are drawn from it; the
offline RewardBench 2 rows are decided by the head with noise (about the real Skywork head's profile).
The tiny model (offline/tiny_model.py) makes a few embedding directions ~100x louder than the head's,
which is what lets PRISM's real default, alpha = 1e4, keep a basis next to the head and still improve
on it, as on the real data. Every generator records a version that includes the tiny model's, so data
made by an older version are rebuilt, never mixed.
"""
from offline.tiny_model import tiny_model_path  # noqa: F401

"""The built-in offline default: a tiny reward model and generators of every dataset's raw format."""
from offline.tiny_model import tiny_model_path  # noqa: F401

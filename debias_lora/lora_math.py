"""Forget-LoRA arithmetic: load a base reward model (merging it first when it is itself a LoRA adapter),
attach a forget LoRA, and subtract it: debiased = base - lambda * LoRA.

Two equivalent ways to subtract:
- scaled adapter: every LoRA layer's scaling set to -lambda * s, with s = alpha / r (alpha / sqrt(r)
  for rsLoRA) the adapter's own scaling; the forward is W x - lambda * s * B A x. Switching lambda is
  free, so one loaded model serves a whole lambda sweep.
- merged: W <- W - lambda * s * B @ A in every targeted layer, then a plain model saved with
  `save_pretrained` (no PEFT needed to use it).

Only plain LoRA on linear layers can be negated this way. DoRA (its magnitude vector rescales the
whole weight), other variants, LoRA biases, other adapter types (LoHa, LoKr, IA3, AdaLoRA, prompt
tuning) and LoRA on embeddings are refused with a clear message. The reward head is never part of the
forget LoRA: a trained copy of `score` (what PEFT's sequence-classification task type adds through
modules_to_save) would not be negated, so adapters are created without it and a saved copy in a
foreign adapter is ignored (with a warning) in favour of the base head.
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedding  # noqa: E402
import harness  # noqa: E402
import utils  # noqa: E402

LORA_R, LORA_ALPHA, LORA_DROPOUT = 8, 16, 0.05
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_NAME = "default"
HEAD_NAMES = ("score", "classifier")


class NotNegatable(ValueError):
    """An adapter that cannot be subtracted as -lambda * LoRA."""


# -----------------------------------------------------------------------------
# paths and adapter configs


def split_path(name: str) -> tuple[str, str | None]:
    """(repo or folder, subfolder) of a model or adapter name.

    A local path is used as it is; a hub name with more than two parts is `org/repo/subfolder...`
    (as in the seed: "xxccho/margin_reg_baseline/checkpoint-2460")."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser()), None
    parts = name.strip("/").split("/")
    if len(parts) > 2:
        return "/".join(parts[:2]), "/".join(parts[2:])
    return name, None


def unavailable(name: str, cause: BaseException | None = None) -> SystemExit:
    """The error for a model or adapter that is neither local nor reachable on the hub."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "the script"
    return harness.hub_unreachable(f"{name!r} (neither a local folder nor a reachable hub id; give a local folder "
                                 f"as --model / --base_model / --lora_path)", f"python {script} --offline", cause)


def adapter_config(name: str) -> dict | None:
    """The adapter_config.json of `name` (local folder or hub repo[/subfolder]); None when `name` is
    a plain model. A hub name that cannot be reached fails at once, naming the --offline switch."""
    repo, subfolder = split_path(name)
    if Path(repo).is_dir():
        path = Path(repo) / "adapter_config.json"
        return json.loads(path.read_text()) if path.exists() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    try:  # the local hub cache first (works offline)
        return json.loads(Path(hf_hub_download(repo, "adapter_config.json", subfolder=subfolder,
                                               local_files_only=True)).read_text())
    except LocalEntryNotFoundError:   # (a subclass of EntryNotFoundError: not cached, not "absent")
        pass
    except EntryNotFoundError:
        return None
    if not harness.hub_reachable():
        raise unavailable(name)
    try:
        return json.loads(Path(hf_hub_download(repo, "adapter_config.json", subfolder=subfolder)).read_text())
    except RepositoryNotFoundError as error:
        raise unavailable(name, error) from error
    except EntryNotFoundError:        # the repo exists but has no adapter config: a plain model
        return None
    except OSError as error:
        raise unavailable(name, error) from error


def check_negatable(config: dict, where: str = "the adapter") -> None:
    """Refuse an adapter config that is not plain LoRA (raise NotNegatable with what to do)."""
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise NotNegatable(
            f"error: {where} is a {peft_type or 'unknown'} adapter; only plain LoRA adapters can be "
            f"subtracted as W - lambda * (alpha / r) * B @ A. Train a LoRA forget adapter instead.")
    if config.get("use_dora"):
        raise NotNegatable(
            f"error: {where} is a DoRA adapter (use_dora=true): its magnitude vector rescales the whole "
            f"weight, so negating the scaling does not give base - lambda * LoRA. Retrain it as plain "
            f"LoRA (use_dora=false).")
    for key in ("use_alora", "alora_invocation_tokens"):
        if config.get(key):
            raise NotNegatable(f"error: {where} is an activated LoRA ({key}); only plain LoRA can be negated")
    if config.get("lora_bias"):
        raise NotNegatable(f"error: {where} trains LoRA biases (lora_bias=true); only plain LoRA (B @ A) "
                           f"can be negated this way")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().split("_")[0] in ("olora", "pissa", "corda", "loftq"):
        # these initialisations move the base weights when the adapter is created: the adapter's
        # delta is not B @ A alone
        raise NotNegatable(f"error: {where} was initialised with {init!r}, which changes the base "
                           f"weights; only a LoRA initialised with B = 0 can be negated")


def _head_copies(config: dict) -> list[str]:
    return [m for m in (config.get("modules_to_save") or []) if m.split(".")[-1] in HEAD_NAMES]


# -----------------------------------------------------------------------------
# loading


def load_tokenizer(name: str, fallback: str | None = None):
    """The tokenizer of `name` (folder or hub repo[/subfolder]); `fallback`'s when `name` has none."""
    from transformers import AutoTokenizer
    repo, subfolder = split_path(name)
    try:
        if subfolder is None:
            return embedding.load_tokenizer(repo)
        tokenizer = AutoTokenizer.from_pretrained(repo, subfolder=subfolder)
    except (OSError, ValueError):
        if fallback is None:
            raise
        return embedding.load_tokenizer(fallback)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_plain(name: str, dtype: str, device: str | None):
    repo, subfolder = split_path(name)
    if subfolder is None:
        try:
            return embedding.load_reward_model(repo, dtype=dtype, device=device)
        except embedding.ModelNotAvailable as error:
            raise unavailable(name, error.__cause__) from error
    from transformers import AutoModelForSequenceClassification
    if not harness.hub_reachable():
        raise unavailable(name)
    model = AutoModelForSequenceClassification.from_pretrained(
        repo, subfolder=subfolder, num_labels=1, dtype=embedding._torch_dtype(dtype))
    model = model.to(device or str(utils.get_device())).eval()
    return model, load_tokenizer(name)


def load_base_model(name: str, dtype: str = "float32", device: str | None = None):
    """(model, tokenizer) of a base reward model, in eval mode.

    When `name` is itself a LoRA adapter over another model (adapter_config.json, as the published
    xxccho/margin_reg_baseline/checkpoint-2460 over Llama-3.1-8B-Instruct), its base model is loaded,
    the adapter applied with its own task type (its trained reward head copy is part of this base)
    and merged, so the result is a plain model a forget LoRA can be attached to."""
    config = adapter_config(name)
    if config is None:
        return _load_plain(name, dtype, device)
    underlying = config.get("base_model_name_or_path")
    if not underlying:
        raise SystemExit(f"error: the base adapter {name} names no base_model_name_or_path")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise SystemExit(f"error: the base {name} is a {config.get('peft_type')} adapter; only a LoRA "
                         f"base can be merged here")
    from peft import PeftModel
    model, _ = _load_plain(underlying, dtype, device)
    repo, subfolder = split_path(name)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    model = PeftModel.from_pretrained(model, repo, **kwargs).merge_and_unload().eval()
    tokenizer = load_tokenizer(name, fallback=underlying)
    return model, tokenizer


def apply_forget_lora(model, lora_path: str):
    """`model` (a plain sequence-classification model) wrapped with the forget LoRA at `lora_path`
    (folder or hub repo[/subfolder]); a PeftModel whose only additions are LoRA layers.

    Only the lora_A/lora_B tensors of the adapter are loaded. Anything else it saved (PEFT saves a
    modules_to_save copy, e.g. a trained `score` head, under the module's own name, so a plain load
    would overwrite the base head) is ignored with a warning: it could not be negated by -lambda.
    The LoRA starts at its trained scaling (lambda = -1, i.e. base + LoRA); use `set_lambda`."""
    from peft import PeftConfig, PeftModel
    from peft.utils import load_peft_weights, set_peft_model_state_dict
    config_dict = adapter_config(lora_path)
    if config_dict is None:
        raise SystemExit(f"error: {lora_path} has no adapter_config.json: not a PEFT adapter "
                         f"(train one with train_forget_lora.py)")
    check_negatable(config_dict, f"the forget adapter {lora_path}")
    repo, subfolder = split_path(lora_path)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    config = PeftConfig.from_pretrained(repo, **kwargs)
    config.modules_to_save = None
    config.task_type = None        # a plain PeftModel: no head copy is created
    config.inference_mode = True
    try:
        state = load_peft_weights(repo, device="cpu", **kwargs)
    except Exception as error:      # safetensors, torch and hub errors share no base class
        if not Path(lora_path).is_dir():
            raise
        raise SystemExit(f"error: the adapter weights in {lora_path} are unreadable ({type(error).__name__}: "
                         f"{str(error)[:200]}); train the adapter again with train_forget_lora.py "
                         f"(--output {lora_path} --overwrite) or copy it again") from None
    lora_state = {k: v for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}
    ignored = sorted(set(state) - set(lora_state))
    if ignored:
        warnings.warn(f"{lora_path} also saves non-LoRA weights ({', '.join(ignored[:4])}"
                      f"{', ...' if len(ignored) > 4 else ''}; e.g. a trained copy of the reward head from "
                      f"modules_to_save={config_dict.get('modules_to_save')}): they cannot be negated by "
                      f"-lambda, so they are ignored and the base weights (the base head) are kept",
                      stacklevel=2)
    peft_model = PeftModel(model, config, adapter_name=ADAPTER_NAME)
    result = set_peft_model_state_dict(peft_model, lora_state, adapter_name=ADAPTER_NAME)
    missing = [k for k in result.missing_keys if ".lora_A." in k or ".lora_B." in k]
    if missing or getattr(result, "unexpected_keys", None):
        raise SystemExit(f"error: {lora_path} does not fit this base model (missing LoRA tensors "
                         f"{missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}): wrong base model?")
    check_layers(peft_model)
    return peft_model.eval()


# -----------------------------------------------------------------------------
# creating, negating and merging


def new_forget_lora(model, r: int = LORA_R, alpha: int = LORA_ALPHA, dropout: float = LORA_DROPOUT,
                    target_modules=TARGET_MODULES):
    """A fresh trainable LoRA over `model` (B = 0, so it starts as the base): only lora_A/lora_B are
    trainable; the reward head stays frozen and is not in the adapter (no task_type, no modules_to_save)."""
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        bias="none", task_type=None, modules_to_save=None)
    peft_model = get_peft_model(model, config, adapter_name=ADAPTER_NAME)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    stray = [n for n in trainable if "lora_" not in n]
    if stray:
        raise RuntimeError(f"internal error: non-LoRA parameters would be trained: {stray[:5]}")
    return peft_model


def lora_layers(peft_model) -> list[tuple[str, torch.nn.Module]]:
    """The (name, module) of every LoRA layer of `peft_model`."""
    from peft.tuners.lora import LoraLayer
    return [(n, m) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


def check_layers(peft_model) -> None:
    """Refuse a loaded model whose LoRA layers are not plain linear LoRA (see check_negatable)."""
    from peft.tuners.lora import Linear
    layers = lora_layers(peft_model)
    if not layers:
        raise NotNegatable("error: the adapter has no LoRA layer in this model (wrong base model?)")
    for name, module in layers:
        if not isinstance(module, Linear):
            raise NotNegatable(f"error: {name} is a {type(module).__name__} LoRA layer; only LoRA on "
                               f"linear layers can be negated here")
        for adapter in module.lora_A:
            if adapter in getattr(module, "lora_variant", {}) or module.use_dora.get(adapter, False):
                raise NotNegatable(f"error: {name} uses a LoRA variant (e.g. DoRA); only plain LoRA can be "
                                   f"negated as -lambda * LoRA")
            if module.lora_bias.get(adapter, False):
                raise NotNegatable(f"error: {name} has a LoRA bias; only plain LoRA can be negated")


def base_scaling(module, adapter: str = ADAPTER_NAME) -> float:
    """The adapter's own scaling s of one layer: alpha / r, or alpha / sqrt(r) for rsLoRA."""
    r = module.r[adapter]
    return module.lora_alpha[adapter] / (math.sqrt(r) if module.use_rslora.get(adapter, False) else r)


def set_lambda(peft_model, lam: float) -> int:
    """Make `peft_model` compute base - lam * LoRA: scaling = -lam * s on every LoRA layer.

    lam = 0 gives the base exactly (the LoRA term is multiplied by 0); lam = -1 gives base + LoRA (the
    adapter as trained). Returns the number of layers set."""
    layers = lora_layers(peft_model)
    for _, module in layers:
        for adapter in module.scaling:
            module.scaling[adapter] = -float(lam) * base_scaling(module, adapter)
    return len(layers)


@torch.no_grad()
def merge_subtracted(peft_model, lam: float):
    """The plain model with W <- W - lam * s * (B @ A) in every LoRA layer (computed in float32, stored
    in W's dtype); the LoRA modules are removed. Consumes `peft_model` (its base weights change)."""
    check_layers(peft_model)
    for _, module in lora_layers(peft_model):
        weight = module.get_base_layer().weight
        for adapter in module.lora_A:
            delta = subtracted_delta(module.lora_B[adapter].weight, module.lora_A[adapter].weight,
                                     lam, base_scaling(module, adapter))
            if getattr(module, "fan_in_fan_out", False):
                delta = delta.T
            weight.data = (weight.data.float() - delta.to(weight.device)).to(weight.dtype)
    return peft_model.unload().eval()


def subtracted_delta(lora_B: torch.Tensor, lora_A: torch.Tensor, lam: float, scaling: float) -> torch.Tensor:
    """lam * scaling * (B @ A) in float32: what subtraction removes from W (B [out, r], A [r, in])."""
    return (float(lam) * float(scaling)) * (lora_B.float() @ lora_A.float())


def adapter_state_keys(adapter_dir) -> list[str]:
    """Tensor names saved in an adapter folder (adapter_model.safetensors)."""
    from safetensors import safe_open
    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), "pt") as f:
        return list(f.keys())


def save_forget_lora(peft_model, out_dir, extra: dict | None = None) -> Path:
    """Save the adapter (weights + adapter_config.json) and check that no head weights went in."""
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir))
    keys = adapter_state_keys(out_dir)
    stray = [k for k in keys if "lora_" not in k]
    if stray:
        raise RuntimeError(f"internal error: the adapter saved non-LoRA weights: {stray[:5]}")
    if extra:
        (out_dir / "training_args.json").write_text(json.dumps(extra, indent=1))
    return out_dir


def reward_parts(model):
    """(backbone, head) of a sequence-classification model or a PeftModel over one: the backbone gives
    final-norm hidden states (LoRA layers included), the head is the model's `score`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    return backbone, base.score

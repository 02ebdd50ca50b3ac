"""What every evaluator checks first: that a path is a Hugging Face causal-LM checkpoint.

``require_causal_lm(path)`` returns the directory when ``config.json`` names a ``*ForCausalLM``
architecture (or a model type ``AutoModelForCausalLM`` maps) and weights are present (HF weights,
or an INT8/INT4 ``quantized.safetensors``), or when it holds a valid GGUF file; otherwise it
raises ``EvalError`` naming what the directory is and what to pass instead. Evaluators call it
before loading anything, so a tokenizer, a preference dataset or a reward model fails in one line
instead of deep inside transformers or lm-eval.
"""
from __future__ import annotations

import json
from pathlib import Path

from shared.config import ConfigError
from shared.quant.llama_cpp import check_gguf, gguf_file


class EvalError(ConfigError):
    """Evaluation cannot run as asked. The message names the problem and the fix."""


# quantized.safetensors: an INT8/INT4 variant (shared.quant), evaluated through our engine (shared.eval.engine_backend).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "quantized.safetensors")


def require_causal_lm(path: str | Path) -> Path:
    """``path`` as a ``Path`` if it holds a causal-LM checkpoint; ``EvalError`` otherwise."""
    root = Path(path)
    config_file = root / "config.json"
    if gguf_file(root) is not None:  # a GGUF variant: llama.cpp runs it (shared.eval.engine_backend)
        check_gguf(gguf_file(root))
        return root
    if not root.is_dir():
        raise EvalError(f"{root} is not a directory; pass a registered model artifact (e.g. <run>/sft) "
                        "or an HF checkpoint directory")
    if not config_file.exists():
        kind = _artifact_kind(root)
        raise EvalError(f"{root} is not a causal language model ({kind or 'no config.json'}); evaluate a model "
                        "artifact such as pretrain, cpt, sft or dpo")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalError(f"{config_file} is not valid JSON ({exc}); re-export the checkpoint") from None
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures):
        raise EvalError(f"{root} holds {architectures or config.get('model_type', 'an unknown model')}, not a "
                        "causal language model (e.g. a reward model is a sequence classifier); evaluate a "
                        "generator artifact such as pretrain, cpt, sft or dpo")
    if not any((root / f).exists() for f in WEIGHT_FILES):
        raise EvalError(f"{root} has a config but no weights ({' / '.join(WEIGHT_FILES)}); the stage that wrote "
                        "it did not finish, rerun it")
    return root


def _artifact_kind(root: Path) -> str | None:
    manifest = root / "journey.json"
    if manifest.exists():
        try:
            return f"a {json.loads(manifest.read_text(encoding='utf-8')).get('kind')} artifact"
        except json.JSONDecodeError:
            return None
    return None

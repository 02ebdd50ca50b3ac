"""vLLM as an alternative generator on GPU machines (optional extra ``gpt-journey[vllm]``).

Our engine (``shared.engine.Engine``) is the CPU default and what the tests check; on a CUDA
machine vLLM's paged attention and CUDA graphs serve larger models faster, so the generator can
use it instead, selected by config. ``VLLMGenerator`` takes an HF checkpoint directory (any of the
journey's model artifacts; vLLM supports ``GPT2LMHeadModel``) and maps our ``SamplingParams`` onto
vLLM's, so callers see the same token ids, text and finish reasons either way.

vLLM needs a CUDA GPU and cannot be installed on the CPU machines the project is developed on, so
this module imports it lazily and raises ``EngineError`` with the install command when it is
missing; ``tests/shared/engine/test_vllm.py`` is marked ``gpu``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.engine.errors import EngineError
from shared.engine.params import SamplingParams

INSTALL_HINT = "pip install 'gpt-journey[vllm]' (needs a CUDA GPU; the CPU default is shared.engine.Engine)"


@dataclass
class VLLMOutput:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" or "length", as vLLM reports it


def vllm_sampling_params(params: SamplingParams, stop_token_ids: Sequence[int] = ()):
    """Our ``SamplingParams`` as vLLM's (greedy when temperature is 0)."""
    try:
        import vllm
    except ImportError as exc:
        raise EngineError(f"vLLM is not installed ({exc}); {INSTALL_HINT}") from None
    return vllm.SamplingParams(
        temperature=params.temperature, top_k=params.top_k or -1, top_p=params.top_p,
        repetition_penalty=params.repetition_penalty, max_tokens=params.max_tokens, seed=params.seed,
        stop=list(params.stop or []) or None,
        stop_token_ids=[*params.stop_token_ids, *(() if params.ignore_eos else stop_token_ids)] or None,
        ignore_eos=params.ignore_eos, skip_special_tokens=False)


class VLLMGenerator:
    """Batch generation with vLLM over the HF checkpoint ``path`` (``generate`` mirrors ``Engine.generate``)."""

    def __init__(self, path: str | Path, dtype: str = "auto", gpu_memory_utilization: float = 0.5):
        try:
            import vllm
        except ImportError as exc:
            raise EngineError(f"vLLM is not installed ({exc}); {INSTALL_HINT}") from None
        if not (Path(path) / "config.json").exists():
            raise EngineError(f"{path} is not an HF checkpoint directory (no config.json); pass a model artifact")
        self.llm = vllm.LLM(model=str(path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization)
        tokenizer = self.llm.get_tokenizer()
        self.stop_ids = [i for i in (tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>"))
                         if isinstance(i, int) and i != tokenizer.unk_token_id]

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[VLLMOutput]:
        vparams = vllm_sampling_params(params, self.stop_ids)
        results = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], vparams, use_tqdm=False)
        return [VLLMOutput(list(r.outputs[0].token_ids), r.outputs[0].text, r.outputs[0].finish_reason)
                for r in results]

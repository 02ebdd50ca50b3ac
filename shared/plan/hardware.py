"""The GPU a plan is checked against: the visible one, or a named target (the presets' H100 by default)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

GB = 1000 ** 3

#: Memory of common accelerators (the vendors' data sheets, decimal GB as sold). Keys are matched
#: case-insensitively against a device name, longest key first ("A100-40GB" before "A100").
KNOWN_GPUS: dict[str, int] = {
    "H200": 141 * GB, "H100": 80 * GB, "A100-40GB": 40 * GB, "A100": 80 * GB, "L40S": 48 * GB, "L4": 24 * GB,
    "A10": 24 * GB, "RTX 4090": 24 * GB, "RTX 3090": 24 * GB, "T4": 16 * GB, "V100": 32 * GB,
}
DEFAULT_TARGET = "H100"


@dataclass(frozen=True)
class Gpu:
    """One GPU: its name, memory in bytes, and whether this machine has it (else it is the plan's target)."""

    name: str
    memory: int
    visible: bool

    @property
    def family(self) -> Optional[str]:
        """The ``KNOWN_GPUS`` key the name matches (``H100`` for "NVIDIA H100 80GB HBM3"), if any."""
        return known_family(self.name)


def known_family(name: str) -> Optional[str]:
    upper = name.upper().replace(" ", "")
    return next((k for k in sorted(KNOWN_GPUS, key=len, reverse=True) if k.upper().replace(" ", "") in upper), None)


def visible_gpus() -> list[Gpu]:
    """GPUs this process can use (CUDA through torch); none when torch has no CUDA or none is visible.

    torch is imported here only if it is not already (the stage configs' modules import it anyway);
    asking for the device properties initialises CUDA, which a short-lived planning process may do.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return []
    try:
        import torch  # deferred: the CLI's --help and config errors must not pay for it
        if not torch.cuda.is_available():
            return []
        return [Gpu(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory, True)
                for i in range(torch.cuda.device_count())]
    except (ImportError, RuntimeError, AssertionError):  # a CPU-only torch build, or a broken driver
        return []


def target_gpu(name: Optional[str], visible: list[Gpu]) -> Gpu:
    """The GPU memory is checked against: ``name`` from ``KNOWN_GPUS`` when given, else the first
    visible GPU, else the default target (the H100 the gpt2-124m presets are written for).

    ValueError for a name that is not in ``KNOWN_GPUS``.
    """
    if name:
        family = known_family(name)
        if family is None:
            raise ValueError(f"unknown gpu {name!r}; known: {sorted(KNOWN_GPUS)} (or run on the GPU itself)")
        match = next((g for g in visible if g.family == family), None)
        return match or Gpu(family, KNOWN_GPUS[family], False)
    if visible:
        return visible[0]
    return Gpu(DEFAULT_TARGET, KNOWN_GPUS[DEFAULT_TARGET], False)


__all__ = ["DEFAULT_TARGET", "GB", "Gpu", "KNOWN_GPUS", "known_family", "target_gpu", "visible_gpus"]

"""What the GGUF tests share: whether llama-cpp-python (and its native library) is usable here."""
from __future__ import annotations

import importlib

import pytest

try:
    importlib.import_module("llama_cpp")  # loads the native library too: a broken build skips, not errors
    HAS_LLAMA_CPP, WHY = True, ""
except (ImportError, OSError) as err:
    HAS_LLAMA_CPP, WHY = False, f"llama-cpp-python not usable ({err}); install: scripts/install_llama_cpp.sh"

#: Marks a test that runs a GGUF file with llama.cpp.
needs_llama = pytest.mark.skipif(not HAS_LLAMA_CPP, reason=WHY)

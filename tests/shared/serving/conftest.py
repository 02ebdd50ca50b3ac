"""The serving tests reuse the engine tests' tiny models and byte-level tokenizer."""
from tests.shared.engine.conftest import byte_tokenizer, one_thread  # noqa: F401 - fixtures, registered by import

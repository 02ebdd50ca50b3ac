"""The one error type of the engine: bad input from a caller, named with its fix."""
from __future__ import annotations


class EngineError(ValueError):
    """A request or engine setting the engine cannot serve; the message names the problem and the fix.

    A ``ValueError`` so callers (the generator service, the gateway) can answer it as a client error
    (HTTP 400) without knowing the engine's internals.
    """

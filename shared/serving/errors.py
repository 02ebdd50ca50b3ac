"""The one error type of serving: a request that cannot be served, with the HTTP status it maps to."""
from __future__ import annotations


class ServingError(RuntimeError):
    """A request that cannot be served; ``status`` is the HTTP status it maps to.

    400: the request's fault (a conversation that cannot fit, bad parameters, a non-model artifact);
    404: no such model; 503: the model was unloaded; 500 (the default): ours. The generator answers
    it as an ``error`` event and the gateway as an HTTP error: a serving notion, not the engine's (whose
    ``EngineError`` the backends map to a 400). This module imports nothing, so catching it is free.
    """

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status

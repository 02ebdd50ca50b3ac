"""Configuration of the Gradio frontend (``python -m services.frontend.main``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from shared.config import ConfigError, help_field, require_positive

USER_ENV, PASSWORD_ENV = "JOURNEY_FRONTEND_USER", "JOURNEY_FRONTEND_PASSWORD"


@dataclass
class FrontendConfig:
    """Serve the chat page: where the bus and the artifacts are, where to listen, who may log in."""

    redis_url: Optional[str] = help_field(None, "the bus (default $REDIS_URL, else redis://localhost:6379/0)")
    bus_prefix: str = help_field("journey:", "key prefix of the bus's streams; must match the gateway's")
    host: str = help_field("127.0.0.1", "interface to listen on; 0.0.0.0 in a container (then set auth)")
    port: int = help_field(7860, "HTTP port of the page")
    runs_dir: Optional[str] = help_field(None, "artifact root the model picker lists (default $JOURNEY_RUNS or ./runs)")
    timeout_s: float = help_field(60.0, "seconds a turn waits for the gateway's next event before showing an error")
    max_tokens_limit: int = help_field(1024, "upper end of the page's max-new-tokens slider")
    concurrency_limit: int = help_field(32, "chats streaming at once across all users")
    title: str = help_field("GPT Journey chat", "page title")
    auth_user: Optional[str] = help_field(None, f"login name; default ${USER_ENV}. No user: no login page")
    auth_password: Optional[str] = help_field(None, f"login password; default ${PASSWORD_ENV} (keep it out of "
                                                    f"command lines, which other users can see)")

    def validate(self) -> None:
        require_positive(self, ("port", "max_tokens_limit", "concurrency_limit"))
        if self.port > 65535:
            raise ConfigError(f"port must be 1..65535, got {self.port}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")
        if bool(self.auth_user) != bool(self.auth_password):
            raise ConfigError(f"auth needs both a user and a password: set {USER_ENV} and {PASSWORD_ENV} "
                              f"(or neither, for no login page)")

    @property
    def auth(self) -> tuple[str, str] | None:
        """Gradio's ``launch(auth=...)``: one (user, password) pair, or None for an open page."""
        return (self.auth_user, self.auth_password) if self.auth_user and self.auth_password else None


def env_defaults(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Config values taken from the environment (the login), as a ``load_config`` base."""
    environ = os.environ if environ is None else environ
    return {key: environ[name] for key, name in (("auth_user", USER_ENV), ("auth_password", PASSWORD_ENV))
            if environ.get(name)}

"""Configuration of the Gradio frontend (``python -m services.frontend.main``).

Who may use the page: nobody is asked when neither a login nor a key is set. With an API key (``api_key``,
default ``$JOURNEY_API_KEY``, the same key the gateway wants), the page is behind Gradio's login: any user
name, the key as password; Gradio then refuses its API (``gradio_client``'s ``/respond``, ``/queue/join``...)
to every session that has not logged in. A login (``auth_user`` / ``auth_password``) is accepted as well.
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from shared.config import ConfigError, help_field, require_positive

USER_ENV, PASSWORD_ENV = "JOURNEY_FRONTEND_USER", "JOURNEY_FRONTEND_PASSWORD"
KEY_ENV = "JOURNEY_API_KEY"


@dataclass
class FrontendConfig:
    """Serve the chat page: where the bus and the artifacts are, where to listen, who may log in."""

    redis_url: Optional[str] = help_field(None, "the bus (default $REDIS_URL, else redis://localhost:6379/0)")
    bus_prefix: str = help_field("journey:", "key prefix of the bus's streams; must match the gateway's")
    host: str = help_field("127.0.0.1", "interface to listen on; 0.0.0.0 in a container (then set api_key)")
    port: int = help_field(7860, "HTTP port of the page")
    runs_dir: Optional[str] = help_field(None, "artifact root the model picker lists (default $JOURNEY_RUNS or ./runs)")
    timeout_s: float = help_field(60.0, "seconds a turn waits for the gateway's next event before showing an error")
    max_tokens_limit: int = help_field(1024, "upper end of the page's max-new-tokens slider")
    concurrency_limit: int = help_field(32, "chats streaming at once across all users")
    title: str = help_field("GPT Journey chat", "page title")
    auth_user: Optional[str] = help_field(None, f"login name; default ${USER_ENV}. No user: no login page")
    auth_password: Optional[str] = help_field(None, f"login password; default ${PASSWORD_ENV} (keep it out of "
                                                    f"command lines, which other users can see)")
    api_key: Optional[str] = help_field(None, f"the stack's key; default ${KEY_ENV}. Set: the page asks for it (any "
                                              f"user name, the key as password) and its API refuses calls without it")

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
    def auth(self) -> tuple[str, str] | Callable[[str, str], bool] | None:
        """Gradio's ``launch(auth=...)``: the login pair, a check that also takes the key, or None (open page)."""
        login = (self.auth_user, self.auth_password) if self.auth_user and self.auth_password else None
        if not self.api_key:
            return login
        return KeyLogin(self.api_key, login)

    @property
    def auth_message(self) -> str | None:
        if self.api_key:
            return "Sign in with any user name and the stack's API key (JOURNEY_API_KEY) as the password."
        return None


class KeyLogin:
    """A Gradio ``auth`` callable: the password is the API key (any user name), or the configured login pair.
    Compared in constant time, so the answer's timing does not tell how much of a guess was right."""

    def __init__(self, api_key: str, login: tuple[str, str] | None = None):
        self._key, self._login = api_key, login

    def __call__(self, username: str, password: str) -> bool:
        password = (password or "").encode()
        if hmac.compare_digest(password, self._key.encode()):
            return True
        return self._login is not None and hmac.compare_digest((username or "").encode(), self._login[0].encode()) \
            and hmac.compare_digest(password, self._login[1].encode())

    def __repr__(self) -> str:  # never the key, in a log line or a traceback
        return f"KeyLogin(api_key=<{len(self._key)} chars>, login={'set' if self._login else 'none'})"


def env_defaults(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Config values taken from the environment (the login, the key), as a ``load_config`` base."""
    environ = os.environ if environ is None else environ
    return {key: environ[name] for key, name in (("auth_user", USER_ENV), ("auth_password", PASSWORD_ENV),
                                                 ("api_key", KEY_ENV)) if environ.get(name)}

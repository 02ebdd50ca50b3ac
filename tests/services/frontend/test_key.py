"""One door, one key: with an API key set, the web chat and its Gradio API refuse whoever lacks it.

The page is launched as ``python -m services.frontend.main`` launches it (``serve``), on a free port, with
``api_key`` set; the stub gateway answers over a real redis-server. ``gradio_client`` is the client
the issue used to reach ``/respond`` without a key.
"""
from __future__ import annotations

import httpx
import pytest
from gradio_client import Client

from services.frontend.frontend_config import KEY_ENV, FrontendConfig, KeyLogin, env_defaults
from services.frontend.main import serve
from shared.bus import free_port

KEY = "sk-journey-test-key"


@pytest.fixture
def page_url(redis_url, runs_dir):
    cfg = FrontendConfig(redis_url=redis_url, port=free_port(), runs_dir=str(runs_dir), timeout_s=10, api_key=KEY)
    demo = serve(cfg, block=False)
    yield f"http://127.0.0.1:{cfg.port}/"
    demo.close()


def _respond(client: Client, message: str):
    return client.predict(message, [], "", False, False, 16, 0.0, api_name="/respond")  # gr.State is not an input


def test_the_gradio_api_refuses_a_client_without_the_key(page_url, gateway):
    with pytest.raises(Exception) as refused:  # noqa: PT011 - gradio_client raises ValueError or an httpx error
        _respond(Client(page_url, verbose=False), "What is 6 * 7?")
    assert "401" in str(refused.value) or "auth" in str(refused.value).lower() or "login" in str(refused.value).lower()
    with pytest.raises(Exception):  # noqa: PT011, B017
        Client(page_url, auth=("anyone", "wrong key"), verbose=False)
    # the raw routes a script would use, without gradio_client
    for path in ("gradio_api/info", "config"):
        assert httpx.get(page_url + path).status_code == 401, path
    joined = httpx.post(page_url + "gradio_api/queue/join", json={"data": ["hi"], "fn_index": 0, "session_hash": "x"})
    assert joined.status_code == 401
    assert not gateway.requests, "a request without the key reached the gateway"


def test_the_key_opens_the_page_and_its_api(page_url, gateway):
    login_page = httpx.get(page_url)
    assert login_page.status_code == 200 and "API key" in login_page.text  # the login form says what to enter
    result = _respond(Client(page_url, auth=("whoever", KEY), verbose=False), "What is 6 * 7?")
    history = result[1]
    assert history[-1]["content"] and gateway.ANSWER in str(history[-1]["content"])
    assert [r.messages[-1].content for r in gateway.requests] == ["What is 6 * 7?"]


def test_the_key_comes_from_the_environment_and_never_shows_in_a_repr():
    cfg = FrontendConfig(**env_defaults({KEY_ENV: KEY}))
    assert cfg.api_key == KEY and isinstance(cfg.auth, KeyLogin)
    assert cfg.auth("anyone", KEY) and not cfg.auth("anyone", KEY[:-1]) and not cfg.auth("", "")
    assert KEY not in repr(cfg.auth)
    both = FrontendConfig(api_key=KEY, auth_user="ada", auth_password="pw")
    assert both.auth("ada", "pw") and both.auth("bob", KEY) and not both.auth("bob", "pw")
    assert FrontendConfig().auth is None and FrontendConfig().auth_message is None


@pytest.mark.parametrize("host, key, warns", [("127.0.0.1", None, False), ("localhost", None, False),
                                              ("::1", None, False), ("0.0.0.0", None, True), ("", None, True),
                                              ("10.1.2.3", None, True), ("my-host.example", None, True),
                                              ("0.0.0.0", "k", False)])
def test_journey_up_warns_when_it_listens_beyond_loopback_without_a_key(host, key, warns):
    from services.stack import exposure_warning
    warning = exposure_warning(host, key)
    assert bool(warning) == warns
    if warns:
        assert "JOURNEY_API_KEY" in warning and "127.0.0.1" in warning

"""The production web server: gunicorn serves the app, and /healthz reports on its services."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROOT, worker_env

GUNICORN = str(ROOT / ".venv" / "bin" / "gunicorn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def gunicorn(db):
    """Start gunicorn as the README's production command does: `gunicorn(**env)` -> base URL."""
    started = []

    def start(**env) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [GUNICORN, "project.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
            cwd=ROOT,
            env=worker_env(DJANGO_ENV="production", **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                assert proc.poll() is None, "gunicorn exited"
                time.sleep(0.1)
        raise AssertionError("gunicorn did not start")

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def test_gunicorn_serves_the_login_page_and_a_healthy_healthz(gunicorn):
    url = gunicorn()

    login = get(url + "/login/")
    health = get(url + "/healthz")

    assert login[0] == 200 and b"Log in" in login[1]
    assert health == (200, json.dumps({"database": "ok", "redis": "ok"}).encode())


def test_healthz_answers_503_naming_the_service_that_is_down(gunicorn):
    url = gunicorn(REDIS_URL="redis://127.0.0.1:1/0")

    status, body = get(url + "/healthz")

    assert status == 503
    assert json.loads(body) == {"database": "ok", "redis": "unavailable"}

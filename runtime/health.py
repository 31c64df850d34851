"""Health gate: serve a release, require /health 200 and one real completion, stop it."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

from runtime.errors import InstallError


def _http(url: str, body: Optional[bytes], timeout: float, api_key: Optional[str]) -> Any:
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310
    # The gate only ever talks to the server on this host; no proxy may intercept it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        return response.status, response.read()


def wait_healthy(
    base_url: str,
    *,
    timeout: float,
    alive: Any = None,
    api_key: Optional[str] = None,
) -> None:
    """Poll ``<base_url>/health`` until it answers 200; ``alive()`` False aborts early."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise InstallError(
                f"the server exited before it became healthy (last: {last})",
                hint="read the server log for the reason (model load, memory, CPU)",
            )
        try:
            code, _ = _http(base_url + "/health", None, 5.0, api_key)
            if code == 200:
                return
            last = f"HTTP {code}"
        except Exception as e:
            last = str(e) or type(e).__name__
        time.sleep(0.25)
    raise InstallError(
        f"{base_url}/health did not answer 200 within {timeout:.0f}s (last: {last})",
        hint="read the server log; raise airlock_health_timeout for very large models",
    )


def check_completion(base_url: str, *, timeout: float, api_key: Optional[str] = None) -> str:
    """One real completion through the OpenAI-compatible API; returns the text."""
    body = json.dumps(
        {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    ).encode()
    try:
        code, raw = _http(base_url + "/v1/completions", body, timeout, api_key)
        answer = json.loads(raw.decode("utf-8"))
        choices = answer["choices"]
        text = str(choices[0].get("text", ""))
        tokens = int(answer.get("usage", {}).get("completion_tokens", 1))
    except Exception as e:
        raise InstallError(
            f"the server is healthy but a completion failed: {e}",
            hint="the model loads but cannot generate; read the server log",
        ) from e
    if code != 200 or tokens < 1:
        raise InstallError(f"completion returned HTTP {code} with {tokens} tokens")
    return text


def read_api_key(env_file: str) -> Optional[str]:
    """The API key the release's server requires (AIRLOCK_API_KEY_FILE), or None."""
    from runtime.settings import settings_value

    key_file = settings_value(env_file, "AIRLOCK_API_KEY_FILE")
    if not key_file:
        return None
    try:
        with open(key_file, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as e:
        raise InstallError(
            f"cannot read the API key file {key_file}: {e}",
            hint="airlock_server_overrides.api_key_file must name a file root can read",
        ) from e


def health_gate(
    release_dir: str,
    env_file: str,
    *,
    user: Optional[str],
    log_file: str,
    timeout: float,
    port: Optional[int] = None,
) -> Dict[str, Any]:
    """Run the release's server, require /health 200 and one real completion, stop it.

    With ``port`` the server runs on that loopback slot port (:func:`runtime.slots.on_slot`)
    instead of the address in its settings, so the release that serves is not disturbed.
    """
    import subprocess

    from runtime.settings import settings_value
    from runtime.slots import SLOT_HOST, on_slot
    from runtime.supervise import _drop_privileges, launch_spec

    argv, env, cwd = launch_spec(release_dir, env_file)
    base_url = settings_value(env_file, "AIRLOCK_HEALTH_URL") or "http://127.0.0.1:8080"
    if port is not None:
        argv = on_slot(argv, port)
        base_url = f"http://{SLOT_HOST}:{port}"
    api_key = read_api_key(env_file)
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    started = time.monotonic()
    if not os.path.isdir(cwd) or not os.access(argv[0], os.X_OK):
        raise InstallError(
            f"health gate failed for {release_dir}: {argv[0]} is not executable or the "
            f"working directory {cwd} does not exist",
            hint="the release is incomplete; reinstall it with install.yml",
        )
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=(lambda: _drop_privileges(user)) if user else None,
        )
        try:
            wait_healthy(
                base_url, timeout=timeout, alive=lambda: proc.poll() is None, api_key=api_key
            )
            text = check_completion(base_url, timeout=timeout, api_key=api_key)
        except InstallError as e:
            raise InstallError(
                f"health gate failed for {release_dir}: {e.message}",
                hint=f"server log: {log_file}\n{_tail(log_file)}",
            ) from e
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"url": base_url, "completion": text, "seconds": round(time.monotonic() - started, 2)}


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()[-8192:]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

"""The README's main job, exactly as the README says to run it, answers from the test host."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.netns]


def readme_main_job(repo_root: Path) -> list[str]:
    """The demo command from README.md's first code block (comments stripped)."""
    text = (repo_root / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```[a-z]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    assert block, "README.md lost its first code block (the two main commands)"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    commands = [c for c in commands if c]
    assert commands == ["bash .ci/demo", "bash .ci/test"], commands
    return shlex.split(commands[0])


# console.PLAIN_INTERVAL (10 s) plus the watcher's 1 s tick and scheduling on a busy machine
LONGEST_SILENCE = 15.0


def run_stamped(argv: list[str], **kwargs: object) -> tuple[int, str, str, list[float]]:
    """Run ``argv`` with stdout and stderr pipes (not a terminal: the plain progress form);
    returns (exit code, stdout, stderr, the arrival time of every output line)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )
    stamps: list[float] = [time.monotonic()]
    texts: dict[str, list[str]] = {"out": [], "err": []}

    def read(name: str, stream: IO[str]) -> None:
        for line in stream:
            stamps.append(time.monotonic())
            texts[name].append(line)

    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=read, args=("out", proc.stdout)),
        threading.Thread(target=read, args=("err", proc.stderr)),
    ]
    for t in readers:
        t.start()
    rc = proc.wait(timeout=1800)
    for t in readers:
        t.join()
    stamps.append(time.monotonic())
    return rc, "".join(texts["out"]), "".join(texts["err"]), sorted(stamps)


def test_readme_demo_answers_from_the_installed_server_on_the_test_host(
    repo_root: Path, tmp_path: Path
) -> None:
    argv = readme_main_job(repo_root)
    env = dict(os.environ, AIRLOCK_DEMO_DIR=str(tmp_path))
    rc, stdout, stderr, stamps = run_stamped(argv, cwd=repo_root, env=env)
    assert rc == 0, f"{argv} failed:\n{stderr[-6000:]}"
    # Never silent for long, in a pipe as in CI logs: every gap between output lines.
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) <= LONGEST_SILENCE, (max(gaps), stderr[-3000:])

    (result_file,) = tmp_path.glob("*/result.json")
    result = json.loads(result_file.read_text())
    workdir = Path(result["workdir"])
    assert workdir.parent == tmp_path

    # The server that answered listens on the test host's own address, in its own network
    # namespace, which has no route beyond its link to the controller.
    host = ipaddress.ip_address(result["host_address"])
    controller = ipaddress.ip_address(result["controller_address"])
    assert host.is_private and host != controller
    assert ipaddress.ip_network(f"{controller}/30", strict=False) == ipaddress.ip_network(
        f"{host}/30", strict=False
    )
    assert result["server_url"].startswith(f"http://{host}:")
    assert not any(r.startswith("default") for r in result["host_routes"]), result["host_routes"]
    # The front (python3 -m runtime.front) owns the public port and forwards to the active
    # slot, where llama-server listens on loopback only.
    public, slot = result["server_port"], result["active_slot_port"]
    assert slot != public and slot > 0, result
    listeners = result["host_listeners"]
    assert any(f":{public} " in line and "python3" in line for line in listeners), listeners
    assert any(f"127.0.0.1:{slot} " in line and "llama-server" in line for line in listeners), (
        listeners
    )
    # The server serves the model from the bundle it was installed from.
    assert result["bundle_model"] == "tiny"
    assert result["model_id"] in (
        result["bundle_model"],
        result["bundle_entrypoint"].rsplit("/")[-1],
    )
    # The demo model's constructed weights answer one sentence; it came from that server.
    assert result["answer"] == "Hello from the air-gapped host."
    assert result["completion_tokens"] == 6  # five words and the full stop's word, no noise
    assert "answer:   Hello from the air-gapped host." in stdout
    # The bundle verified and the reviewer's page was written.
    assert re.fullmatch(r"[0-9a-f]{64}", result["manifest_sha256"])
    assert (workdir / "report.html").is_file()
    # Human output names the host the answer came from; cleanup left no host behind.
    assert f"on {host}" in stdout
    assert "what to try next:" in stdout and "verify.yml" in stdout
    assert result["kept"] is False
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert result["host_netns"] not in netns.stdout

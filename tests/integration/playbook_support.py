"""Helpers for the playbook tests: real signed bundles, the real engine, ansible-playbook runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bundler.bundle.pack import pack
from bundler.demo.hosts import TestFleet
from bundler.demo.tinymodel import write_tiny_model
from bundler.engine import llamacpp
from bundler.sources.ggufinfo import read_facts
from bundler.ssh.keys import generate_keypair, load_signer

REPO = Path(__file__).resolve().parents[2]
# The controller the playbook runs use: this venv's bin/, or another controller's (e.g. a
# Python 3.10 one with ansible-core 2.17, bootstrapped with runtime.controller):
# AIRLOCK_TEST_CONTROLLER_BIN=/opt/airlock-controller/bin (docs/DEVELOPING.md).
BIN = Path(os.environ.get("AIRLOCK_TEST_CONTROLLER_BIN") or Path(sys.executable).parent)
PORT = 8080
SLOTS = (PORT + 1, PORT + 2)
# The last commit whose role ran one server on the public port (before the slots): the
# upgrade from such a host is tested with its playbooks, runtime and templates.
PRE_SLOT_COMMIT = "d03c4405693081d38e1072f11ba7620ee6d2a764"


def pre_slot_tree(directory: Path) -> Path:
    """playbooks/, runtime/ and templates/ of :data:`PRE_SLOT_COMMIT` under ``directory``."""
    if not (directory / "playbooks").is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", PRE_SLOT_COMMIT, "playbooks", "runtime",
             "templates"],
            capture_output=True, check=True,
        )  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory


def real_engine() -> llamacpp.EngineBuild:
    """The real llama-server with CPU variant modules (built once, then from the cache)."""
    from .llamacpp_support import engine_build

    return engine_build()


@dataclass
class Signer:
    key: Path
    allowed_signers: Path


def make_signer(directory: Path, name: str = "release") -> Signer:
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / f"{name}_ed25519"
    pub = generate_keypair(key, comment=f"{name}@airlock-test", passphrase=None)
    allowed = directory / f"{name}.allowed_signers"
    allowed.write_text(f'{name}@airlock-test namespaces="airlock-manifest-v1" {pub.openssh()}\n')
    return Signer(key=key, allowed_signers=allowed)


@dataclass
class Bundle:
    path: Path
    manifest_sha256: str
    version: str
    sequence: int


def make_bundle(
    workdir: Path,
    engine: llamacpp.EngineBuild,
    signer: Signer,
    *,
    version: str,
    sequence: int,
    filler_bytes: int = 0,
    seed: int = 0,
    break_model: bool = False,
    engine_overrides: dict[str, Any] | None = None,
) -> Bundle:
    """A real signed bundle: the engine, a generated tiny GGUF, runtime/, playbooks/, templates/."""
    stage = workdir / f"stage-{version}"
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(engine.root, stage / "engine", ignore=shutil.ignore_patterns("_*", "*.log"))
    model_dir = stage / "models" / "tiny"
    model_dir.mkdir(parents=True)
    from bundler.demo.tinymodel import TinyModelOptions

    shards = write_tiny_model(model_dir / "tiny.gguf", TinyModelOptions(seed=seed))
    facts = read_facts(shards)
    if break_model:  # signed and intact, but llama-server cannot load it
        with open(shards[0], "r+b") as f:
            f.write(b"XXXX")
    if filler_bytes:
        with open(model_dir / "filler.bin", "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(filler_bytes >> 20):
                f.write(block)
    for part in ("runtime", "playbooks", "templates"):
        shutil.copytree(
            REPO / part, stage / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    engine_props: dict[str, Any] = {**engine.properties, **(engine_overrides or {})}
    engine_props["server_defaults"] = {
        "port": PORT,
        "host": "0.0.0.0",
        "ctx_size": 256,
        "parallel": 1,
        "model": "tiny",
        "api_key_file": None,
    }
    components = {
        "engine": {"type": "runtime", "properties": engine_props},
        "models": {
            "type": "model",
            "properties": {
                "models": [
                    {
                        "name": "tiny",
                        "source": "local",
                        "entrypoint": "models/tiny/tiny.gguf",
                        "files": [],
                        "gguf": facts.properties(),
                    }
                ]
            },
        },
    }
    out = workdir / f"out-{version}"
    result = pack(
        stage,
        name="demo",
        version=version,
        sequence=sequence,
        expires=datetime.now(timezone.utc) + timedelta(days=30),
        components=components,
        signers=[load_signer(signer.key)],
        out_dir=out,
    )
    shutil.rmtree(stage)
    return Bundle(
        path=Path(result.path),
        manifest_sha256=result.manifest_sha256,
        version=version,
        sequence=sequence,
    )


@dataclass
class PlaybookRun:
    rc: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        """Per host PLAY RECAP counters (ok, changed, failed, ...)."""
        recap: dict[str, dict[str, int]] = {}
        tail = self.output.split("PLAY RECAP", 1)[-1]
        for line in tail.splitlines():
            m = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
            if m:
                recap[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return recap

    def changed(self, host: str) -> int:
        return self.recap()[host]["changed"]

    @property
    def text(self) -> str:
        """The output with every run of whitespace made one space: the YAML callback wraps
        long messages at different columns in different ansible-core releases."""
        return " ".join(self.output.split())


def playbook_command(
    fleet: TestFleet,
    workdir: Path,
    playbook: str,
    *extra: str,
    bundle: Bundle | None = None,
    signer: Signer | None = None,
    controller: Path = BIN,
    playbooks: Path = REPO / "playbooks",
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of one ansible-playbook run against ``fleet``, with the
    ansible-playbook and airlock commands of the controller venv whose bin/ is ``controller``."""
    inventory = workdir / "inventory.ini"
    inventory.write_text(fleet.inventory())
    argv = [
        str(controller / "ansible-playbook"),
        "-i",
        str(inventory),
        str(playbooks / playbook),
    ]
    if bundle is not None:
        argv += ["-e", f"airlock_bundle={bundle.path}"]
    if signer is not None:
        argv += ["-e", f"airlock_allowed_signers={signer.allowed_signers}"]
        argv += ["-e", "airlock_threshold=1"]
    argv += [
        "-e",
        f"airlock_cli={controller / 'airlock'}",
        "-e",
        f"airlock_controller_workdir={workdir / 'controller-state'}",
        "-e",
        "airlock_health_timeout=90",
        *extra,
    ]
    env = fleet.ansible_env()
    env["ANSIBLE_CONFIG"] = str(REPO / "playbooks" / "ansible.cfg")
    env["PATH"] = f"{controller}{os.pathsep}{env.get('PATH', '')}"
    return argv, env


def run_playbook(
    fleet: TestFleet,
    workdir: Path,
    playbook: str,
    *extra: str,
    bundle: Bundle | None = None,
    signer: Signer | None = None,
    timeout: float = 900,
    controller: Path = BIN,
    playbooks: Path = REPO / "playbooks",
) -> PlaybookRun:
    argv, env = playbook_command(
        fleet, workdir, playbook, *extra, bundle=bundle, signer=signer, controller=controller,
        playbooks=playbooks,
    )  # fmt: skip
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    output = proc.stdout + proc.stderr
    with open(workdir / "ansible.log", "a") as f:
        f.write(f"\n\n$ {' '.join(argv)}\n{output}")
    return PlaybookRun(rc=proc.returncode, output=output)

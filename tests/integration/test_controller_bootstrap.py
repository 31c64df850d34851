"""The Ansible controller bootstrapped from a bundle alone, offline, on real Debian userlands.

A bundle without an engine is built here (the controller wheelhouse is what matters); its
``controller/``, ``runtime/``, ``playbooks/`` and ``templates/`` are taken out as
docs/OPERATIONS.md says (GNU tar, then ``sha256sum --check``) and handed, read-only, to a
Debian root filesystem with ``python3`` and no ``python3-venv``, entered with
``unshare --net`` (no interface but a down loopback) and ``chroot``. Every step runs on an
overlay over the cached tree, so the tree stays shared and clean.

Run under the netns lock: ``flock /tmp/airlock-netns.lock pytest -m slow this_file``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bundler.demo.hosts import TestFleet
from bundler.demo.tinymodel import TinyModelOptions, write_tiny_model
from bundler.pipeline import BuildOptions, build, lock
from bundler.project.spec import load_spec
from bundler.sources.wheelhouse import ANSIBLE_CORE_SERIES, CONTROLLER_PYTHONS
from bundler.ssh.keys import generate_keypair
from tests.rootfs import debian_rootfs

from .playbook_support import PlaybookRun, make_bundle, make_signer, real_engine, run_playbook

pytestmark = [pytest.mark.slow, pytest.mark.netns]

EPOCH = int(time.time()) // 86400 * 86400
BOOTSTRAP = ["python3", "-m", "runtime.controller", "/opt/airlock-controller"]
VENV = "/opt/airlock-controller/bin"
# python arguments that print the venv's installed distributions, lower-case names
LIST_DISTRIBUTIONS = [
    "-c",
    "import importlib.metadata as m; print(sorted("
    "d.metadata['Name'].lower() for d in m.distributions()))",
]


@dataclass(frozen=True)
class Bundle:
    tar: Path
    ctl: Path  # the parts a controller takes out of the checked archive


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    d = tmp_path_factory.mktemp("ctlbundle")
    generate_keypair(d / "key", comment="builder@test", passphrase=None)
    pub = (d / "key.pub").read_text().strip()
    write_tiny_model(d / "m.gguf", TinyModelOptions(seed=5, chat_template=False))
    (d / "airlock.yaml").write_text(
        "name: demo\nversion: '1.0.0'\nsequence: 1\nexpires: 30d\n"
        "models:\n  - {name: m, source: local, path: ./m.gguf, license: mit}\n"
        # No engine and no target packages: only the controller wheelhouse is built.
        "targets: {llama_cpp_python: false}\n"
    )
    lock(load_spec(d / "airlock.yaml"))
    opts = BuildOptions(out_dir=d / "dist", keys=(str(d / "key"),), source_date_epoch=EPOCH)
    result = build(d / "airlock.yaml", opts)
    (d / "dist" / "allowed_signers").write_text(
        f'builder@test namespaces="airlock-manifest-v1" {pub}\n'
    )
    ctl = d / "ctl"
    ctl.mkdir()
    parts = ["SHA256SUMS", "controller", "playbooks", "runtime", "templates"]
    subprocess.run(["tar", "-xf", str(result.path), "-C", str(ctl), *parts], check=True)
    subprocess.run(
        ["sha256sum", "--check", "--ignore-missing", "--quiet", "--strict", "SHA256SUMS"],
        cwd=ctl,
        check=True,
    )
    return Bundle(tar=result.path, ctl=ctl)


class Chroot:
    """A cached Debian tree under a private overlay, entered with no network."""

    def __init__(self, root: Path, work: Path, binds: dict[str, Path]) -> None:
        self.root, self.work, self.binds = root, work, binds
        for sub in ("upper", "work", "merged"):
            (work / sub).mkdir(parents=True, exist_ok=True)

    def run(self, argv: Sequence[str], *, cwd: str = "/") -> subprocess.CompletedProcess[str]:
        merged = self.work / "merged"
        lines = [
            "set -e",
            f"mount -t overlay overlay -o lowerdir={self.root},upperdir={self.work / 'upper'},"
            f"workdir={self.work / 'work'} {merged}",
            f"mount -t proc proc {merged}/proc",
        ]
        for inside, outside in self.binds.items():
            target = f"{merged}{inside}"
            lines += [
                f"mkdir -p {target}",
                f"mount --bind {outside} {target}",
                f"mount -o remount,bind,ro {target}",
            ]
        inner = f"cd {shlex.quote(cwd)} && exec {shlex.join(argv)}"
        lines.append(
            f"exec chroot {merged} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "
            f"HOME=/root LANG=C.UTF-8 /bin/sh -c {shlex.quote(inner)}"
        )
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--net",
                "--propagation",
                "private",
                "sh",
                "-c",
                "\n".join(lines),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )


def _chroot(suite: str, tmp_path: Path, bundle: Bundle) -> Chroot:
    assert os.geteuid() == 0, "needs root (overlay mounts, chroot, network namespaces)"
    root = debian_rootfs(suite, include=("python3",))
    return Chroot(root, tmp_path / suite, {"/ctl": bundle.ctl, "/bundle": bundle.tar.parent})


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_trixie_python313_without_python3_venv_bootstraps_offline_and_verifies(
    bundle: Bundle, tmp_path: Path
) -> None:
    box = _chroot("trixie", tmp_path, bundle)
    assert _ok(box.run(["python3", "-c", "import sys; print(sys.version_info[:2])"])) == (
        "(3, 13)\n"
    )
    # No route and no interface up: nothing in there can reach a network.
    routes = _ok(box.run(["cat", "/proc/net/route"])).splitlines()
    assert [r for r in routes if not r.startswith("Iface")] == [], routes
    probe = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=5)"
    unreachable = box.run(["python3", "-c", probe])
    assert unreachable.returncode != 0 and "Network is unreachable" in unreachable.stderr
    # The old documented command fails here: Debian's python3 without python3-venv.
    stock = box.run(["python3", "-m", "venv", "/tmp/stock"])
    assert stock.returncode != 0
    assert re.search(r"ensurepip is not\s+available", stock.stdout + stock.stderr), stock

    out = _ok(box.run(BOOTSTRAP, cwd="/ctl"))
    assert "controller ready: /opt/airlock-controller (Python 3.13" in out
    version = _ok(box.run([f"{VENV}/ansible-playbook", "--version"]))
    assert f"ansible-playbook [core {ANSIBLE_CORE_SERIES['3.13']}." in version
    assert "python version = 3.13" in version
    verify = box.run(
        [
            f"{VENV}/airlock",
            "verify",
            f"/bundle/{bundle.tar.name}",
            "--allowed-signers",
            "/bundle/allowed_signers",
            "--threshold",
            "1",
        ]
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "demo 1.0.0 (sequence 1) verified" in verify.stdout + verify.stderr
    # The venv has the pinned pip too, for later offline use.
    assert _ok(box.run([f"{VENV}/python", "-m", "pip", "--version"])).startswith("pip ")
    # Not the build side: airlock's build extra is not in the closure, and the build
    # commands say what is missing instead of a traceback.
    dists = _ok(box.run([f"{VENV}/python", *LIST_DISTRIBUTIONS]))
    assert "ansible-core" in dists and "airlock" in dists
    for name in ("ziglang", "huggingface-hub", "httpx2", "httpcore2"):
        assert f"'{name}'" not in dists, dists
    refused = box.run([f"{VENV}/airlock", "build", "airlock.yaml"], cwd="/tmp")
    assert refused.returncode == 50, refused.stdout + refused.stderr
    assert (
        "airlock build needs airlock's build dependencies (the build extra), which are not "
        "installed here: missing huggingface_hub, httpx2, httpcore2, ziglang" in refused.stderr
    )
    assert "Traceback" not in refused.stderr


def test_trixie_refuses_a_tampered_pip_wheel_before_running_it(
    bundle: Bundle, tmp_path: Path
) -> None:
    ctl = tmp_path / "ctl"
    shutil.copytree(bundle.ctl, ctl)
    [pip] = ctl.glob("controller/pip-*.whl")
    pip.write_bytes(pip.read_bytes() + b"\0")
    box = Chroot(
        debian_rootfs("trixie", include=("python3",)),
        tmp_path / "trixie",
        {"/ctl": ctl, "/bundle": bundle.tar.parent},
    )
    proc = box.run(BOOTSTRAP, cwd="/ctl")
    assert proc.returncode == 60, proc.stdout + proc.stderr
    assert f"{pip.name}: sha256" in proc.stderr and "is not the one" in proc.stderr
    assert box.run(["test", "-e", "/opt/airlock-controller"]).returncode == 1


def test_bullseye_python39_is_refused_naming_the_versions_and_the_fix(
    bundle: Bundle, tmp_path: Path
) -> None:
    box = _chroot("bullseye", tmp_path, bundle)
    assert _ok(box.run(["python3", "-c", "import sys; print(sys.version_info[:2])"])) == (
        "(3, 9)\n"
    )
    proc = box.run(BOOTSTRAP, cwd="/ctl")
    assert proc.returncode == 50, proc.stdout + proc.stderr
    err = proc.stderr
    assert "Python 3.9 cannot run this bundle's Ansible controller" in err
    for v in CONTROLLER_PYTHONS:
        assert f"Python {v} (ansible-core {ANSIBLE_CORE_SERIES[v]}." in err
    assert "does not support Python 3.9 on the controller" in err
    assert "hint: run this command with python3.10 or python3.11 or" in err
    # Refused before anything was written.
    assert box.run(["test", "-e", "/opt/airlock-controller"]).returncode == 1


def test_manifest_and_sbom_record_one_closure_per_controller_python(bundle: Bundle) -> None:
    with tarfile.open(bundle.tar) as tar:
        manifest = json.load(tar.extractfile("airlock/manifest.json"))  # type: ignore[arg-type]
        sbom = json.load(tar.extractfile("evidence/sbom.cdx.json"))  # type: ignore[arg-type]
    props = manifest["components"]["controller"]["properties"]
    assert props["pythons"] == list(CONTROLLER_PYTHONS)
    assert [t["requirements"] for t in props["targets"]] == [
        f"controller/requirements-cp{v.replace('.', '')}-manylinux_2_28_x86_64.txt"
        for v in CONTROLLER_PYTHONS
    ]
    assert set(props["ansible_core"]) == set(CONTROLLER_PYTHONS)
    assert props["bootstrap"] == "python3 -m runtime.controller /opt/airlock-controller"
    files = {f["path"] for f in manifest["files"]}
    refs: set[str] = set()
    stack = list(sbom["components"])
    while stack:
        c = stack.pop()
        refs.add(c.get("bom-ref", ""))
        stack += c.get("components", [])
    for v in CONTROLLER_PYTHONS:
        abi = f"cp{v.replace('.', '')}"
        # Each Python's own compiled wheels (PyYAML has no abi3 wheel) are in both records.
        [pyyaml] = [
            w["file"] for w in props["wheels"] if w["name"].lower() == "pyyaml" and abi in w["file"]
        ]
        assert pyyaml in files and f"wheel:{pyyaml}" in refs


# No Debian suite the registry serves has Python 3.10 (bullseye: 3.9, bookworm: 3.11,
# trixie: 3.13), so the 3.10 controller is pyenv's CPython 3.10 on this machine, run with
# no network and a bare environment (no PIP_*, no pip.conf reaches the bootstrap).
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
PYTHON310 = next(iter(sorted(PYENV.glob("3.10.*/bin/python3.10"))), PYENV / "3.10.x")


def _offline(argv: Sequence[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]
    return subprocess.run(
        ["unshare", "--net", *env, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _module_options(playbooks: Path) -> dict[str, set[str]]:
    """``{module: option names}`` of every ``ansible.builtin`` task in ``playbooks`` (not
    ``set_fact``, whose keys are variables)."""
    used: dict[str, set[str]] = {}
    stack: list[object] = []
    for f in sorted(playbooks.rglob("*.yml")):
        stack.append(yaml.safe_load(f.read_text()))
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack += node
        elif isinstance(node, dict):
            for key, value in node.items():
                if key == "ansible.builtin.set_fact":
                    continue  # its keys are variable names, not options
                if isinstance(key, str) and key.startswith("ansible.builtin."):
                    if isinstance(value, dict):
                        used.setdefault(key, set()).update(value)
                    else:
                        used.setdefault(key, set())
                else:
                    stack.append(value)
    return used


@dataclass(frozen=True)
class Controller:
    bin: Path
    bootstrap_output: str


@pytest.fixture(scope="module")
def controller310(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Controller:
    """pyenv's CPython 3.10 bootstrapped from the bundle alone, with no network."""
    assert os.geteuid() == 0, "needs root (network namespaces)"
    assert PYTHON310.is_file(), (
        f"no CPython 3.10 under {PYENV}: this test needs pyenv's 3.10, as "
        "test_playbook_recovery needs its older Pythons"
    )
    dest = tmp_path_factory.mktemp("ctl310") / "opt" / "airlock-controller"
    out = _ok(_offline([str(PYTHON310), "-m", "runtime.controller", str(dest)], cwd=bundle.ctl))
    return Controller(bin=dest / "bin", bootstrap_output=out)


def test_python310_bootstraps_offline_with_ansible_core_217_and_runs_the_playbooks(
    bundle: Bundle, controller310: Controller, tmp_path: Path
) -> None:
    """Python 3.10 (Ubuntu 22.04's python3) gets ansible-core 2.17, the newest series that
    supports a 3.10 controller; the playbooks are checked with that ansible-core."""
    probe = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=5)"
    unreachable = _offline([str(PYTHON310), "-c", probe], cwd=bundle.ctl)
    assert unreachable.returncode != 0 and "Network is unreachable" in unreachable.stderr

    dest = controller310.bin.parent
    assert f"controller ready: {dest} (Python 3.10, ansible-core 2.17." in (
        controller310.bootstrap_output
    )
    bin_ = controller310.bin
    version = _ok(_offline([str(bin_ / "ansible-playbook"), "--version"], cwd=tmp_path))
    assert f"ansible-playbook [core {ANSIBLE_CORE_SERIES['3.10']}." in version
    assert "python version = 3.10" in version

    # The bundle's playbooks parse with ansible-core 2.17 and use no module option that
    # 2.17 lacks (ansible-doc of that venv is the reference).
    playbooks = bundle.ctl / "playbooks"
    env = {"ANSIBLE_CONFIG": str(playbooks / "ansible.cfg")}
    books = sorted(playbooks.glob("*.yml"))
    assert {b.name for b in books} >= {"install.yml", "verify.yml", "uninstall.yml"}
    for book in books:
        check = subprocess.run(
            [str(bin_ / "ansible-playbook"), "-i", "localhost,", "--syntax-check", str(book)],
            cwd=playbooks,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "[WARNING]" not in check.stderr, check.stderr
    used = _module_options(playbooks)
    assert "ansible.builtin.systemd_service" in used and "ansible.builtin.copy" in used
    docs = json.loads(
        _ok(
            _offline([str(bin_ / "ansible-doc"), "-j", "-t", "module", *sorted(used)], cwd=tmp_path)
        )
    )
    for module, options in sorted(used.items()):
        known = set(docs[module]["doc"].get("options", {}))
        known |= {
            a for o in docs[module]["doc"].get("options", {}).values() for a in o.get("aliases", [])
        }
        assert options <= known, f"{module}: {sorted(options - known)} unknown to ansible-core 2.17"

    verify = _offline(
        [
            str(bin_ / "airlock"),
            "verify",
            str(bundle.tar),
            "--allowed-signers",
            str(bundle.tar.parent / "allowed_signers"),
            "--threshold",
            "1",
        ],
        cwd=tmp_path,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "demo 1.0.0 (sequence 1) verified" in verify.stdout + verify.stderr
    # The build side is not installed for 3.10 and says so instead of a traceback.
    refused = _offline([str(bin_ / "airlock"), "build", "airlock.yaml"], cwd=tmp_path)
    assert refused.returncode == 50, refused.stdout + refused.stderr
    assert "airlock build needs Python 3.11 or newer (this is Python 3.10)" in refused.stderr
    assert "Traceback" not in refused.stderr
    modules = _ok(
        _offline(
            [str(bin_ / "python"), *LIST_DISTRIBUTIONS],
            cwd=tmp_path,
        )
    )
    assert "ansible-core" in modules and "airlock" in modules
    assert "httpx2" not in modules and "huggingface-hub" not in modules


def test_python310_controller_installs_verifies_and_uninstalls_a_real_host(
    controller310: Controller, tmp_path: Path
) -> None:
    """The playbooks run end to end under ansible-core 2.17, from the bootstrapped 3.10
    venv: install on a disconnected test host (real sshd, the real engine behind the
    health gate), a rerun that changes nothing, verify, uninstall."""
    signer = make_signer(tmp_path / "keys")
    release = make_bundle(tmp_path, real_engine(), signer, version="1.0.0", sequence=1)
    with TestFleet(1, workdir=tmp_path / "fleet") as fleet:
        host = fleet.hosts[0]

        def play(book: str) -> PlaybookRun:
            run = run_playbook(
                fleet, tmp_path, book, bundle=release, signer=signer, controller=controller310.bin
            )
            assert run.rc == 0, run.output[-4000:]
            assert run.recap()[host.name]["failed"] == 0, run.output[-4000:]
            return run

        assert play("install.yml").changed(host.name) > 0
        state = json.loads(host.run("cat /var/lib/airlock/state.json").stdout)
        assert state["current"] == "1.0.0"
        assert play("install.yml").changed(host.name) == 0
        assert play("verify.yml").changed(host.name) == 0
        play("uninstall.yml")
        left = host.run("ls -d /opt/airlock /etc/airlock /var/lib/airlock 2>/dev/null", check=False)
        assert left.stdout.strip() == "", left.stdout

"""install.yml refuses a host whose glibc cannot load the bundle's engine, before any transfer.

A real signed bundle whose engine records a ``glibc_min`` above the test host's glibc (the
same machine's Debian 12 userland), one disconnected test host over real SSH: preflight
shows runtime.libc's refusal with both versions named, and no byte of the bundle reaches
the host.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bundler.demo.hosts import TestFleet

from .playbook_support import make_bundle, make_signer, real_engine, run_playbook

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_host_below_the_engines_glibc_is_refused_before_any_transfer(tmp_path: Path) -> None:
    signer = make_signer(tmp_path / "keys")
    bundle = make_bundle(
        tmp_path,
        real_engine(),
        signer,
        version="1.0.0",
        sequence=1,
        engine_overrides={"glibc_min": "99.0", "glibcxx_min": None},
    )
    have = os.confstr("CS_GNU_LIBC_VERSION").split()[1]  # the test host's userland is ours
    with TestFleet(1, workdir=tmp_path / "fleet") as fleet:
        run = run_playbook(fleet, tmp_path, "install.yml", bundle=bundle, signer=signer)
        assert run.rc != 0
        assert f"REFUSED on {fleet.hosts[0].name}" in run.output
        assert "this host's C runtime is older than the bundle's engine needs" in run.output
        assert f"the engine needs glibc 99.0 or newer; this host has glibc {have}" in run.output
        assert "Preflight | the host's glibc and libstdc++ can load" in run.output
        host = fleet.hosts[0]
        out = host.run("ls /opt/airlock/incoming /opt/airlock/releases 2>/dev/null", check=False)
        assert out.stdout.strip() == ""  # nothing transferred, nothing unpacked

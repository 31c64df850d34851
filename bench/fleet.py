"""Fleet install benchmark: install.yml wall time on 1 vs N hosts, transfer+unpack vs scp+sha256.

Targets: N=4 hosts take <= 1.5x one host; per host, the playbook's transfer (tail | ssh cat,
resumable) plus ``runtime.unpack`` (hash every member while writing) take <= 1.3x a raw
``scp`` plus ``openssl dgst -sha256`` of the same file on the host.

    sudo .venv/bin/python bench/fleet.py --hosts 4 --filler-mib 512
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bundler.demo.hosts import TestFleet  # noqa: E402
from tests.integration.playbook_support import (  # noqa: E402
    make_bundle,
    make_signer,
    real_engine,
    run_playbook,
)


def _timed_install(n: int, work: Path, bundle: object, signer: object) -> float:
    with TestFleet(n, workdir=work / f"fleet{n}") as fleet:
        start = time.monotonic()
        run = run_playbook(fleet, work, "install.yml", bundle=bundle, signer=signer)  # type: ignore[arg-type]
        seconds = time.monotonic() - start
        if run.rc != 0:
            raise SystemExit(f"install on {n} host(s) failed:\n{run.output[-3000:]}")
    return seconds


def _ssh(fleet: TestFleet, address: str, command: str, **kw: object) -> None:
    argv = ["ssh", "-i", str(fleet.key.private), *fleet.ssh_args(), f"root@{address}", command]
    subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]


def _transfer_vs_reference(work: Path, bundle_path: Path, digest: str) -> tuple[float, float]:
    with TestFleet(1, workdir=work / "fleet-xfer") as fleet:
        host = fleet.hosts[0]
        zip_path = work / "runtime.zip"
        subprocess.run(
            [sys.executable, "-m", "runtime.release", "zip-self", str(zip_path)],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        _ssh(fleet, host.address, "mkdir -p /opt/bench/lib /opt/bench/releases")
        subprocess.run(
            ["scp", "-q", "-i", str(fleet.key.private), *fleet.ssh_args(), str(zip_path),
             f"root@{host.address}:/opt/bench/lib/runtime.zip"],
            check=True,
        )  # fmt: skip
        # reference: scp, then hash the file once on the host
        start = time.monotonic()
        subprocess.run(
            ["scp", "-q", "-i", str(fleet.key.private), *fleet.ssh_args(), str(bundle_path),
             f"root@{host.address}:/opt/bench/ref.tar"],
            check=True,
        )  # fmt: skip
        _ssh(fleet, host.address, "openssl dgst -sha256 /opt/bench/ref.tar",
             stdout=subprocess.DEVNULL)  # fmt: skip
        reference = time.monotonic() - start
        _ssh(fleet, host.address, "rm -f /opt/bench/ref.tar")
        # airlock: what transfer.yml does (append over ssh), then runtime.unpack
        start = time.monotonic()
        with open(bundle_path, "rb") as f:
            _ssh(fleet, host.address, "cat >> /opt/bench/b.tar.part", stdin=f)
        _ssh(fleet, host.address, "mv /opt/bench/b.tar.part /opt/bench/b.tar")
        _ssh(
            fleet,
            host.address,
            "PYTHONPATH=/opt/bench/lib/runtime.zip python3 -m runtime.unpack /opt/bench/b.tar "
            f"/opt/bench/releases/x --manifest-sha256 {shlex.quote(digest)}",
            stdout=subprocess.DEVNULL,
        )
        ours = time.monotonic() - start
    return ours, reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--filler-mib", type=int, default=512, help="model-sized payload")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        work = Path(tmp)
        signer = make_signer(work / "keys")
        bundle = make_bundle(
            work, real_engine(), signer, version="1.0.0", sequence=1,
            filler_bytes=args.filler_mib << 20,
        )  # fmt: skip
        size = bundle.path.stat().st_size
        print(f"bundle: {size / 2**20:.0f} MiB")
        ours, ref = _transfer_vs_reference(work, bundle.path, bundle.manifest_sha256)
        print(f"transfer+unpack {ours:.2f}s vs scp+openssl sha256 {ref:.2f}s: "
              f"ratio {ours / ref:.2f} (target <= 1.3)")  # fmt: skip
        one = _timed_install(1, work, bundle, signer)
        many = _timed_install(args.hosts, work, bundle, signer)
        print(f"install.yml: 1 host {one:.1f}s, {args.hosts} hosts {many:.1f}s: "
              f"ratio {many / one:.2f} (target <= 1.5)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

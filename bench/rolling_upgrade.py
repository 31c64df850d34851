"""Rolling upgrade benchmark: requests that fail, and the longest gap, while install.yml upgrades.

Installs release 1 on N test hosts, then, while one client per host sends a bounded loop of
requests to its public port (each with a 2 s timeout, one every ``--interval`` seconds), runs
install.yml with release 2 and ``-e airlock_serial=S -e airlock_max_fail_percentage=0``:
each host starts release 2 on its idle server slot while release 1 serves through the front,
then moves the front and stops the old slot (docs/OPERATIONS.md, "The upgrade timeline").
Prints, per host and in total, the requests sent, the failed ones (target: 0) and the
longest time between two answered requests. ``--kind systemd`` boots the hosts with
systemd as PID 1 (systemd-nspawn, as tests/integration/test_playbooks_systemd.py does);
``--become`` logs in as an unprivileged user with the sudo rule (test_playbooks_become.py).

    sudo flock /tmp/airlock-netns.lock .venv/bin/python bench/rolling_upgrade.py --hosts 3
    sudo flock /tmp/airlock-netns.lock .venv/bin/python bench/rolling_upgrade.py --hosts 3 \
        --kind systemd --become
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bundler.demo.hosts import HostStarter, TestFleet  # noqa: E402
from bundler.demo.systemdhost import SystemdHost  # noqa: E402
from tests.integration.playbook_support import (  # noqa: E402
    PORT,
    make_bundle,
    make_signer,
    real_engine,
    run_playbook,
)


@dataclass
class Client:
    """One host's request loop."""

    address: str
    path: str
    interval: float
    sent: int = 0
    failed: int = 0
    longest_gap: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        last_ok = time.monotonic()
        body = json.dumps({"prompt": "Hi", "max_tokens": 1}).encode()
        while not self._stop.is_set():
            self.sent += 1
            url = f"http://{self.address}:{PORT}{self.path}"
            req = urllib.request.Request(url, data=body if "completions" in self.path else None)
            req.add_header("Content-Type", "application/json")
            try:
                with opener.open(req, timeout=2) as resp:
                    resp.read()
                now = time.monotonic()
                self.longest_gap = max(self.longest_gap, now - last_ok)
                last_ok = now
            except Exception as e:  # any failure a user would see counts
                self.failed += 1
                key = type(e).__name__
                self.errors[key] = self.errors.get(key, 0) + 1
            time.sleep(self.interval)
        self.longest_gap = max(self.longest_gap, time.monotonic() - last_ok)

    def stop(self) -> None:
        self._stop.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--serial", default="1")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--path", default="/v1/completions", help="or /health")
    parser.add_argument("--kind", choices=["netns", "systemd"], default="netns")
    parser.add_argument("--become", action="store_true", help="log in as a sudo user, not root")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="airlock-bench-roll-"))
    signer = make_signer(work / "keys")
    engine = real_engine()
    v1 = make_bundle(work, engine, signer, version="1.0.0", sequence=1)
    v2 = make_bundle(work, engine, signer, version="2.0.0", sequence=2, seed=1)
    start: HostStarter | None = None
    if args.kind == "systemd":
        from tests.integration.test_playbooks_systemd import PACKAGES
        from tests.rootfs import debian_rootfs

        rootfs = debian_rootfs("bookworm", include=PACKAGES)
        start = functools.partial(SystemdHost.start_systemd, rootfs=rootfs)
    with TestFleet(args.hosts, workdir=work / "fleet", start=start, become=args.become) as fleet:
        run = run_playbook(fleet, work, "install.yml", bundle=v1, signer=signer)
        if run.rc != 0:
            raise SystemExit(f"installing release 1 failed:\n{run.output[-3000:]}")
        clients = [Client(h.address, args.path, args.interval) for h in fleet.hosts]
        threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
        for t in threads:
            t.start()
        time.sleep(2)
        began = time.monotonic()
        extra = ["-e", f"airlock_serial={args.serial}", "-e", "airlock_max_fail_percentage=0"]
        run = run_playbook(fleet, work, "install.yml", *extra, bundle=v2, signer=signer)
        took = time.monotonic() - began
        time.sleep(2)
        for c in clients:
            c.stop()
        for t in threads:
            t.join(timeout=10)
        if run.rc != 0:
            raise SystemExit(f"the rolling upgrade failed:\n{run.output[-3000:]}")
    login = "a sudo user" if args.become else "root"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"rolling upgrade of {args.hosts} {args.kind} hosts as {login}, serial={args.serial}: "
          f"{took:.1f} s ({when})")  # fmt: skip
    print(f"{'host':<16} {'sent':>6} {'failed':>6} {'longest gap':>12}  errors")
    for h, c in zip(fleet.hosts, clients):
        print(f"{h.name:<16} {c.sent:>6} {c.failed:>6} {c.longest_gap:>11.2f}s  {c.errors}")
    failed = sum(c.failed for c in clients)
    gap = max(c.longest_gap for c in clients)
    print(f"total: {sum(c.sent for c in clients)} sent, {failed} failed (target 0), "
          f"longest gap {gap:.2f} s")  # fmt: skip
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

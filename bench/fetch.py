"""Fetch-and-verify through huggingface_hub vs a plain `curl` download of the same bytes.

Both read from the same local Hub server (bundler.demo.hubserver, run as its own process
as a real Hub would be, so it shares no interpreter lock with the client) in the same run
and write to the same file system. airlock's fetch does the HEAD, streams through the
huggingface_hub session, hashes every byte as it arrives (sha256 on a second thread),
checks the LFS sha256 and moves the blob into the Hub cache; curl only downloads.
Target: ratio <= 1.2; exits 1 when missed.

Besides wall times it reports CPU seconds per component (client process, its receiving
thread and its hash/write thread, curl, the server process) and the least wall time that
CPU could take on this machine's cores even if every piece overlapped perfectly: when that
bound is itself above the target, the target is out of reach here, not a matter of tuning.

    .venv/bin/python bench/fetch.py --mib 256 --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.utils import get_session

from bundler.sources.hub import HubClient, HubSettings

REPO = "bench/model"
NAME = "model.gguf"
TARGET = 1.2


@dataclass
class Runs:
    """Wall seconds and CPU seconds of each round of one method."""

    wall: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    main_cpu: list[float] = field(default_factory=list)
    server_cpu: list[Optional[float]] = field(default_factory=list)

    def best(self) -> int:
        return min(range(len(self.wall)), key=self.wall.__getitem__)


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> Optional[float]:
    """CPU seconds of a live process and its threads, dead ones included (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure(
    runs: Runs, server_pid: int, fn: Callable[..., object], *args: object, child: bool = False
) -> None:
    cpu_of = _children_cpu if child else _self_cpu
    s0, c0, m0 = _proc_cpu(server_pid), cpu_of(), time.thread_time()
    t = time.perf_counter()
    fn(*args)
    runs.wall.append(time.perf_counter() - t)
    m1, c1, s1 = time.thread_time(), cpu_of(), _proc_cpu(server_pid)
    runs.client_cpu.append(c1 - c0)
    runs.main_cpu.append(m1 - m0 if not child else 0.0)
    runs.server_cpu.append(s1 - s0 if s0 is not None and s1 is not None else None)


def _fmt(x: Optional[float]) -> str:
    return f"{x:.2f}s" if x is not None else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="file size in MiB (256)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each (5); best counts")
    args = parser.parse_args()

    data = os.urandom(args.mib * 1024 * 1024)
    t = time.perf_counter()
    sha = hashlib.sha256(data).hexdigest()
    hash_s = time.perf_counter() - t
    work = Path(tempfile.mkdtemp(prefix="airlock-bench-fetch-"))
    (work / "repo").mkdir()
    (work / "repo" / NAME).write_bytes(data)
    size = len(data)
    del data
    server = subprocess.Popen(
        [sys.executable, "-m", "bundler.demo.hubserver", "--repo", f"{REPO}={work / 'repo'}"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    curl, fetch, floor, hfdl = Runs(), Runs(), Runs(), Runs()
    try:
        assert server.stdout is not None
        endpoint = server.stdout.readline().strip().partition("=")[2]
        commit = HfApi(endpoint=endpoint, token=False).model_info(REPO, revision="main").sha
        assert commit
        url = f"{endpoint}/{REPO}/resolve/{commit}/{NAME}"

        def curl_get(out: Path) -> None:
            subprocess.run(["curl", "-sSf", "-o", str(out), url], check=True)

        def airlock(cache: Path) -> None:
            settings = HubSettings(endpoint=endpoint, token=None, cache_dir=cache, offline=False)
            got = HubClient(settings).fetch(
                REPO, commit, NAME, size=size, lfs_sha256=sha, blob_id=None
            )
            assert got.sha256 == sha

        def own(cache: Path) -> None:
            # huggingface_hub's own download into a fresh cache: no digest check at all.
            hf_hub_download(REPO, NAME, revision=commit, cache_dir=cache, endpoint=endpoint)

        def session() -> None:
            # The floor: huggingface_hub's own HTTP session streaming the body to nowhere.
            n = 0
            with get_session().stream("GET", url) as r:
                for chunk in r.iter_raw():
                    n += len(chunk)
            assert n == size

        for _ in range(args.rounds):
            out = work / "curl.out"
            measure(curl, server.pid, curl_get, out, child=True)
            assert out.stat().st_size == size
            out.unlink()
            measure(fetch, server.pid, airlock, work / "hf")
            shutil.rmtree(work / "hf")
            measure(hfdl, server.pid, own, work / "hfdl")
            shutil.rmtree(work / "hfdl")
            measure(floor, server.pid, session)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    mib = args.mib
    cores = _cores()
    print(f"file: {mib} MiB over loopback from bundler.demo.hubserver (own process), ")
    print(f"{args.rounds} rounds, best counts; {cores} cores; CPU of the best round")

    def line(label: str, r: Runs, note: str) -> None:
        b = r.best()
        print(
            f"{label:21}best {r.wall[b]:.3f}s ({mib / r.wall[b]:.0f} MiB/s), median "
            f"{statistics.median(r.wall):.3f}s; CPU client {r.client_cpu[b]:.2f}s, "
            f"server {_fmt(r.server_cpu[b])}{note}"
        )

    line("curl download", curl, "")
    line("airlock fetch+verify", fetch, "")
    line("hf_hub session only", floor, "  (no hashing, no disk: the client's floor)")
    line("hf_hub_download", hfdl, "  (the client's own download, unverified)")
    b = fetch.best()
    curl_best, fetch_best = min(curl.wall), min(fetch.wall)
    ratio = fetch_best / curl_best
    print(
        f"airlock client CPU split: receiving thread {fetch.main_cpu[b]:.2f}s, "
        f"hash and write threads {fetch.client_cpu[b] - fetch.main_cpu[b]:.2f}s"
    )
    print(
        f"sha256 of the file in memory alone: {hash_s:.3f}s = {hash_s / curl_best:.2f}x curl "
        "(one SHA-256 stream cannot be split across cores: no verifier beats this)"
    )
    server_cpu = fetch.server_cpu[b]
    if server_cpu is not None:
        total = fetch.client_cpu[b] + server_cpu
        bound = total / cores
        print(
            f"airlock's CPU (client + server) {total:.2f}s on {cores} cores: no schedule beats "
            f"{bound:.3f}s = {bound / curl_best:.2f}x curl"
        )
    print(f"ratio (airlock / curl): {ratio:.2f}  (target <= {TARGET:.2f})")
    print(f"ratio (airlock / hf_hub_download): {fetch_best / min(hfdl.wall):.2f}")
    print(f"ratio (airlock / hf_hub session floor): {fetch_best / min(floor.wall):.2f}")
    if ratio > TARGET:
        print(f"target missed: {ratio:.2f} > {TARGET:.2f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fetch-and-verify through huggingface_hub vs a plain `curl` download of the same bytes.

Both read from the same local Hub server (bundler.testing.hubserver) in the same run and
write to the same file system. airlock's fetch does the HEAD, streams through http_get,
hashes every byte as it arrives, checks the LFS sha256 and moves the blob into the Hub cache;
curl only downloads. Target: ratio <= 1.2.

    .venv/bin/python bench/fetch.py --mib 256 --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from huggingface_hub import hf_hub_download
from huggingface_hub.utils import get_session

from bundler.hub import HubClient, HubSettings
from bundler.testing.hubserver import HubServer

REPO = "bench/model"
NAME = "model.gguf"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="file size in MiB (256)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (3); best counts")
    args = parser.parse_args()

    data = os.urandom(args.mib * 1024 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    work = Path(tempfile.mkdtemp(prefix="airlock-bench-fetch-"))
    try:
        with HubServer() as hub:
            commit = hub.add_repo(REPO, {NAME: data})
            url = f"{hub.endpoint}/{REPO}/resolve/{commit}/{NAME}"
            curl_times, fetch_times, floor_times, hfdl_times = [], [], [], []
            for i in range(args.rounds):
                out = work / f"curl-{i}"
                t = time.perf_counter()
                subprocess.run(["curl", "-sSf", "-o", str(out), url], check=True)
                curl_times.append(time.perf_counter() - t)
                assert out.stat().st_size == len(data)
                out.unlink()

                settings = HubSettings(
                    endpoint=hub.endpoint, token=None, cache_dir=work / f"hf-{i}", offline=False
                )
                t = time.perf_counter()
                got = HubClient(settings).fetch(
                    REPO, commit, NAME, size=len(data), lfs_sha256=sha, blob_id=None
                )
                fetch_times.append(time.perf_counter() - t)
                assert got.sha256 == sha
                shutil.rmtree(settings.cache_dir)

                # huggingface_hub's own download into a fresh cache: no digest check at all.
                t = time.perf_counter()
                hf_hub_download(
                    REPO, NAME, revision=commit, cache_dir=work / f"hfdl-{i}", endpoint=hub.endpoint
                )
                hfdl_times.append(time.perf_counter() - t)
                shutil.rmtree(work / f"hfdl-{i}")

                # The floor: huggingface_hub's own HTTP session streaming the body to nowhere.
                t = time.perf_counter()
                n = 0
                with get_session().stream("GET", url) as r:
                    for chunk in r.iter_raw():
                        n += len(chunk)
                floor_times.append(time.perf_counter() - t)
                assert n == len(data)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    curl_best, fetch_best = min(curl_times), min(fetch_times)
    mib = args.mib
    print(f"file: {mib} MiB over loopback from bundler.testing.hubserver, {args.rounds} rounds")
    print(
        f"curl download        best {curl_best:.3f}s ({mib / curl_best:.0f} MiB/s), "
        f"median {statistics.median(curl_times):.3f}s"
    )
    print(
        f"airlock fetch+verify best {fetch_best:.3f}s ({mib / fetch_best:.0f} MiB/s), "
        f"median {statistics.median(fetch_times):.3f}s"
    )
    floor_best = min(floor_times)
    print(
        f"hf_hub session only  best {floor_best:.3f}s ({mib / floor_best:.0f} MiB/s), "
        "no hashing, no disk: the Python HTTP client's floor"
    )
    hfdl_best = min(hfdl_times)
    print(
        f"hf_hub_download      best {hfdl_best:.3f}s ({mib / hfdl_best:.0f} MiB/s), "
        "the client's own download, unverified"
    )
    ratio = fetch_best / curl_best
    print(f"ratio (airlock / curl): {ratio:.2f}  (target <= 1.20)")
    print(f"ratio (airlock / hf_hub_download): {fetch_best / hfdl_best:.2f}")
    print(f"ratio (airlock / hf_hub session floor): {fetch_best / floor_best:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

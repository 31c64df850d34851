"""Benchmark: ``airlock pack`` vs ``tar cf`` and ``airlock verify`` vs sha256sum / openssl.

Generates N GiB of incompressible files, then times every tool on the same data (warm page
cache for all, and an idle disk: ``sync`` before every run, so no tool pays for the previous
one's writeback), prints ratios and each airlock command's peak RSS, and exits 1 when a
target in TARGETS is missed.

Pack is timed four ways:

- ``airlock pack DIR`` (the CLI, no digest known): the manifest, with every file's sha256,
  leads the archive, and the whole-archive signature hashes the archive from its first
  byte. Each input byte is read once (issue 2), so the files are hashed as they are copied,
  and the archive hash can only start after the copy: two SHA-256 passes in a row. Their
  floor (airlock's startup + 2 x one in-process SHA-256 pass over the same bytes) is
  printed beside it: above 1.10x ``tar cf`` wherever one SHA-256 pass takes more than
  about half as long as tar (here: 0.7x), so the CLI is measured but not held to the
  target. (Reading the inputs twice, hashing all files first spread over the cores, could
  get below that floor on many cores; it is not done: read once is the rule.)
- ``airlock pack --fsync`` against ``tar cf`` + ``sync``: the durable variants.
- pack as ``airlock build`` runs it after fresh downloads (digests known from the
  download, every file re-hashed as copied: two hashes in one pass, on two cores here).
- pack as ``airlock build`` runs it from a checked Hub cache (digests known and vouched by
  fsio.FileStamp: the copy and one archive hash). The target applies to this one: it is
  what ``airlock pack`` is for in the build, and the only pack whose work is the same as
  tar's plus the one hash the signature needs.

    .venv/bin/python bench/pack_verify.py --gib 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bundler from this checkout (and not bench/runtime.py as the package ``runtime``)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGETS = {"pack(build, cache)/tar": 1.10, "verify/openssl": 1.10, "rss_mib": 200}
BIN = Path(sys.executable).parent


def run(cmd: list[str], **kw) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS in MiB."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {cmd}")
    return elapsed, usage.ru_maxrss / 1024


def best(cmd: list[str], repeat: int, before=None, **kw) -> tuple[float, float]:
    results = []
    for _ in range(repeat):
        if before:
            before()
        os.sync()  # start every run with no writeback of earlier runs in flight
        results.append(run(cmd, **kw))
    return min(r[0] for r in results), max(r[1] for r in results)


# ``airlock build`` passes the digests it got while downloading (pack then writes in one
# pass); the CLI has no such input, so this runs the library call the build makes.
KNOWN_PACK = """
import json, sys
from datetime import datetime, timezone
from pathlib import Path
from bundler.bundle.pack import pack
from bundler.fsio import FileStamp
from bundler.ssh.keys import load_signer
stage, key, out, digests, stamps = sys.argv[1:6]
pack(Path(stage), name="bench", version="1", sequence=1,
     expires=datetime(2036, 1, 1, tzinfo=timezone.utc), components={},
     signers=[load_signer(Path(key))], out_dir=Path(out),
     known_digests=json.loads(Path(digests).read_text()),
     stamps={p: FileStamp(*v) for p, v in json.loads(Path(stamps).read_text()).items()})
"""


def check_like_the_cache(stage: Path, digests: dict[str, str]) -> dict[str, list[int]]:
    """Hash every file as a build checks its Hub cache blobs; the stamps that vouch for them."""
    from bundler.fsio import vouching_stamp

    stamps: dict[str, list[int]] = {}
    for rel, want in digests.items():
        started = time.time_ns()
        with open(stage / rel, "rb") as f:
            before = os.fstat(f.fileno())
            h = hashlib.sha256()
            while chunk := f.read(1 << 20):
                h.update(chunk)
            stamp = vouching_stamp(before, os.fstat(f.fileno()), started)
        if h.hexdigest() != want or stamp is None:
            raise SystemExit(f"{rel}: changed since it was written, or written too recently")
        stamps[rel] = [stamp.dev, stamp.ino, stamp.size, stamp.mtime_ns]
    return stamps


HASH_ONCE = """
import hashlib, mmap, sys, time
with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
    start = time.perf_counter()
    hashlib.sha256(m)
    print(time.perf_counter() - start)
"""


def sha256_seconds(path: Path, repeat: int) -> float:
    """Best time for one SHA-256 pass over ``path`` from the page cache (mmap, as pack does).

    In a child process: a 2 GiB mapping here would raise the peak RSS that every later
    child inherits at fork (ru_maxrss).
    """
    return min(
        float(subprocess.check_output([sys.executable, "-c", HASH_ONCE, str(path)]))
        for _ in range(repeat)
    )


def make_data(stage: Path, gib: float, digests: dict[str, str]) -> int:
    """Write the files, hashing them as written (as a download does); returns the size."""
    total = int(gib * (1 << 30))
    sizes = [total // 2, total // 4, total // 8]
    sizes.append(total - sum(sizes) - 4 * (1 << 20))
    sizes += [1 << 20] * 4  # a few small files as well
    for i, size in enumerate(sizes):
        d = stage / ("models" if i < 2 else "wheels")
        d.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(d / f"f{i}.bin", "wb") as f:
            left = size
            while left:
                n = min(left, 1 << 24)
                chunk = os.urandom(n)
                h.update(chunk)
                f.write(chunk)
                left -= n
        digests[f"{d.name}/f{i}.bin"] = h.hexdigest()
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="data size in GiB (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per tool; best is kept")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also time pack and verify from this source tree (e.g. `git archive REV bundler "
        "runtime | tar -x -C DIR`), in the same run, for before/after numbers",
    )
    args = parser.parse_args()
    airlock = str(BIN / "airlock")
    work = Path(tempfile.mkdtemp(prefix="airlock-bench-", dir=args.dir))
    try:
        stage = work / "stage"
        digests: dict[str, str] = {}
        total = make_data(stage, args.gib, digests)
        (work / "digests.json").write_text(json.dumps(digests))
        key = work / "key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)],
            check=True,
        )
        (work / "allowed").write_text("bench " + (work / "key.pub").read_text())
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1767225600"}
        out = work / "out"
        tar_out = work / "plain.tar"
        bundle = out / "bench-1.tar"

        def clean_pack() -> None:
            shutil.rmtree(out, ignore_errors=True)

        def clean_tar() -> None:
            tar_out.unlink(missing_ok=True)

        # Warm the page cache for the inputs once, so every tool sees the same state.
        subprocess.run(["cat", *map(str, stage.rglob("*.bin"))], stdout=subprocess.DEVNULL)
        t_tar, _ = best(["tar", "cf", str(tar_out), "-C", str(stage), "."], args.repeat, clean_tar)
        # the durable reference, for pack --fsync (which flushes before its atomic rename)
        tar_sync = f"tar cf {tar_out} -C {stage} . && sync {tar_out}"
        t_tar_sync, _ = best(["sh", "-c", tar_sync], args.repeat, clean_tar)
        pack_cmd = [airlock, "pack", str(stage), "--name", "bench", "--version", "1",
                    "--key", str(key), "--out", str(out), "--expires", "2036-01-01"]  # fmt: skip
        # The disk's floor for a durable write of these bytes: no reading, hashing or page
        # cache, just the tar's bytes written with O_DIRECT (tells the disk bound from code).
        floor_out = work / "floor.bin"
        floor_cmd = [
            "dd",
            f"if={tar_out}",
            f"of={floor_out}",
            "bs=16M",
            "oflag=direct",
            "conv=fsync",
        ]
        subprocess.run(["tar", "cf", str(tar_out), "-C", str(stage), "."], check=True)
        t_hash = sha256_seconds(tar_out, args.repeat)
        try:
            t_floor, _ = best(floor_cmd, args.repeat, lambda: floor_out.unlink(missing_ok=True))
        except SystemExit:  # a file system without O_DIRECT (tmpfs)
            t_floor = float("nan")
        floor_out.unlink(missing_ok=True)
        clean_tar()
        t_pack, rss_pack = best(pack_cmd, args.repeat, clean_pack, env=env)
        t_durable, _ = best([*pack_cmd, "--fsync"], args.repeat, clean_pack, env=env)
        (work / "none.json").write_text("{}")
        known_cmd = [sys.executable, "-c", KNOWN_PACK, str(stage), str(key), str(out),
                     str(work / "digests.json"), str(work / "none.json")]  # fmt: skip
        t_known, rss_known = best(known_cmd, args.repeat, clean_pack, env=env)
        (work / "stamps.json").write_text(json.dumps(check_like_the_cache(stage, digests)))
        cached_cmd = [*known_cmd[:-1], str(work / "stamps.json")]
        t_cached, rss_cached = best(cached_cmd, args.repeat, clean_pack, env=env)
        verify_cmd = [airlock, "verify", str(bundle), "--allowed-signers", str(work / "allowed")]
        t_verify, rss_verify = best(verify_cmd, args.repeat)
        if args.baseline:
            base_env = {**env, "PYTHONPATH": str(args.baseline.resolve())}
            t_base, rss_base = best(pack_cmd, args.repeat, clean_pack, env=base_env)
            t_base_verify, _ = best(verify_cmd, args.repeat, env=base_env)
        t_sum, _ = best(["sha256sum", str(bundle)], args.repeat)
        t_start, _ = best([airlock, "--version"], args.repeat)
        t_ossl, _ = best(["openssl", "dgst", "-sha256", str(bundle)], args.repeat)
        gib = total / (1 << 30)
        print(f"data: {gib:.2f} GiB incompressible, best of {args.repeat}, warm page cache")
        print(f"  tar cf           {t_tar:7.2f} s  {gib / t_tar:6.2f} GiB/s")
        print(f"  tar cf + fsync   {t_tar_sync:7.2f} s  {gib / t_tar_sync:6.2f} GiB/s")
        print(f"  disk floor       {t_floor:7.2f} s  (dd oflag=direct conv=fsync of the tar)")
        print(
            f"  airlock pack     {t_pack:7.2f} s  {gib / t_pack:6.2f} GiB/s  rss {rss_pack:.0f} MiB"
            "  (CLI: no digest known)"
        )
        print(f"  pack --fsync     {t_durable:7.2f} s  {gib / t_durable:6.2f} GiB/s")
        print(
            f"  pack, build      {t_known:7.2f} s  {gib / t_known:6.2f} GiB/s"
            f"  rss {rss_known:.0f} MiB  (digests from the download, re-hashed in the copy)"
        )
        print(
            f"  pack, build      {t_cached:7.2f} s  {gib / t_cached:6.2f} GiB/s"
            f"  rss {rss_cached:.0f} MiB  (from a checked Hub cache: digests vouched by stamps)"
        )
        if args.baseline:
            print(
                f"  baseline pack    {t_base:7.2f} s  {gib / t_base:6.2f} GiB/s"
                f"  rss {rss_base:.0f} MiB  verify {t_base_verify:.2f} s  ({args.baseline})"
            )
        print(f"  airlock startup  {t_start:7.2f} s  (airlock --version: imports only)")
        print(f"  one sha256 pass  {t_hash:7.2f} s  (hashlib over the tar from the page cache)")
        print(f"  sha256sum        {t_sum:7.2f} s  {gib / t_sum:6.2f} GiB/s")
        print(f"  openssl sha256   {t_ossl:7.2f} s  {gib / t_ossl:6.2f} GiB/s")
        print(
            f"  airlock verify   {t_verify:7.2f} s  {gib / t_verify:6.2f} GiB/s"
            f"  rss {rss_verify:.0f} MiB"
        )
        ratios = {
            "pack(build, cache)/tar": t_cached / t_tar,
            "pack(build, download)/tar": t_known / t_tar,
            "pack(CLI)/tar": t_pack / t_tar,
            "  its floor: 2 sha256 in a row/tar": (t_start + 2 * t_hash) / t_tar,
            "pack --fsync/tar+fsync": t_durable / t_tar_sync,
            "disk floor/tar": t_floor / t_tar,
            "verify/openssl": t_verify / t_ossl,
            "verify/sha256sum": t_verify / t_sum,
            "verify/openssl (excl. startup)": (t_verify - t_start) / t_ossl,
            "rss_mib": max(rss_pack, rss_known, rss_cached, rss_verify),
        }
        missed = []
        for name, value in ratios.items():
            target = TARGETS.get(name)
            mark = "" if target is None else ("  ok" if value <= target else f"  over {target}")
            if target is not None and value > target:
                missed.append(name)
            print(f"  {name:36} {value:6.2f}{mark}")
        if missed:
            print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
            return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

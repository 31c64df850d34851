"""Conversion + quantization through airlock vs running llama.cpp's two tools by hand.

Both sides use the same input (a random-weight Llama repository in the Hugging Face layout,
bundler.demo.tinyhf, sharded), the same pinned ``convert_hf_to_gguf.py`` in the same
converter environment and the same ``llama-quantize`` binary (both from the build cache;
built first if missing, not timed). By hand: ``python convert_hf_to_gguf.py DIR --outtype
f16 --outfile F16.gguf`` then ``llama-quantize F16.gguf OUT.gguf Q4_K_M N``. airlock:
``bundler.engine.convert.convert`` and ``bundler.engine.quantize.quantize`` into an empty
cache (so both really run: network namespace, offline environment, hashing the output,
caching it). Each side runs in its own process, alternating, best of ``--rounds``; peak RSS
is the larger of the process's own and its children's (``ru_maxrss``). Target: time ratio
<= 1.10 and peak RSS no higher; exits 1 when missed.

    .venv/bin/python bench/convert.py --hidden 512 --layers 8 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bundler.demo.tinyhf import TinyHfOptions, tiny_hf_repo
from bundler.engine import convert, quantize, sdist
from bundler.engine.buildcache import default_cache_dir
from bundler.fsio import hash_file

VERSION = "0.3.36"
QTYPE = "Q4_K_M"
TARGET = 1.10


def _peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def _tools() -> tuple[convert.Converter, convert.ConverterEnv, quantize.QuantizeTool]:
    cache = default_cache_dir()
    source = sdist.fetch_sdist(VERSION, cache_dir=cache)
    conv = convert.converter(source, cache_dir=cache)
    env = convert.converter_env(convert.converter_requirements(conv.tree), cache_dir=cache)
    tool = quantize.build_quantize_tool(source, cache_dir=cache)
    return conv, env, tool


def child(method: str, repo: Path, work: Path, threads: int) -> None:
    conv, env, tool = _tools()
    # the build knows the input digests from the download and the lock: not timed
    inputs = {p.name: (p, hash_file(p)[1]) for p in sorted(repo.iterdir())}
    start = time.monotonic()
    if method == "manual":
        f16 = work / "F16.gguf"
        subprocess.run(
            [
                str(env.python),
                str(conv.tree / convert.SCRIPT),
                str(repo),
                "--outtype",
                "f16",
                "--outfile",
                str(f16),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPYCACHEPREFIX": str(env.pycache)},
        )
        out = work / "OUT.gguf"
        subprocess.run(
            [str(tool.path), str(f16), str(out), QTYPE, str(threads)],
            check=True,
            capture_output=True,
        )
        sha = hash_file(out)[1]
    else:
        cache = work / "cache"
        made = convert.convert(
            conv, env, inputs, repo_name=repo.name, outtype="f16", cache_dir=cache
        )
        q = quantize.quantize(
            tool,
            made.path,
            input_sha256=made.sha256,
            qtype=QTYPE,
            cache_dir=cache,
            threads=threads,
        )
        sha = q.sha256
    wall = time.monotonic() - start
    print(json.dumps({"wall": wall, "rss_mib": _peak_rss_mib(), "sha256": sha}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child", choices=["manual", "airlock"])
    ap.add_argument("--repo", type=Path)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.repo, args.work, args.threads)
        return 0
    _tools()  # build or find the tools first: not timed
    with tempfile.TemporaryDirectory(prefix="airlock-bench-convert-") as t:
        root = Path(t)
        repo = root / "bench-llama"
        repo.mkdir()
        opts = TinyHfOptions(
            hidden=args.hidden, layers=args.layers, ff=args.hidden * 11 // 4, shards=2
        )
        for name, data in tiny_hf_repo(opts).items():
            (repo / name).write_bytes(data)
        size = sum(p.stat().st_size for p in repo.iterdir())
        print(f"input: {size / 2**20:.1f} MiB of safetensors and tokenizer, {QTYPE}")
        results: dict[str, list[dict[str, float]]] = {"manual": [], "airlock": []}
        shas = set()
        for r in range(args.rounds):
            for method in ("manual", "airlock"):
                work = root / f"{method}-{r}"
                work.mkdir()
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        method,
                        "--repo",
                        str(repo),
                        "--work",
                        str(work),
                        "--threads",
                        str(args.threads),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                res = json.loads(out.strip().splitlines()[-1])
                shas.add(res.pop("sha256"))
                results[method].append(res)
                print(
                    f"  round {r + 1} {method:8s} {res['wall']:6.2f} s  {res['rss_mib']:7.1f} MiB"
                )
    best = {m: min(rs, key=lambda x: x["wall"]) for m, rs in results.items()}
    ratio = best["airlock"]["wall"] / best["manual"]["wall"]
    rss = max(x["rss_mib"] for x in results["airlock"])
    rss_ref = max(x["rss_mib"] for x in results["manual"])
    print(
        f"by hand {best['manual']['wall']:.2f} s, airlock {best['airlock']['wall']:.2f} s: "
        f"{ratio:.2f}x (target <= {TARGET}x); peak RSS {rss:.0f} MiB vs {rss_ref:.0f} MiB"
    )
    print(f"outputs identical across every run: {len(shas) == 1}")
    ok = ratio <= TARGET and rss <= rss_ref * 1.02 and len(shas) == 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

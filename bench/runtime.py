"""Generation speed of the bundled llama-server (CPU variant modules) vs reference builds.

Three servers come from the same pinned llama-cpp-python sdist and serve the same generated,
compute-bound tiny model in the same run; rounds alternate between them so machine noise
hits all three:

- the bundled engine: the portable toolchain (zig cc for glibc 2.28, static libc++);
- the system-compiler engine: the same flags built with the build machine's gcc and its
  glibc/libstdc++, i.e. the engine airlock bundled before the glibc floor (issue 14);
  requirement: the bundled engine within 5% of its tokens/s, its cold build <= 1.3x;
- the same server with a -march=native ggml CPU backend (GGML_NATIVE=ON), which the bundler
  never builds: what the variant modules give up against a build for this very CPU.

Build times: ``--cold`` builds both engines back to back in one fresh, empty cache (zig's own
cache included), so both cold times are measured under the same conditions; without it the
times recorded in the cache entries are printed (they may come from different days).

    .venv/bin/python bench/runtime.py [--rounds 3] [--tokens 128] [--variants all] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bundler.demo.tinymodel import TinyModelOptions, write_tiny_model
from bundler.engine import llamacpp, sdist
from bundler.engine.buildcache import BuildCache, default_cache_dir
from bundler.engine.smoke import free_port, server_env

VERSION = "0.3.36"
TARGET_RATIO = 0.95  # bundled / native, and bundled / system compiler
TARGET_BUILD = 1.3  # bundled cold build / system-compiler cold build


def native_build(source: llamacpp.SourceArchive, cache: Path, jobs: int) -> Path:
    """ggml built with GGML_NATIVE=ON (-march=native) and the CPU backend linked in; bench only.

    GGML_NATIVE only changes how ggml's CPU backend is compiled (ggml-cpu/CMakeLists.txt
    adds -march=native to that target alone) and cannot be combined with GGML_BACKEND_DL,
    so the native build is the same source's ggml libraries (libggml, libggml-base,
    libggml-cpu) built with -march=native and no backend modules; the bench runs the same
    llama-server binary against them. Returns the directory holding those libraries.
    """
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DGGML_NATIVE=ON",
        "-DGGML_BACKEND_DL=OFF",
        "-DGGML_OPENMP=OFF",
        "-DGGML_CCACHE=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        "-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib",
    ]
    inputs = {
        "kind": "bench-native",
        "source_sha256": source.sha256,
        "flags": flags,
        "cpu": sorted(llamacpp.cpu_flags()),
        **llamacpp.toolchain(),
    }

    def builder(out: Path, log: Path) -> None:
        tree = sdist.source_tree(source, cache_dir=cache) / "vendor" / "llama.cpp"
        b = out / "_build"
        with open(log, "ab") as fh:
            subprocess.run(
                ["cmake", "-S", str(tree), "-B", str(b), *flags],
                stdout=fh,
                stderr=subprocess.STDOUT,
                check=True,
            )
            subprocess.run(
                ["cmake", "--build", str(b), "-j", str(jobs), "--target", "ggml"],
                stdout=fh,
                stderr=subprocess.STDOUT,
                check=True,
            )
        (out / "lib").mkdir()
        for so in (b / "bin").glob("libggml*.so*"):
            if so.is_file() and not so.is_symlink():
                shutil.copy2(so, out / "lib" / (llamacpp._soname(so) or so.name))
        shutil.rmtree(b)

    return BuildCache(cache).build("bench-native", inputs, builder).path / "lib"


def tokens_per_second(server: Path, cwd: Path, model: Path, tokens: int) -> float:
    port = free_port()
    argv = [
        str(server),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        "512",
        "-np",
        "1",
        "-t",
        "2",
        "--offline",
        "--no-webui",
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=server_env(cwd), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(
                        "server failed:\n" + log.read().decode(errors="replace")[-3000:]
                    )
                time.sleep(0.2)
            body = json.dumps(
                {
                    "prompt": "hello world",
                    "n_predict": tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                    "cache_prompt": False,
                }
            ).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/completion",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=600) as r:
                doc = json.loads(r.read())
            return float(doc["timings"]["predicted_per_second"])
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--variants", default=None, help="comma-separated CPU variants or 'all' (default: demo's)"
    )
    ap.add_argument(
        "--cold", action="store_true", help="build both engines in a fresh, empty cache first"
    )
    ap.add_argument(
        "--cold-cache",
        type=Path,
        default=None,
        help="with --cold: use this new directory as the fresh cache and keep it afterwards",
    )
    args = ap.parse_args(argv)
    cache = default_cache_dir()
    source = sdist.fetch_sdist(VERSION, cache_dir=cache)
    variants: list[str] | str = (
        llamacpp.default_variants()
        if args.variants is None
        else "all"
        if args.variants == "all"
        else args.variants.split(",")
    )
    build_cache = cache
    cold_tmp = None
    if args.cold:
        if args.cold_cache is not None:
            args.cold_cache.mkdir(parents=True)  # must not exist: a cold cache is empty
            build_cache = args.cold_cache
        else:
            cold_tmp = tempfile.TemporaryDirectory(prefix="airlock-bench-cold-", dir=cache)
            build_cache = Path(cold_tmp.name)
        shutil.copytree(cache / "sdist", build_cache / "sdist")
        # zig's own cache follows $AIRLOCK_CACHE: cold too (bundler/engine/portable.py)
        os.environ["AIRLOCK_CACHE"] = str(build_cache)
        source = sdist.fetch_sdist(VERSION, cache_dir=build_cache)

    def build(compiler: llamacpp.Compiler) -> tuple[llamacpp.EngineBuild, float | None]:
        t0 = time.monotonic()
        e = llamacpp.build_engine(
            source,
            variants=variants,
            cuda=None,
            cache_dir=build_cache,
            jobs=args.jobs,
            compiler=compiler,
        )
        return e, (e.cold_seconds if e.cached else time.monotonic() - t0)

    # the portable build first: in --cold it also pays for unpacking the sdist
    engine, cold = build("portable")
    system_engine, system_cold = build("system")
    t0 = time.monotonic()
    build("portable")
    cached = time.monotonic() - t0
    native_libs = native_build(source, build_cache, args.jobs)

    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        stage = Path(tmp) / "engine"
        llamacpp.stage_engine(engine, stage)
        system = Path(tmp) / "system"
        llamacpp.stage_engine(system_engine, system)
        native = Path(tmp) / "native"
        shutil.copytree(stage, native)
        for mod in (native / "lib").glob("libggml-cpu-*.so"):
            mod.unlink()
        for lib in native_libs.iterdir():
            shutil.copy2(lib, native / "lib" / lib.name)
        opts = TinyModelOptions(dim=512, layers=8, heads=8, kv_heads=8, ff=1536, name="bench")
        model = write_tiny_model(Path(tmp) / "bench.gguf", opts)[0]
        bundled: list[float] = []
        system_tps: list[float] = []
        native_tps: list[float] = []
        for _ in range(args.rounds):
            bundled.append(
                tokens_per_second(stage / "bin" / "llama-server", stage / "lib", model, args.tokens)
            )
            system_tps.append(
                tokens_per_second(
                    system / "bin" / "llama-server", system / "lib", model, args.tokens
                )
            )
            native_tps.append(
                tokens_per_second(
                    native / "bin" / "llama-server", native / "lib", model, args.tokens
                )
            )
    if cold_tmp is not None:
        cold_tmp.cleanup()
    b, s, n = (statistics.median(x) for x in (bundled, system_tps, native_tps))
    ratio, vs_system = b / n, b / s
    print(f"model: generated llama, dim 512, 8 layers, ff 1536, f32 ({model.name})")
    print(f"variants bundled: {', '.join(engine.properties['cpu_variants'])}")
    print(f"bundled llama-server ({engine.properties['compiler']}): {b:8.1f} tok/s  {bundled}")
    print(f"system compiler ({system_engine.properties['compiler']}): {s:8.1f} tok/s  {system_tps}")
    print(f"same server, -march=native ggml-cpu: {n:8.1f} tok/s  rounds {native_tps}")
    ok = ratio >= TARGET_RATIO and vs_system >= TARGET_RATIO
    print(f"ratio bundled/system compiler: {vs_system:.3f}  (target >= {TARGET_RATIO})")
    print(f"ratio bundled/native: {ratio:.3f}  (target >= {TARGET_RATIO})")

    def secs(x: float | None) -> str:
        return f"{x:.0f} s" if x is not None else "not recorded"

    print(
        f"engine build{' (both cold, back to back, one fresh cache)' if args.cold else ''}: "
        f"bundled cold {secs(cold)}, system compiler cold {secs(system_cold)}, "
        f"bundled cached {cached:.2f} s"
    )
    if cold is not None and system_cold is not None:
        build_ratio = cold / system_cold
        ok = ok and build_ratio <= TARGET_BUILD
        print(f"ratio cold build bundled/system: {build_ratio:.2f}  (target <= {TARGET_BUILD})")
    print(
        "glibc_min / glibcxx_min: bundled "
        f"{engine.properties['glibc_min']} / {engine.properties['glibcxx_min']}, system "
        f"{system_engine.properties['glibc_min']} / {system_engine.properties['glibcxx_min']}"
    )
    print("OK" if ok else "BELOW TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

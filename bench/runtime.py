"""Generation speed of the bundled llama-server (CPU variant modules) vs a -march=native build.

Both servers come from the same pinned llama-cpp-python sdist and serve the same generated,
compute-bound tiny model in the same run; rounds alternate between them so machine noise
hits both. The native build (GGML_NATIVE=ON: ggml's CPU backend compiled with
-march=native) exists only here: the bundler never builds it. Also prints the bundled
build's cold and cached build times.

    .venv/bin/python bench/runtime.py [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
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
TARGET_RATIO = 0.95


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
    args = ap.parse_args(argv)
    cache = default_cache_dir()
    source = sdist.fetch_sdist(VERSION, cache_dir=cache)

    t0 = time.monotonic()
    engine = llamacpp.build_engine(
        source, variants=llamacpp.default_variants(), cuda=None, cache_dir=cache, jobs=args.jobs
    )
    first = time.monotonic() - t0
    t0 = time.monotonic()
    llamacpp.build_engine(
        source, variants=llamacpp.default_variants(), cuda=None, cache_dir=cache, jobs=args.jobs
    )
    cached = time.monotonic() - t0
    cold = engine.cold_seconds if engine.cached else first
    native_libs = native_build(source, cache, args.jobs)

    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        stage = Path(tmp) / "engine"
        llamacpp.stage_engine(engine, stage)
        native = Path(tmp) / "native"
        shutil.copytree(stage, native)
        for mod in (native / "lib").glob("libggml-cpu-*.so"):
            mod.unlink()
        for lib in native_libs.iterdir():
            shutil.copy2(lib, native / "lib" / lib.name)
        opts = TinyModelOptions(dim=512, layers=8, heads=8, kv_heads=8, ff=1536, name="bench")
        model = write_tiny_model(Path(tmp) / "bench.gguf", opts)[0]
        bundled: list[float] = []
        native_tps: list[float] = []
        for _ in range(args.rounds):
            bundled.append(
                tokens_per_second(stage / "bin" / "llama-server", stage / "lib", model, args.tokens)
            )
            native_tps.append(
                tokens_per_second(
                    native / "bin" / "llama-server", native / "lib", model, args.tokens
                )
            )
    b, n = statistics.median(bundled), statistics.median(native_tps)
    ratio = b / n
    print(f"model: generated llama, dim 512, 8 layers, ff 1536, f32 ({model.name})")
    print(f"variants bundled: {', '.join(llamacpp.default_variants())}")
    print(f"bundled llama-server (variant modules): {b:8.1f} tok/s  rounds {bundled}")
    print(f"same server, -march=native ggml-cpu:    {n:8.1f} tok/s  rounds {native_tps}")
    print(
        f"ratio bundled/native: {ratio:.3f}  (target >= {TARGET_RATIO})  "
        f"{'OK' if ratio >= TARGET_RATIO else 'BELOW TARGET'}"
    )
    cold_txt = f"{cold:.0f} s" if cold is not None else "not recorded"
    print(f"engine build: cold {cold_txt}, cached {cached:.2f} s")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())

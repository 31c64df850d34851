"""Check a CUDA bundle on a real NVIDIA host: detect, select, integrity, serve on the GPU.

CI has no GPU, so this is not a pytest module; it is run by hand (or by the project's
device tool) on a machine with an NVIDIA GPU and driver. Two steps:

``prepare`` (on the build machine, with airlock installed) verifies a signed CUDA bundle
against an ``allowed_signers`` file and unpacks it with ``runtime.unpack`` -- the code a
target host runs -- into a carry directory. Files above ``--max-file-mib`` (NVIDIA's cuBLAS
is 600 MB) are left out and listed with their signed sha256 in ``left-behind.json`` so the
carry fits a small transfer.

``check`` (on the GPU host; Python 3.8+, standard library and the bundle's ``runtime``
package only) then

1. checks the manifest bytes against the digest the controller verified;
2. restores each left-behind CUDA library from a local copy of the same NVIDIA wheel
   (``--cuda-libs DIR``; the device image's pip ``nvidia/*/lib`` directories are searched
   by default) and records whether its sha256 is the signed one;
3. checks every file of the engine and model components against the manifest (drift);
4. runs ``runtime.detect`` on the real host and ``runtime.selection`` on its facts, and
   requires the CUDA backend to be chosen; also re-runs the selection with the driver
   pretended older than the bundle's floor and requires the CPU fallback with its reason;
5. renders the server settings as the install playbook does and runs the release's
   health gate (``/health`` 200 and one real completion), then requires the server log to
   show the CUDA device and the model's layers offloaded to it.

It writes ``report.json`` (and the facts, decision and server log) to ``--out`` and exits
non-zero when any step failed::

    python3 tests/gpu/cuda_host_check.py prepare dist/gpu-1.0.0.tar \\
        --allowed-signers allowed_signers --carry .gpu-carry
    python3 tests/gpu/cuda_host_check.py check --carry .gpu-carry --out /tmp/gpu-report
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CHECKED_COMPONENTS = ("engine", "models")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- prepare


def prepare(
    bundle: Path, allowed_signers: Path, carry: Path, max_file_mib: int, compress_mib: int
) -> int:
    from bundler.bundle.verify import verify_bundle
    from bundler.ssh.trust import load_policy
    from runtime.bundle import parse_manifest, read_metadata
    from runtime.unpack import unpack

    policy = load_policy(allowed_signers)
    report = verify_bundle(bundle, policy)
    meta = read_metadata(bundle)
    if meta.manifest_sha256 != report.manifest_sha256:
        raise SystemExit("the manifest changed between verify and unpack")
    if carry.exists():
        shutil.rmtree(carry)
    carry.mkdir(parents=True)
    release = carry / "release"
    unpack(str(bundle), str(release), manifest_sha256=report.manifest_sha256)
    (carry / "manifest.json").write_bytes(meta.manifest_bytes)
    (carry / "manifest.sha256").write_text(report.manifest_sha256 + "\n")
    manifest = parse_manifest(meta.manifest_bytes)
    left: List[Dict[str, Any]] = []
    packed: List[str] = []
    runtime_dir = (manifest["components"]["engine"]["properties"].get("cuda") or {}).get(
        "runtime_dir", "engine/lib/cuda"
    )
    for entry in manifest["files"]:
        path = release / entry["path"]
        if entry["component"] not in CHECKED_COMPONENTS:
            path.unlink()
        elif entry["size"] > max_file_mib << 20 and entry["path"].startswith(runtime_dir + "/"):
            path.unlink()  # NVIDIA's libraries: restored on the GPU host from the same wheels
            left.append({k: entry[k] for k in ("path", "size", "sha256")})
        elif entry["size"] > compress_mib << 20:
            with open(path, "rb") as src, lzma.open(str(path) + ".xz", "wb", preset=6) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            path.unlink()
            packed.append(entry["path"])
    (carry / "left-behind.json").write_text(json.dumps(left, indent=2) + "\n")
    (carry / "compressed.json").write_text(json.dumps(packed, indent=2) + "\n")
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    print(f"carry {carry}: {size / (1 << 20):.1f} MiB; left behind: {[e['path'] for e in left]}")
    return 0


# --------------------------------------------------------------------------- check


def default_cuda_lib_dirs() -> List[str]:
    """The ``nvidia/*/lib`` directories of every pip installation on this host."""
    found = []
    for pattern in (
        "/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib",
        "/usr/local/lib/python3*/dist-packages/nvidia/*/lib",
        "/usr/lib/python3/dist-packages/nvidia/*/lib",
    ):
        found += sorted(glob.glob(pattern))
    return found


def restore_left_behind(
    release: Path, left: Sequence[Dict[str, Any]], lib_dirs: Sequence[str]
) -> List[Dict[str, Any]]:
    restored = []
    for entry in left:
        name = entry["path"].rsplit("/", 1)[1]
        source = next((Path(d) / name for d in lib_dirs if (Path(d) / name).is_file()), None)
        row: Dict[str, Any] = {"path": entry["path"], "signed_sha256": entry["sha256"]}
        if source is None:
            row.update(found=False)
        else:
            dest = release / entry["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            digest = sha256_file(dest)
            row.update(
                found=True, source=str(source), sha256=digest, identical=digest == entry["sha256"]
            )
        restored.append(row)
    return restored


def drift(release: Path, manifest: Dict[str, Any]) -> List[str]:
    problems = []
    for entry in manifest["files"]:
        if entry["component"] not in CHECKED_COMPONENTS:
            continue
        path = release / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from the signed manifest")
    return problems


def render_env(decision: Dict[str, Any], version: str) -> str:
    """The settings file templates/server.env renders, for one decision."""
    host = decision.get("host") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    # debug log level: llama.cpp prints its CUDA device and offload lines only there
    argv = [*decision["argv"], "--log-verbosity", "4"]
    lines = [
        "AIRLOCK_VERSION=" + shlex.quote(version),
        "AIRLOCK_ARGV=" + shlex.quote(" ".join(shlex.quote(a) for a in argv)),
        "AIRLOCK_CWD=" + shlex.quote(decision.get("cwd") or "."),
        "AIRLOCK_HEALTH_URL=http://{}:{}".format(host, decision["port"]),
        "HF_HUB_OFFLINE=1",
    ]
    lines += [k + "=" + shlex.quote(str(v)) for k, v in sorted(decision.get("env", {}).items())]
    return "\n".join(lines) + "\n"


def log_evidence(log_text: str) -> Dict[str, Any]:
    """What llama.cpp's log says about the CUDA backend and offloading."""
    found = re.search(r"ggml_cuda_init: found (\d+) CUDA devices", log_text)
    # newer llama.cpp lists the devices instead: "  - CUDA0   : NVIDIA H200 (143155 MiB, ...)"
    listed = set(re.findall(r"^.*?- (CUDA\d+)\s*: ", log_text, re.M))
    offload = re.search(r"offloaded (\d+)/(\d+) layers to GPU", log_text)
    return {
        "cuda_devices": int(found.group(1)) if found else len(listed),
        "device_lines": [
            line.strip()
            for line in log_text.splitlines()
            if re.search(r"Device \d+: |- CUDA\d+\s*: |using device CUDA|CUDA : ARCHS", line)
        ][:6],
        "layers_offloaded": [int(offload.group(1)), int(offload.group(2))] if offload else None,
        "cuda_buffers": [
            line.strip()
            for line in log_text.splitlines()
            if re.search(r"CUDA\d+ .*buffer size", line)
        ][:6],
        "assigned_to_cuda": [
            line.strip() for line in log_text.splitlines() if "assigned to device CUDA" in line
        ][:4],
    }


def check(carry: Path, out: Path, lib_dirs: Sequence[str], port: int) -> int:
    from runtime.bundle import parse_manifest
    from runtime.detect import detect
    from runtime.health import health_gate
    from runtime.selection import decide

    out.mkdir(parents=True, exist_ok=True)
    report: Dict[str, Any] = {"ok": False, "failures": []}
    fail = report["failures"].append
    release = carry / "release"
    data = (carry / "manifest.json").read_bytes()
    want = (carry / "manifest.sha256").read_text().strip()
    report["manifest_sha256_ok"] = hashlib.sha256(data).hexdigest() == want
    if not report["manifest_sha256_ok"]:
        fail("manifest bytes do not match the digest the controller verified")
    manifest = parse_manifest(data)
    engine = manifest["components"]["engine"]["properties"]
    report["bundle"] = {
        "name": manifest["name"],
        "version": manifest["version"],
        "cuda": engine["cuda"],
    }

    for rel in json.loads((carry / "compressed.json").read_text()):
        with lzma.open(str(release / rel) + ".xz", "rb") as src, open(release / rel, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(release / rel, 0o755 if "/bin/" in rel else 0o644)
        os.unlink(str(release / rel) + ".xz")
    left = json.loads((carry / "left-behind.json").read_text())
    report["restored"] = restore_left_behind(release, left, lib_dirs)
    for row in report["restored"]:
        if not row["found"]:
            fail(f"{row['path']}: no local copy of this NVIDIA library to restore")
    report["drift"] = drift(release, manifest)
    substituted = {r["path"] for r in report["restored"] if r.get("found") and not r["identical"]}
    for problem in report["drift"]:
        if problem.split(":", 1)[0] not in substituted:
            fail(problem)

    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False)
        (out / "nvidia-smi.txt").write_text(smi.stdout + smi.stderr)
    except OSError as e:
        fail(f"nvidia-smi: {e}")
    facts = detect(Path("/"), release)
    (out / "facts.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    report["gpus"] = facts.get("gpus")
    report["nvidia"] = facts.get("nvidia")

    decision = decide(facts, manifest, {"port": port, "host": "127.0.0.1"}, release_dir=release)
    (out / "decision.json").write_text(json.dumps(decision, indent=2, sort_keys=True) + "\n")
    report["decision"] = {
        k: decision.get(k)
        for k in ("backend", "gpu_layers", "ctx_size", "parallel", "threads", "cpu_variant")
    }
    report["reasons"] = decision.get("reasons")
    if decision.get("backend") != "cuda":
        fail("runtime.selection did not choose the CUDA backend on this GPU host")

    old = json.loads(json.dumps(facts))
    old.setdefault("nvidia", {})["driver_version"] = "525.60.13"
    fallback = decide(old, manifest, {"port": port}, release_dir=release)
    report["old_driver_fallback"] = {
        "backend": fallback.get("backend"),
        "reason": next((r for r in fallback.get("reasons", []) if r.startswith("backend")), None),
    }
    if fallback.get("backend") != "cpu":
        fail("with a driver below the bundle's floor runtime.selection did not fall back to CPU")

    env_file = out / "server.env"
    env_file.write_text(render_env(decision, manifest["version"]))
    log_file = out / "server.log"
    try:
        gate = health_gate(
            str(release), str(env_file), user=None, log_file=str(log_file), timeout=180
        )
        report["health_gate"] = gate
    except Exception as e:  # the report must say what failed, whatever it was
        report["health_gate"] = {"ok": False, "error": type(e).__name__, "message": str(e)}
        fail(f"health gate: {e}")
    log_text = log_file.read_text(errors="replace") if log_file.exists() else ""
    report["log"] = log_evidence(log_text)
    if report["log"]["cuda_devices"] < 1:
        fail("the server log shows no CUDA device (ggml_cuda_init)")
    layers = report["log"]["layers_offloaded"]
    if not (layers and layers[0] > 0) and not report["log"]["assigned_to_cuda"]:
        fail("the server log shows no layers offloaded to the GPU")

    report["ok"] = not report["failures"]
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if report["ok"] else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="verify and unpack a CUDA bundle into a carry directory")
    p.add_argument("bundle", type=Path)
    p.add_argument("--allowed-signers", type=Path, required=True)
    p.add_argument("--carry", type=Path, required=True)
    p.add_argument("--max-file-mib", type=int, default=40, help="leave out bigger CUDA libraries")
    p.add_argument("--compress-mib", type=int, default=8, help="xz-compress bigger files")
    c = sub.add_parser("check", help="run the checks on a GPU host")
    c.add_argument("--carry", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument(
        "--cuda-libs", action="append", default=None, help="directory of NVIDIA libraries"
    )
    c.add_argument("--port", type=int, default=18080)
    args = parser.parse_args(argv)
    if args.step == "prepare":
        return prepare(
            args.bundle, args.allowed_signers, args.carry, args.max_file_mib, args.compress_mib
        )
    lib_dirs = args.cuda_libs or default_cuda_lib_dirs()
    return check(args.carry, args.out, lib_dirs, args.port)


if __name__ == "__main__":
    sys.exit(main())

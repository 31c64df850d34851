"""Runtime selection: the decision document for one host, its I/O edge and its CLI.

``select(facts, manifest)`` is pure: it takes the host facts from ``runtime.detect`` and the
verified bundle manifest (a dict) and returns the decision document (backend, CPU variant,
threads, context and slots, llama-server argv/env), every decision with a one-line reason
for the install report. The parts live beside it: ``runtime.components`` (the manifest's
engine and models records), ``runtime.overrides`` (operator overrides), ``runtime.variants``
(ggml's CPU variant scoring), ``runtime.backend`` (CPU or CUDA), ``runtime.fit`` (the memory
model) and ``runtime.command`` (the llama-server command line). A model that cannot fit
raises ``HostError`` (exit 50) with the numbers. The rules are explained in
docs/SELECTION.md. Standard library only: this runs on target hosts (3.8+).

CLI: ``python3 -m runtime.selection (--facts F.json | --detect) --manifest M.json
[--overrides JSON] [--release-dir DIR] [--json]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple

from runtime.backend import choose_backend
from runtime.command import probe_server_flags, server_command
from runtime.components import find_model, require_engine
from runtime.errors import AirlockError, HostError, UsageError
from runtime.fit import (
    MEMORY_SHARE,
    ModelShape,
    context_plans,
    effective_memory,
    fit_plan,
    gib,
    gpu_offload,
)
from runtime.libc import check_engine
from runtime.overrides import check_overrides, fixed_value
from runtime.variants import bundled_variants, choose_variant

DECISION_SCHEMA = 1

Decision = Dict[str, Any]


# --------------------------------------------------------------------------- manifest


def _manifest_paths(manifest: Dict[str, Any]) -> List[str]:
    return [str(f.get("path")) for f in manifest.get("files") or [] if isinstance(f, dict)]


def _threads(facts: Dict[str, Any], forced: Optional[int]) -> Tuple[int, str]:
    cpu = facts.get("cpu") or {}
    cg = facts.get("cgroup") or {}
    if forced is not None:
        return forced, f"threads {forced}: operator override"
    cores = int(cpu.get("physical_cores") or 0) or int(cpu.get("usable") or 0) or 1
    why = f"threads {cores}: physical cores usable by this process"
    limit = cg.get("cpu_limit")
    if limit is not None:
        capped = max(1, math.floor(float(limit) + 1e-9))
        if capped < cores:
            src = str(cg.get("cpu_limit_source") or "cgroup")
            label = "cpu.max" if src.endswith("cpu.max") else "cpu.cfs_quota_us"
            return capped, (
                f"threads {capped}: cgroup CPU limit {float(limit):g} ({label}) is below "
                f"{cores} physical cores"
            )
    return cores, why


# --------------------------------------------------------------------------- select


def select(
    facts: Dict[str, Any],
    manifest: Dict[str, Any],
    overrides: Optional[Dict[str, Any]] = None,
    *,
    server_flags: Optional[Collection[str]] = None,
) -> Decision:
    """Decide how this host runs the bundle's model.

    ``server_flags``: options the bundled llama-server accepts (from ``--help``), or
    ``None`` when unknown. Raises UsageError for bad overrides or a manifest without an
    engine/model, HostError when the host cannot run the bundle (wrong architecture, no
    usable CPU variant, model does not fit), HostLibraryError (a HostError) when its glibc
    or libstdc++ is older than the engine needs. Returns the decision document.
    """
    ov = check_overrides(overrides or {})
    engine = require_engine(manifest)
    paths = _manifest_paths(manifest)
    defaults = dict(engine.server_defaults)
    model_facts = find_model(manifest, ov.get("model") or defaults.get("model"))
    model = ModelShape(model_facts)
    reasons: List[str] = []
    cpu = facts.get("cpu") or {}
    arch = str(cpu.get("arch") or "unknown")

    engine_arch = engine.arch
    if engine_arch and arch != "unknown" and engine_arch != arch:
        raise HostError(
            f"the bundle's engine is built for {engine_arch} but this host is {arch}",
            hint=f"build a bundle for {arch} (airlock build on or for that architecture)",
        )
    if "libc" in facts:  # facts from a runtime.detect older than the glibc check have none
        why_libc = check_engine(facts["libc"] or {}, engine.glibc_min, engine.glibcxx_min)
        if why_libc:
            reasons.append(why_libc)
    reasons.append(
        f"model {model.name}: {gib(model.weights)}"
        + (f" {model.quant}" if model.quant else "")
        + f" weights, {model.n_layer} layers, trained context {model.ctx_train}"
    )

    variants, module_dir = bundled_variants(engine, paths)
    variant, why = choose_variant(arch, cpu.get("flags") or [], variants)
    reasons.append(why)

    backend, why, gpus = choose_backend(facts, engine, paths, ov.get("backend"))
    reasons.append(why)

    threads, why = _threads(facts, ov.get("threads"))
    reasons.append(why)

    effective, source = effective_memory(facts)
    usable = int(effective * MEMORY_SHARE)
    vram = sum(int(g.get("vram_free_bytes") or g.get("vram_bytes") or 0) for g in gpus)
    vram_usable = int(vram * MEMORY_SHARE)

    # The operator's override wins over the bundle's spec default; "auto" (or no default)
    # lets the memory planner choose.
    ctx_fixed = fixed_value(ov, defaults, "ctx_size")
    par_fixed = fixed_value(ov, defaults, "parallel")
    fit = fit_plan(
        model,
        context_plans(model, ctx_fixed, par_fixed),
        usable=usable,
        effective=effective,
        source=source,
        cuda=backend == "cuda",
        vram_usable=vram_usable,
        vram_known=vram > 0,
        gpu_layers_forced=ov.get("gpu_layers"),
    )
    ctx, par, need = fit.ctx, fit.parallel, fit.need
    if ctx_fixed is not None or par_fixed is not None:
        origin = (
            "operator override"
            if ov.get("ctx_size") is not None or ov.get("parallel") is not None
            else "bundle default"
        )
        both = ctx_fixed is not None and par_fixed is not None
        reasons.append(
            f"ctx {ctx}, {par} slot(s): {origin}" + ("" if both else " (the other one auto)")
        )
    else:
        reasons.append(
            f"ctx {ctx} = {par} slot(s) x {ctx // par} tokens: largest plan that fits "
            f"{gib(usable)} usable memory ({source})"
        )
    reasons.append(
        f"memory: needs {gib(need)} on the host ({gib(fit.host_weights)} weights + "
        f"{gib(fit.host_kv)} KV cache + {gib(model.host_overhead())} overhead) "
        f"of {gib(usable)} usable"
    )
    gpu_layers = 0
    if backend == "cuda":
        gpu_layers, why = gpu_offload(
            model,
            fit.layers_gpu,
            forced=ov.get("gpu_layers") is not None,
            vram=vram,
            vram_usable=vram_usable,
        )
        if gpu_layers == 0:
            backend = "cpu"
        reasons.append(why)

    host = str(ov.get("host") or defaults.get("host") or "127.0.0.1")
    port = int(ov.get("port") or defaults.get("port") or 8080)
    argv, env, flag_reasons = server_command(
        engine,
        model_facts,
        model.name,
        host,
        port,
        ctx,
        par,
        threads,
        gpu_layers,
        backend,
        ov.get("api_key_file") or defaults.get("api_key_file"),
        server_flags,
    )
    reasons.extend(flag_reasons)
    cwd = "."
    server_dir = engine.server.rsplit("/", 1)[0]
    if variants and module_dir != server_dir:
        # ggml looks for backend modules next to the executable and in the working
        # directory only (ggml-backend-reg.cpp), never on LD_LIBRARY_PATH.
        cwd = module_dir
        reasons.append(
            f"working directory {module_dir}: ggml loads CPU variant modules from the "
            "executable's directory or the working directory"
        )
    return {
        "schema": DECISION_SCHEMA,
        "model": model.name,
        "backend": backend,
        "gpu_layers": gpu_layers,
        "cpu_variant": variant,
        "threads": threads,
        "ctx_size": ctx,
        "parallel": par,
        "host": host,
        "port": port,
        "argv": argv,
        "env": env,
        "cwd": cwd,
        "reasons": reasons,
        "overrides": ov,
        "memory": {
            "effective_bytes": effective,
            "effective_source": source,
            "usable_bytes": usable,
            "share": MEMORY_SHARE,
            "weights_bytes": model.weights,
            "host_weights_bytes": fit.host_weights,
            "kv_bytes": fit.host_kv,
            "overhead_bytes": model.host_overhead(),
            "need_bytes": need,
            "vram_bytes": vram or None,
            "vram_usable_bytes": vram_usable or None,
        },
    }


def resolve(decision: Decision, release_dir: Path) -> Decision:
    """The decision with argv, env and cwd paths made absolute under ``release_dir``."""
    base = Path(os.path.abspath(release_dir))
    out = dict(decision)
    argv = list(decision["argv"])
    argv[0] = str(base / argv[0])
    for i, a in enumerate(argv[:-1]):
        if a == "--model":
            argv[i + 1] = str(base / argv[i + 1])
    out["argv"] = argv
    env = dict(decision["env"])
    env["LD_LIBRARY_PATH"] = ":".join(str(base / p) for p in env["LD_LIBRARY_PATH"].split(":"))
    out["env"] = env
    out["cwd"] = str(base / decision["cwd"])
    return out


# --------------------------------------------------------------------------- CLI


def render(decision: Decision) -> str:
    lines = [
        f"backend:   {decision['backend']} (gpu layers {decision['gpu_layers']})",
        f"variant:   {decision['cpu_variant'] or '-'}",
        f"threads:   {decision['threads']}",
        f"context:   {decision['ctx_size']} ({decision['parallel']} slots)",
        "command:   {}".format(" ".join(decision["argv"])),
        "env:       {}".format(
            " ".join("{}={}".format(*kv) for kv in sorted(decision["env"].items()))
        ),
        "cwd:       {}".format(decision["cwd"]),
    ]
    lines.extend("reason:    " + r for r in decision["reasons"])
    return "\n".join(lines)


def _load_json(path: Path, what: str) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read the {what} {path}: {e.strerror}") from e
    except ValueError as e:
        raise UsageError(f"the {what} {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"the {what} {path} is not a JSON object")
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m runtime.selection",
        description="Choose backend, threads, context and llama-server arguments for this host.",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--facts", type=Path, help="facts JSON from python3 -m runtime.detect")
    src.add_argument("--detect", action="store_true", help="detect this host's facts now")
    parser.add_argument("--manifest", type=Path, required=True, help="the bundle manifest")
    parser.add_argument(
        "--overrides", default=None, help='JSON object, e.g. {"ctx_size": 4096, "backend": "cpu"}'
    )
    parser.add_argument(
        "--release-dir",
        type=Path,
        default=None,
        help="installed release: absolute paths, and probe llama-server --help",
    )
    parser.add_argument(
        "--install-path", type=Path, default=None, help="with --detect: measure free disk here"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        decision = run_cli(args)
    except AirlockError as e:
        if args.json:
            print(
                json.dumps(
                    {
                        "error": e.message,
                        "problems": list(e.problems),
                        "hint": e.hint,
                        "exit_code": e.exit_code,
                    },
                    indent=2,
                    sort_keys=True,
                )
            )
        print(e.render(), file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(decision, indent=2, sort_keys=True))
    else:
        print(render(decision))
    return 0


def run_cli(args: argparse.Namespace) -> Decision:
    """The CLI's work, with the I/O at this edge: read, detect, probe, select, resolve."""
    from runtime.detect import detect

    facts = (
        detect(Path("/"), args.install_path)
        if args.detect
        else _load_json(args.facts, "facts file")
    )
    manifest = _load_json(args.manifest, "manifest")
    overrides: Dict[str, Any] = {}
    if args.overrides:
        try:
            overrides = json.loads(args.overrides)
        except ValueError as e:
            raise UsageError(f"--overrides is not valid JSON: {e}") from e
        if not isinstance(overrides, dict):
            raise UsageError("--overrides must be a JSON object")
    return decide(facts, manifest, overrides, release_dir=args.release_dir)


def decide(
    facts: Dict[str, Any],
    manifest: Dict[str, Any],
    overrides: Optional[Dict[str, Any]] = None,
    *,
    release_dir: Optional[Path] = None,
) -> Decision:
    """``select`` with the CLI's I/O edge (the role runs the CLI): with a release
    directory, probe its llama-server's ``--help`` and make every path absolute."""
    flags = None
    if release_dir is not None:
        server = Path(release_dir) / require_engine(manifest).server
        if server.exists():
            flags = probe_server_flags(server)
    decision = select(facts, manifest, overrides, server_flags=flags)
    if release_dir is not None:
        decision = resolve(decision, Path(release_dir))
    return decision


if __name__ == "__main__":
    sys.exit(main())

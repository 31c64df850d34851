"""Drift detection: re-hash a release's installed files against its signed manifest."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List

from runtime.errors import InstallError
from runtime.fsio import file_sha256
from runtime.layout import Layout


def find_drift(layout: Layout, state: Dict[str, Any], version: str) -> List[Dict[str, str]]:
    """Every file of ``version`` whose bytes differ from the signed manifest, plus extras."""
    entry = state["releases"].get(version)
    if entry is None:
        raise InstallError(f"release {version} is not recorded in {layout.state_file}")
    digest = entry["manifest_sha256"]
    drift: List[Dict[str, str]] = []
    manifest_path = layout.manifest_file(digest)
    try:
        with open(manifest_path, "rb") as f:
            raw = f.read()
    except OSError as e:
        return [{"file": manifest_path, "expected": digest, "actual": f"unreadable: {e}"}]
    if hashlib.sha256(raw).hexdigest() != digest:
        actual = hashlib.sha256(raw).hexdigest()
        return [{"file": manifest_path, "expected": digest, "actual": actual}]
    manifest = json.loads(raw.decode("utf-8"))
    base = layout.release_dir(version)
    expected = {}
    for item in manifest.get("files", []):
        expected[item["path"]] = item
    for rel in sorted(expected):
        path = os.path.join(base, rel)
        want = expected[rel]["sha256"]
        if os.path.islink(path) or not os.path.isfile(path):
            drift.append({"file": path, "expected": want, "actual": "missing"})
            continue
        got = file_sha256(path)
        if got != want:
            drift.append({"file": path, "expected": want, "actual": got})
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            if rel not in expected:
                drift.append({"file": path, "expected": "absent", "actual": "unexpected file"})
    return drift

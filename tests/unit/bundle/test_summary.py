"""`airlock inspect`: metadata-region summary, signer fingerprints, SBOM summary via one seek."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundler.bundle.summary import inspect_bundle
from bundler.errors import TrustError
from bundler.evidence.sbom import bundle_sbom_summary
from tests.bundlekit import DURING, make_bundle, make_key, make_stage, policy_for

SBOM = {
    "bomFormat": "CycloneDX",
    "specVersion": "1.6",
    "components": [{"type": "machine-learning-model", "name": "tiny", "bom-ref": "m"}],
}


def test_summary_lists_signers_components_and_the_sbom(tmp_path: Path) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    stage = make_stage(tmp_path, {"evidence/sbom.cdx.json": json.dumps(SBOM).encode()})
    bundle = make_bundle(tmp_path, [alice], stage=stage).path
    info = inspect_bundle(bundle, sbom=bundle_sbom_summary)
    assert info["name"] == "demo" and info["files"] == 8
    assert info["signers"][0]["fingerprint"] == alice.signer.public_key.fingerprint
    assert info["signers"][0]["verified"] is None
    assert info["components"]["models"] == {"type": "model", "files": 2, "bytes": 179211}
    assert info["sbom"] is not None and "error" not in info["sbom"]
    checked = inspect_bundle(bundle, policy=policy_for(tmp_path, [alice]), now=DURING)
    assert checked["signers"][0]["verified"] is True


def test_tampered_sbom_is_reported_not_trusted(tmp_path: Path) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    stage = make_stage(tmp_path, {"evidence/sbom.cdx.json": json.dumps(SBOM).encode()})
    bundle = make_bundle(tmp_path, [alice], stage=stage).path
    data = bundle.read_bytes()
    at = data.index(b'"bomFormat"')
    bundle.write_bytes(data[:at] + b'"bomFormaT"' + data[at + 11 :])
    assert (
        "sha256 does not match" in inspect_bundle(bundle, sbom=bundle_sbom_summary)["sbom"]["error"]
    )
    assert inspect_bundle(bundle)["sbom"] is None  # the SBOM is the caller's to read


def test_policy_given_to_inspect_is_enforced(tmp_path: Path) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    bundle = make_bundle(tmp_path, [alice], stage=make_stage(tmp_path)).path
    with pytest.raises(TrustError):
        inspect_bundle(bundle, policy=policy_for(tmp_path, [make_key(tmp_path, "bob")]))


def test_inspect_refuses_a_bundle_whose_cosign_was_interrupted(tmp_path: Path) -> None:
    from bundler.bundle.region import journal_path
    from bundler.errors import IntegrityError

    alice = make_key(tmp_path / "keys", "alice")
    bundle = make_bundle(tmp_path, [alice]).path
    journal_path(bundle).write_text("{}")  # as a co-sign killed mid-way leaves it
    with pytest.raises(IntegrityError, match="interrupted") as refused:
        inspect_bundle(bundle)
    assert "airlock sign" in (refused.value.hint or "")
    journal_path(bundle).unlink()
    assert inspect_bundle(bundle)["name"] == "demo"


def test_inspect_says_what_it_verified_and_lists_a_malformed_signature(tmp_path: Path) -> None:
    from bundler.errors import SignatureError
    from runtime.bundle import read_metadata
    from tests.bundlekit import with_region

    alice = make_key(tmp_path / "keys", "alice")
    bundle = make_bundle(tmp_path, [alice]).path
    assert inspect_bundle(bundle)["verified"] == "nothing"
    policy = policy_for(tmp_path, [alice])
    assert inspect_bundle(bundle, policy=policy, now=DURING)["verified"] == "signatures"
    junk = ("airlock/signatures/" + "A" * 43 + ".sig", b"not a signature\n")
    bad = with_region(bundle, tmp_path / "bad.tar", [junk, *read_metadata(bundle).signatures])
    listed = {s["name"]: s for s in inspect_bundle(bad)["signers"]}  # in signature-name order
    assert "BEGIN/END" in listed.pop(junk[0])["error"]
    assert [s["fingerprint"] for s in listed.values()] == [alice.signer.public_key.fingerprint]
    with pytest.raises(SignatureError):  # with a policy, as verify does
        inspect_bundle(bad, policy=policy, now=DURING)


def test_summary_shows_what_the_engine_needs_of_a_host(tmp_path: Path, capsys) -> None:
    from bundler.bundle import summary
    from bundler.cli.main import main

    alice = make_key(tmp_path / "keys", "alice")
    bundle = make_bundle(tmp_path, [alice]).path
    # bundlekit's engine predates the audit: no glibc_min, no glibcxx_min key
    assert inspect_bundle(bundle)["host_floor"] == {
        "glibc_min": None,
        "glibcxx_min": "not recorded",
    }
    assert main(["inspect", str(bundle)]) == 0
    assert "engine needs: glibc >= not recorded, libstdc++ level not recorded" in (
        capsys.readouterr().out
    )
    portable = {"glibc_min": "2.28", "glibcxx_min": None}
    m = {"components": {"engine": {"type": "runtime", "properties": portable}}}
    assert summary._host_floor(m) == portable
    old = {"glibc_min": "2.34", "glibcxx_min": "3.4.30"}
    m = {"components": {"engine": {"type": "runtime", "properties": old}}}
    assert summary._host_floor(m) == old
    assert summary._host_floor({"components": {}}) is None

"""Trust policy: allowed_signers parsing, revocation and the k-of-n decision, attack by attack."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.errors import TrustError
from bundler.ssh.keys import Ed25519Signer
from bundler.ssh.sig import ARCHIVE_NAMESPACE, MANIFEST_NAMESPACE, sign
from bundler.ssh.trust import (
    AllowedSigner,
    TrustPolicy,
    evaluate,
    load_policy,
    match_pattern_list,
    parse_allowed_signers,
    parse_revoked,
    parse_time,
)
from tests.unit.ssh import sshcerts

MESSAGE = b'{"format":"airlock-bundle","name":"demo"}'
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def _signer() -> Ed25519Signer:
    return Ed25519Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def alice() -> Ed25519Signer:
    return _signer()


@pytest.fixture
def bob() -> Ed25519Signer:
    return _signer()


def _policy(text: str, *, threshold: int = 1, revoked: str = "") -> TrustPolicy:
    return TrustPolicy(
        parse_allowed_signers(text), threshold=threshold, revoked=parse_revoked(revoked)
    )


def _sig(signer: Ed25519Signer, message: bytes = MESSAGE, ns: str = MANIFEST_NAMESPACE) -> bytes:
    return sign(message, signer, namespace=ns)


def _evaluate(policy: TrustPolicy, sigs: list[tuple[str, bytes]], now: datetime = NOW):
    return evaluate(policy, MESSAGE, sigs, namespace=MANIFEST_NAMESPACE, now=now)


def test_accepts_a_trusted_signature_and_names_its_principals(alice) -> None:
    policy = _policy(f"alice@example.org,release {alice.public_key.openssh()}\n")
    decision = _evaluate(policy, [("a.sig", _sig(alice))])
    assert [(a.name, a.fingerprint, a.principals) for a in decision.accepted] == [
        ("a.sig", alice.public_key.fingerprint, ("alice@example.org", "release"))
    ]
    assert decision.problems == () and decision.threshold == 1


def test_rejects_untrusted_key(alice, bob) -> None:
    policy = _policy(f"alice {alice.public_key.openssh()}\n")
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("b.sig", _sig(bob))])
    assert exc.value.exit_code == 11
    assert exc.value.problems == (
        f"b.sig: key {bob.public_key.fingerprint} is not in the allowed signers (untrusted key)",
    )


def test_rejects_revoked_key(alice) -> None:
    policy = _policy(
        f"alice {alice.public_key.openssh()}\n", revoked=f"# gone\n{alice.public_key.openssh()}\n"
    )
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", _sig(alice))])
    assert exc.value.problems == (f"a.sig: key {alice.public_key.fingerprint} is revoked",)


def test_rejects_wrong_namespace(alice) -> None:
    policy = _policy(f"alice {alice.public_key.openssh()}\n")
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", _sig(alice, ns=ARCHIVE_NAMESPACE))])
    assert (
        "namespace 'airlock-archive-v1', expected 'airlock-manifest-v1'" in (exc.value.problems[0])
    )


def test_rejects_tampered_message(alice) -> None:
    policy = _policy(f"alice {alice.public_key.openssh()}\n")
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", _sig(alice, message=MESSAGE + b"\n"))])
    assert "does not match the signed bytes" in exc.value.problems[0]


def test_rejects_signature_after_valid_before(alice) -> None:
    policy = _policy(f'alice valid-before="20261127115959Z" {alice.public_key.openssh()}\n')
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", _sig(alice))])
    assert "key has expired" in exc.value.problems[0]
    assert "allowed_signers:1" in exc.value.problems[0]
    # valid-before is inclusive, as in ssh-keygen
    assert _evaluate(policy, [("a.sig", _sig(alice))], now=NOW - timedelta(seconds=1)).accepted


def test_rejects_signature_before_valid_after(alice) -> None:
    policy = _policy(f'alice valid-after="202611271201Z" {alice.public_key.openssh()}\n')
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", _sig(alice))])
    assert "key is not yet valid" in exc.value.problems[0]
    assert _evaluate(policy, [("a.sig", _sig(alice))], now=NOW + timedelta(minutes=1)).accepted


def test_duplicated_signature_does_not_pad_threshold(alice, bob) -> None:
    policy = _policy(
        f"alice {alice.public_key.openssh()}\nbob {bob.public_key.openssh()}\n", threshold=2
    )
    twice = _sig(alice)
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", twice), ("a-copy.sig", twice)])
    assert "1 of the required 2" in exc.value.message
    assert exc.value.problems == (
        f"a-copy.sig: key {alice.public_key.fingerprint} already signed as a.sig; "
        "a key counts once toward the threshold",
    )
    decision = _evaluate(policy, [("a.sig", twice), ("a-copy.sig", twice), ("b.sig", _sig(bob))])
    assert [a.name for a in decision.accepted] == ["a.sig", "b.sig"]
    assert len(decision.problems) == 1  # the duplicate is still reported


def test_same_key_on_two_lines_is_still_one_key(alice) -> None:
    policy = _policy(
        f"alice {alice.public_key.openssh()}\nalice-again {alice.public_key.openssh()}\n",
        threshold=1,
    )
    decision = _evaluate(policy, [("a.sig", _sig(alice))])
    assert decision.accepted[0].principals == ("alice", "alice-again")
    with pytest.raises(TrustError):
        _evaluate(TrustPolicy(policy.signers, threshold=2), [("a.sig", _sig(alice))])


def test_rejects_namespace_not_allowed_for_key(alice) -> None:
    policy = _policy(f'alice namespaces="airlock-archive-v1" {alice.public_key.openssh()}\n')
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", _sig(alice))])
    assert "not allowed to sign namespace 'airlock-manifest-v1'" in exc.value.problems[0]


def test_namespaces_option_with_list_and_wildcards(alice) -> None:
    for option in (
        'namespaces="git,airlock-manifest-v1"',
        'namespaces="airlock-*"',
        'NAMESPACES="file,airlock-manifest-v?"',
    ):
        policy = _policy(f"alice {option} {alice.public_key.openssh()}\n")
        assert _evaluate(policy, [("a.sig", _sig(alice))]).accepted, option
    policy = _policy(
        f'alice namespaces="airlock-*,!airlock-manifest-*" {alice.public_key.openssh()}'
    )
    with pytest.raises(TrustError):
        _evaluate(policy, [("a.sig", _sig(alice))])


def test_cert_authority_line_does_not_count_as_a_plain_key(alice) -> None:
    policy = TrustPolicy(
        parse_allowed_signers(f"*@example.org cert-authority {alice.public_key.openssh()}")
    )
    assert policy.signers[0].cert_authority
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", _sig(alice))])
    assert "listed only as cert-authority" in exc.value.problems[0]


def test_threshold_met_returns_non_fatal_problems(alice, bob) -> None:
    policy = _policy(f"alice {alice.public_key.openssh()}\n")
    decision = _evaluate(policy, [("a.sig", _sig(alice)), ("b.sig", _sig(bob)), ("x.sig", b"junk")])
    assert [a.name for a in decision.accepted] == ["a.sig"]
    assert len(decision.problems) == 2


def test_reports_every_problem_before_raising(alice, bob) -> None:
    policy = _policy(
        f"alice {alice.public_key.openssh()}\nbob {bob.public_key.openssh()}\n",
        threshold=2,
        revoked=bob.public_key.openssh(),
    )
    stranger = _signer()
    with pytest.raises(TrustError) as exc:
        _evaluate(
            policy,
            [
                ("a.sig", _sig(alice, message=b"other bytes")),
                ("b.sig", _sig(bob)),
                ("c.sig", _sig(stranger)),
                ("d.sig", b"-----BEGIN SSH SIGNATURE-----\n"),
            ],
        )
    names = [p.split(":", 1)[0] for p in exc.value.problems]
    assert names == ["a.sig", "b.sig", "c.sig", "d.sig"]
    assert "0 of the required 2" in exc.value.message


def test_no_signatures_at_all_is_a_trust_error(alice) -> None:
    with pytest.raises(TrustError) as exc:
        _evaluate(_policy(f"alice {alice.public_key.openssh()}"), [])
    assert exc.value.problems == ("no signatures were found",)


def test_naive_now_is_utc(alice) -> None:
    policy = _policy(f'alice valid-before="20261127120000Z" {alice.public_key.openssh()}')
    assert _evaluate(policy, [("a.sig", _sig(alice))], now=NOW.replace(tzinfo=None)).accepted


# --- parsing -----------------------------------------------------------------------------


def test_parses_quoted_principals_options_and_comments(alice, bob) -> None:
    text = (
        "# the release team\n"
        "\n"
        f'  "alice@example.org,ops team" {alice.public_key.openssh()}\n'
        f'bob@example.org namespaces="a,b",valid-after="20260101",valid-before="20270101Z" '
        f"{bob.public_key.openssh()}\n"
    )
    first, second = parse_allowed_signers(text)
    assert first == AllowedSigner(
        principals=("alice@example.org", "ops team"),
        public_key=alice.public_key,
        namespaces=None,
        valid_after=None,
        valid_before=None,
    )
    assert first.source == "allowed_signers:3"
    assert second.namespaces == b"a,b"
    assert second.valid_after == datetime(2026, 1, 1).astimezone()  # no Z: local time
    assert second.valid_before == datetime(2027, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "text, when",
    [
        ("20260101", datetime(2026, 1, 1).astimezone()),
        ("20260101Z", datetime(2026, 1, 1, tzinfo=timezone.utc)),
        ("202601011230Z", datetime(2026, 1, 1, 12, 30, tzinfo=timezone.utc)),
        ("20260101123059z", datetime(2026, 1, 1, 12, 30, 59, tzinfo=timezone.utc)),
        ("20260101123059", datetime(2026, 1, 1, 12, 30, 59).astimezone()),
    ],
)
def test_time_forms_of_ssh_keygen(text: str, when: datetime) -> None:
    assert parse_time(text) == when


@pytest.mark.parametrize("text", ["2026", "2026010", "202601011", "20261301", "20260101T1200", ""])
def test_rejects_bad_times(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


@pytest.mark.parametrize(
    "line, needle",
    [  # the reasons are ssh-keygen's own (sshsig.c, sshsigopt_parse)
        ("alice", "missing key"),
        ('alice namespaces="a"', "missing key"),
        ("alice ssh-ed25519 !!!", "invalid key"),
        ('alice foo="bar" KEY', "bad options: unknown key option"),
        ("alice namespaces=a KEY", "missing start quote"),
        ('alice namespaces="a KEY', "unterminated quote"),
        ('alice namespaces="a",namespaces="b" KEY', 'multiple "namespaces" clauses'),
        ('alice valid-after="2026" KEY', 'invalid "valid-after" time'),
        ('alice valid-after="19700101Z" KEY', 'invalid "valid-after" time'),
        (
            'alice valid-after="20270101",valid-before="20260101" KEY',
            '"valid-before" time is before "valid-after"',
        ),
        ('alice namespaces="a", KEY', "unexpected end-of-options"),
        ('alice namespaces="a";x KEY', "unknown key option"),
        ('"alice KEY', "invalid line"),
        ('"alice"x KEY', "unknown key option"),  # a closing quote ends the field
    ],
)
def test_rejects_malformed_allowed_signers_with_line_numbers(alice, line: str, needle: str) -> None:
    text = "# ok\n" + line.replace("KEY", alice.public_key.openssh()) + "\n"
    with pytest.raises(TrustError) as exc:
        parse_allowed_signers(text, source="/etc/airlock/allowed_signers")
    assert exc.value.problems[0].startswith("/etc/airlock/allowed_signers:2: ")
    assert needle in exc.value.problems[0]


def test_lists_every_malformed_line(alice) -> None:
    with pytest.raises(TrustError) as exc:
        parse_allowed_signers(f"a\nok {alice.public_key.openssh()}\nb\n")
    assert [p.split(":")[1] for p in exc.value.problems] == ["1", "3"]
    assert "2 malformed line(s)" in exc.value.message


def test_rejects_binary_krl() -> None:
    with pytest.raises(TrustError, match="binary OpenSSH KRL"):
        parse_revoked("SSHKRL\n\x00\x00\x00\x00\x01")


def test_rejects_malformed_revoked_line() -> None:
    with pytest.raises(TrustError) as exc:
        parse_revoked("# ok\nnot a key\n")
    assert exc.value.problems[0].startswith("revoked keys:2: ")


def test_match_pattern_list_semantics() -> None:
    assert match_pattern_list("airlock-manifest-v1", ["git", "airlock-*"])
    assert not match_pattern_list("airlock-manifest-v1", ["airlock-*", "!*-manifest-*"])
    assert not match_pattern_list("file", ["airlock-*"])
    assert match_pattern_list("a.b", ["a?b"]) and not match_pattern_list("axxb", ["a?b"])


# --- files -------------------------------------------------------------------------------


def test_load_policy_reads_files_and_checks_the_threshold_is_reachable(
    tmp_path: Path, alice, bob
) -> None:
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"alice {alice.public_key.openssh()}\nbob {bob.public_key.openssh()}\n")
    revoked = tmp_path / "revoked"
    revoked.write_text(bob.public_key.openssh() + "\n")
    policy = load_policy(allowed, threshold=1, revoked=revoked)
    assert policy.revoked == frozenset({bob.public_key.blob})
    assert len(policy.signers) == 2
    with pytest.raises(TrustError, match="lists only 1 usable key"):
        load_policy(allowed, threshold=2, revoked=revoked)


def test_load_policy_refuses_binary_krl_file(tmp_path: Path, alice) -> None:
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"alice {alice.public_key.openssh()}\n")
    krl = tmp_path / "revoked.krl"
    krl.write_bytes(b"SSHKRL\n\x00\x00\x00\x00\x01\xff\xfe")
    with pytest.raises(TrustError, match="binary OpenSSH KRL"):
        load_policy(allowed, revoked=krl)


def test_load_policy_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TrustError) as exc:
        load_policy(tmp_path / "nope")
    assert str(tmp_path / "nope") in exc.value.message


def test_rejects_threshold_below_one(alice) -> None:
    with pytest.raises(TrustError, match="at least 1"):
        TrustPolicy(parse_allowed_signers(f"alice {alice.public_key.openssh()}"), threshold=0)


# --- OpenSSH's reading of the files, attack by attack --------------------------------------


# Characters that Python's str.splitlines() takes as line breaks but getline() does not.
def _refused(policy: TrustPolicy, signer: Ed25519Signer, needle: str) -> None:
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", _sig(signer))])
    assert any(needle in p for p in exc.value.problems), exc.value.problems


NOT_LINE_BREAKS = ["\u2028", "\u2029", "\x85", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


@pytest.mark.parametrize("separator", NOT_LINE_BREAKS)
def test_rejects_key_hidden_in_another_entrys_comment(alice, bob, separator: str) -> None:
    """Only \\n ends an entry: a key inside alice's comment is comment text to ssh-keygen."""
    text = (
        f"alice {alice.public_key.openssh()} release key{separator}"
        f"mallory {bob.public_key.openssh()}\n"
    )
    policy = _policy(text, threshold=2)
    assert [s.principals for s in policy.signers] == [("alice",)]
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", _sig(alice)), ("b.sig", _sig(bob))])
    assert "1 of the required 2" in exc.value.message
    assert exc.value.problems == (
        f"b.sig: key {bob.public_key.fingerprint} is not in the allowed signers (untrusted key)",
    )


def test_hidden_key_does_not_make_a_threshold_reachable(tmp_path: Path, alice, bob) -> None:
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(
        f"alice {alice.public_key.openssh()} x\u2028bob {bob.public_key.openssh()}\n"
    )
    with pytest.raises(TrustError, match="lists only 1 usable key"):
        load_policy(allowed, threshold=2)


def test_a_nul_byte_ends_the_line_as_in_openssh(alice, bob) -> None:
    text = (
        f"alice {alice.public_key.openssh()}\0bob {bob.public_key.openssh()}\n"
        f"\0carol {bob.public_key.openssh()}\n"
    )
    policy = _policy(text)
    assert [s.principals for s in policy.signers] == [("alice",)]
    _refused(policy, bob, "untrusted key")


def test_certificate_in_revoked_keys_revokes_its_key(alice) -> None:
    """sshkey_in_file compares public parts: a certificate of a key revokes the key."""
    ca = Ed25519PrivateKey.generate()
    cert = sshcerts.certificate(sshcerts.raw_public_of(alice), ca)
    policy = _policy(
        f"alice {alice.public_key.openssh()}\n", revoked=sshcerts.line(cert) + " old cert\n"
    )
    with pytest.raises(TrustError) as exc:
        _evaluate(policy, [("a.sig", _sig(alice))])
    assert exc.value.problems == (f"a.sig: key {alice.public_key.fingerprint} is revoked",)


def test_a_damaged_revoked_keys_line_refuses_the_policy(alice) -> None:
    """ssh-keygen -r refuses every signature when a line cannot be read; so does airlock."""
    ca = Ed25519PrivateKey.generate()
    forged = sshcerts.certificate(sshcerts.raw_public_of(alice), ca, bad_signature=True)
    for text in ("\r\n", sshcerts.line(forged), "ssh-ed25519 AAAA\n"):
        with pytest.raises(TrustError, match="malformed line"):
            parse_revoked(text)
    # blank lines, comments, a NUL-started line and a short RSA key are skipped, as in OpenSSH
    assert parse_revoked(" \n\t#x\n\0junk\n") == frozenset()


def test_certificate_as_a_plain_entry_does_not_trust_its_key(alice) -> None:
    """OpenSSH 9.2's sshkey_equal needs the same key type: a certificate is not the key."""
    cert = sshcerts.certificate(sshcerts.raw_public_of(alice), Ed25519PrivateKey.generate())
    policy = _policy(f"alice {sshcerts.line(cert)}\n")
    _refused(policy, alice, "untrusted key")


@pytest.mark.parametrize(
    "principals, names",
    [
        ("alice,,bob", ("alice", "", "bob")),  # an empty pattern matches the empty name
        ("*@example.org", ("*@example.org",)),
        ("!*", ()),
        ("!mallory,*", ("*",)),
        ("a," + "x" * 1023, ()),  # match_pattern_list gives up on a 1023-byte pattern
        ('""', ()),
    ],
)
def test_principals_are_openssh_patterns(alice, principals: str, names: tuple) -> None:
    policy = _policy(f"{principals} {alice.public_key.openssh()}\n")
    assert policy.signers[0].principals == names
    if names:
        assert _evaluate(policy, [("a.sig", _sig(alice))]).accepted[0].principals == names
    else:
        _refused(policy, alice, "match no name")


def test_overlong_namespace_pattern_allows_nothing(alice) -> None:
    policy = _policy(
        f'alice namespaces="{MANIFEST_NAMESPACE},{"x" * 1100}" {alice.public_key.openssh()}\n'
    )
    _refused(policy, alice, "not allowed to sign namespace")


@pytest.mark.parametrize(
    "text, when",
    [
        ("20260101UTC", datetime(2026, 1, 1, tzinfo=timezone.utc)),
        ("2026 101Z", datetime(2026, 1, 1, tzinfo=timezone.utc)),  # strptime skips spaces
        ("20260231Z", datetime(2026, 3, 3, tzinfo=timezone.utc)),  # timegm rolls over
        ("20261231235961Z", datetime(2027, 1, 1, 0, 0, 1, tzinfo=timezone.utc)),
    ],
)
def test_time_forms_glibc_strptime_accepts(text: str, when: datetime) -> None:
    assert parse_time(text) == when


def test_validity_is_judged_in_whole_seconds(alice) -> None:
    policy = _policy(f'alice valid-before="20261127120000Z" {alice.public_key.openssh()}\n')
    assert _evaluate(policy, [("a.sig", _sig(alice))], now=NOW + timedelta(milliseconds=999))

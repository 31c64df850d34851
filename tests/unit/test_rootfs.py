"""The root filesystem cache key: stable for the same inputs, new for any other."""

from __future__ import annotations

from tests.rootfs import rootfs_key


def test_rootfs_key_is_stable_and_order_free() -> None:
    a = rootfs_key("bullseye", include=("python3", "openssh-server"), variant="minbase")
    b = rootfs_key("bullseye", include=("openssh-server", "python3", "python3"), variant="minbase")
    assert a == b and len(a) == 16


def test_rootfs_key_changes_with_every_input() -> None:
    base = rootfs_key("bullseye", include=("python3",), variant="minbase")
    assert rootfs_key("trixie", include=("python3",), variant="minbase") != base
    assert rootfs_key("bullseye", include=("python3", "systemd"), variant="minbase") != base
    assert rootfs_key("bullseye", include=("python3",), variant="apt") != base

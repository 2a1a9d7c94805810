"""Leases on images: counted per process, and a removal only when none is held."""

from __future__ import annotations

from pathlib import Path

from spanfaas.images.leases import Leases


def test_leases_are_counted_per_process_and_a_removal_needs_every_one_gone(tmp_path: Path) -> None:
    """Two ``Leases`` on one directory stand for two processes (each its own descriptors)."""
    a, b = Leases(tmp_path), Leases(tmp_path)
    image = "f" * 64
    try:
        assert a.try_hold(image) and a.try_hold(image) and a.held(image)
        with b.removal(image) as free:
            assert not free
        a.release(image)
        with a.removal(image) as free:
            assert not free  # this process's own remaining use counts too
        a.release(image)
        assert not a.held(image)
        with b.removal(image) as free:
            assert free
            assert not a.try_hold(image) and not a.held(image)  # held out while it is removed
        assert a.try_hold(image)
        a.close()  # as at exit: every lease goes
        with b.removal(image) as free:
            assert free
    finally:
        a.close()
        b.close()

"""uv's lock: pins, hashes and why each package is there; the image id it names."""

from __future__ import annotations

from spanfaas.images.lock import image_id, normalize, parse_lock
from spanfaas.store.images import LockedPackage

LOCK = """numpy==2.4.6 \\
    --hash=sha256:89cd468399cfd2504718f0ba50e410dca55a170b61a02ad92bb18c8a65186e93
    # via -r requirements.in
tinycalc==2.0 \\
    --hash=sha256:f7185a6bfe75e291fd7285519294a739d788839e5438345cf4dd197f1a1f8375
    # via
    #   -c constraints.txt
    #   -r requirements.in
tinyhelper==1.5 \\
    --hash=sha256:8a71d16e6b6d513767e46a8891c56c8eab9ad523bb0066d08aaac77c7ea66f3d \\
    --hash=sha256:0000d16e6b6d513767e46a8891c56c8eab9ad523bb0066d08aaac77c7ea66f3d
    # via
    #   numpy
    #   tinycalc
"""


def test_parse_lock_records_pins_and_what_needs_them() -> None:
    assert parse_lock(LOCK, {"numpy", "tinycalc"}) == [
        LockedPackage(name="numpy", version="2.4.6", direct=True, via=[]),
        LockedPackage(name="tinycalc", version="2.0", direct=True, via=[]),
        LockedPackage(name="tinyhelper", version="1.5", direct=False, via=["numpy", "tinycalc"]),
    ]


def test_the_image_id_depends_on_pins_and_hashes_not_on_comments_or_order() -> None:
    numpy_block, rest = LOCK.split("tinycalc==", 1)
    reordered = "tinycalc==" + rest + numpy_block  # the same pins in another order
    assert normalize(LOCK).splitlines()[0] == "numpy==2.4.6 sha256:89cd468399cfd2504718f0ba50e410dca55a170b61a02ad92bb18c8a65186e93"
    annotated_differently = LOCK.replace("# via -r requirements.in", "# via something-else")
    assert image_id("3.11", LOCK) == image_id("3.11", annotated_differently)
    assert image_id("3.11", LOCK) != image_id("3.12", LOCK)
    assert image_id("3.11", LOCK) != image_id("3.11", LOCK.replace("1.5", "1.6"))
    assert image_id("3.11", LOCK) != image_id("3.11", LOCK.replace("0000d16e", "1111d16e"))
    assert image_id("3.11", reordered) == image_id("3.11", LOCK)
    assert len(image_id("3.11", LOCK)) == 64

"""Do two version ranges allow a common version?  Checked case by case and
against brute force over a grid of versions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from spanfaas.errors import InvalidRequest
from spanfaas.images.ranges import intersects, parse_requirement, parse_specifier


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("", "", True),
        (">=1.26,<3", "", True),
        (">=1.26,<3", ">=2", True),
        (">=1.26,<3", ">=3", False),
        (">=1.26,<3", "<1.26", False),
        (">=1.26,<3", "<=1.26", True),
        (">1.26", "<=1.26", False),
        ("==11.*", ">=11.2", True),
        ("==11.*", ">=12", False),
        ("==11.*", "<11", False),
        ("==11.*", "==11.0.3", True),
        ("!=2.0", "==2.0", False),
        ("!=2.*", "==2.5", False),
        ("!=2.*", ">=2,<4", True),
        ("~=1.4.2", ">=1.5", False),
        ("~=1.4.2", ">=1.4.9", True),
        ("~=2.2", "<3", True),
        ("~=2.2", ">=3", False),
        ("==1.0", "==1.0.0", True),
        (">=2,<2", "", False),
        ("===1.0", "==1.0", True),
        # local versions (PEP 440): a specifier without a local label ignores the candidate's
        ("==1.0", "==1.0+local", True),
        ("==1.0.0", "==1.0+cpu.1", True),
        ("==1.0+local", "==1.0+local", True),
        ("==1.0+local", "==1.0+other", False),
        ("==1.0+local", "==1.1", False),
        ("!=1.0", "==1.0+local", False),
        ("!=1.0+local", "==1.0+other", True),
        ("!=1.0+local", "==1.0+local", False),
        (">=1.0", "==1.0+local", True),
        ("<=1.0", "==1.0+local", True),
        (">1.0", "==1.0+local", False),
        ("<1.0", "==1.0+local", False),
        (">=1,<3", "==2.0+local", True),
        ("==1.0.*", "==1.0+local", True),
        ("~=1.0", "==1.0+local", True),
        ("==1.0+local", "<=1.0,>=1.0", True),
        # epochs: a version of epoch 1 is newer than every version of epoch 0
        ("==1!1.*", "==1!1.5", True),
        ("==1!1.*", "==1.5", False),
        ("~=1!1.4.2", "==1!1.4.5", True),
        ("~=1!1.4.2", "==1!1.5", False),
        (">=1,<3", "==1!1.5", False),
        (">=1", "==1!0.5", True),
        ("<1!0", "==99.0", True),
        ("==1!1.0+local", "==1!1.0", True),
    ],
)
def test_intersects(a: str, b: str, expected: bool) -> None:
    assert intersects(a, b) is expected
    assert intersects(b, a) is expected


GRID = [Version(v) for v in (
    "0.9", "1.0", "1.0+local", "1.0+other", "1.0.post1", "1.0.1", "1.1", "1.4", "1.4.2", "1.4.9", "1.5", "1.26", "1.26.4",
    "2.0", "2.0+local", "2.0.1", "2.5", "3.0", "11.0", "11.2", "12.0", "1!0.5", "1!1.0", "1!1.0+local", "1!1.4.5", "1!2.0",
)]  # fmt: skip
SPEC = st.builds(
    lambda op, v: f"{op}{v}",
    st.sampled_from(["==", "!=", ">=", ">", "<=", "<", "~="]),
    st.sampled_from(["1.0", "1.4.2", "1.26", "2.0", "2.5", "3.0", "11.0", "1!1.0", "1!1.4.2"]),
) | st.sampled_from(["==1.*", "==11.*", "!=2.*", "==2.0.*", "==1!1.*", "==1.0+local", "!=1.0+local", "==2.0+local", "===1.0"])
SET = st.lists(SPEC, min_size=0, max_size=3).map(",".join)


@settings(max_examples=300, deadline=None)
@given(SET, SET)
def test_a_common_version_means_they_intersect(a: str, b: str) -> None:
    """Sound for rejections: if a version satisfies both, they are never called disjoint."""
    sa, sb = SpecifierSet(a), SpecifierSet(b)
    common = [v for v in GRID if sa.contains(v, prereleases=True) and sb.contains(v, prereleases=True)]
    if common:
        assert intersects(a, b), (a, b, common)


def test_bad_input_says_what_to_write() -> None:
    with pytest.raises(InvalidRequest, match="not a valid version specifier.*'>=1.26,<3'"):
        parse_specifier(">=x")
    with pytest.raises(InvalidRequest, match="direct reference"):
        parse_requirement("numpy @ https://example.com/numpy.whl")
    with pytest.raises(InvalidRequest, match="environment marker"):
        parse_requirement("numpy; python_version > '3'")

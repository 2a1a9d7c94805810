"""Checking an image request against the curated lists: what passes, and
rejections that name each package and what is allowed."""

from __future__ import annotations

import pytest

from spanfaas.errors import ImageRejected, InvalidRequest
from spanfaas.images.curation import (
    approved_package,
    check_resolved,
    new_list,
    plan,
    platform_python,
)
from spanfaas.model import ImageRequest
from spanfaas.store.images import ImagePolicy, LockedPackage

SCIENCE = new_list("science", packages=["numpy>=1.26,<3", "pillow==11.*", "scipy"])
WEB = new_list("web", packages=["requests>=2.30", "numpy>=2"])
LISTS = [SCIENCE, WEB]


def req(*packages: str, lists: tuple[str, ...] = ("science",), python: str = "") -> ImageRequest:
    return ImageRequest(packages=list(packages), lists=list(lists), python=python)


def rejected(request: ImageRequest) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        plan(request, LISTS)
    return info.value


def test_a_request_within_the_lists_plans_requirements_and_approved_ranges_as_constraints() -> None:
    p = plan(req("numpy>=2", "Pillow"), LISTS)
    assert p.requirements == ["numpy>=2", "Pillow"]
    assert p.direct == ["numpy", "pillow"]
    # the resolver is held to the approved ranges of every package on the selected lists
    assert p.constraints == ["numpy>=1.26,<3", "pillow==11.*"]
    assert p.approved == {"numpy": "science", "pillow": "science", "scipy": "science"}
    assert p.python == platform_python()


def test_a_package_outside_the_approved_range_is_named_with_the_range_allowed() -> None:
    exc = rejected(req("numpy>=3", "pillow<11"))
    assert "numpy>=3 is outside the approved range: numpy>=1.26,<3 (list science)" in exc.message
    assert "pillow<11 is outside the approved range: pillow==11.* (list science)" in exc.message
    assert [r["package"] for r in exc.extra["rejected"]] == ["numpy", "pillow"]
    assert exc.extra["rejected"][0]["allowed"] == ["numpy>=1.26,<3 (list science)"]
    assert exc.status == 400 and exc.slug == "image-rejected"


def test_a_package_on_no_selected_list_is_named_with_the_lists_that_approve_it() -> None:
    exc = rejected(req("requests", "leftpad"))
    assert "requests is not approved by the selected lists; lists that approve it: web" in exc.message
    assert "leftpad is not approved by the selected lists" in exc.message
    assert exc.extra["rejected"][0]["elsewhere"] == ["web"]


def test_the_first_selected_list_whose_range_fits_decides() -> None:
    # numpy<2 fits science's range only; numpy>=2 fits both, and web comes first
    assert "numpy>=1.26,<3" in plan(req("numpy<2", lists=("web", "science")), LISTS).constraints
    assert "numpy>=2" in plan(req("numpy>=2.1", lists=("web", "science")), LISTS).constraints


def test_unknown_lists_no_lists_and_another_python_are_rejected() -> None:
    assert "'nope', which does not exist; curated lists: science, web" in rejected(req("numpy", lists=("nope",))).message
    assert "selects no curated list" in rejected(req("numpy", lists=())).message
    other = "3.99"
    exc = rejected(req("numpy", python=other))
    assert f"Python {other}" in exc.message and f'python = "{platform_python()}"' in exc.message
    assert plan(req(lists=()), LISTS).requirements == []  # an empty image is fine


def test_dependencies_must_be_approved_when_the_policy_says_so() -> None:
    p = plan(req("numpy"), LISTS)
    locked = [
        LockedPackage(name="numpy", version="2.0", direct=True),
        LockedPackage(name="scipy", version="1.14", via=["numpy"]),
        LockedPackage(name="leftpad", version="0.1", via=["numpy"]),
    ]
    check_resolved(p, locked, ImagePolicy(require_transitive=False))  # recorded, not checked
    with pytest.raises(ImageRejected) as info:
        check_resolved(p, locked, ImagePolicy(require_transitive=True))
    assert "leftpad==0.1 (needed by numpy) is a dependency not approved" in info.value.message
    assert "scipy" not in info.value.message


def test_lists_and_approvals_are_validated() -> None:
    with pytest.raises(InvalidRequest, match="not valid"):
        new_list("Science")
    with pytest.raises(InvalidRequest, match="appears twice"):
        new_list("dupes", packages=["numpy", "NumPy>=2"])
    pkg = approved_package("Pillow >= 11 , < 12", note="images")
    assert (pkg.name, pkg.specifier, pkg.requirement, pkg.note) == ("pillow", ">=11,<12", "pillow>=11,<12", "images")
    assert approved_package("numpy", specifier=">=2").requirement == "numpy>=2"
    with pytest.raises(InvalidRequest, match="give one"):
        approved_package("numpy>=1", specifier=">=2")


def test_local_versions_epochs_and_name_spellings_match_the_approvals_as_pep_440_says() -> None:
    lists = [new_list("ml", packages=["torch==2.3", "Foo_Bar>=1,<2", "tz==1!2024.*", "tools~=1!1.4.2", "cuda==12.1+cu121"])]

    def allowed(*packages: str) -> bool:
        try:
            plan(ImageRequest(packages=list(packages), lists=["ml"]), lists)
        except ImageRejected:
            return False
        return True

    # a build with a local label (+cpu, +cu121) is that version: ==2.3 approves it
    assert allowed("torch==2.3+cpu") and allowed("torch==2.3.0+cu121") and not allowed("torch==2.4+cpu")
    # an approval with a local label approves that build only, which ==12.1 and >=12 reach
    assert allowed("cuda==12.1+cu121") and allowed("cuda==12.1") and allowed("cuda>=12")
    assert not allowed("cuda==12.1+cu118") and not allowed("cuda>12.1")
    # epochs: 1!2024.5 is within ==1!2024.*; a version of epoch 0 is not
    assert allowed("tz==1!2024.5") and allowed("tz") and not allowed("tz==2024.5")
    assert allowed("tools==1!1.4.9") and not allowed("tools==1!1.5") and not allowed("tools==1.4.9")
    # names are compared in their PEP 503 form, however they are spelled
    for spelling in ("foo-bar", "Foo_Bar", "FOO.BAR", "foo__bar==1.5"):
        assert allowed(spelling), spelling
    assert plan(ImageRequest(packages=["FOO.bar==1.5"], lists=["ml"]), lists).direct == ["foo-bar"]
    assert not allowed("foo-bar>=2") and not allowed("foobar")


def test_a_range_that_allows_no_version_is_refused_naming_it() -> None:
    """'<1,>2' was approved, and then refused every request as 'outside the approved
    range'; a request for such a range was told it was outside the list's."""
    with pytest.raises(InvalidRequest, match=r"'<1,>2' allows no version; write a range some version meets"):
        approved_package("six", specifier="<1,>2")
    with pytest.raises(InvalidRequest, match="allows no version"):
        new_list("x", packages=["six>=2,<1.5"])
    assert approved_package("six", specifier="==1.0").specifier == "==1.0"  # one version is a range
    exc = rejected(req("numpy>=3,<2", "pillow"))
    assert exc.message.endswith("numpy>=3,<2 allows no version; write a range some version meets (approved: numpy>=1.26,<3 (list science))")
    assert exc.extra["rejected"][0]["reason"] == "no-version"


def test_a_rejection_says_how_an_admin_allows_what_it_refused() -> None:
    """A rejection said what was not allowed, and not what to do about it: 'leftpad is not
    approved by the selected lists', full stop.  It ends with the command that approves them
    (on the first selected list); what another list approves is fixed in the manifest instead."""
    exc = rejected(req("numpy>=3", "leftpad", "requests"))
    assert exc.message.endswith(
        "; change [image] packages, or have an admin approve them: spanfaas images curate add science 'numpy>=3' leftpad"
    ), exc.message
    assert "requests is not approved by the selected lists; lists that approve it: web (add them to [image] lists)" in exc.message
    assert "an admin" not in rejected(req("requests")).message  # the manifest's fix, alone
    assert "an admin" not in rejected(req("numpy<1,>2")).message  # a range no version meets: the request's fix
    p = plan(req("numpy", lists=("web", "science")), LISTS)
    with pytest.raises(ImageRejected) as info:
        check_resolved(p, [LockedPackage(name="numpy", version="2.0", direct=True), LockedPackage(name="leftpad", version="0.1", via=["numpy"])],
                       ImagePolicy(require_transitive=True))  # fmt: skip
    assert info.value.message.endswith("; have an admin approve it: spanfaas images curate add web leftpad"), info.value.message

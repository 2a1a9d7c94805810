"""The error tree: statuses, exit codes, Problem Details both ways."""

from __future__ import annotations

import httpx
import pytest

from spanfaas import errors


def test_every_error_maps_to_a_status_and_exit_code() -> None:
    for cls in errors._all_subclasses(errors.SpanfaasError):
        assert 400 <= cls.status < 600, cls
        assert 1 <= cls.exit_code < 64, cls
        assert cls.slug and cls.title, cls


def test_three_kinds_of_failure_stay_apart() -> None:
    assert issubclass(errors.FunctionTimeout, errors.FunctionFailed)
    assert not issubclass(errors.FunctionFailed, errors.InfraError)
    assert not issubclass(errors.InvalidManifest, (errors.InfraError, errors.FunctionFailed))


@pytest.mark.parametrize("cls", errors._all_subclasses(errors.SpanfaasError))
def test_problem_round_trip(cls: type[errors.SpanfaasError]) -> None:
    err = cls("what went wrong and how to fix it", invocation_id="abc")
    doc = err.to_problem(instance="/v1/x")
    assert doc["status"] == cls.status and doc["detail"] == "what went wrong and how to fix it"
    back = errors.error_from_problem(doc)
    first_with_its_slug = next(c for c in errors._all_subclasses(errors.SpanfaasError) if c.slug == cls.slug)
    assert type(back) is first_with_its_slug  # cls itself, unless it keeps a parent's slug
    assert back.message == err.message and back.extra == {"invocation_id": "abc"}


def test_a_subclass_that_keeps_its_parents_slug_does_not_take_its_place() -> None:
    """A private marker (the spanning scheduler's deploy cut short is an InfraUnavailable) made
    every infra-unavailable problem come back as the marker once its module was imported."""

    class Marker(errors.InfraUnavailable):
        pass

    back = errors.error_from_problem(errors.InfraUnavailable("site 'eu' is down").to_problem(instance="/v1/x"))
    assert type(back) is errors.InfraUnavailable
    assert Marker.slug == errors.InfraUnavailable.slug


def test_unknown_problem_type_becomes_the_root_error() -> None:
    back = errors.error_from_problem({"type": "about:blank", "detail": "teapot"})
    assert type(back) is errors.SpanfaasError and str(back) == "teapot"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, errors.InvalidRequest),
        (404, errors.NotFound),
        (405, errors.InvalidRequest),
        (409, errors.Conflict),
        (429, errors.TooManyRequests),
        (502, errors.InfraError),
        (503, errors.InfraUnavailable),
    ],
)
def test_problem_of_a_class_this_process_never_imported_keeps_its_status(
    status: int, expected: type[errors.SpanfaasError]
) -> None:
    # The CLI does not import the gateway's packages, so a slug such as
    # trigger-not-found (spanfaas.events) is unknown there; the status still
    # says which kind of error it is, and so which exit code the CLI returns.
    doc = {"type": errors.PROBLEM_BASE + "widget-not-found", "status": status, "detail": "no widget 'w'"}
    back = errors.error_from_problem(doc)
    assert type(back) is expected and back.message == "no widget 'w'"
    assert back.exit_code == expected.exit_code


@pytest.mark.parametrize(
    ("size", "limit", "expected"),
    [
        (12 * 2**20, 8 * 2**20, ("12.0 MiB", "8.0 MiB")),
        (100_000, 65536, ("97.7 KiB", "64.0 KiB")),
        (3 * 2**30, 64 * 2**20, ("3.0 GiB", "64.0 MiB")),
        (2000, 1024, ("2.0 KiB", "1.0 KiB")),
        (900, 512, ("900 bytes", "512 bytes")),
        (1_100_000, 2**20, ("1.05 MiB", "1.00 MiB")),  # alike when rounded: one more decimal ...
        (65538, 65536, ("65538 bytes", "65536 bytes")),  # ... or exact, in one unit
    ],
)
def test_sizes_in_messages_are_for_people_and_in_one_style(size: int, limit: int, expected: tuple[str, str]) -> None:
    assert errors.format_sizes(size, limit) == expected


def test_one_size_for_people() -> None:
    assert [errors.format_size(n) for n in (0, 1023, 1024, 1536, 12 * 2**20, 2**30 + 2**29)] == [
        "0 bytes", "1023 bytes", "1.0 KiB", "1.5 KiB", "12.0 MiB", "1.5 GiB",
    ]


def test_a_count_of_one_is_said_in_the_singular() -> None:
    # '1 bytes', '1 invocations waiting': counts printed with a fixed plural.
    from spanfaas.infra.remote import _got

    assert errors.format_size(1) == "1 byte"
    assert _got(httpx.Response(502, content=b"x", headers={"content-type": "text/plain"})) == "text/plain, 1 byte: 'x'"


def test_plural_counts_in_words() -> None:
    from spanfaas.errors import plural

    assert [plural(0, "image"), plural(1, "image"), plural(2, "image")] == ["0 images", "1 image", "2 images"]
    assert plural(3, "dependency", "dependencies") == "3 dependencies"


def test_a_message_names_few_deployed_functions_and_counts_many() -> None:
    assert errors.like_deployed("x", []) == "deployed: none"
    assert errors.like_deployed("x", {"b": 1, "a": 2}) == "deployed: a, b"
    many = [f"resize-{i:04}" for i in range(1000)]
    said = errors.like_deployed("resize-0042x", many)
    assert said.startswith("did you mean resize-0042, ") and said.endswith("(1000 functions are deployed; `spanfaas ls` lists them)")
    assert said.count("resize-") == 5 and len(said) < 150
    # The hint names the CLI command, as those of images, triggers and dead letters do (it was
    # 'GET /v1/functions lists them', shown to a user of `spanfaas invoke` who had mistyped a name).
    assert errors.like_deployed("zzz", many) == "none of the 1000 deployed functions has a name like it (`spanfaas ls` lists them)"


def test_a_message_of_few_deployed_functions_says_which_one_a_near_miss_meant() -> None:
    """``spanfaas invoke helo`` answered "deployed: async-fetch, hello, json-transform,
    numpy-stats": the name meant was there, not said; many functions had it said."""
    few = ["async-fetch", "hello", "json-transform", "numpy-stats"]
    assert errors.like_deployed("helo", few) == "deployed: async-fetch, hello, json-transform, numpy-stats; did you mean hello?"
    assert errors.like_deployed("Hello", few).endswith("; did you mean hello?")  # names are lowercase: a capital is a near miss
    assert errors.like_deployed("json_transform", few).endswith("; did you mean json-transform?")
    assert errors.like_deployed("zzz", few) == "deployed: async-fetch, hello, json-transform, numpy-stats"
    assert errors.like_deployed("ordres", ["orders"]) == "deployed: orders"  # the list of one is the suggestion

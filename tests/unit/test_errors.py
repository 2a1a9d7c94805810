"""The error tree: statuses, exit codes, Problem Details both ways."""

from __future__ import annotations

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
    assert type(back) is cls
    assert back.message == err.message and back.extra == {"invocation_id": "abc"}


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

from __future__ import annotations

import pytest

from inferq.errors import InvalidInput, NotFound, RateLimited, ServerError, problem_from_response
from inferq.messages import Completion, PredictRequest, chunks


def test_completion_round_trips_and_tolerates_garbage() -> None:
    done = Completion(("a", "b"))
    assert Completion.decode(done.encode()) == done
    assert Completion.decode(b"{not json") == Completion(())
    assert Completion.decode(b'{"a": 1}') == Completion(())


def test_predict_request_args_are_json_friendly() -> None:
    assert PredictRequest(("x", "y")).to_args() == [["x", "y"]]


def test_chunks() -> None:
    assert chunks(["1", "2", "3"], 2) == [("1", "2"), ("3",)]


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (404, NotFound),
        (422, InvalidInput),
        (429, RateLimited),
        (500, ServerError),
        (418, ServerError),
    ],
)
def test_client_rebuilds_typed_problems(status: int, cls: type) -> None:
    problem = problem_from_response(status, {"detail": "why", "errors": [{"pointer": "/x"}]})
    assert isinstance(problem, cls)
    assert problem.status == status
    assert problem.detail == "why"
    assert problem.to_dict()["status"] == status

"""The operator side of experiments and the registry: bad requests get clear problems, keys
without the operator scope get 403, promote and rollback walk the activation history."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from inferq.cli import main
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.factories import digits_variants, experiment_model, holdout
from tests.integration.conftest import Caller
from tests.security import make_key

PROBLEM = "application/problem+json"


@pytest.fixture
def model(settings: Settings, digits_version: int) -> str:
    """A model with three versions; v1 serves."""
    variants = digits_variants()
    return experiment_model(
        settings, [variants["good"], variants["bad"], variants["good"]], active=1
    )


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in json.dumps(body)
    return dict(body)


def ab(model: str, *weights: float | None, versions: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    arms = [
        {"version": v} if w is None else {"version": v, "weight": w}
        for v, w in zip(versions, weights or (None,) * len(versions), strict=True)
    ]
    return {"model": model, "arms": arms}


@pytest.mark.parametrize(
    ("change", "pointer", "says"),
    [
        (lambda b: {**b, "model": "no-such-model"}, "/model", "no model named"),
        (
            lambda b: {**b, "arms": [{"version": 1}, {"version": 9}]},
            "/arms/1/version",
            "no version 9",
        ),
        (
            lambda b: {**b, "arms": [{"version": 1, "weight": 0.5}, {"version": 2, "weight": 0.3}]},
            "/arms",
            "sum to 0.8",
        ),
        (
            lambda b: {**b, "arms": [{"version": 1, "weight": 60}, {"version": 2, "weight": 60}]},
            "/arms",
            "sum to 120",
        ),
        (
            lambda b: {**b, "arms": [{"version": 1, "weight": 1}, {"version": 2}]},
            "/arms/1/weight",
            "every arm a weight",
        ),
        (
            lambda b: {**b, "arms": [{"version": 1, "weight": 0}, {"version": 2, "weight": 1}]},
            "/arms/0/weight",
            "",
        ),
        (
            lambda b: {
                **b,
                "arms": [{"version": 1, "weight": -0.5}, {"version": 2, "weight": 1.5}],
            },
            "/arms/0/weight",
            "",
        ),
        (lambda b: {**b, "arms": [{"version": 1}]}, "/arms", "at least 2"),
        (
            lambda b: {**b, "arms": [{"version": 1}, {"version": 1}]},
            "/arms/1/version",
            "in two arms",
        ),
        (
            lambda b: {**b, "arms": [{"version": 1, "name": "x"}, {"version": 2, "name": "x"}]},
            "/arms/1/name",
            "used twice",
        ),
        (
            lambda b: {**b, "arms": [{"version": "1"}, {"version": 2}]},
            "/arms/0/version",
            "type integer",
        ),
        (lambda b: {**b, "arms": "1,2"}, "/arms", "type array"),
        (lambda b: {**b, "mode": "canary"}, "/mode", "one of"),
        (
            lambda b: {
                **b,
                "mode": "shadow",
                "arms": [{"version": 1, "weight": 0.5}, {"version": 2, "weight": 0.5}],
            },
            "/arms/0/weight",
            "no weights",
        ),
        (
            lambda b: {**b, "mode": "shadow", "arms": [{"version": 2}, {"version": 1}]},
            "/arms/0/version",
            "active version",
        ),
        (lambda b: {**b, "policy": {"alpha": 0}}, "/policy/alpha", ""),
        (lambda b: {**b, "policy": {"action": "celebrate"}}, "/policy/action", "one of"),
        (
            lambda b: {**b, "policy": {"min_feedback": 50, "max_feedback": 10}},
            "/policy/max_feedback",
            "at least min_feedback",
        ),
        (lambda b: {**b, "policy": {"surprise": 1}}, "/policy", ""),
        (lambda b: {**b, "surprise": 1}, "/", ""),
        (lambda b: {"arms": b["arms"]}, "/", "model"),
    ],
)
def test_bad_experiments_are_422_and_start_nothing(
    operator: Caller, model: str, change: Any, pointer: str, says: str
) -> None:
    problem = assert_problem(operator.post("/v1/experiments", change(ab(model))), 422)
    assert problem["errors"][0]["pointer"] == pointer
    assert says in problem["detail"] + problem["errors"][0]["detail"]
    assert operator.get(f"/v1/models/{model}").get_json()["experiment"] is None


def test_malformed_bodies_are_400_or_415(operator: Caller) -> None:
    headers = operator.headers({"Content-Type": "application/json"})
    assert_problem(operator.http.post("/v1/experiments", data=b'{"model": ', headers=headers), 400)
    assert_problem(operator.http.post("/v1/experiments", data=b"[1, 2]", headers=headers), 400)
    form = operator.headers({"Content-Type": "application/x-www-form-urlencoded"})
    assert_problem(operator.http.post("/v1/experiments", data="model=x", headers=form), 415)


def test_one_running_experiment_per_model(operator: Caller, model: str) -> None:
    first = operator.post("/v1/experiments", ab(model, 0.5, 0.5))
    assert first.status_code == 201
    problem = assert_problem(operator.post("/v1/experiments", ab(model, versions=(1, 3))), 409)
    assert first.get_json()["id"] in problem["detail"]
    # once stopped, a new one may start; stopping twice is a conflict
    stopped = operator.post(f"/v1/experiments/{first.get_json()['id']}/stop", {"reason": "done"})
    assert stopped.status_code == 200
    assert stopped.get_json()["status"] == "stopped"
    assert stopped.get_json()["decision"]["decision"] == "manual"
    assert stopped.get_json()["decision"]["reason"] == "done"
    assert_problem(operator.post(f"/v1/experiments/{first.get_json()['id']}/stop"), 409)
    assert operator.post("/v1/experiments", ab(model, versions=(1, 3))).status_code == 201


def test_a_stopped_experiment_sends_everyone_back_to_the_active_version(
    operator: Caller, alice: Caller, model: str
) -> None:
    experiment = operator.post("/v1/experiments", ab(model, 1, 99)).get_json()
    body = {"model": model, "input": holdout(1)[0][0]}
    during = [alice.post("/v1/jobs", {**body, "user": f"u{i}"}).get_json() for i in range(20)]
    assert 2 in {job["version"] for job in during}
    operator.post(f"/v1/experiments/{experiment['id']}/stop")
    after = [alice.post("/v1/jobs", {**body, "user": f"u{i}"}).get_json() for i in range(20)]
    assert {job["version"] for job in after} == {1}


def test_unknown_and_malformed_experiment_ids(operator: Caller) -> None:
    assert_problem(operator.get(f"/v1/experiments/{uuid.uuid4()}"), 404)
    assert_problem(operator.post(f"/v1/experiments/{uuid.uuid4()}/stop"), 404)
    assert_problem(operator.get("/v1/experiments/not-a-uuid"), 400)
    assert_problem(operator.get("/v1/experiments?status=bogus"), 400)


def test_keys_without_the_operator_scope_get_403_a_tenants_admin_too(
    http: FlaskClient, settings: Settings, keys: Keys, operator: Caller, model: str
) -> None:
    experiment = operator.post("/v1/experiments", ab(model)).get_json()
    calls = [
        ("post", "/v1/experiments", ab(model)),
        ("get", "/v1/experiments", None),
        ("get", f"/v1/experiments/{experiment['id']}", None),
        ("post", f"/v1/experiments/{experiment['id']}/stop", None),
        ("post", f"/v1/models/{model}/versions/2/promote", None),
        ("post", f"/v1/models/{model}/rollback", None),
    ]
    tenant_admin = make_key(settings, "alice", ["submit", "read", "admin"])
    for key in (keys.alice, keys.alice_read_only, keys.alice_submit_only, tenant_admin):
        caller = Caller(http, key)
        for method, path, body in calls:
            response = caller.post(path, body) if method == "post" else caller.get(path)
            assert_problem(response, 403)
    assert_problem(http.post("/v1/experiments", json=ab(model)), 401)
    # and none of it changed anything
    assert operator.get(f"/v1/experiments/{experiment['id']}").get_json()["status"] == "running"
    assert operator.get(f"/v1/models/{model}").get_json()["active_version"] == 1


def test_promote_and_rollback_walk_the_activation_history(operator: Caller, model: str) -> None:
    def promote(version: int) -> dict[str, Any]:
        response = operator.post(f"/v1/models/{model}/versions/{version}/promote", {"reason": "ok"})
        assert response.status_code == 200, response.get_json()
        return dict(response.get_json())

    def active() -> int:
        return int(operator.get(f"/v1/models/{model}").get_json()["active_version"])

    assert promote(2) == {"model": model, "version": 2, "previous": 1, "changed": True}
    assert promote(2)["changed"] is False
    promote(3)
    # rollback undoes one activation at a time, like an undo stack
    assert operator.post(f"/v1/models/{model}/rollback").get_json()["version"] == 2
    assert operator.post(f"/v1/models/{model}/rollback").get_json()["version"] == 1
    assert (
        "nothing to roll back"
        in assert_problem(operator.post(f"/v1/models/{model}/rollback"), 409)["detail"]
    )
    assert active() == 1
    # a rolled-back activation is not returned to: v3 then rollback lands on v1, not v2
    promote(3)
    assert operator.post(f"/v1/models/{model}/rollback").get_json() == {
        "model": model,
        "version": 1,
        "previous": 3,
        "changed": True,
    }
    shown = operator.get(f"/v1/models/{model}").get_json()
    statuses = {v["version"]: v["status"] for v in shown["versions"]}
    assert statuses == {1: "active", 2: "retired", 3: "retired"}
    latest = shown["history"][0]
    assert latest["version"] == 3 and latest["rolled_back_at"] and latest["reason"] == "ok"
    assert latest["rolled_back_by"].startswith("api key ")


def test_promote_and_rollback_problems(operator: Caller, model: str) -> None:
    assert_problem(operator.post(f"/v1/models/{model}/versions/9/promote"), 404)
    assert_problem(operator.post("/v1/models/no-such-model/versions/1/promote"), 404)
    assert_problem(operator.post("/v1/models/no-such-model/rollback"), 404)
    assert_problem(operator.post(f"/v1/models/{model}/versions/2/promote", {"reason": 5}), 422)
    # while an experiment runs, its versions are the experiment's to choose
    experiment = operator.post("/v1/experiments", ab(model)).get_json()
    problem = assert_problem(operator.post(f"/v1/models/{model}/versions/2/promote"), 409)
    assert experiment["id"] in problem["detail"]
    assert_problem(operator.post(f"/v1/models/{model}/rollback"), 409)


def test_the_cli_promotes_rolls_back_and_shows_experiments(
    settings: Settings, operator: Caller, model: str
) -> None:
    runner = CliRunner()
    env = settings.to_env()

    def run(*args: str) -> str:
        result = runner.invoke(main, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.stdout

    assert json.loads(run("models", "promote", model, "2"))["version"] == 2
    assert json.loads(run("models", "rollback", model)) == {
        "model": model,
        "version": 1,
        "previous": 2,
        "changed": True,
    }
    failed = runner.invoke(main, ["models", "rollback", model], env=env)
    assert failed.exit_code == 1 and "nothing to roll back" in failed.stderr
    experiment = operator.post("/v1/experiments", ab(model)).get_json()
    shown = json.loads(run("experiments", "show", experiment["id"]))
    assert shown["id"] == experiment["id"] and [a["name"] for a in shown["arms"]] == ["A", "B"]
    listed = json.loads(run("experiments", "list", "--model", model))
    assert [e["id"] for e in listed] == [experiment["id"]]
    run("experiments", "stop", experiment["id"])
    assert operator.get(f"/v1/experiments/{experiment['id']}").get_json()["status"] == "stopped"
    missing = runner.invoke(main, ["experiments", "show", str(uuid.uuid4())], env=env)
    assert missing.exit_code == 1 and "no experiment" in missing.stderr

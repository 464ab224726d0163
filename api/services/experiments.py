"""Experiments on the API's side: which version serves a new job, and the operator operations.

Each API process caches a model's running experiment (or the fact that it has none) for
``model_cache_s``, like the model itself, so choosing an arm costs a hash and no query.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

from api.http.auth import current_principal
from api.state import ApiState
from db.experiments import finish, get_experiment, running_experiment
from db.jobs import JobView
from db.registry import ServingInfo
from db.tables import Experiment
from inferq.core.broker import publish
from inferq.core.errors import BadRequest, Conflict, NotFound
from inferq.core.messages import ShadowRequest
from inferq.domain.experiment_report import Report, build_report
from inferq.domain.experiments import Arm, arms_of, choose_arm, subject_of

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Routing:
    """A model's running experiment as an API process caches it (no id: none running)."""

    experiment_id: uuid.UUID | None = None
    mode: str | None = None
    arms: tuple[Arm, ...] = ()

    @classmethod
    def of(cls, experiment: Experiment | None) -> Routing:
        """The routing of ``experiment`` (or of none)."""
        if experiment is None:
            return cls()
        return cls(experiment.id, experiment.mode, tuple(arms_of(experiment)))

    @property
    def shadows(self) -> tuple[Arm, ...]:
        """The arms that run on a copy of the traffic."""
        return tuple(arm for arm in self.arms if arm.role == "shadow")


@dataclasses.dataclass(frozen=True)
class Route:
    """The version a new job is served by, and the experiment arm that chose it."""

    version_id: int
    version: int
    sha256: str | None
    experiment_id: uuid.UUID | None = None
    arm: str | None = None


def routing_for(st: ApiState, model: str) -> Routing:
    """The model's running experiment, cached per process like the model itself."""

    def load() -> Routing:
        with st.sessions() as session:
            return Routing.of(running_experiment(session, model))

    routing = st.models.get(("experiment", model), load)
    assert isinstance(routing, Routing)
    return routing


def route(st: ApiState, info: ServingInfo, tenant_id: uuid.UUID, user: str | None) -> Route:
    """The active version, or the arm of the running experiment the job's subject is in."""
    assert info.active_version_id is not None and info.active_version is not None
    routing = routing_for(st, info.name)
    if routing.experiment_id is None:
        return Route(info.active_version_id, info.active_version, info.active_sha256)
    arm = choose_arm(routing.experiment_id, routing.arms, subject_of(tenant_id, user))
    return Route(arm.version_id, arm.version, arm.sha256, routing.experiment_id, arm.name)


def mirror(st: ApiState, view: JobView) -> None:
    """In shadow mode, send the job to the shadow arms too; their outputs are only stored.

    Best effort: a lost shadow message costs one comparison, never the client's job.
    """
    if view.job.experiment_id is None:
        return
    routing = routing_for(st, view.model)
    if routing.experiment_id != view.job.experiment_id or not routing.shadows:
        return
    request = ShadowRequest(
        (str(view.job.id),),
        str(routing.experiment_id),
        tuple((arm.name, arm.version_id) for arm in routing.shadows),
        lane=view.job.lane,
    )
    try:
        publish(st.celery, st.settings, request)
    except Exception:
        log.warning("could not publish a shadow run", extra={"job_id": str(view.job.id)})


def actor() -> str:
    """Who is acting, for the records: the calling API key."""
    return f"api key {current_principal().key_id}"


def parse_experiment_id(raw: str) -> uuid.UUID:
    """``raw`` as an experiment id, or a 400 problem."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"Experiment ids are UUIDs; {raw[:64]!r} is not one.") from None


def report(st: ApiState, experiment_id: uuid.UUID) -> Report:
    """The live report, or 404."""
    with st.sessions() as session:
        found = get_experiment(session, experiment_id)
        if found is None:
            raise NotFound(f"No experiment {experiment_id}.")
        return build_report(session, *found)


def stop(st: ApiState, experiment_id: uuid.UUID, by: str, reason: str | None) -> Report:
    """End a running experiment by hand; traffic returns to the active version."""
    with st.sessions.begin() as session:
        found = get_experiment(session, experiment_id)
        if found is None:
            raise NotFound(f"No experiment {experiment_id}.")
        stopped = finish(
            session,
            experiment_id,
            status="stopped",
            decision="manual",
            reason=reason or "stopped by an operator",
            by=by,
        )
        if not stopped:
            raise Conflict(f"Experiment {experiment_id} is already {found[0].status}.")
    return report(st, experiment_id)

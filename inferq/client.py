"""A small Python client for the inferq REST API (the CLI uses it too).

    from inferq.client import Client
    client = Client("http://127.0.0.1:8080", api_key)
    job = client.submit("digits", {"pixels": [...]}, wait=10)
    job = client.wait(job["id"])

Problems come back as the typed errors of :mod:`inferq` (``NotFound``, ``InvalidInput``…).

Reads are retried (``retries`` times, with backoff, honouring ``Retry-After``) when a
connection fails, a response is cut off, or the service answers 502/503/504: an API node that
dies mid-response, a deploy, a database restart. A submit is retried only when it carries an
``idempotency_key``: then the service creates the job at most once, however many tries reach it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from inferq.core.errors import Problem, ServerError, problem_from_response

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
LONG_POLL_S = 25.0
#: How long a batch upload may take to be checked and stored after it is sent.
BATCH_UPLOAD_WAIT_S = 600.0
#: Answers that mean "not now" rather than "no": another try may well succeed.
TRANSIENT_STATUS = frozenset({502, 503, 504})
#: The longest pause between tries, whatever ``Retry-After`` asks for.
MAX_RETRY_PAUSE_S = 5.0


class Client:
    """Talks to one inferq endpoint (an API node or nginx) with one API key."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout_s: float = 10.0, retries: int = 2
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def submit(
        self,
        model: str,
        input: dict[str, Any],
        *,
        wait: float = 0,
        lane: str | None = None,
        user: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a job; with ``wait``, the server holds the answer up to that many seconds."""
        body: dict[str, Any] = {"model": model, "input": input}
        if lane:
            body["lane"] = lane
        if user:
            body["user"] = user
        headers = {"Prefer": f"wait={wait:g}"} if wait else {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return self._call(
            "POST", "/v1/jobs", json=body, headers=headers, wait=wait, retry=bool(idempotency_key)
        )

    def get(self, job_id: str, *, wait: float = 0) -> dict[str, Any]:
        """The job; with ``wait``, long-polls until it is terminal or ``wait`` seconds pass."""
        params = {"wait": f"{wait:g}"} if wait else None
        return self._call("GET", f"/v1/jobs/{job_id}", params=params, wait=wait)

    def wait(self, job_id: str, timeout_s: float = 300.0) -> dict[str, Any]:
        """Long-poll until the job is terminal; raises ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        job = self.get(job_id)
        while job["status"] not in TERMINAL:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:g}s")
            job = self.get(job_id, wait=min(LONG_POLL_S, remaining))
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job."""
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def feedback(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Send feedback: ``label=``, ``correct=``, ``score=``, ``comment=``."""
        return self._call("POST", f"/v1/jobs/{job_id}/feedback", json=fields)

    def models(self) -> list[dict[str, Any]]:
        """The models the service knows."""
        return list(self._call("GET", "/v1/models")["models"])

    def promote(self, model: str, version: int, reason: str | None = None) -> dict[str, Any]:
        """Admin: make ``version`` of ``model`` the active one."""
        body = {"reason": reason} if reason else {}
        return self._call("POST", f"/v1/models/{model}/versions/{version}/promote", json=body)

    def rollback(self, model: str) -> dict[str, Any]:
        """Admin: make the previously active version of ``model`` active again."""
        return self._call("POST", f"/v1/models/{model}/rollback")

    def start_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        """Admin: start an A/B or shadow experiment (``POST /v1/experiments``)."""
        return self._call("POST", "/v1/experiments", json=body)

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """Admin: an experiment's live report."""
        return self._call("GET", f"/v1/experiments/{experiment_id}")

    def stop_experiment(self, experiment_id: str, reason: str | None = None) -> dict[str, Any]:
        """Admin: end a running experiment now."""
        body = {"reason": reason} if reason else {}
        return self._call("POST", f"/v1/experiments/{experiment_id}/stop", json=body)

    def submit_batch(self, model: str, upload: IO[bytes] | bytes) -> dict[str, Any]:
        """Submit a batch from JSON Lines (a binary file, streamed, or bytes): one input
        object per line. Returns the batch once every line passed and its items are queued."""
        return self._call(
            "POST",
            "/v1/batches",
            params={"model": model},
            data=upload,
            headers={"Content-Type": "application/x-ndjson"},
            wait=BATCH_UPLOAD_WAIT_S,
        )

    def submit_batch_inputs(self, model: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """Submit a batch as one JSON body ``{"model", "inputs"}`` (smaller batches)."""
        body = {"model": model, "inputs": inputs}
        return self._call("POST", "/v1/batches", json=body, wait=BATCH_UPLOAD_WAIT_S)

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A batch's progress: counts by status, throughput, ETA."""
        return self._call("GET", f"/v1/batches/{batch_id}")

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel a batch: its queued items never run."""
        return self._call("POST", f"/v1/batches/{batch_id}/cancel")

    def wait_batch(
        self,
        batch_id: str,
        timeout_s: float = 3600.0,
        interval_s: float = 1.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the batch is no longer running; ``on_progress`` sees each reading."""
        deadline = time.monotonic() + timeout_s
        while True:
            batch = self.batch(batch_id)
            if on_progress is not None:
                on_progress(batch)
            if batch["status"] != "running":
                return batch
            if time.monotonic() >= deadline:
                raise TimeoutError(f"batch {batch_id} still running after {timeout_s:g}s")
            time.sleep(interval_s)

    def batch_results(self, batch_id: str, out: IO[bytes], fmt: str = "jsonl") -> int:
        """Stream a batch's results into ``out`` (JSON Lines, or ``fmt="csv"``), in input
        order; returns the number of items written (one line each, after CSV's header)."""
        url = f"{self.base_url}/v1/batches/{batch_id}/results"
        with self.session.get(
            url, params={"format": fmt}, stream=True, timeout=self.timeout_s
        ) as response:
            if response.status_code >= 400:
                raise _problem(response)
            lines = 0
            for block in response.iter_content(chunk_size=1 << 16):
                out.write(block)
                lines += block.count(b"\n")
        return lines - 1 if fmt == "csv" else lines

    def _call(
        self,
        method: str,
        path: str,
        *,
        wait: float = 0,
        retry: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One call; GETs (and calls marked ``retry``) are tried again on transient failures."""
        safe = method == "GET" if retry is None else retry
        retrying = Retrying(
            stop=stop_after_attempt(1 + (self.retries if safe else 0)),
            retry=retry_if_exception(transient),
            wait=pause_before_retry,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._once(method, path, wait=wait, **kwargs)
        raise AssertionError("unreachable: tenacity reraises the last failure")

    def _once(self, method: str, path: str, *, wait: float, **kwargs: Any) -> dict[str, Any]:
        response = self.session.request(
            method, self.base_url + path, timeout=self.timeout_s + wait, **kwargs
        )
        if response.status_code >= 400:
            raise _problem(response)
        body: dict[str, Any] = response.json()
        return body


def transient(exc: BaseException) -> bool:
    """A failure another try may not meet: no connection, a cut-off answer, 502/503/504."""
    if isinstance(exc, Problem):
        return exc.status in TRANSIENT_STATUS
    return isinstance(
        exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    )


def pause_before_retry(state: RetryCallState) -> float:
    """``Retry-After`` when the service sent one (capped), else 0.1 s doubling per try."""
    failure = state.outcome.exception() if state.outcome else None
    after = str((getattr(failure, "headers", None) or {}).get("Retry-After", ""))
    if after.replace(".", "", 1).isdigit():  # seconds; absent, or an HTTP date: back off
        return min(float(after), MAX_RETRY_PAUSE_S)
    return min(0.1 * 2 ** (state.attempt_number - 1), MAX_RETRY_PAUSE_S)


def _problem(response: requests.Response) -> Problem:
    try:
        body = response.json()
    except ValueError:
        return ServerError(
            f"HTTP {response.status_code}: {response.text[:200]}", status=response.status_code
        )
    problem = problem_from_response(response.status_code, body if isinstance(body, dict) else None)
    problem.headers = dict(response.headers)
    return problem

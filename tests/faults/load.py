"""A steady load of submits and long-polls that records what the service accepted."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from tests.factories import holdout


@dataclasses.dataclass
class Accepted:
    id: str
    at: float


class Load:
    """Submits ``rate`` jobs/s of ``model`` and long-polls recent ones, until stopped."""

    def __init__(self, url: str, key: str, model: str = "digits", rate: float = 15.0) -> None:
        self.url, self.model, self.rate = url, model, rate
        self.headers = {"Authorization": f"Bearer {key}"}
        self.accepted: list[Accepted] = []
        self.refused: Counter[str] = Counter()
        self.poll_errors: Counter[str] = Counter()
        self._inputs = [pixels for pixels, _ in holdout(200)]
        self._rng = random.Random(3)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=12)
        self._threads = [threading.Thread(target=self._submitter, daemon=True)] + [
            threading.Thread(target=self._poller, daemon=True) for _ in range(3)
        ]
        self._lock = threading.Lock()

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        self._pool.shutdown(wait=True)

    def submit_one(self, body_input: dict[str, Any], model: str | None = None) -> str | None:
        """Submit one job; its id when the service accepted it (200/202), else None."""
        try:
            response = requests.post(
                f"{self.url}/v1/jobs",
                json={"model": model or self.model, "input": body_input},
                headers=self.headers,
                timeout=15,
            )
        except requests.RequestException as exc:
            self._count(self.refused, type(exc).__name__)
            return None
        if response.status_code in (200, 202):
            job_id = str(response.json()["id"])
            with self._lock:
                self.accepted.append(Accepted(job_id, time.time()))
            return job_id
        self._count(self.refused, f"http {response.status_code}")
        return None

    def _count(self, counter: Counter[str], key: str) -> None:
        with self._lock:
            counter[key] += 1

    def _submitter(self) -> None:
        n, next_at = 0, time.monotonic()
        while not self._stop.is_set():
            pixels = self._inputs[n % len(self._inputs)]
            noisy = {"pixels": [min(16.0, v + self._rng.random() * 0.01) for v in pixels["pixels"]]}
            self._pool.submit(self.submit_one, noisy)
            n += 1
            next_at += 1 / self.rate
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _poller(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                recent = self.accepted[-20:]
            if not recent:
                self._stop.wait(0.2)
                continue
            job = self._rng.choice(recent)
            try:
                response = requests.get(
                    f"{self.url}/v1/jobs/{job.id}",
                    params={"wait": "3"},
                    headers=self.headers,
                    timeout=15,
                )
                if response.status_code != 200:
                    self._count(self.poll_errors, f"http {response.status_code}")
            except requests.RequestException as exc:
                self._count(self.poll_errors, type(exc).__name__)
            self._stop.wait(0.1)  # a client's pace, under nginx's per-address rate limit

"""The system as real processes: API node(s), workers and the scheduler, on real services."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inferq.client import Client
from inferq.core.settings import Settings
from tests.processes import ServiceProcess, free_port, wait_for_http, wait_for_log


@dataclasses.dataclass
class Stack:
    """A running system; tests may kill and start workers."""

    settings: Settings
    url: str
    logs: Path
    api: ServiceProcess
    scheduler: ServiceProcess
    workers: list[ServiceProcess] = dataclasses.field(default_factory=list)

    def start_worker(self, name: str) -> ServiceProcess:
        worker = ServiceProcess(name, ["worker", "--name", name], self.settings, self.logs)
        wait_for_log(worker, " ready.", timeout=90)
        self.workers.append(worker)
        return worker

    def client(self, key: str) -> Client:
        return Client(self.url, key, timeout_s=30)

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler, self.api]:
            proc.stop()


def start_stack(settings: Settings, logs: Path, workers: int) -> Stack:
    port = free_port()
    api = ServiceProcess("api", ["api", "--port", str(port)], settings, logs)
    scheduler = ServiceProcess("scheduler", ["beat"], settings, logs)
    stack = Stack(settings, f"http://127.0.0.1:{port}", logs, api, scheduler)
    try:
        wait_for_http(stack.url + "/readyz?scope=node", api)
        for i in range(workers):
            stack.start_worker(f"w{i + 1}-{settings.namespace}")
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture
def stacks(digits_version: int, tmp_path: Path) -> Iterator[Callable[[Settings, int], Stack]]:
    """Start a stack on given settings with N workers; every one started stops at the end."""
    started: list[Stack] = []

    def start(settings: Settings, workers: int) -> Stack:
        logs = tmp_path / f"stack-{len(started)}"
        logs.mkdir()
        started.append(start_stack(settings, logs, workers))
        return started[-1]

    yield start
    for stack in started:
        stack.stop()


@pytest.fixture
def redis_stack(settings: Settings, stacks: Callable[[Settings, int], Stack]) -> Stack:
    return stacks(settings, 2)


@pytest.fixture
def amqp_stack(amqp_settings: Settings, stacks: Callable[[Settings, int], Stack]) -> Stack:
    return stacks(amqp_settings, 2)

"""Reading Prometheus text exposition in tests: what a scrape says, as numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"


@dataclasses.dataclass(frozen=True)
class Scrape:
    """The samples of one scrape."""

    text: str
    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = [
            (s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
        return cls(text, samples)

    @classmethod
    def get(cls, url: str) -> Scrape:
        response = requests.get(url, timeout=10)
        response.raise_for_status()
        return cls.parse(response.text)

    def value(self, name: str, **labels: str) -> float:
        """The sum of every sample named ``name`` whose labels include ``labels`` (0: none)."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def names(self) -> set[str]:
        """Every sample name in the scrape."""
        return {name for name, _, _ in self.samples}

    def label_values(self, name: str, label: str) -> set[str]:
        """The values ``label`` takes on the samples of ``name``."""
        return {have[label] for sample, have, _ in self.samples if sample == name and label in have}


def rule_expressions() -> list[str]:
    """The expression of every alerting and recording rule in rules.yml."""
    document = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]

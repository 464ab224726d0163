"""The statistics experiments decide with: proportions, their intervals and their differences.

Normal approximations only (the standard library's :class:`statistics.NormalDist`), which is
what the usual A/B tools use once each arm has a few dozen observations:

- a proportion's interval is Wilson's score interval (well behaved near 0 and 1);
- two independent arms (A/B) are compared with the two-proportion z-test (pooled standard
  error for the test, unpooled for the interval of the difference);
- two outputs on the same jobs (shadow mode) are compared with McNemar's test, which uses
  only the jobs where exactly one of the two was right.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

_NORMAL = NormalDist()


def z_critical(alpha: float) -> float:
    """The two-sided critical value: ``|z|`` above it is significant at ``alpha``."""
    return _NORMAL.inv_cdf(1 - alpha / 2)


def two_sided_p(z: float) -> float:
    """The two-sided p-value of a standard normal statistic."""
    return 2 * (1 - _NORMAL.cdf(abs(z)))


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float] | None:
    """Wilson's score interval for ``successes / n``; None without observations."""
    if n <= 0:
        return None
    z = z_critical(alpha)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclasses.dataclass(frozen=True)
class Difference:
    """``treatment - baseline`` for a proportion, its interval and whether it is significant."""

    difference: float
    ci: tuple[float, float]
    z: float
    p_value: float
    alpha: float
    test: str

    @property
    def significant(self) -> bool:
        """Whether the difference is significant at ``alpha``."""
        return self.p_value < self.alpha

    def negated(self) -> Difference:
        """``baseline - treatment``: the same test seen from the other arm."""
        low, high = self.ci
        return dataclasses.replace(self, difference=-self.difference, ci=(-high, -low), z=-self.z)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, rounded for reading."""
        return {
            "difference": round(self.difference, 4),
            "ci": [round(self.ci[0], 4), round(self.ci[1], 4)],
            "z": round(self.z, 3),
            "p_value": float(f"{self.p_value:.3g}"),
            "alpha": self.alpha,
            "significant": self.significant,
            "test": self.test,
        }


def two_proportions(
    baseline: tuple[int, int], treatment: tuple[int, int], alpha: float = 0.05
) -> Difference | None:
    """Compare ``(successes, n)`` of two independent groups; None when one has no data."""
    (x1, n1), (x2, n2) = baseline, treatment
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    diff = p2 - p1
    pooled = (x1 + x2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = diff / se_pooled if se_pooled > 0 else 0.0
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    half = z_critical(alpha) * se
    ci = (diff - half, diff + half)
    return Difference(diff, ci, z, two_sided_p(z), alpha, "two-proportion z")


def paired_proportions(
    baseline_only: int, treatment_only: int, n: int, alpha: float = 0.05
) -> Difference | None:
    """McNemar's test on ``n`` paired outcomes: ``baseline_only`` jobs only the baseline got
    right, ``treatment_only`` only the treatment; None without pairs."""
    if n <= 0:
        return None
    b, c = baseline_only, treatment_only
    diff = (c - b) / n
    discordant = b + c
    z = (c - b) / math.sqrt(discordant) if discordant else 0.0
    se = math.sqrt(max(0.0, discordant - (c - b) ** 2 / n)) / n
    half = z_critical(alpha) * se
    ci = (diff - half, diff + half)
    return Difference(diff, ci, z, two_sided_p(z), alpha, "McNemar (paired)")

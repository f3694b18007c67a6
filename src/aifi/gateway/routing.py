"""Routing rules: which of the hospital's subscribed products a study goes to, and which series.

A rule matches a series when every criterion it names matches; a study goes to a product when
at least one series matches, and only the matching series are sent (minimum necessary).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from aifi.gateway.config import Route
from aifi.gateway.state import RoutedJob


def _matches_any(value: str, allowed: list[str]) -> bool:
    return not allowed or value.strip().upper() in {a.strip().upper() for a in allowed}


def _matches_pattern(value: str, pattern: str | None) -> bool:
    return pattern is None or re.search(pattern, value, flags=re.IGNORECASE) is not None


def series_matches(route: Route, instance: Mapping[str, Any], calling_ae: str) -> bool:
    return (
        _matches_any(instance["modality"], route.modalities)
        and _matches_any(instance["body_part"], route.body_parts)
        and _matches_any(instance["sop_class_uid"], route.sop_classes)
        and _matches_any(calling_ae, route.calling_aes)
        and _matches_pattern(instance["study_description"], route.study_description)
        and _matches_pattern(instance["series_description"], route.series_description)
    )


def route_study(
    routes: Iterable[Route], instances: Iterable[Mapping[str, Any]], calling_ae: str
) -> list[RoutedJob]:
    """One job per product whose rule matches, with the series that matched it."""
    selected: dict[str, set[str]] = defaultdict(set)
    priority: dict[str, str | None] = {}
    rows = list(instances)
    for route in routes:
        for instance in rows:
            if series_matches(route, instance, calling_ae):
                selected[route.product].add(instance["series_uid"])
                priority.setdefault(route.product, route.priority)
    return [
        RoutedJob(product_id=product, priority=priority[product], series_uids=frozenset(series))
        for product, series in selected.items()
    ]

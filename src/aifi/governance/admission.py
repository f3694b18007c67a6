"""A product's admission to the national catalogue: its states, who may move it, and what follows.

    draft ──submit──▶ submitted ──start-review──▶ under-review ──admit──▶ admitted
      ▲                  │                           │                    │  ▲
      └────withdraw──────┴──────withdraw / return────┘          suspend   │  │ reinstate
                                                                          ▼  │
                                                      retired ◀──retire── suspended

The vendor submits and withdraws; the operator reviews, admits, returns a dossier for changes,
suspends, reinstates and retires. Only an admitted product takes subscriptions and new jobs,
so a suspension stops new jobs for it at once, at every hospital. A new version re-opens the
review of an admitted product: the version that was admitted is not the one that now runs.
"""

from __future__ import annotations

from enum import StrEnum

from aifi.exchange.schemas import OrganisationKind


class AdmissionState(StrEnum):
    """Where a product stands in admission (the exchange's ``products.status`` column)."""

    draft = "draft"
    submitted = "submitted"
    under_review = "under-review"
    admitted = "admitted"
    suspended = "suspended"
    retired = "retired"


class AdmissionAction(StrEnum):
    """What a vendor or the operator asks for (the body of an admission request)."""

    submit = "submit"
    withdraw = "withdraw"
    start_review = "start-review"
    admit = "admit"
    return_to_vendor = "return"
    suspend = "suspend"
    reinstate = "reinstate"
    retire = "retire"


class AdmissionError(ValueError):
    """A move the admission rules forbid; the message names the rule, product, state and role."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"rule {rule!r}: {message}")
        self.rule = rule


_VENDOR = OrganisationKind.vendor
_OPERATOR = OrganisationKind.operator

#: (action) -> (the role that may take it, the states it may start from, the state it leads to)
RULES: dict[AdmissionAction, tuple[OrganisationKind, frozenset[AdmissionState], AdmissionState]] = {
    AdmissionAction.submit: (
        _VENDOR,
        frozenset({AdmissionState.draft}),
        AdmissionState.submitted,
    ),
    AdmissionAction.withdraw: (
        _VENDOR,
        frozenset({AdmissionState.submitted, AdmissionState.under_review}),
        AdmissionState.draft,
    ),
    AdmissionAction.start_review: (
        _OPERATOR,
        frozenset({AdmissionState.submitted}),
        AdmissionState.under_review,
    ),
    AdmissionAction.admit: (
        _OPERATOR,
        frozenset({AdmissionState.under_review}),
        AdmissionState.admitted,
    ),
    AdmissionAction.return_to_vendor: (
        _OPERATOR,
        frozenset({AdmissionState.under_review}),
        AdmissionState.draft,
    ),
    AdmissionAction.suspend: (
        _OPERATOR,
        frozenset({AdmissionState.admitted}),
        AdmissionState.suspended,
    ),
    AdmissionAction.reinstate: (
        _OPERATOR,
        frozenset({AdmissionState.suspended}),
        AdmissionState.admitted,
    ),
    AdmissionAction.retire: (
        _OPERATOR,
        frozenset({AdmissionState.admitted, AdmissionState.suspended}),
        AdmissionState.retired,
    ),
}


def allowed_actions(
    state: AdmissionState | str, role: OrganisationKind | str
) -> list[AdmissionAction]:
    """The actions `role` may take on a product in `state` (for buttons on a page)."""
    current, kind = AdmissionState(state), OrganisationKind(role)
    return [
        action
        for action, (who, sources, _target) in RULES.items()
        if who == kind and current in sources
    ]


def transition(
    current: AdmissionState | str,
    action: AdmissionAction | str,
    *,
    actor_role: OrganisationKind | str,
    product_id: str = "",
) -> AdmissionState:
    """The state after `actor_role` takes `action` on a product in state `current`.

    Raises
    ------
    AdmissionError
        ``admission-role`` when the action belongs to another role, ``admission-transition``
        when the action cannot start from `current`; both name what the caller may do instead.
    """
    state = AdmissionState(current)
    act = AdmissionAction(action)
    role = OrganisationKind(actor_role)
    who, sources, target = RULES[act]
    subject = f"product {product_id!r}" if product_id else "the product"
    if role != who:
        raise AdmissionError(
            "admission-role",
            f"a {role.value} may not {act.value} {subject}: only the {who.value} may"
            + _instead(state, role),
        )
    if state not in sources:
        starts = ", ".join(sorted(s.value for s in sources))
        raise AdmissionError(
            "admission-transition",
            f"cannot {act.value} {subject} in state {state.value!r} (only from {starts})"
            + _instead(state, role),
        )
    return target


def _instead(state: AdmissionState, role: OrganisationKind) -> str:
    options = allowed_actions(state, role)
    if not options:
        return f"; a {role.value} can take no action in state {state.value!r}"
    return f"; a {role.value} may now: {', '.join(a.value for a in options)}"


def on_new_version(state: AdmissionState | str, *, product_id: str = "") -> AdmissionState:
    """The state after the vendor publishes a new version of the product's manifest.

    An admitted product goes back under review: what was admitted is not what now runs. A
    suspension stays until the operator reinstates (after reviewing the new version); earlier
    states keep their place, the dossier now describing the new version.

    Raises
    ------
    AdmissionError
        ``admission-retired``: a retired product takes no new version (register a new product).
    """
    state = AdmissionState(state)
    if state == AdmissionState.retired:
        subject = f"product {product_id!r}" if product_id else "the product"
        raise AdmissionError("admission-retired", f"{subject} is retired and takes no new version")
    if state == AdmissionState.admitted:
        return AdmissionState.under_review
    return state


def may_subscribe(state: AdmissionState | str) -> bool:
    """Whether a hospital may take a new subscription to a product in `state`."""
    return AdmissionState(state) == AdmissionState.admitted


def takes_jobs(state: AdmissionState | str) -> bool:
    """Whether the exchange accepts new jobs for, and hands out jobs of, a product in `state`."""
    return AdmissionState(state) == AdmissionState.admitted

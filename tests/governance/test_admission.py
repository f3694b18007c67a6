"""Admission states: every allowed move by its role, and forbidden moves with a clear error."""

from __future__ import annotations

import pytest

from aifi.governance.admission import (
    RULES,
    AdmissionAction,
    AdmissionError,
    AdmissionState,
    allowed_actions,
    may_subscribe,
    on_new_version,
    takes_jobs,
    transition,
)

S, A = AdmissionState, AdmissionAction

ALLOWED = [
    (S.draft, A.submit, "vendor", S.submitted),
    (S.submitted, A.withdraw, "vendor", S.draft),
    (S.under_review, A.withdraw, "vendor", S.draft),
    (S.submitted, A.start_review, "operator", S.under_review),
    (S.under_review, A.admit, "operator", S.admitted),
    (S.under_review, A.return_to_vendor, "operator", S.draft),
    (S.admitted, A.suspend, "operator", S.suspended),
    (S.suspended, A.reinstate, "operator", S.admitted),
    (S.admitted, A.retire, "operator", S.retired),
    (S.suspended, A.retire, "operator", S.retired),
]


@pytest.mark.parametrize(("state", "action", "role", "expected"), ALLOWED)
def test_allowed_move(
    state: AdmissionState, action: AdmissionAction, role: str, expected: AdmissionState
) -> None:
    assert transition(state, action, actor_role=role) == expected
    assert action in allowed_actions(state, role)


def test_the_table_lists_every_allowed_move() -> None:
    listed = {(state, action) for state, action, _role, _to in ALLOWED}
    ruled = {(state, action) for action, (_who, sources, _to) in RULES.items() for state in sources}
    assert listed == ruled


def test_a_vendor_cannot_admit_its_own_product() -> None:
    with pytest.raises(AdmissionError) as caught:
        transition(S.under_review, A.admit, actor_role="vendor", product_id="bone-age")
    assert caught.value.rule == "admission-role"
    message = str(caught.value)
    assert "product 'bone-age'" in message and "only the operator" in message
    assert "may now: withdraw" in message


def test_the_operator_cannot_submit_for_the_vendor() -> None:
    with pytest.raises(AdmissionError) as caught:
        transition(S.draft, A.submit, actor_role="operator")
    assert caught.value.rule == "admission-role"
    assert "only the vendor may" in str(caught.value)


def test_a_hospital_can_take_no_admission_action() -> None:
    for action in AdmissionAction:
        with pytest.raises(AdmissionError, match="a hospital may not"):
            transition(S.admitted, action, actor_role="hospital")
    assert allowed_actions(S.admitted, "hospital") == []


def test_a_move_from_the_wrong_state_names_the_states_it_needs() -> None:
    with pytest.raises(AdmissionError) as caught:
        transition(S.draft, A.admit, actor_role="operator", product_id="bone-age")
    assert caught.value.rule == "admission-transition"
    assert "in state 'draft' (only from under-review)" in str(caught.value)
    with pytest.raises(AdmissionError, match="can take no action in state 'retired'"):
        transition(S.retired, A.reinstate, actor_role="operator")


def test_only_an_admitted_product_takes_subscriptions_and_jobs() -> None:
    assert [s for s in S if may_subscribe(s)] == [S.admitted]
    assert [s for s in S if takes_jobs(s)] == [S.admitted]
    assert not takes_jobs(transition(S.admitted, A.suspend, actor_role="operator"))


def test_a_new_version_reopens_review_of_an_admitted_product() -> None:
    assert on_new_version(S.admitted) == S.under_review
    assert not takes_jobs(on_new_version(S.admitted))
    assert on_new_version(S.suspended) == S.suspended
    for state in (S.draft, S.submitted, S.under_review):
        assert on_new_version(state) == state
    with pytest.raises(AdmissionError, match="product 'x' is retired"):
        on_new_version(S.retired, product_id="x")

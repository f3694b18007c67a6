"""The refusal of an uploaded result: which rule it broke and which attribute broke it."""

from __future__ import annotations


class ResultRejected(Exception):
    """An uploaded result breaks a rule of the exchange and is refused.

    Parameters
    ----------
    rule:
        A stable short name of the rule, e.g. ``"reference-own-study"``; see
        :mod:`aifi.results.check` for the list.
    attribute:
        The offending attribute with its tag and, inside sequences, its path, e.g.
        ``"StudyInstanceUID (0020,000D)"``. Values that could identify a patient are never
        included.
    message:
        What is wrong, for the vendor who has to fix it.
    """

    def __init__(self, rule: str, attribute: str, message: str) -> None:
        super().__init__(f"[{rule}] {attribute}: {message}")
        self.rule = rule
        self.attribute = attribute
        self.message = message

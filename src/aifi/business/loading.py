"""Reading a business case from YAML, with errors that name the YAML path a person has to fix."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aifi.business.model import BusinessCase, assign_paths

EXAMPLES_PACKAGE = "aifi.business"
EXAMPLES_FOLDER = "examples"


class BusinessCaseError(ValueError):
    """A business-case file that cannot be used; `problems` lists ``path: what is wrong``."""

    def __init__(self, origin: str, problems: list[str]) -> None:
        self.origin = origin
        self.problems = problems
        listing = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{origin}: {len(problems)} problem(s) in the business case\n{listing}")


def shipped_examples() -> list[str]:
    """Names of the business cases shipped with aifi (usable instead of a path)."""
    folder = resources.files(EXAMPLES_PACKAGE) / EXAMPLES_FOLDER
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def resolve_case_source(name_or_path: str | Path) -> tuple[str, str]:
    """The YAML text and a label for it, from a file path or a shipped example's name.

    Raises:
        BusinessCaseError: neither a readable file nor a shipped example has that name.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    name = str(name_or_path)
    if name in shipped_examples():
        example = resources.files(EXAMPLES_PACKAGE) / EXAMPLES_FOLDER / f"{name}.yaml"
        return example.read_text(encoding="utf-8"), f"example {name}"
    raise BusinessCaseError(
        name,
        [f"no such file, and no shipped example of that name (examples: {shipped_examples()})"],
    )


def load_case(name_or_path: str | Path) -> BusinessCase:
    """The validated business case in a YAML file or shipped example."""
    text, origin = resolve_case_source(name_or_path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise BusinessCaseError(origin, [f"not valid YAML: {err}"]) from err
    return parse_case(data, origin)


def parse_case(data: Any, origin: str = "business case") -> BusinessCase:
    """Validate already-parsed YAML data into a `BusinessCase` with paths on every quantity.

    Raises:
        BusinessCaseError: with one ``yaml.path: message`` line per problem.
    """
    if not isinstance(data, dict):
        raise BusinessCaseError(origin, ["the top level must be a mapping"])
    try:
        case = BusinessCase.model_validate(data)
    except ValidationError as err:
        raise BusinessCaseError(origin, format_validation_error(err, data)) from err
    return assign_paths(case)


def format_validation_error(err: ValidationError, data: Any) -> list[str]:
    """``path: message`` lines for a pydantic error, naming list items by their id where known."""
    problems = []
    for item in err.errors():
        path = yaml_path(item["loc"], data) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{path}: {message}")
    return problems


def yaml_path(loc: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic location as a YAML path: ``hospitals[umc].exams_per_year.ct.unit``."""
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, int):
            label = str(key)
            if isinstance(node, list) and 0 <= key < len(node):
                node = node[key]
                if isinstance(node, dict) and isinstance(node.get("id"), str):
                    label = node["id"]
            else:
                node = None
            parts.append(f"[{label}]")
            continue
        if key in {"triangular", "uniform", "normal"} and not (
            isinstance(node, dict) and key in node
        ):
            continue  # pydantic's tag for the distribution kind, not a YAML key
        node = node.get(key) if isinstance(node, dict) else None
        parts.append(f".{key}" if parts else str(key))
    return "".join(parts)

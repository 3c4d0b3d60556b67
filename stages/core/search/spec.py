"""search.yaml: its typed model and loader, the values a trial is given, and the fingerprint a study records of
its spec (a worker with another spec is refused)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages.core.errors import PipelineError
from stages.core.schema import (
    ParamsError,
    describe_error,
    did_you_mean,
    flatten,
    parse_params,
    read_yaml,
    set_dotted,
)

STORAGE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")


STORAGE_HINT = ("use sqlite:///optuna.db (this machine alone) or postgresql://user@host/database (a team; the "
                "password in PGPASSWORD or ~/.pgpass)")


Scalar = str | int | float | bool | None


class SearchError(PipelineError):
    """search.yaml is invalid or the study cannot go on."""


class Dimension(BaseModel):
    """One searched params key: a list of choices, or a range low..high (log-uniform with log: true)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    choices: list[Scalar] | None = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        ranged = [name for name in ("low", "high", "step") if getattr(self, name) is not None] + ["log"] * self.log
        if self.choices is not None:
            if ranged:
                raise ValueError(f"give either choices or a range, not both (also set: {', '.join(ranged)})")
            if not self.choices:
                raise ValueError("choices is empty: list at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs choices: [...] or a range with low and high")
        if self.low >= self.high:
            raise ValueError(f"bad range: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"bad range: log: true needs low > 0 (got {self.low})")
        if self.step is not None and (self.log or self.step <= 0):
            raise ValueError("step must be positive and cannot go with log: true")
        return self


class SearchSpec(BaseModel):
    """search.yaml. Every key is required: the shipped search.yaml is the one place its values live."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    study: str
    storage: str
    n_trials: Annotated[int, Field(ge=1)]
    sampler: Literal["tpe", "grid"]
    metric: Literal["val_accuracy", "val_loss"]
    heartbeat_interval: Annotated[int, Field(ge=1)]
    grace_period: Annotated[int, Field(ge=1)]
    max_retry: Annotated[int, Field(ge=0)]
    trial_timeout: Annotated[int, Field(ge=0)]
    push: Literal[False] | str  # false, or the git remote each trial's experiment is pushed to
    space: dict[str, Dimension]

    @field_validator("study")
    @classmethod
    def _names_an_experiment(cls, study: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study):
            raise ValueError(f"{study!r} cannot name DVC experiments: use letters, digits, '.', '_' and '-'")
        return study

    @field_validator("storage")
    @classmethod
    def _known_scheme(cls, storage: str) -> str:
        scheme = storage.split("://", 1)[0] if "://" in storage else ""
        if scheme not in STORAGE_SCHEMES:
            # Only the scheme is echoed: the rest may hold a password.
            raise ValueError(f"unknown scheme {scheme!r}{did_you_mean(scheme, STORAGE_SCHEMES)}; {STORAGE_HINT}")
        return storage

    @field_validator("space")
    @classmethod
    def _not_empty(cls, space: dict) -> dict:
        if not space:
            raise ValueError("empty: name at least one params.yaml key, e.g. "
                             "train.optimizer.learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}")
        return space

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period}) must be longer than heartbeat_interval "
                             f"({self.heartbeat_interval}), or live trials count as stale")
        if self.sampler == "grid":
            ranged = [key for key, dimension in self.space.items() if dimension.choices is None]
            if ranged:
                raise ValueError(f"sampler grid needs choices: [...] for every key, not a range: {', '.join(ranged)}")
        return self


def check_space(space: dict[str, Dimension], raw_params: dict) -> list[str]:
    """Each searched key must be a params.yaml key, and each choice or bound a value params.yaml accepts there."""
    known = list(flatten(raw_params))
    problems = []
    for key, dimension in space.items():
        if key not in known:
            problems.append(f"space.{key}: not a params.yaml key{did_you_mean(key, known)}")
            continue
        for value in dimension.choices if dimension.choices is not None else (dimension.low, dimension.high):
            candidate = copy.deepcopy(raw_params)
            set_dotted(candidate, key, value)
            try:
                parse_params(candidate)
            except ParamsError as error:
                problems.extend(f"space: {line.strip()}" for line in str(error).splitlines()[1:])
    return problems


def load_search(path: str | Path, raw_params: dict) -> SearchSpec:
    """Read and validate search.yaml; one SearchError with a line per problem."""
    if not Path(path).is_file():
        raise SearchError(f"{path} not found: give the search spec, e.g. `python -m stages.search search.yaml`")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SearchError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    try:
        spec = SearchSpec.model_validate(raw)
        problems = check_space(spec.space, raw_params)
    except ValidationError as error:
        problems = [describe_error(e, SearchSpec) for e in error.errors(include_url=False)]
    if problems:
        raise SearchError(f"{path} is invalid:\n  " + "\n  ".join(problems))
    return spec


def warn_of_a_password(spec_path: str | Path, storage: str) -> None:
    """A password in a search.yaml that git tracks ends up in every clone: libpq reads it from elsewhere."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(storage).password
    except (ArgumentError, ValueError):
        return
    path = Path(spec_path)
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent.resolve(),
                             capture_output=True).returncode == 0
    if password and tracked:
        print(f"warning: {path} is tracked by git and its storage holds a password: drop it from the URL and set "
              "PGPASSWORD or a ~/.pgpass line (host:port:database:user:password) instead", file=sys.stderr)


def storage_url(storage: str) -> str:
    # SQLAlchemy reads a bare postgresql:// as psycopg2; the project installs psycopg 3.
    return re.sub(r"^postgresql://", "postgresql+psycopg://", storage)


def int_valued(raw_params: dict, key: str) -> bool:
    node: Any = raw_params
    for part in key.split("."):
        node = node[part]
    return isinstance(node, int) and not isinstance(node, bool)


def suggest(trial, space: dict[str, Dimension], raw_params: dict) -> dict[str, Any]:
    """The trial's value for every searched key; integer keys get integers."""
    values = {}
    for key, dimension in space.items():
        if dimension.choices is not None:
            values[key] = trial.suggest_categorical(key, dimension.choices)
        elif int_valued(raw_params, key):
            values[key] = trial.suggest_int(key, int(dimension.low), int(dimension.high),
                                            step=int(dimension.step or 1), log=dimension.log)
        else:
            values[key] = trial.suggest_float(key, dimension.low, dimension.high, step=dimension.step,
                                              log=dimension.log)
    return values


def spec_record(spec: SearchSpec) -> dict:
    """What makes a study one study: the whole spec but where it is stored (teammates reach it by other URLs)."""
    return json.loads(spec.model_dump_json(exclude={"storage"}, exclude_defaults=True))


def spec_fingerprint(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def differing_keys(recorded: dict, mine: dict) -> list[str]:
    flat_recorded, flat_mine = dict(flatten(recorded)), dict(flatten(mine))
    return sorted(key for key in flat_recorded.keys() | flat_mine.keys()
                  if flat_recorded.get(key, "<absent>") != flat_mine.get(key, "<absent>"))


def check_spec(study, spec: SearchSpec) -> None:
    """The first worker records the spec in the study's user attrs; a worker with another spec is refused."""
    mine = spec_record(spec)
    recorded = study.user_attrs.get("spec")
    if recorded is None:
        # Two first workers may both get here: the same spec writes the same value, another one is caught below
        # by whichever reads after the other wrote.
        study.set_user_attr("spec", mine)
        study.set_user_attr("spec_fingerprint", spec_fingerprint(mine))
        recorded = study.user_attrs["spec"]
    if spec_fingerprint(recorded) != spec_fingerprint(mine):
        raise SearchError(f"study {spec.study!r} was started with another search spec (differs in: "
                          f"{', '.join(differing_keys(recorded, mine))}): use the same search.yaml or name a new study")

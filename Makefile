# Sets up the project-local environment, then hands over to DVC and pytest.
# `make run` = set up + `dvc repro` + what to do next;  `make test` = set up + pytest. A second call installs nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup system run test test-fast mutants lint bench docs lock clean

# What the team-server, SSH-remote and drawing-page tests start for real. Installed from Debian only when missing
# and when running as root; otherwise the tests that need them fail under CI=true and say what is missing.
SYSTEM_PACKAGES := postgresql openssh-server chromium
SYSTEM_PROBES   := /usr/lib/postgresql/15/bin/pg_ctl /usr/sbin/sshd /usr/bin/chromium

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

system:
	@missing=0; for probe in $(SYSTEM_PROBES); do test -x $$probe || missing=1; done; \
	if [ $$missing = 1 ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); \
	fi

# What to do next, printed by a step of its own: a DVC stage would be skipped when its outputs are cached.
run: setup
	@echo $(BIN)/dvc repro; $(BIN)/dvc repro; status=$$?; $(BIN)/python -m stages.core.next_steps $$status; exit $$status

# Two pytest-xdist workers, each test module whole on one, in order (its module fixtures built once, its tests'
# sequence kept); modules with the most tests start first. TEST_WORKERS=0: one process, as before.
TEST_WORKERS ?= 2
test: setup system
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope

# Every test that needs no project copy running DVC, no server and no browser (the `slow` rule in tests/conftest.py).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadscope

# Mutation testing, not in CI (pyproject's [tool.mutmut]): one time box of MUTANT_MINUTES, niced (mutmut tries the
# cheapest mutants first, so the TensorFlow-heavy augment.py ones come last), then a line of score per module:
# caught / mutants tried ("no test": a mutant no selected fast test calls).
MUTANT_MINUTES ?= 30
mutants: setup
	rm -rf mutants
	timeout --signal=INT $(MUTANT_MINUTES)m nice -n 10 $(BIN)/mutmut run --max-children 2 || true
	$(BIN)/python -c "$$MUTATION_SCORES"

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python -m benchmarks.benchmark

# The measured numbers in README.md and docs/, rewritten from their snapshots in docs/numbers/ (docs/numbers.md).
docs: setup
	$(BIN)/python -m benchmarks.docs

# Re-pin every dependency after editing pyproject.toml. Only what the project and its dev extra require is pinned:
# an optional extra installed beside them (bench: PyTorch) stays out of the lock.
lock: setup
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip freeze --all --exclude-editable | grep -v '^pip==' | $(BIN)/python -c "$$REQUIRED_ONLY" > requirements.lock

# stdin: `pip freeze` lines; stdout: those of pyproject's dependencies, its dev extra and what they require, recursively.
define REQUIRED_ONLY
import sys, tomllib
from importlib.metadata import PackageNotFoundError, distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canonical

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
needed = {"setuptools", "wheel"}
todo = [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["dev"]]
while todo:
    requirement = todo.pop()
    name = canonical(requirement.name)
    keys = {name} | {(name, extra) for extra in requirement.extras}
    if keys <= needed:
        continue
    needed |= keys
    try:
        requires = distribution(name).requires or []
    except PackageNotFoundError:
        continue
    for child in map(Requirement, requires):
        if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in {"", *requirement.extras}):
            todo.append(child)
sys.stdout.writelines(line for line in sys.stdin if canonical(line.split("==")[0].split(" @ ")[0].strip()) in needed)
endef
export REQUIRED_ONLY

# mutants/**/*.py.meta (mutmut's results): caught (killed or timed out), survived, no test, not reached in time.
define MUTATION_SCORES
import collections, json, pathlib
from mutmut.stats import status_by_exit_code
print(f"{'module':28} {'caught':>7} {'survived':>9} {'no test':>8} {'not tried':>10} {'score':>6}")
for meta in sorted(pathlib.Path("mutants").rglob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"].values()
    count = collections.Counter(status_by_exit_code[code] for code in codes)
    caught = count["killed"] + count["timeout"]
    tried = caught + count["survived"] + count["no tests"] + count["suspicious"]
    name = meta.relative_to("mutants").as_posix().removesuffix(".meta")
    print(f"{name:28} {caught:7} {count['survived']:9} {count['no tests']:8} {count['not checked']:10} "
          f"{caught / tried if tried else 0:6.0%}")
endef
export MUTATION_SCORES

clean:
	rm -rf $(VENV)

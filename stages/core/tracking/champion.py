"""The champion rule (params.yaml `champion:`, MLflow's MetricThreshold vocabulary): which of two versions tested on
the same test set holds `@champion`, and the one line that says why.

A version's own_test scores live in its tags: `own_test_sha256` (the own_test digits its run held out) and
`own_test_accuracy.<sha>` (its accuracy on any own_test set it was scored on; the register stage re-scores the
champion on a candidate's own_test). The race repair folds the rule over every candidate, oldest first, so every
writer that sees the same tags reaches the same champion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stages.core.errors import PipelineError
from stages.core.tracking.versions import alias_version, candidates

OWN_SET_TAG = "own_test_sha256"
REFUSED_TAG = "champion_refused"  # on a version the rule refused: the rule and the numbers


def own_tag(sha256: str) -> str:
    return f"own_test_accuracy.{sha256[:16]}"


@dataclass(frozen=True)
class Entry:
    """What the rule knows of one version: held-out accuracy, its own_test set, its scores on own_test sets."""

    version: str
    held_out: float
    own_set: str | None = None
    own: dict[str, float] = field(default_factory=dict)  # own_tag(sha) -> accuracy

    @classmethod
    def of(cls, version) -> Entry:
        tags = version.tags
        return cls(str(version.version), float(tags["test_accuracy"]), tags.get(OWN_SET_TAG),
                   {key: float(value) for key, value in tags.items() if key.startswith("own_test_accuracy.")})


@dataclass(frozen=True)
class Verdict:
    takes: bool
    why: str  # the numbers: `own_test 1.000 vs 0.000 on 9 digits, held-out ...` or `held-out 0.9712 vs 0.9925`
    rule: str = ""  # for a refusal: the rule that refused it


def judge(challenger: Entry, holder: Entry, rule, own_images: int | None = None) -> Verdict:
    """Whether `challenger` takes the alias from `holder` under `rule` (params.champion). With own_test scores of
    both on the challenger's own_test set, reading it better wins within `rule.tolerance` points of held-out;
    otherwise held-out must be better by more than `rule.min_absolute_change`; below `rule.threshold` never."""
    held = f"held-out {challenger.held_out:.4f} vs {holder.held_out:.4f}"
    if rule.threshold is not None and challenger.held_out < rule.threshold:
        return Verdict(False, held, f"threshold {rule.threshold}")
    key = own_tag(challenger.own_set) if challenger.own_set else None
    if key and key in challenger.own and key in holder.own and challenger.own[key] > holder.own[key]:
        own = f"own_test {challenger.own[key]:.3f} vs {holder.own[key]:.3f}"
        own += f" on {own_images} digits" if own_images else ""
        if challenger.held_out >= holder.held_out - rule.tolerance / 100 - 1e-12:
            return Verdict(True, f"{own}, {held} within {rule.tolerance:g}")
        return Verdict(False, f"{own}, {held} beyond {rule.tolerance:g}", f"tolerance {rule.tolerance:g} points")
    if challenger.held_out > holder.held_out + rule.min_absolute_change:
        return Verdict(True, held)
    return Verdict(False, held, f"min_absolute_change {rule.min_absolute_change:g}")


def choose(entries: list[Entry], rule) -> Entry | None:
    """The champion among `entries`: the rule folded over them, oldest version first (ties keep the holder), so
    the answer depends on the tags alone, not on who wrote last."""
    holder = None
    for entry in sorted(entries, key=lambda entry: int(entry.version)):
        if rule.threshold is not None and entry.held_out < rule.threshold:
            continue
        if holder is None or judge(entry, holder, rule).takes:
            holder = entry
    return holder


def line(name: str, candidate: Entry, holder: Entry | None, verdict: Verdict | None) -> str:
    """The stage's one line about the version just registered."""
    if holder is None:
        return f"champion: {name} v{candidate.version} (the first): held-out {candidate.held_out:.4f}"
    if verdict is None or verdict.takes:
        return f"champion: {name} v{candidate.version} (was v{holder.version})" + (
            f": {verdict.why}" if verdict else "")
    return f"champion stays v{holder.version}: {verdict.why}"


def promote_champion(client, name: str, test_sha256: str, rule, alias: str = "champion") -> str | None:
    """Point `alias` at the champion that `rule` (params.champion) chooses among
    the versions tested on the same test set as the version just evaluated (a changed test set starts a new race);
    set it, read it back, repair it. Returns the champion's version.

    The registry has no lock and no compare-and-set, so two evaluations finishing together can each see only
    their own version and the later write may be the worse one (and two first writes of the alias collide). Each
    evaluation tags its version before calling this, so whoever checks last sees every tag and repairs what an
    earlier, less informed write left behind.
    """
    from mlflow.exceptions import MlflowException

    for _ in range(20):
        best = choose([Entry.of(version) for version in candidates(client, name, test_sha256)], rule)
        if best is None:
            return None
        current = alias_version(client, name, alias)
        if current == best.version:
            return current
        try:
            client.set_registered_model_alias(name, alias, best.version)
        except MlflowException:  # two first-ever writes collide on the alias's key: read again
            continue
    raise PipelineError(f"the {alias!r} alias of registered model {name!r} kept changing under concurrent updates")


def notes(client, names: list[str], alias: str = "champion") -> dict[str, str]:
    """Run id -> what the registry says of its version of each of `names`: the champion, or why the rule refused
    it (python -m stages.compare shows it beside the run)."""
    from mlflow.exceptions import MlflowException

    said = {}
    for name in names:
        try:
            holder = str(client.get_registered_model(name).aliases.get(alias))
        except MlflowException:  # nothing registered under this name
            continue
        for version in client.search_model_versions(f"name = '{name}'"):
            if str(version.version) == holder:
                said[version.run_id] = f"{alias} ({name} v{version.version})"
            elif REFUSED_TAG in version.tags:
                said[version.run_id] = f"v{version.version} {version.tags[REFUSED_TAG]}"
    return said

"""The champion rule (params.yaml `champion:`): real tiny Keras models in a real SQLite MLflow store, crowned by the
register stage's core (registry.crown), the current champion re-scored on the candidate's own_test digits through
the one reader (stages/reading/opening.py), as the register stage does."""

from __future__ import annotations

from functools import partial

import numpy as np

from stages.core.tracking import champion, registry, versions
from stages.core.tracking import store as tracking_store
from stages.reading.opening import accuracy

DATASET, TEST_SET = "mnist_10k", "held-out-sha"


def always(label: int):
    """A Keras model that answers `label` for every image: what it reads is known without running our code."""
    import keras

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    weights, bias = model.layers[-1].get_weights()
    bias[:] = 0
    bias[label] = 5
    model.layers[-1].set_weights([np.zeros_like(weights), bias])
    return model


def own_test(params, sha256: str, images, labels) -> registry.OwnTest:
    """Digits the candidate read all right, the champion re-scored on them through the one reader, as register does."""
    return registry.OwnTest(sha256, images, labels, 1.0,
                            partial(accuracy, dataset=DATASET, params=params, images=images, labels=labels))


def registered(params, model, held_out: float, own: registry.OwnTest | None = None) -> tuple[str, str]:
    """Log `model` in a finished run, register it, crown it with `held_out`; (its version, the stage's line)."""
    import mlflow

    client, experiment_id = tracking_store.connect(params)
    uri, name = tracking_store.tracking_uri(params), versions.registered_name(params, DATASET)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        logged = versions.log_tensor_model(model, "tiny", np.zeros((1, 28, 28, 1), np.float32), uri)
    version = versions.register_logged_model(logged.model_uri, name, uri)
    line = registry.crown(client, params, run.info.run_id, DATASET, held_out, TEST_SET, own)
    return version, line


def test_own_digits_read_better_win_within_tolerance_and_a_worse_held_out_is_refused_with_its_reason(
        make_params, store):
    params = make_params(tracking__enabled=True)
    assert params.champion.tolerance == 0.3  # the default the numbers below are chosen around
    client, _ = tracking_store.connect(params)
    name = versions.registered_name(params, DATASET)
    own_zeros = np.zeros((9, 28, 28, 1), np.float32), np.zeros(9, np.uint8)  # nine of the person's zeros
    first, line = registered(params, always(8), 0.9925)
    assert line == f"champion: {name} v{first} (the first): held-out 0.9925"

    # Reads the nine zeros (the champion, fetched and re-scored, reads them as 8), 0.25 points below: takes it.
    taught, line = registered(params, always(0), 0.9900, own_test(params, "own-sha", *own_zeros))
    print(line)
    assert line == (f"champion: {name} v{taught} (was v{first}): own_test 1.000 vs 0.000 on 9 digits, "
                    "held-out 0.9900 vs 0.9925 within 0.3")
    assert client.get_model_version(name, first).tags[champion.own_tag("own-sha")] == "0.000000"
    assert versions.alias_version(client, name) == taught

    # Worse on held-out, no own digits: the alias stays, the version says why.
    worse, line = registered(params, always(8), 0.9712)
    print(line)
    assert line == f"champion stays v{taught}: held-out 0.9712 vs 0.9900"
    assert versions.alias_version(client, name) == taught
    assert client.get_model_version(name, worse).tags[champion.REFUSED_TAG] == (
        f"refused by champion.min_absolute_change 0: held-out 0.9712 vs 0.9900 (v{taught})")

    # Reads them better but gives up too much held-out: refused, by the tolerance.
    threes = np.zeros((4, 28, 28, 1), np.float32), np.full(4, 3, np.uint8)
    sloppy, line = registered(params, always(3), 0.9800, own_test(params, "own-sha-2", *threes))
    print(line)
    assert line == (f"champion stays v{taught}: own_test 1.000 vs 0.000 on 4 digits, held-out 0.9800 vs 0.9900 "
                    "beyond 0.3")
    assert versions.alias_version(client, name) == taught
    assert client.get_model_version(name, sloppy).tags[champion.REFUSED_TAG].startswith(
        "refused by champion.tolerance 0.3 points: ")


class Rule:
    threshold, min_absolute_change, tolerance = None, 0.0, 0.3


def test_the_race_repair_reaches_one_champion_whatever_order_the_tags_arrive_in():
    own = champion.own_tag("mine")
    entries = [champion.Entry("1", 0.9925, None, {own: 0.0}), champion.Entry("2", 0.9900, "mine", {own: 1.0}),
               champion.Entry("3", 0.9712), champion.Entry("4", 0.9930)]
    answers = {champion.choose(order, Rule).version for order in (entries, entries[::-1], entries[1:] + entries[:1])}
    # v2 beats v1 on own digits within 0.3; v3 is worse; v4 beats v2 on held-out (it has no score on mine).
    assert answers == {"4"}
    assert champion.choose(entries[:3], Rule).version == "2"
    strict = type("Strict", (), {"threshold": 0.995, "min_absolute_change": 0.0, "tolerance": 0.3})
    assert champion.choose(entries, strict) is None

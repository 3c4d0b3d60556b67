"""params.yaml schema: the shipped file loads, and each kind of mistake gets its own one-line message."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
from helpers.params import write_params
from helpers.project import ROOT
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from stages.core.schema import Params, ParamsError, load_params, parse_params, read_yaml, set_dotted


def broken(raw_params: dict, key: str, value) -> dict:
    raw = copy.deepcopy(raw_params)
    set_dotted(raw, key, value)
    return raw


def test_shipped_params_load():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.dataset in ("mnist", "fashion_mnist")
    assert isinstance(params.train.optimizer.learning_rate, float)


def schema_fields(section: type[BaseModel] = Params, prefix: str = "") -> dict[str, FieldInfo]:
    """Every leaf field of the schema by dotted key."""
    fields = {}
    for name, info in section.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            fields.update(schema_fields(info.annotation, f"{prefix}{name}."))
        else:
            fields[f"{prefix}{name}"] = info
    return fields


def dotted_keys(raw: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in raw.items():
        keys |= dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}"}
    return keys


def test_params_yaml_sets_every_field_and_the_schema_repeats_no_value(raw_params):
    fields = schema_fields()
    assert dotted_keys(raw_params) == set(fields), "params.yaml and the schema name different keys"
    with_defaults = sorted(key for key, info in fields.items() if not info.is_required())
    assert not with_defaults, f"a default belongs in params.yaml only, not in the schema: {with_defaults}"


def test_a_key_missing_from_params_yaml_is_named(raw_params):
    raw = copy.deepcopy(raw_params)
    del raw["train"]["optimizer"]["learning_rate"]
    with pytest.raises(ParamsError, match=r"train\.optimizer\.learning_rate: required key is missing"):
        parse_params(raw)


def test_every_params_key_has_a_comment():
    lines = [line for line in (ROOT / "params.yaml").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    uncommented = [line for line in lines if "#" not in line and not line.rstrip().endswith(":")]
    assert not uncommented


def test_exponent_without_dot_is_a_float_like_dvc_reads_it(tmp_path):
    text, count = re.subn(r"learning_rate: \S+", "learning_rate: 1e-3", (ROOT / "params.yaml").read_text())
    assert count == 1
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.optimizer.learning_rate == pytest.approx(0.001)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("preprocess.val_fraktion", 0.1, r"preprocess\.val_fraktion: unknown key; did you mean 'val_fraction'\?"),
    ("trian", {"epochs": 1}, r"trian: unknown key; did you mean 'train'\?"),
    ("train.epochs", "3", r"train\.epochs: input should be a valid integer \(got '3'\)"),
    ("train.batch_size", 0, r"train\.batch_size: input should be greater than or equal to 1 \(got 0\)"),
    ("preprocess.val_fraction", 1.5, r"preprocess\.val_fraction: input should be less than 1"),
    ("data.dataset", "mnsit", r"data\.dataset: 'mnsit' is not allowed; did you mean 'mnist'\? \(allowed: 'mnist' or"),
    ("train.optimizer.name", "adamm", r"train\.optimizer\.name: 'adamm' is not allowed; did you mean 'adam'\?"),
    ("train.deterministic", "yes", r"train\.deterministic: input should be a valid boolean"),
])
def test_each_mistake_names_the_dotted_key_and_what_is_allowed(raw_params, key, value, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(broken(raw_params, key, value))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("model.architecture", "lenett", r"model\.architecture: unknown architecture 'lenett'; did you mean 'lenet'\?"),
    ("model.layers", [{"type": "Dense2"}], r"model\.layers\[0\]\.type: unknown layer type 'Dense2'"),
    ("export.formats", ["onnx", "litrt"], r"export\.formats: unknown format 'litrt'; did you mean 'litert'\?"),
])
def test_the_params_stage_checks_what_the_registries_know(raw_params, tmp_path, monkeypatch, key, value, message):
    """Presets and formats are checked by the params stage (and where used), not by the schema every stage loads."""
    from stages import params as params_stage

    loaded = parse_params(broken(raw_params, key, value))  # the schema alone lets it through
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=message):
        params_stage.run(loaded)
    assert not (tmp_path / loaded.paths.params_check).exists()


def test_several_mistakes_are_reported_together_one_line_each(raw_params):
    raw = broken(broken(raw_params, "train.epochs", 0), "seed", -1)
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    lines = str(error.value).splitlines()
    assert len(lines) == 3 and lines[1].strip().startswith("seed:") and lines[2].strip().startswith("train.epochs:")


def test_missing_and_unparsable_files_are_clear(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("# emptied by mistake\n")
    with pytest.raises(ParamsError, match=r"params.yaml is empty: restore it with `git checkout .*params.yaml`"):
        load_params(tmp_path / "params.yaml")


def test_params_are_frozen():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(Exception, match="frozen"):
        params.train.epochs = 3


def test_a_stage_with_bad_params_fails_before_any_work(tmp_path, raw_params):

    write_params(tmp_path, broken(raw_params, "preprocess.val_fraktion", 0.1))
    result = subprocess.run([sys.executable, "-m", "stages.preprocess"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "did you mean 'val_fraction'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_yaml_reader_is_yaml_1_2(tmp_path):
    (tmp_path / "p.yaml").write_text("a: 1e-3\nb: yes\nc: 0o17\n")
    assert read_yaml(tmp_path / "p.yaml") == {"a": 0.001, "b": "yes", "c": 15}

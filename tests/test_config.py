"""The recipe as pydantic models (`dermaseg.config`) and the shipped recipes (`dermaseg.recipes`,
`dermaseg recipes list/show/schema`): validated once, immutable, errors that name the field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from dermaseg.config import AugmentConfig, Config, ModelConfig
from dermaseg.config_io import INFERENCE_FIELDS, config_from_dict, load_config, recipe_schema
from dermaseg.errors import DermasegError, UsageError
from dermaseg.recipes import recipe_path, shipped_recipes
from helpers.badinputs import run_cli

SHIPPED = ["cpu_small", "cpu_small_robust", "deeplabv3_resnet50_isic",
           "deeplabv3plus_resnet50_isic"]


def test_a_config_is_frozen_and_updated_into_a_new_validated_copy():
    config = Config()
    with pytest.raises(ValidationError, match="frozen"):
        config.train.seed = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.data = config.data  # type: ignore[misc]
    changed = config.updated({"data.batch_size": 3, "data.augment.hflip": 0.0})
    assert (changed.data.batch_size, changed.data.augment.hflip) == (3, 0.0)
    assert (config.data.batch_size, config.data.augment.hflip) == (8, 0.5)  # untouched
    assert config.loss.updated(boundary=0.5).boundary == 0.5
    with pytest.raises(DermasegError, match=r"^data.batch_size: must be >= 1, got 0$"):
        config.updated({"data.batch_size": 0})
    with pytest.raises(DermasegError, match="loss.boundary=0.5 needs model.edge_head=true"):
        config.updated({"loss.boundary": 0.5})  # the rules across fields too


@pytest.mark.parametrize(("build", "words"), [
    (lambda: Config(optim={"lr": 0}), "optim.lr: must be > 0, got 0"),
    (lambda: Config(optim={"lr": "fast"}), "optim.lr: expected a number, got 'fast'"),
    (lambda: ModelConfig(output_stride=32), "model.output_stride: must be 8 or 16, got 32"),
    (lambda: ModelConfig(attention="cbam"), "model.attention: must be scse or null, got 'cbam'"),
    (lambda: AugmentConfig(hflip=1.5),
     "data.augment.hflip: must be a probability in [0, 1], got 1.5"),
    (lambda: Config(data={"std": [0.2, 0.2, 0]}),
     "data.std: must be 3 values (R, G, B), each > 0, got [0.2, 0.2, 0]"),
    (lambda: Config(train={"precision": "64"}),
     "train.precision: must be auto, 32, bf16 or 16, got '64'"),
    (lambda: Config(train={"seed": None}), "train.seed: must not be empty"),
    (lambda: Config(data=[1]), "data: expected a mapping, got [1]"),
])
def test_a_wrong_value_names_the_field_and_the_value(build, words):
    with pytest.raises(DermasegError) as info:
        build()
    assert words in str(info.value)


def test_numbers_where_text_is_meant_are_taken_as_text():
    """YAML reads `precision: 16` and `devices: 2` as numbers."""
    config = Config(train={"precision": 16, "devices": 2})
    assert (config.train.precision, config.train.devices) == ("16", "2")
    assert Config(optim={"lr": "1e-4"}).optim.lr == pytest.approx(1e-4)  # YAML 1.1's string


def test_unknown_keys_are_refused_with_a_suggestion(tmp_path):
    with pytest.raises(DermasegError) as info:
        Config(model={"backbonez": "resnet18"}, trian={})
    message = str(info.value)
    assert "model: unknown field(s) backbonez; did you mean model.backbone?" in message
    assert "config: unknown field(s) trian; did you mean train?" in message
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  learning_rate: 0.1\n  lr: 0\n")
    with pytest.raises(DermasegError) as info:
        load_config(recipe)
    assert str(info.value).startswith(f"{recipe}: ")  # the file, then each field
    assert "optim.lr: must be > 0, got 0" in str(info.value)
    assert "unknown field(s) learning_rate" in str(info.value)


def test_set_overrides_reach_nested_fields_and_name_themselves(tmp_path):
    config = load_config(None, ["data.augment.rotate90=0.5", "train.max_minutes=null",
                                "model.atrous_rates=[3, 6, 9]", "train.precision=32"])
    assert config.data.augment.rotate90 == 0.5 and config.train.max_minutes is None
    assert config.model.atrous_rates == [3, 6, 9] and config.train.precision == "32"
    with pytest.raises(UsageError, match=r"^--set optim.lr=-1: optim.lr: must be > 0, got -1$"):
        load_config("cpu_small", ["optim.lr=-1"])
    with pytest.raises(UsageError, match="did you mean data.augment.hflip?"):
        load_config(None, ["data.augment.hflp=1"])


def test_defaults_are_filled_in_as_before():
    assert Config().data.mean == [0.485, 0.456, 0.406]
    assert Config(model={"backbone": "xception65"}).data.mean == [0.5, 0.5, 0.5]
    kept = Config(model={"backbone": "xception65"}, data={"mean": [0.1, 0.2, 0.3]})
    assert kept.data.mean == [0.1, 0.2, 0.3] and kept.data.std == [0.5, 0.5, 0.5]
    assert Config().to_yaml() == load_config(None).to_yaml()


def test_a_checkpoints_config_is_held_to_the_inference_fields_only():
    """A checkpoint's config (a dict) loads when only settings inference does not read are
    refused today: those take their defaults; a wrong inference field is still named."""
    saved = Config().to_dict()
    saved["data"]["augment"]["brightness"] = 3.0
    saved["train"]["retired_setting"] = 1
    saved["optim"]["scheduler"], saved["train"]["freeze_after_lr_drops"] = "cosine", 2
    config = config_from_dict(saved, "old.ckpt: config", INFERENCE_FIELDS)
    assert config.data.augment.brightness == 0.2 and config.train.freeze_after_lr_drops == 2
    saved["model"]["aspp_channels"] = 0
    with pytest.raises(DermasegError) as info:
        config_from_dict(saved, "old.ckpt: config", INFERENCE_FIELDS)
    assert str(info.value) == "old.ckpt: config: model.aspp_channels: must be >= 1, got 0"


def test_recipes_are_taken_by_name_or_path(tmp_path):
    assert sorted(shipped_recipes()) == SHIPPED
    assert recipe_path("cpu_small") == recipe_path("cpu_small.yaml") == shipped_recipes()[
        "cpu_small"]
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  seed: 3\n")
    assert load_config(mine).train.seed == 3
    with pytest.raises(UsageError) as info:
        recipe_path("cpu_smal", "--base")
    assert str(info.value).startswith("--base cpu_smal: no such recipe file, nor a shipped")
    assert "did you mean cpu_small?" in str(info.value)
    assert all(name in str(info.value) for name in SHIPPED)


def test_recipes_list_show_and_schema_through_the_cli():
    code, output = run_cli("recipes", "list")
    lines = output.splitlines()
    assert code == 0 and [line.split()[0] for line in lines] == SHIPPED, output
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # each with a description
    code, output = run_cli("recipes", "show", "cpu_small")
    assert code == 0 and output == shipped_recipes()["cpu_small"].read_text()
    assert yaml.safe_load(output)["model"]["backbone"] == "resnet18"
    code, output = run_cli("recipes", "show", "cpu_smal")
    assert code == 2 and "did you mean cpu_small?" in output and "Traceback" not in output
    code, output = run_cli("recipes", "schema")
    assert code == 0 and json.loads(output) == recipe_schema()


def test_the_schema_accepts_every_shipped_recipe_and_knows_every_key():
    schema = recipe_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    for name, path in shipped_recipes().items():
        recipe = yaml.safe_load(path.read_text())
        try:
            import jsonschema
        except ImportError:  # not installed: the keys and their nesting
            _check_keys(recipe, schema, schema, name)
        else:
            jsonschema.validate(recipe, schema)
    with pytest.raises(AssertionError, match="colour"):
        _check_keys({"model": {"colour": 1}}, schema, schema, "bad")


def _check_keys(value: dict, node: dict, schema: dict, where: str) -> None:
    """Every key of `value` is a property of `node` (a schema object, `$ref`s followed), and
    that object refuses other keys."""
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    assert node["additionalProperties"] is False, where
    for key, item in value.items():
        assert key in node["properties"], f"{where}: {key}"
        if isinstance(item, dict):
            _check_keys(item, node["properties"][key], schema, f"{where}.{key}")


def test_train_takes_a_recipe_by_name_from_another_folder(tmp_path):
    """`--config cpu_small` outside the repository: the recipe is found and loaded (the run
    then stops at the missing --data, which is checked after the config)."""
    result = subprocess.run(
        [sys.executable, "-m", "dermaseg", "train", "--config", "cpu_small", "--set",
         "train.max_epochs=1", "--data", "absent", "-o", "run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--data absent: no such folder" in result.stderr, result.stderr
    assert "recipe" not in result.stderr and not (tmp_path / "run").exists()

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmtune.errors import LlmtuneError
from llmtune.recipe import build_recipe, builtin_recipes, load_recipe

BASE = {"task": "classification", "model": {"name": "minilm-l6"}, "data": {"train_file": "x.csv"}}


def write(tmp_path: Path, obj: object, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj), encoding="utf-8")
    return p


def test_defaults_and_output_dir_from_file_name(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path, BASE, "mine.yaml"))
    assert r.train.learning_rate == 5e-5 and r.train.seed == 42
    assert r.train.output_dir == str(Path("runs") / "mine")
    assert not r.lora_enabled and not r.generate_in_eval


def test_overrides_take_precedence_and_parse_yaml_scalars(tmp_path: Path) -> None:
    p = write(tmp_path, {**BASE, "train": {"learning_rate": 1e-4}})
    r = load_recipe(p, ["train.learning_rate=3e-5", "train.max_steps=7", "data.label_names=[neg, pos]",
                        "train.eval_steps=null", "task=classification"])
    assert r.train.learning_rate == 3e-5 and r.train.max_steps == 7
    assert r.data.label_names == ["neg", "pos"] and r.train.eval_steps is None


def test_bare_no_is_the_choice_no(tmp_path: Path) -> None:
    """YAML 1.1 reads a bare `no` as false; for a choice that includes "no" it means that choice."""
    p = write(tmp_path, "task: classification\nmodel: {name: minilm-l6}\ndata: {train_file: x.csv}\n"
                        "train: {mixed_precision: no}\n")
    assert load_recipe(p).train.mixed_precision == "no"
    assert load_recipe(write(tmp_path, BASE, "b.yaml"), ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_recipe(write(tmp_path, BASE, "c.yaml"), ["train.mixed_precision=auto"]).train.mixed_precision == "auto"
    with pytest.raises(LlmtuneError, match="mixed_precision: expected one of"):
        load_recipe(write(tmp_path, BASE, "d.yaml"), ["train.mixed_precision=true"])


@pytest.mark.parametrize(
    ("raw", "overrides", "needle"),
    [
        ({**BASE, "train": {"lerning_rate": 1}}, [], "train.lerning_rate: unknown key (did you mean 'learning_rate'?)"),
        ({**BASE, "trian": {}}, [], "unknown key 'trian' (did you mean 'train'?)"),
        (BASE, ["train.num_train_epoch=2"], "did you mean 'num_train_epochs'"),
        (BASE, ["trian.seed=1"], "unknown section 'trian'"),
        (BASE, ["train.seed=abc"], "train.seed: expected an integer, got 'abc'"),
        (BASE, ["train.learning_rate=fast"], "train.learning_rate: expected a number"),
        (BASE, ["task=clasification"], "did you mean 'classification'"),
        (BASE, ["train.mixed_precision=fp32"], "train.mixed_precision: expected one of"),
        (BASE, ["data.label_names=positive"], "data.label_names: expected a list"),
        (BASE, ["train.warmup_ratio=0.1", "train.warmup_steps=10"], "not both"),
        (BASE, ["train.per_device_train_batch_size=0"], "must be at least 1"),
        ({"task": "classification", "data": {"train_file": "x"}}, [], "model.name is required"),
        ({"task": "classification", "model": {"name": "m"}}, [], "data needs either"),
        ({**BASE, "data": {"train_file": "x", "dataset": "glue"}}, [], "both set"),
        (BASE, ["train.seed"], "expected section.key=value"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path: Path, raw: dict, overrides: list[str], needle: str) -> None:
    with pytest.raises(LlmtuneError) as e:
        load_recipe(write(tmp_path, raw), overrides)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(LlmtuneError, match=r"line \d+, column \d+: invalid YAML"):
        load_recipe(write(tmp_path, "task: classification\nmodel:\n  name: [unclosed\ndata: {}\n"))


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    with pytest.raises(LlmtuneError, match="invalid YAML"):
        load_recipe(write(tmp_path, "task: !!python/object/apply:os.system ['echo hi']\n"))


def test_every_shipped_recipe_parses() -> None:
    paths = builtin_recipes()
    assert {p.stem for p in paths} >= {"sentiment", "sst2"}
    for p in paths:
        text = p.read_text()
        assert text.startswith("# llmtune "), f"{p.name} must start with the command that runs it"
        r = load_recipe(p)
        assert r.description, f"{p.name} needs a description"


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path, BASE), ["train.learning_rate=2e-5"])
    again = build_recipe(yaml.safe_load(r.to_yaml()))
    assert again.to_dict() == r.to_dict()

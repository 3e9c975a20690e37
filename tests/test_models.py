"""models.py: resolving a model name (alias, folder, GGUF, hub id) and loading it, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtune.errors import LlmtuneError
from llmtune.models import ALIASES, read_config, resolve
from llmtune.schema import ModelArgs


def test_aliases_resolve_to_the_bundled_weights() -> None:
    minilm = resolve(ModelArgs(name="minilm-l6"))
    assert minilm.is_local and (Path(minilm.path) / "config.json").is_file()
    smol = resolve(ModelArgs(name="smollm2-135m"))
    assert smol.gguf_file and (Path(smol.path) / smol.gguf_file).is_file()
    assert set(ALIASES) >= {"minilm-l6", "smollm2-135m"}


def test_a_folder_resolves_to_itself(tiny_bert: Path) -> None:
    r = resolve(ModelArgs(name=str(tiny_bert)))
    assert r.is_local and Path(r.path) == tiny_bert
    assert read_config(tiny_bert)["model_type"] == "bert"


@pytest.mark.parametrize("name", ["./no/such/folder", "/tmp/definitely-not-here-llmtune"])
def test_missing_folder_is_named(name: str) -> None:
    with pytest.raises(LlmtuneError, match="model.name"):
        resolve(ModelArgs(name=name))


def test_folder_without_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(LlmtuneError):
        resolve(ModelArgs(name=str(tmp_path)))

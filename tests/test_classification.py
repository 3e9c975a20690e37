"""End to end through the CLI on a tiny BERT: the run folder, refusing to overwrite, predict, pairs."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import tiny_recipe, write_jsonl


def test_finetune_writes_a_complete_run(tmp_path: Path, tiny_bert: Path, sentiment_files, cli) -> None:
    train, eval_ = sentiment_files
    out = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, eval_, out, data__label_names=["negative", "positive"])
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    for name in ("model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "all_results.json",
                 "eval_results.json", "train_results.json", "log.jsonl", "predictions.jsonl", "loss.png", "README.md",
                 "run_info.json", "COMPLETE"):
        assert (out / name).exists(), name
    results = json.loads((out / "all_results.json").read_text())
    for key in ("eval_accuracy", "eval_f1", "eval_precision", "eval_recall", "eval_loss", "train_loss",
                "train_runtime", "train_samples_per_second"):
        assert isinstance(results[key], float), key
    assert results["global_step"] == 4 and 0.0 <= results["eval_accuracy"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {"0": "negative", "1": "positive"} and cfg["label2id"]["positive"] == 1
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["text"] for p in preds] == [json.loads(x)["text"] for x in eval_.read_text().splitlines()]
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in preds)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_loss" in r] == [2, 4]
    assert "git_hash" in json.loads((out / "run_info.json").read_text())
    # checkpoints from eval steps, each complete
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert all((p / "COMPLETE").exists() for p in out.glob("checkpoint-*"))

    # a finished run is never overwritten by accident
    before = (out / "model.safetensors").stat().st_mtime_ns
    res = cli("finetune", recipe)
    assert res.exit_code == 2 and "already holds a finished run" in res.stderr
    assert (out / "model.safetensors").stat().st_mtime_ns == before

    # predict from the run folder
    inp = tmp_path / "new.txt"
    inp.write_text("a warm film\nrude staff\n")
    res = cli("predict", out, "--input", inp)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [r["text"] for r in rows] == ["a warm film", "rude staff"]
    assert all(r["prediction"] in ("negative", "positive") for r in rows)

    # and the saved model loads with plain transformers
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 2

    # overwriting starts over, even though the finished run left checkpoints that `auto` resume would pick up
    assert any(p.name.startswith("checkpoint-") for p in out.iterdir())
    res = cli("finetune", recipe, "train.overwrite_output_dir=true", "train.max_steps=2")
    assert res.exit_code == 0, res.output
    assert "Resuming" not in res.output
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 2


def test_same_seed_same_numbers(tmp_path: Path, tiny_bert: Path, sentiment_files, cli) -> None:
    train, eval_ = sentiment_files
    results = []
    for name in ("a", "b"):
        recipe = tiny_recipe(tmp_path / f"{name}.yaml", tiny_bert, train, eval_, tmp_path / name)
        assert cli("finetune", recipe).exit_code == 0
        results.append(json.loads((tmp_path / name / "all_results.json").read_text()))
    for key in ("eval_loss", "eval_accuracy", "train_loss"):
        assert results[0][key] == results[1][key]


def test_pairs_three_classes_integer_labels(tmp_path: Path, tiny_bert: Path, cli) -> None:
    rows = [{"premise": f"a person is doing thing {i}", "hypothesis": f"someone does thing {i % 4}", "label": i % 3}
            for i in range(24)]
    train = write_jsonl(tmp_path / "nli.jsonl", rows)
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, train, tmp_path / "out",
                         data__text_column="premise", data__text_pair_column="hypothesis")
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "0", "1": "1", "2": "2"}
    pred = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert set(pred) == {"text", "text_pair", "label", "prediction", "probabilities", "loss"}


def test_validate_prints_resolved_recipe(tmp_path: Path, tiny_bert: Path, sentiment_files, cli) -> None:
    train, eval_ = sentiment_files
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, eval_, tmp_path / "out")
    res = cli("validate", recipe, "train.learning_rate=3e-5")
    assert res.exit_code == 0, res.output
    assert "learning_rate: 3.0e-05" in res.stdout and "train: 20 rows" in res.stdout
    assert not (tmp_path / "out").exists()


def test_tensorboard_logs_offline(tmp_path: Path, tiny_bert: Path, sentiment_files, cli) -> None:
    train, eval_ = sentiment_files
    out = tmp_path / "tb"
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, eval_, out, train__report_to="tensorboard")
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def test_bf16_autocast_and_gradient_checkpointing_on_cpu(tmp_path: Path, tiny_bert: Path, sentiment_files,
                                                         cli) -> None:
    train, eval_ = sentiment_files
    out = tmp_path / "bf16"
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_bert, train, eval_, out, train__mixed_precision="bf16",
                         train__gradient_checkpointing=True)
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "all_results.json").read_text())
    assert results["global_step"] == 4 and results["train_loss"] == results["train_loss"]  # finite, not NaN
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:  # autocast trains float32 master weights
        assert all(f.get_tensor(k).dtype.is_floating_point and str(f.get_tensor(k).dtype) == "torch.float32"
                   for k in list(f.keys())[:5])

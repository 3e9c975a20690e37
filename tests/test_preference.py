"""preference on a tiny Llama (2 layers, hidden 32) with SmolLM2's tokenizer: the four losses against their formulas
on literal log-probabilities, one concatenated forward = two separate ones, the reference = the base model with the
adapter off, DPO's log 2 at step 0, HH-RLHF prompt splitting on literal strings, and finetune -> eval end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_jsonl

from llmtune.errors import LlmtuneError
from llmtune.tasks import preference as pref

PAIRS = [{"prompt": "Name three fruits.", "chosen": "apples, pears and plums.", "rejected": "saws, drills and axes."},
         {"prompt": "Repeat in capital letters: good morning", "chosen": "GOOD MORNING", "rejected": "good morning"},
         {"prompt": "In a single word, what is the opposite of hot?", "chosen": "Cold.",
          "rejected": "Well, most people would say that the opposite of hot is cold."},
         {"prompt": "List three colors.", "chosen": "red, blue and green.", "rejected": "dogs, cats and foxes."}]


def recipe_dict(model: Path | str, out: Path, **extra: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "task": "preference",
        "model": {"name": str(model)},
        "data": {"dataset": "llmtune:preference", "max_train_samples": 16, "max_eval_samples": 8},
        "lora": {"r": 4, "alpha": 8},
        "train": {"output_dir": str(out), "max_steps": 2, "per_device_train_batch_size": 4,
                  "per_device_eval_batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "max_seq_length": 64},
    }
    for key, value in extra.items():
        section, _, field = key.partition("__")
        recipe.setdefault(section, {})[field] = value
    return recipe


def parts(tiny_llama: Path, tmp_path: Path, **extra: Any) -> tuple[Any, Any, Any, Any]:
    """(recipe, tokenizer, model, a collated batch of the 4 literal pairs)."""
    from datasets import Dataset

    from llmtune.data import Split
    from llmtune.models import load_tokenizer
    from llmtune.recipe import build_recipe

    recipe = build_recipe(recipe_dict(tiny_llama, tmp_path / "out", **extra))
    tok = load_tokenizer(recipe.model)
    split = Split("train", Dataset.from_list(PAIRS), "pairs")
    info = pref.setup(recipe, {"train": split}, tok)
    ds = pref.tokenize(recipe, tok, split, info)
    model = pref.load_model(recipe, tok, info)
    batch = pref.collator(recipe, tok, model)([ds[i] for i in range(len(ds))])
    return recipe, tok, model, batch


def test_losses_equal_the_formulas_on_literal_logps() -> None:
    import torch

    lp = {"chosen_logps": torch.tensor([-12.0, -30.5, -7.25], dtype=torch.float64),
          "rejected_logps": torch.tensor([-15.0, -28.0, -9.0], dtype=torch.float64),
          "ref_chosen_logps": torch.tensor([-13.0, -30.0, -8.0], dtype=torch.float64),
          "ref_rejected_logps": torch.tensor([-14.0, -29.5, -8.5], dtype=torch.float64),
          "chosen_count": torch.tensor([4, 10, 3]), "rejected_count": torch.tensor([5, 8, 6])}
    rows = range(3)
    c, r = lp["chosen_logps"].tolist(), lp["rejected_logps"].tolist()
    rc, rr = lp["ref_chosen_logps"].tolist(), lp["ref_rejected_logps"].tolist()
    nc, nr = lp["chosen_count"].tolist(), lp["rejected_count"].tolist()

    def logsig(x: float) -> float:
        return -math.log1p(math.exp(-x))

    beta, eps = 0.2, 0.1
    dpo = pref.preference_losses(pref.PreferenceArgs("dpo", beta=beta, label_smoothing=eps), lp)
    for i in rows:
        z = beta * ((c[i] - rc[i]) - (r[i] - rr[i]))
        assert math.isclose(float(dpo["losses"][i]), -(1 - eps) * logsig(z) - eps * logsig(-z), rel_tol=1e-12)
        assert math.isclose(float(dpo["chosen_rewards"][i]), beta * (c[i] - rc[i]), rel_tol=1e-12)
        assert math.isclose(float(dpo["rejected_rewards"][i]), beta * (r[i] - rr[i]), rel_tol=1e-12)
    ipo = pref.preference_losses(pref.PreferenceArgs("ipo", beta=beta), lp)
    for i in rows:
        h = (c[i] - rc[i]) / nc[i] - (r[i] - rr[i]) / nr[i]
        assert math.isclose(float(ipo["losses"][i]), (h - 1 / (2 * beta)) ** 2, rel_tol=1e-12)
    gamma = 0.5
    simpo = pref.preference_losses(pref.PreferenceArgs("simpo", beta=2.0, gamma=gamma, label_smoothing=eps), lp)
    for i in rows:
        z = 2.0 * (c[i] / nc[i] - r[i] / nr[i]) - gamma
        assert math.isclose(float(simpo["losses"][i]), -(1 - eps) * logsig(z) - eps * logsig(-z), rel_tol=1e-12)
        assert math.isclose(float(simpo["chosen_rewards"][i]), 2.0 * c[i] / nc[i], rel_tol=1e-12)
    lam = 0.3
    orpo = pref.preference_losses(pref.PreferenceArgs("orpo", orpo_lambda=lam), lp)
    for i in rows:
        a, b = c[i] / nc[i], r[i] / nr[i]
        log_odds = (a - math.log(1 - math.exp(a))) - (b - math.log(1 - math.exp(b)))
        assert math.isclose(float(orpo["losses"][i]), -lam * logsig(log_odds), rel_tol=1e-12)
        assert math.isclose(float(orpo["chosen_rewards"][i]), lam * a, rel_tol=1e-12)
    # split metrics: exact means over pairs, ties count half, ORPO adds the token-mean NLL of chosen
    out = {**lp, "nll_sum": torch.tensor([8.0, 20.0, 2.0], dtype=torch.float64), "nll_count": torch.tensor([4, 10, 2])}
    m, _ = pref.metrics_from_logps(pref.PreferenceArgs("orpo", orpo_lambda=lam), out)
    assert math.isclose(m["loss"], float(orpo["losses"].mean()) + 30.0 / 16, rel_tol=1e-12)
    tied = {**lp, "ref_chosen_logps": lp["chosen_logps"], "ref_rejected_logps": lp["rejected_logps"]}
    m, _ = pref.metrics_from_logps(pref.PreferenceArgs("dpo"), tied)
    assert m["rewards/accuracies"] == 0.5 and m["rewards/margins"] == 0.0 and math.isclose(m["loss"], math.log(2))


def test_one_concatenated_forward_equals_separate_forwards(tiny_llama: Path, tmp_path: Path) -> None:
    import torch

    recipe, _, model, batch = parts(tiny_llama, tmp_path, lora__enabled=False, preference__loss="simpo")
    model.eval()
    with torch.no_grad():
        both = pref.pair_logps(model, batch, pref.settings(recipe))
        for j, name in ((0, "chosen"), (1, "rejected")):
            ids, att, resp = (batch[k][:, j] for k in ("input_ids", "attention_mask", "response_mask"))
            width = int(att.sum(-1).max())  # each side alone, padded only to its own longest
            alone = pref.sequence_logps(model, ids[:, :width], att[:, :width], resp[:, :width])
            assert torch.allclose(both[f"{name}_logps"], alone["logps"], atol=1e-4, rtol=0)
            assert torch.equal(both[f"{name}_count"], alone["counts"])
            # against full logits, without logits_to_keep: log_softmax at every position
            logp = model(input_ids=ids, attention_mask=att).logits[:, :-1].float().log_softmax(-1)
            tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            assert torch.allclose(both[f"{name}_logps"], (tok * resp[:, 1:]).sum(-1), atol=1e-4, rtol=0)
    assert bool((both["chosen_count"] > 0).all()) and bool((both["rejected_count"] > 0).all())


def test_reference_is_the_base_model_with_the_adapter_off(tiny_llama: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    recipe, _, model, batch = parts(tiny_llama, tmp_path)
    args = pref.settings(recipe)
    model.eval()
    with torch.no_grad():
        # step 0: lora_B is zero, so policy = reference exactly: DPO loss log 2, every reward 0
        value, extras = pref.loss(model, batch)
        assert math.isclose(float(value), math.log(2), abs_tol=1e-7)
        assert extras["rewards/accuracies"].tolist() == [0.5] * 4 and float(extras["rewards/margins"].abs().max()) == 0
        out = pref.eval_step(model, {**batch, "row": torch.arange(4)})
        m, _ = pref.metrics_from_logps(args, out)
        assert m["rewards/chosen"] == 0.0 and m["rewards/rejected"] == 0.0 and m["rewards/accuracies"] == 0.5
        assert math.isclose(m["loss"], math.log(2), abs_tol=1e-12)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05 * torch.randn_like(p))
        lp = pref.pair_logps(model, batch, args)
        base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
        ids, att, resp = pref._flat(batch)
        ref = pref.sequence_logps(base, ids, att, resp)["logps"]
    assert torch.allclose(lp["ref_chosen_logps"], ref[0::2], atol=1e-5, rtol=0)
    assert torch.allclose(lp["ref_rejected_logps"], ref[1::2], atol=1e-5, rtol=0)
    assert float((lp["chosen_logps"] - lp["ref_chosen_logps"]).abs().max()) > 1e-3  # the adapter counts


def test_hh_transcripts_split_at_the_last_assistant_turn() -> None:
    p = "\n\nHuman: What is 2+2?\n\nAssistant: Four.\n\nHuman: And 3+3?\n\nAssistant:"
    assert pref.split_transcripts(p + " Six.", p + " Six, I think.") == (p, " Six.", " Six, I think.")
    # not HH: the longest common prefix, backed off a space (TRL's extract_prompt)
    assert pref.split_transcripts("Q: sky? A: blue", "Q: sky? A: green") == ("Q: sky? A:", " blue", " green")
    assert pref.split_transcripts("Paris.", "\n\nHuman: hi") is None
    turns = [{"role": "user", "content": "Hi"}]
    assert pref.split_transcripts(turns + [{"role": "assistant", "content": "Hello!"}],
                                  turns + [{"role": "assistant", "content": "Go away."}]) == (
        turns, [{"role": "assistant", "content": "Hello!"}], [{"role": "assistant", "content": "Go away."}])
    assert pref.truncate([1] * 10, [2] * 8, [3] * 3, 12, 4) == ([1] * 4, [2] * 8, [3] * 3, "prompt")
    assert pref.truncate([1] * 10, [2] * 8, [3] * 3, 12, None) == ([1] * 10, [2] * 2, [3] * 2, "response")
    assert pref.truncate([1] * 12, [2], [3], 12, None)[3] == "dropped"


def test_hh_pairs_with_a_blank_response_are_skipped_with_a_count(tiny_llama: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """HH-RLHF has dialogues that end on an empty "Assistant:" turn (rows 233, 693 and 1521 of the shared train
    file): in the transcript form such a pair is skipped and counted, not a refusal of the whole file (with a
    prompt column, a blank response stays an error: tests/bad_inputs/pref_empty_chosen)."""
    from datasets import Dataset

    from llmtune.data import Split
    from llmtune.models import load_tokenizer
    from llmtune.recipe import build_recipe

    p = "\n\nHuman: Name a fruit.\n\nAssistant:"
    rows = [{"chosen": p + " An apple.", "rejected": p + " A chair."},
            {"chosen": p + " A pear.", "rejected": p},  # the rejected turn is empty after the shared prompt
            {"chosen": p + " A plum.", "rejected": p + " Blue."}]
    recipe = build_recipe(recipe_dict(tiny_llama, tmp_path / "out", data__format="text"))
    split = Split("train", Dataset.from_list(rows), "hh.jsonl")
    pref.validate(recipe, split)  # no refusal
    tok = load_tokenizer(recipe.model)
    info = pref.setup(recipe, {"train": split}, tok)
    with caplog.at_level("WARNING", logger="llmtune"):
        ds = pref.tokenize(recipe, tok, split, info)
    assert ds["row"] == [0, 2]
    assert "hh.jsonl: 1 of 3 pairs have an empty chosen or rejected response after the shared prompt (row 2)" \
        in caplog.text
    with pytest.raises(LlmtuneError, match="every pair has an empty"):
        pref.validate(recipe, Split("train", Dataset.from_list(rows[1:2]), "hh.jsonl"))


def test_finetune_eval_generate_through_the_cli(tiny_llama: Path, tmp_path: Path, cli) -> None:
    p = "\n\nHuman: Name a fruit.\n\nAssistant:"
    hh = [{"chosen": p + f" {a}.", "rejected": p + f" {b}."} for a, b in
          [("An apple", "A hammer"), ("A pear", "A saw"), ("A plum", "A drill"), ("A lemon", "An axe")] * 3]
    train = write_jsonl(tmp_path / "hh.jsonl", hh)
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(tiny_llama, out, data__dataset=None, data__train_file=str(train),
                                                 data__val_size=4, data__max_eval_samples=None,
                                                 data__max_train_samples=None)))
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "all_results.json").read_text())
    names = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
             "logps/rejected")
    for name in names:
        assert math.isfinite(results[f"eval_{name}"]), name
    assert math.isclose(results["base_eval_loss"], math.log(2), abs_tol=1e-6)
    assert results["base_eval_rewards/accuracies"] == 0.5
    assert "best_rewards/accuracies" in results
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval_rewards/accuracies" in r] == [0, 2]
    # training metrics every logging_steps under TRL's names; step 1's batch met the untrained policy (lora_B = 0):
    # policy = reference, so DPO's log 2, rewards 0, ties counted half
    train_rows = [r for r in logged if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2] and all(name in r for r in train_rows for name in names)
    first = train_rows[0]
    assert math.isclose(first["loss"], math.log(2), abs_tol=1e-6) and first["rewards/accuracies"] == 0.5
    assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margins"] == 0.0
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0
    assert train_rows[1]["rewards/margins"] != 0.0
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(r["prompt"] == p and r["chosen"].startswith(" ") for r in preds)

    res = cli("eval", "--model", out, "--output-dir", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    scored = json.loads((tmp_path / "ev" / "results.json").read_text())["results"]
    (metrics,) = scored.values()
    for name in names:
        assert math.isclose(metrics[name]["value"], results[f"eval_{name}"], rel_tol=1e-9, abs_tol=1e-12), name
        m = metrics[name]  # bootstrap interval over pairs (the task's intervals hook)
        assert m["ci_low"] - 1e-9 <= m["value"] <= m["ci_high"] + 1e-9, name
    res = cli("generate", out, "--prompt", "Name a fruit.", "--max-new-tokens", "3")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("loss", ["dpo", "orpo"])
def test_full_weights(tiny_llama: Path, tmp_path: Path, cli, loss: str) -> None:
    """Without LoRA: DPO against a frozen copy of the starting weights (step 0 = log 2), ORPO with no reference."""
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(tiny_llama, out, lora__enabled=False, preference__loss=loss,
                                                 train__learning_rate=1e-3, data__max_train_samples=8,
                                                 data__max_eval_samples=4)))
    res = cli("finetune", recipe)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "all_results.json").read_text())
    assert (out / "model.safetensors").exists()
    if loss == "dpo":
        assert math.isclose(results["base_eval_loss"], math.log(2), abs_tol=1e-6)
        assert results["eval_rewards/chosen"] != 0.0  # measured against the frozen start, not the trained weights
    else:
        assert results["eval_nll_loss"] > 0 and "eval_log_odds_ratio" in results
    res = cli("eval", "--model", out, "--output-dir", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    (metrics,) = json.loads((tmp_path / "ev" / "results.json").read_text())["results"].values()
    assert math.isclose(metrics["loss"]["value"], results["eval_loss"], rel_tol=1e-6)



def test_training_extras_are_means_over_the_window_and_survive_a_checkpoint() -> None:
    """The loop's averaging of a loss hook's extras: per-example values each count once (pairs of micro-batches of
    different sizes), a scalar once per micro-batch; the partial window a checkpoint keeps resumes exactly."""
    import torch

    from llmtune.train import _ExtraMeans, _split_loss

    class OneProcess:
        def reduce(self, t: Any, op: str) -> Any:
            assert op == "sum"
            return t

    loss = torch.tensor(1.0)
    assert _split_loss(loss) == (loss, {})
    window = _ExtraMeans(torch.device("cpu"), {})
    window.add(_split_loss((loss, {"acc": torch.tensor([1.0, 0.0, 1.0]), "nll": torch.tensor(2.0)}))[1])
    resumed = _ExtraMeans(torch.device("cpu"), json.loads(json.dumps(window.pending())))  # via trainer_state.json
    for w in (window, resumed):
        w.add({"acc": torch.tensor([0.0]), "nll": 4.0})
        assert w.pop(OneProcess()) == {"acc": 0.5, "nll": 3.0}
        assert w.pop(OneProcess()) == {}


def _count_reference_forwards(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts no-grad sequence_logps calls inside train() and outside its evals: the per-step reference forwards."""
    import torch

    from llmtune import train as train_mod

    calls = {"reference_in_training": 0, "training": 0}
    phase = {"train": False, "eval": False}
    real_logps, real_train, real_eval = pref.sequence_logps, train_mod.train, train_mod.evaluate

    def logps(*a: Any, **kw: Any) -> Any:
        if phase["train"] and not phase["eval"]:
            calls["training"] += 1
            calls["reference_in_training"] += not torch.is_grad_enabled()
        return real_logps(*a, **kw)

    def flagged(name: str, fn: Any) -> Any:
        def inner(*a: Any, **kw: Any) -> Any:
            phase[name] = True
            try:
                return fn(*a, **kw)
            finally:
                phase[name] = False
        return inner

    monkeypatch.setattr(pref, "sequence_logps", logps)
    monkeypatch.setattr(train_mod, "train", flagged("train", real_train))
    monkeypatch.setattr(train_mod, "evaluate", flagged("eval", real_eval))
    return calls


@pytest.mark.parametrize("lora", [True, False])
def test_precomputed_reference_gives_the_same_run(tiny_llama: Path, tmp_path: Path, cli, lora: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """precompute_reference: the same losses, metrics and eval as a reference forward per step (dropout off),
    and no reference forward during training (nor a frozen copy for full weights)."""
    results, logs = {}, {}
    for pre in (False, True):
        calls = _count_reference_forwards(monkeypatch)
        out = tmp_path / f"run-{pre}"
        recipe = tmp_path / f"r-{pre}.yaml"
        recipe.write_text(yaml.safe_dump(recipe_dict(
            tiny_llama, out, lora__enabled=lora, lora__dropout=0.0, preference__precompute_reference=pre,
            train__max_steps=4, train__eval_steps=2, train__per_device_train_batch_size=2,
            train__gradient_accumulation_steps=2, train__learning_rate=1e-2 if lora else 1e-3,
            data__max_train_samples=12)))
        res = cli("finetune", recipe)
        assert res.exit_code == 0, res.output
        assert calls["training"] > 0
        assert (calls["reference_in_training"] == 0) == pre, calls
        results[pre] = json.loads((out / "all_results.json").read_text())
        logs[pre] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in logs[True]] == [sorted(r) for r in logs[False]]
    for a, b in zip(logs[False], logs[True], strict=True):
        for k, v in a.items():
            if k not in ("samples_per_second", "learning_rate", "epoch", "step"):
                assert b[k] == pytest.approx(v, abs=1e-5), (a["step"], k)
    # it trained: the comparison is not of two untouched models
    assert [r for r in logs[True] if "loss" in r][-1]["rewards/margins"] != 0.0
    # the stored eval reference has the eval forward's shapes: the untrained policy ties with it exactly
    assert logs[True][0]["step"] == 0 and logs[True][0]["eval_rewards/accuracies"] == 0.5
    for k, v in results[False].items():
        if k.startswith(("eval_", "base_eval_", "train_loss")):
            assert results[True][k] == pytest.approx(v, abs=1e-5), k


def test_precomputed_reference_is_cached_with_the_tokenized_split(tiny_llama: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A second run on the same data and model reads the reference log-probs from the datasets cache; changed
    weights (the same folder retrained) or data compute them anew. Values equal the per-step reference forward."""
    import contextlib

    import torch

    from llmtune.data import Split, load_file
    from llmtune.models import load_tokenizer
    from llmtune.recipe import build_recipe

    class CPU:  # what with_model reads of the Accelerator
        device, mixed_precision = torch.device("cpu"), "no"
        autocast = staticmethod(contextlib.nullcontext)

    recipe = build_recipe(recipe_dict(tiny_llama, tmp_path / "out", preference__precompute_reference=True))
    tok = load_tokenizer(recipe.model)
    calls = {"n": 0}
    real = pref.sequence_logps

    def counted(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(pref, "sequence_logps", counted)

    def scored(rows: list[dict[str, Any]], model: Any = None) -> tuple[Any, Any, int]:
        path = tmp_path / f"pairs-{len(rows)}.jsonl"
        if not path.exists():  # written once: a rewritten file is new data to datasets (its mtime)
            write_jsonl(path, rows)
        split = Split("train", load_file(str(path), "data.train_file", recipe), str(path))
        info = pref.setup(recipe, {"train": split}, tok)
        ds = pref.tokenize(recipe, tok, split, info)
        model = model if model is not None else pref.load_model(recipe, tok, info)
        before = calls["n"]
        return pref.with_model(recipe, tok, model, ds, "train", CPU()), model, calls["n"] - before

    first, model, n = scored(PAIRS)
    assert n == 1 and first.cache_files  # 4 pairs, one eval batch of 4, written beside the tokenized split
    again, _, n = scored(PAIRS)
    assert n == 0 and again["ref_chosen_logps"] == first["ref_chosen_logps"]
    # the values are the adapter-off forward that pair_logps would make
    batch = pref.collator(recipe, tok, model)([first[i] for i in range(len(first))])
    assert "ref_logps" in batch
    with torch.no_grad():
        fly = pref.pair_logps(model.eval(), {k: v for k, v in batch.items() if k != "ref_logps"},
                              pref.settings(recipe))
    assert torch.allclose(batch["ref_logps"][:, 0], fly["ref_chosen_logps"], atol=1e-5, rtol=0)
    assert torch.allclose(batch["ref_logps"][:, 1], fly["ref_rejected_logps"], atol=1e-5, rtol=0)
    with torch.no_grad():  # the same folder, other weights
        next(p for n, p in model.named_parameters() if "lora_" not in n and p.ndim == 2).mul_(1.5)
    changed, _, n = scored(PAIRS, model)
    assert n == 1 and changed["ref_chosen_logps"] != first["ref_chosen_logps"]
    _, _, n = scored(PAIRS[:3])  # other data
    assert n == 1

"""`llmtune benchmark --workloads preference` at tiny scale (tiny Llama, bundled pairs, 3 steps): llmtune's DPO against
TRL's DPOTrainer + PEFT on the same pairs, and the HH-RLHF split that holds whole conversations out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtune.benchmark import preference_workload as pw


def test_hh_split_holds_out_whole_conversations() -> None:
    def hh(first: str, reply: str, good: str, bad: str) -> dict[str, str]:
        p = f"\n\nHuman: {first}\n\nAssistant: {reply}\n\nHuman: And then?\n\nAssistant:"
        return {"chosen": p + good, "rejected": p + bad}

    rows = [hh(f"Question {i // 2}?", f"Reply {i}.", " Yes.", " No.") for i in range(40)]
    rows.append(hh("Question 0?", "Same.", " Same answer.", " Same answer."))  # chosen == rejected: left out
    rows.append({"chosen": "no shared start", "rejected": "at all"})  # no prompt to split off: left out
    train, evals = pw.hh_split(rows)
    assert len(train) + len(evals) == 40 and evals and train
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in train + evals)
    assert evals[0]["prompt"].endswith("\n\nAssistant:") and evals[0]["chosen"] == " Yes."
    # both branches of a conversation (its first human turn) are on the same side
    seen = {pw._first_turn(p["prompt"]) for p in train}
    assert not seen & {pw._first_turn(p["prompt"]) for p in evals}
    assert pw.hh_split(rows) == (train, evals)  # seeded


def test_benchmark_tiny_preference(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trl")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    res = cli("benchmark", "--scale", "tiny", "--workloads", "preference", "--output-dir", tmp_path,
              "--data-dir", tmp_path / "no-such-folder")
    assert res.exit_code == 0, res.output
    (out,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((out / "results.json").read_text())
    entry = results["workloads"]["preference"]
    assert entry["data"]["origin"].startswith("bundled llmtune:preference")
    assert entry["hp"]["eval_batch_size"] == entry["data"]["eval_rows"] == 8
    # llmtune's preference recipe trains in fp32: no bf16 side, and TRL's bf16 default is turned off
    assert sorted(r["side"] for r in entry["runs"]) == ["llmtune", "trl_dpo"]
    for run in entry["runs"]:
        assert "error" not in run, run
        assert run["precision"] == "fp32"
        assert run["samples_per_second"] > 0 and run["tokens_per_second"] > 0 and run["peak_mem_mb"] > 50
        assert run["global_step"] == entry["hp"]["max_steps"] and run["loss_curve"]
        q = run["quality"]
        assert 0 <= q["eval_rewards/accuracies"] <= 1 and 0 < q["eval_loss"] < 2, q
        # it trained: the adapter moved the rewards off 0 (policy = reference before the first step)
        assert q["eval_rewards/margins"] != 0.0
        assert q["eval_rewards/margins"] == pytest.approx(q["eval_rewards/chosen"] - q["eval_rewards/rejected"],
                                                          abs=1e-6)
    # the same pairs on both sides, tokens counted alike (chosen + rejected, no padding)
    per_pair = {r["side"]: r["tokens_per_second"] / r["samples_per_second"] for r in entry["runs"]}
    assert per_pair["llmtune"] == pytest.approx(per_pair["trl_dpo"], rel=0.01)
    vs = results["summary"]["preference"]["vs"]["trl_dpo"]
    assert vs["ratios"]["samples_per_second"] > 0 and vs["quality"]["metric"] == "eval_rewards/accuracies"
    table = (out / "results.md").read_text()
    assert f"| {pw.TITLE} |" in table and pw.REFERENCE_NAME in table

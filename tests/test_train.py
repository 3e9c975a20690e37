"""The training loop's parts on literal inputs: sampler positions, the resume fingerprint, optimizer groups, and
the shared eval loop's gather/de-duplicate/order step."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtune import batching, train


def test_sampler_is_seeded_by_epoch_and_resumes_mid_epoch() -> None:
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11, 12]
    s = batching.LengthGroupedBatches(lengths, batch_size=4, seed=3, group_by_length=True)
    epoch0 = s.batches()
    assert sorted(i for b in epoch0 for i in b) == list(range(12))  # every row once
    assert s.batches() == epoch0  # the order depends on (seed, epoch) alone
    s.set_position(1)
    epoch1 = s.batches()
    assert epoch1 != epoch0
    s.set_position(1, skip=2)
    assert s.batches() == epoch1[2:] and len(s) == len(epoch1) - 2  # a resume replays the rest of the epoch
    shuffled = [batching.LengthGroupedBatches(lengths, batch_size=4, seed=seed, group_by_length=False).batches()
                for seed in (3, 4)]
    assert shuffled[0] != shuffled[1]  # another seed, another order
    plain = batching.LengthGroupedBatches(lengths, batch_size=4, seed=3, group_by_length=False, shuffle=False)
    assert plain.batches() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_length_grouping_puts_similar_lengths_together() -> None:
    lengths = [1, 100] * 20
    s = batching.LengthGroupedBatches(lengths, batch_size=4, seed=0, group_by_length=True)
    for b in s.batches():
        assert len({lengths[i] for i in b}) == 1


def _recipe(tmp_path: Path, **train_args: object):
    from llmtune.recipe import build_recipe

    return build_recipe({"task": "classification", "model": {"name": "minilm-l6"},
                         "data": {"train_file": str(tmp_path / "t.jsonl")},
                         "train": {"output_dir": str(tmp_path / "out"), **train_args}})


def test_fingerprint_sees_data_and_batch_changes(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "labels": [0, 1]})
    r = _recipe(tmp_path)
    base = train._fingerprint(r, ds, [3, 2], 1)
    assert train._fingerprint(r, ds, [3, 2], 1) == base
    edited = datasets.Dataset.from_dict({"input_ids": [[1, 2, 9], [4, 5]], "labels": [0, 1]})
    assert train._fingerprint(r, edited, [3, 2], 1)["data"] != base["data"]
    assert train._fingerprint(r, ds, [3, 2, 4], 1)["data"] != base["data"]
    bigger = _recipe(tmp_path, per_device_train_batch_size=16)
    assert train._fingerprint(bigger, ds, [3, 2], 1)["batches"] != base["batches"]
    # one process with batch 16 and two with batch 8 make the same updates
    assert train._fingerprint(bigger, ds, [3, 2], 1)["batches"] == \
        train._fingerprint(_recipe(tmp_path, per_device_train_batch_size=8), ds, [3, 2], 2)["batches"]
    with pytest.raises(Exception, match="different training data"):
        train._check_resume_compatible(base, train._fingerprint(r, edited, [3, 2], 1), tmp_path)


def test_fingerprint_of_data_keys_is_the_one_written_before_tasks_owned_their_keys(tmp_path: Path) -> None:
    """A checkpoint written when DataArgs held every task's keys must still resume: the data part hashes the
    same key set, filled with the old defaults."""
    import hashlib
    import json

    import datasets

    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [0]})
    r = _recipe(tmp_path)
    old_data = {**train.LEGACY_DATA_DEFAULTS, **{k: v for k, v in r.to_dict()["data"].items()}}
    old_data = {k: v for k, v in old_data.items() if k not in ("max_eval_samples", "max_test_samples")}
    h = hashlib.sha256(json.dumps(old_data, sort_keys=True).encode())
    h.update(json.dumps([3]).encode())
    h.update(json.dumps([[1, 2, 3]]).encode())
    h.update(json.dumps([0]).encode())
    assert train._fingerprint(r, ds, [3], 1)["data"] == h.hexdigest()[:16]


def test_optimizer_groups_skip_decay_on_norms_and_biases(tmp_path: Path) -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model[0].weight.requires_grad_(True)
    frozen = torch.nn.Linear(2, 2)
    for p in frozen.parameters():
        p.requires_grad_(False)
    model.append(frozen)
    groups = train._trainable_groups(model, 0.1)
    assert groups[0]["weight_decay"] == 0.1 and [p.shape for p in groups[0]["params"]] == [(4, 4)]
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 3  # bias, norm weight, norm bias
    opt = train.make_optimizer(model, _recipe(tmp_path, weight_decay=0.1, learning_rate=1e-3))
    assert opt.param_groups[0]["lr"] == 1e-3


def test_gathered_eval_outputs_come_back_once_in_row_order() -> None:
    import torch

    class OneProcess:
        num_processes = 1

        def gather_for_metrics(self, x: tuple) -> tuple:
            return x

    acc = OneProcess()
    per_batch = [batching.collect(acc, torch.tensor([2, 0]), {"x": torch.tensor([20, 0]),
                                                             "tok": torch.tensor([[1, 2, 3], [4, 5, 6]])}),
                 batching.collect(acc, torch.tensor([1, 2]), {"x": torch.tensor([10, 20]),
                                                             "tok": torch.tensor([[7], [1]])})]
    out = batching.gather_outputs(acc, per_batch)
    assert out["x"].tolist() == [0, 10, 20]
    assert out["tok"].tolist() == [[4, 5, 6], [7, -100, -100], [1, 2, 3]]
    assert batching.gather_outputs(acc, []) == {}

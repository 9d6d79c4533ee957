"""The reference logits store: computed once per key, kept across runs, never fatal."""

from __future__ import annotations

import logging

import pytest
import torch

from paretopipe.runtime.reference import ReferenceStore, reference_key

KEY = reference_key(model="resnet18", num_classes=10, seed=0, weights={"kind": "random", "seed": 0},
                    input_spec="synthetic", input_size=32, batch_size=2)


class Counting:
    def __init__(self) -> None:
        self.asked: list[list[int]] = []

    def __call__(self, ids: list[int]) -> dict[int, torch.Tensor]:
        self.asked.append(list(ids))
        return {b: torch.full((2, 10), float(b)) for b in ids}


def test_a_second_store_reads_what_the_first_computed_and_computes_only_new_batches(tmp_path):
    first = Counting()
    got = ReferenceStore(tmp_path, KEY, first).logits([3, 1, 2])
    assert first.asked == [[1, 2, 3]] and sorted(got) == [1, 2, 3]
    second = Counting()
    store = ReferenceStore(tmp_path, KEY, second)
    assert torch.equal(store.logits([2])[2], torch.full((2, 10), 2.0)) and second.asked == []
    assert sorted(store.logits([2, 4, 5])) == [2, 4, 5] and second.asked == [[4, 5]] and store.computed == 2
    third = Counting()
    assert sorted(ReferenceStore(tmp_path, KEY, third).logits([1, 2, 3, 4, 5])) == [1, 2, 3, 4, 5]
    assert third.asked == []


def test_another_key_gets_its_own_file_and_no_directory_keeps_nothing(tmp_path):
    ReferenceStore(tmp_path, KEY, Counting()).logits([1])
    other = Counting()
    ReferenceStore(tmp_path, {**KEY, "seed": 1}, other).logits([1])
    assert other.asked == [[1]] and len(list(tmp_path.glob("*.pt"))) == 2
    again = Counting()
    store = ReferenceStore(None, KEY, again)
    store.logits([1])
    store.logits([1])  # the same store remembers within one run (fidelity and --check)
    assert again.asked == [[1]] and ReferenceStore(None, KEY, again).logits([1]) and again.asked == [[1], [1]]


@pytest.mark.parametrize("damage", [b"not a torch file", None])
def test_an_unusable_cache_file_is_named_recomputed_and_replaced(tmp_path, caplog, damage):
    store = ReferenceStore(tmp_path, KEY, Counting())
    if damage is None:  # a valid file whose stored key is another one (e.g. renamed by hand)
        torch.save({"key": {**KEY, "seed": 7}, "logits": {1: torch.zeros(2, 10)}}, store.path)
    else:
        store.path.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="paretopipe.runtime.reference"):
        got = store.logits([1])
    assert torch.equal(got[1], torch.full((2, 10), 1.0))
    assert str(store.path) in caplog.text and "computing the reference again" in caplog.text
    fresh = Counting()
    assert ReferenceStore(tmp_path, KEY, fresh).logits([1]) and fresh.asked == []  # replaced with a good one


def test_the_key_names_the_input_file_by_size_and_time(tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    key = reference_key(model="m", num_classes=10, seed=0, weights={"kind": "file", "sha256": "ab"},
                        input_spec=f"folder:{data}", input_size=32, batch_size=2)
    assert key["weights"] == "ab" and key["input"]["path"] == str(data.resolve()) and "mtime_ns" in key["input"]

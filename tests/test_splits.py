"""Splits and k-fold: seeded, stratified, disjoint; build_data's task rule and label checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainlab.config import load_config
from trainlab.data import build_data, infer_task
from trainlab.data.base import ArrayDataset, SourceData
from trainlab.data.splits import kfold_indices, split_source
from trainlab.errors import ConfigError, DataError
from trainlab.registry import DATASETS


def iris(**data):
    return build_data(load_config({"seed": data.pop("seed", 0), "data": {"source": "iris", **data}}))


def test_split_is_seeded_disjoint_and_complete():
    a, b, c = iris(seed=3), iris(seed=3), iris(seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)
    assert a.info["sizes"] == {"train": 105, "val": 15, "test": 30}
    # train + val + test is exactly the dataset (as a multiset of rows: iris has duplicate rows)
    from sklearn.datasets import load_iris

    together = torch.cat([torch.cat([ds.x, ds.y[:, None].float()], 1) for ds in (a.train, a.val, a.test)])
    bunch = load_iris()
    whole = torch.cat(
        [torch.as_tensor(bunch.data, dtype=torch.float32), torch.as_tensor(bunch.target)[:, None]], 1
    )
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, whole.tolist()))


def test_split_is_stratified():
    b = iris()
    assert b.info["stratified"] is True
    assert b.info["class_counts"]["test"] == {"setosa": 10, "versicolor": 10, "virginica": 10}
    assert b.info["class_counts"]["val"] == {"setosa": 5, "versicolor": 5, "virginica": 5}


def test_source_with_its_own_test_split_keeps_it():
    b = build_data(load_config({"data": {"source": "mnist1d", "options": {"num_samples": 100}}}))
    assert b.info["sizes"] == {"train": 72, "val": 8, "test": 20}  # val = 10% of the 80 training samples
    assert b.input_shape == (1, 40) and b.output_dim == 10


@pytest.mark.parametrize("stratified", [True, False])
def test_kfold_folds_partition_the_data(stratified):
    y = torch.arange(30) % 3
    folds = kfold_indices(y, 5, seed=1, stratified=stratified)
    assert len(folds) == 5
    vals = np.concatenate([va for _, va in folds])
    assert sorted(vals.tolist()) == list(range(30))  # every sample validates exactly once
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == 30
        if stratified:
            assert np.bincount(y[va].numpy()).tolist() == [2, 2, 2]
    again = kfold_indices(y, 5, seed=1, stratified=stratified)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_kfold_falls_back_when_a_class_is_too_small():
    y = torch.tensor([0] * 9 + [1])
    folds = kfold_indices(y, 3, seed=0, stratified=True)
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(10))


@pytest.fixture
def indexed_source():
    """60 samples whose only feature is their index, 3 balanced classes."""

    @DATASETS.register("_test_indexed", "test only")
    def source(cfg):
        return SourceData(train=ArrayDataset(torch.arange(60.0)[:, None], torch.arange(60) % 3))

    yield "_test_indexed"
    DATASETS._entries.pop("_test_indexed")


def test_build_data_kfold_keeps_test_fixed_and_rotates_val(indexed_source):
    bundles = [
        build_data(load_config({"data": {"source": indexed_source, "k_fold": 4, "fold": i}}))
        for i in range(4)
    ]
    ids = [
        {name: set(getattr(b, name).x[:, 0].long().tolist()) for name in ("train", "val", "test")}
        for b in bundles
    ]
    assert all(i["test"] == ids[0]["test"] for i in ids) and len(ids[0]["test"]) == 12  # 20% held out, fixed
    for i in ids:
        assert not i["train"] & i["val"] and not i["train"] & i["test"] and not i["val"] & i["test"]
        assert len(i["train"] | i["val"] | i["test"]) == 60
    vals = [i["val"] for i in ids]
    assert sorted(v for val in vals for v in val) == sorted(
        set(range(60)) - ids[0]["test"]
    )  # folds partition
    assert all(b.info["class_counts"]["val"] == {"0": 4, "1": 4, "2": 4} for b in bundles)  # stratified folds
    assert bundles[2].info["fold"] == 2 and bundles[2].info["k_fold"] == 4


def test_fold_errors():
    with pytest.raises(ConfigError, match="data.fold"):
        iris(k_fold=3, fold=3)
    with pytest.raises(ConfigError, match="data.k_fold"):
        iris(fold=1)


def test_split_source_without_val_or_test():
    src = SourceData(train=ArrayDataset(torch.randn(20, 2), torch.arange(20) % 2))
    cfg = load_config({"data": {"val_fraction": 0.0, "test_fraction": 0.0}}).data
    train, val, test, _ = split_source(src, cfg, 0, stratified=True)
    assert len(train) == 20 and val is None and test is None


def test_infer_task_rule():
    assert infer_task(torch.tensor([0.5, 1.0, 2.0])) == "regression"
    assert infer_task(torch.tensor([0.0, 1.0, 1.0])) == "binary"
    assert infer_task(torch.arange(10)) == "classification"  # integer class indices, digits-style
    assert infer_task(torch.tensor([0.0, 1.0, 2.0, 3.0])) == "classification"
    assert infer_task(torch.arange(100).float()) == "regression"  # many whole-number values: ages, counts
    assert infer_task(torch.zeros(4, 2)) == "regression"
    assert infer_task(torch.tensor([0, 1, 2]), class_names=["a", "b"]) == "binary"


def test_config_task_wins_over_the_data():
    b = build_data(load_config({"task": "regression", "data": {"source": "iris"}}))
    assert b.task == "regression" and b.output_dim == 1 and b.train.y.dtype == torch.float32


@pytest.fixture
def bad_labels_source():
    @DATASETS.register("_test_bad_labels", "test only")
    def source(cfg):
        return SourceData(
            train=ArrayDataset(torch.randn(30, 2), torch.tensor([0, 1, 2] * 9 + [7, 0, 1])),
            class_names=["a", "b", "c"],
        )

    yield "_test_bad_labels"
    DATASETS._entries.pop("_test_bad_labels")


def test_label_outside_the_classes_names_value_and_source(bad_labels_source):
    with pytest.raises(DataError) as err:
        build_data(load_config({"data": {"source": bad_labels_source}}))
    assert "label 7" in str(err.value) and "[0, 3)" in str(err.value) and bad_labels_source in str(err.value)


def test_unknown_source_and_bad_option_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        build_data(load_config({"data": {"source": "digit"}}))
    with pytest.raises(ConfigError, match="data.options.nosie.*did you mean 'noise'"):
        build_data(load_config({"data": {"source": "synthetic_linear", "options": {"nosie": 0.1}}}))

import numpy as np
import pytest

from model import data


@pytest.mark.parametrize(
    "name,n_train,n_test,d",
    [("digits", 1437, 360, 64), ("mnist", 4000, 1000, 784), ("patches", 16695, 4240, 64)],
)
def test_standard_splits(name: str, n_train: int, n_test: int, d: int) -> None:
    split = data.load(name)
    assert split.train.shape == (n_train, d) and split.test.shape == (n_test, d)
    assert split.train.dtype == np.float32
    assert split.train.min() >= 0.0 and split.train.max() <= 1.0


def test_train_and_test_items_are_disjoint_for_digits() -> None:
    split = data.digits()
    train = {row.tobytes() for row in split.train}
    overlap = sum(row.tobytes() in train for row in split.test)
    assert overlap <= 2  # sklearn digits holds a couple of exact duplicate images


def test_validation_is_carved_from_train() -> None:
    x = np.arange(100, dtype=np.float32)[:, None]
    fit, val = data.train_val_split(x, 0.1, seed=0)
    assert len(fit) == 90 and len(val) == 10
    assert sorted(np.concatenate([fit, val])[:, 0].tolist()) == list(range(100))


def test_unknown_data_set() -> None:
    with pytest.raises(
        ValueError, match=r"expected a data set among \['bible-minilm', 'digits', .*\], got 'cifar'"
    ):
        data.load("cifar")

import pytest

from model.config import IDRPConfig


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"d": 1, "m": 1}, r"expected d >= 2, got d=1"),
        ({"d": 8, "m": 8}, r"expected 1 <= m < d=8, got m=8"),
        ({"d": 8, "m": 0}, r"expected 1 <= m < d=8, got m=0"),
        ({"d": 8, "m": 2, "n_layers": 0}, r"expected n_layers >= 1, got n_layers=0"),
        ({"d": 8, "m": 2, "clamp": 0.0}, r"expected clamp > 0, got clamp=0.0"),
    ],
)
def test_bad_values_are_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IDRPConfig(**kwargs)  # type: ignore[arg-type]


def test_json_round_trip_and_unknown_keys() -> None:
    cfg = IDRPConfig(d=64, m=16, hidden=32)
    assert IDRPConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match=r"unknown \['bogus'\]"):
        IDRPConfig.from_json('{"d": 4, "m": 2, "bogus": 1}')

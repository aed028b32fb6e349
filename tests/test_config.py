import subprocess
import sys

import pytest
import torch

from ivideogpt.config import PRESETS, ModelConfig, count_parameters, preset
from ivideogpt.tokenizer import CompressiveTokenizer
from ivideogpt.transformer import WorldModelTransformer


def millions(cfg: ModelConfig) -> tuple[float, float]:
    with torch.device("meta"):
        tok, trm = CompressiveTokenizer(cfg.tokenizer), WorldModelTransformer(cfg.transformer)
    return round(count_parameters(tok) / 1e6, 1), round(count_parameters(trm) / 1e6, 1)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("oxe-64", {}, (114.2, 138.4)),
        ("oxe-64", {"context_length": 1}, (113.8, 138.4)),
        ("oxe-64-medium", {}, (114.2, 436.3)),
        ("oxe-256", {}, (310.5, 138.4)),
        ("tiny", {}, (3.2, 4.3)),
    ],
)
def test_parameter_counts(name: str, kwargs: dict, expected: tuple[float, float]) -> None:
    assert millions(preset(name, **kwargs)) == expected


def test_json_round_trip_every_preset() -> None:
    for name in PRESETS:
        cfg = preset(name)
        assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_fields_not_presets() -> None:
    cfg = preset("oxe-64", context_length=1, action_dim=7, reward_head=True)
    assert (cfg.tokenizer.context_length, cfg.transformer.action_dim, cfg.transformer.reward_head) == (1, 7, True)


def test_invalid_configs_name_the_field() -> None:
    d = preset("tiny").to_dict()
    d["tokenizer"]["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig.from_dict(d)
    d = preset("tiny").to_dict()
    d["transformer"]["vocab_size"] = 10
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig.from_dict(d)
    with pytest.raises(KeyError, match="unknown preset"):
        preset("huge")


def test_future_encode_dtype_travels_with_the_config() -> None:
    d = preset("tiny").to_dict()
    del d["future_encode_dtype"]  # a config written before the field: fp32, as such models were served
    assert ModelConfig.from_dict(d).future_encode_dtype == "float32"
    d["future_encode_dtype"] = "bfloat16"
    assert ModelConfig.from_json(ModelConfig.from_dict(d).to_json()).future_encode_dtype == "bfloat16"
    d["future_encode_dtype"] = "float16"
    with pytest.raises(ValueError, match="future_encode_dtype"):
        ModelConfig.from_dict(d)


def test_cli_prints_counts() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ivideogpt.config", "--preset", "oxe-64"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "tokenizer: 114.2M" in out and "transformer: 138.4M" in out
    assert ModelConfig.from_json(out[: out.rindex("}") + 1]) == preset("oxe-64")

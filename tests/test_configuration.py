"""ShineConfig: derived sizes, defaults, validation, and configs read from files."""

from __future__ import annotations

import json

import pytest

from shine_hf import ConfigError, ShineConfig, ShineForCausalLM
from shine_hf.modeling.configuration_shine import WEIGHT_DEFINING_KEYS, default_m2p_num_heads
from shine_hf.testing.models import tiny_shine


def _config(shapes, hidden, layers, **kwargs):
    backbone = {
        "model_type": "qwen3",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 12288,
    }
    kwargs.setdefault("target_modules", list(shapes))
    return ShineConfig(backbone_config=backbone, target_module_shapes=shapes, **kwargs)


def test_qwen3_8b_memory_token_count():
    shapes = {
        "self_attn.q_proj": [4096, 4096, 0],
        "self_attn.k_proj": [4096, 1024, 0],
        "self_attn.v_proj": [4096, 1024, 0],
        "self_attn.o_proj": [4096, 4096, 0],
        "mlp.gate_proj": [4096, 12288, 0],
        "mlp.up_proj": [4096, 12288, 0],
        "mlp.down_proj": [12288, 4096, 0],
    }
    config = _config(shapes, 4096, 36, lora_rank=8)
    assert config.lora_numel_per_layer == 606_208 == 148 * 4096
    assert config.num_memory_tokens == 148
    assert config.m2p_num_heads == 32 and config.m2p_ffn_dim == 8192


def test_memory_tokens_round_up_when_not_a_multiple():
    config = _config({"self_attn.q_proj": [10, 10, 1]}, 16, 2, lora_rank=1)
    assert config.lora_numel_per_layer == 30
    assert config.num_memory_tokens == 2  # ceil(30 / 16); the last 2 numbers are unused


def test_odd_m2p_depth_is_refused():
    with pytest.raises(ValueError, match="even"):
        ShineConfig(m2p_num_layers=3)


def test_config_json_round_trip(tmp_path):
    config = _config({"self_attn.q_proj": [4096, 4096, 0]}, 4096, 2, lora_rank=8)
    config.save_pretrained(tmp_path)
    loaded = ShineConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.num_memory_tokens == config.num_memory_tokens


@pytest.mark.parametrize("key", WEIGHT_DEFINING_KEYS)
def test_a_saved_config_lacking_a_weight_defining_value_is_refused(tmp_path, key):
    """A default (e.g. lora_scale 0.001) would silently change every answer of weights trained otherwise."""
    tiny_shine("qwen3").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert key in config
    del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=f"does not state {key}"):
        ShineConfig.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=f"does not state {key}"):
        ShineForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("lora_scale", -1.0, "lora_scale must be a finite number > 0"),
        ("lora_scale", 0, "lora_scale must be a finite number > 0"),
        ("lora_scale", "0.01", "lora_scale must be a finite number > 0"),
        ("lora_scale", float("nan"), "lora_scale must be a finite number > 0"),
        ("lora_rank", 2.5, "lora_rank must be an integer >= 1"),
        ("lora_rank", 0, "lora_rank must be an integer >= 1"),
        ("metalora_rank", "8", "metalora_rank must be an integer >= 1"),
        ("m2p_num_heads", 0, "m2p_num_heads must be an integer >= 1"),
        ("m2p_num_heads", 3, "does not divide the backbone's hidden size"),
        ("m2p_ffn_dim", -4, "m2p_ffn_dim must be an integer >= 1"),
        ("m2p_num_layers", 3, "even"),
        ("target_module_shapes", {"self_attn.q_proj": [32, "x", 0]}, r"target_module_shapes\['self_attn.q_proj'\]"),
    ],
)
def test_ill_typed_or_impossible_values_are_clear_errors(tmp_path, field, value, match):
    tiny_shine("qwen3").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=match):
        ShineForCausalLM.from_pretrained(tmp_path)


def test_config_errors_are_value_errors_when_built_in_code():
    with pytest.raises(ValueError, match="lora_scale"):
        ShineConfig(lora_scale=-1)
    with pytest.raises(ValueError, match="lora_rank"):
        ShineConfig(lora_rank=1.5)


def test_target_order_comes_from_target_modules_not_from_the_shapes_mapping():
    shapes = {"mlp.down_proj": [8, 4, 0], "self_attn.q_proj": [4, 4, 0]}  # sorted, as json.dump(sort_keys) writes
    config = _config(shapes, 4, 2, target_modules=["self_attn.q_proj", "mlp.down_proj"])
    assert [t.name for t in config.targets] == ["self_attn.q_proj", "mlp.down_proj"]
    with pytest.raises(ConfigError, match="must name the same modules"):
        _config(shapes, 4, 2, target_modules=["self_attn.q_proj"])


def test_m2p_heads_default_follows_the_reference_configurations():
    from transformers import Qwen3Config

    assert default_m2p_num_heads(Qwen3Config(hidden_size=1024, num_attention_heads=16)) == 8  # Qwen3-0.6B
    assert default_m2p_num_heads(Qwen3Config(hidden_size=2048, num_attention_heads=16)) == 16  # Qwen3-1.7B
    assert default_m2p_num_heads(Qwen3Config(hidden_size=4096, num_attention_heads=32)) == 32  # Qwen3-8B
    assert default_m2p_num_heads(Qwen3Config(hidden_size=96, num_attention_heads=6)) == 6
    assert default_m2p_num_heads(Qwen3Config(hidden_size=100, num_attention_heads=8)) == 1

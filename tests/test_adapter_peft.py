"""ShineAdapter.from_pretrained on adapters made by PEFT itself (modeling/peft_io.py).

Every config it accepts must compute what `peft.PeftModel.from_pretrained` computes, live (through
the SHINE model's hooks) and merged; every config it cannot honour is refused, naming the field.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model

from shine_hf import CheckpointError, IncompatibleAdapterError, ShineAdapter
from shine_hf.testing import tiny_backbone
from shine_hf.testing.models import tiny_shine

LLAMA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_MODULES = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
# float32 (eps 1.2e-7) on logits of magnitude < 10 (asserted): the two sides differ only in where
# alpha/r is multiplied in and in summation order, a few ulps per op over two layers; 1e-5 leaves
# more than an order of magnitude of margin.
TOLERANCE = 1e-5
QUESTION = "Who signed the contract?"

# Configs ShineAdapter honours: (family, LoraConfig arguments), plus edits made to the saved JSON.
EDITED = {"fan_in_fan_out_on_linear": {"fan_in_fan_out": True}}
ACCEPTED = {
    "alpha_not_r": ("llama", dict(r=4, lora_alpha=8, target_modules=LLAMA_MODULES)),
    "rslora": ("llama", dict(r=4, lora_alpha=6, use_rslora=True, target_modules=LLAMA_MODULES)),
    "rank_and_alpha_patterns": ("llama", dict(
        r=4, lora_alpha=4, target_modules=LLAMA_MODULES,
        rank_pattern={"q_proj": 2, r"model\.layers\.1\.mlp\.down_proj": 6},
        alpha_pattern={"v_proj": 12, "down_proj": 3},
    )),
    "rslora_with_patterns": ("llama", dict(
        r=4, lora_alpha=8, use_rslora=True, target_modules=LLAMA_MODULES,
        rank_pattern={"o_proj": 8}, alpha_pattern={"o_proj": 2},
    )),
    "exclude_modules": ("llama", dict(r=4, lora_alpha=4, target_modules=r".*_proj",
                                      exclude_modules=["gate_proj", "up_proj"])),
    "regex_target_modules": ("llama", dict(r=4, lora_alpha=2, target_modules=r".*\.(q_proj|up_proj)")),
    # PEFT lets the module kind decide (it resets the flag for nn.Linear when it builds the adapter,
    # and again when it loads one that says otherwise, below)
    "fan_in_fan_out_on_linear": ("llama", dict(r=4, lora_alpha=8, target_modules=LLAMA_MODULES)),
    "neutral_init_and_dropout": ("llama", dict(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                               lora_dropout=0.1, target_modules=LLAMA_MODULES)),
    "lora_bias_scaled": ("qwen2", dict(r=4, lora_alpha=12, lora_bias=True, target_modules=LLAMA_MODULES)),
    "gpt2_conv1d": ("gpt2", dict(r=4, lora_alpha=8, lora_bias=True, use_rslora=True, target_modules=GPT2_MODULES,
                                 rank_pattern={"c_fc": 2}, fan_in_fan_out=True)),
}


@pytest.fixture(scope="module")
def shine_models():
    return {family: tiny_shine(family) for family in ("llama", "qwen2", "gpt2")}


def save_peft_adapter(directory, family: str, config, seed: int = 0, **save_kwargs) -> None:
    """A PEFT adapter made by PEFT on a fresh tiny backbone, with every LoRA tensor random."""
    model = get_peft_model(tiny_backbone(family), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(directory, **save_kwargs)


def edit_config(directory, **changes) -> None:
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del config[key]
        else:
            config[key] = value
    path.write_text(json.dumps(config))


_DELETE = object()


def _ids(shine):
    return shine.tokenizer([QUESTION], return_tensors="pt")["input_ids"]


def peft_logits(family: str, directory, ids) -> torch.Tensor:
    with torch.no_grad():
        return PeftModel.from_pretrained(tiny_backbone(family), directory).eval()(input_ids=ids).logits


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted_config_computes_what_peft_computes(case, shine_models, tmp_path):
    family, kwargs = ACCEPTED[case]
    save_peft_adapter(tmp_path, family, LoraConfig(**kwargs))
    edit_config(tmp_path, **EDITED.get(case, {}))
    shine = shine_models[family]
    ids = _ids(shine)
    expected = peft_logits(family, tmp_path, ids)
    adapter = ShineAdapter.from_pretrained(tmp_path)
    with torch.no_grad():
        base = shine(ids).logits
        live = shine(ids, adapter=adapter).logits
    assert expected.abs().max() < 10  # the scale TOLERANCE is derived for
    assert (expected - base).abs().max() > 1e-2, "the adapter must change the logits"
    assert torch.allclose(live, expected, atol=TOLERANCE, rtol=0)

    backbone = tiny_backbone(family)
    if adapter.has_bias_deltas and family == "qwen2":  # random lora_B.bias on o_proj etc., which have no bias
        with pytest.raises(IncompatibleAdapterError, match="no bias in the backbone"):
            adapter.merge_into(backbone)
        return
    adapter.merge_into(backbone)
    with torch.no_grad():
        merged = backbone(input_ids=ids).logits
    assert torch.allclose(merged, expected, atol=TOLERANCE, rtol=0)


def test_per_module_ranks_survive_a_round_trip_through_peft(shine_models, tmp_path):
    family, kwargs = ACCEPTED["rank_and_alpha_patterns"]
    save_peft_adapter(tmp_path / "peft", family, LoraConfig(**kwargs))
    adapter = ShineAdapter.from_pretrained(tmp_path / "peft")
    ranks = adapter.module_ranks
    assert ranks[(0, "self_attn.q_proj")] == 2 and ranks[(1, "mlp.down_proj")] == 6
    assert ranks[(0, "mlp.down_proj")] == 4 and adapter.rank == 4
    assert "ranks=[2, 4, 6]" in repr(adapter)
    adapter.save_pretrained(tmp_path / "again")
    ids = _ids(shine_models[family])
    expected = peft_logits(family, tmp_path / "peft", ids)
    assert torch.allclose(peft_logits(family, tmp_path / "again", ids), expected, atol=TOLERANCE, rtol=0)
    reloaded = ShineAdapter.from_pretrained(tmp_path / "again")
    assert reloaded.module_ranks == ranks
    with torch.no_grad():
        assert torch.equal(shine_models[family](ids, adapter=reloaded).logits,
                           shine_models[family](ids, adapter=adapter).logits)


def test_pickled_weights_are_read_weights_only(shine_models, tmp_path):
    family, kwargs = ACCEPTED["alpha_not_r"]
    save_peft_adapter(tmp_path, family, LoraConfig(**kwargs), safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file() and not (tmp_path / "adapter_model.safetensors").exists()
    ids = _ids(shine_models[family])
    with torch.no_grad():
        live = shine_models[family](ids, adapter=ShineAdapter.from_pretrained(tmp_path)).logits
    assert torch.allclose(live, peft_logits(family, tmp_path, ids), atol=TOLERANCE, rtol=0)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_code_is_refused_and_not_run(tmp_path):
    save_peft_adapter(tmp_path, "llama", LoraConfig(r=4, target_modules=["q_proj"]), safe_serialization=False)
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(str(marker))}, tmp_path / "adapter_model.bin")
    with pytest.raises(CheckpointError, match=r"adapter_model\.bin"):
        ShineAdapter.from_pretrained(tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------------- refused configs
REFUSED_BY_PEFT_CONFIG = {
    "use_dora": dict(use_dora=True),
    "modules_to_save": dict(modules_to_save=["lm_head"]),
    "layers_to_transform": dict(layers_to_transform=[1]),
    "layers_pattern": dict(layers_to_transform=[0, 1], layers_pattern="layers"),
    "bias='all'": dict(bias="all"),
}


@pytest.mark.parametrize("field", sorted(REFUSED_BY_PEFT_CONFIG))
def test_configs_a_shine_adapter_cannot_honour_are_refused(field, tmp_path):
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], **REFUSED_BY_PEFT_CONFIG[field])
    save_peft_adapter(tmp_path, "llama", config)
    with pytest.raises(IncompatibleAdapterError, match=field):
        ShineAdapter.from_pretrained(tmp_path)


@pytest.mark.parametrize("field, value", [
    ("init_lora_weights", "pissa"),
    ("layer_replication", [[0, 2]]),
    ("use_qalora", True),
])
def test_fields_edited_into_a_config_are_refused(field, value, tmp_path):
    save_peft_adapter(tmp_path, "llama", LoraConfig(r=4, target_modules=["q_proj"]))
    edit_config(tmp_path, **{field: value})
    with pytest.raises(IncompatibleAdapterError, match=field):
        ShineAdapter.from_pretrained(tmp_path)


def test_other_peft_types_are_refused(tmp_path):
    model = get_peft_model(tiny_backbone("llama"), IA3Config(target_modules=["q_proj"], feedforward_modules=[]))
    model.save_pretrained(tmp_path)
    with pytest.raises(IncompatibleAdapterError, match="peft_type='IA3'"):
        ShineAdapter.from_pretrained(tmp_path)
    edit_config(tmp_path, peft_type="NOT_A_PEFT_TYPE")
    with pytest.raises(CheckpointError, match="not a PEFT adapter config"):
        ShineAdapter.from_pretrained(tmp_path)


def test_mixed_ranks_without_rank_pattern_are_refused_like_peft(tmp_path):
    save_peft_adapter(tmp_path, "llama", LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                     rank_pattern={"v_proj": 2}))
    edit_config(tmp_path, rank_pattern={})
    with pytest.raises(RuntimeError, match="size mismatch"):  # PEFT cannot load it either
        PeftModel.from_pretrained(tiny_backbone("llama"), tmp_path)
    with pytest.raises(CheckpointError, match=r"v_proj has rank 2.*rank 4.*rank_pattern"):
        ShineAdapter.from_pretrained(tmp_path)


def test_missing_r_means_peft_default(shine_models, tmp_path):
    save_peft_adapter(tmp_path / "r8", "llama", LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"]))
    edit_config(tmp_path / "r8", r=_DELETE)  # PEFT's default r is 8: the same adapter
    ids = _ids(shine_models["llama"])
    with torch.no_grad():
        live = shine_models["llama"](ids, adapter=ShineAdapter.from_pretrained(tmp_path / "r8")).logits
    assert torch.allclose(live, peft_logits("llama", tmp_path / "r8", ids), atol=TOLERANCE, rtol=0)

    save_peft_adapter(tmp_path / "r4", "llama", LoraConfig(r=4, target_modules=["q_proj"]))
    edit_config(tmp_path / "r4", r=_DELETE)
    with pytest.raises(CheckpointError, match=r"rank 4.*gives it rank 8.*`r` is absent"):
        ShineAdapter.from_pretrained(tmp_path / "r4")


def test_target_modules_that_disagree_with_the_tensors(tmp_path):
    save_peft_adapter(tmp_path, "llama", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    edit_config(tmp_path, target_modules=["q_proj"])
    with pytest.raises(CheckpointError, match=r"tensors for model\.layers\.0\.self_attn\.v_proj.*target_modules"):
        ShineAdapter.from_pretrained(tmp_path)
    edit_config(tmp_path, target_modules=["q_proj", "v_proj", "gate_proj"])
    with pytest.raises(CheckpointError, match=r"target_modules names \['gate_proj'\]"):
        ShineAdapter.from_pretrained(tmp_path)
    edit_config(tmp_path, target_modules=None)
    with pytest.raises(IncompatibleAdapterError, match="target_modules=None"):
        ShineAdapter.from_pretrained(tmp_path)


def test_a_module_adapted_in_some_layers_only_is_refused(tmp_path):
    save_peft_adapter(tmp_path, "llama", LoraConfig(r=4, target_modules=["q_proj", "down_proj"],
                                                     exclude_modules=["model.layers.0.mlp.down_proj"]))
    with pytest.raises(IncompatibleAdapterError, match=r"no weights for \[\(0, 'mlp.down_proj'\)\]"):
        ShineAdapter.from_pretrained(tmp_path)


def test_bias_tensors_without_lora_bias_are_refused(tmp_path):
    save_peft_adapter(tmp_path, "qwen2", LoraConfig(r=4, lora_bias=True, target_modules=["q_proj"]))
    edit_config(tmp_path, lora_bias=False)
    with pytest.raises(CheckpointError, match="lora_bias=false"):
        ShineAdapter.from_pretrained(tmp_path)


# ---------------------------------------------------------------------- unreadable files
def test_missing_invalid_and_truncated_files_name_the_file(tmp_path):
    save_peft_adapter(tmp_path / "a", "llama", LoraConfig(r=4, target_modules=["q_proj"]))
    config = tmp_path / "a" / "adapter_config.json"
    weights = tmp_path / "a" / "adapter_model.safetensors"
    text = config.read_text()

    config.write_text(text[:-5])
    with pytest.raises(CheckpointError, match=r"adapter_config\.json is not valid JSON"):
        ShineAdapter.from_pretrained(tmp_path / "a")
    config.unlink()
    with pytest.raises(CheckpointError, match=r"adapter_config\.json is missing"):
        ShineAdapter.from_pretrained(tmp_path / "a")
    config.write_text(text)

    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors is not a readable safetensors file"):
        ShineAdapter.from_pretrained(tmp_path / "a")
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors is missing"):
        ShineAdapter.from_pretrained(tmp_path / "a")

    with pytest.raises(CheckpointError, match="No such adapter directory"):
        ShineAdapter.from_pretrained(os.path.join(tmp_path, "does", "not", "exist"))


def test_unknown_loading_arguments_are_refused(tmp_path):
    save_peft_adapter(tmp_path, "llama", LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="is_trainable"):
        ShineAdapter.from_pretrained(tmp_path, is_trainable=True)


def test_shipped_adapter_code_loads_without_peft():
    """transformers checks every import of remote code (outside `try`) before loading it."""
    import sys
    from pathlib import Path

    from transformers.dynamic_module_utils import get_imports

    import shine_hf.modeling

    folder = Path(shine_hf.modeling.__file__).parent
    for name in ("adapter.py", "peft_io.py"):
        packages = {m for m in get_imports(folder / name) if m not in sys.stdlib_module_names}
        assert packages <= {"torch", "transformers", "safetensors", "huggingface_hub"}, name

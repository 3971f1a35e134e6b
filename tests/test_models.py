"""Tokenizer, micro models, HF loading, prompts, devices. Run: .venv/bin/python -m pytest tests/test_models.py -q"""

import pytest
import torch
from transformers import AutoTokenizer

from workbench.models import policy as models
from workbench.config import ModelConfig
from workbench.models.policy import MICRO_MODELS, build_char_tokenizer, build_prompt, load_policy, param_count, select_device


def test_tokenizer_round_trip_and_boxed_is_one_token():
    tok = build_char_tokenizer()
    text = "12+7+30=12+7=19;19+30=49;\\boxed{49}"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) == 1 + len(text) - len("\\boxed{") + 1  # <bos>, one id per char, `\boxed{` as one
    assert tok.convert_ids_to_tokens(ids).count("\\boxed{") == 1


def test_tokenizer_unknown_chars_and_padding():
    tok = build_char_tokenizer()
    assert tok("1?")["input_ids"][-1] == tok.unk_token_id
    batch = tok(["1+2=", "11+22+3="], padding=True)
    assert batch["input_ids"][0][:4] == [tok.pad_token_id] * 4  # left padding for generation
    assert batch["attention_mask"][0] == [0] * 4 + [1] * 5


def test_tokenizer_save_and_load_with_autotokenizer(tmp_path):
    tok = build_char_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "3+7+5=3+7=10;10+5=15;\\boxed{15}"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (tok.pad_token_id, tok.eos_token_id, "left")


@pytest.mark.parametrize("name,expected", [("micro-0.5m", 0.5e6), ("micro-3m", 3e6), ("micro-15m", 15e6)])
def test_micro_models_have_their_size(name, expected):
    model, tok = load_policy(ModelConfig(name=name, device="cpu"), seed=0)
    assert abs(param_count(model) - expected) / expected < 0.1
    assert model.config.vocab_size == len(tok)
    assert next(model.parameters()).dtype == torch.float32


def test_micro_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, _ = load_policy(ModelConfig(name="micro-0.5m"), seed=1)
    after = torch.rand(3)
    b, _ = load_policy(ModelConfig(name="micro-0.5m"), seed=1)
    c, _ = load_policy(ModelConfig(name="micro-0.5m"), seed=2)
    assert torch.equal(before, after)
    pa, pb, pc = (dict(m.named_parameters())["model.layers.0.self_attn.q_proj.weight"] for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_unknown_micro_name_lists_valid_ones():
    with pytest.raises(ValueError, match="micro-0.5m, micro-3m, micro-15m"):
        load_policy(ModelConfig(name="micro-7m"), seed=0)


def test_load_policy_from_local_directory(tmp_path):
    saved, tok = load_policy(ModelConfig(name="micro-0.5m"), seed=4)
    saved.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, loaded_tok = load_policy(ModelConfig(name=str(tmp_path), gradient_checkpointing=True), seed=0)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    assert loaded_tok.padding_side == "left" and loaded_tok.pad_token_id is not None
    for (name, p), q in zip(saved.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name


def test_hf_tokenizer_without_pad_gets_eos_as_pad(tmp_path):
    saved, tok = load_policy(ModelConfig(name="micro-0.5m"), seed=0)
    saved.save_pretrained(tmp_path)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    _, loaded_tok = load_policy(ModelConfig(name=str(tmp_path)), seed=0)
    assert loaded_tok.pad_token == loaded_tok.eos_token


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        load_policy(ModelConfig(name=str(tmp_path / "nope")), seed=0)


def test_hub_id_with_hub_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_from_pretrained", _no_download(models._from_pretrained))
    with pytest.raises(ValueError, match="could not be found locally and no network is available") as err:
        load_policy(ModelConfig(name="some-org/some-model"), seed=0)
    assert "\n" not in str(err.value)


def test_hub_id_without_network(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_from_pretrained", _no_download(models._from_pretrained))
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(ValueError, match="could not be found locally and no network is available") as err:
        load_policy(ModelConfig(name="some-org/some-model"), seed=0)
    assert "\n" not in str(err.value)


def _no_download(real):
    """Let the local-cache lookup run; fail the test if a download is ever attempted."""

    def guarded(source, local_files_only, **kwargs):
        assert local_files_only, "tried to download from the hub"
        return real(source, local_files_only=True, **kwargs)

    return guarded


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_template_prompt():
    tok = build_char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    prompt = build_prompt(tok, "What is 2+2?", is_micro=False)
    assert prompt.startswith("<|user|>What is 2+2?")
    assert "\\boxed{}" in prompt
    assert prompt.endswith("<|end|><|assistant|>")


def test_prompt_without_template_and_micro_prompt():
    tok = build_char_tokenizer()
    assert build_prompt(tok, "3+7+5=", is_micro=True) == "3+7+5="
    plain = build_prompt(tok, "What is 2+2?", is_micro=False)
    assert plain.startswith("What is 2+2?") and "\\boxed{}" in plain


def test_device_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(ModelConfig(device="auto")) == torch.device("cpu")
    assert select_device(ModelConfig(device="cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        select_device(ModelConfig(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(ModelConfig(device="auto")) == torch.device("cuda")
    assert select_device(ModelConfig(device="cpu")) == torch.device("cpu")


def test_dtype_resolution():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    auto = ModelConfig(dtype="auto")
    assert models.resolve_dtype(auto, cuda, micro=False) == torch.bfloat16
    assert models.resolve_dtype(auto, cpu, micro=False) == torch.float32
    assert models.resolve_dtype(auto, cuda, micro=True) == torch.float32
    assert models.resolve_dtype(ModelConfig(dtype="bfloat16"), cpu, micro=True) == torch.bfloat16


def test_saved_micro_model_keeps_float32_under_auto_on_cuda(tmp_path, monkeypatch):
    saved, tok = load_policy(ModelConfig(name="micro-0.5m"), seed=0)
    saved.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    monkeypatch.setattr(models, "select_device", lambda cfg: torch.device("cpu"))  # placement only
    monkeypatch.setattr(models, "resolve_dtype", _cuda_dtype_rule)
    micro, _ = models.load_saved(tmp_path, ModelConfig(name="micro-0.5m"))
    other, _ = models.load_saved(tmp_path, ModelConfig(name="some-org/some-model"))
    assert next(micro.parameters()).dtype == torch.float32
    assert next(other.parameters()).dtype == torch.bfloat16


def _cuda_dtype_rule(cfg, device, micro):
    """resolve_dtype as it decides on a CUDA device."""
    return torch.float32 if micro else torch.bfloat16

"""The captioner: tokenizer, prefix-conditioned LM, training, decoding, saving, real LMs."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from recaption import precision
from recaption.models import captioner as cap
from recaption.models.captioner_train import CaptionTrainConfig, train_captioner
from recaption.models.tokenizer import train_tokenizer
from recaption.models.training import Checkpoints

TINY_LM = str(Path(__file__).parent / "data" / "tiny-gpt2.json")
CAPTIONS = [
    "a red circle at the top left",
    "a blue square in the center",
    "two green stars at the bottom",
    "a yellow triangle on a black background",
]
DIMS = (8, 4, 3)  # pooled 8, a 2x2 grid of 3-d cells: 20 feature columns


def features(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 8 + 4 * 3, generator=torch.Generator().manual_seed(seed))


def tiny_captioner(seed: int = 0, spec: str = TINY_LM) -> cap.Captioner:
    return cap.create(spec, CAPTIONS * 3, 300, DIMS, prefix_length=2, hidden=16, seed=seed)


def config(**overrides) -> CaptionTrainConfig:
    fields = dict(
        steps=80, batch_size=4, lr=3e-3, warmup_steps=5, weight_decay=0.0, grad_clip=1.0,
        train_lm=True, eval_every=20, keep="best", patience=10, max_tokens=16, precision="fp32",
        seed=0,
    )  # fmt: skip
    return CaptionTrainConfig(**{**fields, **overrides})


def test_tokenizer_is_deterministic_and_round_trips():
    a, b = train_tokenizer(CAPTIONS, 300), train_tokenizer(CAPTIONS, 300)
    assert a.get_vocab() == b.get_vocab()
    ids = a(CAPTIONS[0], add_special_tokens=False)["input_ids"]
    assert a.decode(ids).strip() == CAPTIONS[0]
    assert a.eos_token_id not in ids  # the captioner appends EOS itself


def test_loss_counts_caption_tokens_only():
    model = tiny_captioner().eval()
    feats = features(2)
    ids, mask = model.pad(model.tokenize(CAPTIONS[:2], 16))
    prefix = model.mapper(feats)
    embeds = torch.cat([prefix, model.lm.get_input_embeddings()(ids)], 1)
    full_mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long), mask], 1)
    logits = model.lm(inputs_embeds=embeds, attention_mask=full_mask).logits
    p = prefix.shape[1]
    # Position p-1+j predicts caption token j; padding is never a target.
    pred = logits[:, p - 1 : -1]
    expected = F.cross_entropy(pred[mask == 1], ids[mask == 1])
    assert torch.allclose(model.loss(feats, ids, mask), expected, atol=1e-5)


def test_training_lowers_the_validation_loss_and_conditions_on_the_image():
    model = tiny_captioner()
    feats = features(len(CAPTIONS))
    before = model.loss(feats, *model.pad(model.tokenize(CAPTIONS, 16))).item()
    result = train_captioner(model, (feats, CAPTIONS), (feats, CAPTIONS), config())
    assert result["val_loss"] < 0.5 * before
    # Each image's own caption comes back: the prefix, not the LM alone, decides.
    got = model.generate(feats, cap.Decoding(max_new_tokens=16))
    assert sum(g == c for g, c in zip(got, CAPTIONS, strict=True)) >= 3


def test_frozen_lm_trains_only_the_mapper():
    model = tiny_captioner()
    lm_before = {n: p.clone() for n, p in model.lm.named_parameters()}
    mapper_before = {n: p.clone() for n, p in model.mapper.named_parameters()}
    feats = features(len(CAPTIONS))
    train_captioner(model, (feats, CAPTIONS), (feats, CAPTIONS), config(steps=10, train_lm=False))
    assert all(torch.equal(p, lm_before[n]) for n, p in model.lm.named_parameters())
    assert any(not torch.equal(p, mapper_before[n]) for n, p in model.mapper.named_parameters())


def test_early_stopping_restores_the_best_weights():
    model = tiny_captioner()
    feats = features(len(CAPTIONS))
    # Validation captions that memorising the training ones makes less likely: reversed.
    val = (feats, [" ".join(c.split()[::-1]) for c in CAPTIONS])
    result = train_captioner(model, (feats, CAPTIONS), val, config(steps=200, patience=2))
    assert result["stopped_early"] and result["steps"] < 200
    ids, mask = model.pad(model.tokenize(val[1], 16))
    assert model.loss(val[0], ids, mask).item() == pytest.approx(result["val_loss"], rel=1e-3)


def test_keep_last_runs_the_schedule_out_and_ends_on_its_last_weights():
    feats = features(len(CAPTIONS))
    val = (feats, [" ".join(c.split()[::-1]) for c in CAPTIONS])  # memorising worsens it
    best_model, last_model = tiny_captioner(), tiny_captioner()
    best = train_captioner(best_model, (feats, CAPTIONS), val, config(steps=200, patience=2))
    last = train_captioner(last_model, (feats, CAPTIONS), val, config(steps=200, keep="last"))
    assert not last["stopped_early"] and last["steps"] == last["kept_step"] == 200
    ids, mask = last_model.pad(last_model.tokenize(val[1], 16))
    assert last_model.loss(val[0], ids, mask).item() == pytest.approx(last["val_loss"], rel=1e-3)
    # The validation loss rose after the best's step, and the last weights are not the best.
    assert last["val_loss"] > best["val_loss"]
    assert not all(torch.equal(a, b) for a, b in
                   zip(best_model.parameters(), last_model.parameters(), strict=True))  # fmt: skip


class Crash(Exception):
    pass


def test_a_killed_captioner_training_resumes_to_the_same_weights_and_figures(tmp_path):
    feats = features(len(CAPTIONS))
    val = (feats, [" ".join(c.split()[::-1]) for c in CAPTIONS])
    cfg = config(steps=30, eval_every=3, patience=3)
    clean = tiny_captioner()
    clean_result = train_captioner(clean, (feats, CAPTIONS), val, cfg)

    def crash_at_9(step, metrics):
        if step >= 9:
            raise Crash

    folder = Checkpoints(tmp_path / "ck", every=4)
    with pytest.raises(Crash):
        train_captioner(tiny_captioner(), (feats, CAPTIONS), val, cfg, crash_at_9,
                        checkpoints=folder)  # fmt: skip
    resumed = tiny_captioner(seed=1)  # other weights: the checkpoint's replace them
    result = train_captioner(resumed, (feats, CAPTIONS), val, cfg, checkpoints=folder)
    assert result == clean_result
    for (name, a), b in zip(clean.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_sampling_is_fixed_by_its_seed_and_greedy_batches_match_single_images():
    model = tiny_captioner(seed=3)
    feats = features(6, seed=1)
    sample = cap.Decoding(strategy="sample", max_new_tokens=12, top_p=1.0, temperature=1.5)
    assert model.generate(feats, sample, seed=5) == model.generate(feats, sample, seed=5)
    assert model.generate(feats, sample, seed=5) != model.generate(feats, sample, seed=6)
    greedy = cap.Decoding(max_new_tokens=12)
    batched = model.generate(feats, greedy)
    assert batched == [model.generate(feats[i : i + 1], greedy)[0] for i in range(6)]
    beam = model.generate(feats, cap.Decoding(strategy="beam", num_beams=3, max_new_tokens=12))
    assert len(beam) == 6


def test_save_and_load_give_the_same_captions_from_safetensors_only(tmp_path):
    model = tiny_captioner().eval()
    model.save(tmp_path / "c")
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert {"model.safetensors", "mapper.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    loaded = cap.load(tmp_path / "c")
    feats = features(3)
    greedy = cap.Decoding(max_new_tokens=10)
    assert loaded.generate(feats, greedy) == model.generate(feats, greedy)
    half = cap.load(tmp_path / "c", torch.bfloat16)  # decoding only: half the memory
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with precision.autocast("bf16"):
        assert len(half.generate(feats, greedy)) == 3


def test_lengths_past_the_lms_context_are_refused_with_the_key_named():
    model = tiny_captioner()  # 64 positions, 2 + 4 prefix vectors: 58 caption tokens
    assert model.max_caption_tokens == 58
    with pytest.raises(cap.CaptionerError, match="max_tokens = 59"):
        model.tokenize(CAPTIONS, 59)
    with pytest.raises(cap.CaptionerError, match="max_new_tokens = 80"):
        model.generate(features(1), cap.Decoding(max_new_tokens=80))


def test_a_folder_without_a_mapper_is_refused(tmp_path):
    with pytest.raises(cap.CaptionerError, match="mapper"):
        cap.load(tmp_path)


def save_local_lm(folder: Path) -> None:
    """A tiny 'pretrained' causal LM as a user would have it: weights, config and its own
    tokenizer, which (like GPT-2's) has an EOS token but no padding token."""
    tok = Tokenizer(
        models.WordLevel(
            {
                w: i
                for i, w in enumerate(
                    ["<unk>", "<eos>", *sorted({w for c in CAPTIONS for w in c.split()})]
                )
            },
            unk_token="<unk>",
        )
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    # Seeded, but not with the captioner's seed (0): a loader that drew fresh weights the way
    # the built-in LM gets them could not match these.
    torch.manual_seed(1)
    lm = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_layer=1,
            n_head=2,
            n_embd=24,
            n_positions=64,
            eos_token_id=1,
            bos_token_id=1,
        )
    )
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def assert_holds_saved_weights(lm: torch.nn.Module, folder: Path) -> None:
    """Every tensor in `folder`'s model.safetensors is, exactly, the same tensor of `lm`."""
    saved = load_file(folder / "model.safetensors")
    state = lm.state_dict()
    assert saved and set(saved) <= set(state)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name


def test_a_locally_saved_lm_trains_through_its_own_tokenizer(tmp_path):
    save_local_lm(tmp_path / "lm")
    model = tiny_captioner(spec=str(tmp_path / "lm"))
    assert_holds_saved_weights(model.lm, tmp_path / "lm")  # the folder's LM, not a fresh one
    assert model.tokenizer.pad_token_id == model.tokenizer.eos_token_id  # filled in
    assert model.mapper.config.d_model == 24
    feats = features(len(CAPTIONS))
    before = model.loss(feats, *model.pad(model.tokenize(CAPTIONS, 16))).item()
    result = train_captioner(model, (feats, CAPTIONS), (feats, CAPTIONS), config(steps=60))
    assert result["val_loss"] < 0.6 * before
    model.save(tmp_path / "out")
    assert_holds_saved_weights(model.lm, tmp_path / "out")
    loaded = cap.load(tmp_path / "out")
    assert_holds_saved_weights(loaded.lm, tmp_path / "out")  # the trained LM comes back
    greedy = cap.Decoding(max_new_tokens=8)
    assert loaded.generate(feats, greedy) == model.generate(feats, greedy)


def test_an_lm_folder_with_pickled_weights_only_is_refused(tmp_path):
    save_local_lm(tmp_path / "lm")
    weights = tmp_path / "lm" / "model.safetensors"
    weights.rename(tmp_path / "lm" / "pytorch_model.bin")  # what an old or hostile folder holds
    with pytest.raises(cap.CaptionerError, match="cannot load"):
        tiny_captioner(spec=str(tmp_path / "lm"))

"""The pipeline's CLIP text tower as a transformers CLIPTextModel: the same states, the
same tokens, and a generator that reads prompts through it saves and reloads."""

import json

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from recaption import paths
from recaption.models import clip as clip_lib
from recaption.models import clip_text
from recaption.models import generator as gen_lib
from recaption.models.generator_train import train_generator
from recaption.params import ParamsError, load_params
from recaption.stages import train_generator as stage
from test_clip_embed import TINY_ARCH
from test_generator import TINY, config, dataset

TEXTS = [
    "",
    "a photo of two red circles.",
    "A large blue star left of a small green cross, on a striped background.",
    "it's 3 yellow triangles;  in the  top-left cell!",
    "stop! no, go!!",
    "word " * 40,  # longer than the context: truncated to it, end-of-text kept
]


def tiny_clip(tmp_path, seed=0):
    arch = tmp_path / "tiny-clip.json"
    arch.write_text(json.dumps(TINY_ARCH))
    clip = clip_lib.create(str(arch), None, seed=seed)
    clip.model.eval()
    return clip


def open_clip_states(clip, ids):
    model = clip.model
    x = model.token_embedding(ids) + model.positional_embedding
    return model.ln_final(model.transformer(x, attn_mask=model.attn_mask))


def test_the_converted_tower_gives_open_clips_states_and_embeddings(tmp_path):
    clip = tiny_clip(tmp_path)
    encoder = clip_text.text_encoder(clip)
    ids = clip.tokenizer(TEXTS)
    with torch.no_grad():
        out = encoder(ids)
        torch.testing.assert_close(out.last_hidden_state, open_clip_states(clip, ids))
        pooled = out.pooler_output @ clip.model.text_projection
        torch.testing.assert_close(pooled, clip.model.encode_text(ids))
    other = clip_text.text_encoder(tiny_clip(tmp_path, seed=1))
    with torch.no_grad():
        assert not torch.allclose(other(ids).last_hidden_state, out.last_hidden_state)


def test_the_tokenizer_gives_open_clips_token_ids_then_pads_with_end_of_text():
    context = TINY_ARCH["text_cfg"]["context_length"]
    ours = clip_text.tokenizer(context)
    ids = ours(TEXTS, padding="max_length", truncation=True, max_length=context,
               return_tensors="pt").input_ids  # fmt: skip
    theirs = SimpleTokenizer(context_length=context)(TEXTS)
    end = theirs.argmax(dim=1, keepdim=True)  # end-of-text: the highest id
    after = torch.arange(context) > end
    assert torch.equal(ids[~after], theirs[~after])  # "!" included: not a pad token
    assert (ids[after] == theirs.max()).all()


def test_a_generator_reading_through_the_clip_tower_saves_and_reloads(tmp_path):
    clip = tiny_clip(tmp_path)
    encoder = clip_text.text_encoder(clip)
    tokenizer = clip_text.tokenizer(encoder.config.max_position_embeddings)
    pipe = gen_lib.create_builtin(TINY, tokenizer, 16, 0, text_encoder=encoder)
    assert pipe.fixed_length == TINY_ARCH["text_cfg"]["context_length"]  # padded, as SD's
    _, captions = dataset()
    with torch.no_grad():
        states = pipe.encode_prompts(captions[:3])
        ids = clip.tokenizer(captions[:3])
        upto_end = torch.arange(ids.shape[1]) <= ids.argmax(dim=1, keepdim=True)
        torch.testing.assert_close(states[upto_end], open_clip_states(clip, ids)[upto_end])
    pipe.save_pretrained(tmp_path / "gen")
    again = gen_lib.load(tmp_path / "gen")
    with torch.no_grad():
        torch.testing.assert_close(again.encode_prompts(captions[:3]), states)


def test_the_stage_reads_prompts_through_the_pipelines_clip_when_asked(project, tmp_path):
    clip = tiny_clip(tmp_path)
    clip_lib.save(clip, paths.CLIP)
    project.write_params(generator={"model": TINY, "text_encoder": "clip"})
    params = load_params()
    pipe = stage.start_pipeline(params, ["never read: the CLIP's own BPE is used"])
    _, captions = dataset()
    with torch.no_grad():
        ids = clip.tokenizer(captions[:2])
        upto_end = torch.arange(ids.shape[1]) <= ids.argmax(dim=1, keepdim=True)
        states = pipe.encode_prompts(captions[:2])
        torch.testing.assert_close(states[upto_end], open_clip_states(clip, ids)[upto_end])
    assert stage.recorded(params)["text_encoder"] == "clip"
    first = stage.checkpoint_dir(params, "captions-1", {}, clean=False)
    clip_lib.save(tiny_clip(tmp_path, seed=1), paths.CLIP)  # another CLIP, another run
    assert stage.checkpoint_dir(params, "captions-1", {}, clean=False) != first
    project.write_params(generator={"model": TINY})  # own: recorded as before the option
    assert "text_encoder" not in stage.recorded(load_params())


def test_a_frozen_clip_tower_stays_as_it_was_through_training(tmp_path):
    encoder = clip_text.text_encoder(tiny_clip(tmp_path))
    tokenizer = clip_text.tokenizer(encoder.config.max_position_embeddings)
    pipe = gen_lib.create_builtin(TINY, tokenizer, 16, 0, text_encoder=encoder)
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    images, captions = dataset()
    train_generator(pipe, images, lambda epoch: captions,
                    config(steps=4, train_text_encoder=False))  # fmt: skip
    after = pipe.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_clip_text_encoder_for_a_saved_pipeline_is_refused(project, tmp_path):
    project.write_params(generator={"model": str(tmp_path / "sd-folder"), "text_encoder": "clip"})
    with pytest.raises(ParamsError, match="text_encoder: clip"):
        load_params()

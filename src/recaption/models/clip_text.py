"""An open_clip text tower as a transformers `CLIPTextModel` and `CLIPTokenizer`.

Stable Diffusion reads prompts through a frozen CLIP text encoder: a tower that learnt,
contrastively, what the words of a caption say about an image. The built-in generator
can do the same with the pipeline's own CLIP (`models/clip`, trained on the world's
captions): this converts that tower's weights, one to one, into the classes a diffusers
pipeline saves and loads, and writes the BPE tokenizer it was trained with as the
vocab.json and merges.txt a `CLIPTokenizer` reads. No download: the BPE ships with
open_clip.

open_clip's text transformer is the original CLIP's (pre-norm blocks, causal mask,
a final LayerNorm, the pooled state at the end-of-text token, then a projection);
transformers' `CLIPTextModel` is the same network with the attention's input
projection split into q, k and v, so the conversion is a renaming and that split.
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from recaption.models.clip import Clip, ClipError

# transformers' names for the tokens open_clip calls <start_of_text> and <end_of_text>
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def text_config(clip: Clip) -> CLIPTextConfig:
    """The `CLIPTextConfig` of `clip`'s text tower."""
    model = clip.model
    if not isinstance(model, open_clip.CLIP) or not hasattr(model, "transformer"):
        raise ClipError("only an open_clip CLIP with a built-in text transformer converts")
    if getattr(model, "text_pool_type", "argmax") != "argmax":
        raise ClipError(f"text pooling {model.text_pool_type!r} does not convert (argmax only)")
    blocks = model.transformer.resblocks
    first = blocks[0]
    act = first.mlp.gelu
    if not isinstance(act, torch.nn.GELU) and type(act).__name__ != "QuickGELU":
        raise ClipError(f"text activation {type(act).__name__} does not convert")
    if any(not isinstance(b.ls_1, torch.nn.Identity) for b in blocks):
        raise ClipError("text towers with layer scale do not convert")
    width = model.token_embedding.embedding_dim
    start, end = SimpleTokenizer().all_special_ids[:2]  # the BPE is read once
    return CLIPTextConfig(
        vocab_size=model.vocab_size,
        hidden_size=width,
        intermediate_size=first.mlp.c_fc.out_features,
        projection_dim=model.text_projection.shape[1],
        num_hidden_layers=len(blocks),
        num_attention_heads=first.attn.num_heads,
        max_position_embeddings=model.context_length,
        hidden_act="quick_gelu" if type(act).__name__ == "QuickGELU" else "gelu",
        layer_norm_eps=first.ln_1.eps,
        pad_token_id=end,
        bos_token_id=start,
        eos_token_id=end,
    )


def text_encoder(clip: Clip) -> CLIPTextModel:
    """`clip`'s text tower as a `CLIPTextModel` (fp32, eval mode): its last_hidden_state
    is open_clip's `ln_final(transformer(x))`, token for token."""
    config = text_config(clip)
    model = clip.model
    state = {
        "embeddings.token_embedding.weight": model.token_embedding.weight,
        "embeddings.position_embedding.weight": model.positional_embedding,
        "final_layer_norm.weight": model.ln_final.weight,
        "final_layer_norm.bias": model.ln_final.bias,
    }
    for i, block in enumerate(model.transformer.resblocks):
        ours = f"encoder.layers.{i}."
        for name, part in zip("qkv", block.attn.in_proj_weight.chunk(3), strict=True):
            state[f"{ours}self_attn.{name}_proj.weight"] = part
        for name, part in zip("qkv", block.attn.in_proj_bias.chunk(3), strict=True):
            state[f"{ours}self_attn.{name}_proj.bias"] = part
        pairs = {
            "self_attn.out_proj": block.attn.out_proj,
            "layer_norm1": block.ln_1,
            "layer_norm2": block.ln_2,
            "mlp.fc1": block.mlp.c_fc,
            "mlp.fc2": block.mlp.c_proj,
        }
        for name, module in pairs.items():
            state[f"{ours}{name}.weight"] = module.weight
            state[f"{ours}{name}.bias"] = module.bias
    encoder = CLIPTextModel(config)
    # transformers 5 names the weights without a "text_model." prefix; older ones with it
    key = next(k for k in encoder.state_dict() if k.endswith("embeddings.token_embedding.weight"))
    prefix = key.removesuffix("embeddings.token_embedding.weight")
    missing, unexpected = encoder.load_state_dict(
        {prefix + k: v.detach().float().clone() for k, v in state.items()}, strict=False
    )
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ClipError(f"text tower conversion left {missing or unexpected} unmatched")
    return encoder.eval()


def tokenizer(context_length: int) -> CLIPTokenizer:
    """open_clip's BPE as a `CLIPTokenizer` (the pipeline's `save_pretrained` writes its
    files): open_clip's token ids up to the end-of-text token, then padded with it to
    `context_length`, as Stable Diffusion 1's tokenizer pads. (open_clip pads with id 0,
    "!"; as a tokenizer's pad token, "!" would also swallow every "!" of a prompt. The
    causal tower's states up to end-of-text do not depend on what follows.)"""
    bpe = SimpleTokenizer()
    renamed = {"<start_of_text>": BOS, "<end_of_text>": EOS}
    vocab = {renamed.get(token, token): i for token, i in bpe.encoder.items()}
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    return CLIPTokenizer(
        vocab=vocab, merges=merges, model_max_length=context_length,
        bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
    )  # fmt: skip

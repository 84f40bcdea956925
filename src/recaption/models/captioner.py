"""The image captioner: a causal LM conditioned on a CLIP image embedding.

A small mapping network turns the cached embedding F(i) into prefix vectors that
sit before the caption's token embeddings, so the LM models
P(t_j | t_<j; F(i)) and is trained with the usual next-token loss on the caption
tokens only (ClipCap-style prefix conditioning).

    pooled (B, D)        --MLP-->            (B, prefix_length, d)
    grid cells (B, G*G, C) --Linear + cell position--> (B, G*G, d)
    prefix = both, side by side              (B, prefix_length + G*G, d)

The LM is any transformers causal LM: the built-in one is a small GPT-2 built from
a config JSON with a tokenizer trained on the pipeline's captions; a real one is
a model id or a local `save_pretrained` folder with its own tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
)

from recaption import io, precision
from recaption.errors import UserError
from recaption.models.tokenizer import train_tokenizer

MAPPER_WEIGHTS = "mapper.safetensors"
MAPPER_CONFIG = "mapper.json"


class CaptionerError(UserError):
    """A captioner folder or LM spec that cannot be used; the message says why."""


@dataclass(frozen=True)
class MapperConfig:
    pooled_dim: int  # D: CLIP's pooled embedding
    grid_cells: int  # G*G (0: no grid)
    cell_dim: int  # C: one grid cell's feature size
    d_model: int  # the LM's hidden size
    prefix_length: int  # vectors made from the pooled embedding
    hidden: int  # the MLP's hidden width

    @property
    def in_dim(self) -> int:
        return self.pooled_dim + self.grid_cells * self.cell_dim

    @property
    def tokens(self) -> int:
        return self.prefix_length + self.grid_cells


class PrefixMapper(nn.Module):
    """Cached embedding features (B, D + G*G*C) -> prefix vectors (B, P + G*G, d)."""

    def __init__(self, config: MapperConfig):
        super().__init__()
        self.config = config
        c = config
        self.pooled = nn.Sequential(
            nn.Linear(c.pooled_dim, c.hidden),
            nn.Tanh(),
            nn.Linear(c.hidden, c.prefix_length * c.d_model),
        )
        if c.grid_cells:
            self.cell = nn.Linear(c.cell_dim, c.d_model)
            # Which cell a vector came from: the layout the captioner must put into words.
            self.cell_position = nn.Parameter(torch.randn(c.grid_cells, c.d_model) * 0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        c = self.config
        if features.shape[1] != c.in_dim:
            raise ValueError(
                f"features have {features.shape[1]} columns, the mapper takes {c.in_dim}"
            )
        b = features.shape[0]
        pooled, grid = features.split([c.pooled_dim, c.grid_cells * c.cell_dim], dim=1)
        prefix = self.pooled(pooled).view(b, c.prefix_length, c.d_model)  # (B, P, d)
        if c.grid_cells:
            cells = self.cell(grid.reshape(b, c.grid_cells, c.cell_dim)) + self.cell_position
            prefix = torch.cat([prefix, cells], dim=1)  # (B, P + G*G, d)
        return prefix


@dataclass(frozen=True)
class Decoding:
    """How captions are decoded: greedy, beam search, or nucleus sampling."""

    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    max_new_tokens: int = 32
    num_beams: int = 3
    top_p: float = 0.9
    temperature: float = 1.0

    def generation_config(self, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
        sample = self.strategy == "sample"
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=sample,
            num_beams=self.num_beams if self.strategy == "beam" else 1,
            top_p=self.top_p if sample else None,
            top_k=0 if sample else None,
            temperature=self.temperature if sample else None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )


class Captioner(nn.Module):
    """A causal LM, its tokenizer and the prefix mapper, trained and saved together."""

    def __init__(self, lm: nn.Module, tokenizer: PreTrainedTokenizerBase, mapper: PrefixMapper):
        super().__init__()
        self.lm, self.tokenizer, self.mapper = lm, tokenizer, mapper

    @property
    def prefix_tokens(self) -> int:
        """Vectors the image puts before the caption."""
        return self.mapper.config.tokens

    @property
    def max_caption_tokens(self) -> int | None:
        """Caption tokens that fit in the LM's context after the prefix (None: no limit)."""
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        return None if limit is None else limit - self.prefix_tokens

    def check_length(self, tokens: int, key: str) -> None:
        """Refuse a caption length the LM's position table cannot hold."""
        room = self.max_caption_tokens
        if room is not None and tokens > room:
            raise CaptionerError(
                f"{key} = {tokens}, but the LM's context holds {room} caption tokens after "
                f"the {self.prefix_tokens} prefix vectors; lower it or use a larger LM"
            )

    def trainable(self, train_lm: bool) -> dict[str, nn.Parameter]:
        """The parameters a training stage updates, by name: the mapper's, and the LM's
        when `train_lm` (the others are frozen)."""
        for p in self.lm.parameters():
            p.requires_grad_(train_lm)
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def tokenize(self, captions: Sequence[str], max_tokens: int) -> list[list[int]]:
        """Token ids of each caption, EOS appended (it teaches the model to stop),
        truncated to `max_tokens` in all."""
        self.check_length(max_tokens, "max_tokens")
        ids = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        return [seq[: max_tokens - 1] + [self.tokenizer.eos_token_id] for seq in ids]

    def pad(self, sequences: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids (B, T) and their attention mask (B, T)."""
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """The vectors before the caption: cached features (B, F) -> (B, P, d)."""
        return self.mapper(features.float())

    def loss(self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss over the caption tokens (the prefix is never a target)."""
        prefix = self.prefix(features)  # (B, P, d)
        b, p = prefix.shape[:2]
        embeds = torch.cat([prefix, self.lm.get_input_embeddings()(ids)], dim=1)  # (B, P+T, d)
        ones = torch.ones((b, p), dtype=mask.dtype, device=mask.device)
        labels = torch.cat([torch.full_like(ones, -100), ids.masked_fill(mask == 0, -100)], dim=1)
        out = self.lm(
            inputs_embeds=embeds, attention_mask=torch.cat([ones, mask], 1), labels=labels
        )
        return out.loss

    @torch.inference_mode()
    def generate(
        self, features: torch.Tensor, decoding: Decoding, seed: int | None = None
    ) -> list[str]:
        """Captions for a batch of features, decoded with the LM's KV cache.

        With sampling, `seed` fixes the draw (the global RNG is left as it was).
        """
        self.check_length(decoding.max_new_tokens, "max_new_tokens")
        prefix = self.prefix(features)  # (B, P, d)
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        config = decoding.generation_config(self.tokenizer)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            ids = self.lm.generate(
                inputs_embeds=prefix, attention_mask=mask, generation_config=config
            )
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def save(self, folder: str | Path) -> None:
        """A `save_pretrained` folder (safetensors) plus the mapper's weights and config."""
        folder = Path(folder)
        self.lm.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        save_file(self.mapper.state_dict(), folder / MAPPER_WEIGHTS)
        io.write_json(folder / MAPPER_CONFIG, asdict(self.mapper.config))


def load(folder: str | Path, dtype: torch.dtype = torch.float32) -> Captioner:
    """A captioner saved by `Captioner.save`, its weights in `dtype` (for decoding only:
    `precision.weights_dtype`); weights are read from safetensors only."""
    folder = Path(folder)
    for name in (MAPPER_CONFIG, MAPPER_WEIGHTS):
        if not (folder / name).is_file():
            raise CaptionerError(f"{folder} is not a captioner folder: {name} is missing")
    lm = AutoModelForCausalLM.from_pretrained(
        folder, use_safetensors=True, **precision.load_kwargs(dtype)
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    mapper = PrefixMapper(MapperConfig(**json.loads((folder / MAPPER_CONFIG).read_text())))
    mapper.load_state_dict(load_file(folder / MAPPER_WEIGHTS))
    return Captioner(lm, tokenizer, mapper.to(dtype))


def create_lm(
    spec: str, texts: Sequence[str], vocab_size: int, seed: int
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The LM and tokenizer `captioner.lm` names.

    Args:
        spec: a GPT-2 config JSON (built-in: fresh weights, tokenizer trained on
            `texts`), a local `save_pretrained` folder, or a model id.
        texts: the captions a built-in tokenizer is trained on.
        vocab_size: the built-in tokenizer's target vocabulary size.
        seed: initialises fresh weights.
    """
    path = Path(spec)
    if path.suffix == ".json":
        if not path.is_file():
            raise CaptionerError(f"captioner.lm: {spec} does not exist")
        tokenizer = train_tokenizer(texts, vocab_size)
        fields = json.loads(path.read_text())
        fields.pop("model_type", None)
        config = GPT2Config(
            **fields,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config), tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
        lm = AutoModelForCausalLM.from_pretrained(spec, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise CaptionerError(f"captioner.lm: cannot load {spec!r}: {err}") from err
    return lm, ready_tokenizer(tokenizer, spec)


def ready_tokenizer(tokenizer: PreTrainedTokenizerBase, spec: str) -> PreTrainedTokenizerBase:
    """A pretrained LM's tokenizer, checked to end captions (EOS) and made to pad."""
    if tokenizer.eos_token_id is None:
        raise CaptionerError(f"captioner.lm: the tokenizer of {spec!r} has no EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of the loss anyway
    return tokenizer


def create(
    spec: str,
    texts: Sequence[str],
    vocab_size: int,
    features: tuple[int, int, int],
    prefix_length: int,
    hidden: int,
    seed: int,
) -> Captioner:
    """A new captioner: the LM `spec` names and a freshly initialised mapper.

    `features` is (pooled_dim, grid_cells, cell_dim) of the cached embeddings.
    """
    lm, tokenizer = create_lm(spec, texts, vocab_size, seed)
    d_model = lm.get_input_embeddings().embedding_dim
    torch.manual_seed(seed + 1)
    mapper = PrefixMapper(MapperConfig(*features, d_model, prefix_length, hidden))
    return Captioner(lm, tokenizer, mapper)


def fingerprint(folder: str | Path) -> str:
    """Content hash of a captioner folder: names a caption version's captioner."""
    return io.tree_hash(folder)

"""Upsampling: a language model rewrites short text as one long descriptive caption.

A generator trained on descriptive captions follows descriptive prompts best, so the
method rewrites short prompts (and captions) before they reach it. Two kinds of LM:

- built-in: a small GPT-2 trained here on text pairs (short -> descriptive, ground
  truth -> descriptive). It reads `source <bos> target <eos>`; only the target is a
  training target.
- real: any transformers instruction-tuned causal LM (a model id or a local folder),
  told what to do by `INSTRUCTION` (after the study's appendix: one descriptive
  caption, every stated detail kept, plausible detail added) through the
  tokenizer's chat template, or a plain prompt when it has none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jinja2.exceptions import TemplateError
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from recaption.models.captioner import CaptionerError, Decoding, create_lm
from recaption.models.schedule import OptimConfig
from recaption.models.training import Checkpoints, LogStep, Micro, epoch_batch, fit
from recaption.parallel import Parallel

log = logging.getLogger(__name__)

CONFIG_NAME = "upsampler.json"
INSTRUCTION = (
    "You rewrite short image captions and prompts into descriptive ones. Reply with one "
    "descriptive caption of the image, in one paragraph and nothing else. Keep every "
    "detail the text states: each object with its colour, count and position, any "
    "written text, and the background. Add plausible detail about the main subject, "
    "what surrounds it, the background, the colours and the style, but never anything "
    "that contradicts what the text states."
)


DEFAULT_DECODING = Decoding(max_new_tokens=80)  # greedy


class Upsampler:
    """A causal LM and its tokenizer, and how a source text becomes its prompt."""

    def __init__(
        self,
        lm: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        builtin: bool,
        instruction: str = INSTRUCTION,
        max_source_tokens: int = 40,
        decoding: Decoding = DEFAULT_DECODING,
    ):
        self.lm, self.tokenizer = lm, tokenizer
        self.builtin, self.instruction = builtin, instruction
        self.max_source_tokens = max_source_tokens  # built-in: longer sources are truncated
        self.decoding = decoding  # how `rewrite` decodes unless told otherwise; saved with it

    def instructed(self, instruction: str) -> Upsampler:
        """The same LM told another task (an instruction LM's system message); shares the
        weights, so one loaded LM serves several instructions."""
        return Upsampler(self.lm, self.tokenizer, self.builtin, instruction,
                         self.max_source_tokens, self.decoding)  # fmt: skip

    def check_length(self, rewrite_tokens: int, key: str) -> None:
        """Refuse a built-in source + rewrite length the LM's position table cannot hold."""
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        needed = self.max_source_tokens + 1 + rewrite_tokens
        if self.builtin and limit is not None and needed > limit:
            raise CaptionerError(
                f"{key} = {rewrite_tokens}: with upsample.max_source_tokens = "
                f"{self.max_source_tokens} that is {needed} positions, but the LM holds {limit}"
            )

    def prompt_ids(self, text: str) -> list[int]:
        """The token ids the LM continues with the rewritten text."""
        tok = self.tokenizer
        if self.builtin:
            source = tok(text, add_special_tokens=False)["input_ids"][: self.max_source_tokens]
            return source + [tok.bos_token_id]
        if tok.chat_template:
            messages = [
                {"role": "system", "content": self.instruction},
                {"role": "user", "content": text},
            ]
            try:
                return _chat_ids(tok, messages)
            except TemplateError:  # templates without a system role (Gemma, Mistral)
                merged = [{"role": "user", "content": f"{self.instruction}\n\n{text}"}]
                return _chat_ids(tok, merged)
        plain = f"{self.instruction}\n\nShort caption: {text}\nDescriptive caption:"
        return tok(plain)["input_ids"]

    @torch.inference_mode()
    def rewrite(
        self,
        texts: Sequence[str],
        decoding: Decoding | None = None,
        batch_size: int = 64,
        seed: int = 0,
        desc: str | None = None,
    ) -> list[str]:
        """The rewritten texts, in order; batches are left-padded so every row ends where
        generation starts. With sampling, `seed` fixes each batch's draw. Runs where the
        LM is (`self.lm.to(device)`)."""
        decoding = decoding or self.decoding
        self.check_length(decoding.max_new_tokens, "max_new_tokens")
        out: list[str] = []
        config = decoding.generation_config(self.tokenizer)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None):
            prompts = [self.prompt_ids(t) for t in texts[start : start + batch_size]]
            ids, mask = pad(prompts, self.tokenizer.pad_token_id, left=True)
            ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
            on_gpu = [self.lm.device] if self.lm.device.type == "cuda" else []
            with torch.random.fork_rng(devices=on_gpu):
                torch.manual_seed(seed + start)
                new = self.lm.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            texts_out = self.tokenizer.batch_decode(
                new[:, ids.shape[1] :], skip_special_tokens=True
            )
            out += [one_line(t) for t in texts_out]
        return out

    def save(self, folder: str | Path) -> None:
        """A `save_pretrained` folder (safetensors) plus how prompts are built."""
        folder = Path(folder)
        self.lm.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        config = {
            "builtin": self.builtin,
            "instruction": self.instruction,
            "max_source_tokens": self.max_source_tokens,
            "decoding": asdict(self.decoding),
        }
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def one_line(text: str) -> str:
    """The first non-empty line, whitespace runs made one space (a chat LM may go on)."""
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    return next((line for line in lines if line), "")


def pad(sequences: Sequence[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, ...]:
    """Padded ids (B, T) and attention mask (B, T); left padding for generation."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def create(
    spec: str,
    texts: Sequence[str],
    vocab_size: int,
    seed: int,
    max_source_tokens: int = 40,
    decoding: Decoding = DEFAULT_DECODING,
    key: str = "upsample.lm",
) -> Upsampler:
    """The upsampler `upsample.lm` (or the params key `key`) names.

    Args:
        spec: a GPT-2 config JSON (built-in: fresh weights, tokenizer trained on
            `texts`, to be trained with `train`), a local folder or a model id (used
            as it is, through `INSTRUCTION` unless `instructed` otherwise).
    """
    try:
        lm, tokenizer = create_lm(spec, texts, vocab_size, seed)
    except CaptionerError as err:
        raise CaptionerError(str(err).replace("captioner.lm", key)) from err
    builtin = Path(spec).suffix == ".json"
    return Upsampler(lm, tokenizer, builtin, INSTRUCTION, max_source_tokens, decoding)


def load(folder: str | Path) -> Upsampler:
    """An upsampler saved by `Upsampler.save`; weights are read from safetensors only."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise CaptionerError(f"{folder} is not an upsampler folder: {CONFIG_NAME} is missing")
    config = json.loads((folder / CONFIG_NAME).read_text())
    lm = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Upsampler(
        lm.eval(),
        tokenizer,
        config["builtin"],
        config["instruction"],
        config["max_source_tokens"],
        Decoding(**config["decoding"]),
    )


@dataclass(frozen=True)
class UpsampleTrainConfig(OptimConfig):
    max_tokens: int  # of the target (the source is cut at the upsampler's own limit)
    precision: str  # resolved: fp32 | bf16 (recaption.precision)
    seed: int


def training_ids(up: Upsampler, pairs: Sequence[tuple[str, str]], max_tokens: int) -> list:
    """(ids, labels) of each pair: `source <bos> target <eos>`, labels -100 but the target."""
    tok = up.tokenizer
    out = []
    for source, target in pairs:
        src = up.prompt_ids(source)[:-1]
        tgt = tok(target, add_special_tokens=False)["input_ids"][: max_tokens - 1]
        ids = src + [tok.bos_token_id] + tgt + [tok.eos_token_id]  # as prompt_ids + target
        out.append((ids, [-100] * (len(src) + 1) + tgt + [tok.eos_token_id]))
    return out


def train(
    up: Upsampler,
    pairs: Sequence[tuple[str, str]],
    config: UpsampleTrainConfig,
    log_step: LogStep | None = None,
    par: Parallel | None = None,
    checkpoints: Checkpoints | None = None,
) -> dict:
    """Train a built-in upsampler on (source, target) pairs; step s's batch is a slice of
    an epoch's seeded permutation, so a run resumed from `checkpoints` ends where an
    uninterrupted one does. Returns {"loss": last 50 steps, "steps", "pairs"}."""
    up.check_length(config.max_tokens, "max_tokens")
    par = par or Parallel()
    data = training_ids(up, pairs, config.max_tokens)
    lm = par.wrap(up.lm.to(par.device))

    def step_loss(step: int, gen: torch.Generator, micro: Micro) -> torch.Tensor:
        picked = epoch_batch(len(data), config.batch_size, step, config.seed)
        mine = [picked[i] for i in micro.take(par.share(range(len(picked)), "upsample.batch_size"))]
        ids, mask = pad([data[i][0] for i in mine], up.tokenizer.pad_token_id, left=False)
        labels, _ = pad([data[i][1] for i in mine], -100, left=False)
        ids, mask, labels = ids.to(par.device), mask.to(par.device), labels.to(par.device)
        return lm(input_ids=ids, attention_mask=mask, labels=labels).loss

    named = {n: p for n, p in up.lm.named_parameters() if p.requires_grad}
    up.lm.train()
    result = fit(named, step_loss, config, seed=config.seed, compute=config.precision, par=par,
                 checkpoints=checkpoints, log_step=log_step, desc="upsampler")  # fmt: skip
    up.lm.eval()
    return {"loss": result.metrics["loss"], "steps": config.steps, "pairs": len(data)}

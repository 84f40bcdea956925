"""A byte-level BPE tokenizer trained on the pipeline's own captions.

The built-in captioner has no pretrained vocabulary to inherit: its tokenizer is
trained here with the `tokenizers` library and saved as a transformers fast
tokenizer, so the captioner folder loads like any other `save_pretrained` one.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, wrap: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (deterministic for the same texts in the same order).

    Without `wrap` no special token is added on encoding: the captioner appends EOS
    itself, the same way for this tokenizer and for a pretrained LM's own. With
    `wrap`, every text is encoded as BOS ... EOS, as CLIP's tokenizer does for a text
    encoder (so even the empty caption has tokens).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if wrap:
        ids = [(t, tok.token_to_id(t)) for t in (BOS, EOS)]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=ids
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS
    )

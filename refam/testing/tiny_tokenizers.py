"""Decoder-LLM tokenizers built offline: a byte-level BPE trained in-process on the tiny vocabulary.

The real tokenizer class keeps its own pre-tokenizer, normaliser and decoder (Qwen2's split regex,
byte-level bytes); only the merges are learnt, here, from `refam.testing.tiny_flux.tiny_vocabulary()`
words and a pipeline's prompt template, so that each such word is one token at a line start and
after a space, as common words are in the real vocabularies. Other text still encodes (byte-level
BPE has no unknown token), in several pieces. The special tokens a pipeline's template names are
added as the real tokenizer has them, so `pipe.encode_prompt(...)` runs unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from refam.testing.tiny_flux import tiny_vocabulary

# Qwen2.5-VL's added tokens in their real order (ids 151643...; here 0...): end of text, chat turns, vision
QWEN2_5_VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)


def train_byte_level_bpe(base, texts: Sequence[str] = (), special_tokens: Sequence[str] = (),
                         words: Sequence[str] | None = None):
    """A tokenizer of `base`'s class and pipeline, its BPE trained on `words` (default: the tiny
    vocabulary) and `texts` (a prompt template, its special tokens removed), every merge kept so
    each word and each template word becomes one token. `special_tokens` are added in order."""
    words = list(words) if words is not None else tiny_vocabulary()
    text = [" ".join(words), "\n".join(words), *texts]
    return base.train_new_from_iterator(
        [text], vocab_size=100_000, new_special_tokens=list(special_tokens), min_frequency=1, show_progress=False
    )


def build_qwen2_tokenizer(template: str = "", words: Sequence[str] | None = None):
    """A `Qwen2Tokenizer` as Qwen2.5-VL's (eos <|im_end|>, pad <|endoftext|>, no BOS, right padding),
    with `template`'s words (its chat tokens removed) each one token."""
    from transformers import Qwen2Tokenizer

    plain = template.replace("{}", " ")
    for token in QWEN2_5_VL_SPECIAL_TOKENS:
        plain = plain.replace(token, "\n")
    tokenizer = train_byte_level_bpe(Qwen2Tokenizer(), [plain], QWEN2_5_VL_SPECIAL_TOKENS, words)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.model_max_length = 131072
    return tokenizer


# GLM-4's added tokens in their real order (ids 151329...; here 0...): end of text, masks, chat roles
GLM4_SPECIAL_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|observation|>",
)


def build_glm4_tokenizer(words: Sequence[str] | None = None):
    """A tokenizer as GLM-4's (CogView4's text encoder's): a byte-level BPE whose post-processor puts
    "[gMASK]<sop>" before every text (`add_special_tokens`), pad <|endoftext|>, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    base = TokenizersBackend(tokenizer_object=backend, padding_side="left", model_max_length=131072)
    tokenizer = train_byte_level_bpe(base, [" _ ; . , -"], GLM4_SPECIAL_TOKENS, words)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("[gMASK]", "<sop>")}
    tokenizer.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B", special_tokens=list(ids.items())),
    ])
    tokenizer.pad_token, tokenizer.eos_token = "<|endoftext|>", "<|endoftext|>"
    return tokenizer


# Llama 3's pre-tokenizer split (its tokenizer.json), and its added tokens in their real order (ids 128000...;
# here 0...; the reserved ones left out)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def build_llama3_tokenizer(texts: Sequence[str] = (), pad_token: str = "<|end_of_text|>", words: Sequence[str] | None = None):
    """A tokenizer as Llama 3's (HunyuanVideo's and HiDream's LLM's): a byte-level BPE behind Llama 3's split,
    its post-processor putting <|begin_of_text|> before every text, right padding with `pad_token` (added as a
    special token where it is none of Llama 3's, as LLaVA-Llama-3 adds "<pad>"), with `texts` (a prompt
    template, its special tokens removed) each word one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    base = TokenizersBackend(tokenizer_object=backend, padding_side="right", model_max_length=131072)
    plain = list(texts)
    for token in LLAMA3_SPECIAL_TOKENS:
        plain = [text.replace(token, "\n").replace("{}", " ") for text in plain]
    special = LLAMA3_SPECIAL_TOKENS + (() if pad_token in LLAMA3_SPECIAL_TOKENS else (pad_token,))
    tokenizer = train_byte_level_bpe(base, [*plain, " _ ; . , -"], special, words)
    bos = "<|begin_of_text|>"
    tokenizer.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                      special_tokens=[(bos, tokenizer.convert_tokens_to_ids(bos))]),
    ])
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = bos, "<|eot_id|>", pad_token
    return tokenizer

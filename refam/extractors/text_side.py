"""Text modules that mix tokens before the blocks: the helpers of the template's `text_side` hook.

Some transformers run the caption through text-side modules of their own before the blocks, and those
modules mix its tokens: HunyuanVideo's token refiner (self-attention under the caption's mask, a masked
mean as its pooled vector), Z-Image's and Lumina 2's context refiner. Expressions joined to the
transformer's text input would be mixed into the caption there (and, in Z-Image, move the image's
positions), so such a backbone prepares the branch's rows outside the forward and joins them later:

- `each_alone`, inside its `text_side(expressions, sigma)`: each expression's real rows through the
  text-side modules on their own, as the model runs a caption of those tokens;
- `rows_joined`, inside its `denoise`: the prepared rows join the stream where the blocks begin, the
  blocks' per-token arguments (a mask, rotary rows) grow alike, and a single-stream model's output
  layer gets its own stream back.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch

from refam.text.reader import EncodedExpressions


def each_alone(expressions: EncodedExpressions, run: Callable[[torch.Tensor], torch.Tensor]) -> EncodedExpressions:
    """The K expressions with each one's real rows [1, n, D] replaced by `run` of them alone ([1, n, D'], the
    model's text-side modules run as on a caption of n tokens); padding rows are zeros."""
    rows = []
    for embeds, valid in zip(expressions.embeds, expressions.valid.to(expressions.embeds.device)):
        out = run(embeds[valid][None])[0]
        padded = out.new_zeros(valid.shape[0], out.shape[-1])
        padded[valid] = out
        rows.append(padded)
    return replace(expressions, embeds=torch.stack(rows))


@contextmanager
def rows_joined(blocks: Sequence[torch.nn.Module], expressions: EncodedExpressions, stream: str | None,
                first: bool = False, alongside: Mapping[str, torch.Tensor] | None = None,
                exit_module: torch.nn.Module | None = None, token_dims: Mapping[str, int] | None = None) -> Iterator[None]:
    """While open, the first of `blocks` (a denoiser's blocks, in order) receives the prepared rows of the K
    expressions (`text_side`'s), [1, R = K L, D], joined to its argument `stream` (named as in the block's
    `forward`), before the rows there (`first`) or after them; `stream` None: no argument carries the rows from
    block to block (Kandinsky 6 hands every block the refined text afresh, named in `alongside`). Every block
    receives each argument named in `alongside` that is set ([1, S, ...]) with that tensor [1, R, ...] joined
    alike: the rows themselves, True over them in an attention mask the stock code builds a block's mask from
    (the kernels' key bias decides what the rows see and who sees them), their rotary rows. An argument runs
    over tokens in dimension 1 unless `token_dims` names another (a key mask [B, 1, 1, S], which the Hunyuan
    transformers build over [image | caption]: -1). `exit_module` (where a single-stream model's stream leaves
    the blocks) receives its first argument without the rows; a dual-stream model's text stream ends in the
    blocks."""
    def join(main: torch.Tensor, extra: torch.Tensor, dim: int = 1) -> torch.Tensor:
        extra = extra.to(main.device, main.dtype)
        return torch.cat([extra, main] if first else [main, extra], dim=dim)

    rows = expressions.embeds.flatten(0, 1)[None]
    signature = inspect.signature(blocks[0].forward)
    alongside = dict(alongside or {})

    def enter(module, args, kwargs):
        bound = signature.bind(*args, **kwargs)
        if module is blocks[0] and stream is not None:
            bound.arguments[stream] = join(bound.arguments[stream], rows)
        for name, extra in alongside.items():
            if bound.arguments.get(name) is not None:
                bound.arguments[name] = join(bound.arguments[name], extra, (token_dims or {}).get(name, 1))
        return bound.args, bound.kwargs

    def leave(module, args):
        main = args[0][:, rows.shape[1]:] if first else args[0][:, : args[0].shape[1] - rows.shape[1]]
        return (main, *args[1:])

    handles = [block.register_forward_pre_hook(enter, with_kwargs=True) for block in blocks]
    if exit_module is not None:
        handles.append(exit_module.register_forward_pre_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

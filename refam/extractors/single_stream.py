"""Single-stream DiTs that refine their text before the blocks and build the joint stream inside the forward
(Lumina 2, Z-Image): the branch's rows are prepared through the text side alone, then ride in the stream.

Such a model embeds the caption, mixes its tokens among themselves in a context refiner, joins it to the
image inside its forward and runs one stream through its blocks. Joining the expressions to the caption at
the input would mix them with it in the refiner (and, in Z-Image, move the image's positions), so:

- `each_alone` runs each expression's real rows through the text-side modules on their own, as the model
  runs a caption of those tokens (the template's `text_side` hook);
- `riding` joins the prepared rows to the hidden stream at the first block, joins their rotary rows to
  every block's rotary argument, and takes the rows out before the output layer, so the stock forward
  sees its own stream everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
def riding(blocks: Sequence[torch.nn.Module], exit_module: torch.nn.Module, rows: torch.Tensor, rotary: torch.Tensor,
           first: bool) -> Iterator[None]:
    """While inside: `rows` [1, K L, D] join the hidden stream (the first positional argument) of the first
    of `blocks`, before it (`first`) or after it; every block's rotary argument (the third positional one,
    [1, S, ...]) gets `rotary` [1, K L, ...] joined alike; `exit_module` receives the stream without them."""
    join = (lambda main, extra: torch.cat([extra, main], dim=1)) if first else (lambda main, extra: torch.cat([main, extra], dim=1))
    branch_len = rows.shape[1]

    def enter(module, args):
        stream = join(args[0], rows.to(args[0].dtype)) if module is blocks[0] else args[0]
        return (stream, args[1], join(args[2], rotary.to(args[2].dtype)), *args[3:])

    def leave(module, args):
        stream = args[0][:, branch_len:] if first else args[0][:, :-branch_len]
        return (stream, *args[1:])

    handles = [block.register_forward_pre_hook(enter) for block in blocks]
    handles.append(exit_module.register_forward_pre_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

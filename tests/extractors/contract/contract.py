"""The backbone contract: what every extractor on the template must satisfy, and what it needs to know.

A backbone is described by a `ContractEntry` (refam's own are in tests/extractors/contract/
entry_<name>.py, one file per family, its variants beside it; `load_entries` finds them). Everything an entry says about the
STOCK model (how its pipeline calls the transformer, how block 0's queries and keys come out of the
stock modules and the stock RoPE) is written from the diffusers pipeline and processor, never from
refam's extractor, so the contract catches the extractor disagreeing with the model it observes.
The invariants (docs/backbones.md, "Two attention kinds, two kernels") are checked by tests/extractors/contract/
test_contract.py with the helpers here; a new backbone's author runs the same suite on theirs.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch



class StopForward(Exception):
    """Raised by a pre-hook once it has what it needs: the rest of the forward is not run."""


def block_inputs(module: torch.nn.Module, run: Callable[[], Any]) -> dict:
    """The keyword (and positional, as "args") inputs `module` receives during `run()`, which stops there."""
    seen: dict = {}

    def hook(_module, args, kwargs):
        seen.update(kwargs, args=args)
        raise StopForward

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    except StopForward:
        pass
    finally:
        handle.remove()
    return seen


class IdentityRope(torch.nn.Module):
    """A rotary module giving every token the identity rotation (cos 1, sin 0) as (cos, sin) [N, head_dim];
    `tokens` counts the tokens of its input (by default ids [N, axes], a FLUX-style `pos_embed`'s)."""

    def __init__(self, head_dim: int, tokens: Callable[[torch.Tensor], int] = lambda ids: ids.shape[0]) -> None:
        super().__init__()
        self.head_dim, self.tokens = head_dim, tokens

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones(self.tokens(x), self.head_dim), torch.zeros(self.tokens(x), self.head_dim)


def rope_off(transformer, monkeypatch) -> None:
    """`positions_off` for FLUX-style transformers, whose `pos_embed(ids)` returns (cos, sin)."""
    monkeypatch.setattr(transformer, "pos_embed", IdentityRope(transformer.config.attention_head_dim))


def latent_rope_off(transformer, monkeypatch, cells: int = 1) -> None:
    """`positions_off` for transformers whose `rope(latent)` returns (cos, sin) for its tokens of `cells` latent
    cells each (HunyuanVideo, HunyuanImage, CogView4)."""
    tokens = lambda latent: latent.shape[2:].numel() // cells  # noqa: E731
    monkeypatch.setattr(transformer, "rope", IdentityRope(transformer.config.attention_head_dim, tokens))


@dataclass(frozen=True)
class ContractEntry:
    """A backbone under the contract.

    Args:
        name: short id (pytest ids).
        extractor_class, pipeline_class: the refam extractor and the stock diffusers pipeline.
        save: (folder, depth) -> the folder of a tiny random pipeline of the real classes with
            `depth` blocks of each kind.
        settings: extractor keyword arguments for the tiny model (float32, tiny sizes).
        image_size: (width, height) of the test image; its token grid must not be square.
        stock_velocity: (stock pipe, x_t, sigma, grid, caption) -> the transformer's output as the
            stock pipeline calls it at noise level sigma (its ids, masks, timestep unit).
        block0_vectors: (stock pipe, x_t, sigma, grid, caption, expression embeds [1, L, D]) ->
            (image queries [N, H, D], expression keys [L, H, D]) of block 0 after its norms and
            the stock RoPE, the expression read as a caption's tokens of the same length are read.
        positions_off: (transformer, monkeypatch) -> None: switch every positional encoding off
            (RoPE to the identity, absolute embeddings to zero), for the planted-cell check.
        stock_latent: (stock pipe, image, height, width) -> the image's clean latent in the layout
            the stock transformer takes, as the family's stock image-conditioned pipeline makes it:
            its image or video processor's pixels at height x width, the VAE's mode (as
            `retrieve_latents(..., sample_mode="argmax")` takes it, where a pipeline samples), its
            normalisation and its packing. Every other check takes the clean latent from the
            extractor, so this is the one that sees the extractor's latent normalisation.
        stock_expression: (stock pipe, text, n) -> [n, D]: the rows the stock pipeline's own
            `encode_prompt` gives a prompt of that text n tokens long (no padding), where the
            expression's n tokens sit in it, for the text stream the transformer reads.
        scheduler_levels: stock pipe -> [(sigma, timestep)]: the noise levels of the states a schedule of
            the pipeline's own scheduler visits (x_t = (1 - sigma) x0 + sigma eps, read off the
            scheduler: its `sigmas`, or its `alphas_cumprod` through `add_noise`) and the timestep
            the pipeline tells the transformer at each (`flow_levels`, `vp_levels`).
        stock_sigma: stock pipe -> the noise level of the checks against the stock model's forward
            (velocity, block 0's vectors): a level the scheduler itself holds for a VP backbone,
            whose timestep is otherwise an interpolation of refam's own.
        velocity_exact: whether the stock velocity is computed as the extractor computes it, bit for
            bit; False where the stock side takes another float route to the same number (a VP
            backbone's state and v conversion from the scheduler's alphas_cumprod): then the branch's
            velocity equals the extractor's own without the branch bit for bit, and the stock's to 1e-5.
        patch: (frames, rows, cols) of VAE latent cells per token.
        depth_observations: blocks observed per forward as a function of depth.
        reference_hooks: (transformer, the expressions' valid [K, L]) -> hook handles, for the reference
            forward (`reference_observations`), where the stock model given the joined text stream
            would not see the branch's tokens as the caption's: Mochi removes masked text tokens from
            the attention, Qwen-Image numbers text positions on past the caption. The hooks hold only
            during that forward; written from the stock model, never from refam's processors.
        causal_text: the stock model reads text block-causally (Qwen-Image 2.1: a caption token sees the
            earlier caption tokens and itself, never the image), so the expression, read as a caption is
            read, sees its own tokens up to each one and not the image (`branch_mask`); the maps are still
            the image queries over its keys. False: an expression sees all its own tokens and the image.
    """

    name: str
    extractor_class: type
    pipeline_class: type
    save: Callable[[Path, int], Path]
    settings: dict
    image_size: tuple[int, int]
    stock_velocity: Callable[..., torch.Tensor]
    block0_vectors: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    positions_off: Callable[[Any, Any], None]
    stock_latent: Callable[..., torch.Tensor]
    stock_expression: Callable[[Any, str, int], torch.Tensor]
    scheduler_levels: Callable[[Any], list[tuple[float, float]]]
    patch: tuple[int, int, int] = (1, 2, 2)
    depth_observations: Callable[[int], int] = field(default=lambda depth: depth)
    stock_sigma: Callable[[Any], float] = field(default=lambda pipe: 0.6)
    velocity_exact: bool = True
    reference_hooks: Callable[[Any, torch.Tensor], list] | None = None
    causal_text: bool = False


def load_entries(folder: Path) -> list[ContractEntry]:
    """The entries of every entry_<name>.py in `folder`, in file order: its `ENTRY`, or its `ENTRIES`
    (a family's variants, which share its stock calls)."""
    entries = []
    for path in sorted(Path(folder).glob("entry_*.py")):
        spec = importlib.util.spec_from_file_location(f"refam_contract_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "ENTRY") == hasattr(module, "ENTRIES"):
            raise ValueError(f"{path.name} must define ENTRY (one backbone) or ENTRIES (a list of variants), not both or neither")
        entries.extend(module.ENTRIES if hasattr(module, "ENTRIES") else [module.ENTRY])
    return entries


def noised_latent(extractor, image, sigma: float, sample_id: str):
    """(latent, x_t): the image's clean latent and the state `NoiseAt(sigma)` observes for this
    sample, recomputed here from its definition, x_t = (1 - sigma) x0 + sigma eps."""
    from refam.extractors.trajectory import standard_noise

    latent = extractor.encode_image(image)
    noise = standard_noise(latent.x0, extractor.generator(sample_id)).to(latent.x0.dtype)
    return latent, (1.0 - sigma) * latent.x0 + sigma * noise


def clean_latents(entry: ContractEntry, extractor, stock, image) -> tuple[torch.Tensor, torch.Tensor]:
    """(the extractor's, the stock code's) clean latent of `image`, both at the size the extractor
    resizes it to (a setting of refam's, not of the stock code's)."""
    from refam.extractors.template import ImageDiTExtractor

    if isinstance(extractor, ImageDiTExtractor):
        height, width = extractor.image_size(*image.size)
    else:
        height, width = extractor.height, extractor.width
    with torch.no_grad():
        return extractor.encode_image(image).x0, entry.stock_latent(stock, image, height, width)


def recomputed_scores(entry: ContractEntry, stock, extractor, image, caption: str, expression: tuple[str, int | None],
                      sigma: float, sample_id: str) -> torch.Tensor:
    """Block 0's map of one expression [L, N], mean over heads of q . k / sqrt(d), recomputed from
    the stock pipeline's modules (`entry.block0_vectors`) at the state the extractor observes."""
    latent, x_t = noised_latent(extractor, image, sigma, sample_id)
    encoded = extractor.encode_expressions([expression])
    with torch.no_grad():
        query, key = entry.block0_vectors(stock, x_t, sigma, latent.grid, caption, encoded.embeds)
    heads, dim = query.shape[1], query.shape[2]
    return torch.einsum("nhd,lhd->ln", query.float(), key.float()) * dim**-0.5 / heads


@dataclass
class Observation:
    """One block's attention as the stock kernel computed it in the reference forward: image queries
    [N, H, D], expression keys [K, L, H, D] (after the block's norms and RoPE), and the kernel's
    outputs at the image [N, H, D] and expression [K, L, H, D] rows (before any output projection)."""

    query: torch.Tensor
    key: torch.Tensor
    image_out: torch.Tensor | None
    expression_out: torch.Tensor | None


def branch_mask(order: tuple[str, ...], sizes: dict[str, int], valid: torch.Tensor, causal_text: bool = False) -> torch.Tensor:
    """[S, S] True where a query may look in a joint sequence of `order`'s segments, the branch's
    semantics written out: caption and image rows see the caption and the image, never an
    expression; an expression's rows see its own real tokens and the image, never the caption or
    another expression. With `causal_text` (`ContractEntry.causal_text`) an expression's row sees its
    own real tokens at its position and before, and not the image."""
    spans = _spans(order, sizes)
    total = sum(sizes[name] for name in order)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    main = [spans["caption"], spans["image"]]
    for rows in main:
        for cols in main:
            allowed[rows, cols] = True
    k, length = valid.shape
    own = torch.eye(k, dtype=torch.bool)[:, None, :, None] & valid[None, None]
    if causal_text:
        earlier = torch.arange(length)[None, :] <= torch.arange(length)[:, None]  # [query, key]
        own = own & earlier[None, :, None, :]
    allowed[spans["branch"], spans["branch"]] = own.expand(k, length, k, length).reshape(k * length, k * length)
    allowed[spans["branch"], spans["image"]] = not causal_text
    return allowed


def reference_observations(entry: ContractEntry, extractor, x_t: torch.Tensor, sigma: float, grid, condition,
                           encoded) -> list[Observation]:
    """Every block's attention in a forward of the STOCK processors (the branch processors are the
    stock ones while no capture is set) over the text stream with the expressions joined, where only
    the attention kernel itself is masked to the branch's semantics (`branch_mask`): the expressions'
    tokens evolve through the stock blocks from the stock modules' own projections, norms and RoPE,
    none of refam's kernels, key biases or processors taking part. Calls whose keys are the image's
    alone (SD3.5's dual `attn2`, Wan's self-attention) and a pooler's (Mochi's caption) are not blocks
    of the branch."""
    import torch.nn.functional as F

    num_image, (k, length) = math.prod(grid), encoded.valid.shape
    order = ("branch", "caption", "image") if extractor.branch_first else ("image", "caption", "branch")
    stock_sdpa, observed = F.scaled_dot_product_attention, []

    def masked_sdpa(query, key, value, attn_mask=None, **kwargs):
        queries, keys = query.shape[2], key.shape[2]
        joint = queries == keys > num_image  # else cross-attention: image queries, text keys in `order` without the image
        if not joint and (keys == num_image or queries != num_image):
            # image-only attention (SD3.5's attn2, Wan's attn1), a pooler's (Mochi's caption): no branch block
            return stock_sdpa(query, key, value, attn_mask=attn_mask, **kwargs)
        assert query.shape[0] == 1, "the reference masks a one-item stock call"
        segments = order if joint else tuple(name for name in order if name != "image")
        sizes = {"branch": k * length, "image": num_image}
        sizes["caption"] = keys - sum(sizes[name] for name in segments if name != "caption")
        spans = _spans(segments, sizes)
        if joint:
            mask = branch_mask(order, sizes, encoded.valid.cpu(), entry.causal_text)
        else:  # the image's queries see the caption's keys only
            mask = torch.zeros(queries, keys, dtype=torch.bool)
            mask[:, spans["caption"]] = True
        mask = mask.to(query.device)
        if attn_mask is not None:  # a stock mask (caption padding, a bias) holds beside the branch's
            stock = attn_mask.broadcast_to((*attn_mask.shape[:-2], queries, keys)).reshape(-1, queries, keys)[0]
            mask = stock & mask if stock.dtype == torch.bool else stock + torch.zeros(
                mask.shape, dtype=stock.dtype, device=mask.device).masked_fill(~mask, float("-inf"))
        out = stock_sdpa(query, key, value, attn_mask=mask, **kwargs)
        rows = lambda t: t[0].transpose(0, 1).float()  # noqa: E731  [H, S, D] -> [S, H, D]
        image = spans["image"] if joint else slice(0, queries)
        expression = lambda t: rows(t)[spans["branch"]].unflatten(0, (k, length))  # noqa: E731
        observed.append(Observation(query=rows(query)[image], key=expression(key),
                                    image_out=rows(out)[image] if joint else None,
                                    expression_out=expression(out) if joint else None))
        return out

    handles = entry.reference_hooks(extractor.pipe.transformer, encoded.valid) if entry.reference_hooks else []
    try:
        F.scaled_dot_product_attention = masked_sdpa
        with torch.no_grad():
            extractor.forward(x_t, sigma, grid, condition, encoded)
    finally:
        F.scaled_dot_product_attention = stock_sdpa
        for handle in handles:
            handle.remove()
    return observed


STOCK_SDPA = torch.nn.functional.scaled_dot_product_attention  # as imported, before a reference forward masks it


def text_side_attention(module: torch.nn.Module) -> list:
    """`reference_hooks` handles for a text-side module that runs attention of its own before the
    blocks (HunyuanVideo's token refiner, Lumina 2's context refiner): while it runs, attention is the
    stock SDPA, not the reference's masked one; its calls are not blocks of the branch."""
    import torch.nn.functional as F

    saved = []

    def enter(*_):
        saved.append(F.scaled_dot_product_attention)
        F.scaled_dot_product_attention = STOCK_SDPA

    def leave(*_):
        F.scaled_dot_product_attention = saved.pop()

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


def _spans(order: tuple[str, ...], sizes: dict[str, int]) -> dict[str, slice]:
    spans, start = {}, 0
    for name in order:
        spans[name] = slice(start, start + sizes[name])
        start += sizes[name]
    return spans


def reference_maps(observation: Observation, valid: torch.Tensor, representation: str, softmax_stage: str) -> torch.Tensor:
    """[K, L, N]: one block's map from its reference observation, written from the definitions
    (docs/backbones.md): cross_attention, mean over heads of q . k / sqrt(d) (after_mean) or of the
    per-head softmax over the scored tokens `valid` (per_head); attention_output, the sum over
    heads of o_p . o_t (after_mean) or its softmax over the scored tokens (per_head). The scored
    tokens are the maps' `valid`: which of the carried tokens enter the softmax (a prompt
    template's do not by default) is tested beside the contract (tests/extractors/test_template_tokens.py)."""
    if representation == "cross_attention":
        logits = torch.einsum("nhd,klhd->hkln", observation.query, observation.key) * observation.query.shape[-1] ** -0.5
    else:
        logits = torch.einsum("nhd,klhd->kln", observation.image_out, observation.expression_out)[None]
    if softmax_stage == "after_mean":
        return logits.mean(dim=0)
    mask = valid[None, :, :, None]
    return logits.masked_fill(~mask, float("-inf")).softmax(dim=2).nan_to_num(0.0).mean(dim=0)


def every_block_gaps(entry: ContractEntry, extractor, image, caption: str, expression: tuple[str, int | None], sigma: float,
                     softmax_stage: str, representations: list[str]) -> dict[tuple[str, int], float]:
    """{(representation, block): the largest difference, relative to the reference's largest value,
    between the extractor's map of that one block and the map of the stock attention at that block
    in the reference forward (`reference_observations`)}: every block, not block 0 alone, so that
    whatever reaches the expression tokens through earlier blocks (the caption, another expression)
    and whatever differs by block kind (single-stream blocks' norms) shows. The extractor observes
    `NoiseAt(sigma)`."""
    latent, x_t = noised_latent(extractor, image, sigma, "every-block")
    encoded = extractor.encode_expressions([expression])
    observed = reference_observations(entry, extractor, x_t, sigma, latent.grid, extractor.encode_caption(caption), encoded)
    assert len(observed) == extractor.num_blocks, f"{len(observed)} text-attention calls for {extractor.num_blocks} blocks"
    gaps = {}
    for representation in representations:
        extractor.representation, extractor.softmax_stage = representation, softmax_stage
        for block, observation in enumerate(observed):
            maps = extractor.extract(image, caption, [expression], "every-block", blocks=[block])
            expected = reference_maps(observation, maps.valid, representation, softmax_stage)  # the scored tokens
            gaps[representation, block] = float((maps.scores.flatten(2) - expected).abs().max() / expected.abs().max())
    return gaps


def flow_levels(pipe, unit: float = 1.0, steps: int = 8, **set_timesteps) -> list[tuple[float, float]]:
    """(sigma, timestep / unit) of a flow scheduler's schedule of `steps` (`set_timesteps` as the
    pipeline calls it), the terminal 0 left out: the pipelines hand `timestep / unit` to the
    transformer (FLUX's 1000, SD3's 1). An `invert_sigmas` scheduler (Mochi's) counts its sigmas
    from the clean end: the noise level is 1 - sigma."""
    scheduler = pipe.scheduler
    if "sigmas" in set_timesteps:  # a pipeline's own sigmas set the number of steps
        scheduler.set_timesteps(**set_timesteps)
    else:
        scheduler.set_timesteps(steps, **set_timesteps)
    sigmas = scheduler.sigmas[: len(scheduler.timesteps)].double()
    if scheduler.config.get("invert_sigmas", False):
        sigmas = 1.0 - sigmas
    return [(float(sigma), float(t) / unit) for sigma, t in zip(sigmas, scheduler.timesteps)]


def vp_state(pipe, x_t: torch.Tensor, sigma: float) -> tuple[torch.Tensor, float, float, float]:
    """(state, timestep, sqrt(ab), sqrt(1 - ab)) of the flow state x_t at sigma on a variance-preserving
    scheduler: the scheduler's own timestep whose level (`vp_levels`, from its alphas_cumprod) is
    sigma, no interpolation of refam's, so a VP entry's stock checks run at a level the scheduler
    holds (`stock_sigma`); the stock model sees the state sqrt(ab) x0 + sqrt(1 - ab) eps."""
    timesteps = [t for level, t in vp_levels(pipe) if abs(level - sigma) < 1e-9]
    assert timesteps, f"sigma {sigma} is not a level of the scheduler's schedule"
    ab = pipe.scheduler.alphas_cumprod[int(timesteps[0])].double()
    a, b = float(ab.sqrt()), float((1 - ab).sqrt())
    return x_t * (a + b), timesteps[0], a, b  # (1 - sigma, sigma) = (a, b) / (a + b)


def vp_levels(pipe, steps: int = 8) -> list[tuple[float, float]]:
    """(sigma, timestep) of a variance-preserving scheduler's schedule of `steps`: the scheduler's own
    `add_noise` of x0 = 1, eps = 0 and of x0 = 0, eps = 1 at timestep t gives sqrt(ab) and sqrt(1 - ab),
    and the flow state of the same signal-to-noise ratio has sigma = sqrt(1 - ab) / (sqrt(ab) + sqrt(1 - ab))."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    levels = []
    for t in scheduler.timesteps:
        a = float(scheduler.add_noise(one, zero, t.reshape(1)))
        b = float(scheduler.add_noise(zero, one, t.reshape(1)))
        levels.append((b / (a + b), float(t)))
    return levels

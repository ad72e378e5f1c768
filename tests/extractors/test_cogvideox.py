"""What is CogVideoX's own in its backbone (refam.extractors.cogvideox): the flow sigma the template
speaks mapped onto a variance-preserving v-prediction model, 2b's fixed caption length, 1.5's
temporal patches, and the checkpoints each class refuses. The branch's invariants are the contract
suite's (tests/extractors/contract)."""

import pytest
import torch
from PIL import Image

from refam.errors import CheckpointError, ConfigError
from refam.extractors.cogvideox import CogVideoX15Extractor, CogVideoXExtractor
from refam.extractors.trajectory import NoiseAt, TrajectoryContext
from refam.testing.tiny_cogvideox import save_tiny_cogvideox

HEIGHT, WIDTH = 48, 80  # a 3 x 5 token grid per latent frame



@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-cogvideox")
    return {variant: save_tiny_cogvideox(root / variant, variant=variant) for variant in ("2b", "5b", "1.5")}


def _extractor(folder, cls=CogVideoXExtractor, **kwargs):
    settings = dict(torch_dtype="float32", height=HEIGHT, width=WIDTH, clip_frames=5, caption_max_tokens=16)
    settings.update(kwargs)
    extractor = cls(str(folder), **settings)
    extractor.setup(torch.device("cpu"))
    return extractor


def _frames(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(HEIGHT, WIDTH, 3, generator=generator) * 255).byte().numpy()) for _ in range(n)]


def test_a_flow_euler_step_is_the_pipelines_ddim_step(folders):
    """The flow state at sigma(t) is r x the VP state at t, the model is told t, and its v becomes
    eps - x0, so one Euler step in sigma lands where CogVideoXDDIMScheduler.step lands."""
    extractor = _extractor(folders["5b"])
    pipe = extractor.pipe
    t, t_next = 519, 499
    sigma, sigma_next = (float(extractor.vp.sigmas[i]) for i in (t, t_next))
    assert extractor.timestep(sigma) == pytest.approx(t)
    caption = extractor.encode_caption("a red dog")
    x_flow = torch.randn(1, 2, 16, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(0))
    stepped = x_flow + (sigma_next - sigma) * extractor.forward(x_flow, sigma, (2, 3, 5), caption)

    r, r_next = (torch.tensor([1 - s, s]).norm().item() for s in (sigma, sigma_next))
    x_vp = x_flow / r
    rope = pipe._prepare_rotary_positional_embeddings(HEIGHT, WIDTH, 2, "cpu")
    with torch.inference_mode():
        v = pipe.transformer(x_vp, caption, timestep=torch.tensor([t]), image_rotary_emb=rope, return_dict=False)[0]
    pipe.scheduler.set_timesteps(50)  # steps of 20: 519 -> 499
    ddim = pipe.scheduler.step(v, t, x_vp, return_dict=False)[0]
    torch.testing.assert_close(stepped / r_next, ddim, atol=2e-5, rtol=1e-5)


def test_levels_below_timestep_0_are_told_timestep_0(folders):
    """The least noise CogVideoX was trained at is timestep 0's (5b 0.028, 2b 0.048); a lower level
    (the clean end of an ODE, or the clean latent) is told timestep 0, as DDIM inversion starts."""
    for variant, least in (("5b", 0.0283), ("2b", 0.0481)):
        extractor = _extractor(folders[variant], caption_max_tokens=226 if variant == "2b" else 16, trajectory=NoiseAt(0.0))
        assert extractor.vp.sigmas[0] == pytest.approx(least, abs=1e-4) and extractor.vp.sigmas[-1] == 1.0
        assert extractor.timestep(0.0) == extractor.timestep(least / 2) == 0.0
        assert extractor.timestep(1.0) == 999.0


def test_the_shift_is_the_pipelines_trailing_schedule(folders):
    """shift: true reads sigma as a fraction of CogVideoX's own schedule: 0.75 -> timestep 749."""
    extractor = _extractor(folders["5b"], trajectory=NoiseAt(0.75, shift=True))
    shift = extractor.noise_shift(15)
    for fraction, timestep in ((1.0, 999), (0.75, 749), (0.5, 499), (0.02, 19)):
        assert extractor.timestep(shift(fraction)) == pytest.approx(timestep)
    observed = extractor.trajectory.observed_sigma(TrajectoryContext(velocity=None, shift=shift))
    assert observed == shift(0.75) == pytest.approx(0.8437, abs=1e-4)
    assert extractor.timestep(0.75) == pytest.approx(632.06, abs=0.01)  # unshifted: the same SNR as the flow's 0.75


def test_2b_caption_length_is_fixed_by_its_position_table(folders):
    """2b adds a [226 caption | video] position table; the branch's tokens skip it (the contract
    suite's cogvideox_2b entry checks the maps and the velocity)."""
    with pytest.raises(ConfigError, match="must be 226") as error:
        _extractor(folders["2b"])
    assert error.value.key == "caption_max_tokens"
    extractor = _extractor(folders["2b"], caption_max_tokens=226)
    assert extractor.encode_caption("a red dog").shape[1] == 226


def test_1_5_patches_two_latent_frames_per_token(folders):
    """9 frames -> latents 0, 1, 2 -> latent 0 repeated in front -> token frames (0, 0), (1, 2)."""
    extractor = _extractor(folders["1.5"], cls=CogVideoX15Extractor, clip_frames=9)
    latent = extractor.encode_clip(_frames(9))
    assert latent.x0.shape[1] == 4 and torch.equal(latent.x0[:, 0], latent.x0[:, 1]) and latent.grid == (2, 3, 5)
    maps = extractor.extract_video(_frames(9), "a red dog", [("the red dog", None)], "s0")
    assert maps.scores.shape[2] == 2 and maps.frame_to_latent == [0] + [1] * 8
    with pytest.raises(ConfigError, match="8k \\+ 1"):
        CogVideoX15Extractor(str(folders["1.5"]), clip_frames=5)


def test_each_class_refuses_the_others_checkpoint(folders):
    with pytest.raises(CheckpointError, match="CogVideoX15Extractor"):
        _extractor(folders["1.5"])
    with pytest.raises(CheckpointError, match="use CogVideoXExtractor"):
        _extractor(folders["5b"], cls=CogVideoX15Extractor, clip_frames=9)

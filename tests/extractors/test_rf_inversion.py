"""RF-Inversion (`RFInversion`) and the send protocol that feeds it the observed velocity, on a tiny FLUX."""

import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.extractors.flux import FluxExtractor
from refam.errors import ConfigError
from refam.extractors.trajectory import NoiseAt, RFInversion, TrajectoryContext, drive, standard_noise

MAGNETS = AppendMagnets()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against b."""
    return float((a - b).norm() / b.norm())


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def setup(tiny_extractor):
    """x0 [1, 64, 64] of a textured image, and a caption-conditioned context on the tiny FLUX with
    FLUX's resolution shift at its 64 image tokens."""
    latent = tiny_extractor.encode_image(_image())
    condition = tiny_extractor.encode_caption("a dog and a man")
    context = TrajectoryContext(
        velocity=lambda x, s: tiny_extractor.forward(x, s, latent.grid, condition),
        shift=tiny_extractor.noise_shift(latent.num_tokens),
        backbone="FluxExtractor",
    )
    return latent.x0, context, latent.grid, condition


def _seed() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("inversion_schedule", ["reference", "reversed"])
def test_plain_inversion_then_denoising_reconstructs_x0_and_converges(setup, inversion_schedule):
    """gamma = eta = 0: Euler inversion then Euler denoising, same caption, is first order in the
    step. The tiny random DiT's velocity is large and rough (|v| ~ 40 = 4.7 |x0|, nearly
    orthogonal to y1 - x0), so the errors relative to |x0| are large at few steps. Measured
    (shift on): reference 8/32/128 steps 1.39 / 0.379 / 0.104 (x3.7 per 4x steps); reversed
    1.37 / 0.404 / 0.103. A wrong sign makes the error grow with the steps and a wrong step size
    leaves a floor; either breaks the ratio."""
    x0, context, _, _ = setup
    errors = [
        rel(RFInversion(steps=n, gamma=0.0, eta=0.0, inversion_schedule=inversion_schedule).reconstruct(x0, _seed(), context), x0)
        for n in (8, 32, 128)
    ]
    assert errors[2] < 0.2, errors
    assert errors[1] < 0.55 * errors[0] and errors[2] < 0.55 * errors[1], errors


def test_gamma_one_inverts_onto_the_straight_path_to_the_noise(setup):
    x0, context, _, _ = setup
    y1 = standard_noise(x0, _seed())  # the draw `invert` makes
    # walking the schedule backwards, the controller alone lands exactly on y1 (and, stopped early by
    # strength, exactly on the straight path (1 - s) x0 + s y1), whatever the DiT predicts
    inverted = RFInversion(steps=8, gamma=1.0, inversion_schedule="reversed").invert(x0, _seed(), context)
    assert rel(inverted, y1) < 1e-6  # measured 6e-10
    partial = RFInversion(steps=8, gamma=1.0, strength=0.75, inversion_schedule="reversed")
    s = partial.schedule(context)[0]
    assert s < 1.0
    assert rel(partial.invert(x0, _seed(), context), (1 - s) * x0 + s * y1) < 1e-6  # measured 5e-8
    # the reference tells the DiT time i/(n+1) while stepping by the shifted schedule, so its gamma = 1
    # falls short of y1: Y = y1 + (x0 - y1) * prod_i (1 - dt_i / (1 - t_i)), still model-free
    reference = RFInversion(steps=8, gamma=1.0)
    sigmas = reference.schedule(context)
    n = len(sigmas)
    left = math.prod(1 - (sigmas[i] - sigmas[i + 1]) / (1 - i / n) for i in range(n - 1))
    inverted = reference.invert(x0, _seed(), context)
    assert rel(inverted, y1 + (x0 - y1) * left) < 1e-6
    assert rel(inverted, y1) > 1e-2  # measured 2.7e-2


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_eta_one_over_all_steps_denoises_exactly_onto_x0(setup, strength):
    """x_{i+1} - x0 = (x_i - x0) sigma_{i+1} / sigma_i, and the last sigma is 0: exact from any start."""
    x0, context, _, _ = setup
    trajectory = RFInversion(steps=8, gamma=0.5, eta=1.0, eta_stop=1.0, strength=strength)
    for start in (trajectory.invert(x0, _seed(), context), standard_noise(x0, torch.Generator().manual_seed(1))):
        final = drive(trajectory.denoise(start, x0, context), context.velocity)
        torch.testing.assert_close(final, x0, rtol=0, atol=1e-6)  # measured max |error| 9e-8


def _counting(velocity):
    calls = []

    def wrapped(x, s):
        calls.append(s)
        return velocity(x, s)

    return wrapped, calls


def test_the_sent_velocity_is_used_and_saves_the_forward(setup):
    x0, context, _, _ = setup
    steps = 8
    trajectory = RFInversion(steps=steps, observe=[0, 5])
    expected = trajectory.reconstruct(x0, _seed(), context)
    plain, plain_calls = _counting(context.velocity)
    observer, observed_calls = _counting(context.velocity)
    counted = TrajectoryContext(plain, context.shift)
    final = drive(trajectory.states(x0, _seed(), counted), observer)
    assert len(observed_calls) == 2 and len(plain_calls) == steps + steps - 2  # inversion + unobserved steps
    torch.testing.assert_close(final, expected, rtol=0, atol=0)
    # plain iteration sends None: the trajectory computes the velocity itself
    states = trajectory.states(x0, _seed(), context)
    assert len(list(states)) == 2
    # the velocity sent at the last step moves the result by exactly -delta * (sigma_last - 0)
    last = RFInversion(steps=steps, observe=[steps - 1])  # eta acts on steps [0, 2) only
    sigma_last = last.schedule(context)[-2]
    shifted = drive(last.states(x0, _seed(), context), lambda x, s: context.velocity(x, s) + 1.0)
    torch.testing.assert_close(shifted, expected - sigma_last, rtol=0, atol=1e-5)


def test_extractor_observes_exactly_the_named_steps_with_no_extra_forward(tiny_extractor, monkeypatch):
    captures, forwards = [], []
    new_capture, forward = tiny_extractor.new_capture, tiny_extractor.forward

    def recording_capture(*args, **kwargs):
        captures.append(new_capture(*args, **kwargs))
        return captures[-1]

    def counting_forward(*args, **kwargs):
        forwards.append(args[5] if len(args) > 5 else kwargs.get("capture"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_extractor, "new_capture", recording_capture)
    monkeypatch.setattr(tiny_extractor, "forward", counting_forward)
    monkeypatch.setattr(tiny_extractor, "trajectory", RFInversion(steps=8, observe=[0, 5]))
    maps = tiny_extractor.extract(_image(), "a dog", [MAGNETS.augment("the dog")], "s")
    assert captures[0].observations == 2 * tiny_extractor.num_blocks  # blocks x observed states
    assert len(forwards) == 8 + 8  # inversion + denoising: the observed steps cost no second forward
    assert sum(c is not None for c in forwards) == 2
    assert torch.isfinite(maps.scores).all()


def test_observed_velocity_equals_the_plain_forward(setup, tiny_extractor):
    """Every step observed through the expression branch reconstructs as with no observer at all."""
    x0, context, grid, condition = setup
    trajectory = RFInversion(steps=8)
    encoded = tiny_extractor.encode_expressions([MAGNETS.augment("the dog")])
    capture = tiny_extractor.new_capture(encoded, condition, grid)
    final = drive(
        trajectory.states(x0, _seed(), context),
        lambda x, s: tiny_extractor.forward(x, s, grid, condition, encoded, capture),
    )
    assert capture.observations == 8 * tiny_extractor.num_blocks
    # measured: identical on CPU float32; the tolerance allows other attention kernels
    torch.testing.assert_close(final, trajectory.reconstruct(x0, _seed(), context), rtol=1e-4, atol=1e-5)


def test_extract_runs_end_to_end_and_is_deterministic(tiny_flux_dir):
    extractor = FluxExtractor(
        str(tiny_flux_dir), torch_dtype="float32", resolution=128, caption_max_tokens=16, trajectory=RFInversion(steps=4)
    )
    extractor.setup(torch.device("cpu"))
    image, expressions = _image(), [MAGNETS.augment("the dog"), MAGNETS.augment("a man")]
    a = extractor.extract(image, "a dog and a man", expressions, "id-1")
    b = extractor.extract(image, "a dog and a man", expressions, "id-1")
    c = extractor.extract(image, "a dog and a man", expressions, "id-2")
    assert a.scores.shape[:2] == (2, a.valid.shape[1]) and torch.isfinite(a.scores).all()
    assert a.scores.equal(b.scores)
    assert not a.scores.equal(c.scores)  # y1 follows (seed, sample id)


def test_noise_at_ignores_the_sent_velocity():
    x0 = torch.randn(1, 4, 8)
    context = TrajectoryContext(lambda x, s: x, shift=None)
    sent = []
    drive(NoiseAt(0.5).states(x0, _seed(), context), lambda x, s: sent.append((x, s)) or torch.zeros_like(x))
    ((x, s),) = sent
    assert s == 0.5
    torch.testing.assert_close(x, 0.5 * x0 + 0.5 * torch.randn(x0.shape, generator=_seed()))


@pytest.mark.parametrize("sigma", [-0.1, 1.5, 750])
def test_noise_at_takes_a_noise_level_in_0_1(sigma):
    """750 is the old "timestep" reading: a config still written that way is refused, not read as noise."""
    with pytest.raises(ConfigError, match=r"^sigma: must be a noise level in \[0, 1\]") as raised:
        NoiseAt(sigma)
    assert raised.value.field == "sigma"


def test_noise_at_with_shift_observes_fluxs_resolution_shifted_level(tiny_extractor, monkeypatch):
    """`NoiseAt(sigma, shift=True)` on FLUX observes the level FLUX's scheduler makes of sigma at the
    image's token count (the tiny model has FLUX.1-dev's scheduler config): 0.75 -> 0.832 at 256
    tokens, 0.849 at 1024, 0.905 at 4096, as diffusers' FlowMatchEulerDiscreteScheduler computes it."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = dict(tiny_extractor.pipe.scheduler.config)
    for tokens, published in ((256, 0.832), (1024, 0.849), (4096, 0.905)):
        context = TrajectoryContext(_no_velocity, tiny_extractor.noise_shift(tokens))
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        scheduler.set_timesteps(sigmas=[0.75], mu=calculate_shift(tokens, config["base_image_seq_len"], config["max_image_seq_len"],
                                                                   config["base_shift"], config["max_shift"]))
        shifted = NoiseAt(0.75, shift=True).observed_sigma(context)
        assert shifted == pytest.approx(float(scheduler.sigmas[0]), abs=1e-6) and shifted == pytest.approx(published, abs=1e-3)
        assert NoiseAt(0.75).observed_sigma(context) == 0.75  # unshifted by default
    # end to end on a 256 x 256 image (256 tokens): FLUX is told the shifted level and sees x0 noised to it
    seen = {}
    forward = tiny_extractor.pipe.transformer.forward
    monkeypatch.setattr(tiny_extractor.pipe.transformer, "forward", lambda **kwargs: (seen.update(kwargs), forward(**kwargs))[1])
    monkeypatch.setattr(tiny_extractor, "resolution", 256)
    monkeypatch.setattr(tiny_extractor, "trajectory", NoiseAt(0.75, shift=True))
    tiny_extractor.extract(_image(), "", [MAGNETS.augment("the dog")], "shift")
    latent = tiny_extractor.encode_image(_image())
    assert latent.num_tokens == 256
    sigma = NoiseAt(0.75, shift=True).observed_sigma(TrajectoryContext(_no_velocity, tiny_extractor.noise_shift(256)))
    assert seen["timestep"].item() == pytest.approx(sigma, abs=1e-6)
    eps = standard_noise(latent.x0, tiny_extractor.generator("shift"))
    torch.testing.assert_close(seen["hidden_states"], (1 - sigma) * latent.x0 + sigma * eps)


def test_low_precision_latents_are_integrated_in_float32():
    x0 = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    seen = []

    def velocity(x, s):
        seen.append(x.dtype)
        return torch.zeros_like(x)

    context = TrajectoryContext(velocity, shift=None)
    trajectory = RFInversion(steps=4, gamma=1.0, eta=1.0, eta_stop=1.0, shift=False, inversion_schedule="reversed")
    inverted = trajectory.invert(x0, _seed(), context)
    assert inverted.dtype == torch.float32
    states = []
    final = drive(trajectory.states(x0, _seed(), context), lambda x, s: states.append(x.dtype) or torch.zeros_like(x))
    assert set(seen) == set(states) == {torch.bfloat16}
    assert final.dtype == torch.float32
    torch.testing.assert_close(final, x0.float(), rtol=0, atol=1e-6)
    # a constant velocity is integrated exactly out and back in float32 (28 bfloat16 steps each way
    # would leave about 1e-2)
    constant = TrajectoryContext(lambda x, s: torch.full_like(x, 0.3), shift=None)
    plain = RFInversion(steps=28, gamma=0.0, eta=0.0, shift=False).reconstruct(x0, _seed(), constant)
    torch.testing.assert_close(plain, x0.float(), rtol=0, atol=1e-5)


def _no_velocity(x, sigma):
    raise AssertionError("a schedule needs no forward")


def test_schedule_matches_the_diffusers_scheduler(tiny_extractor):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = dict(tiny_extractor.pipe.scheduler.config)
    for seq_len in (64, 1024, 4096):
        context = TrajectoryContext(_no_velocity, tiny_extractor.noise_shift(seq_len))
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        mu = calculate_shift(seq_len, config["base_image_seq_len"], config["max_image_seq_len"],
                             config["base_shift"], config["max_shift"])
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 28, 28), mu=mu)
        for strength in (1.0, 0.75):
            t_start = int(max(28 - min(28 * strength, 28), 0))  # the reference's get_timesteps
            ours = RFInversion(steps=28, strength=strength).schedule(context)
            np.testing.assert_allclose(ours, scheduler.sigmas[t_start:].numpy(), rtol=0, atol=1e-6)
    unshifted = RFInversion(steps=4, shift=False).schedule(TrajectoryContext(_no_velocity, shift=None))
    np.testing.assert_allclose(unshifted, [1.0, 0.75, 0.5, 0.25, 0.0])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"gamma": 1.5}, "gamma"),
        ({"gamma": -0.1}, "gamma"),
        ({"eta": 2.0}, "eta"),
        ({"eta_start": 0.5, "eta_stop": 0.25}, "eta_start"),
        ({"eta_stop": 1.2}, "eta_stop"),
        ({"strength": 0.0}, "strength"),
        ({"strength": 1.5}, "strength"),
        ({"observe": []}, "observe"),
        ({"observe": [0, 28]}, "observe"),
        ({"steps": 8, "strength": 0.5, "observe": [4]}, "observe"),  # only 4 steps run
        ({"observe": [-1]}, "observe"),
        ({"inversion_schedule": "backwards"}, "inversion_schedule"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, name):
    with pytest.raises(ConfigError, match=rf"^{name}: ") as raised:
        RFInversion(**kwargs)
    assert raised.value.field == name


def test_configured_from_yaml(tmp_path):
    from refam.sections import pipeline_from_config

    from refam.embedded import DEFAULT_MODEL_SECTION

    # the embedded pipeline's model section, as a config's `model:`
    demo = "model:\n" + "".join(f"  {line}\n" for line in DEFAULT_MODEL_SECTION.read_text().splitlines())
    noise_at = re.search(r"        class_path: refam\.extractors\.trajectory\.NoiseAt\n        init_args: \{[^}]*\}.*\n", demo)
    assert noise_at, demo
    noise_at = noise_at.group(0)
    rf_inversion = ("        class_path: refam.extractors.trajectory.RFInversion\n"
                    "        init_args: {steps: 12, gamma: 0.3, eta_stop: 0.5, observe: [0, 5], "
                    "inversion_schedule: reversed}\n")
    config = tmp_path / "rf.yaml"
    config.write_text(demo.replace(noise_at, rf_inversion))
    trajectory = pipeline_from_config(config).extractor.trajectory
    assert isinstance(trajectory, RFInversion)
    assert (trajectory.steps, trajectory.gamma, trajectory.eta, trajectory.eta_stop) == (12, 0.3, 0.9, 0.5)
    assert trajectory.observe == [0, 5] and trajectory.inversion_schedule == "reversed" and trajectory.shift
    config.write_text(demo.replace(noise_at, rf_inversion.replace("gamma: 0.3", "gamma: 1.5")))
    with pytest.raises(ConfigError, match=r"^model\.extractor\.init_args\.trajectory\.init_args\.gamma: must be in \[0, 1\], got 1.5$"):
        pipeline_from_config(config)

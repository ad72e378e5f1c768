"""How the observed latent states are made from the clean image latent.

A `Trajectory` yields the (x_t, sigma) states at which the DiT is observed; the expression branch
captures attention at every state it yields (maps are averaged over states). The extractor sends
the observed forward's velocity back into the generator (`drive`), so a trajectory that walks an
ODE pays no second forward for the states it has observed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Literal

import torch

from refam.config import Configurable
from refam.errors import ConfigError

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
# yields (x_t, sigma), is sent the velocity predicted at that state (None under plain iteration)
States = Generator[tuple[torch.Tensor, float], torch.Tensor | None, object]


Shift = Callable[[float], float]


@dataclass
class TrajectoryContext:
    """What a trajectory may use besides the clean latent.

    Every backbone speaks the same units here: sigma is the noise level of rectified flow
    (x_t = (1 - sigma) x0 + sigma eps, 1 = pure noise) and `velocity` is d x_t / d sigma = eps - x0
    (the template converts each backbone's own timestep and sign)."""

    velocity: Velocity  # plain denoiser forward (no expression branch): v(x_t, sigma)
    shift: Shift | None  # the backbone's noise-level shift at this resolution; None: it has none
    backbone: str = "this backbone"  # named when a trajectory refuses it

    def shifted(self, sigma: float) -> float:
        """sigma through the backbone's shift; a trajectory's `shift` setting that this backbone
        cannot serve is a ConfigError naming the backbone (extractors refuse it at setup already)."""
        if self.shift is None:
            raise no_shift_error(self.backbone)
        return self.shift(sigma)


def no_shift_error(backbone: str) -> ConfigError:
    """The refusal of `shift: true` on a backbone whose pipeline schedules with no shift."""
    return ConfigError(f"{backbone} has no noise-level shift to apply (its pipeline does not schedule with one); "
                       "set shift: false", field="shift")


class Trajectory(Configurable, abc.ABC):
    shift: bool = False  # applies the backbone's noise-level shift (`TrajectoryContext.shifted`)

    @abc.abstractmethod
    def states(self, x0: torch.Tensor, generator: torch.Generator, context: TrajectoryContext) -> States:
        """Yield the (x_t, sigma) states to observe; x0 is the clean latent in the layout the
        backbone's denoiser takes (`refam.extractors.latents.Latent.x0`).

        Protocol: the extractor observes each yielded state with one forward of the denoiser (the
        expression branch riding along) and sends that forward's output, the velocity v(x_t, sigma)
        (which the branch does not change), back into the generator, so inside a trajectory
        `velocity = yield (x_t, sigma)` receives it. Trajectories that do not need it ignore it
        (`NoiseAt`). Under plain iteration (`for state in states(...)`) the sent value is None; a
        trajectory that needs the velocity then computes it with `context.velocity`. The generator
        may `return` a value (e.g. the final latent); `drive` hands it back.
        """


def drive(states: States, observe: Velocity) -> object:
    """Run a trajectory: `observe(x_t, sigma)` for every state it yields, sending the result back.

    The loop every extractor uses (see `Trajectory.states`). Returns the generator's return value.
    """
    try:
        state = next(states)
    except StopIteration as stop:
        return stop.value
    while True:
        velocity = observe(*state)  # outside the try: a StopIteration in observe is not swallowed
        try:
            state = states.send(velocity)
        except StopIteration as stop:
            return stop.value


def time_shift(scheduler, mu: float) -> Shift:
    """The shift a `FlowMatchEulerDiscreteScheduler` applies at `mu` (its own `time_shift`,
    exponential or linear as its config says); the ends 0 and 1 stay where they are."""
    return lambda sigma: float(scheduler.time_shift(mu, 1.0, sigma)) if 0.0 < sigma < 1.0 else sigma


def scheduler_shift(scheduler, image_seq_len: int) -> Shift | None:
    """The shift a flow scheduler applies at this many image tokens: the resolution-dependent one
    (`use_dynamic_shifting`: FLUX's `calculate_shift` of mu, then the scheduler's time shift) or its
    static shift s (`shift` of `FlowMatchEulerDiscreteScheduler`, `flow_shift` of UniPC or
    DPM-Solver with `use_flow_sigmas`, as Wan's): sigma -> s sigma / (1 + (s - 1) sigma).

    None for a variance-preserving scheduler (one with `alphas_cumprod` and no flow sigmas: DDPM,
    DDIM, DPM-Solver as PixArt's): it has no flow shift, and reading a missing `shift` as 1 would
    accept `shift: true` as an identity."""
    config = scheduler.config
    if not config.get("use_flow_sigmas") and hasattr(scheduler, "alphas_cumprod"):
        return None
    if config.get("use_flow_sigmas"):
        static = float(config.get("flow_shift", 1.0))
    elif config.get("use_dynamic_shifting", False):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        return time_shift(scheduler, mu)
    else:
        static = float(config.get("shift", 1.0))
    return lambda sigma: static * sigma / (1.0 + (static - 1.0) * sigma)


def standard_noise(x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N(0, I) shaped like x0, float32 on x0's device, drawn on the CPU `generator` (so the draw
    does not depend on the device)."""
    return torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)


class NoiseAt(Trajectory):
    """One state: the clean latent noised to noise level `sigma`, x_t = (1 - sigma) x0 + sigma eps.

    The paper's FLUX "timestep 750" is sigma = 0.75 (x_t = 0.25 x0 + 0.75 eps, whatever the
    resolution: the scheduler's `scale_noise`); each backbone tells its denoiser sigma in its own
    timestep unit. `shift=True` applies the backbone's scheduler shift to sigma instead (FLUX: 0.832
    at 256 tokens, 0.849 at 1024, 0.905 at 4096); the paper does not say which. A backbone with no
    shift refuses it.
    """

    def __init__(self, sigma: float = 0.75, shift: bool = False) -> None:
        if not 0.0 <= sigma <= 1.0:
            raise ConfigError(f"must be a noise level in [0, 1] (1 = pure noise), got {sigma}", field="sigma")
        self.sigma = float(sigma)
        self.shift = shift

    def observed_sigma(self, context: TrajectoryContext) -> float:
        if self.shift and 0.0 < self.sigma < 1.0:
            return context.shifted(self.sigma)
        return self.sigma

    def states(self, x0, generator, context):
        sigma = self.observed_sigma(context)
        noise = standard_noise(x0, generator).to(x0.dtype)
        yield (1.0 - sigma) * x0 + sigma * noise, sigma


class RFInversion(Trajectory):
    """RF-Inversion (Rout et al., ICLR 2025), as in RefAM's appendix A.1: invert the clean latent
    into a structured noise latent with the controlled forward ODE (the paper's Algorithm 1), then
    denoise it back with the controlled reverse ODE (Algorithm 2), observing the DiT at the
    denoising steps named by `observe`.

    Follows the reference implementation, diffusers' community `pipeline_flux_rf_inversion.py`
    (`invert`, then `__call__` with `inverted_latents`), in the flow-matching convention sigma = 1
    noise, sigma = 0 data, x = (1 - sigma) x0 + sigma eps, the DiT predicting v ~ eps - x0. Both
    passes use `context.velocity`, i.e. the caption the extractor conditions on (A.1: "condition
    both inversion and denoising on this caption").

    Args:
        steps: schedule length of both passes (reference `num_inversion_steps` and
            `num_inference_steps`; 28, the paper's "28 denoising steps").
        gamma: strength, in [0, 1], of the inversion's controller toward the drawn noise y1
            (reference default 0.5). 0 is plain Euler inversion.
        eta: strength, in [0, 1], of the denoising controller toward the clean latent (reference
            default 1.0; its README example and this default 0.9). 0 is plain Euler denoising.
        eta_start: with `eta_stop`, fractions of `steps`: the controller acts at the denoising
            steps int(eta_start * steps) <= i < int(eta_stop * steps) (reference default 0).
        eta_stop: see `eta_start` (reference default 0.25; README example 7/28 = 0.25).
        observe: indices of the denoising steps whose forward the extractor observes (those
            states are yielded and their velocity is sent back, so they cost no extra forward);
            None = every step. Indices count the steps actually run (`steps` less what `strength`
            drops).
        shift: apply the backbone's scheduler shift to the schedule (as the reference does with
            FLUX's resolution-dependent exponential shift, `use_dynamic_shifting`); False keeps the
            uniform linspace(1, 1/steps, steps). A backbone with no shift refuses it.
        strength: start both passes at a partial noise level: the first
            int(steps - steps * strength) levels of the schedule are dropped (reference
            `get_timesteps`); 1.0 = from pure noise (reference default).
        inversion_schedule: "reference" (default) inverts as the reference does: at inversion step
            i of n the DiT is told the uniform time i / (n + 1) while the step taken is
            sigmas[i] - sigmas[i + 1] of the descending (shifted) schedule, so the time the DiT is
            told is not the noise level the latent has reached. "reversed" walks the denoising
            schedule backwards instead (the DiT told the level it is at), so plain inversion then
            plain denoising reconstructs x0 as the steps grow, with or without the shift.

    Schedule: sigmas = linspace(1, 1/steps, steps), shifted, then a terminal 0, then cut by
    `strength`; computed in float64 (the reference's scheduler holds them in float32).

    Differences from the reference, on purpose:
      - the inversion is conditioned on the caption with the extractor's guidance scale (the
        reference inverts with the empty prompt and guidance 0): the paper conditions both passes
        on the caption, and the extractor gives one velocity;
      - y1 is drawn from the CPU `generator` (float32, then moved to x0's device), not
        `randn_like` on the device, so the noise is a function of (seed, sample id) on any device;
      - the states are integrated in float32 whatever x0's dtype (the reference integrates in the
        model dtype, bfloat16 for FLUX.1-dev): 2 x 28 Euler updates in bfloat16 lose about 3
        significant digits, float32 costs nothing next to the forwards. The DiT sees x in x0's
        dtype;
      - the denoising controller divides by sigma_i where the reference divides by
        1 - (1 - t/1000) with t = 1000 sigma_i: the same up to rounding;
      - the reference's newer optional `decay_eta` (off by default) is not offered.
    """

    def __init__(
        self,
        steps: int = 28,
        gamma: float = 0.5,
        eta: float = 0.9,
        eta_start: float = 0.0,
        eta_stop: float = 0.25,
        observe: list[int] | None = None,
        shift: bool = True,
        strength: float = 1.0,
        inversion_schedule: Literal["reference", "reversed"] = "reference",
    ) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"must be a positive integer, got {steps!r}", field="steps")
        for name, value in (("gamma", gamma), ("eta", eta), ("eta_start", eta_start), ("eta_stop", eta_stop)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"must be in [0, 1], got {value}", field=name)
        if eta_start > eta_stop:
            raise ConfigError(f"must not exceed eta_stop, got {eta_start} > {eta_stop}", field="eta_start")
        if not 0.0 < strength <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {strength}", field="strength")
        if inversion_schedule not in ("reference", "reversed"):
            raise ConfigError(f"must be 'reference' or 'reversed', got {inversion_schedule!r}", field="inversion_schedule")
        self.steps, self.gamma, self.strength, self.shift = steps, gamma, strength, shift
        self.eta, self.eta_start, self.eta_stop = eta, eta_start, eta_stop
        self.inversion_schedule = inversion_schedule
        # reference get_timesteps: t_start = int(max(N - min(N * strength, N), 0))
        self.skipped = int(max(steps - min(steps * strength, steps), 0))
        if self.skipped >= steps:
            raise ConfigError(f"{strength} leaves none of the {steps} steps", field="strength")
        run = steps - self.skipped
        if observe is not None:
            if len(observe) == 0:
                raise ConfigError("must name at least one denoising step (None = all)", field="observe")
            bad = [i for i in observe if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < run]
            if bad:
                raise ConfigError(f"must hold denoising step indices in [0, {run}), got {bad}", field="observe")
        self.observe = observe

    def schedule(self, context: TrajectoryContext) -> list[float]:
        """The descending noise levels both passes use: `steps` levels from 1 (shifted by the
        backbone's shift), a terminal 0, the first ones cut by `strength`. A denoising pass runs
        len - 1 steps."""
        n = self.steps
        sigmas = [1.0 - i * (1.0 - 1.0 / n) / (n - 1) for i in range(n)] if n > 1 else [1.0]
        if self.shift:
            sigmas = [context.shifted(s) for s in sigmas]
        return (sigmas + [0.0])[self.skipped :]

    def invert(self, x0: torch.Tensor, generator: torch.Generator, context: TrajectoryContext) -> torch.Tensor:
        """Algorithm 1, the controlled forward ODE: the inverted latent (float32) of x0.

        dY = [u(Y, t) + gamma (u(Y, t | y1) - u(Y, t))] dt with u(Y, t | y1) = (y1 - Y) / (1 - t) and
        y1 = `standard_noise(x0, generator)`, the generator's first draw."""
        sigmas = self.schedule(context)
        y1 = standard_noise(x0, generator)
        if self.inversion_schedule == "reference":
            n = len(sigmas)  # the reference's N counts the terminal 0
            walk = [(i / n, sigmas[i] - sigmas[i + 1]) for i in range(n - 1)]
        else:
            up = sigmas[::-1]
            walk = [(up[i], up[i + 1] - up[i]) for i in range(len(up) - 1)]
        y = x0.float()
        for t, dt in walk:
            u = context.velocity(y.to(x0.dtype), t).float()
            u_cond = (y1 - y) / (1.0 - t)
            y = y + (u + self.gamma * (u_cond - u)) * dt
        return y

    def denoise(self, x_T: torch.Tensor, x0: torch.Tensor, context: TrajectoryContext) -> States:
        """Algorithm 2, the controlled reverse ODE from x_T: yields the observed (x, sigma) states
        (`Trajectory.states` protocol) and returns the final latent (float32).

        v = -DiT(x, sigma); v_hat = v + eta_i ((x0 - x) / sigma - v), eta_i = eta inside the
        [eta_start, eta_stop) window of steps, else 0; x <- x + v_hat (sigma_i - sigma_{i+1})."""
        sigmas = self.schedule(context)
        start = int(self.eta_start * self.steps)  # the reference converts with the full step count
        stop = min(int(self.eta_stop * self.steps), self.steps)
        observed = set(range(len(sigmas) - 1) if self.observe is None else self.observe)
        y0 = x0.float()
        x = x_T.float()
        for i in range(len(sigmas) - 1):
            sigma = sigmas[i]
            state = x.to(x0.dtype)
            velocity = (yield state, sigma) if i in observed else None
            if velocity is None:  # not observed, or driven by plain iteration
                velocity = context.velocity(state, sigma)
            v = -velocity.float()
            if start <= i < stop:
                v = v + self.eta * ((y0 - x) / sigma - v)
            x = x + v * (sigma - sigmas[i + 1])
        return x

    def reconstruct(self, x0: torch.Tensor, generator: torch.Generator, context: TrajectoryContext) -> torch.Tensor:
        """Invert then denoise x0 with no observer: the final latent (float32), for tests and analysis."""
        return drive(self.denoise(self.invert(x0, generator, context), x0, context), context.velocity)

    def states(self, x0, generator, context):
        return (yield from self.denoise(self.invert(x0, generator, context), x0, context))

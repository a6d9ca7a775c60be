"""Optimizer-derived Lyapunov proxy (Appendix A, Algorithm 1) with ``torch.func.jvp``.

One training step is a map ``F_t: (theta, s) -> (theta', s')`` of the parameters and optimizer
state on batch ``D_t``. Algorithm 1 pushes a unit tangent ``v`` through the Jacobians of these
maps, ``w = J_t v``, records ``log alpha_t = log max(||w||, 1e-12)``, renormalises
``v = w / alpha_t`` and averages the logs over a horizon: a finite-time estimate of the top
Lyapunov exponent of training. Positive means nearby trajectories separate (chaotic, divergent
optimisation).

``J_t v`` is one forward-over-reverse product: :func:`torch.func.jvp` of the functional update
``F_t`` (which calls :func:`torch.func.grad` of the loss), so no Hessian is formed and the model is
never touched: parameters are passed to :func:`torch.func.functional_call`, BatchNorm running
statistics are not updated, ``.grad`` is not written and the global RNG is restored (dropout
masks drawn inside the probe do not shift the training's random stream).

Two ways to use it:

* during training (the factory): :class:`LyapunovProbe` keeps the tangent between steps; call
  ``probe.step(batch)`` right before ``optimizer.step()`` and log the returned ``log alpha_t`` as
  the run's per-step ``lyapunov`` value. The instability labeler averages windows of ``H`` of them.
  The probe must run on *consecutive* steps for the product of Jacobians to be the trajectory's.
* post hoc: :func:`lyapunov_exponent` runs Algorithm 1 from the current state over a fixed batch
  sequence, evolving a functional copy of (parameters, optimizer state).

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(3, 1, bias=False)
    >>> X = torch.eye(3) * 3 ** 0.5; y = torch.zeros(3, 1)
    >>> loss_fn = lambda f, b: ((f(b[0]) - b[1]) ** 2).mean()   # Hessian = 2 I
    >>> est = lyapunov_exponent(model, loss_fn, [(X, y)] * 20,
    ...                         update=FunctionalOptimizer.sgd(lr=1.5))
    >>> round(est.lambda_hat, 3)  # |1 - 1.5 * 2| = 2 -> log 2
    0.693
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

__all__ = [
    "FunctionalOptimizer",
    "LogGrowth",
    "LyapunovEstimate",
    "LyapunovProbe",
    "jvp_log_growth",
    "lyapunov_exponent",
]

Params = dict[str, Tensor]
State = dict[str, dict[str, Tensor]]
#: ``loss_fn(forward, batch) -> scalar``; ``forward(*inputs)`` runs the model functionally.
LossFn = Callable[[Callable[..., Any], Any], Tensor]

_ALPHA_MIN = 1e-12  # Algorithm 1, line 5

_SGD_DEFAULTS = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                 "nesterov": False, "maximize": False}
_ADAM_DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                  "amsgrad": False, "maximize": False}
_RMSPROP_DEFAULTS = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                     "centered": False, "maximize": False}
_NADAM_DEFAULTS = {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                   "momentum_decay": 4e-3, "decoupled_weight_decay": False, "maximize": False}
#: optimizer state tensors each rule carries (and differentiates through)
_STATE_KEYS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "rmsprop": ("square_avg", "momentum_buffer", "grad_avg"), "nadam": ("exp_avg", "exp_avg_sq")}
_DEFAULTS = {"sgd": _SGD_DEFAULTS, "gd": _SGD_DEFAULTS, "adam": _ADAM_DEFAULTS,
             "adamw": _ADAM_DEFAULTS, "rmsprop": _RMSPROP_DEFAULTS, "nadam": _NADAM_DEFAULTS}


def _sqrt(x: Tensor) -> Tensor:
    # clamp: sqrt has an infinite slope at 0 (dead units); the primal is unchanged at float
    # precision because eps dominates there.
    return torch.sqrt(x.clamp_min(1e-30))


def _adam_moments(state: dict[str, Tensor], g: Tensor, b1: float, b2: float
                  ) -> tuple[Tensor, Tensor]:
    """Adam's (and NAdam's) first and second moments after gradient ``g``; missing state is the
    zero initialisation of torch's first step."""
    m = b1 * state["exp_avg"] + (1 - b1) * g if "exp_avg" in state else (1 - b1) * g
    gg = (1 - b2) * g * g
    v = b2 * state["exp_avg_sq"] + gg if "exp_avg_sq" in state else gg
    return m, v


def _nadam_mu(beta1: float, momentum_decay: float, t: int) -> float:
    """NAdam's momentum schedule ``mu_t`` (Dozat 2016, as in ``torch.optim.NAdam``)."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


@dataclass
class FunctionalOptimizer:
    """A pure optimizer step: ``(params, grads, state) -> (params', state')``.

    Follows PyTorch's SGD / Adam / AdamW / RMSprop / NAdam update equations so that
    ``torch.func.jvp`` can differentiate the *full* update rule, optimizer state included.
    ``hparams`` maps parameter names to their param-group settings (``default`` covers unnamed
    ones); ``steps`` holds the number of completed steps per parameter (Adam's bias correction).

    Example:
        >>> opt = FunctionalOptimizer.sgd(lr=0.1)
        >>> p, s = opt({"w": torch.ones(2)}, {"w": torch.ones(2)}, {})
        >>> [round(x, 4) for x in p["w"].tolist()]
        [0.9, 0.9]
    """

    kind: str = "sgd"
    default: dict[str, Any] = field(default_factory=lambda: dict(_SGD_DEFAULTS))
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    offset: int = 0

    @classmethod
    def sgd(cls, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
            dampening: float = 0.0, nesterov: bool = False) -> FunctionalOptimizer:
        """Plain / momentum SGD with uniform hyperparameters.

        Example:
            >>> FunctionalOptimizer.sgd(lr=0.5).default["lr"]
            0.5
        """
        return cls("sgd", {**_SGD_DEFAULTS, "lr": lr, "momentum": momentum,
                           "weight_decay": weight_decay, "dampening": dampening,
                           "nesterov": nesterov})

    @classmethod
    def adam(cls, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
             weight_decay: float = 0.0, decoupled: bool = False) -> FunctionalOptimizer:
        """Adam (``decoupled=True``: AdamW) with uniform hyperparameters.

        Example:
            >>> FunctionalOptimizer.adam(lr=1e-3, decoupled=True).kind
            'adamw'
        """
        return cls("adamw" if decoupled else "adam",
                   {**_ADAM_DEFAULTS, "lr": lr, "betas": betas, "eps": eps,
                    "weight_decay": weight_decay})

    @classmethod
    def from_optimizer(
        cls, optimizer: torch.optim.Optimizer, model: nn.Module
    ) -> tuple[FunctionalOptimizer, State]:
        """Snapshot a live optimizer: its update rule and a detached copy-free view of its state.

        SGD, Adam, AdamW, RMSprop and NAdam are reproduced exactly; any other optimizer (Lion,
        Adafactor) falls back to plain gradient descent with its group learning rate
        (``kind="gd"``), which ignores its preconditioning — flagged so callers can tell.

        Example:
            >>> m = torch.nn.Linear(2, 1)
            >>> f, state = FunctionalOptimizer.from_optimizer(torch.optim.AdamW(m.parameters()), m)
            >>> f.kind, state
            ('adamw', {})
        """
        if isinstance(optimizer, torch.optim.AdamW):
            kind = "adamw"
        elif isinstance(optimizer, torch.optim.Adam):
            # torch >= 2.x: Adam(decoupled_weight_decay=True) is AdamW
            kind = "adamw" if optimizer.defaults.get("decoupled_weight_decay") else "adam"
        elif isinstance(optimizer, torch.optim.SGD):
            kind = "sgd"
        elif isinstance(optimizer, torch.optim.RMSprop):
            kind = "rmsprop"
        elif isinstance(optimizer, torch.optim.NAdam):
            kind = "nadam"
        else:
            kind = "gd"
        names = {id(p): n for n, p in model.named_parameters()}
        hp: dict[str, dict[str, Any]] = {}
        steps: dict[str, int] = {}
        state: State = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = names.get(id(p))
                if name is None:
                    continue
                hp[name] = {k: v for k, v in group.items() if k != "params"}
                st = optimizer.state.get(p, {})
                if "step" in st:
                    steps[name] = int(float(st["step"]))
                tensors = {k: st[k].detach() for k in _STATE_KEYS.get(kind, ())
                           if isinstance(st.get(k), Tensor)}
                if tensors:
                    state[name] = tensors
        return cls(kind, {**_DEFAULTS[kind], **optimizer.defaults}, hp, steps), state

    def advanced(self) -> FunctionalOptimizer:
        """The same rule one step later (Adam's bias correction moves on).

        Example:
            >>> FunctionalOptimizer.adam(1e-3).advanced().advanced().step_of("w")
            2
        """
        return replace(self, offset=self.offset + 1)

    def step_of(self, name: str) -> int:
        """Completed steps of one parameter (its optimizer-state count plus ``offset``)."""
        return self.steps.get(name, 0) + self.offset

    def _hp(self, name: str) -> dict[str, Any]:
        return {**self.default, **self.hparams.get(name, {})}

    def __call__(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        new_p: Params = {}
        new_s: State = {}
        for name, p in params.items():
            h, g, st = self._hp(name), grads[name], state.get(name, {})
            if h.get("maximize"):
                g = -g
            lr, wd = float(h["lr"]), float(h.get("weight_decay") or 0.0)
            decoupled = self.kind == "adamw" or (self.kind == "nadam"
                                                 and bool(h.get("decoupled_weight_decay")))
            if wd and decoupled:
                p = p * (1 - lr * wd)
            elif wd:  # L2: the decay joins the gradient
                g = g + wd * p
            if self.kind in ("adam", "adamw"):
                b1, b2 = h["betas"]
                t = self.step_of(name) + 1
                m, v = _adam_moments(st, g, b1, b2)
                s_new = {"exp_avg": m, "exp_avg_sq": v}
                if h.get("amsgrad"):
                    v = torch.maximum(st["max_exp_avg_sq"], v) if "max_exp_avg_sq" in st else v
                    s_new["max_exp_avg_sq"] = v
                denom = _sqrt(v) / math.sqrt(1 - b2**t) + h["eps"]
                new_p[name] = p - (lr / (1 - b1**t)) * m / denom
                new_s[name] = s_new
            elif self.kind == "rmsprop":
                alpha, mom = float(h["alpha"]), float(h.get("momentum") or 0.0)
                sq = alpha * st["square_avg"] + (1 - alpha) * g * g if "square_avg" in st \
                    else (1 - alpha) * g * g
                s_new = {"square_avg": sq}
                if h.get("centered"):
                    ga = st.get("grad_avg")
                    ga = (1 - alpha) * g if ga is None else alpha * ga + (1 - alpha) * g
                    s_new["grad_avg"] = ga
                    avg = _sqrt(sq - ga * ga) + h["eps"]
                else:
                    avg = _sqrt(sq) + h["eps"]
                if mom:
                    buf = st.get("momentum_buffer")
                    buf = g / avg if buf is None else mom * buf + g / avg
                    s_new["momentum_buffer"] = buf
                    new_p[name] = p - lr * buf
                else:
                    new_p[name] = p - lr * g / avg
                new_s[name] = s_new
            elif self.kind == "nadam":
                b1, b2 = h["betas"]
                md, t = float(h["momentum_decay"]), self.step_of(name) + 1
                mu, mu_next = _nadam_mu(b1, md, t), _nadam_mu(b1, md, t + 1)
                mu_product = math.prod(_nadam_mu(b1, md, k) for k in range(1, t + 1))
                m, v = _adam_moments(st, g, b1, b2)
                denom = _sqrt(v) / math.sqrt(1 - b2**t) + h["eps"]
                new_p[name] = (p - lr * (1 - mu) / (1 - mu_product) * g / denom
                               - lr * mu_next / (1 - mu_product * mu_next) * m / denom)
                new_s[name] = {"exp_avg": m, "exp_avg_sq": v}
            else:  # "sgd" and the "gd" fallback
                d = g
                mom = float(h.get("momentum") or 0.0) if self.kind == "sgd" else 0.0
                if mom:
                    buf = st.get("momentum_buffer")
                    # torch initialises the buffer with the first (undampened) direction
                    buf = d if buf is None else mom * buf + (1 - float(h.get("dampening", 0.0))) * d
                    new_s[name] = {"momentum_buffer": buf}
                    d = d + mom * buf if h.get("nesterov") else buf
                new_p[name] = p - lr * d
        return new_p, new_s


class LogGrowth(NamedTuple):
    """One step of Algorithm 1: ``log alpha``, the renormalised tangent and ``F(state)``."""

    log_alpha: float
    tangent: tuple[Params, State]
    params: Params
    state: State


class LyapunovEstimate(NamedTuple):
    """Algorithm 1's output: ``lambda_hat`` and the per-step ``log alpha`` for bootstrapping."""

    lambda_hat: float
    log_alphas: list[float]


@contextlib.contextmanager
def _no_running_stats(model: nn.Module) -> Iterator[None]:
    """Use batch statistics without updating BatchNorm buffers (in-place updates break jvp)."""
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.training and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def _rng_guard(params: Params) -> contextlib.AbstractContextManager[Any]:
    devices = sorted({p.device.index or 0 for p in params.values() if p.device.type == "cuda"})
    return torch.random.fork_rng(devices=devices)


def _trainable(model: nn.Module) -> Params:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _norm(tree: tuple[Params, State]) -> Tensor:
    leaves = list(tree[0].values()) + [t for s in tree[1].values() for t in s.values()]
    return torch.sqrt(sum((x.detach().double() ** 2).sum() for x in leaves))


def _scale(tree: tuple[Params, State], c: float) -> tuple[Params, State]:
    return ({k: v * c for k, v in tree[0].items()},
            {k: {j: t * c for j, t in s.items()} for k, s in tree[1].items()})


def random_tangent(params: Params, state: State, seed: int = 0) -> tuple[Params, State]:
    """A random unit vector over parameters and optimizer state (Algorithm 1, line 2).

    Example:
        >>> v = random_tangent({"w": torch.zeros(3)}, {})
        >>> round(float(_norm(v)), 6)
        1.0
    """
    gen = torch.Generator().manual_seed(seed)
    vp = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
          for k, p in params.items()}
    vs = {k: {j: torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
              for j, t in s.items()} for k, s in state.items()}
    return _scale((vp, vs), 1.0 / float(_norm((vp, vs))))


def _align(tangent: tuple[Params, State], params: Params, state: State) -> tuple[Params, State]:
    """Match a carried tangent to this step's pytree (state buffers appear after step 1)."""
    vp = {k: tangent[0].get(k, torch.zeros_like(p)) for k, p in params.items()}
    vs = {k: {j: tangent[1].get(k, {}).get(j, torch.zeros_like(t)) for j, t in s.items()}
          for k, s in state.items()}
    return vp, vs


def jvp_log_growth(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    tangent: tuple[Params, State] | None,
    update: FunctionalOptimizer,
    params: Params | None = None,
    state: State | None = None,
    seed: int = 0,
    include_state: bool = True,
) -> LogGrowth:
    """One JVP of the full update rule: ``w = J v`` and ``log alpha = log ||w||``.

    Args:
        model: the network; used functionally, never modified.
        loss_fn: ``loss_fn(forward, batch) -> scalar``, e.g.
            ``lambda f, b: F.cross_entropy(f(b[0]), b[1])``.
        batch: the mini-batch ``D_t`` of this step.
        tangent: current unit tangent ``(params_part, state_part)``; ``None`` draws one.
        update: the step's update rule (:meth:`FunctionalOptimizer.from_optimizer` for a live one).
        params: parameters to linearise at (default: the model's trainable parameters).
        state: optimizer state tensors (default: none, i.e. a stateless rule).
        seed: seed of a freshly drawn tangent.
        include_state: perturb and measure the optimizer state too (the full update rule of
            Algorithm 1); ``False`` holds the state's perturbation at zero and measures only
            the parameter part.

    Returns:
        :class:`LogGrowth` with ``log alpha`` (``+inf`` when the product overflowed), the
        renormalised tangent (a fresh random one after an overflow) and ``F(params, state)``.

    Example:
        >>> m = torch.nn.Linear(2, 1, bias=False)
        >>> lf = lambda f, b: (f(b) ** 2).sum() / 2  # Hessian = x x^T = diag(1, 0) for x = e1
        >>> v = ({"weight": torch.tensor([[1.0, 0.0]])}, {})
        >>> g = jvp_log_growth(m, lf, torch.tensor([[1.0, 0.0]]), v, FunctionalOptimizer.sgd(0.5))
        >>> round(g.log_alpha, 4)  # (1 - 0.5) along e1
        -0.6931
    """
    params = _trainable(model) if params is None else params
    state = {} if state is None else state
    v = random_tangent(params, state if include_state else {}, seed) if tangent is None else tangent
    v = _align(v, params, state)
    if not include_state:
        v = (v[0], {k: {j: torch.zeros_like(t) for j, t in s.items()} for k, s in v[1].items()})

    def transition(p: Params, s: State) -> tuple[Params, State]:
        def loss_of(q: Params) -> Tensor:
            return loss_fn(lambda *a, **kw: functional_call(model, q, a, kw), batch)
        return update(p, grad(loss_of)(p), s)

    with _rng_guard(params), _no_running_stats(model):
        (new_p, new_s), w = jvp(transition, (params, state), v)
    if not include_state:
        w = (w[0], {})
    alpha = float(_norm(w))
    new_p = {k: t.detach() for k, t in new_p.items()}
    new_s = {k: {j: t.detach() for j, t in s.items()} for k, s in new_s.items()}
    if not math.isfinite(alpha):
        # Diverged: report the blow-up and restart the direction so later steps stay defined.
        return LogGrowth(math.inf, random_tangent(new_p, new_s, seed + 1), new_p, new_s)
    alpha = max(alpha, _ALPHA_MIN)
    w = _scale(({k: t.detach() for k, t in w[0].items()},
                {k: {j: t.detach() for j, t in s.items()} for k, s in w[1].items()}), 1.0 / alpha)
    return LogGrowth(math.log(alpha), w, new_p, new_s)


def lyapunov_exponent(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    optimizer: torch.optim.Optimizer | None = None,
    update: FunctionalOptimizer | None = None,
    include_state: bool = True,
    seed: int = 0,
) -> LyapunovEstimate:
    """Algorithm 1 from the current model/optimizer state over a fixed batch sequence.

    Evolves a functional copy of (parameters, optimizer state) through ``F_i`` for each batch
    (horizon ``H = len(batches)``) while pushing the tangent; the model and optimizer are left
    exactly as they were.

    Args:
        model: network at ``Theta_t``.
        loss_fn: ``loss_fn(forward, batch) -> scalar``.
        batches: ``D_0 .. D_{H-1}``.
        optimizer: live optimizer whose rule and state define ``F`` (or pass ``update``).
        update: explicit update rule (stateless unless ``optimizer`` supplies state).
        include_state: propagate the tangent through optimizer state too (the full update rule);
            ``False`` restricts it to parameters, holding state fixed.
        seed: seed of the initial random unit tangent.

    Example:
        >>> m = torch.nn.Linear(2, 1, bias=False)
        >>> lf = lambda f, b: (f(b) ** 2).mean()
        >>> est = lyapunov_exponent(m, lf, [torch.randn(8, 2)] * 5,
        ...                         update=FunctionalOptimizer.sgd(0.01))
        >>> len(est.log_alphas), est.lambda_hat < 0
        (5, True)
    """
    if optimizer is not None:
        rule, state = FunctionalOptimizer.from_optimizer(optimizer, model)
        rule = update or rule
    elif update is not None:
        rule, state = update, {}
    else:
        raise ValueError("pass an optimizer or an update rule")
    params = _trainable(model)
    tangent: tuple[Params, State] | None = None
    logs: list[float] = []
    for batch in batches:
        out = jvp_log_growth(model, loss_fn, batch, tangent, rule, params, state, seed,
                             include_state)
        logs.append(out.log_alpha)
        params, state, tangent = out.params, out.state, out.tangent
        rule = rule.advanced()
    return LyapunovEstimate(sum(logs) / max(len(logs), 1), logs)


class LyapunovProbe:
    """Per-step Lyapunov proxy along the live training trajectory (for the factory).

    Call :meth:`step` with the current batch right before ``optimizer.step()``; it linearises
    exactly the update the optimizer is about to make and returns ``log alpha_t``. The tangent is
    carried between calls, so consecutive calls are Algorithm 1 along the real trajectory; log
    the value per step (NaN on steps where the probe is skipped) as the run's ``lyapunov`` column.

    Args:
        model: the network being trained (never modified).
        loss_fn: ``loss_fn(forward, batch) -> scalar``, the training loss.
        optimizer: the live optimizer (its rule and state define ``F_t``).
        update: an explicit rule instead of ``optimizer``.
        include_state: propagate through optimizer state as well (default, the full rule).
        seed: seed of the initial tangent.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> m = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        >>> ce = lambda f, b: torch.nn.functional.cross_entropy(f(b[0]), b[1])
        >>> probe = LyapunovProbe(m, ce, opt)
        >>> x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        >>> for _ in range(3):
        ...     la = probe.step((x, y))
        ...     opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
        >>> isinstance(la, float)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer | None = None,
        update: FunctionalOptimizer | None = None,
        include_state: bool = True,
        seed: int = 0,
    ) -> None:
        if optimizer is None and update is None:
            raise ValueError("pass an optimizer or an update rule")
        self.model, self.loss_fn, self.optimizer, self.update = model, loss_fn, optimizer, update
        self.include_state, self.seed = include_state, seed
        self.tangent: tuple[Params, State] | None = None
        self.history: list[float] = []

    def reset(self) -> None:
        """Forget the tangent (e.g. after skipping steps, which breaks the Jacobian product)."""
        self.tangent = None

    def step(self, batch: Any) -> float:
        """``log alpha_t`` of the update about to be applied on ``batch``."""
        if self.optimizer is not None:
            rule, state = FunctionalOptimizer.from_optimizer(self.optimizer, self.model)
            rule = self.update or rule
        else:
            rule, state = self.update, {}  # type: ignore[assignment]
        out = jvp_log_growth(self.model, self.loss_fn, batch, self.tangent, rule,
                             state=state, seed=self.seed, include_state=self.include_state)
        self.tangent = out.tangent
        self.history.append(out.log_alpha)
        return out.log_alpha

    def estimate(self, horizon: int | None = None) -> LyapunovEstimate:
        """``lambda_hat`` over the last ``horizon`` steps (all steps by default).

        Example:
            >>> p = LyapunovProbe(torch.nn.Linear(1, 1), lambda f, b: f(b).sum(),
            ...                   update=FunctionalOptimizer.sgd(0.1))
            >>> p.history = [0.1, 0.3]
            >>> round(p.estimate().lambda_hat, 3)
            0.2
        """
        logs = self.history[-horizon:] if horizon else list(self.history)
        return LyapunovEstimate(sum(logs) / max(len(logs), 1), logs)

"""The MEND editor network: turns an edit's gradient factors (u, d) into update factors.

One :class:`GradientTransform` per distinct edited-weight shape (in, out), shared by the layers of
that shape, each layer ("mode") with its own scale and shift. Inputs are ``concat(u, d)``
normalised by running statistics (Welford, updated in training, frozen in eval). The body is a
stack of residual low-rank blocks ``h <- h + (A relu(B h + b)) * scale[mode] + shift[mode]`` with
``A`` zero-initialised, so an untrained network is the identity and an untrained editor makes one
plain gradient step. Step sizes are learned per edited module as ``lr = exp(log_lr)``; updates go
downhill: ``dW = -lr * sum_t d~_t u~_t^T``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

EDIT_FROM_CHOICES = ("wrapped", "wrapped+plain")


@dataclass(frozen=True)
class EditorConfig:
    """Hyper-parameters of the editor network.

    Attributes:
        rank: width of the low-rank residual blocks.
        n_blocks: number of residual blocks per gradient transform.
        init_lr: initial step size of every edited module.
        normalize: normalise (u, d) by running statistics (off = raw gradient factors).
        norm_eps: floor added to running standard deviations.
        key_on: which tokens of the edit input build the update: ``"all"`` (classic MEND) or
            ``"subject"`` (the subject's tokens, where the request names a subject; see
            :mod:`instructedit.editing.keying`).
        precondition: ``"none"``, or ``"covariance"``: each transformed key ``u~`` is whitened by
            the inverse key covariance of its module (as ROME's ``C^-1 k``) and rescaled so that
            its response to ``u~`` itself is unchanged; generic inputs then barely trigger the
            update (see :mod:`instructedit.editing.preconditioning`; down-projections only).
        edit_from: ``"wrapped"`` (the update comes from the instruction-wrapped edit input) or
            ``"wrapped+plain"`` (the wrapped input and the prompt as typed both contribute, so the
            update is keyed on what a person's sentence looks like inside the model too; the two
            coincide for editors without instructions, which then count it once).
    """

    rank: int = 256
    n_blocks: int = 2
    init_lr: float = 1e-3
    normalize: bool = True
    norm_eps: float = 1e-6
    key_on: str = "all"
    precondition: str = "none"
    edit_from: str = "wrapped"

    def __post_init__(self) -> None:
        if self.key_on not in ("all", "subject"):
            raise ValueError(f"key_on must be 'all' or 'subject', got {self.key_on!r}")
        if self.precondition not in ("none", "covariance"):
            raise ValueError(f"precondition must be 'none' or 'covariance', got {self.precondition!r}")
        if self.edit_from not in EDIT_FROM_CHOICES:
            raise ValueError(f"edit_from must be one of {EDIT_FROM_CHOICES}, got {self.edit_from!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class RunningNorm(nn.Module):
    """Per-feature running mean and standard deviation (Welford), frozen outside training."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the rows of ``x`` (n, dim) into the running statistics."""
        x = x.detach().double()
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta ** 2 * self.count * n / total
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.count < 2:
            return x
        std = (self.m2 / (self.count - 1)).sqrt().float() + self.eps
        return (x - self.mean.float()) / std


class ResidualLowRankBlock(nn.Module):
    """h + (A relu(B h + b)) * scale[mode] + shift[mode]; A starts at zero (identity)."""

    def __init__(self, dim: int, rank: int, n_modes: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.up.weight)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        self.scale = nn.Parameter(torch.ones(n_modes, dim))
        self.shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, h: torch.Tensor, mode: int) -> torch.Tensor:
        return h + self.up(torch.relu(self.down(h))) * self.scale[mode] + self.shift[mode]


class GradientTransform(nn.Module):
    """The editor for all edited modules of one weight shape (in, out)."""

    def __init__(self, in_dim: int, out_dim: int, n_modes: int, config: EditorConfig) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        dim = in_dim + out_dim
        self.norm = RunningNorm(dim, config.norm_eps)
        self.normalize = config.normalize
        self.blocks = nn.ModuleList(ResidualLowRankBlock(dim, config.rank, n_modes)
                                    for _ in range(config.n_blocks))

    def forward(self, u: torch.Tensor, d: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform rows of (u, d); updates the running statistics in training mode."""
        h = torch.cat([u.float(), d.float()], dim=-1)
        if self.normalize:
            if self.training:
                self.norm.update(h)
            h = self.norm(h)
        for block in self.blocks:
            h = block(h, mode)
        return h[..., : self.in_dim], h[..., self.in_dim:]


def whiten(u: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Rows ``u_i`` -> ``C^-1 u_i * |u_i|^2 / (u_i^T C^-1 u_i)``: the same response to ``u_i``
    itself (``x = u_i`` gives ``x . u'_i = |u_i|^2``), far less to directions common in the keys."""
    white = u @ inverse
    scale = (u * u).sum(-1) / (u * white).sum(-1).clamp_min(1e-12)
    return white * scale.unsqueeze(-1)


def shape_key(in_dim: int, out_dim: int) -> str:
    return f"{in_dim}x{out_dim}"


class MendNetwork(nn.Module):
    """All gradient transforms and step sizes for a fixed list of edited modules."""

    def __init__(self, module_shapes: dict[str, tuple[int, int]], config: EditorConfig) -> None:
        super().__init__()
        self.config = config
        self.module_names = list(module_shapes)
        self.module_shapes = dict(module_shapes)
        modes: dict[str, list[str]] = {}
        for name, (i, o) in module_shapes.items():
            modes.setdefault(shape_key(i, o), []).append(name)
        self.mode_of = {name: (key, members.index(name))
                        for key, members in modes.items() for name in members}
        self.transforms = nn.ModuleDict({
            key: GradientTransform(*module_shapes[members[0]], len(members), config)
            for key, members in modes.items()})
        self.log_lr = nn.Parameter(torch.full((len(self.module_names),), math.log(config.init_lr)))
        self.preconditioners: dict[str, torch.Tensor] = {}
        """Per module, the inverse key covariance (not saved: recomputed from data, see
        :mod:`instructedit.editing.preconditioning`)."""

    def step_size(self, name: str) -> torch.Tensor:
        """Signed step of module ``name`` (negative: updates go downhill)."""
        return -self.log_lr[self.module_names.index(name)].exp()

    def transform(self, name: str, u: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key, mode = self.mode_of[name]
        u_t, d_t = self.transforms[key](u, d, mode)
        inverse = self.preconditioners.get(name)
        if inverse is not None:
            u_t = whiten(u_t, inverse.to(u_t.dtype))
        return u_t, d_t

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass
class TrainingProvenance:
    """Where a trained editor came from (stored in its checkpoint config)."""

    steps: int = 0
    data: str = ""
    tasks: list[str] = field(default_factory=list)
    seed: int = 0
    wall_time_s: float = 0.0
    machine: str = ""
    command: str = ""
    validation: dict = field(default_factory=dict)

"""
Continuous skill-neuron metrics as plain tensor code (no Lightning, no file I/O), beside the predictivity of
``neuron_statistics.py``; the README's "Continuous neuron metrics" states them with formulas.

For layer l, analysed position t, unit i, activation x = a[l,t,i](x) and a per-example target y:

    correlation        r = (n·Σxy − Σx·Σy) / sqrt((n·Σx² − (Σx)²) · (n·Σy² − (Σy)²))   (Pearson; 0 when either
                       variance is 0). With the label indicator y = 1[label == c] it is the point-biserial
                       correlation; with the logit margin it is the plain Pearson correlation.
    label target       y_c = 1[label == c], one-vs-rest for every class c (binary tasks: the file keeps the class
                       whose indicator the predictivity's accuracy uses; the other class's r is its negative).
    margin target      m_c = z_c − max_{c' ≠ c} z_c', z the model's logits of its scored words (the model's own
                       evidence for class c; binary: z_1 − z_0 for c = 1). The gold label plays no part.
    activation prob.   p[l,i] = share of (example, analysed position) pairs with a > 0 (LAPE's activation
                       probability; the report's selectivity across tasks uses it).

Shapes: B batch, L layers, P analysed positions (1 for the position-free text mean), N units, K targets.

State is float64 sums (Σx, Σx², Σx·y per target, Σy, Σy²) and int64 counts, so DDP shards merge by
``all_reduce`` sums and the result is the same for every batching up to float64 rounding. Activations are
summed after subtracting a fixed ``center`` (the train-split threshold): a correlation does not change under a
shift, and the centred sums lose far less to cancellation for units that barely vary across examples.
"""

from __future__ import annotations

import torch

from lightning_modules.neuron_statistics import _as_bool_keep, _check_acts, _reduce_in_place


def label_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, C) float64 one-vs-rest indicators 1[label == c]."""
    classes = torch.arange(num_classes, device=labels.device)
    return (labels.reshape(-1, 1) == classes[None, :]).to(torch.float64)


def margin_targets(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, C) float64 margins m_c = z_c − max_{c' ≠ c} z_c' for the first ``num_classes`` scored words;
    ``logits`` (B, C') may score extra words (P1's MNLI), which count among the others."""
    z = logits.detach().to(torch.float64)  # (B, C')
    if z.shape[1] < 2:
        raise ValueError(f"a margin needs at least 2 scored words, got logits of shape {tuple(z.shape)}")
    eye = torch.eye(z.shape[1], dtype=torch.bool, device=z.device)  # (C', C')
    others = z[:, None, :].masked_fill(eye[None], float("-inf")).amax(dim=2)  # (B, C') best other word
    return (z - others)[:, :num_classes]


def correlation_from_sums(n, sx, sxx, sxy, sy, syy) -> torch.Tensor:
    """Pearson r from float64 sums; sx, sxx: (L, P, N); sxy: (K, L, P, N); sy, syy: (K,). 0 where a variance
    is 0 (a unit or a target that never changes); float32 (K, L, P, N)."""
    shape = (-1,) + (1,) * sx.ndim
    var_x = (n * sxx - sx * sx).clamp(min=0)  # n² · variance of x, (L, P, N)
    var_y = (n * syy - sy * sy).clamp(min=0).reshape(shape)  # (K, 1, 1, 1)
    cov = n * sxy - sx[None] * sy.reshape(shape)  # (K, L, P, N)
    denominator = (var_x[None] * var_y).sqrt()
    r = torch.where(denominator > 0, cov / denominator.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return r.clamp(-1.0, 1.0).to(torch.float32)


class CorrelationAccumulator:
    """Streaming correlation of every unit's activation with K per-example targets, and its activation count.

    ``update(acts, targets, layer=)`` per layer; the example count and the target sums advance with the last
    layer (every layer must get the same rows), as in ``neuron_statistics.py``.
    """

    def __init__(self, center: torch.Tensor, num_targets: int):
        if center.ndim != 3:
            raise ValueError(f"center must have shape (L, P, N), got {tuple(center.shape)}")
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        self.shape = tuple(center.shape)
        self.num_targets = num_targets
        device = center.device
        self.center = center.detach().to(torch.float64)  # (L, P, N)
        zeros = dict(dtype=torch.float64, device=device)
        self.sx = torch.zeros(self.shape, **zeros)  # (L, P, N) Σ (x − center)
        self.sxx = torch.zeros(self.shape, **zeros)  # (L, P, N) Σ (x − center)²
        self.sxy = torch.zeros((num_targets, *self.shape), **zeros)  # (K, L, P, N) Σ (x − center)·y
        self.sy = torch.zeros(num_targets, **zeros)  # (K,)
        self.syy = torch.zeros(num_targets, **zeros)  # (K,)
        self.positive = torch.zeros(self.shape[0], self.shape[2], dtype=torch.int64, device=device)  # (L, N) a > 0
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # examples

    @torch.no_grad()
    def update(self, acts, targets, *, layer, keep=None):
        """acts: layer ``layer``'s (B, P, N), any float dtype; targets: (B, K) floats; keep: optional (B,) bool."""
        _check_acts(acts, self.shape, layer)
        device = self.sx.device
        B = acts.shape[0]
        targets = torch.as_tensor(targets, device=device).to(torch.float64)
        if targets.shape != (B, self.num_targets):
            raise ValueError(f"targets must have shape ({B}, {self.num_targets}), got {tuple(targets.shape)}")
        keep = _as_bool_keep(keep, B, device)  # (B,)
        acts, targets = acts.to(device)[keep], targets[keep]  # (B', P, N), (B', K)
        self.positive[layer] += (acts > 0).sum(dim=(0, 1))  # (N,)
        x = acts.to(torch.float64) - self.center[layer]  # (B', P, N)
        self.sx[layer] += x.sum(dim=0)
        self.sxx[layer] += (x * x).sum(dim=0)
        flat = x.reshape(x.shape[0], x.shape[1] * x.shape[2])  # (B', P·N); explicit: B' may be 0
        self.sxy[:, layer] += (targets.T @ flat).reshape(self.num_targets, *self.shape[1:])
        if layer == self.shape[0] - 1:
            self.sy += targets.sum(dim=0)
            self.syy += (targets * targets).sum(dim=0)
            self.count += targets.shape[0]

    def correlation(self) -> torch.Tensor:
        """(K, L, P, N) float32 Pearson r of each unit with each target."""
        if int(self.count) == 0:
            raise ValueError("CorrelationAccumulator: no examples were counted; call update() first")
        return correlation_from_sums(int(self.count), self.sx, self.sxx, self.sxy, self.sy, self.syy)

    def activation_probability(self) -> torch.Tensor:
        """(L, N) float32 share of (example, position) pairs with a > 0."""
        if int(self.count) == 0:
            raise ValueError("CorrelationAccumulator: no examples were counted; call update() first")
        return (self.positive.to(torch.float64) / (int(self.count) * self.shape[1])).to(torch.float32)

    # --- state / distributed -------------------------------------------------

    def state(self):
        """The tensors that sum across shards (float64 sums, int64 counts); the center is the same on every rank."""
        return {"sx": self.sx, "sxx": self.sxx, "sxy": self.sxy, "sy": self.sy, "syy": self.syy,
                "positive": self.positive, "count": self.count}

    def all_reduce(self, reduce_fn):
        """Sum the state across processes (``torch.distributed.all_reduce`` or a function returning the sum)."""
        for tensor in self.state().values():
            _reduce_in_place(tensor, reduce_fn)
        return self


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """(..., N) float64 ranks 1..N along the last axis, ties at their average rank."""
    values = values.to(torch.float64)
    order = values.argsort(dim=-1, stable=True)
    sorted_values = values.gather(-1, order)
    position = torch.arange(1, values.shape[-1] + 1, dtype=torch.float64, device=values.device).expand_as(values)
    # a tie group's average rank: the mean of the positions that share its value
    new_group = torch.ones_like(sorted_values, dtype=torch.bool)
    new_group[..., 1:] = sorted_values[..., 1:] != sorted_values[..., :-1]
    group = new_group.cumsum(dim=-1) - 1  # (..., N) group index in sorted order
    total = torch.zeros_like(position).scatter_add_(-1, group, position)
    count = torch.zeros_like(position).scatter_add_(-1, group, torch.ones_like(position))
    sorted_ranks = (total / count.clamp(min=1)).gather(-1, group)
    return torch.empty_like(sorted_ranks).scatter_(-1, order, sorted_ranks)


def spearman_per_layer(a: torch.Tensor, b: torch.Tensor) -> list[float | None]:
    """Spearman's ρ of two (L, N) score arrays, one value per layer (Pearson r of the average ranks); None for a
    layer where either side is constant (ρ undefined)."""
    ra, rb = average_ranks(a), average_ranks(b)  # (L, N)
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    denominator = ((ra * ra).sum(dim=1) * (rb * rb).sum(dim=1)).sqrt()
    rho = (ra * rb).sum(dim=1) / denominator.clamp(min=torch.finfo(torch.float64).tiny)
    return [float(r) if d > 0 else None for r, d in zip(rho.tolist(), denominator.tolist())]

"""
Skill-neuron statistics as plain tensor code (no Lightning, no file I/O).

Definitions (Wang et al. 2022 and Ackermann & Ohmer 2024 agree; the README's "Skill neurons" states them):

    activation    a[l,t,i](x)  FFN hidden value, i.e. the input of the FFN down-projection, of layer l,
                               prompt position t, unit i, for example x.
    threshold     b[l,t,i]     mean of a[l,t,i] over the TRAIN split.
    accuracy      acc[l,t,i]   fraction of evaluation examples with 1[a > b] == y
                               (strict >, binary y in {0, 1}).
    predictivity  pred         max(acc, 1 - acc).
    score         s[l,i]       max over prompt positions t of pred. Across several prompts (seeds) the
                               scores are averaged afterwards (max first, then mean): records.neuron_selection.
    skill neurons              top n% of units PER LAYER by score: records.neuron_selection.top_percent_mask().
    overlap@n%                 |topn(A) ∩ topn(B)| / |topn| per layer, mean over layers (records.neuron_selection).
    balanced predictivity      (beyond the papers) max(bacc, 1 - bacc), bacc = mean over the classes of the
                               agreement rate on that class's examples; a constant unit scores 0.5, while its
                               raw predictivity is the majority-class share: balanced_predictivity_per_class().

Shapes: B batch, L layers, P prompt positions, N FFN units per layer, C classes.

Both accumulators are streaming: memory is O(L·P·N) (thresholds) and O(C·L·P·N) (predictivity),
independent of the dataset size, and no per-example activation is kept. Under DDP each rank accumulates
its own shard, then `all_reduce(torch.distributed.all_reduce)` sums the integer / float64 state exactly;
rows duplicated by a DistributedSampler for padding are dropped with `keep=`.

Multi-class (C > 2) uses one-vs-rest: for class c, acc_c = fraction of examples with 1[a > b] == 1[y == c].
The score of a unit is then the max over classes (and positions) of pred_c. For C == 2 the one-vs-rest
accuracy of class 1 is exactly the binary accuracy, and class 0's predictivity equals class 1's.
"""


import torch


def _as_bool_keep(keep, batch_size, device):
    """(B,) bool mask of rows to count; None means all rows."""
    if keep is None:
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    keep = torch.as_tensor(keep, device=device)
    if keep.shape != (batch_size,):
        raise ValueError(f"keep must have shape ({batch_size},), got {tuple(keep.shape)}")
    return keep.to(torch.bool)


def _check_acts(acts, shape, layer):
    """One layer's activations (B, P, N) of layer ``layer`` of an (L, P, N) accumulator."""
    if not 0 <= int(layer) < shape[0]:
        raise ValueError(f"layer {layer} is out of range for {shape[0]} layers")
    if acts.ndim != 3 or tuple(acts.shape[1:]) != tuple(shape[1:]):
        raise ValueError(
            f"one layer's activations must have shape (B, P, N) = (B, {shape[1]}, {shape[2]}), "
            f"got {tuple(acts.shape)}"
        )
    if not acts.is_floating_point():
        raise ValueError(f"activations must be a floating point tensor, got {acts.dtype}")


def _reduce_in_place(tensor, reduce_fn):
    """Sum `tensor` across processes with reduce_fn, in place.

    reduce_fn may work in place and return None / a work handle (torch.distributed.all_reduce), or return
    the summed tensor (handy for tests and custom gathers).
    """
    out = reduce_fn(tensor)
    if isinstance(out, torch.Tensor) and out is not tensor:
        tensor.copy_(out)


# -----------------------------------------------------------------------------
# thresholds


class ThresholdAccumulator:
    """Running mean of activations over the train split: b[l,t,i] = mean_x a[l,t,i](x).

    The sum is kept in float64 and the count in int64, so the result does not depend on batching
    (up to float64 rounding) and DDP shards merge exactly.
    """

    def __init__(self, num_layers, num_positions, num_units, device=None):
        self.shape = (num_layers, num_positions, num_units)
        self.sum = torch.zeros(self.shape, dtype=torch.float64, device=device)  # (L, P, N)
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # () examples counted

    @torch.no_grad()
    def update(self, acts, *, layer, keep=None):
        """acts: layer ``layer``'s (B, P, N) (streamed from a forward hook), any float dtype (bf16/fp16 are
        upcast); keep: optional (B,) bool rows to count. Every layer must get the same rows; the example count
        advances with the last layer.
        """
        _check_acts(acts, self.shape, layer)
        if keep is None:
            kept = acts
        else:
            keep = _as_bool_keep(keep, acts.shape[0], acts.device)  # (B,)
            kept = acts[keep]  # (B', P, N)
        self.sum[layer] += kept.sum(dim=0, dtype=torch.float64).to(self.sum.device)  # (P, N)
        if layer == self.shape[0] - 1:
            self.count += kept.shape[0]

    def threshold(self):
        """(L, P, N) float32 mean over all counted examples."""
        if int(self.count) == 0:
            raise ValueError(
                "ThresholdAccumulator.threshold(): no examples were counted; feed the train split "
                "activations with update() before asking for thresholds"
            )
        return (self.sum / self.count).to(torch.float32)  # (L, P, N)

    # --- state / distributed -------------------------------------------------

    def state(self):
        """Dict of the tensors that sum across shards: {'sum': (L,P,N) float64, 'count': () int64}."""
        return {"sum": self.sum, "count": self.count}

    def all_reduce(self, reduce_fn):
        """Sum the state across processes: reduce_fn(tensor) must sum `tensor` over all ranks, in place
        (e.g. torch.distributed.all_reduce) or by returning the summed tensor. Call it exactly once."""
        for key in ("sum", "count"):
            _reduce_in_place(self.state()[key], reduce_fn)
        return self


# -----------------------------------------------------------------------------
# accuracy / predictivity


class PredictivityAccumulator:
    """Counts, per class, how often each neuron fires (a > b) on the evaluation split.

    State: fire_count (C, L*P*N) int64 = onehot(labels)^T @ fire, class_count (C,) int64.
    From it every accuracy follows exactly, for any threshold-vs-label rule in one-vs-rest form.
    """

    def __init__(self, threshold, num_classes=2):
        if threshold.ndim != 3:
            raise ValueError(f"threshold must have shape (L, P, N), got {tuple(threshold.shape)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.threshold = threshold.detach().to(torch.float32)  # (L, P, N)
        self.shape = tuple(threshold.shape)
        self.num_classes = num_classes
        device = threshold.device
        self.fire_count = torch.zeros(num_classes, threshold.numel(), dtype=torch.int64, device=device)  # (C, L*P*N)
        self.class_count = torch.zeros(num_classes, dtype=torch.int64, device=device)  # (C,)

    @torch.no_grad()
    def update(self, acts, labels, *, layer, keep=None):
        """acts: layer ``layer``'s (B, P, N), any float dtype; labels: (B,) ints in [0, C); keep: optional (B,)
        bool. Only kept rows are validated and counted (dropped rows may carry any label, e.g. -100); the class
        counts advance with the last layer.
        """
        _check_acts(acts, self.shape, layer)
        device = self.threshold.device
        B = acts.shape[0]
        labels = torch.as_tensor(labels, device=device).reshape(-1)  # (B,)
        if labels.shape[0] != B:
            raise ValueError(f"got {labels.shape[0]} labels for a batch of {B} activations")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
        labels = labels.to(torch.int64)
        keep = _as_bool_keep(keep, B, device)  # (B,)
        kept_labels = labels[keep]
        # (checked once per batch, at layer 0: the check syncs with the host)
        if layer == 0 and kept_labels.numel() and (kept_labels.min() < 0 or kept_labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got values in "
                f"[{int(kept_labels.min())}, {int(kept_labels.max())}]"
            )
        # bf16/fp16 are promoted to fp32 for the comparison (exact); fp64 is compared in fp64 (exact)
        fire = acts.to(device) > self.threshold[layer]  # (B, P, N) bool
        classes = torch.arange(self.num_classes, device=device)  # (C,)
        onehot = (labels[:, None] == classes[None, :]) & keep[:, None]  # (B, C), dropped rows all False
        # 0/1 products summed in fp32: exact for B < 2**24, also under TF32 matmuls
        onehot_t = onehot.T.to(torch.float32)  # (C, B)
        counts = onehot_t @ fire.reshape(B, -1).to(torch.float32)  # (C, P*N)
        per_layer = self.fire_count.view(self.num_classes, self.shape[0], -1)  # (C, L, P*N)
        per_layer[:, layer] += counts.round().to(torch.int64)
        if layer == self.shape[0] - 1:
            self.class_count += onehot.sum(dim=0)  # (C,)

    # --- results ---------------------------------------------------------------

    def _check_classes(self):
        n = int(self.class_count.sum())
        if n == 0:
            raise ValueError("PredictivityAccumulator: no evaluation examples were counted; call update() first")
        present = int((self.class_count > 0).sum())
        counts = self.class_count.tolist()
        if present < 2:
            raise ValueError(
                f"evaluation set has a single class (examples per class: {counts}); a neuron's accuracy "
                "1[a > b] == y is then only the firing rate, not predictivity. Fix: evaluate on a split "
                "that contains both labels (e.g. the full validation split, not a label-filtered or "
                "too small subset)"
            )
        if self.num_classes > 2 and present < self.num_classes:
            raise ValueError(
                f"evaluation set lacks some classes (examples per class: {counts}); one-vs-rest "
                "predictivity of an absent class is meaningless and would dominate the max over classes. "
                "Fix: evaluate on a split with every class, or set num_classes / relabel to the classes present"
            )
        return n

    def _correct_counts(self):
        """(C, L, P, N) int64: number of examples with 1[a > b] == 1[y == c] (one-vs-rest), and n."""
        n = self._check_classes()
        fire_total = self.fire_count.sum(dim=0, keepdim=True)  # (1, L*P*N)
        rest = (n - self.class_count)[:, None]  # (C, 1) examples not of class c
        # fire & y==c  +  no-fire & y!=c  =  f_c + (n - n_c) - (f_total - f_c)
        correct = 2 * self.fire_count + rest - fire_total  # (C, L*P*N)
        return correct.reshape(self.num_classes, *self.shape), n  # (C, L, P, N)

    def accuracy_per_class(self):
        """(C, L, P, N) float32 one-vs-rest accuracy of 1[a > b] == 1[y == c]."""
        correct, n = self._correct_counts()
        return (correct.to(torch.float64) / n).to(torch.float32)

    def predictivity_per_class(self):
        """(C, L, P, N) float32 max(acc_c, 1 - acc_c), computed from integer counts (exactly symmetric)."""
        correct, n = self._correct_counts()
        return (torch.maximum(correct, n - correct).to(torch.float64) / n).to(torch.float32)

    def _balanced_counts(self):
        """(C, L, P, N) int64 numerator and (C, 1) denominator of the class-balanced one-vs-rest accuracy:
        bacc_c = (f_c / n_c + (n - n_c - (f - f_c)) / (n - n_c)) / 2 = num / den with
        num = f_c · (n - n_c) + (n - n_c - (f - f_c)) · n_c and den = 2 · n_c · (n - n_c)."""
        n = self._check_classes()
        class_count = self.class_count[:, None]  # (C, 1) examples of class c
        rest = n - class_count  # (C, 1) examples of the other classes
        fire_total = self.fire_count.sum(dim=0, keepdim=True)  # (1, L*P*N)
        numerator = self.fire_count * rest + (rest - (fire_total - self.fire_count)) * class_count  # (C, L*P*N)
        return numerator.reshape(self.num_classes, *self.shape), (2 * class_count * rest).reshape(-1, 1, 1, 1)

    def balanced_predictivity_per_class(self):
        """(C, L, P, N) float32 class-balanced predictivity max(bacc_c, 1 - bacc_c), bacc_c = the mean of the
        agreement rates on class c's examples and on the others'. A unit that never changes scores exactly
        0.5 whatever the class shares; on a balanced set (n_c = n - n_c) it equals predictivity_per_class()."""
        numerator, denominator = self._balanced_counts()
        if bool((denominator == 0).any()):
            raise ValueError(f"balanced predictivity needs every class present (examples per class: "
                             f"{self.class_count.tolist()})")
        best = torch.maximum(numerator, denominator - numerator)
        return (best.to(torch.float64) / denominator.to(torch.float64)).to(torch.float32)

    def balanced_score(self):
        """(L, N) float32 max over prompt positions (and classes) of balanced_predictivity_per_class()."""
        return self.balanced_predictivity_per_class().amax(dim=2).amax(dim=0)

    def majority_baseline(self):
        """The largest class share: the (raw) predictivity of a unit that never changes."""
        n = self._check_classes()
        return int(self.class_count.max()) / n

    def score_per_class(self):
        """(C, L, N) float32 max over prompt positions of predictivity_per_class()."""
        return self.predictivity_per_class().amax(dim=2)

    def accuracy(self, positive: int = 1):
        """Binary: (L, P, N) fraction with 1[a > b] == 1[y == positive] (``positive=0``: 1 − that, computed from
        the counts, for a label order that names the other class 1). Multi-class: (C, L, P, N) one-vs-rest."""
        if self.num_classes == 2 and positive not in (0, 1):
            raise ValueError(f"positive must be a class id, 0 or 1, got {positive!r}")
        acc = self.accuracy_per_class()  # (C, L, P, N)
        return acc[positive] if self.num_classes == 2 else acc

    def predictivity(self):
        """Binary: (L, P, N) max(acc, 1 - acc). Multi-class: (C, L, P, N) per class."""
        pred = self.predictivity_per_class()  # (C, L, P, N)
        return pred[1] if self.num_classes == 2 else pred

    def score(self):
        """(L, N) float32 per-neuron score: max over prompt positions (and, multi-class, over classes)."""
        return self.score_per_class().amax(dim=0)  # (L, N)

    # --- state / distributed -------------------------------------------------

    def state(self):
        """Dict of the tensors that sum across shards: fire_count (C, L*P*N), class_count (C,), int64.
        The threshold is not part of it (it is the same on every rank)."""
        return {"fire_count": self.fire_count, "class_count": self.class_count}

    def all_reduce(self, reduce_fn):
        """Sum the counts across processes: reduce_fn(tensor) must sum `tensor` over all ranks, in place
        (e.g. torch.distributed.all_reduce) or by returning the summed tensor. Call it exactly once."""
        for key in ("fire_count", "class_count"):
            _reduce_in_place(self.state()[key], reduce_fn)
        return self

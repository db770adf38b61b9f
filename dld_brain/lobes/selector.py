"""Input-conditioned layer dropping (Hannan, Falavigna & Brutti, 2025): a small selector network picks, per
utterance, which encoder layers of a layer-dropping backbone run under a budget of ``k`` layers.

* :class:`LayerSelector`: masked mean + standard deviation of the front-end features (the encoder input),
  concatenated with a budget embedding (one-hot of k and k/N), then an MLP -> one keep logit per layer.
  The budget is an input, so one selector serves every k.
* Training (:func:`relaxed_gates`): hard keep/skip decisions in the forward pass with straight-through
  gradients from a relaxed (Gumbel) version: ``gumbel_sigmoid`` (independent Bernoulli gates; the number
  of kept layers varies, and :func:`budget_loss` pulls its expectation ``sum_i sigmoid(l_i)`` to k) or
  ``gumbel_topk`` (exactly k layers per utterance, as at inference; the expectation matches k by
  construction, the budget loss only keeps the logits calibrated).
* Inference (:func:`topk_mask`): the k highest logits, so exactly k layers per utterance.
* :class:`SelectiveDepthModel`: selector + backbone. Training mixes each layer per utterance,
  ``y + g_{b,i} (f_i(y) - y)``, computing only the layers some utterance keeps. Inference groups the
  utterances by layer set and runs each group with the backbone's explicit-layer mode (``grouped``), or runs
  the union of the sets on the whole batch with 0/1 gates (``masked``); both give the same outputs, and
  ``auto`` picks the cheaper one from the union size (masked only when the union is close to k).

The backbone is duck-typed: ``embed(feats, lens) -> (x, pad_mask)``, ``run_layers(x, pad_mask, layers=None,
gates=None) -> hidden``, ``output(hidden) -> log_probs`` and ``encoder.num_layers`` (as
:class:`dld_brain.lobes.ConformerCTC`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from dld_brain.gates import DepthError

RELAXATIONS = ("gumbel_sigmoid", "gumbel_topk")
EXECUTIONS = ("auto", "grouped", "masked")
#: ``auto`` runs masked when the union of the batch's layer sets is at most this many times k (measured on
#: FSDD, batch 8: grouping is ~2x faster at union/k >= 3, masking ~1.3x faster at union/k = 1.2).
AUTO_MASKED_MAX_RATIO = 1.25

Budget = Union[int, Sequence[int], torch.Tensor]


class BudgetError(DepthError):
    """An impossible layer budget (k < 1 or k > number of layers); the message gives the allowed range."""


def budget_tensor(k: Budget, batch_size: int, num_layers: int, device=None) -> torch.Tensor:
    """A (batch_size,) long tensor of per-utterance budgets from an int or a sequence; checks 1 <= k <= N."""
    if isinstance(k, bool) or (isinstance(k, (str, bytes))):
        raise BudgetError(f"budget k must be an integer in 1..{num_layers}, got {k!r}")
    values = torch.as_tensor(k, device=device)
    if values.is_floating_point() and not torch.equal(values, values.round()):
        raise BudgetError(f"budget k must be an integer in 1..{num_layers}, got {k!r}")
    values = values.long()
    if values.dim() == 0:
        values = values.expand(batch_size)
    if values.shape != (batch_size,):
        raise BudgetError(f"budget must be one integer or one per utterance ({batch_size}), got shape "
                          f"{tuple(values.shape)}")
    bad = values[(values < 1) | (values > num_layers)]
    if bad.numel():
        raise BudgetError(f"budget k={int(bad[0])} is impossible: this encoder has {num_layers} layers, "
                          f"so k must be in 1..{num_layers}")
    return values.clone()


def masked_stats(x: torch.Tensor, pad_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean and standard deviation over the valid frames of (B, T, D) features -> (B, 2 D)."""
    if pad_mask is None:
        pad_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    valid = (~pad_mask).to(x.dtype).unsqueeze(-1)
    count = valid.sum(dim=1).clamp(min=1.0)
    mean = (x * valid).sum(dim=1) / count
    var = (((x - mean.unsqueeze(1)) ** 2) * valid).sum(dim=1) / count
    return torch.cat([mean, (var + 1e-5).sqrt()], dim=-1)


class LayerSelector(torch.nn.Module):
    """Pooled statistics of the front-end features + budget embedding -> MLP -> (B, num_layers) keep logits.

    ``input_dim``: feature size D of the encoder input; ``hidden_dim``: MLP width. A few tens of thousands
    of parameters for the FSDD model (see :meth:`num_parameters`).
    """

    def __init__(self, input_dim: int, num_layers: int, hidden_dim: int = 128, dropout: float = 0.1):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.input_norm = torch.nn.LayerNorm(2 * input_dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(2 * input_dim + num_layers + 1, hidden_dim), torch.nn.GELU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden_dim, hidden_dim), torch.nn.GELU(),
            torch.nn.Linear(hidden_dim, num_layers),
        )

    def budget_embedding(self, k: torch.Tensor) -> torch.Tensor:
        """One-hot of k (1..N) and k/N: (B,) -> (B, N + 1)."""
        onehot = torch.nn.functional.one_hot(k - 1, self.num_layers).float()
        return torch.cat([onehot, (k.float() / self.num_layers).unsqueeze(-1)], dim=-1)

    def forward(self, x: torch.Tensor, pad_mask: Optional[torch.Tensor], k: Budget) -> torch.Tensor:
        """Keep logits (B, num_layers) for features ``x`` (B, T, D) under budget(s) ``k``."""
        k = budget_tensor(k, x.shape[0], self.num_layers, x.device)
        stats = self.input_norm(masked_stats(x.float(), pad_mask))
        return self.mlp(torch.cat([stats, self.budget_embedding(k)], dim=-1))

    def num_parameters(self) -> int:
        """Number of parameters of the selector."""
        return sum(p.numel() for p in self.parameters())


def topk_mask(scores: torch.Tensor, k: Budget) -> torch.Tensor:
    """0/1 float mask (B, N) keeping the ``k`` highest scores of each row (``k`` per utterance allowed)."""
    k = budget_tensor(k, scores.shape[0], scores.shape[1], scores.device)
    order = scores.argsort(dim=-1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return (rank < k.unsqueeze(1)).to(scores.dtype)


def _logistic_noise(shape, device, generator=None) -> torch.Tensor:
    u = torch.rand(shape, device=device, generator=generator).clamp(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def relaxed_gates(
    logits: torch.Tensor,
    k: Budget,
    relaxation: str = "gumbel_sigmoid",
    tau: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Training gates (B, N): hard 0/1 in the forward pass, gradients of a Gumbel relaxation (straight-through).

    ``gumbel_sigmoid``: gate_i = [sigmoid((l_i + logistic noise) / tau) > 0.5], i.e. Bernoulli(sigmoid(l_i));
    ``gumbel_topk``: the k largest of l_i + Gumbel noise, relaxed as sigmoid((z_i - threshold) / tau) with the
    threshold midway between the k-th and (k+1)-th perturbed logits.
    """
    if relaxation not in RELAXATIONS:
        raise ValueError(f"unknown relaxation {relaxation!r}; choose one of {RELAXATIONS}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    num_layers = logits.shape[1]
    k = budget_tensor(k, logits.shape[0], num_layers, logits.device)
    if relaxation == "gumbel_sigmoid":
        soft = torch.sigmoid((logits + _logistic_noise(logits.shape, logits.device, generator)) / tau)
        hard = (soft > 0.5).to(soft.dtype)
    else:
        u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp(1e-6, 1 - 1e-6)
        z = logits - torch.log(-torch.log(u))
        hard = topk_mask(z.detach(), k)
        ordered = z.detach().sort(dim=-1, descending=True).values
        padded = torch.cat([ordered, ordered[:, -1:] - 2.0], dim=-1)  # k = N: threshold below the smallest
        rows = torch.arange(z.shape[0], device=z.device)
        threshold = 0.5 * (padded[rows, k - 1] + padded[rows, k])
        soft = torch.sigmoid((z - threshold.unsqueeze(1)) / tau)
    return _StraightThrough.apply(hard, soft)


class _StraightThrough(torch.autograd.Function):
    """Forward: the hard 0/1 gates exactly; backward: the gradient goes to the soft relaxation."""

    @staticmethod
    def forward(ctx, hard, soft):  # noqa: D102
        return hard.detach().clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return None, grad


def budget_loss(logits: torch.Tensor, k: Budget) -> torch.Tensor:
    """Mean over utterances of ((sum_i sigmoid(l_i) - k) / N)^2: expected kept layers vs the budget k."""
    k = budget_tensor(k, logits.shape[0], logits.shape[1], logits.device)
    expected = torch.sigmoid(logits.float()).sum(dim=-1)
    return (((expected - k.float()) / logits.shape[1]) ** 2).mean()


def masks_to_layer_sets(masks: torch.Tensor) -> list[tuple[int, ...]]:
    """Rows of a 0/1 (B, N) mask -> per-utterance tuples of kept layer indices."""
    return [tuple(int(i) for i in torch.nonzero(row).flatten()) for row in masks.detach().cpu() != 0]


def run_grouped(backbone, x: torch.Tensor, pad_mask: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Encoder outputs with a per-utterance layer set: utterances sharing a set run together with the
    backbone's explicit-layer mode, and the results are scattered back into batch order."""
    sets = masks_to_layer_sets(masks)
    if any(len(s) == 0 for s in sets):
        raise BudgetError("an utterance has no layer selected: every utterance needs at least one layer")
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, layer_set in enumerate(sets):
        groups.setdefault(layer_set, []).append(b)
    if len(groups) == 1:
        return backbone.run_layers(x, pad_mask, layers=list(sets[0]))
    out = None
    for layer_set, rows in groups.items():
        index = torch.tensor(rows, device=x.device)
        hidden = backbone.run_layers(x.index_select(0, index), pad_mask.index_select(0, index), layers=list(layer_set))
        if out is None:
            out = hidden.new_empty((x.shape[0],) + tuple(hidden.shape[1:]))
        out.index_copy_(0, index, hidden)
    return out


class WavLMLayerRunner(torch.nn.Module):
    """The selector protocol (``embed`` / ``run_layers`` / ``output``) for :class:`dld_brain.lobes.wavlm.WavLMCTC`.

    Follows :meth:`GatedWavLMEncoder.forward` step by step (feature encoder, projection, positional conv,
    relative position bias shared by whatever layers run), with per-utterance gates added to the layer loop;
    ``tests/test_selector.py`` checks that it matches the lobe's own forward at any layer list.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.encoder = model.encoder

    def embed(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms -> transformer input (B, T, hidden) and padding mask (B, T, True=pad)."""
        enc = self.encoder
        wavlm = enc.wavlm
        with torch.set_grad_enabled(torch.is_grad_enabled() and not enc.freeze_feature_encoder):
            extract = wavlm.feature_extractor(wavs).transpose(1, 2)
        mask = enc.feature_mask(extract.shape[1], wavs, wav_lens)
        hidden, _ = wavlm.feature_projection(extract)
        hidden = wavlm._mask_hidden_states(hidden, attention_mask=mask)
        if mask is not None:
            hidden = hidden.masked_fill(~mask[..., None].bool(), 0.0)
        hidden = hidden + wavlm.encoder.pos_conv_embed(hidden)
        if not wavlm.config.do_stable_layer_norm:
            hidden = wavlm.encoder.layer_norm(hidden)
        hidden = wavlm.encoder.dropout(hidden)
        if mask is None:
            pad_mask = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        else:
            pad_mask = ~mask.bool()
        return hidden, pad_mask

    def run_layers(self, x: torch.Tensor, pad_mask: torch.Tensor, layers=None, gates=None) -> torch.Tensor:
        """The transformer layers on :meth:`embed`'s output (one ``layers`` list or per-utterance ``gates``)."""
        enc = self.encoder
        wavlm = enc.wavlm
        if gates is not None and layers is not None:
            raise BudgetError("give either layers (one list for the batch) or gates (per utterance), not both")
        if gates is not None:
            if tuple(gates.shape) != (x.shape[0], enc.num_layers):
                raise BudgetError(f"gates must have shape (batch, num_layers) = ({x.shape[0]}, {enc.num_layers}), "
                                  f"got {tuple(gates.shape)}")
            run = [int(i) for i in torch.nonzero(gates.detach().ne(0).any(dim=0)).flatten()]
        else:
            run = enc.active_layers(layers)
        mask = ~pad_mask if enc.use_attention_mask else None
        hidden = x
        bias = enc.position_bias(hidden.shape[0], hidden.shape[1])
        for i in run:
            new, bias = enc.layers[i](hidden, attention_mask=mask, position_bias=bias, index=i)
            if gates is not None:
                g = gates[:, i].to(new.dtype)[:, None, None]
                new = g * new + (1.0 - g) * hidden
            hidden = new
        if wavlm.config.do_stable_layer_norm:
            hidden = wavlm.encoder.layer_norm(hidden)
        if wavlm.adapter is not None:
            hidden = wavlm.adapter(hidden)
        return hidden

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """CTC head -> log-probabilities in float32."""
        return torch.log_softmax(self.model.ctc_head(self.model.dropout(hidden)).float(), dim=-1)


def layer_runner(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself if it implements the selector protocol (``embed``/``run_layers``/``output``), else an
    adapter for a known lobe (WavLM CTC)."""
    if all(hasattr(model, name) for name in ("embed", "run_layers", "output")):
        return model
    if hasattr(model, "encoder") and hasattr(model.encoder, "wavlm"):
        return WavLMLayerRunner(model)
    raise TypeError(f"{type(model).__name__} has no layer-wise execution: implement embed(inputs, lens) -> "
                    "(x, pad_mask), run_layers(x, pad_mask, layers=None, gates=None) and output(hidden)")


class SelectiveDepthModel(torch.nn.Module):
    """A layer-dropping backbone run with per-utterance layer sets chosen by a :class:`LayerSelector`.

    ``forward(feats, lens, k)`` returns ``(log_probs, logits, gates)``: in training the gates are
    straight-through relaxed gates (see :func:`relaxed_gates`), outside training the exact top-k masks run
    with ``execution`` = ``grouped``, ``masked`` or ``auto`` (masked when the union of the sets is close to k,
    else grouped; see ``AUTO_MASKED_MAX_RATIO``). ``k`` is an int or one budget per utterance.
    """

    def __init__(self, backbone: torch.nn.Module, selector: LayerSelector, relaxation: str = "gumbel_sigmoid",
                 tau: float = 1.0, execution: str = "auto"):
        super().__init__()
        if relaxation not in RELAXATIONS:
            raise ValueError(f"unknown relaxation {relaxation!r}; choose one of {RELAXATIONS}")
        if execution not in EXECUTIONS:
            raise ValueError(f"unknown execution {execution!r}; choose one of {EXECUTIONS}")
        if selector.num_layers != backbone.encoder.num_layers:
            raise ValueError(f"selector has {selector.num_layers} outputs but the backbone has "
                             f"{backbone.encoder.num_layers} layers")
        self.backbone = layer_runner(backbone)
        self.selector = selector
        self.relaxation = relaxation
        self.tau = float(tau)
        self.execution = execution

    @property
    def num_layers(self) -> int:
        """Number of layers of the backbone's encoder."""
        return self.backbone.encoder.num_layers

    def select(self, x: torch.Tensor, pad_mask: torch.Tensor, k: Budget) -> torch.Tensor:
        """Hard inference masks (B, N): exactly k layers per utterance (the k highest selector logits)."""
        return topk_mask(self.selector(x, pad_mask, k), k)

    def run_masks(self, x: torch.Tensor, pad_mask: torch.Tensor, masks: torch.Tensor,
                  execution: Optional[str] = None) -> torch.Tensor:
        """Encoder output for hard per-utterance masks, grouped by layer set or masked on the union."""
        execution = execution or self.execution
        if execution not in EXECUTIONS:
            raise ValueError(f"unknown execution {execution!r}; choose one of {EXECUTIONS}")
        if execution == "auto":
            union = int(masks.detach().ne(0).any(dim=0).sum())
            k_max = int(masks.detach().ne(0).sum(dim=1).max())
            execution = "masked" if union <= AUTO_MASKED_MAX_RATIO * k_max else "grouped"
        if execution == "grouped":
            return run_grouped(self.backbone, x, pad_mask, masks)
        return self.backbone.run_layers(x, pad_mask, gates=masks)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor, k: Budget, relaxed: Optional[bool] = None,
                generator: Optional[torch.Generator] = None):
        """(log_probs, logits, gates): relaxed gates if ``relaxed`` (default: in training mode), else exact
        top-k masks."""
        x, pad_mask = self.backbone.embed(feats, lens)
        k = budget_tensor(k, x.shape[0], self.num_layers, x.device)
        logits = self.selector(x, pad_mask, k)
        if self.training if relaxed is None else relaxed:
            gates = relaxed_gates(logits, k, self.relaxation, self.tau, generator)
            hidden = self.backbone.run_layers(x, pad_mask, gates=gates)
        else:
            gates = topk_mask(logits, k)
            hidden = self.run_masks(x, pad_mask, gates)
        return self.backbone.output(hidden), logits, gates

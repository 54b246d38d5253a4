"""
The optimizer of a GPT: AdamW, as GPT-2 was trained, or Muon for the matrices of the blocks with
AdamW for the rest (modded-nanogpt's and nanochat's recipe), chained so that the training loop,
GradScaler and checkpoints see one optimizer.

Muon is written here rather than taken from torch.optim.Muon, which it equals in bfloat16 (tested):
that one orthogonalises in bfloat16 only, which a CPU without bfloat16 hardware (most laptops)
computes several times slower than float32, and under FSDP it takes the local shard of a parameter
for the matrix; here an FSDP shard is orthogonalised as the whole matrix. Two later refinements are
opt-in (measured in docs/evaluation.md): Polar Express's coefficients, a different polynomial at each
Newton-Schulz step (Amsel et al., 2025, as modded-nanogpt and nanochat use them), and NorMuon's
variance normalisation of each neuron's update (Li et al., 2025, as nanochat does).

An exponential moving average of the weights (train.py --ema_decay, WeightAverage) lives in each
parameter's optimizer state, so that checkpoints and FSDP's shards hold it with the rest.
"""

import math

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from device import fast_bfloat16


def configure_optimizers(model, weight_decay, learning_rate, betas, device_type, muon=None):
    """AdamW for a GPT; or, given muon=dict(lr=..., weight_decay=..., momentum=..., and optionally
    coefficients=..., beta2=..., cautious=...), Muon for the
    blocks' matrices and AdamW for the rest (embeddings, head, gains, biases), stepped as one.
    Muon orthogonalises in bfloat16 where its matrix products are fast, else in float32, unless
    muon sets ns_dtype (bench/train.py does, to time the other)."""
    hidden = [p for p in model.transformer.h.parameters() if p.requires_grad and p.dim() == 2] if muon else []
    in_muon = {id(p) for p in hidden}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in in_muon]
    # Decay the matrices (Linear weights, embeddings); leave biases and LayerNorm gains alone.
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # the fused kernel updates each tensor in one pass instead of about ten (CPU since torch 2.4)
    adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))
    if not muon:
        return adamw
    dtype = torch.bfloat16 if fast_bfloat16(device_type) else torch.float32
    return ChainedOptimizer(adamw, Muon(hidden, **{"ns_dtype": dtype, **muon}))


class Muon(torch.optim.Optimizer):
    """Muon for 2-D matrices: SGD with Nesterov momentum whose update is replaced by the nearest
    semi-orthogonal matrix (its singular values taken to about 1), then scaled by
    sqrt(max(1, rows / cols)), Keller Jordan's rule, which modded-nanogpt's rates assume. Weight
    decay is decoupled, as AdamW's: the weights shrink by lr * weight_decay each step.

    coefficients: "jordan" (Keller Jordan's, the same at every step) or "polar_express" (one
    polynomial a step). beta2 > 0: each row's update (each column's, for a wide matrix) is divided
    by the root of a running mean of its squares, then the whole rescaled to the norm it had
    (NorMuon), so that no neuron learns faster than the others because of its scale. cautious:
    weight decay shrinks only the weights whose update has their sign, which it moves towards zero
    too (cautious weight decay, Chen et al., 2025): it no longer pulls against what the update does."""

    def __init__(self, params, lr, momentum=0.95, weight_decay=0.0, ns_dtype=torch.bfloat16, ns_steps=5,
                 coefficients="jordan", beta2=0.0, cautious=False):
        if coefficients not in COEFFICIENTS:
            raise ValueError(f"coefficients={coefficients!r}: use one of {', '.join(map(repr, COEFFICIENTS))}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, beta2=beta2))
        self.ns_dtype, self.ns_steps, self.coefficients, self.cautious = ns_dtype, ns_steps, coefficients, cautious

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = self.state[p]["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalise(p.grad.lerp(buf, group["momentum"]), self.ns_dtype, self.ns_steps,
                                       self.coefficients)
                if group["beta2"]:
                    update = normalise_variance(update, self.state[p], group["beta2"])
                decay = group["lr"] * group["weight_decay"]
                if self.cautious:  # only the weights that the update moves towards zero as well
                    p.sub_(p * (update * p > 0), alpha=decay)
                else:
                    p.mul_(1 - decay)
                p.add_(update, alpha=-group["lr"] * math.sqrt(max(1, p.shape[0] / p.shape[1])))


# (a, b, c) of each Newton-Schulz step X <- a X + (b A + c A^2) X, A = X X^T; the last repeats.
# Keller Jordan's take the singular values to between about 0.7 and 1.2 in 5 steps rather than
# exactly to 1 in more. Polar Express's are the minimax polynomials for 5 steps (safety factor
# 2e-2, cushion 2, from the paper), closer to 1 at the same cost.
COEFFICIENTS = {
    "jordan": [(3.4445, -4.7750, 2.0315)],
    "polar_express": [(8.156554524902461, -22.48329292557795, 15.878769915207462),
                      (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                      (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                      (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                      (2.3465413258596377, -1.7097828382687081, 0.42323551169305323)],
}


def orthogonalise(g, dtype, steps, coefficients="jordan"):
    """About U V^T of g = U S V^T: a quintic Newton-Schulz iteration in dtype. An FSDP shard is
    orthogonalised as the whole matrix it is part of: every rank gathers the matrix, and keeps its
    own part of the result."""
    if isinstance(g, DTensor):
        return distribute_tensor(orthogonalise(g.full_tensor(), dtype, steps, coefficients), g.device_mesh,
                                 g.placements, src_data_rank=None)
    x = g.to(dtype)
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # X X^T is the smaller Gram matrix
    # singular values at most 1, where the iteration converges; Polar Express's with a margin, as its
    # polynomials were fitted to that interval
    x = x / x.norm().clamp(min=1e-7) if coefficients == "jordan" else x / (x.norm() * 1.01 + 1e-6)
    table = COEFFICIENTS[coefficients]
    for step in range(steps):
        a, b, c = table[min(step, len(table) - 1)]
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a X + (b A + c A^2) X
    return x if wide else x.T


def normalise_variance(update, state, beta2):
    """NorMuon: the update with each row (a wide matrix: each column) divided by the root of a
    running mean of its mean square, kept in state, then scaled back to the update's own norm."""
    dim = 1 if update.size(0) >= update.size(1) else 0
    mean_square = update.float().square().mean(dim=dim, keepdim=True)
    if "second_moment" not in state:
        state["second_moment"] = torch.zeros_like(mean_square)
    state["second_moment"].lerp_(mean_square, 1 - beta2)
    scaled = update * state["second_moment"].clamp(min=1e-10).rsqrt().to(update.dtype)
    return scaled * (update.norm() / scaled.norm().clamp(min=1e-10))


class WeightAverage:
    """An exponential moving average of the weights (train.py --ema_decay). It lives in each
    parameter's optimizer state, so that checkpoints, FSDP's shards and resume hold it with the
    rest. into_model swaps it with the trained weights, to evaluate or save it, and out_of_model
    swaps them back for the next step: a step costs one lerp, and only evals and saves a swap. A
    checkpoint holds the average as its model, which every script that reads it then takes, and
    the trained weights in the optimizer's state: a resumed run starts with the average in the model."""

    def __init__(self, opt, decay, in_model=False):
        self.opt, self.decay, self.in_model = opt, decay, in_model

    @torch.no_grad()
    def update(self):
        """After a step: each parameter's average moves towards it. A parameter that its optimizer
        has not stepped yet has no state (which AdamW would then not make) and no average; the first
        step's weights start it."""
        self.out_of_model()
        for state, p in stepped(self.opt):
            if "ema" in state:
                state["ema"].lerp_(p, 1 - self.decay)
            else:
                state["ema"] = p.detach().clone()

    def into_model(self):
        if not self.in_model:
            self.swap()
        self.in_model = True

    def out_of_model(self):
        if self.in_model:
            self.swap()
        self.in_model = False

    @torch.no_grad()
    def swap(self):
        for state, p in stepped(self.opt):
            if "ema" in state:
                trained = p.detach().clone()
                p.copy_(state["ema"])
                state["ema"].copy_(trained)


def stepped(opt):
    """(state, parameter) of each parameter that has optimizer state."""
    for o in getattr(opt, "optimizers", [opt]):
        for group in o.param_groups:
            yield from ((o.state[p], p) for p in group["params"] if o.state.get(p))


class ChainedOptimizer:
    """Optimizers that step as one, e.g. AdamW and Muon over disjoint parameters. The training
    loop, GradScaler (one inf check skips all of them) and checkpoints see a single optimizer:
    param_groups and state_dict are theirs in order, with parameter ids numbered on across them."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):  # a property: load_state_dict replaces each optimizer's group dicts
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            saved = opt.state_dict()
            state.update({i + offset: s for i, s in saved["state"].items()})
            groups += [{**g, "params": [i + offset for i in g["params"]]} for g in saved["param_groups"]]
            offset += sum(len(g["params"]) for g in saved["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        if len(state_dict["param_groups"]) != len(self.param_groups):
            raise ValueError(f"the saved optimizer has {len(state_dict['param_groups'])} parameter groups, "
                             f"this one {len(self.param_groups)}")
        groups = iter(state_dict["param_groups"])
        for opt in self.optimizers:
            # torch maps saved ids to parameters by their order in the groups, so the offsets may stay
            mine = [next(groups) for _ in opt.param_groups]
            ids = {i for g in mine for i in g["params"]}
            opt.load_state_dict({"state": {i: s for i, s in state_dict["state"].items() if i in ids},
                                 "param_groups": mine})

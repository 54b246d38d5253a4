"""
The optimizer of a GPT: AdamW, as GPT-2 was trained, or Muon for the matrices of the blocks with
AdamW for the rest (modded-nanogpt's and nanochat's recipe), chained so that the training loop,
GradScaler and checkpoints see one optimizer.
"""

import torch


def configure_optimizers(model, weight_decay, learning_rate, betas, device_type, muon=None):
    """AdamW for a GPT; or, given muon=dict(lr=..., weight_decay=..., momentum=...), Muon for the
    blocks' matrices and AdamW for the rest (embeddings, head, gains, biases), stepped as one."""
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
    # "original" scales the rate by sqrt(max(1, out/in)), Keller Jordan's rule (modded-nanogpt's rates)
    return ChainedOptimizer(adamw, torch.optim.Muon(hidden, nesterov=True, adjust_lr_fn="original", **muon))


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

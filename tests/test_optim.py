import pytest
import torch

from conftest import tiny_model
from optim import ChainedOptimizer, Muon, WeightAverage, configure_optimizers, normalise_variance, orthogonalise


def test_weight_decay_groups():
    model = tiny_model(vocab_size=50, block_size=8, n_embd=16)
    decay, no_decay = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu").param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_muon_takes_the_blocks_matrices():
    model = tiny_model(vocab_size=50, tie_embeddings=False)
    optimizer = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu", dict(lr=0.02, momentum=0.95,
                                                                                weight_decay=0.0))
    adamw, muon = optimizer.optimizers
    names = {id(p): name for name, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert muon_names == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                          for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert {"transformer.wte.weight", "lm_head.weight", "transformer.h.0.ln_1.weight"} <= adamw_names
    assert not adamw_names & muon_names and len(adamw_names | muon_names) == len(names)
    assert len(optimizer.param_groups) == 3 and optimizer.param_groups[2]["lr"] == 0.02


def test_muon_takes_the_value_gates_and_adamw_the_value_embeddings_and_lambdas():
    model = tiny_model(vocab_size=50, value_embeddings=True, x0_mixing=True)
    adamw, muon = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu", dict(lr=0.02)).optimizers
    names = {id(p): name for name, p in model.named_parameters()}
    assert "transformer.h.1.attn.ve_gate.weight" in {names[id(p)] for p in muon.param_groups[0]["params"]}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in adamw.param_groups)
    assert "transformer.ve.1.weight" in decay and {"resid_lambdas", "x0_lambdas"} <= no_decay


@pytest.mark.parametrize("fast", [False, True])
def test_muon_orthogonalises_in_bfloat16_where_it_is_fast_unless_told(monkeypatch, fast):
    monkeypatch.setattr("optim.fast_bfloat16", lambda device_type: fast)
    model = tiny_model(vocab_size=50)
    muon = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu", dict(lr=0.02)).optimizers[1]
    assert muon.ns_dtype == (torch.bfloat16 if fast else torch.float32)
    told = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu", dict(lr=0.02, ns_dtype=torch.float32))
    assert told.optimizers[1].ns_dtype == torch.float32


def test_the_weight_average_moves_with_each_step_and_swaps_in_for_evals():
    model = tiny_model(vocab_size=50)
    opt = configure_optimizers(model, 0.1, 1e-2, (0.9, 0.95), "cpu", dict(lr=0.05))
    average = WeightAverage(opt, 0.9)
    idx = torch.randint(0, 50, (2, 8))
    expected = None
    for step in range(3):
        average.out_of_model()  # as each training step begins
        model(idx, idx)[1].backward()
        opt.step()
        opt.zero_grad()
        average.update()
        trained = [p.detach().clone() for p in model.parameters()]
        # the average starts at the first step's weights, then moves a tenth of the way each step
        expected = trained if expected is None else [a.lerp(t, 0.1) for a, t in zip(expected, trained)]
        average.into_model()  # an eval or a checkpoint, after some steps
        for p, a in zip(model.parameters(), expected):
            torch.testing.assert_close(p, a, atol=0, rtol=0)
        average.into_model()  # twice changes nothing
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), expected))
    states = [opt.optimizers[0].state, opt.optimizers[1].state]
    for p, t in zip(model.parameters(), trained):  # the trained weights, for the next step
        state = next(s[p] for s in states if p in s)
        assert torch.equal(state["ema"], t) and ("exp_avg" in state or "momentum_buffer" in state)
    average.out_of_model()
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))


def test_chained_optimizer_state_round_trip():
    # four steps in one go equal two steps, a save and load into fresh optimizers, and two more
    def run(steps, state=None, model_state=None):
        model = tiny_model(vocab_size=50, tie_embeddings=False)
        if model_state:
            model.load_state_dict(model_state)
        optimizer = configure_optimizers(model, 0.1, 1e-2, (0.9, 0.95), "cpu", dict(lr=0.05, momentum=0.9,
                                                                                    weight_decay=0.01))
        assert isinstance(optimizer, ChainedOptimizer)
        if state:
            optimizer.load_state_dict(state)
        torch.manual_seed(len(steps))
        for seed in steps:
            g = torch.Generator().manual_seed(seed)
            idx = torch.randint(0, 50, (2, 16), generator=g)
            _, loss = model(idx, idx)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return model.state_dict(), optimizer.state_dict()

    full_model, full_opt = run([1, 2, 3, 4])
    half_model, half_opt = run([1, 2])
    assert len(half_opt["state"]) == len(list(tiny_model(vocab_size=50, tie_embeddings=False).parameters()))
    resumed_model, resumed_opt = run([3, 4], half_opt, half_model)
    for name, t in full_model.items():
        assert torch.equal(t, resumed_model[name]), name
    for i, state in full_opt["state"].items():
        for key, t in state.items():
            assert torch.equal(t, resumed_opt["state"][i][key]), (i, key)
    with pytest.raises(ValueError, match="3 parameter groups, this one 2"):
        ChainedOptimizer(configure_optimizers(tiny_model(vocab_size=50), 0.1, 1e-3, (0.9, 0.95), "cpu")).load_state_dict(half_opt)


@pytest.mark.parametrize("shape", [(96, 32), (32, 128), (64, 64)])
def test_muon_in_bfloat16_is_torchs_muon(shape):
    torch.manual_seed(0)
    ours = torch.randn(*shape)
    theirs = ours.clone()
    a = Muon([ours], lr=0.02, momentum=0.9, weight_decay=0.01, ns_dtype=torch.bfloat16)
    b = torch.optim.Muon([theirs], lr=0.02, momentum=0.9, weight_decay=0.01, nesterov=True, adjust_lr_fn="original")
    for _ in range(4):
        grad = torch.randn(*shape)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    assert torch.equal(ours, theirs)
    assert torch.equal(a.state[ours]["momentum_buffer"], b.state[theirs]["momentum_buffer"])


def test_cautious_weight_decay_shrinks_only_the_weights_that_the_update_moves_towards_zero():
    torch.manual_seed(0)
    before, grad = torch.randn(32, 64), torch.randn(32, 64)
    stepped = {}
    for name, weight_decay, cautious in (("undecayed", 0.0, False), ("plain", 0.5, False), ("cautious", 0.5, True)):
        p = before.clone()
        p.grad = grad
        Muon([p], lr=0.1, weight_decay=weight_decay, ns_dtype=torch.float32, cautious=cautious).step()
        stepped[name] = p
    towards_zero = (before - stepped["undecayed"]) * before > 0
    assert 0.3 < towards_zero.float().mean() < 0.7
    torch.testing.assert_close(stepped["plain"], stepped["undecayed"] - 0.05 * before)
    torch.testing.assert_close(stepped["cautious"], stepped["undecayed"] - 0.05 * before * towards_zero)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalise_takes_the_singular_values_near_one(dtype):
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(48, 16))
    v, _ = torch.linalg.qr(torch.randn(16, 16))
    g = u @ torch.diag(torch.logspace(-0.5, 1, 16)) @ v.T  # singular values over 1.5 decades
    x = orthogonalise(g, dtype, steps=5).float()
    # x = u f(s) v^T: the same singular vectors, each value taken to between about 0.7 and 1.2
    d = u.T @ x @ v
    assert x.shape == g.shape and (d - torch.diag(d.diagonal())).abs().max() < 0.02
    assert d.diagonal().min() > 0.65 and d.diagonal().max() < 1.25


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_polar_express_takes_small_singular_values_nearer_one(dtype):
    # singular values over 3 decades: in the same 5 steps, Jordan's leave the smallest at about 0.37,
    # Polar Express's at about 0.7, and both keep the largest below 1.2
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(48, 16))
    v, _ = torch.linalg.qr(torch.randn(16, 16))
    g = u @ torch.diag(torch.logspace(-2, 1, 16)) @ v.T
    jordan, polar = (torch.diagonal(u.T @ orthogonalise(g, dtype, 5, c).float() @ v) for c in ("jordan", "polar_express"))
    assert jordan.min() < 0.4 and polar.min() > 0.65 and max(jordan.max(), polar.max()) < 1.2
    with pytest.raises(ValueError, match="coefficients='newton': use one of 'jordan', 'polar_express'"):
        Muon([torch.zeros(2, 2)], lr=0.02, coefficients="newton")


@pytest.mark.parametrize("shape", [(96, 32), (32, 128)])
def test_variance_normalisation_evens_the_neurons_and_keeps_the_norm(shape):
    # a tall matrix's rows, a wide one's columns, each scaled differently: after the first step,
    # whose running mean is (1 - beta2) times its own square, each has the same norm
    torch.manual_seed(0)
    neurons = 0 if shape[0] >= shape[1] else 1
    update = torch.randn(*shape) * torch.logspace(-1, 1, shape[neurons]).unsqueeze(1 - neurons)
    state = {}
    out = normalise_variance(update, state, beta2=0.9)
    norms = out.norm(dim=1 - neurons)
    assert norms.max() / norms.min() < 1 + 1e-5 and torch.isclose(out.norm(), update.norm())
    assert state["second_moment"].shape == (shape[0], 1) if neurons == 0 else (1, shape[1])
    # the running mean remembers: a second, even update comes out uneven, against the first's scales
    again = normalise_variance(torch.ones(*shape), state, beta2=0.9).norm(dim=1 - neurons)
    assert again.max() / again.min() > 5

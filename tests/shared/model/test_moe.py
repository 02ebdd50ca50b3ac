"""MoE model: balancing loss, capacity and dropping, balance after training, bias balancing, HF round trip."""
from __future__ import annotations

import pytest
import torch

from shared.model.hf import CheckpointError, load_moe, save_moe_checkpoint
from shared.model.moe import MoEConfig, MoEGPT, MoEMLP, balance_loss, capacity, route, z_loss

@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls: more threads than free cores only adds contention (10-30x slower on a busy 2-core box).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dense_hidden=48, expert_hidden=24)


def _batches(n: int, batch: int = 8, seed: int = 0):
    """A learnable toy language: each sequence counts up from a random start (mod the vocabulary)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        start = torch.randint(0, 64, (batch, 1), generator=g)
        seq = (start + torch.arange(TINY["block_size"] + 1)) % 64
        yield seq[:, :-1], seq[:, 1:]


def _train(model: MoEGPT, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for x, y in _batches(steps):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_routing_bias()
        losses.append(model.last_losses.get("ce", loss.item()))
    return losses


# ----------------------------------------------------------------------------- balancing loss

def test_balance_loss_is_one_for_uniform_routing_and_e_for_collapse():
    e, n = 4, 32
    uniform = torch.full((n, e), 1 / e)
    spread = (torch.arange(n) % e).unsqueeze(1)  # every expert gets n/e tokens
    assert balance_loss(uniform, spread, e).item() == pytest.approx(1.0, abs=1e-7)
    collapsed = torch.zeros(n, e)
    collapsed[:, 2] = 1.0
    assert balance_loss(collapsed, torch.full((n, 1), 2), e).item() == pytest.approx(e, abs=1e-6)
    # z-loss of all-zero logits: logsumexp = log(E)
    assert z_loss(torch.zeros(n, e)).item() == pytest.approx(torch.log(torch.tensor(4.0)).item() ** 2, rel=1e-6)


def test_model_loss_adds_the_weighted_balancing_loss():
    cfg = MoEConfig(**TINY, n_experts=4, top_k=1, aux_weight=1e-2, z_weight=0.0, capacity_factor=0)
    model = MoEGPT(cfg)
    for m in model.moe_layers():  # a router with zero weights: uniform probs, and topk of ties picks expert 0
        torch.nn.init.zeros_(m.gate.weight)
    x, y = next(_batches(1))
    model.train()
    _, loss = model(x, y)
    # every token -> expert 0 (f = [1,0,0,0]) with P uniform: E * 1 * 1/E = 1.0 per layer
    assert model.last_losses["aux"] == pytest.approx(1.0, abs=1e-6)
    assert loss.item() == pytest.approx(model.last_losses["ce"] + 1e-2 * 1.0 * cfg.n_layer, abs=1e-5)


# ----------------------------------------------------------------------------- capacity and dropping

def test_capacity_drops_assignments_in_order_and_counts_them():
    e, n = 4, 8
    assert capacity(n, 1, e, 1.0) == 2
    chosen = torch.tensor([0, 0, 1, 0, 0, 1, 0, 1])  # expert 0: 5 tokens, expert 1: 3, experts 2-3: none
    probs = torch.nn.functional.one_hot(chosen, e).float() * 0.7 + 0.3 / e
    index, weight, kept = route(probs, 1, None, False, cap=2)
    assert index.squeeze(1).tolist() == chosen.tolist()
    # the first two tokens of each expert stay, in token order
    assert kept.squeeze(1).tolist() == [True, True, True, False, False, True, False, False]
    assert weight.squeeze(1).tolist() == pytest.approx(probs.max(-1).values.tolist())  # Switch: raw gate value
    # top-2: all first choices queue before any second choice. Second choice: expert 1 for expert-0 tokens and
    # expert 0 for expert-1 tokens, so with capacity 3 the first choices fill both experts.
    second = 1 - chosen
    probs2 = 0.6 * torch.nn.functional.one_hot(chosen, e) + 0.3 * torch.nn.functional.one_hot(second, e) + 0.05
    index2, _, kept2 = route(probs2.float(), 2, None, False, cap=3)
    assert index2[:, 1].tolist() == second.tolist()
    assert kept2[:, 0].tolist() == [True, True, True, True, False, True, False, True]
    assert not kept2[:, 1].any()


def test_dropped_tokens_pass_through_as_zero_and_are_counted():
    e = 4
    cfg = MoEConfig(**{**TINY, "n_embd": e * 2, "n_head": 1}, n_experts=e, top_k=1, capacity_factor=1.0)
    mlp = MoEMLP(cfg)
    with torch.no_grad():
        mlp.gate.weight.zero_()
        mlp.gate.weight[:, :e] = 10 * torch.eye(e)  # token with a 1 in column c goes to expert c
    chosen = torch.tensor([0, 0, 1, 0, 0, 1, 0, 1])
    x = torch.nn.functional.one_hot(chosen, 2 * e).float().unsqueeze(0)  # (1, 8, 8)
    mlp.train()
    out = mlp(x)[0]
    dropped = [3, 4, 6, 7]  # capacity ceil(1.0 * 8 / 4) = 2 per expert
    assert torch.all(out[dropped] == 0)  # nothing added: the block's residual carries them
    assert torch.all(out[[0, 1, 2, 5]].abs().sum(-1) > 0)
    assert mlp.dropped.item() == 4 and mlp.assigned.item() == 8
    assert mlp.load.tolist() == [5, 3, 0, 0]  # load counts choices before dropping
    mlp.eval()  # no capacity at inference: every token reaches its expert
    assert torch.all(mlp(x)[0].abs().sum(-1) > 0)


# ----------------------------------------------------------------------------- balance after training

def test_every_expert_receives_tokens_after_training_with_the_aux_loss():
    torch.manual_seed(0)
    model = MoEGPT(MoEConfig(**TINY, n_experts=4, top_k=1))
    losses = _train(model, 40)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5  # it learns
    stats = model.router_stats()
    for layer_load in stats["load"]:
        assert min(layer_load) > 0, stats["load"]
    assert 0 <= stats["dropped_frac"] < 0.5


def test_bias_balancing_moves_the_bias_toward_balance():
    torch.manual_seed(0)
    cfg = MoEConfig(**TINY, n_experts=4, top_k=1, balance="bias", bias_rate=0.01, aux_weight=0.0,
                    capacity_factor=0)
    mlp = MoEMLP(cfg).train()
    x = torch.randn(1, 256, cfg.n_embd)
    with torch.no_grad():
        mlp.gate.weight.normal_(std=0.1)
        x[..., 0] += 3.0
        mlp.gate.weight[0, 0] = 1.0  # the router favours expert 0 for (almost) every token

    def shares() -> torch.Tensor:
        with torch.no_grad():
            mlp(x)
        load = mlp.step_load / mlp.step_load.sum()
        return load

    before = shares()
    mlp.step_load.zero_()
    assert before[0] > 0.8
    for _ in range(100):  # the same tokens each time, so only the bias changes the routing
        with torch.no_grad():
            mlp(x)
        mlp.update_bias()
    after = shares()
    bias = mlp.routing_bias
    assert bias[0] < 0 and torch.all(bias[1:] > 0)  # the overloaded expert pushed down, the others up
    assert after.max() < 0.5 and after.min() > 0.1, after  # near balance (0.25 each)
    # the bias decides selection only and is saved with the model
    assert "routing_bias" in mlp.state_dict()


# ----------------------------------------------------------------------------- Hugging Face round trip

FINE = dict(n_experts=8, top_k=2, expert_hidden=16, shared_hidden=16, shared_gate=False, qkv_bias=False,
            norm_topk_prob=True, balance="bias", bias_rate=0.01)


@pytest.mark.parametrize("arch, hf_class", [
    (dict(n_experts=4, top_k=1), "Qwen2MoeForCausalLM"),
    (dict(n_experts=4, top_k=2, shared_hidden=16), "Qwen2MoeForCausalLM"),
    (dict(n_experts=0), "Qwen2MoeForCausalLM"),
    (FINE, "Ernie4_5_MoeForCausalLM"),  # bias-balanced: the trained bias takes part in routing
])
def test_saved_moe_loads_in_transformers_with_matching_logits(tmp_path, arch, hf_class):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = MoEGPT(MoEConfig(**{**TINY, **arch}))
    _train(model, 8)
    if model.config.balance == "bias":  # a bias that changes which experts are chosen must be saved with them
        for m in model.moe_layers():
            m.routing_bias += torch.linspace(-0.05, 0.05, m.routing_bias.numel())
    save_moe_checkpoint(model, tmp_path / "moe")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "moe")
    assert type(hf).__name__ == hf_class
    x, _ = next(_batches(1, seed=3))
    model.eval()
    with torch.no_grad():
        ours = model(x)[0]
        theirs = hf(x).logits
        back = load_moe(tmp_path / "moe")
        assert torch.equal(ours, back(x)[0])
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert back.config == model.config


def test_a_model_no_hf_architecture_expresses_is_refused(tmp_path):
    model = MoEGPT(MoEConfig(**TINY, n_experts=4, top_k=2, balance="bias"))  # bias, but Qwen2-style attention
    with pytest.raises(CheckpointError, match="Ernie-4.5-MoE, which needs"):
        save_moe_checkpoint(model, tmp_path / "moe")
    assert not (tmp_path / "moe" / "config.json").exists()


@pytest.mark.parametrize("bad, match", [(dict(top_k=5), "top_k=5"), (dict(balance="loss"), "balance='loss'"),
                                        (dict(n_head=3), "n_head=3")])
def test_bad_config_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        MoEGPT(MoEConfig(**{**TINY, "n_experts": 4, **bad}))


# ----------------------------------------------------------------------------- generation with our engine

@pytest.mark.parametrize("arch", [dict(n_experts=4, top_k=2, shared_hidden=16), FINE], ids=["qwen2_moe", "ernie"])
def test_engine_generates_from_the_saved_moe_as_transformers_does(tmp_path, arch):
    """open_model picks the MoE engine model for a Qwen2-MoE checkpoint; greedy tokens equal HF generate's,
    with prompts batched together and a prompt split into chunks (continuous batching, chunked prefill)."""
    from transformers import AutoModelForCausalLM

    from shared.engine import EngineConfig, SamplingParams
    from shared.serving.runtime import open_model

    torch.manual_seed(0)
    model = MoEGPT(MoEConfig(**{**TINY, **arch}))
    _train(model, 30)
    save_moe_checkpoint(model, tmp_path / "moe")
    opened = open_model(tmp_path / "moe", config=EngineConfig(max_batch_size=2, prefill_chunk=3))
    assert opened.kind == "hf-model" and type(opened.engine.model).__name__ == "MoEEngineModel"
    prompts = [[5, 6, 7, 8, 9], [40, 41]]
    outs = opened.engine.generate(prompts, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "moe")
    for prompt, out in zip(prompts, outs):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert out.token_ids == ref[0, len(prompt):].tolist()
    if arch is not FINE:  # (the 8-expert model has not learned it in 30 steps)
        assert outs[0].token_ids[:3] == [10, 11, 12]  # not a degenerate model: it learned to count

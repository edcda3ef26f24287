"""Models and objectives on real text: shapes, invariances, gradients, EMA, λ, overfitting, FLOPs, export."""

from pathlib import Path

import pytest
import torch

from harness.config import Config, load_config
from models import encode, export_encoder, momentum_at
from objectives import OBJECTIVES, PretrainModule, get_objective, mask_plan, train_flops_per_step
from objectives.flops import measured_flops, shape_of
from objectives.jepa import forward_target, gather_positions
from objectives.masking import MaskedBatch, SpecialTokens, mask_batch

TINY = Path(__file__).resolve().parents[1] / "studies" / "configs" / "tiny.yaml"
VARIANTS = [("mlm", 2), ("jepa", 2), ("hybrid", 2), ("hybrid", 1)]


def tiny(name: str = "hybrid", passes: int = 2, *extra: str) -> Config:
    return load_config(TINY, [f"objective.name={name}", f"objective.passes={passes}", "model.dropout=0.0", *extra])


def masked(cfg: Config, ids: torch.Tensor, tokenizer, seed: int = 0, attn: torch.Tensor | None = None) -> MaskedBatch:
    attn = torch.ones_like(ids) if attn is None else attn
    return mask_batch(ids, attn, mask_plan(cfg), cfg.masking, SpecialTokens.from_tokenizer(tokenizer),
                      torch.Generator().manual_seed(seed))


def test_unknown_objective_names_the_valid_ones() -> None:
    assert set(OBJECTIVES) == {"mlm", "jepa", "hybrid"}
    with pytest.raises(KeyError, match=r"valid names: \['hybrid', 'jepa', 'mlm'\]"):
        get_objective("simcse")


def test_padding_never_changes_real_positions(padded_sentences) -> None:
    ids, attn = padded_sentences
    torch.manual_seed(0)
    module = PretrainModule(tiny()).eval()
    row = int(attn.sum(1).argmin())  # the shortest sentence, most padded
    n = int(attn[row].sum())
    with torch.no_grad():
        padded = encode(module.nets.encoder, ids[row:row + 1], attn[row:row + 1])[0, :n]
        alone = encode(module.nets.encoder, ids[row:row + 1, :n], attn[row:row + 1, :n])[0]
        more = torch.cat([ids[row:row + 1], torch.zeros(1, 17, dtype=ids.dtype)], 1)
        more_attn = torch.cat([attn[row:row + 1], torch.zeros(1, 17, dtype=attn.dtype)], 1)
        longer = encode(module.nets.encoder, more, more_attn)[0, :n]
    assert ids.shape[1] > n
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(longer, alone, atol=1e-5, rtol=1e-5)


def test_context_pass_equals_full_pass_restricted_to_context(packed_ids, tokenizer) -> None:
    """Encoding gathered context tokens at their original positions == the full sequence with only the
    context visible: the context encoder sees exactly the context, nothing of the targets."""
    cfg = tiny("jepa")
    ids = packed_ids(4, 64)
    batch = masked(cfg, ids, tokenizer)
    torch.manual_seed(0)
    module = PretrainModule(cfg).eval()
    with torch.no_grad():
        gathered = encode(module.nets.encoder, ids.gather(1, batch.ctx_idx), None, position_ids=batch.ctx_idx)
        visible = torch.zeros_like(ids).scatter_(1, batch.ctx_idx, 1)
        full = encode(module.nets.encoder, ids, visible)
    torch.testing.assert_close(gathered, full.gather(1, batch.ctx_idx[..., None].expand_as(gathered)),
                               atol=1e-5, rtol=1e-4)


def test_predictor_shapes_and_blocks_predicted_independently(packed_ids, tokenizer) -> None:
    cfg = tiny("jepa")
    batch = masked(cfg, packed_ids(4, 64), tokenizer)
    torch.manual_seed(0)
    predictor = PretrainModule(cfg).nets.predictor.eval()
    context = torch.randn(4, batch.ctx_idx.shape[1], cfg.model.hidden_size)
    with torch.no_grad():
        pred = predictor(context, batch.ctx_idx, batch.tgt_idx)
        moved = batch.tgt_idx.clone()
        moved[1] = (moved[1] + 1) % 64
        pred_moved = predictor(context, batch.ctx_idx, moved)
    assert pred.shape == (*batch.tgt_idx.shape, cfg.model.hidden_size)
    torch.testing.assert_close(pred[0], pred_moved[0])  # block 0 does not see block 1
    assert not torch.allclose(pred[1], pred_moved[1])


@pytest.mark.parametrize(("name", "passes"), VARIANTS)
def test_gradients_reach_trained_parts_never_the_target(name: str, passes: int, packed_ids, tokenizer) -> None:
    cfg = tiny(name, passes)
    torch.manual_seed(0)
    module = PretrainModule(cfg)
    loss, metrics = module(masked(cfg, packed_ids(8, 64), tokenizer), diagnostics=True)
    loss.backward()
    trained = {"encoder": module.nets.encoder, "mlm_head": module.nets.mlm_head,
               "predictor": module.nets.predictor, "weighting": module.weighting}
    for part, net in trained.items():
        if net is None:
            continue
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), f"{part} has parameters without gradients"
        assert sum(g.abs().sum().item() for g in grads) > 0, f"{part} got zero gradients"
    if module.nets.target is not None:
        assert all(p.grad is None and not p.requires_grad for p in module.nets.target.parameters())
    expected = {"loss", "lambda"}
    if name != "jepa":
        expected |= {"loss_mlm", "mlm_acc"}
    if name != "mlm":
        expected |= {"loss_jepa", "target_std", "pred_erank", "ctx_len", "tgt_len", "ctx_tgt_overlap"}
    assert expected <= set(metrics)
    if name != "mlm":
        assert metrics["ctx_tgt_overlap"] == 0 and metrics["pred_erank"] > 1


def test_target_is_the_ema_encoder_layer_normed_without_affine(packed_ids, tokenizer) -> None:
    cfg = tiny("jepa")
    module = PretrainModule(cfg)
    batch = masked(cfg, packed_ids(4, 64), tokenizer)
    target = forward_target(module, batch)
    with torch.no_grad():
        hidden = encode(module.nets.target, batch.input_ids, batch.attention_mask)
    full = gather_positions(torch.nn.functional.layer_norm(hidden, hidden.shape[-1:]), batch.tgt_idx)
    torch.testing.assert_close(target, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target.mean(-1), torch.zeros(target.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1, unbiased=False), torch.ones(target.shape[:-1]), atol=1e-3, rtol=0)


def test_ema_update_arithmetic_and_schedule() -> None:
    cfg = tiny("jepa")
    module = PretrainModule(cfg)
    with torch.no_grad():
        for p in module.nets.encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in module.nets.target.parameters()]
    online = [p.clone() for p in module.nets.encoder.parameters()]
    module.nets.update_target(0.9)
    for t0, o, t1 in zip(before, online, module.nets.target.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * o)
    assert momentum_at(0, 100, 0.996, 1.0) == 0.996
    assert momentum_at(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(100, 100, 0.996, 1.0) == momentum_at(500, 100, 0.996, 1.0) == 1.0
    assert not module.nets.train().target.training  # the target never runs dropout


@pytest.mark.parametrize("seed", range(4))
def test_learned_lambda_gradient_sign_follows_the_loss_gap(seed: int, packed_ids, tokenizer) -> None:
    cfg = tiny("hybrid", 2, f"objective.lambda_init={0.2 + 0.2 * seed}")
    torch.manual_seed(seed)
    module = PretrainModule(cfg)
    loss, metrics = module(masked(cfg, packed_ids(8, 64), tokenizer, seed=seed))
    loss.backward()
    gap = (metrics["loss_jepa"] - metrics["loss_mlm"]).item()
    assert metrics["lambda"].item() == pytest.approx(cfg.objective.lambda_init)
    assert torch.sign(module.weighting.w.grad).item() == pytest.approx(torch.sign(torch.tensor(gap)).item())


def test_fixed_and_uncertainty_weighting(packed_ids, tokenizer) -> None:
    fixed_cfg = tiny("hybrid", 2, "objective.weighting=fixed", "objective.lambda_init=0.3")
    fixed = PretrainModule(fixed_cfg)
    assert not list(fixed.weighting.parameters())
    batch = masked(fixed_cfg, packed_ids(8, 64), tokenizer)
    loss, m = fixed(batch)
    torch.testing.assert_close(loss.detach(), 0.3 * m["loss_jepa"] + 0.7 * m["loss_mlm"])
    unc = PretrainModule(tiny("hybrid", 2, "objective.weighting=uncertainty", "objective.lambda_init=0.3"))
    loss, m = unc(batch)
    assert m["lambda"].item() == pytest.approx(0.3)  # starts at the configured share
    log_var = unc.weighting.log_var.detach()
    torch.testing.assert_close(loss.detach(), 0.3 * m["loss_jepa"] + 0.7 * m["loss_mlm"] + 0.5 * log_var.sum())


@pytest.mark.parametrize(("name", "passes"), VARIANTS)
def test_overfits_one_real_batch(name: str, passes: int, packed_ids, tokenizer) -> None:
    cfg = tiny(name, passes)
    torch.manual_seed(0)
    module = PretrainModule(cfg)
    batch = masked(cfg, packed_ids(8, 64), tokenizer)
    optimiser = torch.optim.AdamW(module.param_groups(0.0), lr=2e-3)
    history = []
    for step in range(40):
        loss, metrics = module(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        module.nets.update_target(momentum_at(step, 40, 0.99, 1.0))
        history.append({k: float(v) for k, v in metrics.items() if k.startswith("loss")})
    for term in (k for k in history[0] if k != "loss"):
        assert history[-1][term] < 0.5 * history[0][term], f"{term}: {history[0][term]:.3f} -> {history[-1][term]:.3f}"


@pytest.mark.parametrize(("name", "passes"), VARIANTS)
def test_analytic_flops_within_ten_percent_of_the_counter(name: str, passes: int, packed_ids, tokenizer) -> None:
    cfg = tiny(name, passes, "model.hidden_size=128", "model.intermediate_size=512")
    module = PretrainModule(cfg)
    batch = masked(cfg, packed_ids(8, 64), tokenizer)

    def step() -> None:
        loss, _ = module(batch)
        loss.backward()

    measured = measured_flops(step)
    assert train_flops_per_step(cfg, shape_of(batch)) == pytest.approx(measured, rel=0.10)
    assert train_flops_per_step(cfg) == pytest.approx(measured, rel=0.10)  # expected mask sizes


def test_export_reload_gives_identical_outputs(tmp_path: Path, padded_sentences, tokenizer) -> None:
    from transformers import AutoModel, AutoTokenizer

    ids, attn = padded_sentences
    module = PretrainModule(tiny()).eval()
    out = export_encoder(module.nets.encoder, tmp_path / "export", tokenizer)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    reloaded = AutoModel.from_pretrained(out, attn_implementation="sdpa").eval()
    with torch.no_grad():
        torch.testing.assert_close(encode(reloaded, ids, attn), encode(module.nets.encoder, ids, attn))
    auto = AutoModel.from_pretrained(out)  # any HF tool reads it
    assert AutoTokenizer.from_pretrained(out).vocab_size == 30522
    with torch.no_grad():
        torch.testing.assert_close(auto(input_ids=ids, attention_mask=attn).last_hidden_state,
                                   encode(module.nets.encoder, ids, attn), atol=1e-5, rtol=1e-5)


def test_tied_mlm_head_shares_the_embedding() -> None:
    tied = PretrainModule(tiny("mlm")).nets
    assert tied.mlm_head.decoder.weight is tied.encoder.get_input_embeddings().weight
    untied = PretrainModule(tiny("mlm", 2, "model.tie_mlm_head=false")).nets
    assert untied.mlm_head.decoder.weight is not untied.encoder.get_input_embeddings().weight


def test_effective_rank_of_constructed_inputs() -> None:
    from objectives.jepa import effective_rank

    gen = torch.Generator().manual_seed(0)
    rank_one = torch.randn(256, 1, generator=gen) @ torch.randn(1, 32, generator=gen)
    assert effective_rank(rank_one).item() == pytest.approx(1.0, abs=0.05)
    assert effective_rank(torch.eye(32)).item() == pytest.approx(32.0)
    assert torch.isnan(effective_rank(torch.full((8, 4), float("nan"))))


@pytest.fixture
def extra_objective():
    """A small objective registered for one test: MLM on half the loss scale, with MLM's masks and FLOPs."""
    from objectives import ObjectiveSpec, register_objective
    from objectives.flops import mlm_matmuls
    from objectives.masking import MaskPlan
    from objectives.mlm import mlm_objective

    def half_mlm(module: PretrainModule, batch: MaskedBatch, diagnostics: bool):
        loss, metrics = mlm_objective(module, batch, diagnostics)
        return 0.5 * loss, {**metrics, "loss": 0.5 * loss.detach()}

    spec = register_objective(ObjectiveSpec("half_mlm", half_mlm, lambda o: MaskPlan(mlm=True, jepa=False),
                                            mlm_matmuls))
    yield spec
    OBJECTIVES.pop(spec.name)


def test_a_registered_objective_trains_through_train_step_and_counts_flops(extra_objective, packed_ids,
                                                                          tokenizer) -> None:
    from harness.step import build_optimizer, train_step

    with pytest.raises(ValueError, match="already registered"):
        from objectives import register_objective

        register_objective(extra_objective)
    cfg = tiny("half_mlm")  # the config accepts the new name
    module = PretrainModule(cfg)
    assert module.nets.mlm_head is not None and module.nets.predictor is None and module.weighting is None
    batch = masked(cfg, packed_ids(8, 64), tokenizer)
    before = [p.detach().clone() for p in module.parameters()]
    optimizer = build_optimizer(module, cfg)
    loss, metrics = train_step(module, module, optimizer, batch, 1.0, 0.99, diagnostics=True)
    assert torch.isfinite(loss) and "grad_norm" in metrics and "mlm_acc" in metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))

    def step() -> None:
        module(batch)[0].backward()

    assert train_flops_per_step(cfg) == train_flops_per_step(tiny("mlm"))  # its spec's FLOPs: MLM's
    assert train_flops_per_step(cfg, shape_of(batch)) == pytest.approx(measured_flops(step), rel=0.10)


def test_gradient_clipping_sees_the_networks_never_the_loss_weighting(packed_ids, tokenizer) -> None:
    """train_step clips (and reports the norm of) the networks' gradients only; λ's parameter keeps its raw
    gradient, so the networks' clip factor cannot depend on the gap between the two losses."""
    from harness.step import build_optimizer, train_step

    cfg = tiny("hybrid", 2)
    batch = masked(cfg, packed_ids(8, 64), tokenizer)
    torch.manual_seed(0)
    reference = PretrainModule(cfg)
    reference(batch)[0].backward()
    raw_w_grad = reference.weighting.w.grad.clone()
    network_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.network_parameters()
                                                         if p.grad is not None]))
    assert raw_w_grad.abs() > 0 and "weighting.w" not in {n for n, p in reference.named_parameters()
                                                          if any(p is q for q in reference.network_parameters())}

    torch.manual_seed(0)
    module = PretrainModule(cfg)
    _, metrics = train_step(module, module, build_optimizer(module, cfg), batch, grad_clip=1e-3, momentum=0.99,
                            diagnostics=False)
    assert metrics["grad_norm"].item() == pytest.approx(network_norm.item(), rel=1e-4)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.network_parameters()
                                                    if p.grad is not None]))
    assert clipped.item() == pytest.approx(1e-3, rel=1e-3)
    torch.testing.assert_close(module.weighting.w.grad, raw_w_grad)  # untouched by the clip

"""Next-DiT transformer: shapes, timestep handling, masking, attention backends, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from model import nextdit
from model.nextdit import (
    CONFIGS,
    NextDiT,
    config_from_released_json,
    count_parameters,
    expected_state_dict_shapes,
    fused_projections,
    load_released,
    softcapped_attention,
)

TINY = CONFIGS["tiny"]


def tiny_model(seed: int = 0) -> NextDiT:
    """Tiny model with every parameter perturbed, so zero-initialised gates/outputs are live."""
    torch.manual_seed(seed)
    model = NextDiT(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def inputs(b=2, f=2, h=4, w=4, length=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, f, TINY.in_channels, h, w, generator=g)
    t = torch.rand(b, f, generator=g) * 1000
    text = torch.randn(b, length, TINY.caption_channels, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    return latents, t, text, mask


@pytest.mark.parametrize("views,h,w", [(1, 4, 4), (2, 4, 4), (4, 4, 4), (2, 4, 6), (3, 6, 2)])
def test_forward_shapes(views, h, w):
    model = tiny_model()
    latents, t, text, mask = inputs(f=views, h=h, w=w)
    with torch.no_grad():
        out = model(latents, t, text, mask)
        assert out.shape == latents.shape and out.dtype == latents.dtype
        assert torch.isfinite(out).all()
        # a single timestep per sample broadcasts over views
        assert model(latents, t[:, 0], text, mask).shape == latents.shape


def test_bad_shapes_raise_one_line():
    model = tiny_model()
    latents, t, text, mask = inputs()
    with pytest.raises(ValueError, match="divisible"):
        model(latents[..., :3], t, text, mask)
    with pytest.raises(ValueError, match="timesteps"):
        model(latents, t[:, :1].expand(2, 3), text, mask)


def test_per_token_timesteps_equal_per_view_when_constant():
    model = tiny_model()
    latents, t, text, mask = inputs(f=3, h=4, w=6)
    per_token = t[:, :, None, None, None].expand_as(latents).contiguous()
    with torch.no_grad():
        a = model(latents, t, text, mask)
        b = model(latents, per_token, text, mask)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_per_token_timesteps_modulate_each_token():
    model = tiny_model()
    latents, t, text, mask = inputs()
    per_token = t[:, :, None, None, None].expand_as(latents).clone()
    changed = per_token.clone()
    changed[:, 0, :, :2, :2] = 0.0  # one patch of view 0 becomes clean
    with torch.no_grad():
        assert not torch.allclose(model(latents, per_token, text, mask), model(latents, changed, text, mask))


def test_changing_one_views_timestep_changes_all_views():
    model = tiny_model()
    latents, t, text, mask = inputs(f=2)
    t2 = t.clone()
    t2[:, 0] = 0.0
    with torch.no_grad():
        a, b = model(latents, t, text, mask), model(latents, t2, text, mask)
    for view in range(2):  # view 1 changes too: all views attend to each other
        assert (a[:, view] - b[:, view]).abs().max() > 1e-4


def test_views_are_ordered_not_a_set():
    """3D RoPE's view axis: swapping two views is not just swapping the outputs."""
    model = tiny_model()
    latents, t, text, mask = inputs(f=2)
    t = t[:, :1].expand(-1, 2).contiguous()
    with torch.no_grad():
        a = model(latents, t, text, mask)
        b = model(latents.flip(1), t, text, mask).flip(1)
    assert not torch.allclose(a, b, atol=1e-4)


def test_gradients_reach_every_parameter():
    model = tiny_model().train()
    latents, t, text, mask = inputs()
    latents.requires_grad_(True)
    model(latents, t, text, mask).square().mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fresh_init_is_zero_output_and_trains():
    """adaLN-zero style init: output 0 at start, gradient reaches the output projection."""
    torch.manual_seed(0)
    model = NextDiT(TINY).train()
    latents, t, text, mask = inputs()
    out = model(latents, t, text, mask)
    assert out.abs().max() == 0
    (out - latents).square().mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_text_padding_is_ignored():
    model = tiny_model()
    latents, t, text, mask = inputs(length=6)
    mask[0, 4:] = False
    mask[1, 2:] = False
    noisy = text.clone()
    noisy[~mask] = 100 * torch.randn_like(noisy[~mask])
    longer = torch.cat([text, torch.randn(2, 3, TINY.caption_channels)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        ref = model(latents, t, text, mask)
        torch.testing.assert_close(model(latents, t, noisy, mask), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(latents, t, longer, longer_mask), ref, rtol=1e-5, atol=1e-5)
        changed = text.clone()
        changed[0, 0] += 1.0  # a real token does matter
        assert (model(latents, t, changed, mask)[0] - ref[0]).abs().max() > 1e-4
        # a caption with no valid token is well defined (no NaN)
        assert torch.isfinite(model(latents, t, text, torch.zeros_like(mask))).all()


def test_softcap_attention_math_matches_sdpa_without_cap_and_caps_logits():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 10, 24), torch.randn(2, 2, 10, 24), torch.randn(2, 2, 10, 24)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(softcapped_attention(q, k, v, None, "math"), ref)
    # with a cap far above the logits the cap changes nothing; a tight cap flattens attention
    torch.testing.assert_close(softcapped_attention(q, k, v, 1e6, "math"), ref, rtol=1e-5, atol=1e-5)
    big = 50 * q
    capped = softcapped_attention(big, k, v, 1e-3, "math")
    torch.testing.assert_close(capped, v.repeat_interleave(2, 1).mean(dim=2, keepdim=True).expand_as(capped),
                               rtol=1e-3, atol=1e-3)


def test_compiled_flex_matches_math():
    """The model's CUDA path (compiled flex with the sigmoid form of the cap), compiled here on the CPU, against
    the float32 reference with tanh: the same soft-capped attention."""
    torch.manual_seed(0)
    q, k, v = 3 * torch.randn(1, 4, 12, 24), 3 * torch.randn(1, 2, 12, 24), torch.randn(1, 2, 12, 24)
    with torch.no_grad():
        flex = softcapped_attention(q, k, v, 30.0, "flex")
    torch.testing.assert_close(flex, softcapped_attention(q, k, v, 30.0, "math"), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_matches_math():
    torch.manual_seed(0)
    q, k, v = 3 * torch.randn(1, 4, 12, 24), 3 * torch.randn(1, 2, 12, 24), torch.randn(1, 2, 12, 24)
    try:
        flex = softcapped_attention(q, k, v, 30.0, "flex_eager")
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"flex_attention does not run on this CPU build: {exc}")
    torch.testing.assert_close(flex, softcapped_attention(q, k, v, 30.0, "math"), rtol=1e-4, atol=1e-5)
    model = tiny_model()
    latents, t, text, mask = inputs()
    with torch.no_grad():
        a = model(latents, t, text, mask)
        model.attn_backend = "flex_eager"
        b = model(latents, t, text, mask)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_same_output_and_grads():
    latents, t, text, mask = inputs()
    results = []
    for ckpt in (False, True):
        model = tiny_model().train()
        model.gradient_checkpointing = ckpt
        out = model(latents, t, text, mask)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], msg=name)


def compiled_recording(fn, graphs: list):
    """``fn`` compiled whole; the ops each traced graph calls go to ``graphs``, then it runs as traced (autograd too)."""
    def record(gm, example_inputs):
        graphs.append([node.target for node in gm.graph.nodes if node.op == "call_function"])
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    return torch.compile(fn, backend=record, fullgraph=True)


def products(calls: list) -> int:
    return sum(target in (F.linear, torch._C._nn.linear) for target in calls)


@pytest.mark.parametrize("autocast", [True, False])
def test_projections_are_one_product_only_where_a_compiled_graph_casts_the_weights(autocast, monkeypatch):
    monkeypatch.setattr(nextdit, "FUSING_DEVICES", ("cpu",))  # a GPU's rule, traced on the CPU
    torch.manual_seed(0)
    layers = [torch.nn.Linear(32, n, bias=False) for n in (32, 16, 16)]
    graphs = []

    def loss(x):
        return sum((i + 1) * out.float().square().sum() for i, out in enumerate(fused_projections(x, *layers)))

    def grads(fn):
        x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            fn(x).backward()
        out = [x.grad, *(layer.weight.grad for layer in layers)]
        for layer in layers:
            layer.weight.grad = None
        return out

    eager, compiled = grads(loss), grads(compiled_recording(loss, graphs))
    calls, = graphs
    # under autocast the fp32 weights are cast in the graph anyway, so their concatenation rides along;
    # without, it would be a copy of the weights: one product each
    assert (products(calls), torch.cat in calls) == ((1, True) if autocast else (3, False))
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * want.abs().max())


def test_projections_stay_apart_off_the_fusing_devices_and_for_biased_layers(monkeypatch):
    def traced_products(layers, devices):
        monkeypatch.setattr(nextdit, "FUSING_DEVICES", devices)
        graphs = []
        with torch.autocast("cpu", torch.bfloat16):
            compiled_recording(lambda x: fused_projections(x, *layers), graphs)(torch.randn(3, 8))
        torch.compiler.reset()
        return products(graphs.pop())

    plain = [torch.nn.Linear(8, 4, bias=False) for _ in range(2)]
    assert traced_products(plain, ("cpu",)) == 1
    assert traced_products(plain, ("cuda",)) == 2  # the CPU is not a fusing device
    assert traced_products([torch.nn.Linear(8, 4), torch.nn.Linear(8, 4, bias=False)], ("cpu",)) == 2  # a bias stays


# ---------------------------------------------------------------------------------------------
# The released model's computation, restated functionally from its source (per-token adaLN,
# complex-number RoPE table, per-token timestep embedding), to check our module against it.
# ---------------------------------------------------------------------------------------------


def _released_forward(sd, cfg, latents, timesteps, text, mask):
    d, heads, kvh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
    hd = d // heads
    b, f, c, h, w = latents.shape

    def tokens(x):  # their (view, row, col) token order with (pT, pH, pW, C) features, pT = 1
        return x.reshape(b, f, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 4, 6, 2).reshape(b, -1, 4 * c)

    def lin(x, name, bias=True):
        return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias") if bias else None)

    def rms(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * sd[name + ".weight"]

    def ln(x, name, eps):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)

    # complex RoPE table over (view, row, col), sliced to the grid
    n = hd // 6
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 6)[:n] / hd))
    table = torch.polar(torch.ones(128, n), torch.outer(torch.arange(128.0), freqs))
    gf, gh, gw = f, h // 2, w // 2
    cis = torch.cat([table[:gf, None, None].expand(gf, gh, gw, n), table[None, :gh, None].expand(gf, gh, gw, n),
                     table[None, None, :gw].expand(gf, gh, gw, n)], -1).reshape(1, -1, 1, 3 * n)

    def rope(x):
        return torch.view_as_real(torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * cis).flatten(-2)

    # per-token timesteps: mean over each patch
    t_tok = tokens(timesteps[:, :, None, None, None].expand_as(latents)).mean(-1)
    half = 128
    fr = torch.exp(-math.log(10000) * torch.arange(half) / half)
    arg = t_tok[..., None] * fr
    temb = lin(F.silu(lin(torch.cat([arg.cos(), arg.sin()], -1), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    mf = mask[..., None].float()
    pooled = (text * mf).sum(1) / (mf.sum(1) + 1e-8)
    yemb = lin(F.layer_norm(pooled, pooled.shape[-1:], sd["y_embedder.0.weight"], sd["y_embedder.0.bias"], 1e-6),
               "y_embedder.1")
    adaln = F.silu(temb + yemb[:, None])

    x = lin(tokens(latents), "x_embedder")
    nt = x.shape[1]
    for i in range(cfg.depth):
        p = f"layers.{i}."
        s1, g1, s2, g2 = lin(adaln, p + "adaLN_modulation.1").chunk(4, -1)
        a_in = rms(x, p + "attention_norm1") * (1 + s1)
        q = rope(ln(lin(a_in, p + "attention.wq", False), p + "attention.q_norm", 1e-5).view(b, nt, heads, hd))
        k = rope(ln(lin(a_in, p + "attention.wk", False), p + "attention.k_norm", 1e-5).view(b, nt, kvh, hd))
        v = lin(a_in, p + "attention.wv", False).view(b, nt, kvh, hd)
        k, v = k.repeat_interleave(heads // kvh, 2), v.repeat_interleave(heads // kvh, 2)
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        o = torch.einsum("bhqk,bkhd->bqhd", (30 * torch.tanh(s / 30)).softmax(-1), v)
        y = rms(text, p + "attention_y_norm")
        yk = ln(lin(y, p + "attention.wk_y", False), p + "attention.ky_norm", 1e-6).view(b, -1, kvh, hd)
        yv = lin(y, p + "attention.wv_y", False).view(b, -1, kvh, hd)
        yk, yv = yk.repeat(1, 1, heads // kvh, 1), yv.repeat(1, 1, heads // kvh, 1)  # tiled heads
        sy = torch.einsum("bqhd,bkhd->bhqk", q, yk) / math.sqrt(hd)
        sy = sy.masked_fill(~mask[:, None, None, :], float("-inf"))
        oy = torch.einsum("bhqk,bkhd->bqhd", sy.softmax(-1), yv)
        o = o + oy * torch.tanh(sd[p + "attention.gate"]).view(1, 1, -1, 1)
        x = x + torch.tanh(g1) * rms(lin(o.flatten(-2), p + "attention.wo", False), p + "attention_norm2")
        ff_in = rms(x, p + "ffn_norm1") * (1 + s2)
        ff = lin(F.silu(lin(ff_in, p + "feed_forward.w1", False)) * lin(ff_in, p + "feed_forward.w3", False),
                 p + "feed_forward.w2", False)
        x = x + torch.tanh(g2) * rms(ff, p + "ffn_norm2")
    scale = lin(adaln, "final_layer.adaLN_modulation.1")
    x = lin(F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale), "final_layer.linear")
    x = x.view(b, f, h // 2, w // 2, 1, 2, 2, c).permute(0, 1, 4, 7, 2, 5, 3, 6)
    return x.reshape(b, f, c, h, w)


def test_matches_released_computation():
    model = tiny_model()
    latents, t, text, mask = inputs(f=3, h=4, w=6, length=6)
    t = t.round()  # integer σ·1000: the reference's float32 patch mean is then exact too
    mask[1, 3:] = False
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ours = model(latents, t, text, mask)
        theirs = _released_forward(sd, TINY, latents, t, text, mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_gradients_match_released_computation():
    """Every parameter's gradient equals the one through the released computation; float64, but the
    reference's RoPE and timestep tables are float32 (relative differences ~2e-5; a swapped projection is O(1))."""
    model = tiny_model().double()
    model.attn_backend = "math"
    latents, t, text, mask = (x.double() if x.is_floating_point() else x for x in inputs(f=2, h=4, w=4, length=6))
    t = t.round()
    mask[0, 4:] = False
    sd = {k: v.detach().clone().requires_grad_(True) for k, v in model.state_dict().items()}
    target = torch.randn_like(latents)
    F.mse_loss(model(latents, t, text, mask), target).backward()
    F.mse_loss(_released_forward(sd, TINY, latents, t, text, mask), target).backward()
    for name, param in model.named_parameters():
        reference = sd[name].grad
        torch.testing.assert_close(param.grad, reference, rtol=1e-3, atol=1e-3 * reference.abs().max() + 1e-12,
                                   msg=name)


# ---------------------------------------------------------------------------------------------
# Released checkpoint compatibility
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_matches_released_table_on_meta(name):
    cfg = CONFIGS[name]
    with torch.device("meta"):
        model = NextDiT(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected_state_dict_shapes(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(cfg)


def test_released_size_parameter_count():
    n = count_parameters(CONFIGS["onediffusion-2.8b"])
    print(f"onediffusion-2.8b parameters: {n:,}")
    assert n == 2_800_389_184
    assert 2.6e9 < n < 3.0e9


def test_load_released_missing_folder_names_path_and_key(tmp_path):
    missing = tmp_path / "nowhere" / "transformer"
    with pytest.raises(FileNotFoundError) as info:
        load_released(missing)
    message = str(info.value)
    assert str(missing) in message and "model.checkpoint" in message and "\n" not in message


def _save_released_style(model: NextDiT, folder, shards: int):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    items = sorted(model.state_dict().items())
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 \
            else "diffusion_pytorch_model.safetensors"
        part = {k: v.contiguous() for k, v in items[i::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    if shards > 1:
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = model.config  # the released diffusers config.json field names
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "NextDiT", "input_size": [1, 32, 32], "patch_size": list(cfg.patch_size),
        "in_channels": cfg.in_channels, "hidden_size": cfg.hidden_size, "depth": cfg.depth,
        "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads, "multiple_of": cfg.multiple_of,
        "ffn_dim_multiplier": cfg.ffn_dim_multiplier, "norm_eps": cfg.norm_eps, "pred_sigma": False,
        "caption_channels": cfg.caption_channels, "qk_norm": cfg.qk_norm, "norm_type": "rms",
        "model_max_length": 300, "rotary_max_length": cfg.rope_max_positions, "rotary_max_length_t": None}))


@pytest.mark.parametrize("shards", [1, 2])
def test_load_released_roundtrip(tmp_path, shards):
    model = tiny_model()
    folder = tmp_path / "transformer"
    _save_released_style(model, folder, shards)
    assert config_from_released_json(folder / "config.json") == TINY
    loaded = load_released(folder, "cpu")
    latents, t, text, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(latents, t, text, mask), model(latents, t, text, mask))
    with pytest.raises(RuntimeError, match="does not match"):
        load_released(folder, config=CONFIGS["small"])

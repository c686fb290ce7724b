"""The MaMOL model (core/mamol_model.py) on a tiny seeded open_clip ViT."""
import copy

import pytest
import torch
import torch.nn.functional as F

from mamol.core import backbone as bb
from mamol.core import mamol_model as mm

MODALITIES = [mm.ModalitySpec("hs", 6), mm.ModalitySpec("sar", 2), mm.ModalitySpec("lidar", 1)]
CLASSES = 5
P = 6
ALL_PATTERNS = torch.arange(1, 8)


@pytest.fixture(scope="module")
def tiny_visual():
    return bb.build_visual_tower(bb.BackboneSpec(arch=bb.TINY_ARCH, seed=11))


def make_model(visual, experts=mm.ExpertSet.FULL, **config):
    config.setdefault("layers", 3)
    torch.manual_seed(0)
    return mm.MamolModel(MODALITIES, CLASSES, copy.deepcopy(visual),
                         mm.AdapterConfig(experts=experts, **config))


def batch(size=14, patch=P, seed=0, patterns=ALL_PATTERNS):
    generator = torch.Generator().manual_seed(seed)
    windows = {m.name: torch.randn(size, m.bands, patch, patch, generator=generator)
               for m in MODALITIES}
    pattern = patterns.repeat(size // len(patterns) + 1)[:size]
    labels = torch.randint(0, CLASSES, (size,), generator=generator)
    return windows, pattern, labels


def randomise_lora_b(model, scale=0.05):
    """Give the zero-initialised B matrices values, as training would."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


# ------------------------------------------------------------------ freezing, gradients

@pytest.mark.parametrize("experts", list(mm.ExpertSet))
def test_frozen_backbone_unchanged_and_every_trainable_tensor_learns(tiny_visual, experts):
    model = make_model(tiny_visual, experts)
    frozen = {n: t.clone() for n, t in model.encoder.visual.state_dict().items()}
    assert not any(p.requires_grad for p in model.encoder.visual.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=2e-2)
    model.train()
    for step in range(3):
        windows, pattern, labels = batch(seed=step)
        optimizer.zero_grad()
        F.cross_entropy(model(windows, pattern), labels).backward()
        optimizer.step()
    # After the first steps B != 0, so A matrices and routers receive gradient too.
    silent = [name for name, p in model.named_parameters()
              if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not silent, f"{experts.value}: trainable tensors without gradient: {silent}"
    for name, tensor in model.encoder.visual.state_dict().items():
        assert torch.equal(tensor, frozen[name]), name
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in model.parameters() if p.requires_grad}


def test_ablations_have_exactly_their_experts(tiny_visual):
    def kinds(model):
        names = {n.split(".")[3] for n, _ in model.named_parameters()
                 if n.startswith("encoder.adapters.")}
        if model.pattern_embedding is not None:
            names.add("pattern_embedding")
        return names
    assert kinds(make_model(tiny_visual)) == {"dynamic", "router", "shared",
                                              "modality_specific", "pattern_embedding"}
    assert kinds(make_model(tiny_visual, mm.ExpertSet.NO_DYNAMIC)) == {"shared",
                                                                       "modality_specific"}
    assert kinds(make_model(tiny_visual, mm.ExpertSet.NO_STATIC)) == {"dynamic", "router",
                                                                      "pattern_embedding"}
    assert kinds(make_model(tiny_visual, mm.ExpertSet.NO_MODALITY_SPECIFIC)) == {
        "dynamic", "router", "shared", "pattern_embedding"}
    assert kinds(make_model(tiny_visual, mm.ExpertSet.NONE)) == set()


def test_adapters_sit_in_the_last_blocks(tiny_visual):
    model = make_model(tiny_visual, layers=2)
    assert len(model.encoder.adapters) == 2
    assert model.encoder.first_adapted == len(model.encoder.visual.transformer.resblocks) - 2
    with pytest.raises(Exception, match="between 1 and the backbone's 6"):
        make_model(tiny_visual, layers=7)


# ------------------------------------------------------------------ initial state

def plain_clip(visual, tokens, patch, encoder):
    """The unadapted frozen tower on the same tokens, written out independently."""
    cls = visual.class_embedding.expand(tokens.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, tokens], 1) + encoder.position_embedding(patch))
    x = visual.transformer(x)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj


@pytest.mark.parametrize("patch", [14, 6])
def test_initial_adapter_equals_frozen_clip(tiny_visual, patch):
    model = make_model(tiny_visual).eval()
    windows, pattern, _ = batch(size=4, patch=patch)
    with torch.no_grad():
        tokens = model.token_embeddings["hs"](windows["hs"])
        adapted = model.encode(0, windows["hs"], pattern)
        plain = plain_clip(model.encoder.visual, tokens, patch, model.encoder)
        assert torch.allclose(adapted, plain, atol=1e-6)
        randomise_lora_b(model)
        assert not torch.allclose(model.encode(0, windows["hs"], pattern), plain, atol=1e-4)


def test_native_grid_uses_the_position_table_unchanged(tiny_visual):
    encoder = make_model(tiny_visual).encoder
    assert encoder.position_embedding(14) is encoder.visual.positional_embedding
    assert encoder.position_embedding(9).shape == (82, encoder.width)


def test_eval_does_not_merge_or_change_outputs(tiny_visual):
    model = make_model(tiny_visual)
    randomise_lora_b(model)
    windows, pattern, _ = batch()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with torch.no_grad():
        train_logits = model.train()(windows, pattern)
        eval_logits = model.eval()(windows, pattern)
    assert torch.allclose(train_logits, eval_logits)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


# ------------------------------------------------------------------ routing

def reference_delta(adapter, z, context):
    """Δh written out token by token in fp32: the router's top-k experts with their gates,
    the shared expert and the encoded modality's expert, each as its own B A z."""
    def expert(experts, index, token):
        product = F.linear(F.linear(token, experts.lora_A[index]), experts.lora_B[index])
        return product * adapter.scale

    out = torch.zeros_like(z)
    gates = None
    if adapter.router is not None:
        router = adapter.router
        tokens = z.shape[1]
        concatenated = torch.cat(
            [z, context.pattern_embedding[:, None].expand(-1, tokens, -1),
             context.modality_embedding.expand(z.shape[0], tokens, -1)], dim=-1)
        gates = torch.softmax(router.W_t(F.gelu(router.f_t(concatenated))), dim=-1)
    for b in range(z.shape[0]):
        for t in range(z.shape[1]):
            token = z[b, t]
            total = torch.zeros_like(token)
            if gates is not None:
                top_gates, top_index = gates[b, t].topk(adapter.top_k)
                for gate, index in zip(top_gates, top_index.tolist()):
                    total = total + gate * expert(adapter.dynamic, index, token)
            if adapter.shared is not None:
                total = total + expert(adapter.shared, 0, token)
            if adapter.modality_specific is not None:
                total = total + expert(adapter.modality_specific, context.modality_index,
                                       token)
            out[b, t] = total
    return out


def adapter_inputs(model, modality=1, batch_size=3, tokens=11, seed=4):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch_size, tokens, model.encoder.width, generator=generator)
    context = mm.RoutingContext(
        pattern_embedding=(model.pattern_embedding(torch.tensor([7, 3, 6])[:batch_size])
                           if model.pattern_embedding is not None else None),
        modality_embedding=(model.modality_embedding.weight[modality]
                            if model.modality_embedding is not None else None),
        modality_index=modality)
    return z, context


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("experts", [e for e in mm.ExpertSet if e is not mm.ExpertSet.NONE])
def test_fused_experts_equal_a_per_token_reference(tiny_visual, experts, top_k):
    model = make_model(tiny_visual, experts, dynamic_experts=3, top_k=top_k)
    randomise_lora_b(model, scale=0.5)
    for modality in range(len(MODALITIES)):
        z, context = adapter_inputs(model, modality)
        for adapter in model.encoder.adapters:
            with torch.no_grad():
                fused = adapter(z, context)
                expected = reference_delta(adapter, z, context)
            error = (fused - expected).abs().max() / expected.abs().max()
            assert error <= 1e-5, f"{experts.value}, k={top_k}, modality {modality}: {error}"


@pytest.mark.parametrize("experts_count,top_k", [(2, 1), (3, 2), (4, 1)])
def test_each_token_has_exactly_its_top_k_routed_experts(tiny_visual, experts_count, top_k):
    """A routed expert changes exactly the tokens that have it among their top-k: changing
    its B leaves every other token's Δh bit for bit as it was."""
    model = make_model(tiny_visual, dynamic_experts=experts_count, top_k=top_k)
    randomise_lora_b(model)
    adapter = model.encoder.adapters[0]
    z, context = adapter_inputs(model, tokens=40)
    with torch.no_grad():
        weights = adapter.expert_weights(z, context)
        assert ((weights > 0).sum(dim=-1) == top_k).all()
        before = adapter(z, context)
        for expert in range(experts_count):
            saved = adapter.dynamic.lora_B.data[expert].clone()
            adapter.dynamic.lora_B.data[expert] += 1.0
            after = adapter(z, context)
            adapter.dynamic.lora_B.data[expert] = saved
            selected = weights[..., expert] > 0
            changed = (after != before).any(dim=-1)
            assert torch.equal(changed, selected), f"expert {expert}"


def test_encoder_forward_uses_no_host_syncing_operations(tiny_visual):
    """Inside the encoder nothing may wait for the GPU: no nonzero, index_add, item,
    tolist or tensor truth values (checked on the CPU by recording every torch call)."""
    from torch.overrides import TorchFunctionMode

    forbidden = {"nonzero", "argwhere", "index_add", "index_add_", "item", "tolist",
                 "__bool__", "masked_select", "unique", "any", "all"}

    class Record(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.add(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    model = make_model(tiny_visual)
    randomise_lora_b(model)
    windows, pattern, _ = batch(size=5)
    tokens = model.token_embeddings["hs"](windows["hs"])
    context = mm.RoutingContext(model.pattern_embedding(pattern),
                                model.modality_embedding.weight[0], 0)
    recorder = Record()
    with torch.no_grad(), recorder:
        model.encoder(tokens, context)
    assert "linear" in recorder.names  # the recorder saw the forward
    assert not recorder.names & forbidden, recorder.names & forbidden


@pytest.mark.parametrize("patch", [14, 6])
def test_sdpa_attention_equals_open_clips(tiny_visual, patch):
    model = make_model(tiny_visual)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, patch * patch + 1, model.encoder.width, generator=generator)
    with torch.no_grad():
        for block in model.encoder.visual.transformer.resblocks:
            ours = mm.frozen_attention(block, block.ln_1(x))
            theirs = block.attention(q_x=block.ln_1(x))
            assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_encoder_equals_open_clip_blocks_with_reference_adapters(tiny_visual):
    """The whole adapted encoder against open_clip's own blocks plus the per-token adapter
    reference, in fp32."""
    model = make_model(tiny_visual)
    randomise_lora_b(model, scale=0.3)
    encoder, visual = model.encoder, model.encoder.visual
    windows, pattern, _ = batch(size=3)
    tokens = model.token_embeddings["sar"](windows["sar"])
    context = mm.RoutingContext(model.pattern_embedding(pattern),
                                model.modality_embedding.weight[1], 1)
    with torch.no_grad():
        cls = visual.class_embedding.expand(3, 1, -1)
        x = visual.ln_pre(torch.cat([cls, tokens], 1) + encoder.position_embedding(P))
        for index, block in enumerate(visual.transformer.resblocks):
            if index < encoder.first_adapted:
                x = block(x)
                continue
            x = x + block.ls_1(block.attention(q_x=block.ln_1(x)))
            z = block.ln_2(x)
            x = x + block.ls_2(block.mlp(z)) + reference_delta(
                encoder.adapters[index - encoder.first_adapted], z, context)
        expected = visual._pool(x)[0] @ visual.proj
        actual = encoder(tokens, context)
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_router_gates_come_from_token_pattern_and_modality(tiny_visual):
    model = make_model(tiny_visual)
    router = model.encoder.adapters[0].router
    z = torch.randn(3, 5, model.encoder.width)
    pattern_embedding = model.pattern_embedding(torch.tensor([7, 3, 1]))
    modality_embedding = model.modality_embedding.weight[1]
    concatenated = torch.cat([z, pattern_embedding[:, None].expand(-1, 5, -1),
                              modality_embedding.expand(3, 5, -1)], dim=-1)
    expected = torch.softmax(router.W_t(F.gelu(router.f_t(concatenated))), dim=-1)
    assert torch.allclose(router(z, pattern_embedding, modality_embedding), expected, atol=1e-6)


def test_pattern_code_alone_changes_routing_and_output(tiny_visual):
    model = make_model(tiny_visual).eval()
    randomise_lora_b(model)
    gates = []
    model.encoder.adapters[-1].router.register_forward_hook(
        lambda module, args, output: gates.append(output))
    windows, _, _ = batch(size=4)
    with torch.no_grad():
        full = model.encode(0, windows["hs"], torch.full((4,), 7))
        hs_only = model.encode(0, windows["hs"], torch.full((4,), 1))
    assert not torch.allclose(gates[0], gates[1])
    assert not torch.allclose(full, hs_only, atol=1e-5)
    with torch.no_grad():
        logits_full = model.head(torch.cat([full, torch.zeros_like(full).repeat(1, 2)], 1))
        logits_hs = model.head(torch.cat([hs_only, torch.zeros_like(full).repeat(1, 2)], 1))
    assert not torch.allclose(logits_full, logits_hs, atol=1e-5)


def test_modality_expert_learns_only_from_its_own_passes(tiny_visual):
    model = make_model(tiny_visual)
    windows, _, labels = batch()
    hs_only = torch.full((len(labels),), 0b001)
    F.cross_entropy(model(windows, hs_only), labels).backward()
    for adapter in model.encoder.adapters:
        grad = adapter.modality_specific.lora_B.grad
        assert grad[0].abs().sum() > 0
        assert grad[1].abs().sum() == 0 and grad[2].abs().sum() == 0


# ------------------------------------------------------------------ missing modalities

def test_missing_modality_is_zero_and_not_encoded(tiny_visual):
    model = make_model(tiny_visual).eval()
    randomise_lora_b(model)
    encoded = {m.name: [] for m in MODALITIES}
    for name, embedding in model.token_embeddings.items():
        embedding.register_forward_hook(
            lambda module, args, output, name=name: encoded[name].append(args[0].shape[0]))
    head_inputs = []
    model.head.register_forward_hook(lambda module, args, output: head_inputs.append(args[0]))
    windows, _, _ = batch(size=6)
    pattern = torch.tensor([7, 5, 5, 1, 4, 7])      # sar (bit 1) present in 2 samples
    windows["sar"][pattern & 2 == 0] = float("nan")  # missing values are never read
    with torch.no_grad():
        logits = model(windows, pattern)
    assert torch.isfinite(logits).all()
    assert encoded == {"hs": [5], "sar": [2], "lidar": [5]}
    dim = model.encoder.output_dim
    sar_features = head_inputs[0][:, dim:2 * dim]
    assert (sar_features[pattern & 2 == 0] == 0).all()
    assert (sar_features[pattern & 2 != 0] != 0).any()


def test_modality_missing_everywhere_may_be_left_out(tiny_visual):
    model = make_model(tiny_visual).eval()
    windows, _, _ = batch(size=4)
    del windows["sar"]
    with torch.no_grad():
        assert model(windows, torch.tensor([5, 1, 4, 5])).shape == (4, CLASSES)
    with pytest.raises(Exception, match="'sar' present but no window"):
        model(windows, torch.tensor([7, 1, 4, 5]))


def test_sample_result_does_not_depend_on_its_batch(tiny_visual):
    """Gather/scatter keeps samples independent: one sample alone = the same in a batch."""
    model = make_model(tiny_visual).eval()
    randomise_lora_b(model)
    windows, pattern, _ = batch(size=9)
    with torch.no_grad():
        together = model(windows, pattern)
        alone = model({k: v[3:4] for k, v in windows.items()}, pattern[3:4])
    assert torch.allclose(together[3:4], alone, atol=1e-5)


# ------------------------------------------------------------------ size

def expected_trainable_count(bands, width, out_dim, classes, config, hidden=256):
    m = len(bands)
    embeddings = sum(b * 9 * hidden + hidden + hidden * width + width for b in bands)
    lora = 2 * config.rank * width
    per_block = (config.dynamic_experts + 1 + m) * lora \
        + (width + 2 * config.embedding_dim + 1) * config.router_hidden \
        + (config.router_hidden + 1) * config.dynamic_experts
    routing_tables = (2 ** m + m) * config.embedding_dim
    return embeddings + config.layers * per_block + routing_tables + m * out_dim * classes + classes


@pytest.mark.slow
def test_vit_b16_trainable_parameter_count(capsys):
    visual = bb.build_visual_tower(bb.BackboneSpec(arch="ViT-B-16", seed=0))
    modalities = [mm.ModalitySpec("hs", 48), mm.ModalitySpec("sar", 2),
                  mm.ModalitySpec("lidar", 1)]
    model = mm.MamolModel(modalities, 7, visual)
    count = model.trainable_parameter_count()
    frozen = sum(p.numel() for p in model.encoder.visual.parameters())
    with capsys.disabled():
        print(f"\nViT-B-16, HS(48)+SAR(2)+LiDAR(1), 7 classes: {count:,} trainable, "
              f"{frozen:,} frozen")
    assert count == expected_trainable_count([48, 2, 1], 768, 512, 7, mm.AdapterConfig())
    assert 1_000_000 < count < 4_000_000


# ------------------------------------------------------------------ MCE mode (issue 16)

def test_mce_off_is_exactly_the_plain_model(tiny_visual):
    """Off, the model has today's tensors and its logits are the head over the concatenated
    features, bit for bit; the header's adapter record is unchanged."""
    model = make_model(tiny_visual)
    assert model.fusion is None and model.auxiliary_heads is None and model.completion is None
    assert not any(name.startswith(("fusion", "auxiliary_heads", "completion"))
                   for name in model.state_dict())
    assert "mce" not in model.config.to_json()
    randomise_lora_b(model)
    windows, pattern, _ = batch()
    with torch.no_grad():
        logits = model(windows, pattern)
        features = model.features(windows, pattern)
        by_hand = model.head(torch.cat([features[:, m] for m in range(3)], dim=1))
    assert torch.equal(logits, by_hand)
    assert mm.AdapterConfig.from_json(model.config.to_json()) == model.config


def test_mce_on_adds_fusion_auxiliary_heads_and_completion(tiny_visual):
    model = make_model(tiny_visual, mce=True)
    width = model.encoder.output_dim
    assert model.config.to_json()["mce"] is True
    assert mm.AdapterConfig.from_json(model.config.to_json()).mce
    assert len(model.fusion.encoder.layers) == 2
    assert model.fusion.encoder.layers[0].self_attn.num_heads == 4
    assert model.fusion.modality_embedding.shape == (3, width)
    assert [head.out_features for head in model.auxiliary_heads] == [CLASSES] * 3
    assert all(p.requires_grad for p in model.fusion.parameters())
    windows, pattern, _ = batch()
    features = model.features(windows, pattern)
    assert features.shape == (len(pattern), 3, width)
    for m in range(3):    # zeros where missing
        missing = ((pattern >> m) & 1) == 0
        assert torch.count_nonzero(features[missing, m]) == 0
    logits = model(windows, pattern)
    assert logits.shape == (len(pattern), CLASSES)
    fused = model.fusion(features)
    assert torch.allclose(logits, model.head(fused.flatten(1)))
    # the fusion mixes modalities: zeroing one feature changes the others' fused tokens
    zeroed = features.clone()
    zeroed[:, 2] = 0
    assert not torch.allclose(model.fusion(zeroed)[:, 0], fused[:, 0])
    completed = model.completion[0](fused[:, [1, 2]])
    assert completed.shape == (len(pattern), width)


def test_mce_fusion_needs_a_width_divisible_by_its_heads():
    from mamol.core.errors import MamolInputError
    with pytest.raises(MamolInputError, match="divisible by 4"):
        mm.MceFusion(3, 30)

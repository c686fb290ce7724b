"""MCE's capability factors (training/mce.py): standard Shapley values, inverse
availability, under-learning and the auxiliary weights, against hand-computed numbers."""
import itertools
import math

import pytest
import torch

from mamol.training import mce


def values_table(modalities, v):
    """A [1, 2^M] row from a dict {subset bitmask: v(S)}."""
    row = torch.zeros(1, 1 << modalities)
    for subset, value in v.items():
        row[0, subset] = value
    return row


def test_two_modalities_by_hand():
    # v({0}) = 1, v({1}) = 0, v({0,1}) = 1: modality 0 carries it alone.
    # φ_0 = 1/2 (v({0}) − v(∅)) + 1/2 (v({0,1}) − v({1})) = 1/2 + 1/2 = 1; φ_1 = 0.
    phi = mce.shapley_values(values_table(2, {1: 1, 2: 0, 3: 1}), torch.tensor([3]))
    assert phi.tolist() == [[1.0, 0.0]]
    # both needed: v({0}) = v({1}) = 0, v({0,1}) = 1 -> 1/2 each (the authors' variant
    # gives the same here, but not below)
    phi = mce.shapley_values(values_table(2, {1: 0, 2: 0, 3: 1}), torch.tensor([3]))
    assert phi.tolist() == [[0.5, 0.5]]
    # either suffices: v({0}) = v({1}) = v({0,1}) = 1 -> 1/2 each
    phi = mce.shapley_values(values_table(2, {1: 1, 2: 1, 3: 1}), torch.tensor([3]))
    assert phi.tolist() == [[0.5, 0.5]]
    # modality 1 alone right, together wrong: φ_0 = 1/2 (0) + 1/2 (0 − 1) = −1/2,
    # φ_1 = 1/2 (1) + 1/2 (0 − 0) = 1/2
    phi = mce.shapley_values(values_table(2, {1: 0, 2: 1, 3: 0}), torch.tensor([3]))
    assert phi.tolist() == [[-0.5, 0.5]]


def test_three_modalities_by_hand():
    # v = 1 for every subset holding modality 2, else 0, except v({0,1}) = 1.
    v = {1: 0, 2: 0, 4: 1, 3: 1, 5: 1, 6: 1, 7: 1}
    # φ_2: S ⊆ {0,1}: ∅ (w 1/3): 1−0; {0} (w 1/6): 1−0; {1} (w 1/6): 1−0; {0,1} (w 1/3):
    # 1−1 -> 1/3 + 1/6 + 1/6 = 2/3. φ_0: ∅: v{0}−0 = 0; {1} (1/6): v{0,1}−v{1} = 1;
    # {2} (1/6): v{0,2}−v{2} = 0; {1,2} (1/3): 1−1 = 0 -> 1/6; φ_1 the same by symmetry.
    phi = mce.shapley_values(values_table(3, v), torch.tensor([7]))[0]
    assert phi.tolist() == pytest.approx([1 / 6, 1 / 6, 2 / 3])


def test_one_present_modality_gets_its_own_value():
    for value in (0.0, 1.0):
        phi = mce.shapley_values(values_table(3, {4: value, 1: 1, 7: 1}), torch.tensor([4]))
        assert phi.tolist() == [[0.0, 0.0, value]]   # φ = v({m}); absent ones 0


def test_efficiency_over_every_pattern_and_value_assignment():
    torch.manual_seed(0)
    modalities = 3
    for pattern in range(1, 8):
        subsets = mce.nonempty_subsets(pattern)
        for bits in itertools.product((0.0, 1.0), repeat=len(subsets)):
            row = values_table(modalities, dict(zip(subsets, bits)))
            # noise in the columns that are not subsets of the pattern must not matter
            noise = torch.rand(1, 8)
            mask = mce.subset_masks([pattern], modalities)
            row = torch.where(mask, row, noise)
            phi = mce.shapley_values(row, torch.tensor([pattern]))[0]
            assert float(phi.sum()) == pytest.approx(row[0, pattern].item())
            for m in range(modalities):
                if not pattern & (1 << m):
                    assert phi[m] == 0


def test_a_batch_mixes_patterns():
    values = torch.cat([values_table(2, {1: 1, 2: 0, 3: 1}),
                        values_table(2, {2: 1}), values_table(2, {1: 0})])
    phi = mce.shapley_values(values, torch.tensor([3, 2, 1]))
    assert phi.tolist() == [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]


def test_subsets_skip_the_empty_and_the_full_set():
    assert mce.nonempty_subsets(0b101) == (1, 4, 5)
    assert mce.proper_subsets(0b101) == (1, 4)
    assert mce.proper_subsets(0b111) == (1, 2, 3, 4, 5, 6)
    assert mce.proper_subsets(0b010) == ()
    assert 0 not in mce.nonempty_subsets(7) and 7 not in mce.proper_subsets(7)


def test_dataset_factors_from_pattern_counts():
    # 100 samples: hs+sar+lidar 20, sar+lidar 40, lidar 40 -> hs in 20, sar in 60, lidar 100
    a = mce.dataset_factors({0b111: 20, 0b110: 40, 0b100: 40}, 3)
    assert a.tolist() == pytest.approx([5.0, 100 / 60, 1.0])
    assert mce.dataset_factors({0b10: 5}, 2).tolist() == [0.0, 1.0]   # never present: 0


def test_under_learning_is_zero_when_the_fused_model_beats_every_head():
    patterns = torch.tensor([3, 3, 1])
    phi = torch.tensor([[0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])
    correct = torch.tensor([[0, 0], [1, 0], [1, 0]])      # never more than φ
    assert mce.under_learning(correct, phi, patterns).tolist() == [0.0, 0.0]
    # modality 1's head is right where its share is 0: b_1 = (1 + 1) / 2 over its samples
    correct = torch.tensor([[1, 1], [1, 1], [1, 1]])
    b = mce.under_learning(correct, phi, patterns)
    assert b.tolist() == pytest.approx([(0.5 + 0 + 0) / 3, (0.5 + 1.0) / 2])


def test_auxiliary_weights_average_one_over_present_modalities():
    a = torch.tensor([5.0, 2.0, 1.0])
    b = torch.tensor([0.2, 0.5, 0.0])
    patterns = torch.tensor([0b011, 0b001])               # lidar absent from the batch
    w = mce.auxiliary_weights(a, b, patterns)
    assert w.tolist() == pytest.approx([1.0, 1.0, 0.0])   # a·b = 1, 1 -> mean 1
    w = mce.auxiliary_weights(a, b, patterns, mode="a")
    assert w.tolist() == pytest.approx([5 / 3.5, 2 / 3.5, 0.0])
    assert float(w[:2].mean()) == pytest.approx(1.0)
    assert mce.auxiliary_weights(a, torch.zeros(3), patterns).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        mce.auxiliary_weights(a, b, patterns, mode="ab")


def test_shapley_table_weights_sum_to_one_per_modality():
    """Σ over S ⊆ P∖{m} of |S|!(n−|S|−1)!/n! = 1: the weights of a permutation average."""
    table = mce._shapley_table(3)
    for pattern in range(1, 8):
        for m in range(3):
            if pattern & (1 << m):
                assert float(table[pattern, m].sum()) == pytest.approx(1.0)
    assert math.isclose(float(table[7, 0, 0]), 1 / 3)


# ---- the losses on a tiny MCE model -----------------------------------------------------

@pytest.fixture(scope="module")
def mce_model():
    import copy

    from mamol.core import backbone as bb
    from mamol.core import mamol_model as mm
    visual = bb.build_visual_tower(bb.BackboneSpec(arch=bb.TINY_ARCH, seed=11))
    torch.manual_seed(0)
    modalities = [mm.ModalitySpec("hs", 4), mm.ModalitySpec("sar", 2),
                  mm.ModalitySpec("lidar", 1)]
    return mm.MamolModel(modalities, 4, copy.deepcopy(visual),
                         mm.AdapterConfig(layers=2, mce=True))


def mce_batch(model, patterns, seed=0):
    generator = torch.Generator().manual_seed(seed)
    windows = {m.name: torch.randn(len(patterns), m.bands, 5, 5, generator=generator)
               for m in model.modalities}
    pattern = torch.tensor(patterns)
    targets = torch.randint(0, 4, (len(patterns),), generator=generator)
    return model.features(windows, pattern), pattern, targets


def test_losses_reach_every_mce_part(mce_model):
    mce_model.zero_grad(set_to_none=True)
    features, pattern, targets = mce_batch(mce_model, [7, 7, 3, 5, 6, 1, 4, 2])
    a = mce.dataset_factors({7: 2, 3: 1, 5: 1, 6: 1, 1: 1, 4: 1, 2: 1}, 3)
    loss, stats = mce.mce_losses(mce_model, features, pattern, targets, a, mce.MceConfig())
    assert torch.isfinite(loss)
    loss.backward()
    for part in ("fusion", "auxiliary_heads", "completion", "token_embeddings", "head"):
        grads = [p.grad for n, p in mce_model.named_parameters() if n.startswith(part)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), part
    assert stats["present"].tolist() == [5, 5, 5]
    assert 0 <= float(stats["aux_correct"].max()) <= 5


def test_only_the_fused_loss_when_every_lambda_is_zero(mce_model):
    features, pattern, targets = mce_batch(mce_model, [7, 3, 5, 1])
    config = mce.MceConfig(auxiliary=0.0, subsets=0.0, completion=0.0)
    loss, _ = mce.mce_losses(mce_model, features, pattern, targets, torch.ones(3), config)
    plain = torch.nn.functional.cross_entropy(mce_model.classify_features(features), targets,
                                              reduction="sum")
    assert torch.allclose(loss, plain)


def test_completion_loss_ignores_absent_targets(mce_model):
    """With LiDAR absent from every sample, its completion predictor gets no gradient;
    the others' do."""
    mce_model.zero_grad(set_to_none=True)
    features, pattern, targets = mce_batch(mce_model, [3, 3, 1, 2])
    config = mce.MceConfig(auxiliary=0.0, subsets=0.0, completion=1.0)
    loss, _ = mce.mce_losses(mce_model, features, pattern, targets, torch.ones(3), config)
    loss.backward()
    lidar = [p.grad for p in mce_model.completion[2].parameters()]
    assert all(g is None or g.abs().sum() == 0 for g in lidar)
    hs = [p.grad for p in mce_model.completion[0].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in hs)


def test_subset_loss_needs_a_proper_subset(mce_model):
    """Single-modality samples have no proper subset: the subset loss adds nothing."""
    features, pattern, targets = mce_batch(mce_model, [1, 2, 4, 1])
    with_subsets = mce.MceConfig(auxiliary=0.0, subsets=1.0, completion=0.0)
    without = mce.MceConfig(auxiliary=0.0, subsets=0.0, completion=0.0)
    first, _ = mce.mce_losses(mce_model, features, pattern, targets, torch.ones(3),
                              with_subsets)
    second, _ = mce.mce_losses(mce_model, features, pattern, targets, torch.ones(3), without)
    assert torch.allclose(first, second)


# ---- training with MCE on the sample scene ----------------------------------------------

def test_training_with_mce_learns_and_records_the_factors(small_scene, tmp_path):
    from support import tiny_training_config

    from mamol.core.inference import ClassifyConfig, classify
    from mamol.core.model_file import read_header
    from mamol.training.missing import MissingSimulation, SimulationMode
    from mamol.training.trainer import train_model
    config = tiny_training_config(
        small_scene, tmp_path / "mce.mamol", epochs=3, mce=mce.MceConfig(),
        simulation=MissingSimulation(SimulationMode.AVAILABILITY,
                                     availability=(0.4, 0.7, 1.0), seed=2))
    result = train_model(config)
    history = result.summary["epochs"]
    assert all(set(record["mce"]) == {"hs", "sar", "lidar"} for record in history)
    last = history[-1]["mce"]
    assert last["hs"]["a"] > last["sar"]["a"] > last["lidar"]["a"] == pytest.approx(1.0)
    assert all(0.0 <= last[m]["aux_accuracy"] <= 1.0 for m in last)
    header = read_header(result.model_path)
    assert header.adapter["mce"] is True
    assert header.training["mce"]["factors"] == "both"
    best = max(r["validation_oa"] for r in history)
    assert best > 1 / 7 + 0.1          # learns: above chance (7 classes)
    classified = classify(ClassifyConfig(
        model_path=str(result.model_path), rasters=(("hs", str(small_scene.hs)),
                                                    ("lidar", str(small_scene.lidar))),
        output_classes=str(tmp_path / "c.tif"), stride=8, device="cpu"))
    assert sum(classified.class_counts.values()) > 0


def test_the_report_shows_the_factor_curves(small_scene, tmp_path):
    """A short MCE run's report has the MCE figure with a line per modality; a plain run's
    has none."""
    from support import tiny_training_config

    from mamol.training.trainer import train_model
    for mode, expected in ((mce.MceConfig(), True), (None, False)):
        config = tiny_training_config(
            small_scene, tmp_path / f"{expected}.mamol", epochs=1, mce=mode,
            report_html=str(tmp_path / f"{expected}.html"),
            report_json=str(tmp_path / f"{expected}.json"))
        train_model(config)
        html = (tmp_path / f"{expected}.html").read_text()
        assert ('class="figure mce"' in html) is expected
        assert ("MCE: modality capability per epoch" in html) is expected
        if expected:
            figure = html[html.index('class="figure mce"'):]
            figure = figure[:figure.index("</svg>")]
            for name in ("hs", "sar", "lidar", "Auxiliary head accuracy", "Inverse"):
                assert name in figure


def test_command_line_options(small_scene, tmp_path):
    from mamol.engine import train as cli
    from mamol.engine.main import build_parser
    base = ["train", "--hs", str(small_scene.hs), "--polygons",
            str(small_scene.training_polygons), "--class-field", "class_id", "--output",
            str(tmp_path / "m.mamol")]
    parser = build_parser()
    assert cli.config_from_args(parser.parse_args(base)).mce is None
    config = cli.config_from_args(parser.parse_args(
        base + ["--mce", "--mce-factors", "a", "--lambda-rec", "0.25"]))
    assert config.mce == mce.MceConfig(factors="a", completion=0.25)
    from mamol.core.errors import MamolInputError
    with pytest.raises(MamolInputError, match="--lambda-aux only apply with --mce"):
        cli.config_from_args(parser.parse_args(base + ["--lambda-aux", "2"]))


def test_independent_availability_from_the_command_lines(small_scene, tmp_path):
    from mamol.engine import train as cli
    from mamol.engine.main import build_parser
    from mamol.training.evaluation import availability_simulation
    from mamol.training.missing import SimulationMode
    parser = build_parser()
    config = cli.config_from_args(parser.parse_args(
        ["train", "--hs", str(small_scene.hs), "--sar", str(small_scene.sar), "--lidar",
         str(small_scene.lidar), "--polygons", str(small_scene.training_polygons),
         "--class-field", "class_id", "--output", str(tmp_path / "m.mamol"),
         "--availability", "0.2", "0.6", "1", "--independent"]))
    assert config.simulation.mode is SimulationMode.INDEPENDENT
    config.validate()
    args = parser.parse_args(["evaluate", "--model", "m.mamol", "--hs", "x.tif", "--labels",
                              "l.tif", "--report", "r.html", "--availability", "hs=0.2",
                              "sar=0.6", "--independent"])
    assert args.independent
    simulation = availability_simulation(["hs", "sar", "lidar"], dict(args.availability),
                                         independent=True)
    assert simulation.mode is SimulationMode.INDEPENDENT
    assert simulation.availability == (0.2, 0.6, 1.0)


def test_mce_trains_and_classifies_with_a_bf16_tower(small_scene, tmp_path):
    """The dtype path the GPU takes (bf16 frozen tower, fp32 pooled features into the
    fusion, auxiliary heads and completion predictor), run on the CPU."""
    from support import tiny_training_config

    from mamol.core.inference import ClassifyConfig, classify
    from mamol.training.missing import MissingSimulation, SimulationMode
    from mamol.training.trainer import train_model
    config = tiny_training_config(
        small_scene, tmp_path / "bf16.mamol", epochs=2, precision="bf16",
        mce=mce.MceConfig(),
        simulation=MissingSimulation(SimulationMode.INDEPENDENT,
                                     availability=(0.3, 0.7, 1.0), seed=4))
    result = train_model(config)
    assert result.summary["timing"]["precision"] == "bfloat16"
    history = result.summary["epochs"]
    assert all(math.isfinite(r["train_loss"]) for r in history)
    assert all(math.isfinite(r["mce"][m]["phi"]) for r in history for m in r["mce"])
    classified = classify(ClassifyConfig(
        model_path=str(result.model_path), rasters=(("sar", str(small_scene.sar)),
                                                    ("lidar", str(small_scene.lidar))),
        output_classes=str(tmp_path / "c.tif"), stride=8, device="cpu", precision="bf16"))
    assert sum(classified.class_counts.values()) > 0

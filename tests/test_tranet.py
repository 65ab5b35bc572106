"""TRA-Net: shapes of every variant, exact hard masks, frozen blocks, what each variant flag changes."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from model.engine.losses import branch_bce_loss
from model.nets.transforms import VGGFACE2_MEAN_BGR, from_model_input, to_model_input
from model.nets.tranet import REGION_OF_AU, VARIANTS, TRANetConfig, build_model, hard_masks
from pipeline.datasets.disfa.facts import ALL_AUS, EVAL_AUS

SMALL = dict(preset="small", image_size=112)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small(variant: str = "tranet", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TRANetConfig(variant=variant, **{**SMALL, **kw}))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_gives_logits_in_au_order(variant: str) -> None:
    model = _small(variant).train()
    logits = model(torch.randn(2, 3, 112, 112))
    assert logits.shape == (2, len(EVAL_AUS))
    groups = model.branch_groups
    assert sorted(i for g in groups for i in g) == list(range(len(EVAL_AUS)))
    if VARIANTS[variant].hard_mask:
        assert groups == [[0, 1, 2], [3, 4], [5, 6, 7]]  # AU1,2,4 | AU6,9 | AU12,25,26
    else:
        assert groups == [list(range(8))]


def test_full_preset_forward_at_224() -> None:
    model = build_model(TRANetConfig()).eval()
    with torch.no_grad():
        decoded = model.features(torch.randn(1, 3, 224, 224))
        assert decoded.shape == (1, 512, 28, 28)
        assert model.classify(decoded).shape == (1, 8)


def test_branch_columns_follow_au_ids_order_and_regions() -> None:
    model = _small(au_ids=(26, 1, 6, 2)).eval()
    assert model.branch_names == ["upper", "middle", "lower"]
    assert model.branch_groups == [[1, 3], [2], [0]]
    with torch.no_grad():
        feats = model.features(torch.randn(3, 3, 112, 112))
        logits = model.classify(feats)
        masks = hard_masks(feats.shape[2], torch.full((3,), model.config.center[1]))
        upper = model.branches["upper"](feats * masks["upper"])
    torch.testing.assert_close(logits[:, [1, 3]], upper)  # AU1, AU2 columns are the upper branch


def test_other_au_lists_build_only_needed_branches() -> None:
    # every AU of the supported datasets has a region (#26 added BP4D's 7, 10, 14, 23, 24)
    from model.nets.regions import KNOWN_AUS
    assert set(REGION_OF_AU) == set(KNOWN_AUS) >= set(ALL_AUS)
    all12 = _small(au_ids=ALL_AUS)
    assert [[ALL_AUS[i] for i in g] for g in all12.branch_groups] == [[1, 2, 4, 5], [6, 9],
                                                                     [12, 15, 17, 20, 25, 26]]
    upper_only = _small(au_ids=(1, 2))
    assert upper_only.branch_names == ["upper"]
    assert not any(k.startswith(("branches.middle", "branches.lower")) for k in upper_only.state_dict())
    with pytest.raises(ValueError, match="no region"):
        TRANetConfig(au_ids=(1, 3))


def test_hard_masks_are_exact_rows_with_documented_ties() -> None:
    m = {k: v[0, 0, :, 0] for k, v in hard_masks(28, torch.tensor([0.5])).items()}
    rows = np.arange(28)
    assert m["upper"].tolist() == (rows < 14).tolist()
    assert m["lower"].tolist() == (rows >= 14).tolist()
    assert m["middle"].tolist() == ((rows >= 7) & (rows < 21)).tolist()
    # y = 0.375 * 4 = 1.5 is row 1's centre: that row goes to the lower mask; middle is [0.5, 2.5).
    m = {k: v[0, 0, :, 0].tolist() for k, v in hard_masks(4, torch.tensor([0.375])).items()}
    assert m == {"upper": [True, False, False, False], "lower": [False, True, True, True],
                 "middle": [True, True, False, False]}


def test_branch_logits_get_no_gradient_from_rows_outside_their_region() -> None:
    model = _small(au_ids=ALL_AUS).train()  # train mode: BN batch statistics mix samples too
    centers = torch.tensor([[0.5, 0.3], [0.5, 0.65]])
    feats = model.features(torch.randn(2, 3, 112, 112)).detach().requires_grad_(True)
    logits = model.classify(feats, centers)
    height = feats.shape[2]
    masks = hard_masks(height, centers[:, 1])
    for name, group in zip(model.branch_names, model.branch_groups):
        (grad,) = torch.autograd.grad(logits[:, group].sum(), feats, retain_graph=True)
        row_grad = grad.abs().sum(dim=(1, 3))  # [B, H]
        inside = masks[name][:, 0, :, 0]
        assert torch.all(row_grad[~inside] == 0), name
        assert torch.all(row_grad[inside] > 0), name
    # the two samples' centres differ, so their upper regions differ in size
    assert masks["upper"][0].sum() < masks["upper"][1].sum()


def test_centers_matter_only_with_the_hard_mask() -> None:
    x = torch.randn(2, 3, 112, 112)
    c1, c2 = torch.tensor([[0.5, 0.3]] * 2), torch.tensor([[0.5, 0.7]] * 2)
    with torch.no_grad():
        hm, no_hm = _small("tranet").eval(), _small("senet50_cbam").eval()
        assert not torch.allclose(hm(x, c1), hm(x, c2))
        torch.testing.assert_close(no_hm(x, c1), no_hm(x, c2))


def test_frozen_blocks_get_no_gradient_and_keep_bn_statistics() -> None:
    model = _small(frozen_blocks=2).train()
    frozen = {id(p) for m in model.frozen_modules() for p in m.parameters()}
    assert frozen and all(not p.requires_grad for m in model.frozen_modules() for p in m.parameters())
    assert all(not m.training for f in model.frozen_modules() for m in f.modules())
    assert model.backbone.layer2.training and model.training
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    logits = model(torch.randn(4, 3, 112, 112) * 50)
    branch_bce_loss(logits, torch.ones_like(logits), model.branch_groups).backward()
    opt.step()
    for name, p in model.named_parameters():
        assert (p.grad is None) == (id(p) in frozen), name
    after = model.state_dict()
    frozen_prefixes = ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.")
    for k, v in before.items():
        moved = not torch.equal(v, after[k])
        assert moved != k.startswith(frozen_prefixes), k  # frozen never move; trained BNs do


def test_frozen_blocks_default_per_preset() -> None:
    assert TRANetConfig().resolved_frozen_blocks == 2  # paper: blocks 1-2 of pretrained SENet-50
    model = _small()
    assert model.config.resolved_frozen_blocks == 0 and model.frozen_modules() == []
    assert all(p.requires_grad for p in model.parameters())
    stem_only = _small(frozen_blocks=1)
    assert stem_only.frozen_modules() == [stem_only.backbone.conv1, stem_only.backbone.bn1]
    deeper = _small(frozen_blocks=4)  # stem, layer1, layer2, layer3: everything but layer4
    assert deeper.frozen_modules() == [deeper.backbone.conv1, deeper.backbone.bn1,
                                       deeper.backbone.layer1, deeper.backbone.layer2,
                                       deeper.backbone.layer3]
    with pytest.raises(ValueError, match="frozen_blocks"):
        TRANetConfig(frozen_blocks=5)


def _names(variant: str) -> set[str]:
    return set(_small(variant).state_dict())


def test_each_variant_changes_only_the_structure_it_names() -> None:
    full = _names("tranet")
    # without channel / spatial attention: exactly the CBAM gates' parameters disappear
    assert full - _names("hm_cbam_no_channel") == {k for k in full if ".channel_gate." in k}
    assert full - _names("hm_cbam_no_spatial") == {k for k in full if ".spatial_gate." in k}
    assert _names("hm_cbam_no_channel") <= full and _names("hm_cbam_no_spatial") <= full
    # no CBAM at all: exactly the attention modules go
    assert full - _names("senet50_hm") == {k for k in full if ".attention." in k}
    assert _names("senet50_hm") <= full
    # residual CBAM: same parameters, different function
    assert _names("tranet_residual") == full
    x = torch.randn(2, 3, 112, 112)
    a, b = _small("tranet").eval(), _small("tranet_residual").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
    # no hard mask: one branch "all" with the same per-branch structure
    cbam = _names("senet50_cbam")
    strip = lambda names: {k.split(".", 2)[2] for k in names if k.startswith("branches.")}  # noqa: E731
    assert {k.split(".")[1] for k in cbam if k.startswith("branches.")} == {"all"}
    assert strip(cbam) == strip(full)
    assert {k for k in cbam if not k.startswith("branches.")} == {k for k in full if not k.startswith("branches.")}
    # plain baseline: backbone + fc, no decoder, no branches
    base = _names("senet50")
    assert {k.split(".")[0] for k in base} == {"backbone", "fc"}
    assert {k for k in base if k.startswith("backbone.")} == {k for k in full if k.startswith("backbone.")}


def test_config_round_trips_through_json_and_rebuilds_same_weights() -> None:
    cfg = TRANetConfig(variant="hm_cbam_no_spatial", au_ids=(1, 12), center=(0.5, 0.45), **SMALL)
    again = TRANetConfig(**json.loads(json.dumps(asdict(cfg))))
    assert again == cfg
    model = build_model(cfg)
    build_model(again).load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(ValueError, match="unknown variant"):
        TRANetConfig(variant="tranet2")


def test_branch_bce_loss_sums_branch_means() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, -2.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    got = branch_bce_loss(logits, targets, [[0, 2], [1]])
    torch.testing.assert_close(got, bce[:, [0, 2]].mean() + bce[:, 1].mean())
    w = torch.tensor([2.0, 0.5, 0.5])
    weighted = branch_bce_loss(logits, targets, [[0, 2], [1]], w)
    torch.testing.assert_close(weighted, (bce * w)[:, [0, 2]].mean() + (bce * w)[:, 1].mean())
    with pytest.raises(ValueError, match="cover columns"):
        branch_bce_loss(logits, targets, [[0], [1]])


def test_to_model_input_is_bgr_minus_vggface2_mean() -> None:
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[0, 0, 1] = (10, 20, 30)
    x = to_model_input(rgb)
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    b, g, r = VGGFACE2_MEAN_BGR
    torch.testing.assert_close(x[0, :, 0, 1], torch.tensor([30 - b, 20 - g, 10 - r]))
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-b, -g, -r]))
    nchw = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
    torch.testing.assert_close(to_model_input(nchw), x)
    assert torch.equal(from_model_input(x), torch.from_numpy(rgb))
    with pytest.raises(TypeError, match="uint8"):
        to_model_input(torch.zeros(1, 3, 4, 4))


def test_decoder_se_is_the_papers_residual_form_by_default() -> None:
    # Eq. 3: O = (S_e * U) + U. The plain SE (O = S_e * U) stays an option, recorded in the config.
    model = _small().eval()
    assert model.config.decoder_se == "residual"
    assert asdict(model.config)["decoder_se"] == "residual"
    stage = model.decoder.up2
    u = torch.randn(2, stage.se.fc2.out_features, 7, 7)
    with torch.no_grad():
        gate = stage.se.gate(u)
        torch.testing.assert_close(stage.se(u), gate * u + u)
    plain = _small(decoder_se="plain").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain.decoder.up2.se(u), plain.decoder.up2.se.gate(u) * u)
    with pytest.raises(ValueError, match="decoder_se"):
        TRANetConfig(decoder_se="gated")


def test_checkpoints_recorded_before_the_option_rebuild_the_plain_se() -> None:
    from model.nets.tranet import config_from_record

    record = asdict(TRANetConfig(**SMALL))
    del record["decoder_se"]
    assert config_from_record(record).decoder_se == "plain"
    assert config_from_record(asdict(TRANetConfig(**SMALL))).decoder_se == "residual"

"""The image<->caption MMDiT in-process: image tokens, records, losses against independent
computations, samplers, the probe, prepare_coco (end-to-end runs: test_image_e2e.py)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentIMG_mmdit import codebook as C
from latentIMG_mmdit import shapes
from latentIMG_mmdit.data import ImageCollator, load_batch, read_records
from latentIMG_mmdit.images import patchify, unpatchify
from latentIMG_mmdit.objective import (
    IMAGE_NOISE,
    IMAGE_T,
    IMAGE_U,
    TEXT_T,
    TEXT_U,
    ContinuousImageObjective,
    DiscreteImageObjective,
)
from latentIMG_mmdit.schema import DiscreteImageRunConfig, ImageRunConfig
from mmldlm.config import ConfigError, validate
from mmldlm.data.collate import settle
from mmldlm.data.records import DataError
from mmldlm.diffusion.noise import keyed_uniform, position_normals, position_uniforms
from tests.helpers.common import make_cfg

TINY = {"model.image_size": 32, "model.patch_size": 8, "model.dim_text": 32, "model.dim_image": 48,
        "model.dim_cond": 32, "model.depth": 1, "model.heads": 2, "model.dim_head": 16,
        "model.num_residual_streams": 1, "model.max_seq_len": 16, "data.max_seq_len": 16, "model.codebook_size": 16,
        "loss.caption_drop": 0.0}


@pytest.fixture(scope="module")
def tok(shapes_data):
    from mmldlm.data.tokenizer import load_tokenizer

    return load_tokenizer(str(shapes_data / "tokenizer"))


@pytest.fixture(scope="module")
def batch(shapes_data, tok):
    return load_batch(read_records(str(shapes_data / "train_data.json")), list(range(6)), tok, 16, 32)


@pytest.fixture(scope="module")
def codebook_file(shapes_data, tmp_path_factory):
    from latentIMG_mmdit.build_codebook import build_from_records

    return build_from_records(shapes_data / "train_data.json", tmp_path_factory.mktemp("cb") / "cb.npz", 32, 8, 16,
                              seed=0, max_images=32)


def objective(tok, discrete=False, codebook=None, **over):
    schema = DiscreteImageRunConfig if discrete else ImageRunConfig
    cfg = make_cfg(schema, **{**TINY, **({"model.codebook": str(codebook)} if discrete else {}), **over})
    validate(cfg)
    torch.manual_seed(0)
    if discrete:
        return DiscreteImageObjective(cfg, tok, codebook)
    return ContinuousImageObjective(cfg, tok)


def test_patchify_is_a_fixed_exact_inverse():
    x = torch.randn(2, 3, 32, 32)
    p = patchify(x, 8)
    assert p.shape == (2, 16, 192) and torch.equal(unpatchify(p, 8, 32), x)
    # patch (row 1, column 2) holds pixels [8:16, 16:24], (row, column, channel) flattened
    assert torch.equal(p[0, 1 * 4 + 2], x[0, :, 8:16, 16:24].permute(1, 2, 0).reshape(-1))


def test_codebook_is_deterministic_under_a_seed_and_checked_on_load(shapes_data, tmp_path):
    images = np.stack([np.asarray(i, np.float32).transpose(2, 0, 1) / 127.5 - 1
                       for i in shapes.generate(24, 32, seed=1)[0]])
    a, b, c = (C.build(images, 8, 16, seed) for seed in (0, 0, 1))
    assert np.array_equal(a.centroids, b.centroids) and not np.array_equal(a.centroids, c.centroids)
    assert a.centroids.shape == (16, 192) and np.isfinite(a.centroids).all()
    path = C.save(a, tmp_path / "cb.npz")
    assert np.array_equal(C.load(path, 8, 16).centroids, a.centroids)
    with pytest.raises(C.CodebookError, match="for 8x8 patches; the model uses 4x4"):
        C.load(path, patch_size=4)
    with pytest.raises(C.CodebookError, match="expects 32"):
        C.load(path, 8, codes=32)
    # codes decode to the nearest centroid: quantising twice changes nothing
    x = torch.from_numpy(a.centroids[[3, 7]]) + 1e-3
    assert C.nearest(x, torch.from_numpy(a.centroids)).tolist() == [3, 7]


def test_a_missing_corrupt_or_truncated_image_is_a_bad_record_never_a_grey_picture(shapes_data, tok, tmp_path):
    import shutil

    (tmp_path / "images").mkdir()
    shutil.copy(shapes_data / "images" / "000000.png", tmp_path / "images" / "good.png")
    (tmp_path / "images" / "corrupt.png").write_bytes(b"not an image at all")
    png = (shapes_data / "images" / "000001.png").read_bytes()
    (tmp_path / "images" / "cut.png").write_bytes(png[: len(png) // 2])
    recs = [{"image_path": f"images/{n}.png", "caption": "a red circle above a blue square", "image_id": i}
            for i, n in enumerate(["good", "missing", "corrupt", "cut"])]
    recs += [{"image_path": "/etc/passwd", "caption": "x", "image_id": 9}, {"image_path": "images/good.png",
                                                                            "caption": " ", "image_id": 10}]
    data = tmp_path / "train_data.json"
    data.write_text(json.dumps(recs))
    with pytest.raises(DataError, match="record 4: image_path '/etc/passwd' points outside its root"):
        read_records(str(data))
    ds = read_records(str(data), skip=True)
    assert len(ds) == 4 and [str(p.record) for p in ds.index.problems] == ["4", "5"]
    assert "caption is empty" in ds.index.problems[1].reason
    out = ImageCollator(tok, 16, 32)(ds.__getitems__([0, 1, 2, 3]))
    assert out.batch["pixels"].shape == (1, 3, 32, 32) and out.batch["index"].tolist() == [0] and out.samples == 1
    reasons = {e.record: e.reason for e in out.bad}
    assert all(e.json_path == str(data) for e in out.bad)
    assert "missing.png not found" in reasons[1] and "corrupt.png cannot be decoded" in reasons[2]
    assert "cut.png cannot be decoded" in reasons[3]
    with pytest.raises(DataError, match=r"train_data.json: record 1: image .*missing.png not found"):
        settle(out, skip=False)


def test_the_probe_reads_the_generated_images_exactly_and_chance_is_far_below():
    images, captions = shapes.generate(200, 32, seed=3)
    own = [shapes.score(i, c) for i, c in zip(images, captions)]
    other = [shapes.score(i, c) for i, c in zip(images, captions[1:] + captions[:1])]
    assert min(own) == 1.0 and np.mean(other) < 0.4
    assert shapes.parse("a red circle left of a blue square") == shapes.Scene(("red", "blue"), ("circle", "square"),
                                                                             "left of")
    assert shapes.parse("a purple circle above a blue square") is None


def _cosine_alpha_bar(t: int, T: int = 1000) -> float:
    """The cosine schedule (Nichol & Dhariwal) written out: betas clipped at 0.999, cumulated."""
    f = [math.cos((s / T + 0.008) / 1.008 * math.pi / 2) ** 2 for s in range(T + 1)]
    return math.prod(1 - min(1 - f[s + 1] / f[s], 0.999) for s in range(t + 1))


def test_continuous_t2i_loss_is_the_v_mse_of_vp_diffusion(tok, batch):
    obj = objective(tok, **{"loss.mode": "t2i"})
    obj.train()
    loss, metrics = obj(batch, step=5)
    ids, mask, idx = batch["input_ids"], batch["attention_mask"], batch["index"]
    x0 = patchify(batch["pixels"], 8)
    t = (keyed_uniform(idx, 42, 5, IMAGE_T) * 1000).long()
    eps = position_normals(idx, 16 * 192, 42, 5, IMAGE_NOISE).view_as(x0)
    a = torch.tensor([_cosine_alpha_bar(int(s)) for s in t]).view(-1, 1, 1)
    x_t, v = a.sqrt() * x0 + (1 - a).sqrt() * eps, a.sqrt() * eps - (1 - a).sqrt() * x0
    _, out = obj.model(ids, mask, x_t.float(), torch.zeros(6), (t + 1).float() / 1000, text_logits=False)
    assert loss.item() == pytest.approx(F.mse_loss(out, v.float()).item(), rel=1e-4)
    assert metrics["text_loss"] == 0 and metrics["image_loss"] == pytest.approx(loss.item())


def test_i2t_caption_loss_is_mdlm_over_real_tokens_only(tok, batch):
    obj = objective(tok, **{"loss.mode": "i2t"})
    obj.train()
    loss, metrics = obj(batch, step=7)
    ids, mask, idx = batch["input_ids"], batch["attention_mask"], batch["index"]
    assert (~mask).any()  # captions of different lengths: padding present
    t = 1e-4 + (1 - 1e-4) * keyed_uniform(idx, 42, 7, TEXT_T).float()
    masked = (position_uniforms(idx, ids.shape[1], 42, 7, TEXT_U) < (1 - 1e-4) * t.unsqueeze(1)) & mask
    noisy = torch.where(masked, tok.mask_token_id, ids)
    logits, _ = obj.model(noisy, mask, patchify(batch["pixels"], 8), t, torch.zeros(6))
    logits[..., tok.mask_token_id] = -math.inf
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    expected = (ce / t.unsqueeze(1).expand_as(masked)[masked]).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4) and metrics["image_loss"] == 0
    # padding is never a target: whatever the pad positions hold, the loss is the same
    noisy_pads = dict(batch, input_ids=torch.where(mask, ids, tok.mask_token_id))
    assert obj(noisy_pads, step=7)[0].item() == pytest.approx(loss.item(), rel=1e-5)


def test_discrete_t2i_loss_is_mdlm_over_the_codes(tok, batch, codebook_file):
    obj = objective(tok, discrete=True, codebook=codebook_file, **{"loss.mode": "t2i", "loss.mask_schedule": "cosine"})
    obj.train()
    loss, metrics = obj(batch, step=3)
    ids, mask, idx = batch["input_ids"], batch["attention_mask"], batch["index"]
    cents = torch.from_numpy(C.load(codebook_file).centroids)
    codes = torch.cdist(patchify(batch["pixels"], 8).reshape(-1, 192), cents).argmin(1).view(6, 16)
    u = 1e-4 + (1 - 1e-4) * keyed_uniform(idx, 42, 3, IMAGE_T).float()
    t = 1 - torch.cos(math.pi * u / 2)  # the cosine schedule and its ELBO weight m'(u) / m(u)
    w = (math.pi / 2) * torch.sin(math.pi * u / 2) / t
    masked = position_uniforms(idx, 16, 42, 3, IMAGE_U) < (1 - 1e-4) * t.unsqueeze(1)
    _, out = obj.model(ids, mask, torch.where(masked, 16, codes), torch.zeros(6), t)
    out[..., 16] = -math.inf
    ce = F.cross_entropy(out[masked], codes[masked], reduction="none")
    expected = (ce * w.unsqueeze(1).expand_as(masked)[masked]).sum() / (6 * 16)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4) and "image_acc" in metrics


def test_mixed_mode_trains_both_directions_and_every_parameter_gets_a_gradient(tok, batch):
    obj = objective(tok, **{"loss.caption_drop": 0.3})
    obj.train()
    loss, m = obj(batch, step=1)
    loss.backward()
    assert m["text_loss"] > 0 and m["image_loss"] > 0
    assert all(p.grad is not None for p in obj.parameters() if p.requires_grad)


def test_samplers_fill_every_position_and_follow_their_generator(tok, batch, codebook_file):
    from latentIMG_mmdit.sampling import caption_to_image, image_to_caption

    for obj in (objective(tok), objective(tok, discrete=True, codebook=codebook_file)):
        obj.eval()
        img, again = (caption_to_image(obj, batch["input_ids"], batch["attention_mask"], 3, guidance=1.0,
                                       generator=torch.Generator().manual_seed(1)) for _ in range(2))
        assert img.shape == (6, 3, 32, 32) and img.abs().max() <= 1 and torch.equal(img, again)
        ids, mask = image_to_caption(obj, batch["pixels"], torch.tensor([5, 7, 9, 5, 7, 9]), 4,
                                     generator=torch.Generator().manual_seed(1))
        assert mask.sum(1).tolist() == [5, 7, 9, 5, 7, 9] and (ids[~mask] == tok.pad_token_id).all()
        assert not torch.isin(ids[mask], torch.tensor([tok.pad_token_id, tok.mask_token_id])).any()


def test_config_errors_name_the_key(tok):
    from mmldlm.objective import lookup
    from mmldlm.sources import open_sources

    # the codebook is a source: unset, the loop's first step refuses it, saying how to build one
    cfg = make_cfg(DiscreteImageRunConfig, **TINY)
    validate(cfg)
    with pytest.raises(ConfigError, match="model.codebook: not set.*build_codebook"):
        open_sources(cfg, lookup("image_discrete"))
    with pytest.raises(ConfigError, match="model.image_size"):
        validate(make_cfg(ImageRunConfig, **{**TINY, "model.patch_size": 5}))
    with pytest.raises(ConfigError, match="data.latent_dim"):
        validate(make_cfg(ImageRunConfig, **{**TINY, "data.latent_dim": 8}))
    with pytest.raises(ConfigError, match="loss.mode_weights.t2l"):
        validate(make_cfg(ImageRunConfig, **{**TINY, "loss.mode_weights": {"t2l": 1.0}}))


def test_prepare_coco_writes_loadable_records_and_names_missing_images(shapes_data, tmp_path):
    import shutil

    from latentIMG_mmdit.prepare_coco import CocoError, prepare

    imgs = tmp_path / "train2014"
    imgs.mkdir()
    for k in (1, 2):
        shutil.copy(shapes_data / "images" / f"00000{k}.png", imgs / f"COCO_train2014_{k:012d}.png")
    ann = {"images": [{"id": k, "file_name": f"COCO_train2014_{k:012d}.png"} for k in (1, 2, 3)],
           "annotations": [{"id": 10 + k, "image_id": k % 3 + 1, "caption": f" caption  number {k}\n"}
                           for k in range(6)]}
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    with pytest.raises(CocoError, match="1 images named in .* are not in .*COCO_train2014_000000000003"):
        prepare(imgs, tmp_path / "captions.json", tmp_path / "out")
    n = prepare(imgs, tmp_path / "captions.json", tmp_path / "out", skip_missing=True, per_image=1)
    assert n["records"] == 2 and n["missing_images"] == 1
    recs = json.loads((tmp_path / "out" / "train_data.json").read_text())
    assert recs[0] == {"image_path": "images/train/COCO_train2014_000000000001.png", "caption": "caption number 0",
                       "image_id": 1}
    # relative paths through the link: it leads outside OUT, which the user allows by name
    refused = read_records(str(tmp_path / "out" / "train_data.json"))[1]
    assert isinstance(refused, DataError) and "outside" in str(refused), refused
    ds = read_records(str(tmp_path / "out" / "train_data.json"), allow_outside=True)
    assert ds[1]["files"]["image_path"].endswith("COCO_train2014_000000000002.png")

import pytest
import torch

from videobert.encoders import (REGISTRY, ClipEmbedder, Conv3DEncoder, VideoEncoder, build_encoder, load_embedder,
                                register, save_embedder)
from videobert.reader import ClipSpec
from videobert.train_encoder import mil_nce_loss


def _clips(b=2, t=8, s=64):
    return torch.randint(0, 256, (b, t, s, s, 3), dtype=torch.uint8)


def test_default_encoder_shapes():
    enc = build_encoder("conv3d-small", width=4, feature_dim=32)
    assert enc(_clips()).shape == (2, 32)
    emb = ClipEmbedder(enc, 384)
    out = emb(_clips())
    assert out.shape == (2, 384) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_motion_channels_are_frame_differences():
    x = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 3, 4, 2, 2)
    m = VideoEncoder.with_motion(x)
    assert m.shape == (2, 6, 4, 2, 2)
    assert torch.equal(m[:, 3:, 0], torch.zeros(2, 3, 2, 2))
    assert torch.equal(m[:, 3:, 2], x[:, :, 2] - x[:, :, 1])


def test_bad_input_shape_names_the_shape():
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\), got \(2, 8, 64, 64\)"):
        VideoEncoder.to_input(torch.zeros(2, 8, 64, 64, dtype=torch.uint8))


def test_registry_plugs_in_another_encoder_and_rejects_unknown_names():
    @register("test-mean-colour")
    class MeanColour(VideoEncoder):
        feature_dim = 3

        def config(self):
            return {}

        def forward(self, clips):
            return self.to_input(clips).mean(dim=(2, 3, 4))

    try:
        assert isinstance(build_encoder("test-mean-colour"), MeanColour)
        with pytest.raises(ValueError, match="already registered"):
            register("test-mean-colour")(MeanColour)
    finally:
        REGISTRY.pop("test-mean-colour")
    with pytest.raises(ValueError, match="unknown video encoder 'nope'"):
        build_encoder("nope")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ClipEmbedder(Conv3DEncoder(width=4, feature_dim=16)).eval()
    spec = ClipSpec(frames=8, size=64)
    save_embedder(model, tmp_path, spec, {"note": "x"})
    loaded, spec2, meta = load_embedder(tmp_path)
    x = _clips()
    assert spec2 == spec and meta["note"] == "x"
    assert torch.allclose(model(x), loaded(x), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not an encoder checkpoint"):
        load_embedder(tmp_path / "missing")


def test_mil_nce_prefers_aligned_pairs_and_counts_any_positive():
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    eye = torch.eye(4, dtype=torch.bool)
    aligned = mil_nce_loss(text.clone(), text, eye, 0.1)
    shuffled = mil_nce_loss(text[[1, 2, 3, 0]], text, eye, 0.1)
    assert aligned < shuffled
    # a bag that also contains the matching line is as good as the single right line, or better
    bag = eye.clone()
    bag[0, 1] = True
    assert mil_nce_loss(text.clone(), text, bag, 0.1) <= aligned + 1e-6

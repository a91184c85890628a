import pytest
import torch

from videobert.encoders import (REGISTRY, ClipEmbedder, Conv3DEncoder, VideoEncoder, build_encoder, crop_at,
                                load_embedder, motion_centre, register, save_embedder)
from videobert.reader import ClipSpec
from videobert.train_encoder import (SLOT_LOSSES, EncoderTrainConfig, check_config, mil_nce_loss, mil_word_loss,
                                     narration_words, word_loss, word_targets)


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


def test_the_network_input_is_built_channels_last_and_changes_nothing():
    """The clips' memory order is channels-last-3d: the motion input is built in that layout (a contiguous one cost
    the first convolution a copy, a sixth of a float32 training step), and the features are those of the
    same input laid out contiguously; the attention prior's change energy is the motion channels' own."""
    clips = _clips(3)
    x = VideoEncoder.to_input(clips)
    moving = VideoEncoder.with_motion(x)
    assert moving.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(VideoEncoder.change_energy(x, moving), VideoEncoder.change_energy(x.contiguous()), atol=1e-4)
    torch.manual_seed(0)
    net = Conv3DEncoder(width=4, feature_dim=16).eval()
    with torch.no_grad():
        mid = net.early(moving)
        assert torch.allclose(mid, net.early(moving.contiguous()), atol=1e-6)


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


def test_checkpoint_keeps_the_spoken_word_head(tmp_path):
    torch.manual_seed(0)
    model = ClipEmbedder(Conv3DEncoder(width=4, feature_dim=16), 32, ["circle", "grow"]).eval()
    save_embedder(model, tmp_path, ClipSpec(frames=8, size=64, fit="pad"))
    loaded, spec, meta = load_embedder(tmp_path)
    assert spec == ClipSpec(frames=8, size=64, fit="pad")
    x = _clips()
    assert meta["spoken_words"] == ["circle", "grow"] and loaded.spoken_words == ["circle", "grow"]
    space = loaded.embed_words(x)
    # the square root of a distribution over the two words: unit length, equal to the saved model's
    assert space.shape == (2, 2) and torch.allclose(space.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(space, model.embed_words(x), atol=1e-6)
    plain = ClipEmbedder(Conv3DEncoder(width=4, feature_dim=16), 32).eval()
    assert torch.equal(plain.embed_words(x), plain.embed(x))  # no word head: the joint embedding itself


def test_slot_heads_define_the_space_the_visual_words_quantise(tmp_path):
    torch.manual_seed(0)
    slots = {"verb": ["grow", "drop", "fade"], "noun": ["circle", "star"]}
    model = ClipEmbedder(Conv3DEncoder(width=4, feature_dim=16), 32, ["circle", "grow"], slots).eval()
    save_embedder(model, tmp_path, ClipSpec())
    loaded, _, meta = load_embedder(tmp_path)
    assert meta["slots"] == slots and loaded.slots == slots
    assert loaded.embed_words(_clips()[:0]).shape == (0, 5)  # the width holds for no clips too
    x = _clips()
    space = loaded.embed_words(x)
    assert torch.allclose(space, model.embed_words(x), atol=1e-6)
    # each slot's part is the square root of a distribution over its words; the whole row has unit length
    assert space.shape == (2, 5) and torch.allclose(space.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose((space[:, :3] ** 2).sum(1), torch.full((2,), 0.5), atol=1e-5)
    with torch.no_grad():
        logits = loaded.slot_logits(loaded.encoder(x))
    assert set(logits) == {"verb", "noun"} and logits["verb"].shape == (2, 3) and logits["noun"].shape == (2, 2)
    # a checkpoint written before slots existed loads without them and quantises its word space as before
    meta.pop("slots")
    (tmp_path / "encoder.json").write_text(__import__("json").dumps(meta))
    from safetensors.torch import load_file, save_file
    weights = {k: v for k, v in load_file(str(tmp_path / "encoder.safetensors")).items() if not k.startswith("slot_head")}
    save_file(weights, str(tmp_path / "encoder.safetensors"))
    old, _, _ = load_embedder(tmp_path)
    assert old.slots == {} and old.slot_head is None and old.embed_words(x).shape == (2, 2)


def test_a_checkpoint_from_before_fit_reads_clips_stretched(tmp_path):
    import json

    save_embedder(ClipEmbedder(Conv3DEncoder(width=4, feature_dim=16), 32), tmp_path, ClipSpec())
    meta = json.loads((tmp_path / "encoder.json").read_text())
    del meta["clip"]["fit"]  # as written before clips could be padded
    (tmp_path / "encoder.json").write_text(json.dumps(meta))
    assert load_embedder(tmp_path)[1].fit == "stretch"


def test_spoken_words_vocabulary_targets_and_loss():
    lines = ["grow the red circle", "now grow the star", "the star", "okay"]
    vocab = narration_words(lines, min_lines=2)
    assert vocab == ["grow", "star", "the"]
    t = word_targets(lines, vocab)
    assert t.tolist() == [[1, 0, 1], [1, 1, 1], [0, 1, 1], [0, 0, 0]]
    idf = torch.log(len(lines) / t.sum(0))
    assert idf[2] < idf[0]  # "the" is said in more lines than "grow": it weighs less
    right = torch.tensor([[5.0, -5.0, 0.0]])  # predicts "grow", which the first line says
    wrong = torch.tensor([[-5.0, 5.0, 0.0]])
    assert word_loss(right, t[:1], idf) < word_loss(wrong, t[:1], idf)
    assert word_loss(right, t[3:], idf) == 0  # nothing said: nothing to predict


def test_mil_slot_loss_lets_the_picture_pick_among_the_candidates():
    # a clip whose lines name "circle" (its own segment) and "star" (the neighbouring segment's)
    cand = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # circle, square, star, ring
    sure = torch.tensor([[8.0, -8.0, -8.0, -8.0]])  # certain it is a circle
    torn = torch.tensor([[8.0, -8.0, 8.0, -8.0]])  # half circle, half star
    wrong = torch.tensor([[-8.0, 8.0, -8.0, -8.0]])  # a square: neither candidate
    # MIL: being sure of either candidate costs nothing; the soft target instead wants the mass split in two
    assert mil_word_loss(sure, cand) < 1e-3 and mil_word_loss(torn, cand) < 1e-3
    assert word_loss(sure, cand) > 4 > 1 > word_loss(torn, cand)
    assert mil_word_loss(wrong, cand) > 10
    # one candidate: the same as the cross-entropy to it
    one = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    x = torch.randn(3, 4)
    assert torch.allclose(mil_word_loss(x, one.expand(3, 4)), word_loss(x, one.expand(3, 4)))
    # clips with no candidate are left out; none at all gives 0 with a gradient path
    both = torch.cat([cand, torch.zeros(1, 4)])
    assert torch.allclose(mil_word_loss(torch.cat([sure, wrong]), both), mil_word_loss(sure, cand))
    x = torch.randn(2, 4, requires_grad=True)
    loss = mil_word_loss(x, torch.zeros(2, 4))
    loss.backward()
    assert loss == 0 and x.grad is not None


def test_robust_mil_slot_loss_weighs_contradicted_clips_less():
    cand = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    sure = torch.tensor([[8.0, -8.0, -8.0, -8.0]])
    wrong = torch.tensor([[-8.0, 8.0, -8.0, -8.0]])  # the picture says square; the lines name circle and star

    def grad(logits, q):
        x = logits.clone().requires_grad_(True)
        mil_word_loss(x, cand, q).backward()
        return x.grad.norm().item()

    assert mil_word_loss(sure, cand, 0.5) < 1e-3  # still free when the picture agrees
    # a contradicted clip costs at most 1/q and pulls far less than under -log P
    assert 1.9 < mil_word_loss(wrong, cand, 0.5) <= 2.0 and mil_word_loss(wrong, cand, 0.0) > 10
    assert grad(wrong, 0.5) < 0.01 * grad(wrong, 0.0)
    # where the model is unsure, both pull alike (the gradient scales by P^q)
    flat = torch.zeros(1, 4)
    assert grad(flat, 0.5) == pytest.approx(0.5 ** 0.5 * grad(flat, 0.0), rel=1e-5)
    x = torch.randn(5, 4)
    assert mil_word_loss(x, cand.expand(5, 4), 1.0) == pytest.approx(
        (1 - x.softmax(1)[:, [0, 2]].sum(1)).mean().item(), rel=1e-5)


def test_an_unknown_slot_loss_is_a_clear_error():
    assert SLOT_LOSSES == ("mil", "soft") and EncoderTrainConfig().slot_loss == "mil"
    with pytest.raises(ValueError, match=r"slot_loss must be one of \('mil', 'soft'\), not 'hinge'"):
        check_config(EncoderTrainConfig(slot_loss="hinge"))
    with pytest.raises(ValueError, match="slot_q must be between 0 and 1, not 1.5"):
        check_config(EncoderTrainConfig(slot_q=1.5))


def test_motion_centre_and_fovea_crop_follow_what_changes():
    clips = torch.zeros(1, 8, 64, 64, 3, dtype=torch.uint8)
    for k in range(8):  # a bright square sliding right along row 40, near column 10
        clips[0, k, 36:44, 6 + k:14 + k] = 255
    x = VideoEncoder.to_input(clips)
    r, c = motion_centre(x)[0].tolist()
    assert abs(r - 40) <= 3 and 8 <= c <= 20
    crop = crop_at(x, motion_centre(x), 24)
    assert crop.shape == (1, 3, 8, 24, 24) and crop.max() > 0.4  # the square is inside the window
    still = VideoEncoder.to_input(torch.zeros(1, 8, 64, 64, 3, dtype=torch.uint8))
    assert motion_centre(still)[0].tolist() == [32, 32]  # nothing moves: the centre
    corner = crop_at(x, torch.tensor([[0, 63]]), 24)  # a window near the edge is shifted inside the frame
    assert torch.equal(corner, x[:, :, :, 0:24, 40:64])


@pytest.mark.parametrize("frames", [0, 3])
def test_fovea_encoder_shapes_and_round_trip(tmp_path, frames):
    torch.manual_seed(0)
    enc = build_encoder("conv3d-fovea", width=4, feature_dim=16, fovea=32, fovea_width=4, fovea_frames=frames)
    x = _clips(s=128)
    assert enc(x).shape == (2, 16)
    model = ClipEmbedder(enc, 32).eval()
    save_embedder(model, tmp_path, ClipSpec(frames=8, size=128))
    loaded, spec, _ = load_embedder(tmp_path)
    assert loaded.encoder.config()["fovea_frames"] == frames
    assert spec.size == 128 and torch.allclose(model(x), loaded(x), atol=1e-5)


def test_an_encoder_without_early_time_mixing_mixes_time_only_late_and_round_trips(tmp_path):
    """early_time=False: the first three blocks see one frame each (a change to another frame leaves their
    output at the first frame unchanged); the late blocks still mix time; a checkpoint rebuilds it."""
    torch.manual_seed(0)
    enc = build_encoder("conv3d-small", width=4, feature_dim=16, early_time=False).eval()
    x = _clips()
    assert enc(x).shape == (2, 16)
    for net, mixes in ((build_encoder("conv3d-small", width=4, feature_dim=16).eval(), True), (enc, False)):
        a = net.to_input(x)
        b = a.clone()
        b[:, :, 4] = 0.5 - b[:, :, 4]  # frame 4 changed (and with it the motion channels of frames 4 and 5)
        with torch.no_grad():
            ya, yb = net.early(net.with_motion(a)), net.early(net.with_motion(b))
        assert torch.equal(ya[:, :, 2], yb[:, :, 2]) is not mixes  # two 3x3x3 blocks reach frame 2 from frame 4
    model = ClipEmbedder(enc, 32).eval()
    save_embedder(model, tmp_path, ClipSpec(frames=8, size=64))
    loaded, _, _ = load_embedder(tmp_path)
    assert loaded.encoder.config()["early_time"] is False
    assert torch.allclose(model(x), loaded(x), atol=1e-5)


def test_augment_jitters_frames_but_keeps_their_content():
    """Same generator state, same batch; a flat grey clip stays flat (its brightness scaled by 0.8-1.2); a clip
    whose left half is bright comes back mirrored in about half the batch, never anything else."""
    from videobert.train_encoder import augment

    flat = torch.full((64, 8, 32, 32, 3), 100, dtype=torch.uint8)
    out = augment(flat, torch.Generator().manual_seed(0))
    assert out.shape == flat.shape and out.dtype == torch.uint8
    per_clip = out.flatten(1)
    assert (per_clip.max(1).values == per_clip.min(1).values).all()
    assert 79 <= int(per_clip.min()) and int(per_clip.max()) <= 121 and per_clip.float().std() > 3
    assert torch.equal(augment(flat, torch.Generator().manual_seed(0)), out)

    half = torch.zeros((64, 8, 32, 32, 3), dtype=torch.uint8)
    half[:, :, :, :16] = 200
    out = augment(half, torch.Generator().manual_seed(1)).float()
    left, right = out[:, :, :, :8].mean(dim=(1, 2, 3, 4)), out[:, :, :, -8:].mean(dim=(1, 2, 3, 4))
    mirrored = right > left
    assert ((left > 150) ^ mirrored).all() and ((right > 150) == mirrored).all()
    assert 16 <= int(mirrored.sum()) <= 48

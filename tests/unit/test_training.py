"""The encoder trainer, the visual words and the encoder evaluation, end to end on a tiny corpus."""

import json

import numpy as np
import pytest

from tests.conftest import is_share_of
import torch

from videobert.clipset import load_clipset
from videobert.encoders import load_embedder
from videobert.evaluate import evaluate_encoder, retrieval, retrieval_pairs
from videobert.kmeans import KMeansConfig
from videobert.reader import ClipSpec
from videobert.text import SentenceEncoder
from videobert.train_encoder import EncoderTrainConfig, train_encoder
from videobert.visual_words import VisualTokenizer, fit_vocab, purity

TINY = {"width": 4, "feature_dim": 32, "motion": True}


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc")
    cfg = EncoderTrainConfig(arch_config=TINY, epochs=25, batch_size=32, lr=3e-3, word_min_lines=2, seed=0)
    summary = train_encoder(tiny_corpus, out, cfg, device="cpu", progress=False)
    return out, summary


def test_clipset_is_cached_and_identical(tiny_corpus):
    a = load_clipset(tiny_corpus, ClipSpec(), progress=False)
    assert list((tiny_corpus / ".vbs_cache").glob("clips-*.npz"))
    b = load_clipset(tiny_corpus, ClipSpec(), progress=False)
    assert np.array_equal(a.frames, b.frames) and a.bag == b.bag and a.verb == b.verb
    assert len(a) > 20 and any(a.bag) and all(v is not None for v in a.verb)


def test_encoder_training_writes_a_checkpoint_and_learns(trained, tiny_corpus):
    out, summary = trained
    assert (out / "encoder.safetensors").is_file() and (out / "encoder.json").is_file()
    meta = json.loads((out / "encoder.json").read_text())
    history = meta["train"]["history"]
    assert len(history) == 25 and history[-1]["loss"] < history[0]["loss"] - 0.3
    # on its own training clips the trained encoder finds the narrated clip far more often than an untrained one
    model, spec, _ = load_embedder(out)
    cs = load_clipset(tiny_corpus, spec, progress=False)
    pairs = retrieval_pairs(cs)
    texts = SentenceEncoder().encode([q for q, _ in pairs])
    with torch.no_grad():
        r = retrieval(model.embed(cs.frames), model.embed_text(texts), pairs, n=20, seed=0)
    assert r["r_at_5"] >= 0.5, r


def test_vocab_and_tokenizer(trained, tiny_corpus, tmp_path):
    enc_dir, _ = trained
    summary = fit_vocab(tiny_corpus, enc_dir, tmp_path, KMeansConfig(depth=2, branching=3, seed=0), progress=False)
    assert summary["vocab_size"] == 9 and 0 < summary["words_used"] <= 9
    tok = VisualTokenizer.load(enc_dir, tmp_path)
    cs = load_clipset(tiny_corpus, tok.spec, progress=False)
    labelled = cs.labelled()
    for key in ("verb", "noun"):  # a partition's purity is at least the share of the commonest label overall
        labels = [getattr(cs, key)[i] for i in labelled]
        majority = max(labels.count(v) for v in set(labels)) / len(labels)
        assert majority <= summary[f"purity_{key}"] <= 1 and is_share_of(summary[f"purity_{key}"], len(labels))
    words = tok.tokens(cs.frames[:5])
    assert words.shape == (5,) and int(words.min()) >= 0 and int(words.max()) < 9
    assert torch.equal(words, tok.tokens(cs.frames[:5])), "tokenizing is deterministic"


def test_fit_vocab_refuses_too_few_clips(trained, tiny_corpus, tmp_path):
    enc_dir, _ = trained
    with pytest.raises(ValueError, match="too few"):
        fit_vocab(tiny_corpus, enc_dir, tmp_path, KMeansConfig(depth=1, branching=1000), progress=False)


def test_evaluate_encoder_reports_both_encoders(trained, tiny_corpus):
    enc_dir, _ = trained
    r = evaluate_encoder(enc_dir, None, tiny_corpus, n=20, progress=False)
    assert r["retrieval_pairs"] >= 5
    for name in ("trained", "untrained"):
        m = r[name]
        assert m["n"] == min(20, r["retrieval_pairs"]) and 0 <= m["r_at_1"] <= m["r_at_5"] <= 1
        assert is_share_of(m["r_at_1"], m["n"]) and is_share_of(m["r_at_5"], m["n"])
        assert r["majority_verb"] <= m["purity_verb"] <= 1
    assert r["trained"]["r_at_5"] > r["untrained"]["r_at_5"]
    # the spoken-word head read as a classifier (whether it learns is the end-to-end test's question)
    assert is_share_of(r["trained"]["word_head_verb"], r["labelled_clips"])
    assert is_share_of(r["trained"]["word_head_noun"], r["labelled_clips"])
    assert "word_head_verb" not in r["untrained"]  # an untrained encoder has no head
    # the slot heads (verb and noun by default) read as classifiers; on its own training clips the tiny
    # encoder names the verb well above chance (0.125; it scored 0.48 when this was written)
    assert r["trained"]["slot_verb"] >= 0.3 and is_share_of(r["trained"]["slot_noun"], r["labelled_clips"]), r["trained"]
    assert "slot_verb" not in r["untrained"]


def test_purity():
    assert purity(np.array([0, 0, 1, 1]), ["a", "a", "b", "c"]) == 0.75
    assert purity(np.array([5, 5, 5]), ["a", "a", "a"]) == 1.0


def test_training_without_subtitles_is_a_clear_error(tmp_path):
    from tests.unit.test_reader import _plain_video

    _plain_video(tmp_path / "v.mp4")
    with pytest.raises(ValueError, match="need subtitles"):
        train_encoder(tmp_path, tmp_path / "out", EncoderTrainConfig(arch_config=TINY, epochs=1), progress=False)


def test_back_to_back_clips_come_from_a_finer_cached_read(tiny_corpus):
    import shutil

    shutil.rmtree(tiny_corpus / ".vbs_cache", ignore_errors=True)
    fine = load_clipset(tiny_corpus, ClipSpec(), progress=False, stride=0.75)
    assert len(list((tiny_corpus / ".vbs_cache").glob("*.npz"))) == 1
    derived = load_clipset(tiny_corpus, ClipSpec(), progress=False)  # no back-to-back cache: from the finer one
    assert len(list((tiny_corpus / ".vbs_cache").glob("*.npz"))) == 1, "derived, not decoded again"
    direct = load_clipset(tiny_corpus, ClipSpec(), progress=False, cache=False)
    assert len(fine) > len(derived) == len(direct)
    assert np.array_equal(derived.frames, direct.frames) and derived.t0.tolist() == direct.t0.tolist()
    assert derived.text == direct.text and derived.verb == direct.verb and derived.bag == direct.bag


@pytest.mark.parametrize("bad, message", [
    ({"nce_weight": 0.0, "word_weight": 0.0, "slot_weight": 0.0}, "nothing to train on"),
    ({"nce_weight": 0.0, "word_weight": 0.0, "slots": {}}, "nothing to train on"),
    ({"slots": {"verb": ["grow"]}}, "at least 2 distinct lowercase single words"),
    ({"slots": {"noun": ["red circle", "star"]}}, "at least 2 distinct lowercase single words"),
    ({"slot_weight": -1.0}, "loss weights must be >= 0"),
    ({"nce_weight": -1.0}, "loss weights must be >= 0"),
    ({"bag_context": -0.5}, "bag_context must be >= 0"),
    ({"word_lr_mult": 0.0}, "word_lr_mult must be > 0"),
    ({"temperature": 0.0}, "temperature must be > 0"),
])
def test_settings_that_cannot_train_are_refused_before_reading(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):  # tmp_path holds no videos: refused before looking
        train_encoder(tmp_path, tmp_path / "out", EncoderTrainConfig(**bad), progress=False)


def test_bags_widen_with_their_context(tiny_corpus):
    from videobert.clipset import BAG_CONTEXT_S

    cs = load_clipset(tiny_corpus, ClipSpec(), progress=False)
    assert cs.bags(BAG_CONTEXT_S) == cs.bag  # what the reader cached is the default context
    narrow, wide = cs.bags(0.0), cs.bags(3.0)
    assert all(set(n) <= set(b) <= set(w) for n, b, w in zip(narrow, cs.bag, wide))
    assert sum(map(len, narrow)) < sum(map(len, cs.bag)) < sum(map(len, wide))
    assert all(n for n, t in zip(narrow, cs.text) if t), "a clip with subtitle text has that line in its bag"


def test_encoder_options_reach_training(tiny_corpus, tmp_path):
    """A narrow bag, the word head's own learning rate and no sentence contrast: training runs and the
    options are recorded with the checkpoint."""
    cfg = EncoderTrainConfig(arch_config=TINY, epochs=1, batch_size=32, word_min_lines=2, bag_context=0.0,
                             word_lr_mult=10.0, nce_weight=0.0, precision="fp32")
    summary = train_encoder(tiny_corpus, tmp_path, cfg, device="cpu", progress=False)
    train = json.loads((tmp_path / "encoder.json").read_text())["train"]
    assert (train["bag_context"], train["word_lr_mult"], train["nce_weight"]) == (0.0, 10.0, 0.0)
    assert train["precision"] == summary["precision"] == "fp32"
    assert summary["spoken_words"] > 0 and np.isfinite(summary["final_loss"])

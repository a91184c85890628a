import numpy as np

from videobert.model import IGNORE, VideoBertConfig
from videobert.pretrain import Corpus, PretrainConfig, sample_example
from videobert.sequences import SequenceBuilder
from videobert.text import load_tokenizer


def _setup():
    cfg = VideoBertConfig(visual_vocab_size=12)
    b = SequenceBuilder(load_tokenizer(), cfg)
    words = [np.arange(10) % 12, (np.arange(8) + 3) % 12]
    pairs = [(b.text_ids("watch me grow the red star"), 0, [1, 2]), (b.text_ids("next we fade the ring"), 1, [4])]
    return b, Corpus(words, pairs, ["a", "b"])


def test_alignment_negatives_look_like_positives_except_for_the_answer():
    """Negatives are masked like positives: a [MASK] in the input must not tell the alignment head anything."""
    b, corpus = _setup()
    rng = np.random.default_rng(0)
    seen = {0: [], 1: []}
    for _ in range(600):
        ex = sample_example(corpus, b, PretrainConfig(mix={"cross": 1.0}), rng)
        seen[ex.align].append(any(t == b.mask for t in ex.ids))
        if ex.align == 0:
            assert all(lab == IGNORE for lab in ex.labels), "nothing is predicted from a mismatched pair"
    assert len(seen[0]) > 200 and len(seen[1]) > 200
    assert abs(np.mean(seen[0]) - np.mean(seen[1])) < 0.1


def test_sequence_kinds_and_ablations():
    b, corpus = _setup()
    rng = np.random.default_rng(1)
    video_only = sample_example(corpus, b, PretrainConfig(mix={"video": 1.0}), rng)
    assert b.cfg.video_sep_id not in video_only.ids and video_only.align == -1
    assert any(lab >= b.cfg.visual_offset for lab in video_only.labels)
    text_only = sample_example(corpus, b, PretrainConfig(mix={"text": 1.0}), rng)
    assert all(t < b.cfg.visual_offset for t in text_only.ids) and any(lab != IGNORE for lab in text_only.labels)
    no_align = PretrainConfig(mix={"cross": 1.0}, objectives=("text",))
    for _ in range(50):
        ex = sample_example(corpus, b, no_align, rng)
        assert ex.align == -1 and all(lab == IGNORE or lab < b.cfg.visual_offset for lab in ex.labels)

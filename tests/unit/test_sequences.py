import numpy as np

from videobert.model import IGNORE, VideoBertConfig
from videobert.sequences import SequenceBuilder, collate
from videobert.text import load_tokenizer
from videobert.evaluate import segment_windows

CFG = VideoBertConfig(visual_vocab_size=20)


def builder():
    return SequenceBuilder(load_tokenizer(), CFG)


def test_cross_modal_layout_and_types():
    b = builder()
    text = b.text_ids("grow the circle")
    ids, types = b.build(text, [0, 5])
    assert ids == [101, *text, CFG.video_sep_id, CFG.visual_offset, CFG.visual_offset + 5, 102]
    assert types == [0, 0, 0, 0, 1, 1, 1, 1]
    ids, types = b.build(None, [3])
    assert ids == [101, CFG.visual_offset + 3, 102] and types == [0, 1, 1]
    ids, types = b.build(text, None)
    assert ids == [101, *text, 102] and set(types) == {0}


def test_template_finds_the_mask_slots_in_order():
    ids, types, slots = builder().template("now let me show you how to [MASK] the [MASK]", [1, 2])
    assert [ids[i] for i in slots] == [103, 103] and slots[0] < slots[1] < ids.index(CFG.video_sep_id)


def test_grounding_weights_favour_words_the_picture_predicts():
    b = builder()
    verbs = ("grow", "shrink", "lift", "drop")
    rng = np.random.default_rng(0)
    pairs = []
    for k in range(400):  # the verb follows the visual word; "watch"/"now" are phrasing, unrelated to it
        v = int(rng.integers(4))
        phrase = "watch me" if rng.random() < 0.5 else "now"
        pairs.append((b.text_ids(f"{phrase} {verbs[v]} the circle"), [v, int(rng.integers(10, 20))]))
    b.fit_grounding(pairs)
    w = {word: b.weight[b.text_ids(word)[0]] for word in ("grow", "watch", "now", "the", "circle")}
    assert w["grow"] > 0.3 and w["watch"] < 0.1 and w["now"] < 0.1 and w["the"] == 0.05 and w["circle"] == 0.05


def test_masking_labels_only_masked_positions_and_prefers_grounded_words():
    b = builder()
    lines = [f"now let me show you how to {v} the circle" for v in ("grow", "shrink", "lift", "drop")] * 100
    b.fit_grounding([(b.text_ids(line), [k % 4]) for k, line in enumerate(lines)])
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(400):
        ids, types = b.build(b.text_ids(lines[0]), [1, 2, 3])
        ex = b.mask_example(ids, types, rng, 0.15, 0.15)
        for i, lab in enumerate(ex.labels):
            if lab != IGNORE:
                counts[lab] = counts.get(lab, 0) + 1
                assert lab == ids[i]
            else:
                assert ex.ids[i] == ids[i], "unlabelled positions are untouched"
        assert ex.ids[0] == 101 and ex.ids[-1] == 102
    grow, now = b.text_ids("grow")[0], b.text_ids("now")[0]
    assert counts.get(grow, 0) > 3 * counts.get(now, 0)
    assert any(lab >= CFG.visual_offset for lab in counts)


def test_video_only_sequences_always_predict_something():
    b = builder()
    rng = np.random.default_rng(1)
    for _ in range(50):
        ex = b.mask_example(*b.build(None, [1, 2, 3]), rng, 0.0, 0.01)
        assert sum(lab != IGNORE for lab in ex.labels) >= 1


def test_collate_pads():
    b = builder()
    exs = [b.mask_example(*b.build(None, [1]), np.random.default_rng(0), 0, 0.5),
           b.mask_example(*b.build(b.text_ids("a b c"), [1, 2]), np.random.default_rng(0), 0.2, 0.2, align=1)]
    batch = collate(exs)
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["align_labels"].tolist() == [-1, 1] and (batch["mlm_labels"][0, 3:] == IGNORE).all()


def test_segment_windows_tile_the_segment():
    assert segment_windows(0.0, 1.5) == [(0.0, 1.5)]
    w = segment_windows(10.0, 14.5)
    assert len(w) == 3 and w[0][0] == 10.0 and abs(w[-1][1] - 14.5) < 1e-9
    assert segment_windows(3.0, 4.0) == [(2.75, 4.25)]

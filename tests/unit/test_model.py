"""VideoBERT on tiny configs: shapes, every objective, checkpoints, MiniLM initialisation, and a
masked-prediction sanity check (the model learns to read a word off a visual word)."""

import numpy as np
import pytest
import torch

from videobert.model import IGNORE, VideoBertConfig, VideoBertForPreTraining
from videobert.sequences import Example, SequenceBuilder, collate
from videobert.text import load_tokenizer


def tiny(visual=10, **kw):
    return VideoBertConfig(visual_vocab_size=visual, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                           max_positions=64, dropout=0.0, **kw)


def test_config_errors_name_the_values():
    with pytest.raises(ValueError, match=r"hidden size \(30\) is not a multiple of heads \(4\)"):
        VideoBertConfig(visual_vocab_size=5, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="at least one word"):
        VideoBertConfig(visual_vocab_size=0)


def test_vocabulary_layout():
    c = VideoBertConfig(visual_vocab_size=144)
    assert (c.video_sep_id, c.visual_offset, c.vocab_size) == (30522, 30523, 30522 + 1 + 144)


def _batch(cfg, builder, rng):
    text = builder.text_ids("watch me grow this star")
    exs = [builder.mask_example(*builder.build(text, [1, 2, 3]), rng, 0.3, 0.5, align=1),
           Example(*builder.build(text, [4, 5]), [IGNORE] * 10, 0),
           builder.mask_example(*builder.build(None, [6, 7, 8, 9]), rng, 0.0, 0.5)]
    return collate(exs)


def test_forward_shapes_and_every_objective():
    torch.manual_seed(0)
    cfg = tiny()
    model = VideoBertForPreTraining(cfg)
    builder = SequenceBuilder(load_tokenizer(), cfg)
    b = _batch(cfg, builder, np.random.default_rng(0))
    out = model(**b)
    B, L = b["input_ids"].shape
    assert out.hidden.shape == (B, L, 32) and out.align_logits.shape == (B,)
    assert out.text_mlm_loss is not None and out.video_mlm_loss is not None and out.align_loss is not None
    assert torch.isclose(out.loss, out.text_mlm_loss + out.video_mlm_loss + out.align_loss)
    out.loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None
    h = torch.randn(3, 32)
    assert model.text_logits(h).shape == (3, 30522) and model.video_logits(h).shape == (3, 10)
    assert model(b["input_ids"], b["token_type_ids"], b["attention_mask"]).loss is None


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = tiny()
    model = VideoBertForPreTraining(cfg).eval()
    model.save(tmp_path, {"note": 1})
    loaded = VideoBertForPreTraining.load(tmp_path)
    ids = torch.tensor([[101, 2000, 30522, 30523, 30530, 102]])
    args = (ids, torch.zeros_like(ids), torch.ones_like(ids))
    assert loaded.config == cfg
    assert torch.allclose(model(*args).hidden, loaded(*args).hidden, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not a VideoBERT checkpoint"):
        VideoBertForPreTraining.load(tmp_path / "nope")


def test_minilm_initialisation_keeps_the_pretrained_words():
    from transformers import BertModel

    from videobert.text import minilm_path

    cfg = VideoBertConfig(visual_vocab_size=12)
    model = VideoBertForPreTraining.from_minilm(cfg).eval()
    base = BertModel.from_pretrained(str(minilm_path()), add_pooling_layer=False).eval()
    emb = model.bert.embeddings.word_embeddings.weight
    assert emb.shape == (cfg.vocab_size, 384)
    assert torch.equal(emb[:30522], base.embeddings.word_embeddings.weight)
    ids = torch.tensor([[101, 2298, 2033, 102]])
    with torch.no_grad():
        ours = model(ids, torch.zeros_like(ids), torch.ones_like(ids)).hidden
        theirs = base(input_ids=ids).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5), "text-only input behaves exactly like MiniLM"


def test_masked_prediction_sanity():
    """Given `[CLS] the [MASK] [>] v [SEP]` where visual word v decides the word (v=0 -> circle,
    v=1 -> star, ...), a tiny model learns to fill the mask from the picture alone."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = tiny(visual=4)
    tok = load_tokenizer()
    builder = SequenceBuilder(tok, cfg)
    nouns = ["circle", "star", "square", "ring"]
    noun_ids = [builder.text_ids(n)[0] for n in nouns]
    model = VideoBertForPreTraining(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        vs = rng.integers(0, 4, 32)
        exs = []
        for v in vs:
            ids, types = builder.build(builder.text_ids(f"the {nouns[v]}"), [int(v)])
            labels = [IGNORE] * len(ids)
            labels[2], ids[2] = ids[2], tok.mask_token_id
            exs.append(Example(ids, types, labels, -1))
        loss = model(**collate(exs)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    right = 0
    for v in range(4):
        ids, types, slots = builder.template("the [MASK]", [v])
        b = collate([Example(ids, types, [IGNORE] * len(ids), -1)])
        h = model(b["input_ids"], b["token_type_ids"], b["attention_mask"]).hidden[0, slots[0]]
        right += int(model.slot_log_probs(h[None], torch.tensor(noun_ids))[0].argmax()) == v
    assert right == 4


def test_minilm_dir_can_be_pointed_elsewhere(tmp_path):
    """VBS_MINILM_DIR is read by the settings layer only; the model code is told where to load from."""
    import shutil

    from schemas.config import Settings, minilm_dir_from
    from videobert.text import minilm_path, use_minilm

    installed = minilm_path()
    assert Settings.load(env={"VBS_MINILM_DIR": str(tmp_path)}).minilm_dir == str(tmp_path)
    assert minilm_dir_from({"VBS_MINILM_DIR": str(tmp_path)}) == str(tmp_path) and minilm_dir_from({}) is None
    with pytest.raises(FileNotFoundError, match="holds no MiniLM"):
        use_minilm(tmp_path)
    shutil.copy(installed / "config.json", tmp_path / "config.json")
    try:
        use_minilm(tmp_path)
        assert minilm_path() == tmp_path
    finally:
        use_minilm(None)
    assert minilm_path() == installed


def test_only_the_settings_layer_reads_the_environment():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readers = [str(p.relative_to(root)) for pkg in ("schemas", "videobert", "actors", "deployments", "ops")
               for p in (root / pkg).rglob("*.py")
               if any(w in p.read_text() for w in ("os.environ", "os.getenv", "environ.get("))]
    assert readers == ["schemas/config.py"], readers


def test_a_checkpoint_that_does_not_fit_its_network_is_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = VideoBertConfig(visual_vocab_size=4, num_layers=1)
    VideoBertForPreTraining(cfg).save(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("align_head.weight")
    state["extra.weight"] = state["align_head.bias"].clone()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"1 missing: align_head.weight; 1 unexpected: extra.weight"):
        VideoBertForPreTraining.load(tmp_path)

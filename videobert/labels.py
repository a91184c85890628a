"""The label sets zero-shot tags choose from: the default (the shapes world's template, verbs and nouns) and
the one check that a label set can be used, which needs the tokenizer: every word must be a single WordPiece
token (a [MASK] predicts one token) and the template needs one [MASK] per slot. It runs where a stream or a
request comes in (the supervisor, `vbs tag`, the upload path); the fusion model then only looks the ids up."""

from __future__ import annotations

from schemas.streams import LabelSet
from videobert import world

DEFAULT_TEMPLATE = "now let me show you how to [MASK] the [MASK]"
DEFAULT_LABELS = LabelSet(template=DEFAULT_TEMPLATE, slots=(("verb", world.VERBS), ("noun", world.NOUNS)))


def resolve(labels: LabelSet | None, default: LabelSet = DEFAULT_LABELS) -> LabelSet:
    """A stream's label set with its missing parts from `default`; ValueError when they do not fit together."""
    return default if labels is None else labels.over(default)


def label_ids(labels: LabelSet) -> dict[str, list[int]]:
    """Token id of every word of each slot of a complete label set; ValueError naming the word that is not a
    single WordPiece token."""
    from videobert.text import text_ids

    labels.check_masks()
    out: dict[str, list[int]] = {}
    for slot, words in labels.slots or ():
        ids = []
        for w, t in zip(words, text_ids(list(words))):
            if len(t) != 1:
                raise ValueError(f"label {w!r} of slot {slot!r} is not a single WordPiece token ({len(t)} pieces)")
            ids.append(t[0])
        out[slot] = ids
    return out


def check(labels: LabelSet | None, default: LabelSet = DEFAULT_LABELS) -> LabelSet:
    """The complete label set of a stream or request, checked; ValueError with the reason."""
    full = resolve(labels, default)
    label_ids(full)
    return full

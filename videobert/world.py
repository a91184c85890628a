"""The shapes world's vocabulary and narration (docs/DEMO_WORLD.md): the words, their colours, and
how a narrator talks about a segment. Pure data and a seeded narration sampler; no rendering here."""

from __future__ import annotations

import numpy as np

VERBS: tuple[str, ...] = ("grow", "shrink", "lift", "drop", "slide", "shake", "blink", "fade")
NOUNS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 255),
    "yellow": (245, 220, 30),
    "purple": (175, 60, 225),
    "white": (245, 245, 245),
}

# "{v}" verb, "{n}" noun, "{c} " colour followed by a space (or nothing when the colour is left out).
INSTRUCTIONS: tuple[str, ...] = (
    "now let me show you how to {v} the {c}{n}",
    "watch me {v} this {c}{n}",
    "next we {v} the {c}{n}",
    "here i {v} the {c}{n}",
    "lets {v} the {c}{n}",
    "time to {v} the {c}{n}",
    "now {v} the {c}{n} like this",
    "you can {v} a {c}{n} easily",
    "first {v} the {c}{n}",
    "see how i {v} the {c}{n} here",
    "and then we {v} the {c}{n}",
    "now i am going to {v} the {c}{n}",
)
FILLERS: tuple[str, ...] = (
    "okay",
    "this part is easy",
    "thanks for watching",
    "alright",
    "so",
    "let me know in the comments",
    "that looks good",
    "dont forget to subscribe",
    "right",
    "lets keep going",
)

P_INSTRUCTION = 0.70  # names the right verb and noun
P_WRONG = 0.10  # names a wrong verb or noun
P_FILLER = 0.10  # filler speech; the remaining 10% is silence
P_COLOR = 0.75  # an instruction names the colour


def instruction(rng: np.random.Generator, verb: str, noun: str, color: str) -> str:
    template = INSTRUCTIONS[rng.integers(len(INSTRUCTIONS))]
    c = f"{color} " if rng.random() < P_COLOR else ""
    return template.format(v=verb, n=noun, c=c)


def narrate(rng: np.random.Generator, verb: str, noun: str, color: str) -> tuple[str, str] | None:
    """What the narrator says over one segment: (kind, text), or None for silence.

    kind is "instruction" (matches the picture), "wrong" (names a wrong verb or noun) or "filler".
    """
    u = rng.random()
    if u < P_INSTRUCTION:
        return "instruction", instruction(rng, verb, noun, color)
    if u < P_INSTRUCTION + P_WRONG:
        if rng.random() < 0.5:
            verb = str(rng.choice([v for v in VERBS if v != verb]))
        else:
            noun = str(rng.choice([n for n in NOUNS if n != noun]))
        return "wrong", instruction(rng, verb, noun, color)
    if u < P_INSTRUCTION + P_WRONG + P_FILLER:
        return "filler", FILLERS[rng.integers(len(FILLERS))]
    return None

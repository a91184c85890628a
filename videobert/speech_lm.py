"""The speech recogniser's language model and pronunciation dictionary, built from text lines: the narration of
a corpus (`vbs train speech-lm`). One job: lines in, `MODEL_DIR/speech/lm.arpa` and `words.dict` out, the files
videobert.speech loads into pocketsphinx when a model directory has them (the wheel's general model otherwise).

- The language model is an ARPA n-gram model (`build_arpa`): interpolated absolute discounting written in back-off
  form, every context's probabilities summing to 1 over the vocabulary (`</s>` included, `<s>` never predicted).
  It has no `<unk>`: the recogniser can only say words its dictionary can pronounce, so words without a
  pronunciation are dropped from the lines before counting (and listed as out of vocabulary).
- Pronunciations (`pronunciations`) come from the CMU dictionary in the pocketsphinx wheel, with its alternates;
  a word it lacks is tried with an apostrophe ("dont" -> "don't"), then spoken by espeak-ng's letter-to-sound
  rules and mapped to the 39 ARPAbet phones of the acoustic model; else it is out of vocabulary."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

SPEECH_DIR = "speech"  # under a model directory
LM_FILE, DICT_FILE, SUMMARY_FILE = "lm.arpa", "words.dict", "speech_lm.json"
BOS, EOS = "<s>", "</s>"

Pronunciation = tuple[str, ...]  # ARPAbet phones without stress digits, e.g. ("D", "OW", "N", "T")

# espeak-ng's phoneme mnemonics (`espeak-ng -v en-us -x --sep=_`, stress marks removed) as ARPAbet. Every mnemonic
# its en-us rules wrote for 18,000 words of the CMU dictionary is here; a word spoken with one that is not is out
# of vocabulary rather than guessed.
ESPEAK_TO_ARPABET: dict[str, Pronunciation] = {
    # vowels
    "a": ("AE",), "aa": ("AE",), "a#": ("AH",), "A:": ("AA",), "A@": ("AA", "R"), "A~": ("AA",),
    "@": ("AH",), "@2": ("AH",), "@5": ("AH",), "@-": ("AH",), "@L": ("AH", "L"), "3": ("ER",), "3:": ("ER",),
    "E": ("EH",), "E2": ("EH",), "E#": ("EH",), "e@": ("EH", "R"), "eI": ("EY",),
    "i": ("IY",), "i:": ("IY",), "i@": ("IY", "R"), "i@3": ("IH", "R"),
    "I": ("IH",), "I#": ("IH",), "I2": ("IH",),
    "0": ("AA",), "O": ("AO",), "O:": ("AO",), "O2": ("AO",), "O@": ("AO", "R"), "o@": ("AO", "R"),
    "OI": ("OY",), "oU": ("OW",),
    "U": ("UH",), "U@": ("UH", "R"), "u:": ("UW",), "u@": ("UH", "R"), "V": ("AH",),
    "aI": ("AY",), "aI@": ("AY", "ER"), "aI3": ("AY", "ER"), "aU": ("AW",), "aU@": ("AW", "ER"),
    # consonants
    "p": ("P",), "b": ("B",), "t": ("T",), "t#": ("T",), "t2": ("T",), "d": ("D",), "d#": ("D",),
    "k": ("K",), "g": ("G",), "x": ("K",), "?": ("T",), "f": ("F",), "v": ("V",), "T": ("TH",), "D": ("DH",),
    "s": ("S",), "z": ("Z",), "S": ("SH",), "Z": ("ZH",), "tS": ("CH",), "dZ": ("JH",), "h": ("HH",),
    "m": ("M",), "n": ("N",), "N": ("NG",), "n-": ("AH", "N"), "m-": ("AH", "M"), "l": ("L",), "l#": ("L",),
    "l-": ("AH", "L"), "r": ("R",), "r-": ("R",), "w": ("W",), "j": ("Y",),
    # marks without a sound of their own: palatalisation, a pause, lengthening
    ";": (), "|": (), ":": (),
}
_STRESS = str.maketrans("", "", "',%=")


def cmudict_path() -> Path:
    import pocketsphinx

    return Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"


@lru_cache(maxsize=1)
def cmudict() -> dict[str, tuple[Pronunciation, ...]]:
    """The wheel's CMU dictionary: each word's pronunciations, the main one first (`word(2)` lines are its
    alternates, in their order)."""
    prons: dict[str, list[Pronunciation]] = defaultdict(list)
    with open(cmudict_path(), encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                prons[re.sub(r"\(\d+\)$", "", parts[0])].append(tuple(p.rstrip("012") for p in parts[1:]))
    return {w: tuple(p) for w, p in prons.items()}


def normalise(line: str) -> str:
    """A line as the recogniser says it: lowercase words, punctuation dropped except the apostrophes inside
    words ("Don't touch!" -> "don't touch")."""
    words = re.sub(r"[^\w\s']|_", " ", line.lower()).split()
    return " ".join(w for w in (w.strip("'") for w in words) if w)


# -- the language model ------------------------------------------------------------------------------------
def build_arpa(sentences: list[str], order: int = 3, discount: float = 0.5) -> str:
    """An ARPA n-gram model of `sentences` (lowercased, split on whitespace, each between `<s>` and `</s>`).

    Unigrams are maximum likelihood (the vocabulary is closed: no `<unk>`); each higher order is absolute
    discounting interpolated with the order below,
        p(w | h) = (c(h w) - D) / c(h) + D * T(h) / c(h) * p(w | h'),   T(h): the distinct words seen after h,
    for the n-grams seen, and the back-off weight of each context h gives the unseen words the mass that is left,
        bow(h) = (1 - sum_seen p(w | h)) / (1 - sum_seen p(w | h')),
    so that every context's probabilities sum to 1. ValueError for an order below 1, a discount outside (0, 1),
    or no words."""
    if order < 1:
        raise ValueError(f"order ({order}) must be at least 1")
    if not 0.0 < discount < 1.0:
        raise ValueError(f"discount ({discount}) must lie strictly between 0 and 1")
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order + 1)]  # counts[n]: n-gram counts
    for s in sentences:
        words = s.lower().split()
        if not words:
            continue
        w = [BOS, *words, EOS]
        for n in range(1, order + 1):
            for i in range(len(w) - n + 1):
                counts[n][tuple(w[i:i + n])] += 1
    del counts[1][(BOS,)]  # <s> starts every sentence and is never predicted
    if not counts[1]:
        raise ValueError("no words to build a language model from: every sentence is empty")

    total = sum(counts[1].values())
    prob: dict[tuple[str, ...], float] = {(BOS,): 0.0}  # written as log10 -99, as ARPA files do
    prob.update({g: c / total for g, c in counts[1].items()})
    for n in range(2, order + 1):
        seen, types = Counter(), Counter()  # per context: its count as a context, distinct words after it
        for g, c in counts[n].items():
            seen[g[:-1]] += c
            types[g[:-1]] += 1
        for g, c in counts[n].items():
            h = g[:-1]
            # g[1:] was counted one order down (it ends the same n-gram), so its probability is known
            prob[g] = (c - discount) / seen[h] + discount * types[h] / seen[h] * prob[g[1:]]

    after: dict[tuple[str, ...], list[tuple[str, ...]]] = defaultdict(list)
    for g in prob:
        if len(g) >= 2:
            after[g[:-1]].append(g)
    bow = {}
    for h, gs in after.items():
        left = 1.0 - sum(prob[g] for g in gs)
        lower_left = 1.0 - sum(prob[g[1:]] for g in gs)
        bow[h] = max(left, 1e-12) / max(lower_left, 1e-12)  # both ~0 when every word follows h: the weight is unused

    by_order = [sorted(g for g in prob if len(g) == n) for n in range(order + 1)]
    lines = ["\\data\\", *(f"ngram {n}={len(by_order[n])}" for n in range(1, order + 1))]
    for n in range(1, order + 1):
        lines += ["", f"\\{n}-grams:"]
        for g in by_order[n]:
            p = prob[g]
            line = f"{math.log10(p) if p > 0 else -99.0:.6f}\t{' '.join(g)}"
            if n < order and g in bow:
                line += f"\t{math.log10(bow[g]):.6f}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


# -- pronunciations ----------------------------------------------------------------------------------------
def apostrophe_forms(word: str) -> list[str]:
    """`word` with an apostrophe put in, nearest the end first: "dont" -> ["don't", "do'nt", ...]; "lets" ->
    ["let's", ...]. The narration of the shapes world (and much of subtitling) writes contractions without one."""
    return [word[:i] + "'" + word[i:] for i in range(len(word) - 1, 0, -1)]


def espeak_pronunciations(words: list[str], timeout: float = 60.0) -> dict[str, Pronunciation]:
    """The words espeak-ng's en-us letter-to-sound rules can say, as ARPAbet (one subprocess for all of them, a
    word per line; each line of its phoneme output is that word's). Words with a phoneme the table lacks are left
    out; so is everything when espeak-ng is not installed (with a warning)."""
    exe = shutil.which("espeak-ng")
    if not words:
        return {}
    if exe is None:
        log.warning("espeak-ng is not installed: %d word(s) without a dictionary pronunciation stay out of "
                    "vocabulary (bash ops/setup.sh installs it)", len(words))
        return {}
    r = subprocess.run([exe, "-q", "-v", "en-us", "-x", "--sep=_"], input="\n".join(words) + "\n",
                       capture_output=True, text=True, timeout=timeout, check=False)
    said = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode != 0 or len(said) != len(words):
        if len(words) > 1:  # not one line per word: ask word by word
            return {w: p for word in words for w, p in espeak_pronunciations([word], timeout).items()}
        log.warning("espeak-ng gave no phonemes for %r (exit %d): %s", words[0], r.returncode, r.stderr.strip()[:200])
        return {}
    out: dict[str, Pronunciation] = {}
    for word, phonemes in zip(words, said):
        phones: list[str] = []
        unknown = []
        for ph in phonemes.translate(_STRESS).replace(" ", "_").split("_"):
            if not ph:
                continue
            if ph not in ESPEAK_TO_ARPABET:
                unknown.append(ph)
                continue
            for arpa in ESPEAK_TO_ARPABET[ph]:
                if arpa == "R" and phones and phones[-1] in ("R", "ER"):
                    continue  # espeak-ng writes r-coloured vowels then the r: "e@ r" is EH R, not EH R R
                phones.append(arpa)
        if unknown or not phones:
            log.warning("no pronunciation for %r: espeak-ng said %r (phonemes %s not mapped)", word, phonemes,
                        unknown)
            continue
        out[word] = tuple(phones)
    return out


def dictionary_form(word: str) -> str | None:
    """The CMU dictionary's spelling of `word`: itself, else its first apostrophe form there (or, for a word
    with an apostrophe, the word without it); None when it has neither."""
    cmu = cmudict()
    forms = [word, *apostrophe_forms(word)] if "'" not in word else [word, word.replace("'", "")]
    return next((f for f in forms if f in cmu), None)


def pronunciations(words: Iterable[str]) -> tuple[dict[str, list[Pronunciation]], list[str]]:
    """Each word's pronunciations (the CMU dictionary's, alternates after the main one), and the sorted words
    none was found for. A word the dictionary lacks takes the pronunciations of its first apostrophe form the
    dictionary has ("dont" -> "don't"), else the one espeak-ng's rules give it, else is out of vocabulary."""
    cmu = cmudict()
    found: dict[str, list[Pronunciation]] = {}
    missing = []
    for w in sorted(set(words)):
        hit = dictionary_form(w)
        if hit is not None:
            found[w] = list(cmu[hit])
        else:
            missing.append(w)
    spoken = espeak_pronunciations(missing)
    for w, p in spoken.items():
        found[w] = [p]
    if spoken:
        log.info("%d word(s) pronounced by espeak-ng's rules: %s", len(spoken), ", ".join(sorted(spoken)[:20]))
    return found, sorted(w for w in missing if w not in spoken)


def format_dict(prons: dict[str, list[Pronunciation]]) -> str:
    """pocketsphinx's dictionary format: `word PH PH ...`, alternates as `word(2) ...`."""
    lines = []
    for w in sorted(prons):
        for k, p in enumerate(prons[w], 1):
            lines.append(f"{w if k == 1 else f'{w}({k})'} {' '.join(p)}")
    return "\n".join(lines) + "\n"


# -- from a corpus -----------------------------------------------------------------------------------------
def video_cues(path: Path) -> tuple[list, str]:
    """A video's subtitle cues without decoding a frame, and where they came from: the sidecar .srt/.vtt when
    there is one (quicker than demuxing the file), else the embedded text subtitle stream (as the reader finds
    it: `videobert.reader.text_stream`), else none. A file PyAV cannot open has none (with a warning)."""
    import av

    from videobert import subtitles
    from videobert.reader import media_offset, packet_cues, text_stream

    sidecar = subtitles.find_sidecar(path)
    if sidecar is not None:
        try:
            return subtitles.read_sidecar(sidecar), "sidecar"
        except subtitles.SubtitleError as e:
            log.warning("%s: ignoring sidecar subtitles: %s", path, e)
    try:
        with av.open(str(path), timeout=(10.0, 10.0)) as container:
            text = text_stream(container)
            if text is None:
                return [], "none"
            offset = media_offset(container.streams.video[0]) if container.streams.video else 0.0
            cues = [c for pkt in container.demux(text) for c in packet_cues(pkt, offset)]
    except (av.error.FFmpegError, OSError) as e:
        log.warning("%s: cannot read its subtitles: %s", path, e)
        return [], "none"
    return sorted(cues, key=lambda c: c.start), "embedded" if cues else "none"


def train_speech_lm(data_dir: str | Path, out_dir: str | Path, order: int = 3, discount: float = 0.5,
                    progress: bool = True) -> dict:
    """Build the recogniser's language model and dictionary from the narration of every video under `data_dir`:
    writes `out_dir/speech/lm.arpa`, `words.dict` and, last (it marks the build complete), `speech_lm.json`, the
    summary returned. ValueError naming `data_dir` when it has no videos or none of them has narration."""
    from tqdm import tqdm

    from videobert.reader import list_videos

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    videos = list_videos(data_dir)
    if not videos:
        raise ValueError(f"no videos under {data_dir}")
    lines: list[str] = []
    sources: Counter[str] = Counter()
    for path in tqdm(videos, desc="reading subtitles", unit="video", disable=not progress):
        cues, source = video_cues(path)
        sources[source] += 1
        lines += [t for t in (normalise(c.text) for c in cues) if t]
    if not lines:
        raise ValueError(f"none of the {len(videos)} videos under {data_dir} has narration (no embedded text "
                         "subtitle stream, no .srt/.vtt beside it)")
    prons, oov = pronunciations(w for line in lines for w in line.split())
    kept = [s for s in (" ".join(w for w in line.split() if w in prons) for line in lines) if s]
    if not kept:
        raise ValueError(f"no word of the narration under {data_dir} has a pronunciation (out of vocabulary: "
                         f"{', '.join(oov[:20])})")
    if oov:
        log.warning("%d word(s) without a pronunciation dropped from the narration: %s", len(oov), ", ".join(oov[:20]))
    arpa = build_arpa(kept, order=order, discount=discount)
    speech = out_dir / SPEECH_DIR
    speech.mkdir(parents=True, exist_ok=True)
    (speech / LM_FILE).write_text(arpa)
    (speech / DICT_FILE).write_text(format_dict(prons))
    summary = {
        "source": str(data_dir), "videos": len(videos),
        "subtitles": {k: sources[k] for k in ("sidecar", "embedded", "none")},
        "lines": len(kept), "distinct_lines": len(set(kept)), "words": sum(len(s.split()) for s in kept),
        "vocabulary": len(prons), "order": order, "discount": discount,
        "espeak_words": sorted(w for w in prons if dictionary_form(w) is None),  # pronounced by its rules
        "oov": oov,
        "files": {"lm": str(speech / LM_FILE), "dict": str(speech / DICT_FILE)},
    }
    (speech / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return summary

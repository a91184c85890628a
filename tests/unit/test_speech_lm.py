"""The speech recogniser's language model and dictionary (videobert.speech_lm, `vbs train speech-lm`): a normalised
ARPA model, pronunciations from the CMU dictionary with the narration's contractions and espeak-ng's fallback, and
files pocketsphinx loads and recognises the narration with. Real pocketsphinx and espeak-ng."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from pocketsphinx import Decoder

from ops.cli import main
from tests.conftest import vbs
from videobert import speech_lm
from videobert.subtitles import read_sidecar
from videobert.tts import Voice, speak

ARPABET = {"AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY",
           "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z",
           "ZH"}
LINES = ["lets grow the red circle", "now shrink the red circle", "watch me grow this blue star",
         "dont forget to subscribe", "lets lift the blue star", "okay", "grow the star"]


def read_arpa(text: str) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
    """(log10 probabilities, log10 back-off weights) of an ARPA file, by n-gram."""
    prob, bow = {}, {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and not line.startswith(("\\", "ngram")):
            g = tuple(parts[1].split())
            prob[g] = float(parts[0])
            if len(parts) == 3:
                bow[g] = float(parts[2])
    return prob, bow


def p_of(prob, bow, g: tuple[str, ...]) -> float:
    """p(g[-1] | g[:-1]) by the back-off rule pocketsphinx applies."""
    if g in prob:
        return 10 ** prob[g]
    return 10 ** bow.get(g[:-1], 0.0) * p_of(prob, bow, g[1:])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_of_the_language_model_sums_to_one(order):
    prob, bow = read_arpa(speech_lm.build_arpa(LINES, order=order))
    vocab = sorted(g[0] for g in prob if len(g) == 1 and g[0] != "<s>")
    assert set(vocab) == {w for s in LINES for w in s.split()} | {"</s>"}
    contexts = {g[:-1] for g in prob if len(g) > 1} | {()}
    contexts |= {("purple", "ring"), ("<s>", "okay"), ("star",)}  # unseen ones back off all the way
    for h in sorted(contexts):
        h = h[-(order - 1):] if order > 1 else ()
        total = sum(p_of(prob, bow, (*h, w)) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4), h
    assert 10 ** prob[("<s>",)] < 1e-90  # <s> is never predicted


def test_seen_words_follow_their_context_more_than_unseen_ones():
    prob, bow = read_arpa(speech_lm.build_arpa(LINES, order=3))
    assert p_of(prob, bow, ("the", "red", "circle")) > p_of(prob, bow, ("the", "red", "star"))
    assert p_of(prob, bow, ("the", "red", "star")) > 0


def test_bad_arguments_of_the_language_model_are_named():
    with pytest.raises(ValueError, match=r"order \(0\)"):
        speech_lm.build_arpa(LINES, order=0)
    with pytest.raises(ValueError, match=r"discount \(1.5\)"):
        speech_lm.build_arpa(LINES, discount=1.5)
    with pytest.raises(ValueError, match="no words"):
        speech_lm.build_arpa(["", "  "])


def test_dictionary_words_keep_their_pronunciations_and_alternates():
    prons, oov = speech_lm.pronunciations(["circle", "the", "read"])
    assert oov == [] and prons["circle"] == [("S", "ER", "K", "AH", "L")]
    assert prons["the"] == [("DH", "AH"), ("DH", "IY")] and len(prons["read"]) == 2
    text = speech_lm.format_dict(prons)
    assert "the DH AH\nthe(2) DH IY\n" in text and "circle S ER K AH L\n" in text


def test_contractions_without_an_apostrophe_are_pronounced_as_the_dictionary_says():
    prons, oov = speech_lm.pronunciations(["dont", "lets", "isnt"])
    cmu = speech_lm.cmudict()
    assert oov == []
    assert prons["dont"] == list(cmu["don't"]) and prons["isnt"] == list(cmu["isn't"])
    assert prons["lets"][0] == cmu["let's"][0]


def test_a_word_the_dictionary_lacks_is_spoken_by_espeak_or_reported():
    prons, oov = speech_lm.pronunciations(["blorptag", "circle"])
    assert "blorptag" not in speech_lm.cmudict()
    assert ("blorptag" in prons) != ("blorptag" in oov)
    if "blorptag" in prons:  # espeak-ng installed: its letter-to-sound rules, in the acoustic model's phones
        (p,) = prons["blorptag"]
        assert set(p) <= ARPABET and p[:2] == ("B", "L") and p[-1] == "G"


def test_espeak_phonemes_map_to_the_acoustic_models_phones():
    assert {ph for p in speech_lm.ESPEAK_TO_ARPABET.values() for ph in p} <= ARPABET
    said = speech_lm.espeak_pronunciations(["judge", "thing", "vision", "fire"])
    assert said["judge"] == ("JH", "AH", "JH") and said["thing"] == ("TH", "IH", "NG")
    assert said["vision"] == ("V", "IH", "ZH", "AH", "N") and said["fire"] == ("F", "AY", "ER")


def test_narration_is_normalised_as_the_recogniser_says_it():
    assert speech_lm.normalise("Don't touch, 'Quoted' the RED circle!") == "don't touch quoted the red circle"
    assert speech_lm.normalise("-- ... --") == ""


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory) -> Path:
    from videobert.corpus import make_corpus

    out = tmp_path_factory.mktemp("speech_lm_corpus")
    make_corpus(out, 2, seed=11, workers=1, min_seconds=10, max_seconds=12, progress=False)
    return out


def noisy(samples: np.ndarray, seed: int = 0) -> bytes:
    """Speech between 0.3 s of faint noise, faint noise over it too (pocketsphinx fails on digital silence)."""
    pad = np.zeros(4800, np.float32)
    x = np.concatenate([pad, samples.astype(np.float32), pad])
    x += np.random.default_rng(seed).normal(0, 60, x.size)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16).tobytes()


def test_vbs_train_speech_lm_writes_files_pocketsphinx_recognises_the_narration_with(two_videos, tmp_path):
    # given a corpus of two narrated videos, when its speech language model is trained through the command line
    summary = json.loads(vbs("train", "speech-lm", "--data", two_videos, "--out", tmp_path, "-q"))
    speech = tmp_path / "speech"
    assert sorted(p.name for p in speech.iterdir()) == ["lm.arpa", "speech_lm.json", "words.dict"]
    assert json.loads((speech / "speech_lm.json").read_text()) == summary
    cues = [c for srt in sorted(two_videos.glob("*.srt")) for c in read_sidecar(srt)]
    assert summary["videos"] == 2 and summary["subtitles"]["sidecar"] == 2 and summary["lines"] == len(cues)
    assert summary["order"] == 3 and summary["oov"] == []
    words = {w for c in cues for w in speech_lm.normalise(c.text).split()}
    assert summary["vocabulary"] == len(words)
    assert {ln.split()[0].split("(")[0] for ln in (speech / "words.dict").read_text().splitlines()} == words

    # then pocketsphinx loads the files and recognises a line of the narration spoken
    decoder = Decoder(samprate=16000, lm=str(speech / "lm.arpa"), dict=str(speech / "words.dict"), loglevel="FATAL")
    line = speech_lm.normalise(max(cues, key=lambda c: len(c.text.split())).text)
    decoder.start_utt()
    decoder.process_raw(noisy(speak(line, Voice())), full_utt=True)
    decoder.end_utt()
    heard = decoder.hyp().hypstr.split() if decoder.hyp() else []
    assert edit_distance(line.split(), heard) <= 1, (line, heard)


def test_the_embedded_subtitles_give_the_same_model_as_the_sidecars(two_videos, tmp_path):
    for mp4 in two_videos.glob("*.mp4"):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / mp4.name).symlink_to(mp4)
    embedded = speech_lm.train_speech_lm(tmp_path / "data", tmp_path / "a", progress=False)
    sidecar = speech_lm.train_speech_lm(two_videos, tmp_path / "b", progress=False)
    assert embedded["subtitles"] == {"sidecar": 0, "embedded": 2, "none": 0}
    assert (tmp_path / "a/speech/lm.arpa").read_text() == (tmp_path / "b/speech/lm.arpa").read_text()
    assert embedded["lines"] == sidecar["lines"]


def test_a_directory_without_videos_or_narration_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "speech-lm", "--data", str(empty), "--out", str(tmp_path / "m"), "-q"]) == 2
    assert f"no videos under {empty}" in capsys.readouterr().err

    silent = tmp_path / "silent"
    silent.mkdir()
    with av.open(str(silent / "quiet.mp4"), "w") as out:  # a video without subtitles of any kind
        vs = out.add_stream("mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        for _ in range(5):
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        out.mux(vs.encode())
    with pytest.raises(ValueError, match=rf"none of the 1 videos under {silent} has narration"):
        speech_lm.train_speech_lm(silent, tmp_path / "m", progress=False)
    assert not (tmp_path / "m" / "speech").exists()


def edit_distance(a: list[str], b: list[str]) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]

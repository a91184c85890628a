"""Speech recognition, measured (videobert/speech.py): every video with audio under --data (a corpus made with
`vbs corpus make --speech`) is transcribed as the graph and the trainers transcribe it (voice activity cuts the
track into utterances, each recognised), and compared with the video's narration (its sidecar subtitles):

  wer            word error rate of the whole transcript of each video against its narration in order (word-level
                 edit distance / narration words, summed over videos); independent of where utterances were cut
  line_recall    the share of narration lines whose verb and noun both appear in a recognised line overlapping it
                 (+/- 0.5 s): what the fusion model can use
  real_time      seconds of recognition per second of audio (one core)

for the model's own speech language model (`vbs train speech-lm`, when --model has one) and PocketSphinx's
general model, side by side. Writes JSON.

    python -m bench.speech --data models/demo/data/heldout --model models/demo --out bench/results/speech.json"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import cpu_model, write_result
from videobert import subtitles, world
from videobert.reader import list_videos
from videobert.speech import has_audio, make_recognizer, read_audio, transcribe, word_errors


def narration(video: Path) -> list[subtitles.Cue]:
    side = subtitles.find_sidecar(video)
    return subtitles.read_sidecar(side) if side is not None else []


def measure(videos: list[Path], recognizer) -> dict:
    errors = words = lines = found = 0
    audio_s = busy_s = 0.0
    examples = []
    for v in videos:
        truth = narration(v)
        chunks = list(read_audio(v))
        audio_s += sum(len(x) for _, x in chunks) / 16000
        t = time.perf_counter()
        heard = transcribe(iter(chunks), recognizer)
        busy_s += time.perf_counter() - t
        ref = " ".join(c.text for c in truth)
        hyp = " ".join(c.text for c in heard)
        errors += word_errors(ref, hyp)
        words += len(ref.split())
        for c in truth:
            said = set(c.text.split())
            verb = next((w for w in world.VERBS if w in said), None)
            noun = next((w for w in world.NOUNS if w in said), None)
            if verb is None or noun is None:
                continue
            lines += 1
            near = " ".join(h.text for h in subtitles.overlapping(heard, c.start - 0.5, c.end + 0.5)).split()
            found += verb in near and noun in near
        if len(examples) < 5:
            examples.append({"video": v.name, "said": ref[:300], "heard": hyp[:300]})
    return {"wer": round(errors / max(words, 1), 4), "words": words, "line_recall": round(found / max(lines, 1), 4),
            "lines_with_verb_and_noun": lines, "audio_seconds": round(audio_s, 1),
            "real_time": round(busy_s / max(audio_s, 1e-9), 4), "examples": examples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="directory of videos with audio and sidecar subtitles")
    p.add_argument("--model", default=None, help="model directory with speech/lm.arpa (vbs train speech-lm)")
    p.add_argument("--limit", type=int, default=None, help="at most this many videos")
    p.add_argument("--out", default="bench/results/speech.json")
    a = p.parse_args(argv)
    videos = [v for v in list_videos(a.data) if has_audio(v)][: a.limit]
    if not videos:
        raise SystemExit(f"no videos with audio under {a.data} (make them with vbs corpus make --speech)")
    result = {"cpu": cpu_model(), "videos": len(videos), "data": str(a.data)}
    own = make_recognizer("pocketsphinx", a.model)
    if own.language_model != "general":
        result["own_language_model"] = measure(videos, own)
    result["general_model"] = measure(videos, make_recognizer("pocketsphinx", None))
    write_result(a.out, result)
    print(json.dumps({k: v for k, v in result.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`vbs`: the command line of live VideoBERT tagging. Every subcommand explains itself with --help."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("vbs")


def _workers_default() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def cmd_corpus_make(a: argparse.Namespace) -> int:
    from videobert.corpus import make_corpus

    r = make_corpus(a.out, a.videos, seed=a.seed, workers=a.workers, container=a.container,
                    min_seconds=a.min_seconds, max_seconds=a.max_seconds, progress=not a.quiet, vary=a.vary,
                    speech=a.speech, scale=a.scale)
    print(f"wrote {r.videos} videos ({r.seconds_of_video:.0f} s of video) to {a.out} in {r.wall_seconds:.1f} s "
          f"({r.videos_per_minute:.1f} videos/min)")
    return 0


def cmd_corpus_read(a: argparse.Namespace) -> int:
    from videobert.reader import ClipSpec, VideoReadError, list_videos, read_video

    spec = ClipSpec(a.clip_seconds, a.frames, a.size, a.fit)
    failed = 0
    for p in list_videos(a.data)[: a.limit]:
        try:
            v = read_video(p, spec)
        except VideoReadError as e:
            failed += 1
            print(json.dumps({"file": str(p), "error": e.reason}))
            continue
        row = {"file": str(p), "clips": len(v.clips), "duration": round(v.duration, 2), "size": f"{v.width}x{v.height}",
               "subtitles": v.subtitle_source, "cues": len(v.cues), "labelled": v.truth is not None,
               "decode_errors": v.decode_errors}
        if a.clips:
            row["clip_texts"] = [{"t0": c.t0, "t1": c.t1, "text": c.text,
                                  "label": f"{c.segment.verb} {c.segment.noun}" if c.segment else None} for c in v.clips]
        print(json.dumps(row))
    return 1 if failed and a.strict else 0


def cmd_train_encoder(a: argparse.Namespace) -> int:
    from videobert.train_encoder import EncoderTrainConfig, train_encoder

    try:
        arch_config = json.loads(a.arch_config)
    except json.JSONDecodeError as e:
        raise ValueError(f"--arch-config is not JSON: {e}") from None
    if not isinstance(arch_config, dict):
        raise ValueError("--arch-config must be a JSON object, e.g. '{\"fovea_frames\": 4}'")
    cfg = EncoderTrainConfig(arch=a.arch, arch_config=arch_config, clip_frames=a.frames, clip_size=a.size,
                             clip_fit=a.fit, bag_context=a.bag_context, word_lr_mult=a.word_lr_mult,
                             nce_weight=a.nce_weight, temperature=a.temperature, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, word_weight=a.word_weight,
                             slot_weight=a.slot_weight, slot_loss=a.slot_loss, slot_q=a.slot_q, precision=a.precision, seed=a.seed)
    if a.no_slots:
        cfg.slots = {}
    elif a.slot:
        cfg.slots = _parse_slots(a.slot)
    s = train_encoder(a.data, a.out, cfg, device=a.device, workers=a.workers, progress=not a.quiet,
                      text=_text_source(a))
    print(json.dumps(s, indent=1))
    return 0


def cmd_train_vocab(a: argparse.Namespace) -> int:
    from videobert.kmeans import KMeansConfig
    from videobert.visual_words import fit_vocab

    s = fit_vocab(a.data, a.encoder, a.out, KMeansConfig(a.depth, a.branching, a.iters, a.seed),
                  device=a.device or "cpu", workers=a.workers, progress=not a.quiet)
    print(json.dumps(s, indent=1))
    return 0


def cmd_train_speech_lm(a: argparse.Namespace) -> int:
    from videobert.speech_lm import train_speech_lm

    s = train_speech_lm(a.data, a.out, order=a.order, progress=not a.quiet)
    print(json.dumps(s, indent=1))
    return 0


def cmd_eval_encoder(a: argparse.Namespace) -> int:
    from videobert.evaluate import evaluate_encoder

    r = evaluate_encoder(a.encoder, a.vocab, a.data, n=a.n, seed=a.seed, device=a.device or "cpu",
                         workers=a.workers, progress=not a.quiet, baseline=not a.no_baseline, fit_data=a.fit_data)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r, indent=1))
    print(_encoder_table(r))
    return 0


def cmd_eval_words(a: argparse.Namespace) -> int:
    from videobert.evaluate import words_probe

    heldout = a.heldout or str(Path(a.model) / "data" / "heldout")
    r = words_probe(a.model, a.data, heldout, device=a.device or "cpu", progress=not a.quiet)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    print(f"linear probe on bags of {r['vocab_size']} visual words ({r['train_segments']} labelled segments to train, "
          f"{r['test_segments']} held-out): verb {r['verb_accuracy']:.3f}, noun {r['noun_accuracy']:.3f}")
    return 0


def _encoder_table(r: dict) -> str:
    rows = [("", "R@1", "R@5", "sem R@1", "purity verb", "purity noun", "words")]
    for name in ("trained", "untrained"):
        if name in r:
            m = r[name]
            rows.append((name, f"{m['r_at_1']:.2f}", f"{m['r_at_5']:.2f}", f"{m.get('semantic_r_at_1', float('nan')):.2f}",
                         f"{m['purity_verb']:.2f}", f"{m['purity_noun']:.2f}", f"{m['words_used']}/{m['vocab_size']}"))
    first = r.get("trained") or {}
    rows.append(("chance", f"{first.get('chance_r_at_1', 0):.2f}", f"{first.get('chance_r_at_5', 0):.2f}", "",
                 f"{r.get('majority_verb', float('nan')):.2f}", f"{r.get('majority_noun', float('nan')):.2f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def cmd_train_videobert(a: argparse.Namespace) -> int:
    from videobert.pretrain import PretrainConfig, pretrain

    objectives = tuple(o.strip() for o in a.objectives.split(",") if o.strip())
    bad = set(objectives) - {"text", "video", "align"}
    if bad or not objectives:
        raise ValueError(f"--objectives takes a comma list of text, video, align; got {a.objectives!r}")
    mix = {"cross": a.mix[0], "text": a.mix[1], "video": a.mix[2]}
    cfg = PretrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, objectives=objectives, mix=mix, seed=a.seed,
                         init_visual_from_text=not a.no_text_init, grounding_floor=a.grounding_floor,
                         precision=a.precision)
    s = pretrain(a.data, a.encoder, a.vocab, a.out, cfg, device=a.device, workers=a.workers, progress=not a.quiet,
                 restart=a.restart, text=_text_source(a))
    print(json.dumps({k: v for k, v in s.items() if k != "history"}, indent=1))
    return 0


def _text_source(a: argparse.Namespace):
    from videobert.speech import TextSource, language_model_of

    if a.speech_lm and language_model_of(a.speech_lm) is None:
        raise ValueError(f"--speech-lm {a.speech_lm}: no speech language model there (speech/lm.arpa and "
                         "speech/words.dict; vbs train speech-lm --out DIR makes them)")
    return TextSource(a.text_source, model_dir=a.speech_lm)


def _text_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-source", choices=("subtitles", "speech", "auto"), default="subtitles",
                   help="where the narration comes from: subtitles (embedded text stream, else sidecar .srt/.vtt; "
                        "default), speech (each video's audio through the speech recogniser), or auto (subtitles "
                        "where a video has them, speech otherwise). Transcripts are cached in ~/.cache/vbs/speech "
                        "(VBS_CACHE_DIR)")
    p.add_argument("--speech-lm", metavar="DIR", default=None,
                   help="with speech: a directory holding speech/lm.arpa + speech/words.dict (vbs train speech-lm) for "
                        "the recogniser; default: PocketSphinx's general US English model")


def _parse_slots(specs: list[str]) -> dict[str, list[str]]:
    """["verb=grow,shrink", ...] -> {"verb": ["grow", "shrink"], ...}"""
    slots: dict[str, list[str]] = {}
    for spec in specs:
        name, _, words = spec.partition("=")
        if not name or not words:
            raise ValueError(f"--slot takes NAME=word,word,...; got {spec!r}")
        slots[name] = [w.strip() for w in words.split(",") if w.strip()]
    return slots


def _labels(a: argparse.Namespace):
    from pydantic import ValidationError

    from schemas.streams import LabelSet

    try:
        return LabelSet.of(a.template, _parse_slots(a.slot) if a.slot else None)
    except ValidationError as e:
        raise ValueError(f"--template/--slot: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _probe_video(source: str) -> None:
    """Refuse, before the model is loaded, a source that is missing, not a video, or cannot be opened."""
    import av

    if "://" not in source and not Path(source).is_file():
        raise FileNotFoundError(f"{'not a file' if Path(source).exists() else 'no such file'}: {source}")
    try:
        with av.open(source, timeout=(10.0, 10.0)) as c:
            if not c.streams.video:
                raise ValueError(f"{source}: no video stream")
    except (av.error.FFmpegError, OSError) as e:
        raise ValueError(f"{source}: cannot open as a video: {e}") from None


def cmd_tag(a: argparse.Namespace) -> int:
    from ops.up import settings_for
    from videobert.device import pick_device
    from videobert.reader import VideoReadError
    from videobert.tagging import Tagger, write_jsonl

    if a.context < 0:
        raise ValueError(f"--context is a number of earlier clips, >= 0, not {a.context}")
    labels = _labels(a)
    _probe_video(a.source)
    tagger = Tagger(a.model or settings_for(a).model_dir, device=pick_device(a.device), labels=labels,
                    context=a.context)
    try:
        rows = tagger.tag_video(a.source, with_embedding=a.embedding, text_source=a.text_source)
    except VideoReadError as e:
        raise ValueError(str(e)) from None
    if a.out:
        with open(a.out, "w") as fh:
            write_jsonl(rows, fh)
    else:
        write_jsonl(rows, sys.stdout)
    return 0


def cmd_eval_zero_shot(a: argparse.Namespace) -> int:
    from videobert.device import pick_device
    from videobert.evaluate import evaluate_held_out, format_zero_shot
    from videobert.tagging import Tagger

    tagger = Tagger(a.model, device=pick_device(a.device))
    r = evaluate_held_out(tagger, a.data, progress=not a.quiet)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r, indent=1))
    print(format_zero_shot(r))
    return 0


def cmd_finetune(a: argparse.Namespace) -> int:
    from videobert.device import pick_device
    from videobert.finetune import FinetuneConfig, compare

    cfg = FinetuneConfig(task=a.task, budget=a.budget, epochs=a.epochs, seed=a.seed)
    eval_data = a.eval_data or str(Path(a.model) / "data" / "heldout")
    r = compare(a.model, a.data, eval_data, cfg, device=pick_device(a.device), progress=not a.quiet)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r, indent=1))
    print(f"task {r['task']}: {r['train_segments']} labelled segments to train, {r['test_segments']} to test "
          f"(chance accuracy {r['chance_accuracy']:.3f})")
    for name in ("pretrained", "not_pretrained"):
        print(f"  {name:>15}: accuracy {r[name]['accuracy']:.3f}  macro-F1 {r[name]['macro_f1']:.3f}")
    return 0


def cmd_train_demo(a: argparse.Namespace) -> int:
    from videobert.demo import build_demo

    card = build_demo(a.out, preset=a.preset, seed=a.seed, workers=a.workers, device=a.device, force=a.force,
                      text_source=a.text_source)
    print(json.dumps(card, indent=1))
    return 0


def cmd_up(a: argparse.Namespace) -> int:
    from ops import up

    return up.run(a)


def cmd_push(a: argparse.Namespace) -> int:
    from ops import up

    return up.push(a)


def _redis_for(a: argparse.Namespace):
    """The Redis of a client command (ops.up.find_redis: --redis-url, REDIS_URL or the config, the run file of a
    running `vbs up`, 127.0.0.1:6379), checked to answer, and the key names of the config's prefix."""
    from ops.up import client_for

    r, keys, _ = client_for(a)
    return r, keys


def cmd_status(a: argparse.Namespace) -> int:
    from actors import control

    r, keys = _redis_for(a)
    if a.graph:
        return _print_graph(r, keys)
    ids = [a.id] if a.id else r.zrevrange(keys.streams, 0, a.limit - 1)
    for sid in ids:
        st = control.state(r, keys, sid)
        if st is None:
            if a.id:
                raise FileNotFoundError(f"no stream {a.id!r} under the prefix {keys.prefix!r}")
            continue
        row = st.public()
        if not a.latest:
            row.pop("latest")
        print(json.dumps(row))
    return 0


def _print_graph(r, keys) -> int:
    """The pools (running, target, bounds) and where each replica runs, as the autoscaler last wrote them."""
    from actors.placement import read_view

    view = read_view(r, keys)
    if view is None:
        raise FileNotFoundError(f"no graph is running under the prefix {keys.prefix!r} (vbs up starts one)")
    age = time.time() - view["at"]
    print(f"graph under prefix {keys.prefix!r} (seen {age:.0f} s ago)")
    print(f"{'pool':<14}{'running':>8}{'target':>8}{'min':>5}{'max':>5}{'starting':>10}{'draining':>10}")
    for name, p in view["pools"].items():
        print(f"{name:<14}{p['replicas']:>8}{p['target']:>8}{p['min']:>5}{p['max']:>5}{p['starting']:>10}"
              f"{p['draining']:>10}")
    print(f"\n{'replica':<28}{'state':<10}{'node':<16}{'node id':<14}{'device':<8}{'load':>6}")
    for x in view["replicas"]:
        load = x.get("streams", x.get("queued", ""))
        print(f"{x['name']:<28}{x['state']:<10}{x.get('node_ip') or '-':<16}{(x.get('node_id') or '-')[:12]:<14}"
              f"{x.get('device') or '-':<8}{load!s:>6}")
    return 0


def _known_stream(r, keys, stream_id: str):
    """The stream's state; an unknown id is bad input (exit 2)."""
    from actors import control

    st = control.state(r, keys, stream_id)
    if st is None:
        raise FileNotFoundError(f"no stream {stream_id!r} under the prefix {keys.prefix!r}")
    return st


def cmd_stop(a: argparse.Namespace) -> int:
    from actors import control

    r, keys = _redis_for(a)
    st = control.request_stop(r, keys, a.id)
    if st is None:
        raise FileNotFoundError(f"no stream {a.id!r} under the prefix {keys.prefix!r}")
    if st.status.terminal:
        print(f"{a.id} has already ended ({st.status.value})")
    else:
        print(f"stop requested for {a.id}; it ends within a heartbeat")
    return 0


TAGS_PAGE = 500  # entries read at a time
TOP_LABELS = 2  # labels shown per slot in a human line


def _stream_seconds(text: str) -> float:
    """--since: stream seconds, within the bounds the API's ?since= takes."""
    from schemas.state import MAX_STREAM_SECONDS

    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not 0 <= x <= MAX_STREAM_SECONDS:  # NaN fails too
        raise argparse.ArgumentTypeError(f"takes stream seconds from 0 to {MAX_STREAM_SECONDS:.0e}, not {text!r}")
    return x


def _tag_line(t) -> str:
    """One tag for a person: stream time, the top labels of each slot with their scores, the subtitle."""
    slots = "   ".join(f"{slot}: " + ", ".join(f"{x.label} {x.score:.2f}" for x in ranked[:TOP_LABELS])
                       for slot, ranked in t.labels.items())
    subtitle = " ".join(t.subtitle.split())
    return f"{t.t0:8.2f}-{t.t1:<8.2f}  {slots}" + (f'   "{subtitle}"' if subtitle else "")


def cmd_tags(a: argparse.Namespace) -> int:
    """A stream's tags from vbs:tags:{id}, as the sink wrote them; with --follow, new ones as they come (XREAD
    BLOCK) until the stream ends."""
    from pydantic import ValidationError

    from actors import control
    from actors.sink import entry_id
    from schemas.state import TagResult

    r, keys = _redis_for(a)
    st = _known_stream(r, keys, a.id)
    key = keys.tags(a.id)
    last = entry_id(a.since) if a.since is not None else "0-0"  # the entry after which to read

    def show(entries) -> None:
        nonlocal last
        for eid, fields in entries:
            last = eid
            try:
                t = TagResult.model_validate_json(fields.get("data", ""))
            except ValidationError as e:
                log.warning("skipping entry %s of %s: not a tag (%s)", eid, key, e.errors()[0]["msg"])
                continue
            print(json.dumps({"id": eid, **t.to_dict()}) if a.json else _tag_line(t), flush=a.follow)

    def read_all() -> None:
        while True:
            entries = r.xrange(key, min=f"({last}", count=TAGS_PAGE)
            show(entries)
            if len(entries) < TAGS_PAGE:
                return

    read_all()
    if not a.follow:
        return 0
    while not st.status.terminal:
        for _, entries in r.xread({key: last}, block=1000, count=TAGS_PAGE) or []:
            show(entries)
        st = control.state(r, keys, a.id)
        if st is None:
            print(f"{a.id}: its state has gone (expired or deleted)", file=sys.stderr)
            return 0
    read_all()  # what was written before it ended and after the last read
    print(f"{a.id}: {st.status.value}" + (f" ({st.reason})" if st.reason else ""), file=sys.stderr)
    return 0


def _unix_time(text: str) -> float:
    """--since/--until of a search: Unix seconds, or minus seconds before now ("-3600": the last hour)."""
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not x == x or x in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"takes Unix seconds, or -SECONDS before now, not {text!r}")
    return time.time() + x if x < 0 else x


def cmd_search(a: argparse.Namespace) -> int:
    """Clips of every stream nearest a text, from the running service's index (GET /v1/search)."""
    from ops.up import api_get

    body = api_get(a, "/v1/search", {"q": a.text, "k": a.k, "stream": a.stream, "since": a.since, "until": a.until})
    for h in body["hits"]:
        if a.json:
            print(json.dumps(h))
            continue
        labels = "  ".join(f"{slot}: {x['label']} {x['score']:.2f}" for slot, x in h["labels"].items())
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["at"]))
        subtitle = " ".join(h["subtitle"].split())
        print(f"{h['score']:.3f}  {h['stream_id']:<24} {h['t0']:8.2f}-{h['t1']:<8.2f} {when}  {labels}"
              + (f'   "{subtitle}"' if subtitle else ""))
    if not body["complete"]:
        print("vbs: the index is still being rebuilt from Redis: hits may be missing", file=sys.stderr)
    if not body["hits"] and not a.json:
        print(f"no clip matches (the index holds {body['indexed']} clips)", file=sys.stderr)
    return 0


def cmd_summary(a: argparse.Namespace) -> int:
    """A stream's tags merged into segments (videobert.summary), read from Redis as GET /v1/streams/{id}/summary."""
    from pydantic import ValidationError

    from actors.sink import entry_id
    from schemas.state import TagResult
    from schemas.streams import StreamOptions
    from videobert.summary import summarise

    r, keys = _redis_for(a)
    st = _known_stream(r, keys, a.id)
    tags, last = [], entry_id(a.since) if a.since is not None else "0-0"
    while True:
        entries = r.xrange(keys.tags(a.id), min=f"({last}", count=TAGS_PAGE)
        for eid, f in entries:
            try:
                tags.append(TagResult.model_validate_json(f.get("data", "")))
            except ValidationError:
                continue
        if len(entries) < TAGS_PAGE:
            break
        last = entries[-1][0]
    for seg in summarise(tags, StreamOptions.template_of(st.options), min_clips=a.min_clips):
        if a.json:
            print(json.dumps(seg.to_dict()))
        else:
            print(f"{seg.t0:8.2f}-{seg.t1:<8.2f} {seg.score:.2f}  {seg.sentence}"
                  + (f'   ("{" / ".join(seg.subtitles)}")' if seg.subtitles else ""))
    return 0


def _precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="the forward pass in bf16 autocast or fp32; auto (default): bf16 on a GPU that has it; on a CPU "
                        "with bf16 instructions (AMX or AVX512-BF16) the first steps try both and the rest run in "
                        "the faster; fp32 elsewhere")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    """Where a command runs: --device, --workers (processes reading videos) and -q."""
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--workers", type=int, default=_workers_default(),
                   help="processes reading videos (default: CPU count, max 4)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


class _Parser(argparse.ArgumentParser):
    """Bad arguments end in one line (which command, what is wrong, where help is) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _SubParser(_Parser):
    """A subcommand: takes -v too, so that `vbs up -v` works as `vbs -v up` (SUPPRESS: not given here, the value
    given before the subcommand stands)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


VERBOSE_HELP = "debug logging; with `vbs up`, every log line of the actors (default: their warnings and errors)"


def _service_args(p: argparse.ArgumentParser) -> None:
    """--config and --redis-url of a command that reads the service's settings (before or after it, as -v)."""
    p.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    p.add_argument("--redis-url", default=argparse.SUPPRESS, help=REDIS_HELP)


CONFIG_HELP = "TOML config (default: ops/config.toml), the same for every command; fields in schemas/config.py"
REDIS_HELP = ("redis:// or rediss:// URL (password allowed; never logged). Client commands find Redis from it, else "
              "REDIS_URL or the config's redis.url, else the run file of a running `vbs up`, else 127.0.0.1:6379")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="vbs",
        description="Live VideoBERT tagging: generate the shapes-world corpus, train the video encoder and "
                    "visual words, and evaluate them. Run `vbs COMMAND --help` for each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  vbs corpus make --out data/train --videos 200 --seed 1\n"
               "  vbs train encoder --data data/train --out models/encoder\n"
               "  vbs train vocab --data data/train --encoder models/encoder --out models/vocab\n"
               "  vbs eval encoder --encoder models/encoder --vocab models/vocab --data data/heldout\n"
               "  vbs train demo --out models/demo --preset quick")
    p.add_argument("-v", "--verbose", action="store_true", default=False, help=VERBOSE_HELP)
    p.add_argument("--config", default=None, help=CONFIG_HELP)
    p.add_argument("--redis-url", default=None, help=REDIS_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_SubParser)

    corpus = sub.add_parser("corpus", help="make or inspect a video corpus",
                            description="Generate the shapes-world demo corpus, or read any directory of videos the "
                                        "way the trainers do and report what was found in each file.").add_subparsers(
        dest="what", required=True, metavar="ACTION")
    mk = corpus.add_parser("make", help="generate shapes-world videos (H.264 + embedded subtitles + .srt + ground-truth .json)",
                           description="Generate the shapes world of docs/DEMO_WORLD.md: narrated how-to videos of shapes "
                                       "that grow, shrink, lift, drop, slide, shake, blink and fade. Deterministic per seed.")
    mk.add_argument("--out", required=True, help="output directory (created)")
    mk.add_argument("--videos", type=int, required=True, help="number of videos")
    mk.add_argument("--seed", type=int, default=0, help="corpus seed; video i of seed s is always the same (default 0)")
    mk.add_argument("--workers", type=int, default=_workers_default(), help="parallel processes (default: CPU count, max 4)")
    mk.add_argument("--container", choices=("mp4", "mkv"), default="mp4", help="mp4 (mov_text subtitles) or mkv (SubRip)")
    mk.add_argument("--min-seconds", type=float, default=10.0, help="shortest video (default 10)")
    mk.add_argument("--max-seconds", type=float, default=60.0, help="longest video (default 60)")
    mk.add_argument("--vary", action="store_true",
                    help="draw each video its own way where the spec leaves the picture open (shape proportions, "
                         "tilt, anti-aliasing, colour values, grain, compression): the same videos and narration")
    mk.add_argument("--speech", action="store_true",
                    help="also speak the narration (espeak-ng) into an AAC audio track, each line from its subtitle's "
                         "start over faint background noise; the frames, subtitles and .srt stay the same, and the "
                         ".json says which voice spoke each line when")
    mk.add_argument("--scale", type=float, default=1.0,
                    help="every frame size times this, 0.1 to 1 (default 1: 240p to 480x270; 0.5: 120p to 240x136): "
                         "about that squared cheaper to render and encode, and the same scenes, for models that read "
                         "small clips")
    mk.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    mk.set_defaults(func=cmd_corpus_make)

    rd = corpus.add_parser("read", help="read any directory of videos into clips and print one JSON line per file",
                           description="Read every video under DATA as the trainers do: 1.5 s clips, subtitle text "
                                       "(embedded stream first, else sidecar .srt/.vtt), ground truth from sidecar .json.")
    rd.add_argument("data", help="directory of videos")
    rd.add_argument("--clips", action="store_true", help="also print each clip's time window, text and label")
    rd.add_argument("--limit", type=int, default=None, help="read at most this many files")
    rd.add_argument("--clip-seconds", type=float, default=1.5)
    rd.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    rd.add_argument("--size", type=int, default=64, help="frame size after resizing (default 64)")
    rd.add_argument("--fit", choices=("stretch", "pad"), default="stretch",
                    help="how a non-square frame becomes square: stretch each axis (default) or pad with black")
    rd.add_argument("--strict", action="store_true", help="exit 1 if any file could not be read")
    rd.set_defaults(func=cmd_corpus_read)

    train = sub.add_parser("train", help="train the video encoder, the visual words, or the whole demo model",
                           description="Training, in the order a model is built: the video encoder, then the visual "
                                       "words on its embeddings; `demo` does every step in one command.").add_subparsers(
        dest="what", required=True, metavar="WHAT")
    te = train.add_parser("encoder", help="train the video encoder contrastively (MIL-NCE) against MiniLM subtitle embeddings",
                          description="Train a video encoder on every video under --data whose clips have narration nearby. "
                                      "Writes encoder.json + encoder.safetensors to --out after every epoch.")
    te.add_argument("--data", required=True, help="directory of videos with subtitles or speech (--text-source)")
    te.add_argument("--out", required=True, help="checkpoint directory")
    te.add_argument("--arch", default="conv3d-small", help="registered video encoder (default conv3d-small)")
    te.add_argument("--arch-config", default="{}", metavar="JSON",
                    help="keyword arguments of the architecture, e.g. '{\"fovea_frames\": 4}' (default: its defaults)")
    te.add_argument("--frames", type=int, default=8, help="frames per 1.5 s clip (default 8)")
    te.add_argument("--size", type=int, default=64, help="frame size (default 64; conv3d-fovea wants 128)")
    te.add_argument("--fit", choices=("stretch", "pad"), default="stretch",
                    help="how a non-square frame becomes square: stretch each axis (default), or pad with black so "
                         "that every form keeps its shape at the price of pixels along the long side")
    te.add_argument("--epochs", type=int, default=12)
    te.add_argument("--batch-size", type=int, default=96)
    te.add_argument("--lr", type=float, default=2e-3)
    te.add_argument("--word-weight", type=float, default=1.0,
                    help="weight of predicting the words spoken near each clip, next to MIL-NCE (0: off; default 1)")
    te.add_argument("--temperature", type=float, default=0.07, help="MIL-NCE softmax temperature (default 0.07)")
    te.add_argument("--word-lr-mult", type=float, default=10.0, metavar="K",
                    help="the spoken-word head learns at K times --lr (default 10: its logits start far from sharp)")
    te.add_argument("--nce-weight", type=float, default=1.0,
                    help="weight of the MIL-NCE contrast with whole narration lines (0: off, the word head alone; default 1)")
    te.add_argument("--bag-context", type=float, default=0.5, metavar="SECONDS",
                    help="a clip's candidate narration lines are those within this many seconds of it (default 0.5; "
                         "wider bags catch more offset speech and more of the neighbouring segments' lines)")
    slot_args = te.add_mutually_exclusive_group()
    slot_args.add_argument("--slot", action="append", metavar="NAME=w1,w2",
                           help="a set of words the picture should tell apart, as the tags will (repeatable; default "
                                "verb=<the 8 shapes-world verbs> noun=<the 6 nouns>): each gets a softmax head on the "
                                "encoder's features, taught by which of its words are said near each clip, and the visual "
                                "words are fit on these heads' predictions")
    slot_args.add_argument("--no-slots", action="store_true",
                           help="no slot heads: the visual words are fit on the spoken-word head's predictions")
    te.add_argument("--slot-weight", type=float, default=1.0, help="weight of the slot losses (default 1)")
    te.add_argument("--slot-loss", choices=("mil", "soft"), default="mil",
                    help="how a slot head learns from the words said near a clip: mil (default), one of them is right "
                         "and the picture decides which (a clip's lines often include a neighbouring segment's); soft, "
                         "all of them equally")
    te.add_argument("--slot-q", type=float, default=0.5, metavar="Q",
                    help="--slot-loss mil: how much less clips whose candidate words the picture contradicts count, "
                         "from 0 (-log of the candidates' probability) to 1 (their probability); default 0.5, the "
                         "generalised cross-entropy")
    _text_source_args(te)
    _precision_arg(te)
    te.add_argument("--seed", type=int, default=0)
    _runtime_args(te)
    te.set_defaults(func=cmd_train_encoder)

    tv = train.add_parser("vocab", help="fit the visual words (hierarchical k-means over clip embeddings)",
                          description="Embed every clip under --data with --encoder and fit a k-means tree of "
                                      "--depth levels and --branching children per node (paper: 4 and 12).")
    tv.add_argument("--data", required=True)
    tv.add_argument("--encoder", required=True, help="encoder checkpoint directory")
    tv.add_argument("--out", required=True, help="vocabulary directory")
    tv.add_argument("--depth", type=int, default=4)
    tv.add_argument("--branching", type=int, default=12)
    tv.add_argument("--iters", type=int, default=30, help="Lloyd iterations per node")
    tv.add_argument("--seed", type=int, default=0)
    _runtime_args(tv)
    tv.set_defaults(func=cmd_train_vocab)

    ts = train.add_parser("speech-lm", help="build the speech recogniser's language model and words from narration",
                          description="Read the narration of every video under --data (a sidecar .srt/.vtt, else the "
                                      "embedded text subtitle stream; no frame is decoded) and build an ARPA n-gram "
                                      "language model (absolute discounting) and a pronunciation dictionary for "
                                      "pocketsphinx: the CMU dictionary's, contractions written without their "
                                      "apostrophe (dont, lets) as the dictionary's, other words by espeak-ng's "
                                      "letter-to-sound rules; words with no pronunciation are left out and listed as "
                                      "oov. Writes OUT/speech/lm.arpa, words.dict and speech_lm.json (the summary, "
                                      "also printed). The service's speech stage uses them when its model directory "
                                      "has them, the general US English model otherwise.")
    ts.add_argument("--data", required=True, help="directory of videos with subtitles (embedded, or .srt/.vtt beside)")
    ts.add_argument("--out", required=True, help="model directory (the files go under OUT/speech)")
    ts.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    ts.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ts.set_defaults(func=cmd_train_speech_lm)

    td = train.add_parser("demo", help="build the default model in one command (corpus, encoder, words, VideoBERT)",
                          description="Generate a shapes-world corpus, train the encoder, fit the visual words, pretrain "
                                      "VideoBERT, and evaluate on held-out videos of another seed; writes "
                                      "model_card.json/.md. Reuses finished steps in --out unless --force; refuses an "
                                      "--out that holds another preset or seed. quick: 400 videos, the default model; "
                                      "full: 1,600 videos and longer training, for the best model. What each reaches "
                                      "and how long it takes on which CPU: the README's figures.")
    td.add_argument("--out", required=True, help="model directory (the corpus goes under OUT/data)")
    td.add_argument("--preset", choices=("quick", "full"), default="quick",
                    help="quick (default: the model the main command builds) or full (more videos and steps)")
    td.add_argument("--seed", type=int, default=0,
                    help="corpus seed (default 0); the held-out videos use seed + 1000")
    td.add_argument("--workers", type=int, default=_workers_default())
    td.add_argument("--device", default=None)
    td.add_argument("--force", action="store_true", help="redo every step")
    td.add_argument("--text-source", choices=("subtitles", "speech", "auto"), default="subtitles",
                    help="where the trainers read the narration: subtitles (default), or speech: the corpora get their "
                         "narration spoken (espeak-ng) and the models learn from what the recogniser hears in it")
    td.set_defaults(func=cmd_train_demo)

    tb = train.add_parser("videobert", help="pretrain VideoBERT on narration + visual words (MLM, masked words, alignment)",
                          description="Pretrain the fusion model, BERT initialised from MiniLM over [CLS] text [>] visual "
                                      "words [SEP], with text MLM, masked visual-word prediction and linguistic-visual "
                                      "alignment, plus text-only and video-only sequences. Checkpoints every 250 steps "
                                      "into --out; running the same command again resumes where it stopped.")
    tb.add_argument("--data", required=True, help="directory of videos with subtitles or speech (--text-source)")
    tb.add_argument("--encoder", required=True, help="encoder checkpoint directory")
    tb.add_argument("--vocab", required=True, help="visual-word vocabulary directory")
    tb.add_argument("--out", required=True, help="checkpoint directory (resumed if it holds an unfinished run)")
    tb.add_argument("--steps", type=int, default=1500)
    tb.add_argument("--batch-size", type=int, default=32)
    tb.add_argument("--lr", type=float, default=2e-4)
    tb.add_argument("--objectives", default="text,video,align", help="comma list of text, video, align (ablations)")
    tb.add_argument("--mix", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("CROSS", "TEXT", "VIDEO"),
                    help="share of cross-modal, text-only and video-only sequences (default 0.7 0.1 0.2)")
    tb.add_argument("--no-text-init", action="store_true",
                    help="start visual words at random instead of near the words spoken over them (for ablations)")
    tb.add_argument("--grounding-floor", type=float, default=0.05, metavar="W",
                    help="masking weight of a text token the picture does not explain; grounded tokens weigh this "
                         "plus their grounding (default 0.05; a large value masks every token alike, as plain BERT)")
    _text_source_args(tb)
    _precision_arg(tb)
    tb.add_argument("--seed", type=int, default=0)
    tb.add_argument("--restart", action="store_true", help="ignore an unfinished run in --out and start over")
    _runtime_args(tb)
    tb.set_defaults(func=cmd_train_videobert)

    tg = sub.add_parser("tag", help="zero-shot tags for every 1.5 s clip of a video file or URL (JSON lines)",
                        description="Fill a template's [MASK] slots from each clip's visual word (and the words of "
                                    "the clips before it with --context, as the live graph does). One JSON object per "
                                    "clip: t0, t1, labels {slot: [{label, score}]}, alignment (of the overlapping "
                                    "subtitle with the picture, or null), subtitle.")
    tg.add_argument("source", help="video file path or URL PyAV can open")
    tg.add_argument("--model", default=None, help="model directory with encoder/, vocab/, videobert/ (default: "
                                                  "model_dir of the config, models/demo)")
    tg.add_argument("--template", default=None, help='default "now let me show you how to [MASK] the [MASK]"')
    tg.add_argument("--slot", action="append", metavar="NAME=w1,w2",
                    help="a label set per [MASK], in order (default verb=<8 verbs> noun=<6 nouns>); single-token words")
    tg.add_argument("--context", type=int, default=0,
                    help="earlier clips given with each clip as context, as `context_clips` in the graph (default 0: "
                         "each clip alone)")
    tg.add_argument("--embedding", action="store_true", help="add the fused embedding to each line")
    tg.add_argument("--text-source", choices=("auto", "subtitles", "speech"), default="auto",
                    help="where each clip's text comes from: auto (default: the subtitles, else speech recognised in "
                         "the audio, with the model's speech language model when it has one), subtitles, or speech")
    tg.add_argument("--out", default=None, help="write JSON lines here instead of stdout")
    tg.add_argument("--device", default=None)
    tg.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP + " (its model_dir)")
    tg.set_defaults(func=cmd_tag)

    ft = sub.add_parser("finetune", help="fine-tune a classification head; compare with a fusion model not pretrained",
                        description="Train a linear head on the fused [CLS] representation to classify each ground-truth "
                                    "segment's --task from its visual words, with --budget labelled segments from "
                                    "--data, on the pretrained VideoBERT and on one that was not pretrained; report "
                                    "accuracy and macro-F1 on --eval-data.")
    ft.add_argument("--model", required=True)
    ft.add_argument("--data", required=True, help="labelled training videos (sidecar .json)")
    ft.add_argument("--eval-data", default=None, help="held-out labelled videos (default MODEL/data/heldout)")
    ft.add_argument("--task", choices=("verb", "noun"), default="verb")
    ft.add_argument("--budget", type=int, default=200, help="labelled segments to train on (default 200)")
    ft.add_argument("--epochs", type=int, default=15)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--json", default=None)
    ft.add_argument("--device", default=None)
    ft.add_argument("-q", "--quiet", action="store_true")
    ft.set_defaults(func=cmd_finetune)

    ev = sub.add_parser("eval", help="evaluate models",
                        description="Measure a model on held-out videos that have ground-truth sidecar .json files "
                                    "and print a small table (and JSON with --json).").add_subparsers(
        dest="what", required=True, metavar="WHAT")
    ee = ev.add_parser("encoder", help="text-to-clip retrieval and visual-word purity on held-out videos",
                       description="R@1/R@5 of retrieving the right clip for a narration line among N clips, and the "
                                   "purity of the visual words w.r.t. verb and noun, beside the untrained encoder; and "
                                   "the encoder's own heads read as classifiers of each labelled clip (word_head_verb, "
                                   "word_head_noun; slot_verb, slot_noun).")
    ee.add_argument("--encoder", required=True)
    ee.add_argument("--vocab", default=None, help="vocabulary directory (default: fit depth 2 x 12 on the data)")
    ee.add_argument("--data", required=True, help="held-out videos with ground-truth .json")
    ee.add_argument("--n", type=int, default=100, help="clips to retrieve among (default 100)")
    ee.add_argument("--seed", type=int, default=0)
    ee.add_argument("--json", default=None, help="write the results here")
    ee.add_argument("--no-baseline", action="store_true", help="skip the untrained encoder")
    ee.add_argument("--fit-data", default=None,
                    help="videos to fit the untrained encoder's words on (default: those --vocab was fit on)")
    _runtime_args(ee)
    ee.set_defaults(func=cmd_eval_encoder)

    ew = ev.add_parser("words", help="how much the visual words know: a supervised linear probe on bags of words",
                       description="Train a linear classifier with labels on each --data segment's bag of visual words "
                                   "and score verb and noun accuracy on held-out segments: roughly the ceiling of "
                                   "zero-shot tagging with these words.")
    ew.add_argument("--model", required=True)
    ew.add_argument("--data", required=True, help="labelled training videos")
    ew.add_argument("--heldout", default=None, help="labelled held-out videos (default MODEL/data/heldout)")
    ew.add_argument("--json", default=None)
    ew.add_argument("--device", default=None)
    ew.add_argument("-q", "--quiet", action="store_true")
    ew.set_defaults(func=cmd_eval_words)

    ez = ev.add_parser("zero-shot", help="VideoBERT zero-shot verb/noun accuracy on held-out videos (video only)",
                       description="The docs/DEMO_WORLD.md protocol on any directory of videos with ground-truth .json: "
                                   "each segment's visual words fill \"now let me show you how to [MASK] the [MASK]\", "
                                   "the first slot restricted to the 8 verbs, the second to the 6 nouns; no subtitles.")
    ez.add_argument("--model", required=True)
    ez.add_argument("--data", required=True)
    ez.add_argument("--json", default=None, help="write verb_top1, noun_top1, both_top1, verb_top3, noun_top3, n_segments")
    ez.add_argument("--device", default=None)
    ez.add_argument("-q", "--quiet", action="store_true")
    ez.set_defaults(func=cmd_eval_zero_shot)

    up = sub.add_parser("up", help="run the service: Redis-fed streaming graph of Ray actors (Ctrl-C stops cleanly)",
                        description="Start (or join) Ray and run the streaming graph and the HTTP service (API, live "
                                    "page, /metrics): push stream URLs to the ingest stream or POST /v1/streams and "
                                    "tags appear in Redis and on the page while they play. Redis: --redis-url, else "
                                    "REDIS_URL or the config's redis.url (which must answer), else 127.0.0.1:6379, "
                                    "else a redis-server started for the session. It writes a run file (in "
                                    "VBS_STATE_DIR, else $XDG_STATE_HOME/vbs, else ~/.local/state/vbs) through which "
                                    "push, status, tags and stop in another terminal find it, removed when it stops. "
                                    "Actors log their warnings and errors here; -v: everything.")
    _service_args(up)
    up.add_argument("--model", default=None, help="model directory (default: model_dir of the config, models/demo)")
    up.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto or ray://head:10001) "
                                                     "instead of starting a local Ray")
    up.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of a local Ray (actors ask for fractions)")
    up.add_argument("--port", type=int, default=None, help="HTTP port of the API, live page and /metrics (default 8000)")
    up.add_argument("--demo", action="store_true", help="also start a live demo stream (a held-out video of the model, "
                                                        "looped over UDP by ffmpeg) and push it as stream 'demo'")
    up.add_argument("--demo-port", type=int, default=55600, help="UDP port of the demo stream (default 55600)")
    up.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    pu = sub.add_parser("push", help="queue a stream for tagging (the same job as XADD vbs:ingest)",
                        description="Add a stream job to the ingest stream. Prints the entry and the stream id.")
    pu.add_argument("url", help="file path, http(s) (incl. HLS .m3u8), rtsp, rtmp, udp, rtp or srt URL")
    pu.add_argument("--id", default=None, help="stream id (default: derived from the entry id)")
    pu.add_argument("--subtitles", default=None, help="sidecar .srt/.vtt URL or path")
    pu.add_argument("--options", default=None,
                    help='JSON: {"template": "...", "labels": {"verb": [...]}, "clip_rate": 0.67, "live": true}')
    _service_args(pu)
    pu.set_defaults(func=cmd_push)

    st = sub.add_parser("status", help="status of one stream or the most recent ones (JSON lines)",
                        description="Each stream's state as GET /v1/streams/{id} gives it (typed: numbers, booleans, "
                                    "null), one JSON object a line, newest first. An unknown id exits 2.")
    st.add_argument("id", nargs="?", default=None)
    st.add_argument("--limit", type=int, default=20)
    st.add_argument("--latest", action="store_true", help="include the latest result")
    st.add_argument("--graph", action="store_true",
                    help="the graph instead: each pool's running and target replicas, and where each replica runs "
                         "(node, device, its streams or queue)")
    _service_args(st)
    st.set_defaults(func=cmd_status)

    sp = sub.add_parser("stop", help="stop a stream cleanly")
    sp.add_argument("id")
    _service_args(sp)
    sp.set_defaults(func=cmd_stop)

    ta = sub.add_parser("tags", help="a stream's tags, or follow them live (--follow)",
                        description="Print the tags of stream ID as the graph wrote them (Redis stream vbs:tags:ID): "
                                    "one line per clip with its stream time, the top labels of each slot with their "
                                    "scores and its subtitle; --json: one JSON object per clip, as GET "
                                    "/v1/streams/{id}/tags gives them. --follow keeps printing new tags until the "
                                    "stream ends (or Ctrl-C). An unknown ID exits 2; Redis not answering exits 1.")
    ta.add_argument("id", help="stream id")
    ta.add_argument("--follow", "-f", action="store_true", help="keep printing new tags until the stream ends")
    ta.add_argument("--since", type=_stream_seconds, default=None, metavar="S",
                    help="only clips that start after stream second S")
    ta.add_argument("--json", action="store_true", help="JSON lines instead of lines for people")
    _service_args(ta)
    ta.set_defaults(func=cmd_tags)

    se = sub.add_parser("search", help="find clips of every stream by text (the running service's index)",
                        description="Ask the running service (GET /v1/search) for the clips whose embedding in the "
                                    "encoder's joint space is nearest the text's: one line per hit, best first, with "
                                    "its score, stream, stream time, when it was tagged, its top labels and subtitle; "
                                    "--json: one JSON object per hit, as the API gives them. The service is --api, "
                                    "else the running `vbs up`'s, else the config's api host and port.")
    se.add_argument("text", help="what to look for, in words")
    se.add_argument("--k", type=int, default=10, help="hits wanted (default 10; the service caps it at search.max_k)")
    se.add_argument("--stream", default=None, help="only this stream's clips")
    se.add_argument("--since", type=_unix_time, default=None, metavar="T",
                    help="only clips tagged at or after T: Unix seconds, or -SECONDS before now (-3600: the last hour)")
    se.add_argument("--until", type=_unix_time, default=None, metavar="T", help="only clips tagged at or before T")
    se.add_argument("--json", action="store_true", help="JSON lines instead of lines for people")
    se.add_argument("--api", default=None, metavar="URL", help="the service's base URL, e.g. http://127.0.0.1:8000")
    se.add_argument("--api-key", default=None, help="a bearer key of the service (default: the config's first)")
    _service_args(se)
    se.set_defaults(func=cmd_search)

    su = sub.add_parser("summary", help="a stream's summary: its tags merged into segments, told as sentences",
                        description="Consecutive clips of stream ID with the same top labels merge into segments; one "
                                    "line each: stream time, mean score, the template filled with its labels, and "
                                    "the subtitle lines it overlaps. --json: one JSON object per segment, as GET "
                                    "/v1/streams/{id}/summary gives them. An unknown ID exits 2.")
    su.add_argument("id", help="stream id")
    su.add_argument("--min-clips", type=int, default=1, metavar="N",
                    help="a run of fewer than N clips with other tags is a flicker and joins the segment before "
                         "(default 1: every change of tags starts a segment; 2 or more for noisy tags)")
    su.add_argument("--since", type=_stream_seconds, default=None, metavar="S",
                    help="only clips that start after stream second S")
    su.add_argument("--json", action="store_true", help="JSON lines instead of lines for people")
    _service_args(su)
    su.set_defaults(func=cmd_summary)
    return p


MODEL_COMMANDS = {cmd_train_encoder, cmd_eval_encoder, cmd_train_videobert, cmd_tag, cmd_eval_zero_shot, cmd_finetune,
                  cmd_train_demo}


def _restart_with_tuned_malloc() -> None:
    """Start this `vbs` again, the same process (exec), with glibc's malloc set to keep large blocks
    (schemas.config.MALLOC_TUNABLES), before anything is allocated: glibc reads its tunables only at start. The
    processes it starts (corpus workers, Ray) inherit them. VBS_MALLOC=system leaves malloc as it is."""
    import platform

    from schemas.config import tuned_malloc_env

    try:
        env = tuned_malloc_env(libc=platform.libc_ver()[0])
    except ValueError as e:
        print(f"vbs: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 the service cannot be reached (Redis refused, timed out, failed) or an unexpected
    error; 2 bad input (arguments, files, config, an unknown stream); 130 Ctrl-C. Errors are one line on stderr;
    -v adds the traceback of an unexpected one."""
    if argv is None:  # the console script itself, not a caller in this process
        _restart_with_tuned_malloc()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.func in MODEL_COMMANDS:  # they load the MiniLM: from VBS_MINILM_DIR when the settings say so
            from schemas.config import minilm_dir_from
            from videobert.text import use_minilm

            use_minilm(minilm_dir_from())
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"vbs: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vbs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vbs tags ID | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - the command line ends in one line, never a traceback
        from ops.up import Unreachable

        redis_error = type(e).__module__.startswith("redis")
        if isinstance(e, Unreachable) or redis_error:
            print(f"vbs: error: {'Redis: ' if redis_error else ''}{_one_line(e)}", file=sys.stderr)
            return 1
        log.debug("unexpected error", exc_info=True)
        print(f"vbs: error: {type(e).__name__}: {_one_line(e)}" + ("" if args.verbose else " (vbs -v shows where)"),
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

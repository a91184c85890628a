import pytest

from videobert.subtitles import Cue, SubtitleError, format_srt, format_vtt, parse, read_sidecar, text_in_window

SRT = "\ufeff1\r\n00:00:01,500 --> 00:00:03,250\r\n<i>now let me show you</i>\r\nhow to grow the circle\r\n\r\n2\r\n00:00:04,000 --> 00:00:05,000\r\nokay\r\n"
VTT = "WEBVTT\n\nNOTE a comment\n\nSTYLE\n::cue { color: red }\n\n00:01.000 --> 00:02.500 align:start\nwatch me {\\b1}shake{\\b0} this star\n\nintro\n01:00:00.000 --> 01:00:01.000\nlate line\n"


def test_parse_srt_with_bom_crlf_and_tags():
    cues = parse(SRT)
    assert cues == [Cue(1.5, 3.25, "now let me show you how to grow the circle"), Cue(4.0, 5.0, "okay")]


def test_parse_vtt_headers_notes_settings_and_hours():
    cues = parse(VTT)
    assert cues == [Cue(1.0, 2.5, "watch me shake this star"), Cue(3600.0, 3601.0, "late line")]


def test_malformed_cues_are_skipped_not_fatal():
    text = "1\n00:00:01,000 --> 00:00:00,500\nends before it starts\n\n2\n00:00:02,000 --> 00:00:03,000\ngood\n"
    assert parse(text) == [Cue(2.0, 3.0, "good")]


def test_only_garbage_timings_raise_a_clear_error():
    with pytest.raises(SubtitleError, match="no readable cue"):
        parse("1\nxx:yy --> zz\nhello\n")


def test_binary_sidecar_is_rejected(tmp_path):
    p = tmp_path / "v.srt"
    p.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(SubtitleError, match="not a text file"):
        read_sidecar(p)


def test_empty_text_has_no_cues():
    assert parse("") == []


@pytest.mark.parametrize("fmt", [format_srt, format_vtt])
def test_format_round_trip(fmt):
    cues = [Cue(0.0, 1.234, "first line"), Cue(61.5, 3723.007, "second line")]
    assert parse(fmt(cues)) == cues


def test_text_in_window_joins_overlapping_cues_only():
    cues = [Cue(0.0, 1.0, "a"), Cue(1.0, 2.0, "b"), Cue(2.5, 3.0, "c")]
    assert text_in_window(cues, 0.5, 2.0) == "a b"
    assert text_in_window(cues, 2.0, 2.5) == ""


def _runs_within(code: str, seconds: float) -> bool:
    """Whether `code` finishes within `seconds` in a fresh interpreter (a hang or a quadratic blow-up does not)."""
    import subprocess
    import sys

    try:
        subprocess.run([sys.executable, "-c", code], check=True, timeout=seconds, capture_output=True)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_markup_is_stripped_in_linear_time():
    """A run of "<" held the GIL for seconds (60,000: 3.2 s; the regex was quadratic); now it is nothing."""
    from videobert.subtitles import clean_text

    assert clean_text("<i>now</i> {\\b1}grow{\\b0} the <font color=red>circle</font>") == "now grow the circle"
    assert _runs_within("from videobert.subtitles import clean_text; clean_text('<' * 400_000); "
                        "clean_text('{\\\\' * 400_000)", 30)


def test_a_megabyte_cue_is_skipped_without_parsing_its_markup():
    body = "<" * 2_000_000
    assert _runs_within(f"from videobert.subtitles import parse; parse('1\\n00:00:01,000 --> 00:00:02,000\\n' "
                        f"+ {body[:1]!r} * {len(body)} + '\\n\\n2\\n00:00:03,000 --> 00:00:04,000\\nok\\n')", 30)
    assert parse("1\n00:00:01,000 --> 00:00:02,000\n" + "x" * 9000 + "\n\n2\n00:00:03,000 --> 00:00:04,000\nok\n") \
        == [Cue(3.0, 4.0, "ok")]


def test_a_sidecar_over_the_size_limit_is_refused(tmp_path):
    p = tmp_path / "v.srt"
    p.write_text("1\n00:00:01,000 --> 00:00:02,000\nhello\n\n" * 100)
    assert read_sidecar(p, max_bytes=10_000)[0].text == "hello"
    with pytest.raises(SubtitleError, match="larger than 1024 bytes"):
        read_sidecar(p, max_bytes=1024)

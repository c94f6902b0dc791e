"""ffmpeg's own input dump (``-loglevel level+info``) -> the ffprobe JSON fields :func:`probe` reads.

Why: ``analyze_file`` decodes every source once; probing it first with a separate ffprobe process
costs a process start per file (mostly loading ffmpeg's shared libraries), a visible share of the
decode of a short clip. The decoding ffmpeg prints the same facts (format, duration, streams,
codecs, sizes, frame rates, channel layouts, spherical / stereo-3D side data, stream tags) before
it decodes anything, so the build reads them there.

The dump is text meant for people, so this parser is deliberately strict: anything it does not
recognise for certain (an unknown channel layout, a frame rate printed with lost precision, a
colour description split over lines, a projection other than equirectangular, a second input)
makes it return ``None`` and the caller runs ffprobe instead. What it returns is checked field by
field against ffprobe in ``tests/biaudio/media/test_header.py``. Known, documented differences: the format
duration is printed to 10 ms (ffprobe: 1 µs), and ``nb_frames`` is never printed (the frame count
is then estimated from duration x fps, as ffprobe does for Matroska).
"""

from __future__ import annotations

import re
from fractions import Fraction

# ffmpeg 5.x/6.x standard layout names -> channel count (libavutil/channel_layout.c)
_LAYOUT_CHANNELS = {
    "mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "4.0": 4, "quad": 4, "quad(side)": 4,
    "3.1": 4, "5.0": 5, "5.0(side)": 5, "4.1": 5, "5.1": 6, "5.1(side)": 6, "6.0": 6, "6.0(front)": 6,
    "hexagonal": 6, "6.1": 7, "6.1(back)": 7, "6.1(front)": 7, "7.0": 7, "7.0(front)": 7, "7.1": 8,
    "7.1(wide)": 8, "7.1(wide-side)": 8, "octagonal": 8, "downmix": 2, "2 channels": 2,
    "ambisonic 1": 4, "ambisonic 2": 9, "ambisonic 3": 16,
}
_STREAM = re.compile(r"^  Stream #0:(\d+)(?:\[0x[0-9a-fA-F]+\])?(?:\((\w+)\))?: (\w+): (.*)$")
_DURATION = re.compile(r"^  Duration: (?:(\d+):(\d\d):(\d\d\.\d+)|N/A)")
_INPUT = re.compile(r"^Input #(\d+), (.+), from '.*':$")
_SPHERICAL = re.compile(r"^equirectangular \((-?[\d.]+)/(-?[\d.]+)/(-?[\d.]+)\)\s*$")
_PIX = re.compile(r"^([a-z0-9_]+)(?:\((.*)\))?$")


def _split_top(s: str) -> list[str]:
    """Split on ", " outside parentheses / brackets."""
    out, depth, cur = [], 0, []
    i = 0
    while i < len(s):
        c = s[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        if depth == 0 and s.startswith(", ", i):
            out.append("".join(cur))
            cur = []
            i += 2
            continue
        cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def exact_rate(text: str) -> str | None:
    """A frame rate as ffmpeg prints it (``30``, ``29.97``, ``23.98``, ``59.94``) -> the exact
    fraction string ffprobe reports, or None when the printed value may have lost precision.

    ffmpeg prints integers exactly and everything else to 2 decimals; the NTSC family
    N*1000/1001 is recognised (those are the only non-integer rates cameras and YouTube use)."""
    try:
        v = float(text)
    except ValueError:
        return None
    if v <= 0:
        return None
    if re.fullmatch(r"\d+", text):
        return f"{int(text)}/1"
    n = round(v * 1.001)
    if n > 0 and f"{n * 1000 / 1001:.2f}" == f"{v:.2f}" and re.fullmatch(r"\d+\.\d\d?", text):
        return str(Fraction(n * 1000, 1001))
    return None


def _video(desc: str, st: dict) -> bool:
    parts = _split_top(desc)
    st["codec_name"] = parts[0].split(" ")[0]
    if len(parts) < 3:
        return False
    m = _PIX.match(parts[1].strip())
    if not m or not re.search(r"\d+x\d+", parts[2]):
        return False
    st["pix_fmt"] = m.group(1)
    if m.group(2):
        for tok in (t.strip() for t in m.group(2).split(",")):
            if tok in ("tv", "pc"):
                st["color_range"] = tok
            elif tok in ("progressive", "top first", "bottom first", "top coded first (swapped)",
                         "bottom coded first (swapped)"):
                st["field_order"] = {"top first": "tt", "bottom first": "bb"}.get(tok, tok)
            elif "/" in tok:
                col, pri, trc = tok.split("/")
                st.update({k: v for k, v in (("color_space", col), ("color_primaries", pri),
                                             ("color_transfer", trc)) if v != "unknown"})
            elif re.fullmatch(r"[a-z0-9_-]+", tok):
                st.update(color_space=tok, color_primaries=tok, color_transfer=tok)
            else:
                return False
    wh = re.search(r"(\d+)x(\d+)", parts[2])
    st["width"], st["height"] = int(wh.group(1)), int(wh.group(2))
    for p in parts[3:]:
        p = p.split(" (")[0].strip()
        if p.endswith(" fps"):
            r = exact_rate(p[:-4])
            if r is None:
                return False
            st["avg_frame_rate"] = r
        elif p.endswith(" tbr"):
            r = exact_rate(p[:-4])
            if r is None:
                return False
            st["r_frame_rate"] = r
    return "avg_frame_rate" in st or "r_frame_rate" in st


def _audio(desc: str, st: dict) -> bool:
    parts = _split_top(desc)
    st["codec_name"] = parts[0].split(" ")[0]
    if len(parts) < 3 or not parts[1].endswith(" Hz"):
        return False
    st["sample_rate"] = parts[1][:-3].strip()
    layout = parts[2].strip()
    m = re.fullmatch(r"(\d+) channels(?: \(.*\))?", layout)
    if m:
        st["channels"] = int(m.group(1))
    elif layout in _LAYOUT_CHANNELS:
        st["channels"] = _LAYOUT_CHANNELS[layout]
        st["channel_layout"] = layout
    else:
        return False
    return True


def parse_input_dump(lines: list[str]) -> dict | None:
    """The ``[info]`` lines of ffmpeg's dump of input #0 (prefix already removed) -> a dict shaped
    like ffprobe's ``-show_streams -show_format`` JSON, or None when unsure (see module doc)."""
    fmt: dict = {}
    streams: list[dict] = []
    section: str | None = None  # "fmeta" | "meta" | "side"
    cur: dict | None = None
    seen_input = False
    for raw in lines:
        line = raw.rstrip("\n").rstrip()
        if not line:
            continue
        m = _INPUT.match(line)
        if m:
            if seen_input or m.group(1) != "0":
                return None
            seen_input = True
            fmt["format_name"] = m.group(2)
            continue
        if not seen_input:
            continue
        if not line.startswith("  "):
            break  # the dump of input #0 is over
        m = _STREAM.match(line)
        if m:
            cur = _stream_entry(m)
            if cur is None:
                return None
            streams.append(cur)
            section = None
            continue
        m = _DURATION.match(line)
        if m:
            if m.group(1) is not None:
                fmt["duration"] = f"{int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)):.6f}"
            section = None
            continue
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if stripped == "Metadata:":
            section = "fmeta" if indent == 2 else "meta"
            continue
        if stripped == "Side data:" and cur is not None and indent == 4:
            section = "side"
            continue
        if section == "fmeta" and indent >= 4:
            continue
        if section == "meta" and indent >= 6 and cur is not None:
            k, sep, v = stripped.partition(":")
            if sep:
                cur["tags"][k.strip()] = v.strip()
            continue
        if section == "side" and indent >= 6 and cur is not None:
            if not _side_data(cur, stripped):
                return None
            continue
        if section is None and indent == 2 and stripped.startswith(("Chapter", "Program")):
            section = "fmeta"
            continue
        return None  # a line this parser does not know: do not guess
    if not seen_input:
        return None
    _exact_duration(fmt, streams)
    return {"format": fmt, "streams": streams}


def _stream_entry(m: re.Match) -> dict | None:
    """The ffprobe-shaped entry of one ``Stream #0:N...`` line, None when its description is not
    understood."""
    kind = m.group(3).lower()
    desc = m.group(4)
    cur = {"index": int(m.group(1)), "codec_type": kind, "tags": {}, "side_data_list": [],
           "disposition": {"attached_pic": int("(attached pic)" in desc)}}
    if m.group(2):
        cur["tags"]["language"] = m.group(2)
    desc = re.sub(r"( \((default|forced|attached pic|dub|original|comment|lyrics|karaoke|"
                  r"hearing impaired|visual impaired|clean effects|captions|descriptions|"
                  r"metadata|dependent|still image|non-diegetic)\))+$", "", desc)
    if kind == "video" and not _video(desc, cur):
        return None
    if kind == "audio" and not _audio(desc, cur):
        return None
    return cur


def _side_data(cur: dict, stripped: str) -> bool:
    """Add one ``Side data:`` line to the stream ``cur``; False when it is spherical/stereo data in
    a form not verified here (ffprobe must say it)."""
    k, _, v = stripped.partition(":")
    v = v.strip()
    if k == "spherical":
        sm = _SPHERICAL.match(v)
        if not sm:
            return False  # tiled / cubemap / a newer print format: let ffprobe say it
        y, p, r = (float(x) for x in sm.groups())
        cur["side_data_list"].append({"side_data_type": "Spherical Mapping", "projection": "equirectangular",
                                      "yaw": y, "pitch": p, "roll": r})
    elif k == "stereo3d" and re.fullmatch(r"[\w ]+( \(inverted\))?", v):
        typ = v.replace(" (inverted)", "")
        cur["side_data_list"].append({"side_data_type": "Stereo 3D", "type": typ,
                                      "inverted": int("(inverted)" in v)})
    elif any(w in stripped.lower() for w in ("spher", "stereo", "3d", "projection")):
        return False  # spherical / stereo side data printed in a form not verified here
    return True


def _exact_duration(fmt: dict, streams: list[dict]) -> None:
    """Matroska prints per-stream DURATION tags to the ns; the longest is what ffprobe reports as the
    format duration whenever it agrees with the 10-ms header value, so take the exact one."""
    if "duration" in fmt:
        tags = [_hms(s["tags"].get("DURATION", "")) for s in streams]
        tags = [t for t in tags if t is not None]
        if tags and abs(max(tags) - float(fmt["duration"])) <= 0.005 + 1e-9:
            fmt["duration"] = f"{max(tags):.6f}"


def _hms(v: str) -> float | None:
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", v.strip())
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None


__all__ = ["exact_rate", "parse_input_dump"]

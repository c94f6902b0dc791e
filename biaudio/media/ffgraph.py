"""Every ffmpeg command line of the project is compiled here, from an ``ffmpeg-python`` graph, and
every ffmpeg/ffprobe process is started from ``biaudio.media``.

Why ffmpeg-python: filter graphs with several outputs (the build's single decode splits one video
into a proxy, gray frames and one branch per clip) are easy to get wrong as hand-made strings
(pad labels, ``,`` vs ``;``, escaping ``eq(n\\,k)``). As nodes, a stream is either used once or
split explicitly, labels are unique by construction, and filter arguments are escaped for us.

Why not its ``run``/``compile``/``global_args``: ffmpeg-python 0.2.0 writes global options (and
``-y``) *after* the outputs, where recent ffmpeg warns "Trailing option(s) found" and may ignore
them. :func:`command` compiles the graph with :func:`ffmpeg.get_args` and puts the global options
in front itself, so every site starts ffmpeg the same way. Labels are ffmpeg-python's own
(``[s0]``...); they name pads only and never change the output bytes.

Sources go through :func:`source` so that a path is always a ``file:`` URL with the protocol
whitelist of :mod:`biaudio.media.ffpath`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

import ffmpeg

from biaudio.media.ffpath import PROTOCOLS, local

#: options ffmpeg reads as global wherever they stand; :func:`command` puts them first, and a
#: compiled graph must never contain one (checked there)
GLOBAL_OPTIONS = frozenset({"-nostdin", "-hide_banner", "-nostats", "-v", "-loglevel", "-y", "-n",
                            "-filter_threads", "-filter_complex_threads"})


#: stands for a file name that is not valid UTF-8 inside a graph (see :func:`url`)
_FSNAME = "biaudio-fsname:"


def url(path: str | os.PathLike) -> str:
    """The ``file:`` URL of ``path`` for an ffmpeg-python input or output node.

    ffmpeg-python hashes its nodes through UTF-8, which fails on a non-UTF-8 file name (the
    surrogate escapes of :func:`os.fsdecode`); such a name travels through the graph as a hex
    token, and :func:`command` puts the real name back."""
    u = local(path)
    try:
        u.encode("utf-8")
        return u
    except UnicodeEncodeError:
        return _FSNAME + os.fsencode(u).hex()


def _unwrap(arg: str) -> str:
    return os.fsdecode(bytes.fromhex(arg[len(_FSNAME):])) if arg.startswith(_FSNAME) else arg


def source(path: str | os.PathLike, **opts):
    """An input node for a local file: ``-protocol_whitelist file,pipe [opts] -i file:/abs/path``.
    ``opts`` are input options (``ss``, ``threads``, ``guess_layout_max``...)."""
    return ffmpeg.input(url(path), protocol_whitelist=PROTOCOLS, **opts)


def stdin_source(**opts):
    """An input node reading raw data from stdin (``-protocol_whitelist pipe -i pipe:0``); ``opts``
    describe the raw stream (``f``, ``pix_fmt``, ``s``, ``r``, ``ar``, ``ac``)."""
    return ffmpeg.input("pipe:0", protocol_whitelist="pipe", **opts)


def chain(stream, filters: Sequence[tuple]):
    """Apply ``filters``, each ``(name, *args)`` or ``(name, *args, {kwargs})``, one after the other."""
    for f in filters:
        name, *args = f
        kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
        stream = stream.filter(name, *args, **kwargs)
    return stream


def command(outputs, *, loglevel: str = "error", overwrite: bool = False, filter_threads: int | None = None,
            stats: bool = True) -> list[str]:
    """The full ffmpeg command line for one output node or a list of them: the global options first
    (``-nostdin -hide_banner [-nostats] -v <loglevel> [-y] [-filter_threads n -filter_complex_threads n]``),
    then the inputs, ``-filter_complex`` and the outputs exactly as ffmpeg-python compiles them."""
    outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    spec = outs[0] if len(outs) == 1 else ffmpeg.merge_outputs(*outs)
    body = [_unwrap(a) for a in ffmpeg.get_args(spec)]
    bad = [a for a in body if a in GLOBAL_OPTIONS]
    if bad:
        raise ValueError(f"global option(s) {bad} inside an ffmpeg-python graph: pass them to command()")
    head = ["ffmpeg", "-nostdin", "-hide_banner"]
    if not stats:
        head.append("-nostats")
    head += ["-v", loglevel]
    if overwrite:
        head.append("-y")
    if filter_threads:
        head += ["-filter_threads", str(int(filter_threads)), "-filter_complex_threads", str(int(filter_threads))]
    return head + body


def run(cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` for an ffmpeg/ffprobe command that runs to its end (this and :func:`popen`
    are where such processes start)."""
    _check_tool(cmd)
    return subprocess.run(list(cmd), **kwargs)


def popen(cmd: Sequence[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` for an ffmpeg command whose pipes the caller reads while it runs."""
    _check_tool(cmd)
    return subprocess.Popen(list(cmd), **kwargs)


def run_ffmpeg(args: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``ffmpeg <args>`` as given, for reference timings (benchmarks) and test fixtures that need a
    literal command line; the project's own stages build theirs with :func:`command`."""
    return run(["ffmpeg", *args], **kwargs)


def _check_tool(cmd: Sequence[str]) -> None:
    if not cmd or os.path.basename(str(cmd[0])) not in ("ffmpeg", "ffprobe"):
        raise ValueError(f"not an ffmpeg/ffprobe command: {list(cmd)[:2]}")

"""Decoding raw MicroLens videos (H.265 / H.264 mp4) into uint8 RGB frames with PyAV.

Three steps, each usable alone: ``probe`` reads the stream metadata; ``sample_timestamps`` places
the frames to take on the presentation timeline; ``decode_frames`` seeks to each timestamp and
returns ``uint8 [F, S, S, 3]`` frames, resized on the short side then center-cropped.

Frame selection rule (the one the tests re-implement with a full sequential decode): for a
timestamp ``t`` in seconds, the frame taken is the first frame in presentation order whose time
``pts * time_base`` is ``>= t``. When ``t`` lies after the last frame's start but inside the
stream's duration, no frame starts at or after it and the last frame (the one on screen at ``t``)
is taken. Timestamps outside ``[start_time, start_time + duration]`` are errors.

Decoding never walks the whole video: each timestamp is reached by a keyframe seek followed by
decoding forward; a timestamp less than ``max_forward_s`` ahead of the last decoded frame is
reached by decoding forward without a seek, and that threshold grows when a seek turns out to
land before the last decoded frame. MicroLens videos have long GOPs (250 frames, 4-8 s; some
videos are a single GOP), so a seek decodes on average half a GOP.

Every failure (missing, zero-length, unreadable file, no video stream, a frame that will not
decode) raises ``VideoDecodeError`` naming the file and the reason.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Iterator, Literal, Sequence

import av
import numpy as np

from mvrec_dist.data.fs import is_local, open_input_file

__all__ = ["VideoDecodeError", "VideoInfo", "VideoReader", "probe", "sample_timestamps", "decode_frames",
           "resize_center_crop"]

# swscale's bilinear filter widens with the downscale factor, so it antialiases like PIL's bilinear.
_INTERPOLATION = "BILINEAR"


class VideoDecodeError(RuntimeError):
    """A video could not be probed or decoded.

    Args:
        source: The file name (or URI) of the video.
        reason: What went wrong, in words.
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of a video's first video stream.

    Attributes:
        source: File name (or URI) the info was read from.
        duration: Stream duration in seconds.
        fps: Average frame rate (frames per second).
        frames: Frame count from the container header (``round(duration * fps)`` when absent).
        codec: Decoder name (``hevc``, ``h264``...).
        width: Coded frame width in pixels.
        height: Coded frame height in pixels.
        start_time: Presentation time of the stream start, seconds (usually 0).
    """

    source: str
    duration: float
    fps: float
    frames: int
    codec: str
    width: int
    height: int
    start_time: float

    @property
    def end_time(self) -> float:
        """Presentation time at which the stream ends, seconds."""
        return self.start_time + self.duration


def sample_timestamps(info: VideoInfo, frames: int = 5, mode: Literal["uniform", "clips"] = "uniform",
                      clips: int = 4, frames_per_clip: int = 2) -> list[float]:
    """Place the frames to decode on the presentation timeline.

    ``uniform``: the centres of ``frames`` equal segments of the duration. ``clips``: ``clips``
    clips centred on the centres of equal segments, each ``frames_per_clip`` consecutive frames
    (``clips=1, frames_per_clip=5`` is the MicroLens paper's sampling: 5 consecutive frames around
    the middle). Clip timestamps sit half a frame period before the frame they aim at, so that
    timestamp rounding in the container (e.g. 29.97 fps on a 1/15360 time base) cannot shift the
    pick by one frame.

    Args:
        info: The video's metadata (``probe``).
        frames: Frames in ``uniform`` mode (ignored in ``clips`` mode).
        mode: ``'uniform'`` or ``'clips'``.
        clips: Clips in ``clips`` mode.
        frames_per_clip: Consecutive frames per clip in ``clips`` mode.

    Returns:
        Timestamps in seconds, non-decreasing: ``frames`` of them, or ``clips * frames_per_clip``.

    Raises:
        ValueError: on a non-positive count or an unknown mode.
        VideoDecodeError: when ``info`` has no positive duration or frame rate.
    """
    if info.duration <= 0 or info.fps <= 0:
        raise VideoDecodeError(info.source, f"cannot sample frames: duration {info.duration} s, fps {info.fps}")
    if mode == "uniform":
        if frames < 1:
            raise ValueError(f"sample_timestamps: frames must be >= 1, got {frames}")
        return [info.start_time + (i + 0.5) * info.duration / frames for i in range(frames)]
    if mode == "clips":
        if clips < 1 or frames_per_clip < 1:
            raise ValueError(f"sample_timestamps: clips and frames_per_clip must be >= 1, got {clips}, {frames_per_clip}")
        last_first = max(0, info.frames - frames_per_clip)  # first frame index of a clip ending on the last frame
        out = []
        for c in range(clips):
            centre = (c + 0.5) * info.duration / clips * info.fps  # in frames from the start
            first = min(max(0, math.floor(centre - frames_per_clip / 2 + 0.5)), last_first)
            # A clip longer than the video runs past its end: clamped, those repeat the last frame.
            out.extend(min(info.end_time, info.start_time + max(0.0, (first + j - 0.5) / info.fps))
                       for j in range(frames_per_clip))
        return out
    raise ValueError(f"sample_timestamps: mode must be 'uniform' or 'clips', got {mode!r}")


def resize_center_crop(frame: av.VideoFrame, size: int) -> np.ndarray:
    """Convert a decoded frame to RGB, resize its short side to ``size``, center-crop ``size x size``.

    Args:
        frame: A decoded video frame (any pixel format).
        size: S, the output side.

    Returns:
        ``uint8 [S, S, 3]`` RGB.
    """
    w, h = frame.width, frame.height
    if w >= h:
        nh, nw = size, max(size, round(w * size / h))
    else:
        nw, nh = size, max(size, round(h * size / w))
    rgb = frame.reformat(width=nw, height=nh, format="rgb24", interpolation=_INTERPOLATION).to_ndarray()  # nh,nw,3
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])  # S,S,3


class VideoReader:
    """One open video: metadata plus seek-and-decode of frames at given timestamps.

    Args:
        source: Local path, URI (any filesystem ``mvrec_dist.data.fs`` resolves), or an open binary
            file object with ``read``/``seek`` (e.g. from ``fs.open_input_file``).
        name: Name used in errors; defaults to the path, or the file object's ``path``/``name``.
        max_forward_s: A timestamp at most this far ahead of the last decoded frame is reached by
            decoding forward instead of seeking. Grows when a seek lands on a keyframe that was
            already decoded past (a GOP longer than the gap), so long-GOP videos are not re-decoded.
        threads: Decoder threads (1 suits one Ray task per core).

    Attributes:
        info: The ``VideoInfo`` of the first video stream.
        decoded_frames: Frames decoded so far (for tests and progress metrics).
        seeks: Seeks done so far.

    Raises:
        VideoDecodeError: when the file is missing, empty, unreadable or holds no video stream.
    """

    def __init__(self, source: str | IO[bytes], *, name: str | None = None, max_forward_s: float = 1.0,
                 threads: int = 1) -> None:
        self.name = name or _source_name(source)
        self.max_forward_s = max_forward_s
        self.decoded_frames = 0
        self.seeks = 0
        self._owned: IO[bytes] | None = None
        self._container = None
        try:
            fileobj = self._open(source)
            self._container = av.open(fileobj, mode="r")
        except VideoDecodeError:
            self.close()
            raise
        except (av.error.FFmpegError, OSError, ValueError) as e:
            self.close()
            raise VideoDecodeError(self.name, f"unreadable: {type(e).__name__}: {e}") from e
        try:
            if not self._container.streams.video:
                raise VideoDecodeError(self.name, "no video stream in the container")
            self._stream = self._container.streams.video[0]
            self._stream.codec_context.thread_count = threads
            self.info = self._read_info()
        except VideoDecodeError:
            self.close()
            raise
        self._frames: Iterator[av.VideoFrame] | None = None
        self._pending: av.VideoFrame | None = None  # decoded by a seek's check, not yet consumed
        self._last: av.VideoFrame | None = None  # the latest frame taken from the decoder
        self._answered: float | None = None  # the timestamp `_last` was returned for, if any

    # ---------------------------------------------------------------- opening
    def _open(self, source: str | IO[bytes]):
        if not isinstance(source, str):
            pos = source.seek(0, os.SEEK_END)
            source.seek(0)
            if pos == 0:
                raise VideoDecodeError(self.name, "empty file (0 bytes)")
            return source
        try:
            if is_local(source):
                path = source[len("file://"):] if source.startswith("file://") else source
                if os.path.isdir(path):
                    raise VideoDecodeError(self.name, "is a directory, not a video file")
                if os.path.getsize(path) == 0:
                    raise VideoDecodeError(self.name, "empty file (0 bytes)")
                self._owned = open(path, "rb")
            else:
                self._owned = open_input_file(source)
                if self._owned.size() == 0:
                    raise VideoDecodeError(self.name, "empty file (0 bytes)")
        except FileNotFoundError as e:
            raise VideoDecodeError(self.name, "file not found") from e
        return self._owned

    def _read_info(self) -> VideoInfo:
        s = self._stream
        rate = s.average_rate or s.guessed_rate
        if not rate:
            raise VideoDecodeError(self.name, "unknown frame rate")
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / av.time_base
        else:
            raise VideoDecodeError(self.name, "unknown duration")
        if duration <= 0:
            raise VideoDecodeError(self.name, f"zero-length video (duration {duration} s)")
        start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        frames = int(s.frames) or round(duration * float(rate))
        if frames <= 0:
            raise VideoDecodeError(self.name, "the video stream holds no frames")
        return VideoInfo(source=self.name, duration=duration, fps=float(rate), frames=frames,
                         codec=s.codec_context.name, width=s.codec_context.width,
                         height=s.codec_context.height, start_time=start)

    # ---------------------------------------------------------------- decoding
    def frames_at(self, timestamps: Sequence[float], size: int) -> np.ndarray:
        """Decode the frame at each timestamp (the selection rule is in the module docstring).

        Args:
            timestamps: Seconds on the presentation timeline, any order, repeats allowed.
            size: S, the output side (short side resized to S, then center crop).

        Returns:
            ``uint8 [F, S, S, 3]`` RGB frames, in the order of ``timestamps``.

        Raises:
            VideoDecodeError: on a timestamp outside the video or a decoding failure.
        """
        if size < 1:
            raise ValueError(f"{self.name}: size must be >= 1, got {size}")
        if len(timestamps) == 0:
            raise ValueError(f"{self.name}: no timestamps to decode")
        info = self.info
        for t in timestamps:
            if not (math.isfinite(t) and info.start_time <= t <= info.end_time):
                raise VideoDecodeError(self.name, f"timestamp {t} s is outside the video "
                                                  f"[{info.start_time}, {info.end_time}] s")
        out = np.empty((len(timestamps), size, size, 3), dtype=np.uint8)
        for i in sorted(range(len(timestamps)), key=lambda j: timestamps[j]):
            out[i] = resize_center_crop(self._frame_at(float(timestamps[i])), size)
        return out

    def _frame_at(self, t: float) -> av.VideoFrame:
        last, answered = self._last, self._answered
        # `last` answered an earlier timestamp <= t, so every frame before it starts before t.
        if last is not None and answered is not None and answered <= t <= last.time:
            return last
        if last is None or answered is None or t < answered or t - last.time > self.max_forward_s:
            self._seek(t)
            landed = self._pending
            if last is not None and landed is not None and t > last.time and landed.time <= last.time:
                # The seek went back to a keyframe already decoded past, so GOPs span at least
                # t - landed; a seek then costs about half a GOP, so decode forward over gaps
                # up to that long from now on.
                self.max_forward_s = max(self.max_forward_s, (t - landed.time) / 2)
        while (frame := self._next_frame()) is not None:
            self._last = frame
            if frame.time >= t:
                self._answered = t
                return frame
        if self._last is None:
            raise VideoDecodeError(self.name, f"no frame decodes at or before {t} s")
        self._answered = t
        return self._last  # t is after the last frame's start: that frame is on screen at t

    def _seek(self, t: float) -> None:
        """Keyframe seek such that the first frame decoded next starts at or before ``t``."""
        tb, start = self._stream.time_base, self.info.start_time
        target, step = t, 1.0
        while True:
            self.seeks += 1
            try:
                self._container.seek(max(0, math.floor(Fraction(target) / tb)), stream=self._stream,
                                     backward=True, any_frame=False)
            except av.error.FFmpegError as e:
                raise VideoDecodeError(self.name, f"seek to {target} s failed: {e}") from e
            self._frames, self._pending, self._last, self._answered = (
                self._container.decode(self._stream), None, None, None)
            first = self._next_frame()
            # The mp4 index is searched by decode time: with B-frames the keyframe found can start after t.
            if (first is not None and first.time <= t) or target <= start:
                self._pending = first
                return
            target, step = max(start, t - step), step * 2

    def _next_frame(self) -> av.VideoFrame | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._frames is None:
            return None
        try:
            frame = next(self._frames)
        except StopIteration:
            self._frames = None
            return None
        except (av.error.FFmpegError, ValueError) as e:
            raise VideoDecodeError(self.name, f"decoding failed: {type(e).__name__}: {e}") from e
        if frame.pts is None:
            raise VideoDecodeError(self.name, "decoded a frame without a presentation timestamp")
        self.decoded_frames += 1
        return frame

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the container and any file this reader opened."""
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def probe(source: str | IO[bytes], *, name: str | None = None) -> VideoInfo:
    """Read a video's stream metadata without decoding frames.

    Args:
        source: Local path, URI, or open binary file object.
        name: Name used in errors and in ``VideoInfo.source``.

    Returns:
        The ``VideoInfo`` of the first video stream.

    Raises:
        VideoDecodeError: when the file is missing, empty, unreadable or holds no video stream.
    """
    with VideoReader(source, name=name) as reader:
        return reader.info


def decode_frames(source: str | IO[bytes], timestamps: Sequence[float], size: int = 224, *,
                  name: str | None = None) -> np.ndarray:
    """Decode the frames at ``timestamps``, resized on the short side and center-cropped.

    Args:
        source: Local path, URI, or open binary file object.
        timestamps: Seconds on the presentation timeline (``sample_timestamps``).
        size: S, the output side.
        name: Name used in errors.

    Returns:
        ``uint8 [F, S, S, 3]`` RGB frames, F = ``len(timestamps)``, in the order given.

    Raises:
        VideoDecodeError: naming the file and the reason, on any failure.
    """
    with VideoReader(source, name=name) as reader:
        return reader.frames_at(timestamps, size)


def _source_name(source: str | IO[bytes]) -> str:
    if isinstance(source, str):
        return source
    for attr in ("path", "name"):
        value = getattr(source, attr, None)
        if isinstance(value, str) and value:
            return value
    return f"<{type(source).__name__}>"

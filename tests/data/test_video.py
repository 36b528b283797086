"""Tests of ``mvrec_dist.data.video``: probing, timestamp sampling, seek-and-decode, errors.

Two kinds of input: the three real MicroLens videos in ``../shared`` (H.265 1280x720; skipped
when absent), checked against an independent full sequential decode done here; and small
synthetic H.264 / H.265 videos encoded into ``tmp_path`` whose frame ``k`` is a flat grey level
``16 + 5 (k mod 48)`` (lossless; RGB<->YUV rounding moves it by <= 2), so the frame a timestamp picked can be read off the pixels.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mvrec_dist.data.fs import open_input_file
from mvrec_dist.data.video import (VideoDecodeError, VideoReader, decode_frames, probe, sample_timestamps)

REAL = {  # name: (fps, frames) as written in the files' headers
    "1002.mp4": (60.0, 982),
    "10034.mp4": (30.0, 227),
    "10040.mp4": (30.0, 862),
}


# ---------------------------------------------------------------- independent reference
def _reference_frames(path: Path, timestamps: list[float], size: int) -> tuple[np.ndarray, list[int]]:
    """Decode every frame in order; for each t take the first frame with time >= t (else the last)."""
    wanted = sorted(set(timestamps))
    picked: dict[float, tuple[int, np.ndarray]] = {}
    last = None
    with av.open(str(path)) as c:
        for k, frame in enumerate(c.decode(c.streams.video[0])):
            last = (k, frame)
            while wanted and frame.time >= wanted[0]:
                picked[wanted.pop(0)] = (k, _resize_crop(frame, size))
            if not wanted:
                break
    for t in wanted:  # after the last frame's start
        picked[t] = (last[0], _resize_crop(last[1], size))
    return np.stack([picked[t][1] for t in timestamps]), [picked[t][0] for t in timestamps]


def _resize_crop(frame: av.VideoFrame, size: int) -> np.ndarray:
    scale = size / min(frame.width, frame.height)
    w, h = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    img = frame.reformat(width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()
    y, x = (h - size) // 2, (w - size) // 2
    return img[y:y + size, x:x + size]


# ---------------------------------------------------------------- synthetic videos
def _encode(path: Path, *, codec: str, frames: int, rate: Fraction, time_base: Fraction,
            width: int = 96, height: int = 64, gop: int = 12) -> list[float]:
    """Lossless video whose frame k is flat grey 16 + 5 (k mod 48); returns the frame times (seconds)."""
    times = []
    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.time_base = time_base
        s.codec_context.gop_size = gop
        if codec == "libx264":
            s.options = {"qp": "0", "bf": "2"}
        else:
            s.options = {"x265-params": "lossless=1:bframes=2:log-level=none"}
        for k in range(frames):
            img = np.full((height, width, 3), 16 + 5 * (k % 48), dtype=np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = round(k / rate / time_base)
            f.time_base = time_base
            times.append(float(f.pts * time_base))
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return times


def _frame_index(img: np.ndarray) -> int:
    """k mod 48 of the synthetic frame shown in ``img``."""
    return int(round((float(img.mean()) - 16) / 5))


@pytest.fixture(params=["libx264", "libx265"])
def synthetic(request, tmp_path) -> tuple[Path, list[float]]:
    path = tmp_path / f"{request.param}.mp4"
    # 29.97 fps on a 1/15360 time base: frame times are rounded, not multiples of 1/fps.
    times = _encode(path, codec=request.param, frames=60, rate=Fraction(30000, 1001),
                    time_base=Fraction(1, 15360))
    return path, times


# ---------------------------------------------------------------- synthetic tests
def test_synthetic_frames_are_the_first_at_or_after_each_timestamp(synthetic):
    path, times = synthetic
    info = probe(str(path))
    assert info.codec in ("h264", "hevc")
    assert (info.width, info.height, info.frames) == (96, 64, 60)
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-4)  # mp4 averages the rounded frame times
    rng = np.random.default_rng(0)
    ts = [info.start_time, *rng.uniform(info.start_time, info.end_time, 12), times[7], times[7] + 1e-9,
          times[30], info.end_time]  # unsorted, on and just after frame starts, both ends
    got = decode_frames(str(path), ts, size=32)
    assert got.shape == (len(ts), 32, 32, 3) and got.dtype == np.uint8
    expected = [next((k for k, tk in enumerate(times) if tk >= t), len(times) - 1) % 48 for t in ts]
    assert [_frame_index(img) for img in got] == expected


def test_synthetic_clips_are_consecutive_frames(synthetic):
    path, _ = synthetic
    info = probe(str(path))
    ts = sample_timestamps(info, mode="clips", clips=4, frames_per_clip=3)
    idx = [_frame_index(img) for img in decode_frames(str(path), ts, size=16)]
    clips = [idx[i:i + 3] for i in range(0, 12, 3)]
    # 60 frames, 4 clips: centres at frames 7.5, 22.5, 37.5, 52.5, so clips start at 6, 21, 36, 51.
    assert clips == [[k % 48 for k in range(first, first + 3)] for first in (6, 21, 36, 51)]
    # The MicroLens paper's sampling: 5 consecutive frames around the middle.
    mid = [_frame_index(img) for img in decode_frames(
        str(path), sample_timestamps(info, mode="clips", clips=1, frames_per_clip=5), size=16)]
    assert mid == list(range(mid[0], mid[0] + 5))
    assert abs((mid[0] + mid[-1] + 1) / 2 - 30) <= 1  # centred on the middle of 60 frames, within a frame


def test_sample_timestamps_uniform_centres():
    from mvrec_dist.data.video import VideoInfo

    info = VideoInfo(source="x", duration=10.0, fps=25.0, frames=250, codec="h264", width=1, height=1,
                     start_time=2.0)
    assert sample_timestamps(info, frames=5) == pytest.approx([3.0, 5.0, 7.0, 9.0, 11.0], abs=1e-12)
    clips = sample_timestamps(info, mode="clips", clips=2, frames_per_clip=2)
    # Clip centres at 2.5 s and 7.5 s (frames 62.5, 187.5): frames 62, 63 and 187, 188, each
    # addressed half a frame period before its start.
    assert clips == pytest.approx([2.0 + (k - 0.5) / 25 for k in (62, 63, 187, 188)], abs=1e-12)
    with pytest.raises(ValueError, match="mode"):
        sample_timestamps(info, mode="middle")
    short = VideoInfo(source="x", duration=0.12, fps=25.0, frames=3, codec="h264", width=1, height=1, start_time=0.0)
    ts = sample_timestamps(short, mode="clips", clips=1, frames_per_clip=5)
    assert ts == sorted(ts) and ts[0] == 0.0 and ts[-1] == pytest.approx(0.12)  # clamped to the video


def test_seeks_instead_of_decoding_everything(tmp_path):
    path = tmp_path / "long.mp4"
    _encode(path, codec="libx264", frames=240, rate=Fraction(24), time_base=Fraction(1, 12288), gop=12)
    with VideoReader(str(path)) as r:
        got = r.frames_at([8.5, 9.5], size=16)
        assert [_frame_index(img) for img in got] == [204 % 48, 228 % 48]
        assert r.seeks >= 1
        assert r.decoded_frames <= 40, r.decoded_frames  # about two GOPs of 12, not the 229 frames up to 9.5 s


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "404.mp4"
    with pytest.raises(VideoDecodeError, match=r"404\.mp4: file not found"):
        probe(str(missing))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=r"empty\.mp4: empty file"):
        decode_frames(str(empty), [0.0])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match=r"garbage\.mp4: unreadable"):
        decode_frames(str(garbage), [0.0])
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), mode="w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
    with pytest.raises(VideoDecodeError, match=r"audio\.wav: no video stream"):
        probe(str(audio))
    ok = tmp_path / "ok.mp4"
    _encode(ok, codec="libx264", frames=10, rate=Fraction(10), time_base=Fraction(1, 10240))
    with pytest.raises(VideoDecodeError, match=r"ok\.mp4: timestamp 5\.0 s is outside"):
        decode_frames(str(ok), [0.1, 5.0])
    cut = tmp_path / "cut.mp4"  # the mp4 index (moov) is written last, so a cut file has none
    cut.write_bytes(ok.read_bytes()[: ok.stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4: unreadable"):
        probe(str(cut))


def test_file_objects_and_uris_decode_like_paths(tmp_path):
    path = tmp_path / "v.mp4"
    _encode(path, codec="libx265", frames=30, rate=Fraction(15), time_base=Fraction(1, 15360))
    ts = [0.5, 1.2, 0.1]
    want = decode_frames(str(path), ts, size=24)
    with open_input_file(str(path)) as f:
        assert np.array_equal(decode_frames(f, ts, size=24, name="v.mp4"), want)
    assert np.array_equal(decode_frames(path.as_uri(), ts, size=24), want)
    with open(path, "rb") as f:
        assert probe(f).source == str(path)


# ---------------------------------------------------------------- real MicroLens videos
@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_video_probe_and_frames_match_sequential_decode(microlens_videos, name):
    path = microlens_videos / name
    info = probe(str(path))
    fps, frames = REAL[name]
    assert (info.codec, info.width, info.height, info.fps, info.frames) == ("hevc", 1280, 720, fps, frames)
    assert info.duration == pytest.approx(frames / fps, abs=1.0 / fps)
    uniform = sample_timestamps(info, frames=5)
    clips = sample_timestamps(info, mode="clips", clips=4, frames_per_clip=2)
    extra = [info.start_time, info.end_time, uniform[2]]  # both ends and a repeat
    ts = uniform + clips + extra
    with VideoReader(str(path)) as r:
        got = r.frames_at(ts, size=64)
        decoded = r.decoded_frames
    want, idx = _reference_frames(path, ts, size=64)
    assert np.array_equal(got, want)  # bit-exact: seeking must not change the decoded pixels
    assert idx[:5] == sorted(set(idx[:5]))  # five distinct frames, in order
    clip_idx = idx[5:13]
    assert all(clip_idx[i + 1] == clip_idx[i] + 1 for i in range(0, 8, 2)), clip_idx
    assert idx[-2] == frames - 1
    assert decoded <= 2 * frames  # bounded re-decoding even on single-GOP files (10034)


@pytest.mark.shared_data
def test_real_video_224_and_late_frame_decodes_a_fraction(microlens_videos):
    path = microlens_videos / "1002.mp4"  # 982 frames, keyframes every 250
    info = probe(str(path))
    t = info.end_time - 1.0
    with VideoReader(str(path)) as r:
        got = r.frames_at([t], size=224)
        assert r.decoded_frames < info.frames // 4, r.decoded_frames
    want, _ = _reference_frames(path, [t], size=224)
    assert got.shape == (1, 224, 224, 3)
    assert np.array_equal(got, want)

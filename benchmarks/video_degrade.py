"""Video transformations a pirate applies, each one row of the video grid, rendered by ffmpeg.

Every clip is cut from its source, transformed, re-encoded as H.264 and muted, so the grid
measures what the picture alone identifies. Picture-in-picture lays the clip at half size
(its aspect kept) over footage that is not in the catalogue.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FONT = "usr/share/fonts/truetype/nanum/NanumGothicBold.ttf"
"""Debian fonts-nanum, for burned-in Hangul subtitles (fetched with the corpus)."""
SUBTITLE = "지금 어디 가는 거야? 같이 가자"


@dataclass(frozen=True)
class VideoDegradation:
    """ffmpeg filters for the clip (``{font}`` is replaced by the Hangul font's path), the
    speed it plays at (query rate / reference rate), the H.264 quality, and whether it is
    shown as an inset over other footage."""

    filters: str = ""
    speed: float = 1.0
    crf: int = 23
    inset: bool = False

    @property
    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()[:8]


VIDEO_DEGRADATIONS: dict[str, VideoDegradation] = {
    "reencode": VideoDegradation(crf=38),
    "360p": VideoDegradation(filters="scale=-2:360", crf=30),
    "fps_15": VideoDegradation(filters="fps=15"),
    "gamma": VideoDegradation(filters="eq=gamma=1.4:contrast=1.2:saturation=0.6"),
    "blur_noise": VideoDegradation(filters="gblur=sigma=2,noise=alls=20:allf=t", crf=30),
    "logo": VideoDegradation(filters=(
        "drawbox=x=iw*0.80:y=ih*0.05:w=iw*0.15:h=ih*0.12:color=white@0.7:t=fill,"
        "drawtext=fontfile={font}:text='TV 24':fontcolor=red:fontsize=h/18"
        ":x=w*0.82:y=h*0.08")),
    "subtitles": VideoDegradation(filters=(
        f"drawtext=fontfile={{font}}:text='{SUBTITLE}':fontcolor=white:fontsize=h/14"
        ":borderw=2:bordercolor=black:x=(w-tw)/2:y=h*0.85")),
    "letterbox": VideoDegradation(filters="pad=iw:trunc(ih*4/6)*2:0:(oh-ih)/2,setsar=1"),
    "mirror": VideoDegradation(filters="hflip"),
    "crop_10": VideoDegradation(filters="crop=iw*0.9:ih*0.9,scale=iw/0.9:ih/0.9"),
    "speed_+10": VideoDegradation(speed=1.1),
    "speed_-10": VideoDegradation(speed=0.9),
    "pip": VideoDegradation(inset=True),
}


def degrade_video(source: Path, start_s: float, length_s: float, name: str, out: Path,
                  background: Path, font: Path, rng: np.random.Generator) -> None:
    """Write ``length_s`` seconds of query, from ``start_s`` of ``source``, transformed."""
    spec = VIDEO_DEGRADATIONS[name]
    chain = [f"setpts=(PTS-STARTPTS)/{spec.speed}"] if spec.speed != 1.0 else []
    if spec.filters:
        chain.append(spec.filters.format(font=font))
    chain.append("scale=trunc(iw/2)*2:trunc(ih/2)*2")  # H.264 in 4:2:0 needs even sizes
    picture = ",".join(chain)
    cmd = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-ss", f"{start_s:.3f}",
           "-t", f"{length_s * spec.speed:.3f}", "-i", str(source)]
    if spec.inset:
        x, y = rng.uniform(0.05, 0.45), rng.uniform(0.05, 0.45)
        cmd += ["-stream_loop", "-1", "-i", str(background), "-filter_complex",
                f"[1:v]scale=1280:720,setsar=1[bg];[0:v]{picture},scale=640:-2,setsar=1[fg];"
                f"[bg][fg]overlay=x=W*{x:.3f}:y=H*{y:.3f}:shortest=1[v]", "-map", "[v]"]
    else:
        cmd += ["-vf", picture, "-map", "0:v:0"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.mp4")
    subprocess.run([*cmd, "-t", f"{length_s:.3f}", "-an", "-c:v", "libx264", "-preset",
                    "veryfast", "-crf", str(spec.crf), "-pix_fmt", "yuv420p", str(tmp)],
                   check=True)
    tmp.replace(out)

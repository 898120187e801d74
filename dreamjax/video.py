"""Video / GIF / PNG writers and image grids (turntable cameras: `cameras.turntable_cameras`).

Writers are atomic (temp file beside the target, then os.replace; see dreamjax.files). Frames are
[N, H, W, 3], either float in [0, 1] (clipped, round(255 x)) or uint8.
"""

from __future__ import annotations

import logging
import os
import pathlib
import warnings
from typing import Union

import numpy as np

from dreamjax.files import atomic_path

PathLike = Union[str, os.PathLike]


def to_uint8(images) -> np.ndarray:
  """Float images in [0, 1] (NaN -> 0, clipped) -> uint8 round(255 x); uint8 input is returned unchanged."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  x = np.nan_to_num(images.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
  return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_frames(frames) -> np.ndarray:
  frames = to_uint8(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
    raise ValueError(f'frames must be [N>0, H, W, 3], got {frames.shape}')
  return frames


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
  """Replicates the last row / column so H and W are even (H.264 with yuv420p needs even sizes)."""
  _, h, w, _ = frames.shape
  if h % 2 or w % 2:
    logging.info('write_video: padding %dx%d frames to %dx%d for yuv420p', h, w, h + h % 2, w + w % 2)
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
  return frames


def _ffmpeg_exe() -> str:
  """Path of the ffmpeg binary shipped by imageio-ffmpeg (raises ImportError / RuntimeError when unavailable)."""
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  return imageio_ffmpeg.get_ffmpeg_exe()


def _write_mp4(frames: np.ndarray, path: pathlib.Path, fps: float) -> None:
  import imageio.v2 as iio  # pylint: disable=g-import-not-at-top
  _ffmpeg_exe()
  frames = _pad_to_even(frames)
  with atomic_path(path) as tmp:
    writer = iio.get_writer(tmp, format='FFMPEG', mode='I', fps=fps, codec='libx264', quality=8,
                            pixelformat='yuv420p', macro_block_size=1, ffmpeg_log_level='error')
    try:
      for frame in frames:
        writer.append_data(frame)
    finally:
      writer.close()


def _write_gif(frames: np.ndarray, path: pathlib.Path, fps: float) -> None:
  """Animated GIF with Pillow, looping forever; identical consecutive frames are merged (durations add)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = [Image.fromarray(f) for f in frames]
  with atomic_path(path) as tmp:
    images[0].save(tmp, format='GIF', save_all=True, append_images=images[1:],
                   duration=max(1, int(round(1000.0 / fps))), loop=0)


def write_video(frames, path: PathLike, fps: float = 30.0) -> pathlib.Path:
  """Writes frames [N, H, W, 3] (float in [0, 1] or uint8) as .mp4 (H.264, via imageio-ffmpeg) or .gif (Pillow).

  Odd frame sizes are padded by one replicated row / column for mp4. If the mp4 cannot be written (no ffmpeg, or
  ffmpeg fails), a .gif is written beside it instead and a warning names it.

  Returns:
    The path actually written.
  """
  frames = _check_frames(frames)
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix == '.gif':
    _write_gif(frames, path, fps)
    return path
  if suffix != '.mp4':
    raise ValueError(f'unknown video format {suffix!r} for {path}; use .mp4 or .gif')
  try:
    with warnings.catch_warnings():
      # imageio-ffmpeg starts ffmpeg with subprocess; Python warns that os.fork() and JAX's threads may deadlock.
      # The child execs ffmpeg at once and runs no Python, so the warning does not apply.
      warnings.filterwarnings('ignore', message=r'.*os\.fork\(\) was called.*', category=RuntimeWarning)
      _write_mp4(frames, path, fps)
    return path
  except (ImportError, RuntimeError, OSError) as e:
    gif = path.with_suffix('.gif')
    logging.warning('write_video: could not write %s (%s: %s); writing %s instead', path, type(e).__name__, e, gif)
    _write_gif(frames, gif, fps)
    return gif


def save_png(image, path: PathLike) -> pathlib.Path:
  """Writes image [H, W, 3] or [H, W] (float in [0, 1] or uint8) as an 8-bit PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = to_uint8(image)
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
    raise ValueError(f'image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {image.shape}')
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  path = pathlib.Path(path)
  with atomic_path(path) as tmp:
    Image.fromarray(image).save(tmp, format='PNG')
  return path


def image_grid(images, rows: int, cols: int, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
  """Tiles images [N, H, W, C] (N <= rows * cols, row-major) into one image with `pad` pixels around every tile.

  Output: [rows * H + (rows + 1) * pad, cols * W + (cols + 1) * pad, C], same dtype as the input (float32 for
  float input). Padding and empty cells are pad_value (in [0, 1]; scaled to 255 for uint8).
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images must be [N, H, W, C], got {images.shape}')
  n, h, w, c = images.shape
  if n > rows * cols:
    raise ValueError(f'{n} images do not fit a {rows}x{cols} grid')
  dtype = np.uint8 if images.dtype == np.uint8 else np.float32
  fill = round(pad_value * 255) if dtype == np.uint8 else pad_value
  out = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, c), fill, dtype)
  for k in range(n):
    i, j = divmod(k, cols)
    top, left = pad + i * (h + pad), pad + j * (w + pad)
    out[top:top + h, left:left + w] = images[k]
  return out

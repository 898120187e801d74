"""Tests for dreamjax.video: mp4 / gif / png writers read back independently, image grids."""

import logging
import os

import chex
import imageio.v2 as iio
import numpy as np
import pytest
from PIL import Image

from dreamjax import video


def _frames(n=8, h=32, w=48):
  """Smooth float frames in [0, 1] that change over time: [n, h, w, 3] float64."""
  t = np.arange(n)[:, None, None]
  y = np.arange(h)[None, :, None] / h
  x = np.arange(w)[None, None, :] / w
  r = 0.5 + 0.4 * np.sin(2 * np.pi * (x + t / n))
  g = 0.5 + 0.4 * np.cos(2 * np.pi * y)
  b = np.broadcast_to(0.2 + 0.6 * t / n, r.shape)
  return np.stack(np.broadcast_arrays(r, g, b), axis=-1)


def _read_mp4(path):
  """All frames decoded by imageio's ffmpeg reader, and its independent frame count (ffmpeg -count_frames)."""
  reader = iio.get_reader(path, format='FFMPEG')
  try:
    frames = np.stack(list(reader.iter_data()))
    assert reader.count_frames() == len(frames)
    return frames
  finally:
    reader.close()


def test_mp4_round_trip(tmp_path):
  """An 8-frame float video is written as mp4; imageio-ffmpeg reads back 8 frames of the same shape whose pixels are
  within lossy-codec error of round(255 x); no temp file is left."""
  frames = _frames()
  path = video.write_video(frames, tmp_path / 'turn.mp4', fps=10)
  assert path == tmp_path / 'turn.mp4'
  assert path.stat().st_size > 1000
  back = _read_mp4(path)
  chex.assert_shape(back, (8, 32, 48, 3))
  expected = np.round(frames * 255.0)
  assert np.mean(np.abs(back.astype(np.float64) - expected)) < 8.0
  assert os.listdir(tmp_path) == ['turn.mp4']


def test_mp4_odd_size_padded(tmp_path):
  """uint8 frames of odd size 31x45 are padded (edge-replicated) to 32x46 for yuv420p."""
  frames = (_frames(4, 31, 45) * 255).astype(np.uint8)
  back = _read_mp4(video.write_video(frames, tmp_path / 'odd.mp4'))
  chex.assert_shape(back, (4, 32, 46, 3))
  assert np.mean(np.abs(back[:, :31, :45].astype(np.float64) - frames)) < 8.0


def test_gif_round_trip(tmp_path):
  """GIF: Pillow reads back 8 frames of size 48x32 with colours within palette-quantisation error."""
  frames = _frames()
  path = video.write_video(frames, tmp_path / 'turn.gif', fps=10)
  with Image.open(path) as im:
    assert im.n_frames == 8 and im.size == (48, 32)
    back = []
    for k in range(im.n_frames):
      im.seek(k)
      back.append(np.asarray(im.convert('RGB'), np.float64))
  assert np.mean(np.abs(np.stack(back) - np.round(frames * 255.0))) < 8.0


def test_mp4_falls_back_to_gif(tmp_path, monkeypatch, caplog):
  """Without ffmpeg the writer produces a .gif beside the requested .mp4, logs a warning naming it, and returns it."""
  def no_ffmpeg():
    raise RuntimeError('no ffmpeg here')
  monkeypatch.setattr(video, '_ffmpeg_exe', no_ffmpeg)
  with caplog.at_level(logging.WARNING):
    path = video.write_video(_frames(3), tmp_path / 'turn.mp4')
  assert path == tmp_path / 'turn.gif'
  assert sorted(os.listdir(tmp_path)) == ['turn.gif']
  assert str(tmp_path / 'turn.gif') in caplog.text
  with Image.open(path) as im:
    assert im.n_frames == 3


def test_video_rejects_bad_input(tmp_path):
  """Wrong shapes and unknown suffixes raise ValueError and write nothing."""
  with pytest.raises(ValueError):
    video.write_video(np.zeros((4, 8, 8)), tmp_path / 'a.mp4')
  with pytest.raises(ValueError):
    video.write_video(np.zeros((4, 8, 8, 3)), tmp_path / 'a.avi')
  assert os.listdir(tmp_path) == []


def test_save_png_and_image_grid(tmp_path):
  """image_grid places image k at row k // cols, column k % cols with `pad` pixels of pad_value around each tile;
  save_png writes round(255 x) losslessly."""
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(5, 6, 7, 3)).astype(np.float32)
  grid = video.image_grid(images, rows=2, cols=3, pad=2, pad_value=1.0)
  chex.assert_shape(grid, (2 * 6 + 3 * 2, 3 * 7 + 4 * 2, 3))
  mask = np.ones(grid.shape[:2], bool)
  for k in range(5):
    top, left = 2 + (k // 3) * 8, 2 + (k % 3) * 9
    np.testing.assert_array_equal(grid[top:top + 6, left:left + 7], images[k])
    mask[top:top + 6, left:left + 7] = False
  np.testing.assert_array_equal(grid[mask], 1.0)
  path = video.save_png(grid, tmp_path / 'grid.png')
  back = np.asarray(Image.open(path))
  np.testing.assert_array_equal(back, np.round(np.clip(grid.astype(np.float64), 0, 1) * 255).astype(np.uint8))
  with pytest.raises(ValueError):
    video.image_grid(images, rows=2, cols=2)

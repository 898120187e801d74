"""CLIP image preprocessing, written once: what a CLIP model folder's `preprocessor_config.json` declares (resize of the
shortest edge, centre crop, rescale to [0, 1], normalisation by image_mean / image_std), applied to renders.

Renders are first quantised to 8 bits, as a saved PNG would be (and as transformers' `CLIPImageProcessor` sees an
image), so the result equals that processor's output on the same picture (tested). A render made at the crop size
(224² for the openai CLIPs) passes resize and crop unchanged: no resampling happens, as in DreamFusion's protocol.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _pair(value, what: str) -> tuple[int, int]:
  """(height, width) of a processor size entry: an int, {'height', 'width'} or {'shortest_edge'} (a square)."""
  if isinstance(value, int):
    return value, value
  if isinstance(value, dict):
    if "height" in value and "width" in value:
      return int(value["height"]), int(value["width"])
    if "shortest_edge" in value:
      return int(value["shortest_edge"]), int(value["shortest_edge"])
  raise ValueError(f"unsupported {what} in preprocessor_config.json: {value!r}")


@dataclasses.dataclass(frozen=True)
class ClipPreprocess:
  """The image side of a CLIP processor. `resize`: ('shortest_edge', n) or ('exact', (h, w)) or None."""
  resize: tuple | None
  crop: tuple[int, int] | None  # (height, width) of the centre crop
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  resample: int = 3  # PIL filter code (3 = bicubic, CLIP's)

  @classmethod
  def from_dict(cls, d: dict) -> "ClipPreprocess":
    """From the entries of a `preprocessor_config.json`."""
    resize = None
    if d.get("do_resize", True):
      size = d.get("size", 224)
      if isinstance(size, int) or (isinstance(size, dict) and "shortest_edge" in size):
        resize = ("shortest_edge", _pair(size, "size")[0])
      else:
        resize = ("exact", _pair(size, "size"))
    crop = _pair(d.get("crop_size", 224), "crop_size") if d.get("do_center_crop", True) else None
    if not d.get("do_normalize", True):
      mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
      mean, std = tuple(float(v) for v in d["image_mean"]), tuple(float(v) for v in d["image_std"])
    return cls(resize=resize, crop=crop, mean=mean, std=std, resample=int(d.get("resample", 3)))

  @property
  def input_size(self) -> tuple[int, int]:
    """(height, width) the model sees: a square render of this size needs no resampling."""
    if self.crop is not None:
      return self.crop
    if self.resize is None:
      raise ValueError("the processor neither resizes nor crops: its input size is not fixed")
    return self.resize[1] if self.resize[0] == "exact" else (self.resize[1], self.resize[1])

  def resized_shape(self, height: int, width: int) -> tuple[int, int]:
    """(height, width) after the resize step (transformers' rule: the short side becomes n, the long side
    int(n · long / short))."""
    if self.resize is None:
      return height, width
    kind, n = self.resize
    if kind == "exact":
      return n
    if height <= width:
      return n, int(n * width / height)
    return int(n * height / width), n

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """images [N, H, W, 3] in [0, 1] -> pixel_values float32 [N, 3, h, w] (channels first, as CLIP's Flax model
    takes them)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
    q = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = [self._one(x) for x in q]
    return np.stack(out).astype(np.float32)

  def _one(self, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    new_h, new_w = self.resized_shape(h, w)
    if (new_h, new_w) != (h, w):
      from PIL import Image
      image = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=self.resample))
    if self.crop is not None:
      ch, cw = self.crop
      h, w = image.shape[:2]
      if ch > h or cw > w:
        raise ValueError(f"centre crop {ch}x{cw} is larger than the resized image {h}x{w}")
      top, left = (h - ch) // 2, (w - cw) // 2
      image = image[top:top + ch, left:left + cw]
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
    return x.transpose(2, 0, 1)

"""Marching-cubes mesh export of a density/albedo field, and OBJ / PLY / GLB writers.

DreamFusion exports its NeRFs "to meshes using the marching cubes algorithm". Here:

  extract_mesh(field_fn, resolution, radius, threshold) -> Mesh
      field_fn(points [N, 3] world units) -> (density [N] (1/world unit), albedo [N, 3] in [0, 1]), numpy or jax.
      The field is sampled on a resolution^3 grid over the cube [-radius, radius]^3 around the bounding sphere;
      points outside the sphere (and the cube's outer layer) get density 0, so every surface is closed.

  Default threshold (threshold=None): the density at which one sample's opacity over one grid spacing h is 1/2,
      1 - exp(-tau * h) = 1/2  =>  tau* = ln(2) / h,   h = 2 * radius / (resolution - 1),
  i.e. a grid cell counts as solid when light crossing it loses at least half its intensity. It is about 31.4 at
  resolution 128 and 63.1 at resolution 256 (radius 1.4); it grows with resolution, so pass a fixed `threshold`
  (stable-dreamfusion uses 10, threestudio 25) when comparing meshes across resolutions.

Writers (all atomic, through dreamjax.files: a temp file in the target directory, then os.replace):
  write_obj  text, `v x y z r g b` vertex colours (float, [0, 1]), 1-based faces.
  write_ply  binary little-endian; float x/y/z, uchar red/green/blue (round(255 * c)), int face indices.
  write_glb  glTF 2.0 binary; POSITION / COLOR_0 float32 VEC3 and uint32 indices, all with min/max. COLOR_0 is
             linear per the glTF spec, so sRGB albedo is converted with the sRGB transfer function (srgb_to_linear=
             True). glTF is y-up and our world is z-up: the vertex data is written unchanged and the node carries a
             -90 degree rotation about x (z-up -> y-up).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import struct
from typing import Any, Callable, Tuple, Union

import numpy as np

from dreamjax.files import atomic_write

PathLike = Union[str, os.PathLike]
FieldFn = Callable[[np.ndarray], Tuple[Any, Any]]


@dataclasses.dataclass
class Mesh:
  """A triangle mesh with per-vertex colour.

  vertices: [V, 3] float32, world units (z-up).
  faces:    [F, 3] int32 vertex indices; counter-clockwise seen from outside (normals toward lower density).
  colors:   [V, 3] float32 in [0, 1] (sRGB albedo).
  """

  vertices: np.ndarray
  faces: np.ndarray
  colors: np.ndarray

  def __post_init__(self):
    self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
    self.faces = np.ascontiguousarray(self.faces, dtype=np.int32)
    self.colors = np.ascontiguousarray(self.colors, dtype=np.float32)
    if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
      raise ValueError(f'vertices must be [V, 3], got {self.vertices.shape}')
    if self.faces.ndim != 2 or self.faces.shape[1] != 3:
      raise ValueError(f'faces must be [F, 3], got {self.faces.shape}')
    if self.colors.shape != self.vertices.shape:
      raise ValueError(f'colors must be [V, 3] = {self.vertices.shape}, got {self.colors.shape}')
    if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= len(self.vertices)):
      raise ValueError('face indices out of range')


def default_threshold(resolution: int, radius: float) -> float:
  """ln(2) / h, h = 2 radius / (resolution - 1): density with opacity 1/2 across one grid spacing (1/world unit)."""
  return math.log(2.0) / (2.0 * radius / (resolution - 1))


def _evaluate_chunked(field_fn: FieldFn, points: np.ndarray, chunk: int) -> Tuple[np.ndarray, np.ndarray]:
  """field_fn on [N, 3] float32 points in chunks -> (density [N] float32, albedo [N, 3] float32).

  Every call sees exactly `chunk` points (the last chunk is padded with zeros), so a jitted field_fn compiles once.
  """
  n = len(points)
  density = np.empty((n,), np.float32)
  albedo = np.empty((n, 3), np.float32)
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    block = points[start:stop]
    if len(block) < chunk:
      block = np.concatenate([block, np.zeros((chunk - len(block), 3), np.float32)])
    d, a = field_fn(block)
    d = np.asarray(d, dtype=np.float32).reshape(-1)[:stop - start]
    a = np.asarray(a, dtype=np.float32).reshape(-1, 3)[:stop - start]
    density[start:stop] = d
    albedo[start:stop] = a
  return density, albedo


def _weld(vertices: np.ndarray, faces: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Merges bit-identical vertices, drops faces that became degenerate and unreferenced vertices."""
  unique, inverse = np.unique(vertices, axis=0, return_inverse=True)
  faces = inverse.reshape(-1)[faces]
  keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
  faces = faces[keep]
  used, faces_compact = np.unique(faces, return_inverse=True)
  return unique[used], faces_compact.reshape(-1, 3)


def face_components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
  """Connected-component label of each face (faces sharing a vertex are connected): [F] int."""
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  import scipy.sparse.csgraph  # pylint: disable=g-import-not-at-top
  if len(faces) == 0:
    return np.zeros((0,), np.int64)
  rows = np.concatenate([faces[:, 0], faces[:, 1]])
  cols = np.concatenate([faces[:, 1], faces[:, 2]])
  graph = scipy.sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(num_vertices,) * 2)
  _, vertex_label = scipy.sparse.csgraph.connected_components(graph, directed=False)
  return vertex_label[faces[:, 0]]


def _grid_gradient(volume: np.ndarray, points_index: np.ndarray, spacing: float) -> np.ndarray:
  """Central-difference density gradient at the grid node nearest to each point (index coordinates): [P, 3]."""
  n = np.array(volume.shape)
  idx = np.clip(np.rint(points_index).astype(np.int64), 1, n - 2)
  i, j, k = idx[:, 0], idx[:, 1], idx[:, 2]
  gx = volume[i + 1, j, k] - volume[i - 1, j, k]
  gy = volume[i, j + 1, k] - volume[i, j - 1, k]
  gz = volume[i, j, k + 1] - volume[i, j, k - 1]
  return np.stack([gx, gy, gz], axis=-1).astype(np.float64) / (2.0 * spacing)


def extract_mesh(field_fn: FieldFn,
                 resolution: int = 128,
                 radius: float = 1.4,
                 threshold: float | None = None,
                 chunk: int = 65536,
                 min_component_fraction: float = 0.0) -> Mesh:
  """Marching cubes of the density level set {density = threshold} inside the bounding sphere.

  Args:
    field_fn: points [N, 3] (world units, float32) -> (density [N], albedo [N, 3] in [0, 1]).
    resolution: grid nodes per axis over [-radius, radius]; spacing h = 2 radius / (resolution - 1).
    radius: bounding-sphere radius (world units); density is 0 outside the sphere.
    threshold: iso-level in density units; None uses default_threshold(resolution, radius) = ln(2) / h.
    chunk: points per field_fn call.
    min_component_fraction: drop connected components with fewer faces than this fraction of the largest
      component's face count (0 keeps everything; e.g. 0.05 removes small floaters).

  Returns:
    Mesh with vertices on the level set, faces wound so normals point toward decreasing density, and colours
    field_fn's albedo at the vertices (clipped to [0, 1]).

  Raises:
    ValueError: if the density never exceeds the threshold (empty scene) or arguments are invalid.
  """
  import skimage.measure  # pylint: disable=g-import-not-at-top
  if resolution < 3:
    raise ValueError(f'resolution must be >= 3, got {resolution}')
  spacing = 2.0 * radius / (resolution - 1)
  if threshold is None:
    threshold = default_threshold(resolution, radius)
  threshold = float(threshold)
  if not threshold > 0:
    raise ValueError(f'threshold must be > 0 (empty space has density 0), got {threshold}')

  axis = np.linspace(-radius, radius, resolution, dtype=np.float64)
  grid = np.stack(np.meshgrid(axis, axis, axis, indexing='ij'), axis=-1).reshape(-1, 3)
  inside = np.linalg.norm(grid, axis=-1) < radius
  inside_index = np.nonzero(inside)[0]
  density_in, _ = _evaluate_chunked(field_fn, grid[inside_index].astype(np.float32), chunk)
  bad = ~np.isfinite(density_in)
  if bad.any():
    logging.warning('extract_mesh: %d non-finite densities replaced (nan -> 0, inf -> float32 max)', bad.sum())
    density_in = np.nan_to_num(density_in, nan=0.0, posinf=np.finfo(np.float32).max, neginf=0.0)
  volume = np.zeros((resolution ** 3,), np.float32)
  volume[inside_index] = density_in
  volume = volume.reshape(resolution, resolution, resolution)
  # The outer layer is zero, so every level-set component is a closed surface.
  volume[[0, -1], :, :] = 0.0
  volume[:, [0, -1], :] = 0.0
  volume[:, :, [0, -1]] = 0.0

  max_density = float(volume.max())
  if not max_density > threshold:
    raise ValueError(f'no surface: the density never exceeds threshold {threshold:.4g} (max {max_density:.4g}); '
                     'the scene may be empty')
  logging.info('extract_mesh: resolution %d, radius %g, threshold %.4g, max density %.4g',
               resolution, radius, threshold, max_density)

  verts_index, faces, _, _ = skimage.measure.marching_cubes(volume, level=threshold)
  verts_index, faces = _weld(verts_index.astype(np.float64), faces.astype(np.int64))

  # Orientation: per connected component, flip the winding if most faces' normals point up the density gradient.
  labels = face_components(faces, len(verts_index))
  a, b, c = (verts_index[faces[:, i]] for i in range(3))
  normals = np.cross(b - a, c - a)
  grad = _grid_gradient(volume, (a + b + c) / 3.0, spacing)
  vote = np.bincount(labels, weights=-np.sign(np.sum(normals * grad, axis=-1)))
  flip = vote[labels] < 0
  faces[flip] = faces[flip][:, ::-1]

  if min_component_fraction > 0 and len(faces):
    counts = np.bincount(labels)
    keep = counts[labels] >= min_component_fraction * counts.max()
    faces = faces[keep]
    used, faces_compact = np.unique(faces, return_inverse=True)
    verts_index, faces = verts_index[used], faces_compact.reshape(-1, 3)

  vertices = (verts_index * spacing - radius).astype(np.float32)
  _, colors = _evaluate_chunked(field_fn, vertices, chunk)
  colors = np.clip(np.nan_to_num(colors, nan=0.0), 0.0, 1.0)
  return Mesh(vertices=vertices, faces=faces.astype(np.int32), colors=colors)


# ------------------------------------------------------------------------------------------------ writers


def write_obj(mesh: Mesh, path: PathLike) -> pathlib.Path:
  """Wavefront OBJ: `v x y z r g b` (float32 printed with 9 significant digits, exact round trip), `f i j k` 1-based."""
  v = np.concatenate([mesh.vertices, mesh.colors], axis=1)
  with atomic_write(path, 'w') as f:
    f.write(f'# dreamjax mesh: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces; z-up; vertex colours rgb\n')
    np.savetxt(f, v, fmt='v %.9g %.9g %.9g %.9g %.9g %.9g')
    np.savetxt(f, mesh.faces.astype(np.int64) + 1, fmt='f %d %d %d')
  return pathlib.Path(path)


def colors_to_uint8(colors: np.ndarray) -> np.ndarray:
  """[..., 3] float in [0, 1] -> uint8, round(255 * clip(c, 0, 1))."""
  return np.rint(np.clip(np.asarray(colors, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_ply(mesh: Mesh, path: PathLike) -> pathlib.Path:
  """Binary little-endian PLY: float x y z, uchar red green blue; faces as `list uchar int vertex_indices`."""
  vdtype = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('red', 'u1'), ('green', 'u1'), ('blue', 'u1')])
  fdtype = np.dtype([('n', 'u1'), ('idx', '<i4', (3,))])
  vert = np.empty(len(mesh.vertices), vdtype)
  vert['x'], vert['y'], vert['z'] = mesh.vertices.T
  rgb = colors_to_uint8(mesh.colors)
  vert['red'], vert['green'], vert['blue'] = rgb.T
  face = np.empty(len(mesh.faces), fdtype)
  face['n'] = 3
  face['idx'] = mesh.faces
  header = ('ply\nformat binary_little_endian 1.0\ncomment dreamjax mesh, z-up\n'
            f'element vertex {len(vert)}\n'
            'property float x\nproperty float y\nproperty float z\n'
            'property uchar red\nproperty uchar green\nproperty uchar blue\n'
            f'element face {len(face)}\n'
            'property list uchar int vertex_indices\nend_header\n')
  with atomic_write(path, 'wb') as f:
    f.write(header.encode('ascii'))
    f.write(vert.tobytes())
    f.write(face.tobytes())
  return pathlib.Path(path)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
  """The sRGB electro-optical transfer function (IEC 61966-2-1), [0, 1] -> [0, 1]."""
  c = np.clip(np.asarray(c, np.float64), 0.0, 1.0)
  return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


_GLB_MAGIC = 0x46546C67  # b'glTF'
_CHUNK_JSON = 0x4E4F534A  # b'JSON'
_CHUNK_BIN = 0x004E4942  # b'BIN\0'
_FLOAT, _UINT32 = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


def write_glb(mesh: Mesh, path: PathLike, srgb_to_linear_colors: bool = True) -> pathlib.Path:
  """glTF 2.0 binary (.glb) with one triangle primitive: POSITION, COLOR_0 (float32 VEC3), uint32 indices.

  COLOR_0 holds srgb_to_linear(colors) (glTF vertex colours are linear) unless srgb_to_linear_colors=False.
  The node rotates z-up to glTF's y-up; accessor data is the mesh's own arrays.
  """
  positions = mesh.vertices
  colors = mesh.colors
  if srgb_to_linear_colors:
    colors = srgb_to_linear(colors).astype(np.float32)
  indices = mesh.faces.astype(np.uint32).reshape(-1)
  blobs = [positions.tobytes(), colors.tobytes(), indices.tobytes()]  # all multiples of 4 bytes
  offsets = np.cumsum([0] + [len(b) for b in blobs[:-1]]).tolist()
  bin_data = b''.join(blobs)

  def minmax(x):
    if len(x) == 0:
      return {}
    if x.ndim == 1:
      return {'min': [int(x.min())], 'max': [int(x.max())]}
    return {'min': [float(t) for t in x.min(axis=0)], 'max': [float(t) for t in x.max(axis=0)]}

  s = math.sqrt(0.5)
  gltf = {
      'asset': {'version': '2.0', 'generator': 'dreamjax'},
      'scene': 0,
      'scenes': [{'nodes': [0]}],
      'nodes': [{'mesh': 0, 'rotation': [-s, 0.0, 0.0, s]}],  # -90 deg about x: z-up -> y-up
      'meshes': [{'primitives': [{'attributes': {'POSITION': 0, 'COLOR_0': 1}, 'indices': 2, 'mode': 4,
                                  'material': 0}]}],
      'materials': [{'pbrMetallicRoughness': {'baseColorFactor': [1.0, 1.0, 1.0, 1.0], 'metallicFactor': 0.0,
                                              'roughnessFactor': 1.0}}],
      'buffers': [{'byteLength': len(bin_data)}],
      'bufferViews': [
          {'buffer': 0, 'byteOffset': offsets[0], 'byteLength': len(blobs[0]), 'target': _ARRAY_BUFFER},
          {'buffer': 0, 'byteOffset': offsets[1], 'byteLength': len(blobs[1]), 'target': _ARRAY_BUFFER},
          {'buffer': 0, 'byteOffset': offsets[2], 'byteLength': len(blobs[2]), 'target': _ELEMENT_ARRAY_BUFFER},
      ],
      'accessors': [
          {'bufferView': 0, 'componentType': _FLOAT, 'count': len(positions), 'type': 'VEC3', **minmax(positions)},
          {'bufferView': 1, 'componentType': _FLOAT, 'count': len(colors), 'type': 'VEC3', **minmax(colors)},
          {'bufferView': 2, 'componentType': _UINT32, 'count': len(indices), 'type': 'SCALAR', **minmax(indices)},
      ],
  }
  json_data = json.dumps(gltf, separators=(',', ':')).encode('utf-8')
  json_data += b' ' * (-len(json_data) % 4)
  bin_data += b'\0' * (-len(bin_data) % 4)
  total = 12 + 8 + len(json_data) + 8 + len(bin_data)
  with atomic_write(path, 'wb') as f:
    f.write(struct.pack('<III', _GLB_MAGIC, 2, total))
    f.write(struct.pack('<II', len(json_data), _CHUNK_JSON))
    f.write(json_data)
    f.write(struct.pack('<II', len(bin_data), _CHUNK_BIN))
    f.write(bin_data)
  return pathlib.Path(path)


_WRITERS = {'.obj': write_obj, '.ply': write_ply, '.glb': write_glb}


def save_mesh(mesh: Mesh, path: PathLike) -> pathlib.Path:
  """Writes `mesh` in the format named by the suffix of `path` (.obj, .ply or .glb)."""
  suffix = pathlib.Path(path).suffix.lower()
  if suffix not in _WRITERS:
    raise ValueError(f'unknown mesh format {suffix!r} for {path}; use one of {sorted(_WRITERS)}')
  return _WRITERS[suffix](mesh, path)

"""Tests for dreamjax.mesh: marching cubes of analytic fields and the OBJ / PLY / GLB writers.

References are closed forms (sphere / torus / shell radii, Euler characteristics, normals of analytic shapes) and
independent parsers of the written files (text split, numpy structured dtypes, struct + json).
"""

import json
import math
import os
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamjax import files
from dreamjax import mesh as mesh_lib

RES = 64
RADIUS = 1.0
H = 2.0 * RADIUS / (RES - 1)  # grid spacing of the tests' grid


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _albedo(p):
  """A non-linear albedo, float64 when p is float64: [N, 3] in [0, 1]."""
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  return np.stack([np.sin(3.0 * x) ** 2, 0.5 + 0.4 * y, z * z], axis=-1)


def _sphere_field(center=(0.0, 0.0, 0.0), r0=0.5, peak=100.0, width=0.02):
  center = np.asarray(center, np.float32)

  def fn(p):
    r = np.linalg.norm(p - center, axis=-1)
    return (peak * _sigmoid((r0 - r) / width)).astype(np.float32), _albedo(p).astype(np.float32)
  return fn


def _torus_field(big=0.5, small=0.2, width=0.02):
  def fn(p):
    d = np.sqrt((np.hypot(p[:, 0], p[:, 1]) - big) ** 2 + p[:, 2] ** 2)
    return (100.0 * _sigmoid((small - d) / width)).astype(np.float32), _albedo(p).astype(np.float32)
  return fn


def _euler(faces):
  """V - E + F counted from the face list alone (V = referenced vertices, E = distinct undirected edges)."""
  faces = np.asarray(faces, np.int64)
  edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
  undirected = np.unique(np.sort(edges, axis=1), axis=0)
  return len(np.unique(faces)) - len(undirected) + len(faces)


def _assert_closed_consistent(faces):
  """Closed, consistently wound surface: every directed edge occurs exactly once and its reverse exactly once."""
  faces = np.asarray(faces, np.int64)
  directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
  _, counts = np.unique(directed, axis=0, return_counts=True)
  assert counts.max() == 1, 'a directed edge appears twice: inconsistent winding or non-manifold edge'
  directed_set = set(map(tuple, directed.tolist()))
  assert all((b, a) in directed_set for a, b in directed_set), 'boundary edge: surface is not closed'


def _face_normals(m):
  v = m.vertices.astype(np.float64)
  a, b, c = v[m.faces[:, 0]], v[m.faces[:, 1]], v[m.faces[:, 2]]
  n = np.cross(b - a, c - a)
  return n, (a + b + c) / 3.0


def test_sphere_radius_topology_normals_colours():
  """Sphere of radius 0.5: vertices within one grid spacing of 0.5, Euler characteristic 2, closed and consistently
  wound, face normals point outward, colours equal the analytic albedo at the vertices (float64 reference)."""
  m = mesh_lib.extract_mesh(_sphere_field(), resolution=RES, radius=RADIUS, threshold=50.0)
  chex.assert_shape(m.vertices, (None, 3))
  chex.assert_shape(m.faces, (None, 3))
  chex.assert_shape(m.colors, m.vertices.shape)
  assert m.vertices.dtype == np.float32 and m.faces.dtype == np.int32 and m.colors.dtype == np.float32
  r = np.linalg.norm(m.vertices.astype(np.float64), axis=-1)
  assert np.abs(r - 0.5).max() < H
  assert _euler(m.faces) == 2
  _assert_closed_consistent(m.faces)
  n, centroid = _face_normals(m)
  assert np.mean(np.sum(n * centroid, axis=-1) > 0) > 0.99
  np.testing.assert_allclose(m.colors, _albedo(m.vertices.astype(np.float64)), atol=1e-6, rtol=0)


def test_torus_euler_zero_and_outward():
  """Torus (R=0.5, r=0.2): Euler characteristic 0, vertices within one grid spacing of the tube surface, and face
  normals point away from the tube's core circle."""
  m = mesh_lib.extract_mesh(_torus_field(), resolution=RES, radius=RADIUS, threshold=50.0)
  assert _euler(m.faces) == 0
  _assert_closed_consistent(m.faces)
  v = m.vertices.astype(np.float64)
  d = np.sqrt((np.hypot(v[:, 0], v[:, 1]) - 0.5) ** 2 + v[:, 2] ** 2)
  assert np.abs(d - 0.2).max() < H
  n, c = _face_normals(m)
  core = 0.5 * np.concatenate([c[:, :2] / np.linalg.norm(c[:, :2], axis=-1, keepdims=True),
                               np.zeros_like(c[:, :1])], axis=-1)
  assert np.mean(np.sum(n * (c - core), axis=-1) > 0) > 0.99


def test_hollow_shell_cavity_normals_point_inward():
  """Shell 0.3 < r < 0.6: two closed components (Euler 4); on the cavity wall the normals point toward the centre,
  i.e. toward decreasing density, and on the outer wall away from it."""
  def fn(p):
    r = np.linalg.norm(p, axis=-1)
    d = 100.0 * _sigmoid((r - 0.3) / 0.02) * _sigmoid((0.6 - r) / 0.02)
    return d.astype(np.float32), np.full((len(p), 3), 0.5, np.float32)
  m = mesh_lib.extract_mesh(fn, resolution=RES, radius=RADIUS, threshold=50.0)
  assert _euler(m.faces) == 4
  _assert_closed_consistent(m.faces)
  n, c = _face_normals(m)
  rc = np.linalg.norm(c, axis=-1)
  outward = np.sum(n * c, axis=-1) > 0
  inner = rc < 0.45
  assert inner.any() and (~inner).any()
  assert np.mean(outward[~inner]) > 0.99
  assert np.mean(~outward[inner]) > 0.99


def test_density_outside_bounding_sphere_is_zero():
  """A constant density 100 everywhere gives the bounding sphere itself: |v| within one spacing of radius, Euler 2."""
  def fn(p):
    return np.full((len(p),), 100.0, np.float32), np.zeros((len(p), 3), np.float32)
  m = mesh_lib.extract_mesh(fn, resolution=RES, radius=RADIUS, threshold=50.0)
  r = np.linalg.norm(m.vertices.astype(np.float64), axis=-1)
  assert np.abs(r - RADIUS).max() < H
  assert _euler(m.faces) == 2


def test_default_threshold_is_half_opacity_per_grid_spacing():
  """threshold=None uses tau* = ln 2 / h; for density 200 (1 - r) the surface is the sphere r = 1 - tau*/200."""
  tau = math.log(2.0) / H
  assert mesh_lib.default_threshold(RES, RADIUS) == pytest.approx(tau, rel=1e-12)
  assert mesh_lib.default_threshold(128, 1.4) == pytest.approx(31.44, abs=0.01)

  def fn(p):
    r = np.linalg.norm(p, axis=-1)
    return (200.0 * np.maximum(0.0, 1.0 - r)).astype(np.float32), np.zeros((len(p), 3), np.float32)
  m = mesh_lib.extract_mesh(fn, resolution=RES, radius=RADIUS)
  r = np.linalg.norm(m.vertices.astype(np.float64), axis=-1)
  expected = 1.0 - tau / 200.0
  assert np.abs(r - expected).max() < 0.5 * H
  assert abs(r.mean() - expected) < 0.05 * H


def test_jax_field_chunked_calls():
  """A jitted JAX field works; every call gets exactly `chunk` points; the call count is ceil(inside / chunk) for
  the grid plus ceil(V / chunk) for the colours, and the sphere is still within one spacing of r = 0.5."""
  @jax.jit
  def jfn(p):
    r = jnp.linalg.norm(p, axis=-1)
    return 100.0 * jax.nn.sigmoid((0.5 - r) / 0.02), jnp.clip(0.5 + 0.4 * p, 0.0, 1.0)
  sizes = []

  def fn(p):
    sizes.append(len(p))
    return jfn(p)
  chunk = 7000
  m = mesh_lib.extract_mesh(fn, resolution=RES, radius=RADIUS, threshold=50.0, chunk=chunk)
  axis = np.linspace(-RADIUS, RADIUS, RES)
  g = np.stack(np.meshgrid(axis, axis, axis, indexing='ij'), -1).reshape(-1, 3)
  n_inside = int(np.sum(np.linalg.norm(g, axis=-1) < RADIUS))
  assert set(sizes) == {chunk}
  assert len(sizes) == math.ceil(n_inside / chunk) + math.ceil(len(m.vertices) / chunk)
  r = np.linalg.norm(m.vertices.astype(np.float64), axis=-1)
  assert np.abs(r - 0.5).max() < H
  np.testing.assert_allclose(m.colors, np.clip(0.5 + 0.4 * m.vertices.astype(np.float64), 0, 1), atol=1e-6)


def test_drop_small_fragments():
  """Two separate spheres (r 0.4 and 0.1): kept, they give Euler 4; with min_component_fraction=0.2 only the big one
  remains (Euler 2, every vertex within one spacing of its surface)."""
  big, small = _sphere_field((-0.2, 0, 0), 0.4), _sphere_field((0.6, 0, 0), 0.1)

  def fn(p):
    return np.maximum(big(p)[0], small(p)[0]), _albedo(p).astype(np.float32)
  both = mesh_lib.extract_mesh(fn, resolution=RES, radius=RADIUS, threshold=50.0)
  assert _euler(both.faces) == 4
  one = mesh_lib.extract_mesh(fn, resolution=RES, radius=RADIUS, threshold=50.0, min_component_fraction=0.2)
  assert _euler(one.faces) == 2
  r = np.linalg.norm(one.vertices.astype(np.float64) - np.array([-0.2, 0, 0]), axis=-1)
  assert np.abs(r - 0.4).max() < H
  np.testing.assert_allclose(one.colors, _albedo(one.vertices.astype(np.float64)), atol=1e-6)


@pytest.mark.parametrize('value', [0.0, 3.0])
def test_empty_scene_raises(value):
  """A density that never reaches the threshold raises ValueError naming the threshold and the maximum density."""
  def fn(p):
    return np.full((len(p),), value, np.float32), np.zeros((len(p), 3), np.float32)
  with pytest.raises(ValueError, match=rf'no surface: the density never exceeds threshold 50 \(max {value:g}\); '
                     'the scene may be empty'):
    mesh_lib.extract_mesh(fn, resolution=16, radius=RADIUS, threshold=50.0)


# ------------------------------------------------------------------------------------------------ writers


def _random_mesh(seed=0, v=57, f=91):
  rng = np.random.default_rng(seed)
  colors = rng.uniform(0, 1, (v, 3)).astype(np.float32)
  colors[0] = [0.0, 1.0, 0.5]
  return mesh_lib.Mesh(vertices=rng.normal(size=(v, 3)).astype(np.float32) * 0.7,
                       faces=rng.integers(0, v, (f, 3)).astype(np.int32), colors=colors)


def test_obj_round_trip(tmp_path):
  """OBJ parsed as text gives the vertices, colours (bit-exact float32) and 1-based faces; no temp file left."""
  m = _random_mesh()
  path = mesh_lib.write_obj(m, tmp_path / 'm.obj')
  verts, faces = [], []
  for line in path.read_text().splitlines():
    parts = line.split()
    if parts and parts[0] == 'v':
      verts.append([float(t) for t in parts[1:]])
    elif parts and parts[0] == 'f':
      faces.append([int(t) for t in parts[1:]])
  verts = np.array(verts)
  np.testing.assert_array_equal(verts[:, :3].astype(np.float32), m.vertices)
  np.testing.assert_array_equal(verts[:, 3:].astype(np.float32), m.colors)
  np.testing.assert_array_equal(np.array(faces) - 1, m.faces)
  assert os.listdir(tmp_path) == ['m.obj']


def test_ply_round_trip(tmp_path):
  """Binary PLY: header declares the counts and properties; the body read with numpy gives the float32 vertices,
  uchar colours round(255 c) and the faces exactly, with nothing after the last face."""
  m = _random_mesh(1)
  data = mesh_lib.write_ply(m, tmp_path / 'm.ply').read_bytes()
  end = data.index(b'end_header\n') + len(b'end_header\n')
  header = data[:end].decode('ascii').splitlines()
  assert header[0] == 'ply' and header[1] == 'format binary_little_endian 1.0'
  assert f'element vertex {len(m.vertices)}' in header and f'element face {len(m.faces)}' in header
  assert 'property list uchar int vertex_indices' in header
  props = [h.split()[-1] for h in header if h.startswith('property') and 'list' not in h]
  assert props == ['x', 'y', 'z', 'red', 'green', 'blue']
  vdt = np.dtype([('xyz', '<f4', (3,)), ('rgb', 'u1', (3,))])
  fdt = np.dtype([('n', 'u1'), ('idx', '<i4', (3,))])
  assert len(data) == end + len(m.vertices) * vdt.itemsize + len(m.faces) * fdt.itemsize
  vert = np.frombuffer(data, vdt, count=len(m.vertices), offset=end)
  face = np.frombuffer(data, fdt, count=len(m.faces), offset=end + vert.nbytes)
  np.testing.assert_array_equal(vert['xyz'], m.vertices)
  expected_rgb = np.round(m.colors.astype(np.float64) * 255.0).astype(np.uint8)
  np.testing.assert_array_equal(vert['rgb'], expected_rgb)
  np.testing.assert_array_equal(face['n'], 3)
  np.testing.assert_array_equal(face['idx'], m.faces)


def _srgb_to_linear_ref(c):
  c = np.asarray(c, np.float64)
  out = np.empty_like(c)
  lo = c <= 0.04045
  out[lo] = c[lo] / 12.92
  out[~lo] = ((c[~lo] + 0.055) / 1.055) ** 2.4
  return out


def _read_glb(data):
  magic, version, total = struct.unpack_from('<III', data, 0)
  assert magic == 0x46546C67 and version == 2 and total == len(data)
  jlen, jtype = struct.unpack_from('<II', data, 12)
  assert jtype == 0x4E4F534A and jlen % 4 == 0
  doc = json.loads(data[20:20 + jlen].decode('utf-8'))
  blen, btype = struct.unpack_from('<II', data, 20 + jlen)
  assert btype == 0x004E4942 and blen % 4 == 0 and 28 + jlen + blen == len(data)
  binary = data[28 + jlen:28 + jlen + blen]
  assert doc['buffers'][0]['byteLength'] <= blen

  def accessor(i):
    acc = doc['accessors'][i]
    view = doc['bufferViews'][acc['bufferView']]
    dtype = {5126: '<f4', 5125: '<u4'}[acc['componentType']]
    width = {'SCALAR': 1, 'VEC3': 3}[acc['type']]
    offset = view.get('byteOffset', 0) + acc.get('byteOffset', 0)
    assert offset % 4 == 0
    arr = np.frombuffer(binary, dtype, count=acc['count'] * width, offset=offset)
    return acc, arr.reshape(acc['count'], width) if width > 1 else arr
  return doc, accessor


def _quat_rotate(q, v):
  x, y, z, w = q
  u = np.array([x, y, z])
  return v + 2.0 * np.cross(u, np.cross(u, v) + w * v)


@pytest.mark.parametrize('linear', [True, False])
def test_glb_round_trip(tmp_path, linear):
  """GLB parsed with struct/json/numpy: POSITION and indices equal the mesh exactly, COLOR_0 equals the sRGB->linear
  transfer function of the colours (float64 reference) or the colours themselves, min/max equal the arrays' extrema,
  and the node rotation maps our z-up to glTF's y-up."""
  m = _random_mesh(2)
  path = mesh_lib.write_glb(m, tmp_path / 'm.glb', srgb_to_linear_colors=linear)
  doc, accessor = _read_glb(path.read_bytes())
  assert doc['asset']['version'] == '2.0'
  prim = doc['meshes'][0]['primitives'][0]
  assert prim.get('mode', 4) == 4
  pacc, pos = accessor(prim['attributes']['POSITION'])
  cacc, col = accessor(prim['attributes']['COLOR_0'])
  iacc, idx = accessor(prim['indices'])
  np.testing.assert_array_equal(pos, m.vertices)
  np.testing.assert_array_equal(idx.reshape(-1, 3), m.faces.astype(np.uint32))
  if linear:
    np.testing.assert_allclose(col, _srgb_to_linear_ref(m.colors), atol=1e-7, rtol=1e-6)
  else:
    np.testing.assert_array_equal(col, m.colors)
  for acc, arr in ((pacc, pos), (cacc, col)):
    np.testing.assert_array_equal(np.array(acc['min'], np.float32), arr.min(0))
    np.testing.assert_array_equal(np.array(acc['max'], np.float32), arr.max(0))
  assert iacc['min'] == [int(m.faces.min())] and iacc['max'] == [int(m.faces.max())]
  np.testing.assert_allclose(_quat_rotate(doc['nodes'][0]['rotation'], np.array([0.0, 0.0, 1.0])), [0, 1, 0],
                             atol=1e-7)


def test_save_mesh_dispatch_and_atomic(tmp_path):
  """save_mesh picks the format from the suffix; an unknown suffix raises; a failing write leaves the old file
  untouched and no temp file behind."""
  m = _random_mesh(3)
  assert mesh_lib.save_mesh(m, tmp_path / 'a.glb').read_bytes()[:4] == b'glTF'
  assert mesh_lib.save_mesh(m, tmp_path / 'a.ply').read_bytes()[:4] == b'ply\n'
  assert mesh_lib.save_mesh(m, tmp_path / 'a.obj').read_text().count('\nv ') == len(m.vertices)
  with pytest.raises(ValueError, match='unknown mesh format'):
    mesh_lib.save_mesh(m, tmp_path / 'a.stl')
  target = tmp_path / 'a.ply'
  before = target.read_bytes()
  with pytest.raises(RuntimeError):
    with files.atomic_write(target) as f:
      f.write(b'half a file')
      raise RuntimeError('disk full')
  assert target.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ['a.glb', 'a.obj', 'a.ply']

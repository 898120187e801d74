"""The paper's evaluation harness (dreamjax/evaluate): R@1 arithmetic against hand-computed examples, CLIP
preprocessing against the processor the fixture folder declares, the tiny random CLIP of tests/fixtures/tiny_clip
(msgpack and PyTorch-layout safetensors) against its PyTorch references, the protocol's cameras, the table format,
the command lines end to end (CLIP on finished tiny runs, the toy world through launch + evaluate) and their
one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from dreamjax import checkpoint as ckpt_lib
from dreamjax import train_state as ts_lib
from dreamjax import visualize
from dreamjax.evaluate import clip_model, harness, launch, retrieval
from dreamjax.evaluate import protocol as proto_lib
from dreamjax.evaluate import table as table_lib
from dreamjax.evaluate.preprocess import ClipPreprocess
from dreamjax.priors.weights import WeightsError

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_CLIP = ROOT / "tests" / "fixtures" / "tiny_clip"


def _run(module, *args, timeout=600):
  env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _error_line(proc) -> str:
  """The one line a failed command printed last on stderr."""
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  return lines[-1] if lines else ""


def _fake_run(workdir, prompt, seed=0, step=None):
  """A run directory of configs/tiny.py whose checkpoint holds the initial scene at `step` (default: finished)."""
  c = tiny.get_config()
  c.prompt, c.seed = prompt, seed
  ckpt_lib.save_config(workdir, c)
  state = ts_lib.create(c)
  state = state.replace(step=jnp.int32(c.train.num_steps if step is None else step))
  ckpt = ckpt_lib.Checkpointer(workdir)
  ckpt.save(int(state.step), state, force=True)
  ckpt.wait()
  ckpt.close()
  return workdir


@pytest.fixture(scope="module")
def clip_msgpack():
  return clip_model.load(str(TINY_CLIP), "msgpack")


# ------------------------------------------------------------------------------------------------ retrieval


def test_r_at_1_by_hand_ties_missing_caption_and_sem():
  """Hand-computed: render 0 retrieves its caption; render 1 ties its caption with another (a failure by the
  documented rule); render 2's caption is second. A missing true caption is appended, a present one is found.
  SEM = std(ddof=1) / sqrt(n)."""
  sims = np.array([[0.9, 0.1, 0.3],
                   [0.5, 0.5, 0.2],
                   [0.1, 0.2, 0.8]])
  true = np.array([0, 1, 1])
  np.testing.assert_array_equal(retrieval.ranks(sims, true), [0, 1, 1])
  np.testing.assert_array_equal(retrieval.hits_at_1(sims, true), [True, False, False])
  np.testing.assert_array_equal(retrieval.ranks(sims[:, ::-1], 0), [1, 2, 0])  # one index for all renders
  # cosine similarity of unnormalised embeddings: [2, 0] vs [1, 0], [0, 3], [1, 1]
  np.testing.assert_allclose(retrieval.similarities([[2.0, 0.0]], [[1, 0], [0, 3], [1, 1]]),
                             [[1.0, 0.0, np.sqrt(0.5)]], atol=1e-12)

  assert retrieval.caption_set(["a cat.", "a dog."], "a cow.") == (["a cat.", "a dog.", "a cow."], 2)
  assert retrieval.caption_set(["a cat.", "a dog."], " a dog. ") == (["a cat.", "a dog."], 1)

  # runs scoring 1, 0 and 1/2 (two renders): mean 1/2, std(ddof=1) = 1/2, SEM = 1/(2 sqrt(3))
  scores = [retrieval.run_score(h) for h in ([1], [0], [True, False])]
  s = retrieval.summarize(scores, renders=4)
  assert (s.mean, s.runs, s.renders) == (0.5, 3, 4)
  assert s.sem == pytest.approx(0.5 / np.sqrt(3), abs=1e-12)
  assert retrieval.summarize([1.0]).sem is None  # one run: no standard error
  with pytest.raises(ValueError):
    retrieval.summarize([])


# ------------------------------------------------------------------------------------------------ preprocessing


def test_preprocessing_matches_the_declared_processor():
  """ClipPreprocess, read from the folder's preprocessor_config.json, equals transformers' CLIPImageProcessor from
  the same folder on 8-bit images: a non-square image (bicubic resize + centre crop) and one at the input size (no
  resampling: then it is only (x / 255 - mean) / std)."""
  from transformers import CLIPImageProcessor
  ref = CLIPImageProcessor.from_pretrained(str(TINY_CLIP))
  ours = ClipPreprocess.from_dict(json.loads((TINY_CLIP / "preprocessor_config.json").read_text()))
  assert ours.input_size == (30, 30)
  rng = np.random.default_rng(0)
  for shape in ((41, 53, 3), (30, 30, 3)):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    want = ref(images=[image], return_tensors="np")["pixel_values"]
    got = ours(image[None] / 255.0)
    assert got.shape == want.shape == (1, 3, 30, 30)
    np.testing.assert_allclose(got, want, atol=1e-5)
  mean, std = np.array(ref.image_mean)[:, None, None], np.array(ref.image_std)[:, None, None]
  np.testing.assert_allclose(got[0], (image.transpose(2, 0, 1) / 255.0 - mean) / std, atol=1e-5)


# ------------------------------------------------------------------------------------------------ CLIP loading


def test_both_weight_formats_give_equal_embeddings_matching_pytorch(clip_msgpack):
  """flax_model.msgpack and model.safetensors (PyTorch layout, read without torch) give the same image and text
  embeddings, equal to PyTorch CLIPModel's stored in reference.npz; the tokenizer gives the same ids."""
  ref = np.load(TINY_CLIP / "reference.npz")
  st = clip_model.load(str(TINY_CLIP), "safetensors")
  assert (clip_msgpack.weights, st.weights) == ("flax_model.msgpack", "model.safetensors")
  ids, _ = clip_msgpack.token_ids(list(ref["captions"]))
  np.testing.assert_array_equal(ids, ref["input_ids"])
  for clip in (clip_msgpack, st):
    np.testing.assert_allclose(clip.embed_pixels(ref["pixel_values"]), ref["image_embeds"], atol=2e-5)
    np.testing.assert_allclose(clip.embed_texts(list(ref["captions"])), retrieval.normalize(ref["text_embeds"]),
                               atol=2e-5)
  np.testing.assert_allclose(clip_msgpack.embed_pixels(ref["pixel_values"]), st.embed_pixels(ref["pixel_values"]),
                             atol=1e-6)


def test_clip_sources_that_cannot_load_say_why(tmp_path):
  with pytest.raises(WeightsError, match="no such folder"):
    clip_model.load(str(tmp_path / "nowhere"))
  (tmp_path / "pt").mkdir()
  for name in ("config.json", "preprocessor_config.json", "vocab.json", "merges.txt"):
    (tmp_path / "pt" / name).write_bytes((TINY_CLIP / name).read_bytes())
  (tmp_path / "pt" / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(WeightsError, match="without torch"):
    clip_model.load(str(tmp_path / "pt"))
  assert clip_model.weight_file(["model.safetensors", "flax_model.msgpack"], "x") == "flax_model.msgpack"


# ------------------------------------------------------------------------------------------------ protocol


def test_protocol_cameras_and_white_background():
  """Evenly spaced azimuths from the front; cameras at 30° elevation on the orbit's sphere looking at the origin,
  azimuth 0 on +x, focal = focal scale × size; re-compositing puts empty pixels on white and leaves opaque ones."""
  p = proto_lib.Protocol.evenly(4)
  assert p.azimuths == (0.0, 90.0, 180.0, 270.0) and p.elevation == 30.0 and p.background == (1.0, 1.0, 1.0)
  assert proto_lib.Protocol().azimuths == (0.0,)  # Dream Fields: one render
  orbit = visualize.Orbit(distance=1.5, focal=1.2)
  cams = p.cameras(orbit, 224)
  o = np.asarray(cams.origins)
  np.testing.assert_allclose(np.linalg.norm(o, axis=-1), 1.5, atol=1e-5)
  np.testing.assert_allclose(o[:, 2], 1.5 * np.sin(np.radians(30.0)), atol=1e-5)
  np.testing.assert_allclose(o[0], [1.5 * np.cos(np.radians(30.0)), 0.0, 0.75], atol=1e-5)
  np.testing.assert_allclose(o[1, :2], [0.0, 1.5 * np.cos(np.radians(30.0))], atol=1e-5)
  back = np.asarray(cams.c2w)[..., 2]  # the camera looks along -back: toward the origin
  np.testing.assert_allclose(back, o / 1.5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(cams.focal), 1.2 * 224)
  with pytest.raises(ValueError):
    proto_lib.Protocol.evenly(0)

  modes = np.full((2, 3, 3), 0.25, np.float32)  # 2 pixels × 3 modes, composited over a grey background
  bg = np.full((2, 3), 0.5, np.float32)
  out = proto_lib.over_background(modes, np.array([0.0, 1.0]), bg, (1.0, 1.0, 1.0))
  np.testing.assert_allclose(out[0], 0.25 - 0.5 + 1.0)  # empty: the scene's colour (0) plus white
  np.testing.assert_allclose(out[1], 0.25)  # opaque: unchanged


# ------------------------------------------------------------------------------------------------ table


def test_table_is_laid_out_like_table_1():
  s = lambda m, e, n=2: retrieval.Summary(mean=m, sem=e, runs=n, renders=2 * n)
  models = {"B/32": {"color": s(0.751, 0.02), "geo": s(0.425, 0.031)}, "L/14": {"color": s(0.797, None, 1),
                                                                              "geo": s(0.585, None, 1)}}
  text = table_lib.clip_markdown(models, method="DreamFusion", captions=153)
  lines = text.splitlines()
  assert lines[0] == "| Method | B/32 Color | B/32 Geo | L/14 Color | L/14 Geo |"
  assert lines[1] == "|---|---|---|---|---|"
  assert lines[2] == "| DreamFusion | 75.1 ± 2.0 | 42.5 ± 3.1 | 79.7 | 58.5 |"
  assert "2 run(s), 2 render(s) per run, against 153 captions" in text
  doc = json.loads(table_lib.to_json({"models": models}))
  assert doc["models"]["B/32"]["color"] == {"mean": 0.751, "sem": 0.02, "runs": 2, "renders": 4}


# ------------------------------------------------------------------------------------------------ launch


def test_launch_shards_partition_the_jobs_and_bad_shards_are_refused():
  captions = ["a cat.", "a dog.", "a red car."]
  every = launch.jobs_of(captions, [0, 1], (0, 1))
  assert [(j.index, j.seed) for j in every] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
  shards = [launch.jobs_of(captions, [0, 1], (i, 4)) for i in range(4)]
  assert sorted(j for s in shards for j in s) == sorted(every)  # disjoint and complete
  assert len({j.workdir("r") for j in every}) == len(every)
  assert every[5].workdir("r") == pathlib.Path("r/002_a_red_car_seed1")
  for bad in ("3/2", "2/2", "0/0", "1", "a/b"):
    with pytest.raises(ValueError, match="--shard"):
      launch.parse_shard(bad)
  assert launch.parse_shard("1/3") == (1, 3)


# ------------------------------------------------------------------------------------------------ end to end


def test_evaluate_cli_scores_finished_runs_with_clip(tmp_path, clip_msgpack):
  """Two finished runs (tiny scenes; one caption from the COCO set, one not in it) through
  `python -m dreamjax.evaluate`: the markdown and JSON agree with each other and with the retrieval functions
  applied to the protocol's renders here."""
  from dreamjax import prompts
  coco = prompts.coco_captions()
  runs = [_fake_run(tmp_path / "a", coco[3], seed=0), _fake_run(tmp_path / "b", "a red car.", seed=1)]
  proc = _run("dreamjax.evaluate", "--workdirs", runs[0], runs[1], "--clip", TINY_CLIP, "--views", 2,
              "--out", tmp_path / "out" / "table", "--renders_dir", tmp_path / "renders")
  assert proc.returncode == 0, proc.stderr[-2000:]
  doc = json.loads((tmp_path / "out" / "table.json").read_text())
  md = (tmp_path / "out" / "table.md").read_text()
  m = doc["models"]["tiny_clip"]
  assert doc["captions"] == 153 and doc["protocol"]["azimuths"] == [0.0, 180.0]
  assert m["color"]["runs"] == 2 and m["color"]["renders"] == 4 and m["weights"] == "flax_model.msgpack"
  assert f"| dreamjax | {table_lib.cell(retrieval.Summary(**m['color']))} |" in md
  assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == ["a_30.png", "b_30.png"]

  protocol = proto_lib.Protocol.evenly(2)
  for kind in proto_lib.KINDS:
    per_run = []
    for workdir, row in zip(runs, doc["runs"]):
      run = harness.load_run(workdir)
      captions, true_index = retrieval.caption_set(coco, run.prompt)
      assert len(captions) == (153 if run.prompt in coco else 154)
      images = harness.render_run(run, protocol, 30)[kind]
      assert images.shape == (2, 30, 30, 3) and images.min() >= 0 and images.max() <= 1
      sims = retrieval.similarities(clip_msgpack.embed_images(images), clip_msgpack.embed_texts(captions))
      np.testing.assert_array_equal(row["scores"]["tiny_clip"][kind]["ranks"], retrieval.ranks(sims, true_index))
      per_run.append(retrieval.run_score(retrieval.hits_at_1(sims, true_index)))
    want = retrieval.summarize(per_run, 4)
    assert m[kind]["mean"] == pytest.approx(want.mean) and m[kind]["sem"] == pytest.approx(want.sem)


def test_bad_input_ends_in_one_line_errors(tmp_path):
  """Missing workdir, unfinished run, bad --clip path, no --clip, and a bad --shard: exit 2 with one line."""
  unfinished = _fake_run(tmp_path / "u", "a red car.", step=10)
  finished = _fake_run(tmp_path / "f", "a red car.")
  cases = [
      (("dreamjax.evaluate", "--workdirs", tmp_path / "missing", "--clip", TINY_CLIP), "no such run directory"),
      (("dreamjax.evaluate", "--workdirs", unfinished, "--clip", TINY_CLIP), "unfinished (checkpoint step 10 of 40)"),
      (("dreamjax.evaluate", "--workdirs", finished, "--clip", tmp_path / "no_clip"), "no such folder"),
      (("dreamjax.evaluate", "--workdirs", finished), "pass at least one CLIP model"),
      (("dreamjax.evaluate.launch", "--config", "configs/tiny.py", "--shard", "3/2"), "--shard '3/2'"),
  ]
  for args, message in cases:
    proc = _run(*args, timeout=300)
    line = _error_line(proc)
    assert proc.returncode == 2, (args, proc.stderr[-1500:])
    assert message in line and line.startswith(("evaluate: error:", "evaluate.launch: error:")), (args, line)
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]


def test_toy_world_launch_then_evaluate(tmp_path):
  """The toy world through both commands: launch trains one caption × one seed (a few steps), a second launch skips
  the finished run, and evaluate reports toy R-precision with the toy classifier as markdown and JSON equal to
  `toy.evaluate.score_params` on the run's parameters."""
  from dreamjax.toy import classifier as clf_lib
  from dreamjax.toy import evaluate as toy_eval
  captions = tmp_path / "captions.txt"
  captions.write_text("a red cube\n")
  common = ("--config", "configs/toy.py", "--captions", captions, "--seeds", "0", "--workdir_root", tmp_path / "runs",
            "--config.train.num_steps=8", "--config.train.preview_every=0", "--config.train.log_every=4",
            "--config.optim.warmup_steps=2", "--config.shading.albedo_only_steps=2",
            "--config.render.batch=4")  # one camera on each of the 4 test devices
  proc = _run("dreamjax.evaluate.launch", *common)
  assert proc.returncode == 0, proc.stderr[-2000:]
  workdir = tmp_path / "runs" / "000_a_red_cube_seed0"
  assert ckpt_lib.latest_step(workdir) == 8
  again = _run("dreamjax.evaluate.launch", *common)
  assert again.returncode == 0 and "finished already" in again.stdout, again.stderr[-2000:]

  proc = _run("dreamjax.evaluate", "--workdirs", workdir, "--toy_views", 4, "--out", tmp_path / "toy")
  assert proc.returncode == 0, proc.stderr[-2000:]
  doc = json.loads((tmp_path / "toy.json").read_text())
  assert doc["kind"] == "toy" and doc["runs"][0]["prompt"] == "a red cube"
  run = harness.load_run(workdir)
  want = toy_eval.score_params(run.params, run.config, run.prompt, clf_lib.load(), num_views=4)
  for key in ("color", "geo", "iou"):
    assert doc["runs"][0][key] == pytest.approx(want[key])
    assert doc["models"]["toy classifier"][key]["mean"] == pytest.approx(want[key])
  md = (tmp_path / "toy.md").read_text()
  assert "| a red cube |" in md and "Toy R-precision" in md

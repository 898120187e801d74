"""Bad input and faults, as a user meets them: every CLI answers a bad value, path or flag with exactly one line
`<prog>: error: ...` (no traceback) and exit status 2 before anything loads, leaving every file as it was; a run
survives a second process, Ctrl-C / SIGTERM, a corrupt checkpoint, a killed export and a truncated metrics file with
nothing lost but the steps since its last checkpoint."""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dreamjax import metrics_log
from dreamjax import train
from dreamjax import train_state as ts_lib
from dreamjax import train_step as step_lib
from dreamjax import workdir as workdir_lib
from dreamjax.priors import base as prior_base

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ["--config", "configs/tiny.py", "--config.prompt=a red cube"]
RUN = TINY + ["--config.train.num_steps=12", "--config.train.checkpoint_every=4", "--config.train.log_every=2",
              "--config.train.preview_every=0"]


def _start(module, args, cwd=ROOT):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _run(module, args, cwd=ROOT, timeout=300):
  p = _start(module, args, cwd)
  out, err = p.communicate(timeout=timeout)
  return p.returncode, out, err


def _tree_digest(folder: pathlib.Path) -> dict:
  """{relative path: sha256} of every file below folder (folders included as entries, so a new one shows)."""
  if not folder.exists():
    return {}
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
          for p in sorted(folder.rglob("*"))}


def _one_error_line(prog, rc, err, expected):
  lines = [l for l in err.splitlines() if l.strip()]
  assert rc == 2, (rc, err[-1500:])
  assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err, err[-1500:]
  assert expected in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------ bad input

def _bad_inputs(tmp: pathlib.Path):
  """(module, args, prog, expected text of the error line) for each bad input."""
  a_file = tmp / "a_file"
  wd = str(tmp / "wd")
  return {
      "unknown field": ("dreamjax.train", TINY + ["--config.train.num_stepz=5", "--workdir", wd], "train",
                        "--config.train.num_stepz: the config has no field 'num_stepz'; did you mean 'num_steps'?"),
      "unknown section": ("dreamjax.train", TINY + ["--config.nosuch=1", "--workdir", wd], "train",
                          "--config.nosuch: the config has no field 'nosuch'"),
      "missing config file": ("dreamjax.train", TINY + ["--config=nope.py", "--workdir", wd], "train",
                              "--config nope.py does not exist"),
      "config file with a syntax error": ("dreamjax.train", ["--config", str(tmp / "broken.py"), "--workdir", wd],
                                          "train", "line 1: invalid syntax"),
      "wrong type": ("dreamjax.train", TINY + ["--config.train.num_steps=abc", "--workdir", wd], "train",
                     "--config.train.num_steps=abc"),
      "interval 0": ("dreamjax.train", TINY + ["--config.train.log_every=0", "--workdir", wd], "train",
                     "config.train.log_every must be >= 1"),
      "NaN learning rate": ("dreamjax.train", TINY + ["--config.optim.lr_init=nan", "--workdir", wd], "train",
                            "config.optim.lr_init must be a finite number"),
      "huge learning rate": ("dreamjax.train", TINY + ["--config.optim.lr_peak=1e30", "--workdir", wd], "train",
                             "config.optim.lr_peak must be in [0, 1]"),
      "NaN guidance": ("dreamjax.train", TINY + ["--config.distill.guidance_scale=nan", "--workdir", wd], "train",
                       "config.distill.guidance_scale must be a finite number"),
      "preview size 0": ("dreamjax.train", TINY + ["--config.train.preview_size=0", "--workdir", wd], "train",
                         "config.train.preview_size must be in [1, 4096]"),
      "video size 0": ("dreamjax.train", TINY + ["--config.export.video_size=0", "--workdir", wd], "train",
                       "config.export.video_size must be in [1, 4096]"),
      "t_min >= t_max": ("dreamjax.train", TINY + ["--config.distill.t_min=0.9", "--config.distill.t_max=0.5",
                                                   "--workdir", wd], "train", "must be < config.distill.t_max"),
      "empty prompt": ("dreamjax.train", ["--config", "configs/tiny.py", "--config.prompt=", "--workdir", wd],
                       "train", "config.prompt is empty"),
      "no --workdir": ("dreamjax.train", TINY, "train", "--workdir"),
      "workdir is a file": ("dreamjax.train", TINY + ["--workdir", str(a_file)], "train", "is a file"),
      "workdir under a file": ("dreamjax.train", TINY + ["--workdir", str(a_file / "run")], "train",
                               "which is a file"),
      "workdir not writable": ("dreamjax.train", TINY + ["--workdir", "/proc/dreamjax_run"], "train",
                               "--workdir /proc/dreamjax_run is not writable"),
      "stray argument": ("dreamjax.train", TINY + ["--workdir", wd, "extra"], "train", "unexpected arguments"),
      "preview size 0 (render_preview)": ("dreamjax.render_preview", TINY + ["--size", "0"], "render_preview",
                                          "--size must be >= 1"),
      "negative preview size": ("dreamjax.render_preview", TINY + ["--size=-8"], "render_preview",
                                "--size must be >= 1"),
      "preview --out is a folder": ("dreamjax.render_preview", TINY + ["--out", str(tmp)], "render_preview",
                                    "is a folder"),
      "preview --out under a file": ("dreamjax.render_preview", TINY + ["--out", str(a_file / "p.png")],
                                     "render_preview", "which is a file"),
      "preview config value": ("dreamjax.render_preview", TINY + ["--config.render.radius=-1"], "render_preview",
                               "config.render.radius must be > 0"),
      "export of a folder that is no run": ("dreamjax.export", ["--workdir", str(tmp)], "export",
                                            "is not a dreamjax run directory"),
      "negative export size": ("dreamjax.export", ["--workdir", str(tmp), "--size=-4"], "export",
                               "--size must be >= 1"),
      "export --out under a file": ("dreamjax.export", ["--workdir", str(tmp), "--out", str(a_file / "x")],
                                    "export", "which is a file"),
      "bench steps 0": ("dreamjax.bench", ["--steps=0"], "bench", "--steps must be >= 1"),
      "bench unknown field": ("dreamjax.bench", ["--config.render.heigth=8"], "bench",
                              "--config.render.heigth: the config has no field 'heigth'; did you mean 'height'?"),
      "toy.evaluate negative steps": ("dreamjax.toy.evaluate", ["--steps=-5"], "toy.evaluate", "--steps must be"),
      "toy.evaluate unknown prompt": ("dreamjax.toy.evaluate", ["--prompts", "a plaid dodecahedron", "--steps", "200"],
                                      "toy.evaluate", "dodecahedron"),
  }


BAD_INPUTS = sorted(_bad_inputs(pathlib.Path("/tmp")))


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_changes_nothing(case, tmp_path):
  """Each bad input: exit 2, one error line naming the field or path, and the folder around it byte-identical (no
  workdir left behind)."""
  (tmp_path / "a_file").write_text("not a folder")
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  module, args, prog, expected = _bad_inputs(tmp_path)[case]
  before = _tree_digest(tmp_path)
  rc, _, err = _run(module, args, timeout=120)
  _one_error_line(prog, rc, err, expected)
  assert _tree_digest(tmp_path) == before


# ------------------------------------------------------------------------------------------------ faults

@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> pathlib.Path:
  """A finished 12-step tiny run (checkpoints at 4, 8, 12; metrics every 2 steps; exports)."""
  wd = tmp_path_factory.mktemp("reliability") / "run"
  rc, _, err = _run("dreamjax.train", RUN + ["--workdir", str(wd)])
  assert rc == 0, err[-2000:]
  return wd


def _copy(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  wd = tmp_path / "run"
  shutil.copytree(run, wd)
  return wd


def _checkpoint_steps(wd):
  return sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())


def _metric_steps(wd):
  """Steps of metrics.jsonl, read by a strict JSON parser (NaN / Infinity refused)."""
  def refuse(constant):
    raise ValueError(f"non-standard JSON constant {constant}")
  return [json.loads(line, parse_constant=refuse)["step"] for line in (wd / "metrics.jsonl").read_text().splitlines()]


def test_a_live_run_holds_its_workdir_and_a_dead_one_does_not(finished_run, tmp_path):
  """A second process is refused (one line, nothing changed) while another holds the workdir; the lock of a process
  killed with SIGKILL does not block a later --resume."""
  wd = _copy(finished_run, tmp_path)
  lock = workdir_lib.Lock(wd)
  before = _tree_digest(wd)
  rc, _, err = _run("dreamjax.train", RUN + ["--workdir", str(wd), "--resume"])
  lock.release()
  _one_error_line("train", rc, err, f"--workdir {wd} is in use by a running dreamjax process (pid {os.getpid()})")
  assert _tree_digest(wd) == before
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                             "from dreamjax import workdir; workdir.Lock(sys.argv[2]); print('held', flush=True); "
                             "time.sleep(600)", str(ROOT), str(wd)], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  holder.kill()
  holder.wait()
  rc, out, err = _run("dreamjax.train", RUN + ["--workdir", str(wd), "--resume"])
  assert rc == 0, err[-1500:]
  assert "is a finished run (step 12, exports complete); nothing to do" in out


def test_stop_request_takes_sigint_and_sigterm_alike_and_restores_the_handlers():
  """Both signals go through one handler: the first sets `requested` to the signal's name, a second raises
  KeyboardInterrupt at once, and leaving the block puts back the handlers that were there. (So the process-level test
  below runs one signal; SIGTERM to a multi-host run is tested end to end in tests/test_multihost.py.)"""
  from dreamjax import stop_signals
  before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  for sig in (signal.SIGINT, signal.SIGTERM):
    with stop_signals.StopRequest() as stop:
      assert stop.requested is None
      os.kill(os.getpid(), sig)
      deadline = time.time() + 5
      while stop.requested is None and time.time() < deadline:
        time.sleep(0.01)
      assert stop.requested == sig.name
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), sig)
        time.sleep(1)
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before


def test_a_signal_saves_the_current_step(finished_run, tmp_path):
  """Ctrl-C mid-run (SIGINT, the handler SIGTERM shares): exit 130 with one line, a checkpoint of the step it stopped
  after, metrics up to that step, and --resume continues from there."""
  sig = signal.SIGINT
  wd = _copy(finished_run, tmp_path)
  long_run = RUN[:-4] + ["--config.train.num_steps=4000", "--config.train.checkpoint_every=1000",
                         "--config.train.log_every=2", "--config.train.preview_every=0"]
  p = _start("dreamjax.train", long_run + ["--workdir", str(wd), "--resume"])
  deadline = time.time() + 240
  while time.time() < deadline and max(_metric_steps(wd)) < 16:
    time.sleep(0.5)
  p.send_signal(sig)
  _, err = p.communicate(timeout=120)
  lines = [l for l in err.splitlines() if l.strip() and "it/s" not in l and "s/it" not in l]
  assert p.returncode == 130, err[-1500:]
  assert len(lines) == 1 and f"stopped by {sig.name} after step" in lines[0], lines
  stopped = int(lines[0].split("after step ")[1].split(";")[0])
  assert stopped >= 16 and _checkpoint_steps(wd)[-1] == stopped
  assert all(s <= stopped for s in _metric_steps(wd))
  rc, _, err = _run("dreamjax.train", long_run[:-4] + ["--config.train.num_steps=" + str(stopped + 2),
                                                       "--config.train.checkpoint_every=1000",
                                                       "--config.train.log_every=2", "--config.train.preview_every=0",
                                                       "--workdir", str(wd), "--resume"])
  assert rc == 0, err[-1500:]
  steps = _metric_steps(wd)
  assert _checkpoint_steps(wd)[-1] == stopped + 2 and steps == sorted(set(steps)) and steps[-1] == stopped + 2


def test_a_corrupt_newest_checkpoint_and_a_truncated_metrics_line(finished_run, tmp_path):
  """Resume skips the unreadable newest checkpoint with one warning line naming its step, moves it aside (deletes
  nothing), continues from the one before, repairs metrics.jsonl (the cut line, and the steps after the restored
  checkpoint, are not kept twice) and keeps it strict JSON."""
  wd = _copy(finished_run, tmp_path)
  data = [p for p in (wd / "checkpoints" / "12").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data
  for p in data:
    p.write_bytes(b"\x00garbage" * 8)
  corrupt = _tree_digest(wd / "checkpoints" / "12")
  with open(wd / "metrics.jsonl", "a") as f:
    f.write('{"step": 13, "loss": 0.5')  # a write cut by a kill
  rc, out, err = _run("dreamjax.train", RUN[:-4] + ["--config.train.num_steps=14", "--config.train.checkpoint_every=4",
                                                    "--config.train.log_every=2", "--config.train.preview_every=0",
                                                    "--workdir", str(wd), "--resume"])
  assert rc == 0, err[-1500:]
  warnings = [l for l in out.splitlines() if "unreadable" in l]
  assert len(warnings) == 1 and "checkpoint step 12 is unreadable" in warnings[0], out
  assert "resuming from step 8" in warnings[0] and "TensorStore" not in warnings[0]
  assert _tree_digest(wd / "corrupt_checkpoints" / "12") == corrupt
  assert _metric_steps(wd) == [2, 4, 6, 8, 10, 12, 14]
  assert _checkpoint_steps(wd)[-1] == 14


def test_a_killed_export_is_redone_on_resume(finished_run, tmp_path):
  """An export cut short (a mesh missing, its temp file left, no completion marker) is redone by --resume; the stale
  temp file is removed."""
  wd = _copy(finished_run, tmp_path)
  (wd / "export" / workdir_lib.EXPORT_MARKER).unlink()
  (wd / "export" / "mesh.obj").unlink()
  stale = wd / "export" / ".mesh.k1ll3d.tmp.obj"
  stale.write_text("half a mesh")
  rc, out, err = _run("dreamjax.train", RUN + ["--workdir", str(wd), "--resume"])
  assert rc == 0, err[-1500:]
  assert (wd / "export" / "mesh.obj").stat().st_size > 0 and not stale.exists()
  assert workdir_lib.export_complete(wd / "export", 12) and f"wrote {wd / 'export' / 'mesh.obj'}" in out


def test_resume_refuses_a_changed_missing_or_unreadable_config(finished_run, tmp_path):
  """--resume compares every trajectory field (shading here, not one of the old seven sections) and refuses a run
  whose config.json is missing or unreadable; nothing in the workdir changes."""
  wd = _copy(finished_run, tmp_path)
  before = _tree_digest(wd)
  rc, _, err = _run("dreamjax.train", RUN + ["--config.shading.ambient=0.3", "--workdir", str(wd), "--resume"])
  _one_error_line("train", rc, err, "shading.ambient: 0.1 -> 0.3")
  assert _tree_digest(wd) == before
  (wd / "config.json").write_text("{not json")
  before = _tree_digest(wd)
  rc, _, err = _run("dreamjax.train", RUN + ["--workdir", str(wd), "--resume"])
  _one_error_line("train", rc, err, "config.json")
  (wd / "config.json").unlink()
  rc, _, err = _run("dreamjax.train", RUN + ["--workdir", str(wd), "--resume"])
  _one_error_line("train", rc, err, "no config.json")
  before.pop("config.json")
  assert _tree_digest(wd) == before


# ------------------------------------------------------------------------------------------------ in-process

def _poisoned(tx: optax.GradientTransformation, bad_steps) -> optax.GradientTransformation:
  """tx whose update is NaN at the optimiser's own steps in bad_steps (counted by an extra state entry)."""
  def init(params):
    return (tx.init(params), jnp.zeros((), jnp.int32))

  def update(grads, state, params=None):
    inner, count = state
    updates, inner = tx.update(grads, inner, params)
    bad = jnp.isin(count, jnp.asarray(bad_steps))
    updates = jax.tree_util.tree_map(lambda u: jnp.where(bad, jnp.nan, u), updates)
    return updates, (inner, count + 1)
  return optax.GradientTransformation(init, update)


def _small_config(steps, batch=1):
  from tests.test_train import small_config
  c = small_config(steps)
  c.render.batch = batch
  return c


def test_a_non_finite_update_is_skipped_and_counted():
  """A step whose update is NaN leaves parameters and optimiser state exactly as they were while the step advances
  (skipped_updates 1, streak 1); the next, finite update applies and resets the streak."""
  from tests.test_train import fast_oracle, run_steps
  config = _small_config(3)
  prior = fast_oracle()
  clean, poison = (_poisoned(ts_lib.make_optimizer(config), bad) for bad in ([], [1]))  # same state structure
  s1, m1 = run_steps(config, prior, 1, ts_lib.create(config, clean), 1, tx=clean)
  s2, m2 = run_steps(config, prior, 1, s1, 1, tx=poison)
  same = lambda a, b: all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
                          zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert m1["skipped_update"] == 0.0 and m2["skipped_update"] == 1.0
  assert same(s1.params, s2.params) and same(s1.opt_state, s2.opt_state)
  assert int(s2.step) == 2 and int(s2.skipped_updates) == 1 and int(s2.skip_streak) == 1
  s3, m3 = run_steps(config, prior, 1, s2, 1, tx=clean)
  assert m3["skipped_update"] == 0.0 and int(s3.skip_streak) == 0 and int(s3.skipped_updates) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(s3.params)) and not same(s2.params, s3.params)


def test_a_run_that_keeps_producing_non_finite_updates_stops(tmp_path):
  """Every update NaN from the optimiser's step 4 on: the run stops with NonFiniteError (one line) once
  train.max_skip_streak updates in a row were skipped, and the checkpoint of the last good step stays readable."""
  from tests.test_train import fast_oracle
  config = _small_config(40, batch=4)  # over the 4 test devices
  config.train.max_skip_streak = 5
  config.train.checkpoint_every = 4
  tx = _poisoned(ts_lib.make_optimizer(config), list(range(4, 40)))
  with pytest.raises(train.NonFiniteError) as e:
    train.train_and_evaluate(config, tmp_path / "run", prior=fast_oracle(), export=False, progress=False,
                             optimizer=tx)
  message = str(e.value)
  assert "\n" not in message and int(message.split("the last ")[1].split()[0]) >= 5, message
  from dreamjax import checkpoint as ckpt_lib
  ckpt = ckpt_lib.Checkpointer(tmp_path / "run")
  state = ckpt.restore(ts_lib.create(config, tx))
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))


def test_metrics_are_strict_json_lines(tmp_path):
  """NaN and inf are written as null; repair drops a cut line and later steps, and leaves a sound file untouched."""
  w = metrics_log.MetricWriter(tmp_path)
  w.write(1, {"loss": float("nan"), "g": float("inf"), "ok": 2.5})
  w.write(2, {"loss": 1.0})
  w.close()
  assert _metric_steps(tmp_path) == [1, 2]
  assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0]) == {"step": 1, "loss": None, "g": None,
                                                                                    "ok": 2.5}
  stamp = (tmp_path / "metrics.jsonl").stat().st_mtime_ns
  assert metrics_log.repair(tmp_path / "metrics.jsonl", keep_through_step=2) == 0
  assert (tmp_path / "metrics.jsonl").stat().st_mtime_ns == stamp
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "lo')
  assert metrics_log.repair(tmp_path / "metrics.jsonl", keep_through_step=1) == 2
  assert _metric_steps(tmp_path) == [1]


class _WordPrior:
  """A prior whose text window is 12 tokens of one word each plus start and end tokens (like CLIP's 77)."""
  text_window = 12

  def count_tokens(self, text):
    return len(text.replace(",", " ,").split()) + 2


def test_a_long_prompt_keeps_its_view_suffix():
  """The prompt is cut at whole words so that the longest view suffix (', overhead view': 3 tokens) still fits the
  window: 12 - 2 - 3 = 7 prompt words are kept and the dropped count is the rest."""
  prompt = " ".join(f"w{i}" for i in range(20))
  suffixes = [", front view", ", overhead view"]
  short, dropped = prior_base.fit_prompt(_WordPrior(), prompt, suffixes)
  assert short == " ".join(f"w{i}" for i in range(7)) and dropped == 13
  assert prior_base.fit_prompt(_WordPrior(), "a red cube", suffixes) == ("a red cube", 0)


def test_a_long_prompt_with_the_sd_tokenizer(capsys):
  """With Stable Diffusion's CLIP tokenizer (the tiny fixture's, window 77) the four view prompts of a 100-word
  prompt all fit the window with their suffix intact, and one warning line says how many tokens were dropped."""
  from configs import tiny
  from tests.test_stable_diffusion import model
  sd = model()
  config = tiny.get_config()
  config.prompt = " ".join(["a photo of a tall red cube"] * 15)
  warned = []
  step_lib.text_embeddings(sd, config, warn=warned.append)
  assert len(warned) == 1 and "tokens; its last" in warned[0]
  short, dropped = prior_base.fit_prompt(sd, config.prompt, [", overhead view"])
  ids = sd.tokenize([short + ", overhead view"])[0]
  full = sd.tokenizer(short + ", overhead view").input_ids
  assert len(full) <= sd.text_window == 77 and list(ids[:len(full)]) == full
  assert dropped == sd.count_tokens(config.prompt) - sd.count_tokens(short) > 0

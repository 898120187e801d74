"""The command lines' shared behaviour (dreamjax/cli.py): config overrides resolved once (a rule brings its own
numbers), configs importable as a package from any directory, and the toy trainers refusing to touch weights they
were not asked to replace."""

import hashlib
import os
import pathlib
import subprocess
import sys

from configs import dreamfusion, toy
from dreamjax import cli
from dreamjax import distill
from dreamjax.priors.base import TextEmbeddings
from dreamjax.toy import weights_io

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(module, args, cwd=ROOT, timeout=300):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _digest(folder: pathlib.Path) -> dict:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*")) if p.is_file()}


def test_rule_name_override_brings_the_rules_numbers():
  """--config.distill.name=nfsd on top of the toy preset (which sets SDS guidance 30) gives NFSD's own guidance 7.5
  and CFG form, while an explicit --config.distill.t_max on the same command line is kept; without a name override
  the preset's values stay. Every resolved field is a concrete value (no None reaches config.json)."""
  c = cli.resolve_overrides(toy.get_config(), {"distill.name": "nfsd", "distill.t_max": 0.9})
  c.distill.t_max = 0.9  # what the flag parser itself set
  rule = distill.Rule.from_config(c.distill)
  assert (rule.name, rule.guidance_scale, rule.cfg_form, rule.t_max) == ("nfsd", 7.5, "diffusers", 0.9)
  kept = cli.resolve_overrides(toy.get_config(), {"train.num_steps": 5})
  assert kept.distill.guidance_scale == 30.0
  flat = dreamfusion.get_config().to_dict()

  def values(d):
    for v in d.values():
      yield from values(v) if isinstance(v, dict) else [v]
  assert None not in list(values(flat))


class _FakePrior:
  def encode_text(self, prompts):
    import jax.numpy as jnp
    return jnp.asarray([[[float(len(p))]] for p in prompts])


def test_text_embeddings_hold_what_the_rule_needs():
  """TextEmbeddings.encode: the prompt with each view suffix (front, side, back, overhead), the unconditional prompt,
  and the negative prompt only for a rule that needs one (NFSD)."""
  p = "a red cube"
  sds = TextEmbeddings.encode(_FakePrior(), p, rule=distill.Rule.default("sds"))
  assert sds.neg is None
  assert [float(x) for x in sds.views[:, 0, 0]] == [len(p + s) for s in (", front view", ", side view",
                                                                         ", back view", ", overhead view")]
  assert float(sds.uncond[0, 0, 0]) == 0.0
  nfsd = TextEmbeddings.encode(_FakePrior(), p, view_dependent=False, rule=distill.Rule.default("nfsd"))
  assert float(nfsd.neg[0, 0, 0]) == len(distill.NFSD_NEGATIVE_PROMPT)
  assert [float(x) for x in nfsd.views[:, 0, 0]] == [len(p)] * 4


def test_config_file_loads_from_another_directory(tmp_path):
  """A config that imports its base as `from configs import dreamfusion` works when the command runs outside the
  repository (the config file's package is made importable)."""
  out = tmp_path / "p.png"
  r = _run("dreamjax.render_preview", ["--config", str(ROOT / "configs" / "tiny.py"), "--out", str(out),
                                       "--size", "8"], cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-1500:]
  assert out.exists()


def test_toy_trainers_refuse_bad_flags_and_keep_the_shipped_weights(tmp_path):
  """toy.train_prior --steps 0 / -3 / --lr nan and toy.classifier --steps 0 end with one error line and exit 2
  before any work; writing into the shipped weights folder without --overwrite is refused; the shipped weights are
  byte-for-byte unchanged afterwards."""
  before = _digest(weights_io.WEIGHTS_DIR)
  cases = [("dreamjax.toy.train_prior", ["--steps", "0", "--out", str(tmp_path / "a")], "--steps must be >= 1"),
           ("dreamjax.toy.train_prior", ["--steps=-3", "--out", str(tmp_path / "a")], "--steps must be >= 1"),
           ("dreamjax.toy.train_prior", ["--lr", "nan", "--out", str(tmp_path / "a")], "--lr must be"),
           ("dreamjax.toy.train_prior", ["--steps", "5"], "already holds toy_prior.msgpack"),
           ("dreamjax.toy.classifier", ["--steps", "0", "--out", str(tmp_path / "b")], "--steps must be >= 1"),
           ("dreamjax.toy.classifier", ["--steps", "5"], "already holds toy_classifier.msgpack")]
  for module, args, message in cases:
    r = _run(module, args, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], (module, args, r.stderr[-800:])
  assert _digest(weights_io.WEIGHTS_DIR) == before
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

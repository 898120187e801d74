"""The config table (dreamjax/config_check.py): it knows every field of every shipped config, accepts them all, and
rejects each kind of bad value with one line naming the field."""

import importlib
import math
import pathlib

import pytest

from dreamjax import config_check

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parent.parent / "configs").glob("*.py")
                 if not p.stem.startswith(("_", "edit_")))  # edit_*: overlays of python -m dreamjax.edit


def _config(name="tiny"):
  c = importlib.import_module(f"configs.{name}").get_config()
  c.prompt = c.prompt or "a hamburger"
  return c


@pytest.mark.parametrize("name", CONFIGS)
def test_table_names_exactly_the_fields_of_every_config(name):
  """Every leaf of every config has a rule, and every rule a leaf, so no field goes unchecked."""
  fields = {f for f in config_check._fields()  # pylint: disable=protected-access
            if f.split(".")[0] not in config_check.OPTIONAL_SECTIONS}
  assert set(config_check.leaves(_config(name))) == fields
  config_check.check(_config(name))


def _set(c, field, value):
  section, _, key = field.rpartition(".")
  target = c
  for part in section.split(".") if section else []:
    target = target[part]
  with target.ignore_type():
    target[key] = value


# optim.total_steps is a reference to train.num_steps (setting one sets both), so it is tested through num_steps.
NUMBER_FIELDS = [f for f, spec in config_check._fields().items()  # pylint: disable=protected-access
                 if isinstance(spec, config_check.Number) and f != "optim.total_steps"
                 and f.split(".")[0] not in config_check.OPTIONAL_SECTIONS]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "3", None])
def test_every_number_field_rejects_nan_inf_and_wrong_types(bad):
  """NaN, +-inf, a string and None are refused for each of the numeric fields, naming that field, in one line."""
  for field in NUMBER_FIELDS:
    c = _config()
    _set(c, field, bad)
    with pytest.raises(config_check.ConfigError) as e:
      config_check.check(c)
    message = str(e.value)
    assert message.startswith(f"config.{field} ") and "\n" not in message, (field, message)


@pytest.mark.parametrize("field, value, expected", [
    ("train.log_every", 0, "config.train.log_every must be >= 1 (got 0)"),
    ("train.num_steps", -5, "config.train.num_steps must be >= 1 (got -5)"),
    ("train.preview_size", 0, "config.train.preview_size must be in [1, 4096] (got 0)"),
    ("export.video_size", 0, "config.export.video_size must be in [1, 4096] (got 0)"),
    ("render.height", 1.5, "config.render.height must be an integer (got 1.5)"),
    ("optim.lr_peak", 1e30, "config.optim.lr_peak must be in [0, 1] (got 1e+30)"),
    ("shading.shading_prob", 1.5, "config.shading.shading_prob must be in [0, 1] (got 1.5)"),
    ("camera.distance_range", (2.0, 1.0), "config.camera.distance_range must satisfy lo <= hi (got (2.0, 1.0))"),
    ("camera.elevation_range", (1, 2, 3), "config.camera.elevation_range must be a pair (lo, hi) (got (1, 2, 3))"),
    ("distill.name", "sdss", "config.distill.name 'sdss' is unknown; use one of sds, nfsd, sjc, dds, pds (got 'sdss')"),
    ("export.mesh_formats", ("obj", "stl"), "config.export.mesh_formats 'stl' is unknown; use any of obj, ply, glb"),
    ("train.disable_jit", 1, "config.train.disable_jit must be True or False (got 1)"),
])
def test_bad_values_get_one_line_naming_the_field(field, value, expected):
  c = _config()
  _set(c, field, value)
  with pytest.raises(config_check.ConfigError) as e:
    config_check.check(c)
  assert str(e.value).startswith(expected), str(e.value)


def test_cross_field_rules_name_both_fields():
  c = _config()
  c.distill.t_min, c.distill.t_max = 0.5, 0.4
  with pytest.raises(config_check.ConfigError, match=r"config.distill.t_min \(0.5\) must be < config.distill.t_max"):
    config_check.check(c)
  c = _config()
  c.prompt = "  "
  with pytest.raises(config_check.ConfigError, match="config.prompt is empty"):
    config_check.check(c)
  config_check.check(c, require_prompt=False)


def test_unknown_field_is_refused():
  c = _config()
  c.train.num_stepz = 5
  with pytest.raises(config_check.ConfigError, match="config.train.num_stepz is not a field"):
    config_check.check(c)


def test_negative_guidance_is_a_warning_not_an_error():
  c = _config()
  c.distill.guidance_scale = -3.0
  config_check.check(c)
  assert [w for w in config_check.warnings(c) if "guidance_scale is negative" in w]
  assert not config_check.warnings(_config())

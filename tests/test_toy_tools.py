"""The toy world's measurement commands: ablation cells and edit pairs are parsed as written, and malformed ones are
refused with a message naming the part."""

import pytest

from configs import toy
from dreamjax import config_check
from dreamjax.toy import ablate
from dreamjax.toy import evaluate_edits


def test_cells_parse_to_typed_overrides():
  cells = ablate.parse_cells("off=loss.opacity:0.0,loss.reduction:mean,camera.view_dependent_prompt:false;plain=")
  assert cells == [("off", {"loss.opacity": 0.0, "loss.reduction": "mean", "camera.view_dependent_prompt": False}),
                   ("plain", {})]
  c = ablate.apply(toy.get_config(), cells[0][1])
  assert c.loss.opacity == 0.0 and c.loss.reduction == "mean" and c.camera.view_dependent_prompt is False
  assert ablate.apply(toy.get_config(), {"distill.guidance_scale": 10}).distill.guidance_scale == 10.0


@pytest.mark.parametrize("text, match", [("", "empty"), ("a", "NAME="), ("a=x", "field:value"),
                                         ("a=;a=", "share a name")])
def test_bad_cells_are_refused(text, match):
  with pytest.raises(ValueError, match=match):
    ablate.parse_cells(text)


def test_unknown_cell_field_is_a_config_error():
  with pytest.raises(config_check.ConfigError, match="config.loss.opacty"):
    ablate.apply(toy.get_config(), {"loss.opacty": 0.0})


def test_edit_pairs():
  assert evaluate_edits.parse_pairs("a red cube>a blue cube; a red sphere > a red cube") == [
      ("a red cube", "a blue cube"), ("a red sphere", "a red cube")]
  with pytest.raises(ValueError, match="source prompt>target prompt"):
    evaluate_edits.parse_pairs("a red cube")
  with pytest.raises(ValueError, match="--pairs"):
    evaluate_edits.parse_pairs("a red cube>a purple cube")


def test_shard_parsing():
  from dreamjax import cli
  assert cli.parse_shard("1/3") == (1, 3)
  for bad in ("3/3", "x", "1/0", "-1/2"):
    with pytest.raises(ValueError, match="--shard"):
      cli.parse_shard(bad)

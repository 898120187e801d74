"""Run configs (ml_collections), one `get_config()` per file. `dreamfusion.py` holds the paper's settings with a
comment on every field; every other file is a preset that imports it and overrides a few fields:

  from configs import dreamfusion
  def get_config():
    c = dreamfusion.get_config()
    c.train.num_steps = 600
    return c

Use a file with `--config configs/<name>.py` on any dreamjax command line, or `from configs import <name>` in Python
(from the repository root, or with the root on PYTHONPATH).
"""

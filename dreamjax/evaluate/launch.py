"""`python -m dreamjax.evaluate.launch`: the runs of the evaluation, one per caption and seed, in shards.

  python -m dreamjax.evaluate.launch --captions coco153 --config configs/dreamfusion.py --seeds 0,1 --shard 0/4 \\
      --workdir_root runs/coco153

Jobs are (caption, seed) pairs in caption-major order; shard I/N (I = 0..N-1) takes jobs I, I + N, I + 2N, ..., so N
hosts or GPUs each start one command with their own I. Job k's workdir is `<root>/<caption index>_<slug>_seed<s>`.
A finished run (checkpoint at train.num_steps) is skipped, a started one is continued (`resume`), so the command can
be re-run after an interruption. `--dry_run` lists the shard's jobs and their state. Then score them with
`python -m dreamjax.evaluate --workdirs <root>/* --clip ...`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import time

from dreamjax import checkpoint as ckpt_lib
from dreamjax import cli
from dreamjax import stop_signals
from dreamjax import train
from dreamjax import workdir as workdir_lib
from dreamjax.evaluate import captions as captions_lib


@dataclasses.dataclass(frozen=True, order=True)
class Job:
  index: int  # caption index in the caption set
  caption: str
  seed: int

  def workdir(self, root) -> pathlib.Path:
    slug = re.sub(r"[^a-z0-9]+", "_", self.caption.lower()).strip("_")[:48] or "caption"
    return pathlib.Path(root) / f"{self.index:03d}_{slug}_seed{self.seed}"


def parse_shard(spec: str) -> tuple[int, int]:
  """'I/N' -> (I, N) with 0 <= I < N."""
  m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
  if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
    raise ValueError(f"--shard {spec!r}: expected I/N with N >= 1 and 0 <= I < N (e.g. 0/4 ... 3/4)")
  return int(m.group(1)), int(m.group(2))


def parse_seeds(spec) -> list[int]:
  try:
    seeds = [int(s) for s in spec]
  except ValueError:
    raise ValueError(f"--seeds {','.join(spec)!r}: expected integers, e.g. 0,1") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"--seeds {','.join(spec)!r}: expected distinct integers, e.g. 0,1")
  return seeds


def jobs_of(captions: list[str], seeds: list[int], shard: tuple[int, int]) -> list[Job]:
  """The shard's jobs: every (caption, seed) pair, caption-major, taken every N-th from I."""
  every = [Job(i, c, s) for i, c in enumerate(captions) for s in seeds]
  i, n = shard
  return every[i::n]


def state_of(workdir: pathlib.Path, num_steps: int) -> str:
  """'finished', 'started' (checkpoints below num_steps) or 'new'."""
  step = ckpt_lib.latest_step(workdir)
  if step is None:
    return "new"
  return "finished" if step >= num_steps else "started"


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  config = cli.resolved_config()
  train.validate_config(config, require_prompt=False)  # the prompts come from the caption set
  shard = parse_shard(f.shard)
  jobs = jobs_of(captions_lib.read(f.captions), parse_seeds(f.seeds), shard)
  root = pathlib.Path(f.workdir_root)
  total = int(config.train.num_steps)
  print(f"launch: shard {shard[0]}/{shard[1]}: {len(jobs)} run(s) under {root}", flush=True)
  if f.dry_run:
    for job in jobs:
      print(f"{state_of(job.workdir(root), total):8s} {job.workdir(root)}  seed {job.seed}  {job.caption!r}")
    return
  done = 0
  for k, job in enumerate(jobs):
    wd = job.workdir(root)
    state = state_of(wd, total)
    if state == "finished":
      print(f"[{k + 1}/{len(jobs)}] finished already: {wd}", flush=True)
      continue
    c = config.copy_and_resolve_references()
    c.prompt, c.seed = job.caption, job.seed
    t0 = time.time()
    train.train_and_evaluate(c, wd, resume=(state == "started"), export=f.export, progress=f.progress)
    done += 1
    print(f"[{k + 1}/{len(jobs)}] trained {wd} in {time.time() - t0:.0f} s", flush=True)
  print(f"launch: shard {shard[0]}/{shard[1]} complete ({done} trained, {len(jobs) - done} already finished)")


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flag("configs/dreamfusion.py")
  flags.DEFINE_string("captions", "coco153", "Caption set: coco153, toy, or a text file (one caption a line).")
  flags.DEFINE_list("seeds", ["0", "1"], "Seeds per caption (DF: 2).")
  flags.DEFINE_string("shard", "0/1", "I/N: this command's share of the jobs (I = 0..N-1).")
  flags.DEFINE_string("workdir_root", "runs/coco153", "One run directory per (caption, seed) below this.")
  flags.DEFINE_bool("export", False, "Write each run's turntable video and mesh too (the evaluation needs neither).")
  flags.DEFINE_bool("progress", False, "Show a progress bar per run.")
  flags.DEFINE_bool("dry_run", False, "List this shard's jobs and their state; train nothing.")
  cli.run(main, "evaluate.launch", errors=(ckpt_lib.CheckpointError, workdir_lib.WorkdirError, train.NonFiniteError),
          interrupted=(stop_signals.Interrupted,))

"""DreamFusion with the paper's settings (Poole et al. 2022, §3 and Appendix A), Stable Diffusion as the 2D prior.

Every default is the paper's value where the paper gives one; `../docs` and the field comments say where a value is
an assumption. The prior is Stable Diffusion (latent-space SDS: 64² render -> 512² -> VAE encoder), as in
stable-dreamfusion and threestudio, because Imagen's weights are not public.

Command (one accelerator or a TPU host; all local devices are used, one camera each):
  python -m dreamjax.train --config configs/dreamfusion.py \
      --config.prompt="a DSLR photo of a hamburger" --workdir runs/hamburger
Expected runtime: the paper's 15,000 iterations took 1.5 h on 4 TPUv4 chips with Imagen. Our measured figures are in
docs/performance.md (none yet on an accelerator).
"""

import ml_collections

from dreamjax import distill, optim


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.prompt = ""  # the text to turn into 3D; required (e.g. "a DSLR photo of a hamburger")
  c.negative_prompt = ""  # used as the unconditional text for CFG when non-empty (stable-dreamfusion style)
  c.seed = 0  # one seed for the whole run (parameters, cameras, noise)

  c.camera = ml_collections.ConfigDict()
  c.camera.elevation_range = (-10.0, 90.0)  # degrees (DF A.2)
  c.camera.azimuth_range = (0.0, 360.0)  # degrees
  c.camera.distance_range = (1.0, 1.5)  # world units; the scene sphere has radius 1.4
  c.camera.uniform_angle_prob = 0.5  # half the elevations uniform in angle (oversamples the pole), half in area
  c.camera.position_jitter = 0.1  # camera position += U(-0.1, 0.1)^3
  c.camera.look_at_std = 0.2  # look-at point ~ N(0, 0.2^2 I) (DF "N(0, 0.2 I)", read as a std like threestudio)
  c.camera.up_std = 0.02  # up vector noise std
  c.camera.focal_range = (0.7, 1.35)  # focal length = U(0.7, 1.35) * render width (≈ 40–71° vertical FOV)
  c.camera.view_dependent_prompt = True  # append ", front view" / ", side view" / ", back view" / ", overhead view"
  c.camera.front_deg = 45.0  # |azimuth| < 45° is "front"
  c.camera.back_deg = 45.0  # |azimuth - 180°| < 45° is "back"
  c.camera.overhead_deg = 60.0  # elevation > 60° is "overhead"

  c.light = ml_collections.ConfigDict()
  c.light.distance_range = (0.8, 1.5)  # |light position| ~ U(0.8, 1.5)
  c.light.direction_std = 1.0  # light direction ~ N(camera position, 1.0^2 I), normalised

  c.shading = ml_collections.ConfigDict()
  c.shading.albedo_only_steps = 1000  # albedo-only renders for the first 1k steps
  c.shading.shading_prob = 0.75  # afterwards: lit with prob 0.75 ...
  c.shading.textureless_prob = 0.5  # ... of which textureless with prob 0.5 (net 0.25 / 0.375 / 0.375)
  c.shading.ambient = 0.1  # ambient light colour l_a when lit
  c.shading.diffuse = 0.9  # diffuse light colour l_rho when lit

  c.nerf = ml_collections.ConfigDict()
  c.nerf.num_freqs = 8  # IPE frequencies 2^0..2^7 (L = 8)
  c.nerf.width = 128  # MLP hidden units
  c.nerf.num_blocks = 5  # ResNet blocks (SiLU, LayerNorm)
  c.nerf.blob_strength = 5.0  # density blob lambda_tau
  c.nerf.blob_width = 0.2  # density blob sigma_tau
  c.nerf.density_bias_init = -2.0  # initial density-head bias: empty space starts near-transparent (not in DF)
  c.nerf.ipe_var_start = 5e-2  # IPE variance lambda_Sigma at step 0
  c.nerf.ipe_var_end = 2e-3  # ... annealed linearly to this
  c.nerf.ipe_anneal_frac = 1 / 3  # ... over the first third of training (5k of 15k)
  c.nerf.bg_num_freqs = 4  # background MLP: positional-encoding frequencies of the ray direction (not in the paper)
  c.nerf.bg_width = 64  # background MLP hidden units (not in the paper)
  c.nerf.bg_depth = 2  # background MLP hidden layers (not in the paper)

  c.render = ml_collections.ConfigDict()
  c.render.height = 64  # render resolution (DF: 64×64)
  c.render.width = 64
  c.render.batch = 4  # cameras per step, split evenly over the devices (DF: 4, one per TPU chip)
  c.render.radius = 1.4  # bounding sphere radius
  c.render.near = 0.05  # minimum ray distance from the camera
  c.render.num_coarse = 64  # stratified intervals per ray (not in DF; Mip-NeRF 360's proposal count)
  c.render.num_fine = 32  # resampled intervals per ray that are rendered (not in DF; Mip-NeRF 360's NeRF count)
  c.render.resample_padding = 0.01  # weight padding for resampling
  c.render.ray_chunks = 1  # >1: render rays in this many rematerialised chunks (renderer memory / chunks, +1 fwd)
  c.render.random_background_prob = 0.0  # prob of replacing the background MLP by a random solid colour (off: DF)

  c.loss = ml_collections.ConfigDict()
  c.loss.orient_start = 1e-4  # orientation loss weight at step 0 ...
  c.loss.orient_end = 1e-2  # ... ramped linearly to 1e-2 ...
  c.loss.orient_ramp_frac = 1 / 3  # ... over the first third of training
  c.loss.opacity = 1e-3  # opacity loss sqrt(alpha^2 + 0.01) weight (DF range 1e-3 .. 5e-3)
  # How the per-ray orientation and opacity terms become one camera's loss: "sum" over its rays (or "mean"). The SDS
  # surrogate is a sum over the prior's entries (64x64x4 latents: its gradient is w(t)(eps_hat - eps) per entry), so
  # the paper's weights only keep the share of the gradient the paper gave them when the regularisers are sums too.
  # As means over 4,096 rays they had 3-4e-5 (orientation) and 1e-5 (opacity) of the SDS gradient norm, which
  # Shampoo's (and Adam's) normalised step ignores. Summed, the same weights take 0.3-9% and 0.3-4% of the gradient
  # in the toy world (train.grad_shares_every; docs/regularisers.md has the toy table of weights); at SD scale the
  # share is not measured (no GPU or weights here). Summed, the paper's 1e-2 / 1e-3 equal means with weights 41 / 4.1
  # at 64x64: threestudio's working SD values (orientation 10 -> 1000, sparsity 1, means) are the same order.
  c.loss.reduction = "sum"
  # SJC's regularisers (dreamjax/regularisers.py; off here, on in configs/sjc.py): emptiness mean log(1 + B w) ...
  c.loss.emptiness = 0.0  # ... weight (SJC: 1e4) ...
  c.loss.emptiness_multiplier = 20.0  # ... multiplied by this ...
  c.loss.emptiness_step_frac = 0.5  # ... after this fraction of the steps (SJC: x20 after half)
  c.loss.emptiness_scale = 10.0  # B (SJC's emptiness_scale)
  c.loss.center_depth = 0.0  # SJC's centre-depth loss weight (SJC: 0; 10, 50 or 100 for some prompts)
  c.loss.center_depth_border = 7 / 64  # border around the centre window, a fraction of the side (SJC: 7 of 64 px)

  c.prior = ml_collections.ConfigDict()
  c.prior.kind = "stable_diffusion"  # 'stable_diffusion' | 'toy' (offline pixel prior shipped with the package)
  c.prior.model = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # hub id or local folder in the diffusers layout
  c.prior.revision = ""  # hub revision ("" = default branch)
  c.prior.variant = ""  # weight file variant, e.g. "fp16" ("" = full precision files)
  # frozen-network dtype: 'auto' = float16 on GPU (at omega = 100 the guided eps of a bf16 UNet errs by ~0.35 of
  # the SDS signal when eps_c - eps_u is ~4% of eps, fp16 by ~0.05: python -m dreamjax.guidance_precision,
  # docs/stable_diffusion.md), bfloat16 on TPU (no fast fp16), float32 on CPU | 'float32' | 'bfloat16' | 'float16'
  c.prior.dtype = "auto"
  c.prior.attention = "auto"  # 'auto' (cuDNN flash attention on Ampere+ GPUs, else stock) | 'cudnn' | 'xla' | 'stock'
  c.prior.remat_encoder = False  # recompute the VAE encoder in the backward pass (memory for compute)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 15000  # DF: 15k iterations
  c.train.log_every = 50  # metrics interval (steps)
  c.train.preview_every = 500  # preview-grid interval (steps; 0 = off)
  c.train.preview_size = 96  # preview panel size (pixels)
  c.train.checkpoint_every = 1000  # checkpoint interval (steps)
  c.train.keep_checkpoints = 3  # checkpoints kept
  c.train.disable_jit = False  # debugging: run the step eagerly (chex.fake_pmap_and_jit)
  # The wrapper of the per-device step: "shard_map" (jit(shard_map), the default: prior weights placed once,
  # replicated, and one mesh over the devices of every process) or "pmap" (jax.pmap, this process's devices only;
  # the same update, tested; since JAX 0.8 pmap is itself built on shard_map).
  c.train.parallel = "shard_map"
  c.train.max_skip_streak = 50  # stop once this many updates in a row were skipped as non-finite
  c.train.grad_shares_every = 500  # log each loss term's gradient norm and share (costs ~1 step; 0 = off)

  # Score distillation rule (dreamjax/distill.py documents every field): SDS with omega = 100 (paper CFG form),
  # w(t) = sigma_t^2, t ~ U(0.02, 0.98). `--config.distill.name=nfsd|sjc` on a command line switches to that rule
  # with its own defaults (dreamjax.cli), so config.json records the numbers used.
  c.distill = distill.default_distill_config("sds")

  # Optimiser (dreamjax/optim.py documents every field): Shampoo, beta1 = beta2 = 0.9, block 128, exponent 2,
  # SQRT_N grafting, eps 1e-6; LR warmup 1e-9 -> 1e-4 over 3k steps, cosine to 1e-6 at the last step.
  c.optim = optim.default_optimizer_config()
  c.optim.total_steps = c.train.get_ref("num_steps")  # the schedule always spans the whole run
  c.optim.preconditioning_compute_steps = 10  # inverse roots every 10 steps (DF silent; saves eigh time)

  c.export = ml_collections.ConfigDict()
  c.export.video_frames = 120  # turntable frames
  c.export.video_fps = 30
  c.export.video_size = 256  # turntable resolution (pixels)
  c.export.video_elevation = 30.0  # degrees (DF evaluates at 30°)
  c.export.video_distance = 1.5  # camera distance of previews/turntables
  c.export.video_focal = 1.0  # focal length as a multiple of the width
  c.export.mesh_resolution = 128  # marching-cubes grid per axis
  c.export.mesh_threshold = 0.0  # density level of the surface (0 = automatic)
  c.export.mesh_formats = ("obj", "ply", "glb")
  return c

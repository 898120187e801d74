"""Structural proof that the compiled train step never runs the UNet's backward pass.

With the tiny Stable Diffusion fixture, the number of convolutions in the compiled step must equal the VAE encoder's
forward + backward (the gradient flows through it) plus the UNet's forward on the CFG batch, and nothing more. A
differentiated UNet would add its backward convolutions (the backward of a convolution is itself convolutions).
"""

import re

import jax
import jax.numpy as jnp

from configs import tiny
from dreamjax import train_state as ts_lib
from dreamjax import train_step as step_lib
from dreamjax.priors.load import load_prior


def _convolutions(compiled_text: str) -> int:
  return len(re.findall(r"= \S+ convolution\(", compiled_text))


def test_step_contains_vae_backward_but_no_unet_backward():
  c = tiny.get_config()
  prior = load_prior(c)
  pp = prior.params
  text = step_lib.text_embeddings(prior, c)
  images = jnp.full((1, c.render.height, c.render.width, 3), 0.5)
  key = jax.random.PRNGKey(0)
  vae_grad = lambda p, x: jax.grad(lambda x: jnp.sum(prior.to_latents(p, x, key)))(x)
  n_vae = _convolutions(jax.jit(vae_grad).lower(pp, images).compile().as_text())
  z = prior.to_latents(pp, images, key)
  emb = jnp.concatenate([text.views[:1], text.uncond])
  unet_fwd = lambda p, z: prior.predict_eps(p, jnp.concatenate([z, z]), jnp.array([500, 500]), emb)
  n_unet = _convolutions(jax.jit(unet_fwd).lower(pp, z).compile().as_text())
  tx = ts_lib.make_optimizer(c)
  step = step_lib.make_train_step(c, prior, tx, step_lib.make_mesh(1))
  n_step = _convolutions(step.lower(ts_lib.create(c, tx), pp, text).compile().as_text())
  print(f"convolutions: VAE fwd+bwd {n_vae}, UNet fwd {n_unet}, train step {n_step}")
  assert n_vae > 0 and n_unet > 0
  assert n_step == n_vae + n_unet
